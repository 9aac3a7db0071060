//! Pure validation of every kind: `FieldError`, the `Validate` trait, and the rules, returning all problems at once.
//!
//! Messages follow Kubernetes' `field.Error` (`spec.replicas: Invalid value: -1: must be
//! greater than or equal to 0`), so a user sees the field, the value and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::kinds::job::Indexes;
use crate::kinds::{
    Driver, EnvVar, Event, HttpGetAction, Job, JobInput, JobSpec, Lease, Namespace, Node, Probe,
    Protocol, ResourceDefinition, RestartPolicy, Scheme, Service, ServiceStrategy, Task, TaskPhase,
    TaskSpec, TaskTemplate, TemplateMeta, TolerationOperator,
};
use crate::meta::ObjectMeta;
use crate::names;
use crate::quantity::{IntOrString, Quantity};
use crate::resource::Resource;
use crate::selector::{Operator, Requirement};

/// The most bytes all annotations of an object may take together (keys plus values).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// The longest an event's reason may be.
pub const EVENT_REASON_MAX_LENGTH: usize = 128;
/// The most tasks a Job or Service may ask for (`replicas`), and a Job's `parallelism`.
pub const MAX_REPLICAS: i32 = 100_000;
/// The most times a Job may replace a failed task (`maxRetries`).
pub const MAX_RETRIES: i32 = 1_000;
/// The most overrides a Job may have.
pub const MAX_OVERRIDES: usize = 1_000;
/// The most jobs a Job may depend on.
pub const MAX_DEPENDS_ON: usize = 1_000;
/// The most environment variables in one list (a task's, or a Job's).
pub const MAX_ENV: usize = 4_096;
/// The most mounts of a task, and inputs of a Job.
pub const MAX_MOUNTS: usize = 256;
/// The most host ports a task may ask for.
pub const MAX_PORTS: usize = 1_024;
/// The most constraints, tolerations or taints in one list.
pub const MAX_RULES: usize = 1_024;
/// The most items of a task's `command` and `args` together.
pub const MAX_ARGV_ITEMS: usize = 4_096;
/// The most bytes of a task's `command` and `args` together (Linux's own
/// `ARG_MAX` is commonly 2 MiB, environment included).
pub const MAX_ARGV_BYTES: usize = 1 << 20;
/// The longest a task's `logPath` file name may be.
pub const MAX_LOG_FILE_NAME: usize = 255;

/// What kind of problem a [`FieldError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    /// A required field is missing.
    Required,
    /// The value breaks a rule.
    Invalid,
    /// The value is not one of the supported ones.
    NotSupported,
    /// The value appears twice where it must be unique.
    Duplicate,
    /// The value is too long.
    TooLong,
    /// The list has too many items.
    TooMany,
    /// The field may not be set (here, or now).
    Forbidden,
}

impl FieldErrorKind {
    /// The words Kubernetes uses for it in messages (`Invalid value`).
    pub fn as_str(&self) -> &'static str {
        match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::TooMany => "Too many",
            FieldErrorKind::Forbidden => "Forbidden",
        }
    }

    /// The `reason` of the matching `Status` cause (`FieldValueInvalid`).
    pub fn cause_reason(&self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
        }
    }
}

/// A value as it appears in a message: strings quoted, numbers bare.
pub trait FieldValue {
    /// The value rendered for a message.
    fn render(&self) -> String;
}

impl FieldValue for str {
    fn render(&self) -> String {
        format!("{self:?}")
    }
}

impl FieldValue for String {
    fn render(&self) -> String {
        self.as_str().render()
    }
}

impl FieldValue for Quantity {
    fn render(&self) -> String {
        self.to_string().render()
    }
}

impl FieldValue for IntOrString {
    fn render(&self) -> String {
        match self {
            IntOrString::Int(v) => v.to_string(),
            IntOrString::String(s) => s.render(),
        }
    }
}

macro_rules! bare_field_value {
    ($($t:ty),*) => {
        $(impl FieldValue for $t {
            fn render(&self) -> String {
                self.to_string()
            }
        })*
    };
}
bare_field_value!(i32, i64, u32, u64, usize, bool);

impl<T: FieldValue + ?Sized> FieldValue for &T {
    fn render(&self) -> String {
        (**self).render()
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{field}: {}", self.body())]
pub struct FieldError {
    /// The field's path, e.g. `spec.template.spec.env[2].name`.
    pub field: String,
    /// What kind of problem.
    pub kind: FieldErrorKind,
    /// The offending value as shown in messages (strings quoted), when it helps.
    pub value: Option<String>,
    /// The rule broken, or other detail.
    pub message: String,
}

impl FieldError {
    /// A required field is missing.
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
            value: None,
            message: message.into(),
        }
    }

    /// The value breaks the rule in `message`.
    pub fn invalid(
        field: impl Into<String>,
        value: impl FieldValue,
        message: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid,
            value: Some(value.render()),
            message: message.into(),
        }
    }

    /// The value is not one of `supported`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl FieldValue,
        supported: &[&str],
    ) -> FieldError {
        let list: Vec<String> = supported.iter().map(|s| s.render()).collect();
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported,
            value: Some(value.render()),
            message: format!("supported values: {}", list.join(", ")),
        }
    }

    /// The value appears twice.
    pub fn duplicate(field: impl Into<String>, value: impl FieldValue) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Duplicate,
            value: Some(value.render()),
            message: String::new(),
        }
    }

    /// The value is longer than `max_bytes`.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooLong,
            value: None,
            message: format!("may not be more than {max_bytes} bytes"),
        }
    }

    /// The list has `count` items, more than `max`.
    pub fn too_many(field: impl Into<String>, count: usize, max: usize) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooMany,
            value: Some(count.to_string()),
            message: format!("must have at most {max} items"),
        }
    }

    /// The field may not be set.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            value: None,
            message: message.into(),
        }
    }

    /// The message without the field (Kubernetes' `ErrorBody`), as in `Status` causes:
    /// `Invalid value: -1: must be greater than or equal to 0`.
    pub fn body(&self) -> String {
        let mut s = self.kind.as_str().to_string();
        let shows_value = matches!(
            self.kind,
            FieldErrorKind::Invalid
                | FieldErrorKind::NotSupported
                | FieldErrorKind::Duplicate
                | FieldErrorKind::TooMany
        );
        if shows_value && let Some(value) = &self.value {
            s.push_str(": ");
            s.push_str(value);
        }
        if !self.message.is_empty() {
            s.push_str(": ");
            s.push_str(&self.message);
        }
        s
    }
}

/// Renders several field errors on one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldErrors<'a>(pub &'a [FieldError]);

impl fmt::Display for FieldErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Validation of a whole object, returning every problem found.
pub trait Validate {
    /// Every problem with the object as a new object; empty when it is valid.
    fn validate(&self) -> Vec<FieldError>;

    /// Every problem with the object as a replacement for `old`: its own problems, and
    /// changes that are not allowed (immutable fields, phases that never change again).
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let _ = old;
        self.validate()
    }
}

// ---- paths ----

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

// ---- small rules ----

fn each_message(errs: &mut Vec<FieldError>, field: &str, value: &str, messages: Vec<String>) {
    errs.extend(
        messages
            .into_iter()
            .map(|m| FieldError::invalid(field, value, m)),
    );
}

fn non_negative_i64(errs: &mut Vec<FieldError>, field: &str, value: Option<i64>) {
    if let Some(v) = value
        && v < 0
    {
        errs.push(FieldError::invalid(
            field,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

fn non_negative(errs: &mut Vec<FieldError>, field: &str, value: Option<i32>) {
    non_negative_i64(errs, field, value.map(i64::from));
}

fn positive_i64(errs: &mut Vec<FieldError>, field: &str, value: Option<i64>) {
    if let Some(v) = value
        && v <= 0
    {
        errs.push(FieldError::invalid(field, v, "must be greater than 0"));
    }
}

fn at_most(errs: &mut Vec<FieldError>, field: &str, value: Option<i32>, max: i32) {
    if let Some(v) = value
        && v > max
    {
        errs.push(FieldError::invalid(
            field,
            v,
            format!("must be less than or equal to {max}"),
        ));
    }
}

fn at_most_items(errs: &mut Vec<FieldError>, field: &str, count: usize, max: usize) {
    if count > max {
        errs.push(FieldError::too_many(field, count, max));
    }
}

/// The rule a task's `logPath` follows, as shown in messages.
pub const LOG_FILE_NAME_RULE: &str = "must be a file name inside the task's log directory: 1 to 255 characters of [A-Za-z0-9._-], not starting with '.' (no '/')";

/// Whether `name` may be a task's `logPath`: a bare file name the node places in
/// the task's own log directory, so that no value reaches another file.
pub fn is_log_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LOG_FILE_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The rule a node's `status.nodeletEndpoint` follows, as shown in messages.
pub const NODELET_ENDPOINT_RULE: &str = "must be https://IP:PORT or http://IP:PORT: an IP address literal (IPv6 in brackets), a port from 1 to 65535, no path other than '/', and no user info, query or fragment";

/// Why a nodelet endpoint is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// It does not follow [`NODELET_ENDPOINT_RULE`].
    #[error("{NODELET_ENDPOINT_RULE}")]
    Malformed,
    /// It names an address no nodelet has.
    #[error(
        "must not be an unspecified, multicast, broadcast or link-local address (got {0}): use the address the API server reaches the nodelet at"
    )]
    Reserved(std::net::IpAddr),
}

/// The address a nodelet endpoint names, if it follows [`NODELET_ENDPOINT_RULE`]
/// and is not an address no nodelet has (unspecified, multicast, broadcast,
/// link-local such as the cloud metadata service at 169.254.169.254). Until nodes
/// have an identity, the API server calls only such endpoints, so a Node object
/// cannot point it at a name, a path or a service of its own choosing.
pub fn parse_nodelet_endpoint(endpoint: &str) -> Result<std::net::SocketAddr, EndpointError> {
    use std::net::{IpAddr, SocketAddr};
    let rule = || EndpointError::Malformed;
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(rule)?;
    let authority = match rest.strip_suffix('/') {
        Some(authority) => authority,
        None => rest,
    };
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'%' | b'\\') || !b.is_ascii_graphic())
    {
        return Err(rule());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, port) = bracketed.split_once("]:").ok_or_else(rule)?;
        let ip: std::net::Ipv6Addr = host.parse().map_err(|_| rule())?;
        (IpAddr::V6(ip), port)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(rule)?;
        let ip: std::net::Ipv4Addr = host.parse().map_err(|_| rule())?;
        (IpAddr::V4(ip), port)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(rule());
    }
    let port: u16 = port.parse().map_err(|_| rule())?;
    if port == 0 {
        return Err(rule());
    }
    let v4 = match host {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    };
    let forbidden = match (host, v4) {
        (_, Some(ip)) => {
            ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local()
        }
        (IpAddr::V6(ip), None) => {
            ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local()
        }
        (IpAddr::V4(_), None) => false,
    };
    if forbidden {
        return Err(EndpointError::Reserved(host));
    }
    Ok(SocketAddr::new(host, port))
}

/// The longest CIDR there is, in bytes (`255.255.255.255/32`).
pub const MAX_CIDR_LENGTH: usize = 18;
/// The prefix lengths a Node's `spec.taskCIDR` (and the controllers'
/// `--cluster-cidr` and `--node-cidr-mask-size`) may have: at most a /8, and at
/// least a /30 (two usable addresses).
pub const TASK_CIDR_PREFIX: std::ops::RangeInclusive<u8> = 8..=30;

/// Why a string is not an IPv4 CIDR in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `a.b.c.d/n` (or longer than any CIDR).
    #[error("must be an IPv4 CIDR ADDRESS/PREFIX such as 10.77.0.0/24")]
    Malformed,
    /// An IPv6 CIDR.
    #[error("must be an IPv4 CIDR such as 10.77.0.0/24: IPv6 is not supported yet")]
    Ipv6,
    /// Host bits set: the range's own network address is this.
    #[error("must be the network address of its range, with no host bits set: {0}")]
    NotNetworkAddress(ipnet::Ipv4Net),
    /// The prefix length is outside [`TASK_CIDR_PREFIX`].
    #[error("the prefix length must be between /8 and /30 (got /{0})")]
    Prefix(u8),
}

/// Parses an IPv4 CIDR written canonically (`10.77.3.0/24`: the network address,
/// decimal octets without leading zeros, no spaces) with a prefix length in
/// [`TASK_CIDR_PREFIX`]: a Node's `spec.taskCIDR`, and the subnets the
/// controllers hand out. One string, one subnet: two spellings of the same range
/// could not be compared as written.
pub fn parse_task_cidr(value: &str) -> Result<ipnet::Ipv4Net, CidrError> {
    if value.contains(':') {
        return Err(CidrError::Ipv6);
    }
    if value.len() > MAX_CIDR_LENGTH {
        return Err(CidrError::Malformed);
    }
    let net: ipnet::Ipv4Net = value.parse().map_err(|_| CidrError::Malformed)?;
    if net.trunc() != net {
        return Err(CidrError::NotNetworkAddress(net.trunc()));
    }
    if net.to_string() != value {
        return Err(CidrError::Malformed);
    }
    if !TASK_CIDR_PREFIX.contains(&net.prefix_len()) {
        return Err(CidrError::Prefix(net.prefix_len()));
    }
    Ok(net)
}

fn task_cidr(errs: &mut Vec<FieldError>, field: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    if value.len() > MAX_CIDR_LENGTH {
        errs.push(FieldError::too_long(field, MAX_CIDR_LENGTH));
    } else if let Err(rule) = parse_task_cidr(value) {
        errs.push(FieldError::invalid(field, value, rule.to_string()));
    }
}

fn non_negative_quantity(errs: &mut Vec<FieldError>, field: &str, value: Option<&Quantity>) {
    if let Some(q) = value
        && q.is_negative()
    {
        errs.push(FieldError::invalid(
            field,
            q,
            "must be greater than or equal to 0",
        ));
    }
}

fn absolute_path(errs: &mut Vec<FieldError>, field: &str, value: &str, required: bool) {
    if value.is_empty() {
        if required {
            errs.push(FieldError::required(field, ""));
        }
    } else if !value.starts_with('/') {
        errs.push(FieldError::invalid(
            field,
            value,
            "must be an absolute path",
        ));
    } else if value.split('/').any(|part| part == "..") || value.contains('\0') {
        errs.push(FieldError::invalid(
            field,
            value,
            "must not contain '..' or NUL",
        ));
    }
}

fn qualified_name(errs: &mut Vec<FieldError>, field: &str, value: &str) {
    each_message(errs, field, value, names::is_qualified_name(value));
}

/// Checks label keys and values (both reported at `path`, as Kubernetes does).
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        each_message(&mut errs, path, k, names::is_label_key(k));
        each_message(&mut errs, path, v, names::is_label_value(v));
    }
    errs
}

/// Checks annotation keys and their total size (at most 256 KiB).
pub fn validate_annotations(annotations: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations {
        each_message(
            &mut errs,
            path,
            k,
            names::is_qualified_name(&k.to_ascii_lowercase()),
        );
        total = total.saturating_add(k.len()).saturating_add(v.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

/// How an object's name is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (namespaces).
    Label,
}

fn check_name(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    match rule {
        NameRule::Subdomain => names::name_is_dns1123_subdomain(name, prefix),
        NameRule::Label => names::name_is_dns1123_label(name, prefix),
    }
}

/// Checks `metadata`: a name (or generateName) following `rule`, a namespace iff
/// `namespaced`, labels, annotations, finalizers and owner references.
pub fn validate_object_meta(
    meta: &ObjectMeta,
    namespaced: bool,
    rule: NameRule,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let path = "metadata";
    if meta.name.is_empty() {
        if meta.generate_name.is_empty() {
            errs.push(FieldError::required(
                child(path, "name"),
                "name or generateName is required",
            ));
        }
    } else {
        each_message(
            &mut errs,
            &child(path, "name"),
            &meta.name,
            check_name(rule, &meta.name, false),
        );
    }
    if !meta.generate_name.is_empty() {
        each_message(
            &mut errs,
            &child(path, "generateName"),
            &meta.generate_name,
            check_name(rule, &meta.generate_name, true),
        );
    }
    let ns_path = child(path, "namespace");
    if namespaced {
        if meta.namespace.is_empty() {
            errs.push(FieldError::required(ns_path, ""));
        } else {
            each_message(
                &mut errs,
                &ns_path,
                &meta.namespace,
                names::is_dns1123_label(&meta.namespace),
            );
        }
    } else if !meta.namespace.is_empty() {
        errs.push(FieldError::forbidden(ns_path, "not allowed on this type"));
    }
    non_negative_i64(&mut errs, &child(path, "generation"), Some(meta.generation));
    non_negative_i64(
        &mut errs,
        &child(path, "deletionGracePeriodSeconds"),
        meta.deletion_grace_period_seconds,
    );
    errs.extend(validate_labels(&meta.labels, &child(path, "labels")));
    errs.extend(validate_annotations(
        &meta.annotations,
        &child(path, "annotations"),
    ));
    let fin_path = child(path, "finalizers");
    for (i, f) in meta.finalizers.iter().enumerate() {
        qualified_name(&mut errs, &index(&fin_path, i), f);
    }
    let owners_path = child(path, "ownerReferences");
    let mut controllers = 0;
    for (i, r) in meta.owner_references.iter().enumerate() {
        let p = index(&owners_path, i);
        for (name, value) in [
            ("apiVersion", &r.api_version),
            ("kind", &r.kind),
            ("name", &r.name),
            ("uid", &r.uid),
        ] {
            if value.is_empty() {
                errs.push(FieldError::required(child(&p, name), ""));
            }
        }
        if r.controller == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        errs.push(FieldError::invalid(
            owners_path,
            controllers,
            "only one reference can have controller set to true",
        ));
    }
    errs
}

/// Checks `metadata` for kind `K`, with the name rule of its kind.
pub fn validate_object_meta_for<K: Resource>(meta: &ObjectMeta) -> Vec<FieldError> {
    let rule = if K::KIND == Namespace::KIND {
        NameRule::Label
    } else {
        NameRule::Subdomain
    };
    validate_object_meta(meta, K::NAMESPACED, rule)
}

/// Checks that the fields of `metadata` that never change did not (name, namespace, uid,
/// creationTimestamp).
pub fn validate_object_meta_update(new: &ObjectMeta, old: &ObjectMeta) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let immutable = "field is immutable";
    if new.name != old.name {
        errs.push(FieldError::invalid("metadata.name", &new.name, immutable));
    }
    if new.namespace != old.namespace {
        errs.push(FieldError::invalid(
            "metadata.namespace",
            &new.namespace,
            immutable,
        ));
    }
    if !old.uid.is_empty() && new.uid != old.uid {
        errs.push(FieldError::invalid("metadata.uid", &new.uid, immutable));
    }
    if old.creation_timestamp.is_some() && new.creation_timestamp != old.creation_timestamp {
        errs.push(FieldError::invalid(
            "metadata.creationTimestamp",
            new.creation_timestamp
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            immutable,
        ));
    }
    errs
}

fn validate_type_meta<K: Resource>(api_version: &str, kind: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let expected_version = K::api_version();
    if api_version != expected_version {
        errs.push(FieldError::not_supported(
            "apiVersion",
            api_version,
            &[expected_version.as_str()],
        ));
    }
    if kind != K::KIND {
        errs.push(FieldError::not_supported("kind", kind, &[K::KIND]));
    }
    errs
}

fn validate_common<K: Resource>(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> Vec<FieldError> {
    let mut errs = validate_type_meta::<K>(api_version, kind);
    errs.extend(validate_object_meta_for::<K>(meta));
    errs
}

/// Checks environment variables: names are unique C identifiers.
pub fn validate_env(env: &[EnvVar], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    at_most_items(&mut errs, path, env.len(), MAX_ENV);
    let mut seen = BTreeSet::new();
    for (i, var) in env.iter().enumerate() {
        let p = child(&index(path, i), "name");
        if var.name.is_empty() {
            errs.push(FieldError::required(p, ""));
            continue;
        }
        each_message(&mut errs, &p, &var.name, names::is_c_identifier(&var.name));
        if !seen.insert(var.name.as_str()) {
            errs.push(FieldError::duplicate(p, &var.name));
        }
    }
    errs
}

const CONSTRAINT_OPERATORS: &[&str] = &["DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn"];

/// Checks task constraints: label keys, supported operators, and the number and shape of
/// values each operator needs.
pub fn validate_constraints(constraints: &[Requirement], path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, c) in constraints.iter().enumerate() {
        let p = index(path, i);
        let key_path = child(&p, "key");
        if c.key.is_empty() {
            errs.push(FieldError::required(key_path, ""));
        } else {
            each_message(&mut errs, &key_path, &c.key, names::is_label_key(&c.key));
        }
        let values_path = child(&p, "values");
        match c.operator {
            Operator::In | Operator::NotIn => {
                if c.values.is_empty() {
                    errs.push(FieldError::required(
                        values_path,
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                } else {
                    for (j, v) in c.values.iter().enumerate() {
                        each_message(
                            &mut errs,
                            &index(&values_path, j),
                            v,
                            names::is_label_value(v),
                        );
                    }
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !c.values.is_empty() {
                    errs.push(FieldError::forbidden(
                        values_path,
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            Operator::Gt | Operator::Lt => {
                if c.values.len() != 1 {
                    errs.push(FieldError::required(
                        values_path,
                        "must be specified single value when `operator` is 'Lt' or 'Gt'",
                    ));
                } else if c.values[0].parse::<i64>().is_err() {
                    errs.push(FieldError::invalid(
                        index(&values_path, 0),
                        &c.values[0],
                        "must be an integer",
                    ));
                }
            }
            Operator::Equals | Operator::NotEquals => {
                errs.push(FieldError::not_supported(
                    child(&p, "operator"),
                    c.operator.as_str(),
                    CONSTRAINT_OPERATORS,
                ));
            }
        }
    }
    errs
}

// ---- ports and probes ----

/// The longest a port's `name` may be (an IANA service name).
pub const MAX_PORT_NAME: usize = 15;
/// The most items of a probe's `exec.command`.
pub const MAX_PROBE_COMMAND_ITEMS: usize = 256;
/// The most bytes of a probe's `exec.command` together.
pub const MAX_PROBE_COMMAND_BYTES: usize = 64 * 1024;
/// The longest a probe's `httpGet.path` may be.
pub const MAX_PROBE_PATH: usize = 2048;
/// The most `httpGet.httpHeaders` of a probe.
pub const MAX_PROBE_HEADERS: usize = 32;
/// The longest a probe's header name may be.
pub const MAX_PROBE_HEADER_NAME: usize = 256;
/// The longest a probe's header value may be.
pub const MAX_PROBE_HEADER_VALUE: usize = 4096;
/// The longest a probe's `host` may be (a DNS name's limit).
pub const MAX_PROBE_HOST: usize = 253;
/// The most any of a probe's `…Seconds` may be: a day.
pub const MAX_PROBE_SECONDS: i64 = 86_400;
/// The most a probe's `successThreshold` or `failureThreshold` may be.
pub const MAX_PROBE_THRESHOLD: i32 = 10_000;

const PORT_RANGE_RULE: &str = "must be between 1 and 65535, inclusive";
const PROBE_HANDLERS_RULE: &str = "must have exactly one of exec, httpGet, tcpSocket";

/// Checks a port name against IANA's service-name rules (Kubernetes'
/// `IsValidPortName`): at most 15 characters of `a-z`, `0-9` and `-`, at least one
/// letter, no leading, trailing or consecutive `-`. Returns every rule broken.
pub fn is_port_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > MAX_PORT_NAME {
        errs.push(format!("must be no more than {MAX_PORT_NAME} characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if value.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if !value.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if value.starts_with('-') || value.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

fn port_number(errs: &mut Vec<FieldError>, field: &str, port: i32) {
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(field, port, PORT_RANGE_RULE));
    }
}

fn in_range(errs: &mut Vec<FieldError>, field: &str, value: Option<i64>, min: i64, max: i64) {
    if let Some(v) = value {
        if v < min {
            errs.push(FieldError::invalid(
                field,
                v,
                format!("must be greater than or equal to {min}"),
            ));
        } else if v > max {
            errs.push(FieldError::invalid(
                field,
                v,
                format!("must be less than or equal to {max}"),
            ));
        }
    }
}

/// Checks a task's `ports`: names, numbers, and that no name, no
/// `containerPort`/protocol and no `hostPort`/protocol appears twice.
fn validate_ports(spec: &TaskSpec, path: &str, context: TaskSpecContext) -> Vec<FieldError> {
    let mut errs = Vec::new();
    at_most_items(&mut errs, path, spec.ports.len(), MAX_PORTS);
    let mut names = BTreeSet::new();
    let mut container_ports = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let host_network = matches!(spec.driver, Some(Driver::Exec | Driver::Raw));
    for (i, port) in spec.ports.iter().enumerate() {
        let p = index(path, i);
        if !port.name.is_empty() {
            let name_path = child(&p, "name");
            each_message(&mut errs, &name_path, &port.name, is_port_name(&port.name));
            if !names.insert(port.name.as_str()) {
                errs.push(FieldError::duplicate(name_path, &port.name));
            }
        }
        let protocol = port.protocol();
        let container_path = child(&p, "containerPort");
        if port.container_port == 0 {
            errs.push(FieldError::required(container_path, ""));
        } else if !(1..=65535).contains(&port.container_port) {
            errs.push(FieldError::invalid(
                container_path,
                port.container_port,
                PORT_RANGE_RULE,
            ));
        } else if !container_ports.insert((port.container_port, protocol)) {
            errs.push(FieldError::duplicate(
                container_path,
                format!("{}/{protocol}", port.container_port),
            ));
        }
        if let Some(host_port) = port.host_port {
            let host_path = child(&p, "hostPort");
            if !(1..=65535).contains(&host_port) {
                errs.push(FieldError::invalid(host_path, host_port, PORT_RANGE_RULE));
            } else if !host_ports.insert((host_port, protocol)) {
                errs.push(FieldError::duplicate(
                    host_path,
                    format!("{host_port}/{protocol}"),
                ));
            } else if context != TaskSpecContext::Partial
                && host_network
                && host_port != port.container_port
            {
                errs.push(FieldError::invalid(
                    host_path,
                    host_port,
                    "must equal containerPort for the exec and raw drivers, which use the node's network",
                ));
            }
        }
    }
    errs
}

/// Which of a task's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeRole {
    Readiness,
    Liveness,
    Startup,
}

/// The probes of `spec` with their field names.
fn probes(spec: &TaskSpec) -> [(&'static str, ProbeRole, Option<&Probe>); 3] {
    [
        (
            "readinessProbe",
            ProbeRole::Readiness,
            spec.readiness_probe.as_ref(),
        ),
        (
            "livenessProbe",
            ProbeRole::Liveness,
            spec.liveness_probe.as_ref(),
        ),
        (
            "startupProbe",
            ProbeRole::Startup,
            spec.startup_probe.as_ref(),
        ),
    ]
}

/// Every port a probe of `spec` names, with the field (relative to the spec) naming it.
fn named_probe_ports(spec: &TaskSpec) -> Vec<(String, &str)> {
    let mut named = Vec::new();
    for (field, _, probe) in probes(spec) {
        let Some(probe) = probe else { continue };
        let ports = [
            probe.http_get.as_ref().map(|h| ("httpGet", &h.port)),
            probe.tcp_socket.as_ref().map(|t| ("tcpSocket", &t.port)),
        ];
        for (handler, port) in ports.into_iter().flatten() {
            if let IntOrString::String(name) = port
                && !name.is_empty()
                && is_port_name(name).is_empty()
            {
                named.push((format!("{field}.{handler}.port"), name.as_str()));
            }
        }
    }
    named
}

/// Checks that each port a probe names is one of the task's TCP `ports`; `note` is
/// added to the message.
fn probe_ports_exist(spec: &TaskSpec, path: &str, note: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, name) in named_probe_ports(spec) {
        let field = child(path, &field);
        match spec.ports.iter().find(|p| p.name == name) {
            None => errs.push(FieldError::invalid(
                field,
                name,
                format!("must be the name of one of the task's ports (spec.ports[].name){note}"),
            )),
            Some(port) if port.protocol() != Protocol::Tcp => errs.push(FieldError::invalid(
                field,
                name,
                format!(
                    "names a {} port; probes connect over TCP{note}",
                    port.protocol()
                ),
            )),
            Some(_) => {}
        }
    }
    errs
}

/// Checks a probe's port, without looking names up.
fn probe_port(errs: &mut Vec<FieldError>, field: &str, port: &IntOrString) {
    match port {
        IntOrString::Int(0) => errs.push(FieldError::required(
            field,
            "a port number (1-65535) or the name of one of the task's ports",
        )),
        IntOrString::Int(n) => port_number(errs, field, *n),
        IntOrString::String(name) if name.is_empty() => errs.push(FieldError::required(
            field,
            "a port number (1-65535) or the name of one of the task's ports",
        )),
        IntOrString::String(name) => each_message(errs, field, name, is_port_name(name)),
    }
}

/// Checks a probe's `host`: an IP address or a DNS name.
fn probe_host(errs: &mut Vec<FieldError>, field: &str, host: &str) {
    if host.is_empty() {
        return;
    }
    if host.len() > MAX_PROBE_HOST {
        errs.push(FieldError::too_long(field, MAX_PROBE_HOST));
    } else if host.parse::<std::net::IpAddr>().is_err()
        && !names::is_dns1123_subdomain(host).is_empty()
    {
        errs.push(FieldError::invalid(
            field,
            host,
            "must be an IP address or a DNS name (lower case letters, digits, '-' and '.')",
        ));
    }
}

/// Whether `b` may appear in a probe's path: RFC 3986 path and query characters.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn validate_http_get(errs: &mut Vec<FieldError>, http: &HttpGetAction, path: &str) {
    let path_field = child(path, "path");
    if !http.path.is_empty() {
        if http.path.len() > MAX_PROBE_PATH {
            errs.push(FieldError::too_long(path_field, MAX_PROBE_PATH));
        } else if !http.path.starts_with('/') {
            errs.push(FieldError::invalid(
                path_field,
                &http.path,
                "must start with '/'",
            ));
        } else if !http.path.bytes().all(is_path_byte) {
            errs.push(FieldError::invalid(
                path_field,
                &http.path,
                "must be a URL path and query: RFC 3986 characters only (percent-encode others), no whitespace or control characters",
            ));
        }
    }
    probe_port(errs, &child(path, "port"), &http.port);
    probe_host(errs, &child(path, "host"), &http.host);
    if http.scheme() == Scheme::Https {
        errs.push(FieldError {
            field: child(path, "scheme"),
            kind: FieldErrorKind::NotSupported,
            value: Some(Scheme::Https.as_str().render()),
            message: "supported values: \"HTTP\" (HTTPS probes are not supported yet)".into(),
        });
    }
    let headers = child(path, "httpHeaders");
    at_most_items(errs, &headers, http.http_headers.len(), MAX_PROBE_HEADERS);
    for (i, header) in http.http_headers.iter().enumerate() {
        let p = index(&headers, i);
        let name = child(&p, "name");
        if header.name.is_empty() {
            errs.push(FieldError::required(name, ""));
        } else if header.name.len() > MAX_PROBE_HEADER_NAME {
            errs.push(FieldError::too_long(name, MAX_PROBE_HEADER_NAME));
        } else if !is_header_name(&header.name) {
            errs.push(FieldError::invalid(
                name,
                &header.name,
                "must be a valid HTTP header name: letters, digits and !#$%&'*+-.^_`|~",
            ));
        }
        let value = child(&p, "value");
        if header.value.len() > MAX_PROBE_HEADER_VALUE {
            errs.push(FieldError::too_long(value, MAX_PROBE_HEADER_VALUE));
        } else if !header
            .value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            errs.push(FieldError::invalid(
                value,
                &header.value,
                "must be visible ASCII characters, spaces and tabs (no control characters or line breaks)",
            ));
        }
    }
}

fn validate_probe(probe: &Probe, path: &str, role: ProbeRole) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let set: Vec<&str> = [
        ("exec", probe.exec.is_some()),
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match set.len() {
        0 => errs.push(FieldError::required(path, PROBE_HANDLERS_RULE)),
        1 => {}
        _ => errs.push(FieldError::forbidden(
            path,
            format!("{PROBE_HANDLERS_RULE}, not several ({})", set.join(", ")),
        )),
    }
    if let Some(exec) = &probe.exec {
        // Until commands run inside a task's container (exec), no node can
        // run one: refused here rather than failing every probe, which would
        // restart the task for ever.
        errs.push(FieldError::forbidden(
            child(path, "exec"),
            "exec probes are not supported yet (commands inside a task come with exec); use httpGet or tcpSocket",
        ));
        let command = child(&child(path, "exec"), "command");
        if exec.command.first().is_none_or(String::is_empty) {
            errs.push(FieldError::required(
                index(&command, 0),
                "the executable to run inside the task",
            ));
        }
        at_most_items(
            &mut errs,
            &command,
            exec.command.len(),
            MAX_PROBE_COMMAND_ITEMS,
        );
        let bytes = exec
            .command
            .iter()
            .fold(0usize, |sum, part| sum.saturating_add(part.len()));
        if bytes > MAX_PROBE_COMMAND_BYTES {
            errs.push(FieldError::too_long(&command, MAX_PROBE_COMMAND_BYTES));
        }
        for (i, part) in exec
            .command
            .iter()
            .enumerate()
            .take(MAX_PROBE_COMMAND_ITEMS)
        {
            if part.contains('\0') {
                errs.push(FieldError::invalid(
                    index(&command, i),
                    part,
                    "must not contain NUL",
                ));
            }
        }
    }
    if let Some(http) = &probe.http_get {
        validate_http_get(&mut errs, http, &child(path, "httpGet"));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let p = child(path, "tcpSocket");
        probe_port(&mut errs, &child(&p, "port"), &tcp.port);
        probe_host(&mut errs, &child(&p, "host"), &tcp.host);
    }
    let seconds = |v: Option<i32>| v.map(i64::from);
    in_range(
        &mut errs,
        &child(path, "initialDelaySeconds"),
        seconds(probe.initial_delay_seconds),
        0,
        MAX_PROBE_SECONDS,
    );
    for (field, value) in [
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
    ] {
        in_range(
            &mut errs,
            &child(path, field),
            seconds(value),
            1,
            MAX_PROBE_SECONDS,
        );
    }
    for (field, value) in [
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        in_range(
            &mut errs,
            &child(path, field),
            seconds(value),
            1,
            i64::from(MAX_PROBE_THRESHOLD),
        );
    }
    if role != ProbeRole::Readiness
        && let Some(threshold) = probe.success_threshold
        && threshold != 1
        && threshold >= 1
    {
        errs.push(FieldError::invalid(
            child(path, "successThreshold"),
            threshold,
            "must be 1 for liveness and startup probes",
        ));
    }
    let grace = child(path, "terminationGracePeriodSeconds");
    match (role, probe.termination_grace_period_seconds) {
        (_, None) => {}
        (ProbeRole::Readiness, Some(v)) => errs.push(FieldError::invalid(
            grace,
            v,
            "must not be set for readiness probes",
        )),
        (_, Some(v)) => in_range(&mut errs, &grace, Some(v), 1, MAX_PROBE_SECONDS),
    }
    errs
}

/// Checks a task's `ports` and probes at `path` (the spec's path). A partial
/// spec's probes may name ports of the spec it is laid over, so names are only
/// looked up in whole specs.
fn validate_ports_and_probes(
    spec: &TaskSpec,
    path: &str,
    context: TaskSpecContext,
) -> Vec<FieldError> {
    let mut errs = validate_ports(spec, &child(path, "ports"), context);
    for (field, role, probe) in probes(spec) {
        if let Some(probe) = probe {
            errs.extend(validate_probe(probe, &child(path, field), role));
        }
    }
    if context != TaskSpecContext::Partial {
        errs.extend(probe_ports_exist(spec, path, ""));
    }
    errs
}

/// Whether a Task spec is checked whole, as a template, or as a partial override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSpecContext {
    /// A Task's own spec: everything required must be there.
    Task,
    /// A Job's or Service's template: as a Task, but `nodeName` and `index` are set later.
    Template,
    /// A Job override: only the fields present are checked.
    Partial,
}

/// Checks a Task spec at `path`.
pub fn validate_task_spec(
    spec: &TaskSpec,
    path: &str,
    context: TaskSpecContext,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let partial = context == TaskSpecContext::Partial;
    if !partial {
        match spec.driver() {
            Driver::Container => {
                if spec.image.is_empty() {
                    errs.push(FieldError::required(
                        child(path, "image"),
                        "required for the container driver",
                    ));
                }
            }
            Driver::Exec | Driver::Raw => {
                if spec.command.is_empty() {
                    errs.push(FieldError::required(
                        child(path, "command"),
                        "required for the exec driver",
                    ));
                }
            }
        }
    }
    let argv = spec.command.len().saturating_add(spec.args.len());
    at_most_items(&mut errs, &child(path, "args"), argv, MAX_ARGV_ITEMS);
    let argv_bytes = spec
        .command
        .iter()
        .chain(&spec.args)
        .fold(0usize, |sum, part| sum.saturating_add(part.len()));
    if argv_bytes > MAX_ARGV_BYTES {
        errs.push(FieldError::too_long(child(path, "args"), MAX_ARGV_BYTES));
    }
    errs.extend(validate_env(&spec.env, &child(path, "env")));

    let res = child(path, "resources");
    non_negative_quantity(&mut errs, &child(&res, "cpu"), spec.resources.cpu.as_ref());
    non_negative_quantity(
        &mut errs,
        &child(&res, "memory"),
        spec.resources.memory.as_ref(),
    );
    non_negative_quantity(
        &mut errs,
        &child(&res, "disk"),
        spec.resources.disk.as_ref(),
    );
    let ports = child(&res, "ports");
    at_most_items(&mut errs, &ports, spec.resources.ports.len(), MAX_PORTS);
    let mut seen_ports = BTreeSet::new();
    for (i, &port) in spec.resources.ports.iter().enumerate() {
        let p = index(&ports, i);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                p,
                port,
                "must be between 1 and 65535, inclusive",
            ));
        } else if !seen_ports.insert(port) {
            errs.push(FieldError::duplicate(p, port));
        }
    }
    let extended = child(&res, "extended");
    for (name, q) in &spec.resources.extended {
        let p = key(&extended, name);
        qualified_name(&mut errs, &p, name);
        non_negative_quantity(&mut errs, &p, Some(q));
    }

    errs.extend(validate_constraints(
        &spec.constraints,
        &child(path, "constraints"),
    ));

    at_most_items(
        &mut errs,
        &child(path, "constraints"),
        spec.constraints.len(),
        MAX_RULES,
    );
    let tolerations = child(path, "tolerations");
    at_most_items(&mut errs, &tolerations, spec.tolerations.len(), MAX_RULES);
    for (i, t) in spec.tolerations.iter().enumerate() {
        let p = index(&tolerations, i);
        let operator = t.operator.unwrap_or_default();
        if t.key.is_empty() {
            if operator != TolerationOperator::Exists {
                errs.push(FieldError::invalid(
                    child(&p, "operator"),
                    "Equal",
                    "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
                ));
            }
        } else {
            qualified_name(&mut errs, &child(&p, "key"), &t.key);
        }
        match operator {
            TolerationOperator::Exists => {
                if !t.value.is_empty() {
                    errs.push(FieldError::invalid(
                        child(&p, "operator"),
                        &t.value,
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            TolerationOperator::Equal => {
                each_message(
                    &mut errs,
                    &child(&p, "value"),
                    &t.value,
                    names::is_label_value(&t.value),
                );
            }
        }
        if t.toleration_seconds.is_some() && t.effect != Some(crate::kinds::TaintEffect::NoExecute)
        {
            errs.push(FieldError::invalid(
                child(&p, "effect"),
                t.effect.map(|e| e.as_str()).unwrap_or(""),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
    }

    positive_i64(
        &mut errs,
        &child(path, "timeLimitSeconds"),
        spec.time_limit_seconds,
    );
    non_negative_i64(
        &mut errs,
        &child(path, "terminationGracePeriodSeconds"),
        spec.termination_grace_period_seconds,
    );

    let mounts = child(path, "mounts");
    at_most_items(&mut errs, &mounts, spec.mounts.len(), MAX_MOUNTS);
    let mut targets = BTreeSet::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        let p = index(&mounts, i);
        absolute_path(&mut errs, &child(&p, "source"), &m.source, true);
        absolute_path(&mut errs, &child(&p, "target"), &m.target, true);
        if !m.target.is_empty() && !targets.insert(m.target.as_str()) {
            errs.push(FieldError::duplicate(child(&p, "target"), &m.target));
        }
    }

    if !spec.log_path.is_empty() && !is_log_file_name(&spec.log_path) {
        errs.push(FieldError::invalid(
            child(path, "logPath"),
            &spec.log_path,
            LOG_FILE_NAME_RULE,
        ));
    }

    if !spec.service_account_name.is_empty() {
        for problem in crate::names::is_dns1123_subdomain(&spec.service_account_name) {
            errs.push(FieldError::invalid(
                child(path, "serviceAccountName"),
                &spec.service_account_name,
                &problem,
            ));
        }
    }

    errs.extend(validate_ports_and_probes(spec, path, context));

    let node_path = child(path, "nodeName");
    let index_path = child(path, "index");
    match context {
        TaskSpecContext::Task => {
            if !spec.node_name.is_empty() {
                each_message(
                    &mut errs,
                    &node_path,
                    &spec.node_name,
                    names::is_dns1123_subdomain(&spec.node_name),
                );
            }
            non_negative(&mut errs, &index_path, spec.index);
        }
        TaskSpecContext::Template => {
            if !spec.node_name.is_empty() {
                errs.push(FieldError::forbidden(
                    node_path,
                    "may not be set in a template; the scheduler sets it on each task",
                ));
            }
            if spec.index.is_some() {
                errs.push(FieldError::forbidden(
                    index_path,
                    "may not be set in a template; the job controller sets it on each task",
                ));
            }
        }
        // An override's nodeName and index are reported by the Job's own checks.
        TaskSpecContext::Partial => {}
    }
    errs
}

fn validate_template_meta(meta: &TemplateMeta, path: &str) -> Vec<FieldError> {
    let mut errs = validate_labels(&meta.labels, &child(path, "labels"));
    errs.extend(validate_annotations(
        &meta.annotations,
        &child(path, "annotations"),
    ));
    errs
}

fn validate_template(template: &TaskTemplate, path: &str) -> Vec<FieldError> {
    let mut errs = validate_template_meta(&template.metadata, &child(path, "metadata"));
    errs.extend(validate_task_spec(
        &template.spec,
        &child(path, "spec"),
        TaskSpecContext::Template,
    ));
    errs
}

fn terminal_phase_unchanged<P: PartialEq + fmt::Display + Copy>(
    old: Option<P>,
    new: Option<P>,
    is_terminal: impl Fn(&P) -> bool,
) -> Option<FieldError> {
    let old = old?;
    if is_terminal(&old) && new != Some(old) {
        let shown = new.map(|p| p.to_string()).unwrap_or_default();
        return Some(FieldError::invalid(
            "status.phase",
            shown,
            format!("may not change once it is {old}, a terminal phase"),
        ));
    }
    None
}

// ---- Task ----

impl Validate for Task {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Task>(&self.api_version, &self.kind, &self.metadata);
        errs.extend(validate_task_spec(
            &self.spec,
            "spec",
            TaskSpecContext::Task,
        ));
        if let Some(status) = &self.status {
            non_negative(&mut errs, "status.restartCount", Some(status.restart_count));
        }
        errs
    }

    /// Besides `validate`: the spec is immutable, except that `nodeName` (binding) may
    /// be set once; `logPath` is fixed at creation (the node opens the log when it
    /// starts the task); a terminal phase never changes.
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        if !old.spec.node_name.is_empty() && self.spec.node_name != old.spec.node_name {
            errs.push(FieldError::invalid(
                "spec.nodeName",
                &self.spec.node_name,
                "may not change once set",
            ));
        }
        if self.spec.log_path != old.spec.log_path {
            errs.push(FieldError::invalid(
                "spec.logPath",
                &self.spec.log_path,
                "field is immutable",
            ));
        }
        let mut comparable = self.spec.clone();
        comparable.node_name.clone_from(&old.spec.node_name);
        comparable.log_path.clone_from(&old.spec.log_path);
        if comparable != old.spec {
            errs.push(FieldError::forbidden(
                "spec",
                "a task's spec may not change after creation, except to set spec.nodeName once",
            ));
        }
        let phase = |t: &Task| t.status.as_ref().map(|s| s.phase);
        errs.extend(terminal_phase_unchanged(
            phase(old),
            phase(self),
            TaskPhase::is_terminal,
        ));
        errs
    }
}

// ---- Job ----

/// Checks a Job spec; `job_name` is used to reject a dependency on itself.
pub fn validate_job_spec(spec: &JobSpec, job_name: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    non_negative(&mut errs, "spec.replicas", spec.replicas);
    at_most(&mut errs, "spec.replicas", spec.replicas, MAX_REPLICAS);
    if let Some(p) = spec.parallelism
        && p < 1
    {
        errs.push(FieldError::invalid(
            "spec.parallelism",
            p,
            "must be greater than or equal to 1",
        ));
    }
    at_most(
        &mut errs,
        "spec.parallelism",
        spec.parallelism,
        MAX_REPLICAS,
    );
    non_negative(&mut errs, "spec.maxRetries", spec.max_retries);
    at_most(&mut errs, "spec.maxRetries", spec.max_retries, MAX_RETRIES);
    at_most_items(
        &mut errs,
        "spec.overrides",
        spec.overrides.len(),
        MAX_OVERRIDES,
    );
    at_most_items(&mut errs, "spec.inputs", spec.inputs.len(), MAX_MOUNTS);
    at_most_items(
        &mut errs,
        "spec.dependsOn",
        spec.depends_on.len(),
        MAX_DEPENDS_ON,
    );
    positive_i64(&mut errs, "spec.timeLimitSeconds", spec.time_limit_seconds);
    errs.extend(validate_template(&spec.template, "spec.template"));

    let replicas = spec.replicas.filter(|r| *r >= 0).unwrap_or(1);
    for (i, o) in spec.overrides.iter().enumerate() {
        let p = index("spec.overrides", i);
        let indexes_path = child(&p, "indexes");
        if o.indexes.trim().is_empty() {
            errs.push(FieldError::required(indexes_path, "e.g. \"0,3-5\""));
        } else if let Err(e) = Indexes::parse(&o.indexes, Some(replicas)) {
            errs.push(FieldError::invalid(indexes_path, &o.indexes, e.to_string()));
        }
        errs.extend(validate_task_spec(
            &o.spec,
            &child(&p, "spec"),
            TaskSpecContext::Partial,
        ));
        // The override's probes may name the template's ports, and its ports
        // replace the template's: names are looked up in the spec it makes.
        let o_spec = &o.spec;
        if !o_spec.ports.is_empty()
            || o_spec.readiness_probe.is_some()
            || o_spec.liveness_probe.is_some()
            || o_spec.startup_probe.is_some()
        {
            let mut merged = spec.template.spec.clone();
            merged.overlay(o_spec);
            errs.extend(probe_ports_exist(
                &merged,
                &child(&p, "spec"),
                " once this override is applied",
            ));
        }
        if !o.spec.node_name.is_empty() {
            errs.push(FieldError::forbidden(
                child(&p, "spec.nodeName"),
                "may not be set in an override; the scheduler sets it on each task",
            ));
        }
        if o.spec.index.is_some() {
            errs.push(FieldError::forbidden(
                child(&p, "spec.index"),
                "may not be set in an override; the job controller sets it on each task",
            ));
        }
    }

    let mut targets = BTreeSet::new();
    for (i, JobInput { source, target }) in spec.inputs.iter().enumerate() {
        let p = index("spec.inputs", i);
        absolute_path(&mut errs, &child(&p, "source"), source, true);
        absolute_path(&mut errs, &child(&p, "target"), target, true);
        if !target.is_empty() && !targets.insert(target.as_str()) {
            errs.push(FieldError::duplicate(child(&p, "target"), target));
        }
    }
    absolute_path(&mut errs, "spec.outputDir", &spec.output_dir, false);
    // `logDir` is deprecated and ignored (the node chooses log locations); it is
    // still accepted, with a warning from the API server, so old manifests apply.
    errs.extend(validate_env(&spec.env, "spec.env"));

    let mut seen = BTreeSet::new();
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let p = index("spec.dependsOn", i);
        if dep.is_empty() {
            errs.push(FieldError::required(p, ""));
            continue;
        }
        each_message(&mut errs, &p, dep, names::is_dns1123_subdomain(dep));
        if !job_name.is_empty() && dep == job_name {
            errs.push(FieldError::invalid(
                p.clone(),
                dep,
                "a job may not depend on itself",
            ));
        }
        if !seen.insert(dep.as_str()) {
            errs.push(FieldError::duplicate(p, dep));
        }
    }
    errs
}

impl Validate for Job {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Job>(&self.api_version, &self.kind, &self.metadata);
        errs.extend(validate_job_spec(&self.spec, &self.metadata.name));
        if let Some(status) = &self.status {
            for (name, count) in [
                ("pending", status.pending),
                ("running", status.running),
                ("completed", status.completed),
                ("failed", status.failed),
                ("killed", status.killed),
                ("lost", status.lost),
            ] {
                non_negative(&mut errs, &child("status", name), Some(count));
            }
        }
        errs
    }

    /// Besides `validate`: a terminal phase never changes.
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        let phase = |j: &Job| j.status.as_ref().map(|s| s.phase);
        errs.extend(terminal_phase_unchanged(
            phase(old),
            phase(self),
            crate::kinds::JobPhase::is_terminal,
        ));
        errs
    }
}

// ---- Service ----

fn int_or_percent(errs: &mut Vec<FieldError>, field: &str, value: &IntOrString) {
    match value {
        IntOrString::Int(v) => {
            if *v < 0 {
                errs.push(FieldError::invalid(
                    field,
                    *v,
                    "must be greater than or equal to 0",
                ));
            }
        }
        IntOrString::String(s) => match value.percentage() {
            Some(p) if p >= 0 => {}
            Some(_) => errs.push(FieldError::invalid(
                field,
                s,
                "must be greater than or equal to 0",
            )),
            None => errs.push(FieldError::invalid(
                field,
                s,
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            )),
        },
    }
}

fn is_zero(value: &IntOrString) -> bool {
    match value {
        IntOrString::Int(v) => *v == 0,
        IntOrString::String(_) => value.percentage() == Some(0),
    }
}

fn validate_strategy(strategy: &ServiceStrategy, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let surge = strategy.max_surge();
    let unavailable = strategy.max_unavailable();
    let surge_path = child(path, "maxSurge");
    let unavailable_path = child(path, "maxUnavailable");
    int_or_percent(&mut errs, &surge_path, &surge);
    int_or_percent(&mut errs, &unavailable_path, &unavailable);
    if is_zero(&surge) && is_zero(&unavailable) {
        errs.push(FieldError::invalid(
            unavailable_path.clone(),
            &unavailable,
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    if unavailable.percentage().is_some_and(|p| p > 100) {
        errs.push(FieldError::invalid(
            unavailable_path,
            &unavailable,
            "must not be greater than 100%",
        ));
    }
    errs
}

impl Validate for Service {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Service>(&self.api_version, &self.kind, &self.metadata);
        non_negative(&mut errs, "spec.replicas", self.spec.replicas);
        at_most(&mut errs, "spec.replicas", self.spec.replicas, MAX_REPLICAS);
        errs.extend(validate_template(&self.spec.template, "spec.template"));
        if let Some(policy) = self.spec.template.spec.restart_policy
            && policy != RestartPolicy::Always
        {
            errs.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                policy.as_str(),
                &["Always"],
            ));
        }
        if let Some(strategy) = &self.spec.strategy {
            errs.extend(validate_strategy(strategy, "spec.strategy"));
        }
        errs.extend(crate::kinds::service::validate_network(&self.spec));
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        errs.extend(crate::kinds::service::validate_network_update(
            &self.spec, &old.spec,
        ));
        errs
    }
}

// ---- Endpoints ----

impl Validate for crate::kinds::Endpoints {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<crate::kinds::Endpoints>(
            &self.api_version,
            &self.kind,
            &self.metadata,
        );
        errs.extend(self.validate_subsets());
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        errs
    }
}

// ---- Node ----

impl Validate for Node {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Node>(&self.api_version, &self.kind, &self.metadata);
        at_most_items(&mut errs, "spec.taints", self.spec.taints.len(), MAX_RULES);
        let mut seen = BTreeSet::new();
        for (i, taint) in self.spec.taints.iter().enumerate() {
            let p = index("spec.taints", i);
            if taint.key.is_empty() {
                errs.push(FieldError::required(child(&p, "key"), ""));
            } else {
                qualified_name(&mut errs, &child(&p, "key"), &taint.key);
            }
            each_message(
                &mut errs,
                &child(&p, "value"),
                &taint.value,
                names::is_label_value(&taint.value),
            );
            match taint.effect {
                None => errs.push(FieldError::required(
                    child(&p, "effect"),
                    "one of NoSchedule, PreferNoSchedule, NoExecute",
                )),
                Some(effect) => {
                    if !seen.insert((taint.key.as_str(), effect.as_str())) {
                        errs.push(FieldError::duplicate(
                            p,
                            format!("{}:{}", taint.key, effect.as_str()),
                        ));
                    }
                }
            }
        }
        task_cidr(&mut errs, "spec.taskCIDR", &self.spec.task_cidr);
        if let Some(status) = &self.status {
            for (field, map) in [
                ("status.capacity", &status.capacity),
                ("status.allocatable", &status.allocatable),
            ] {
                for (name, q) in map {
                    let p = key(field, name);
                    qualified_name(&mut errs, &p, name);
                    non_negative_quantity(&mut errs, &p, Some(q));
                }
            }
            let endpoint = &status.nodelet_endpoint;
            if !endpoint.is_empty()
                && let Err(rule) = parse_nodelet_endpoint(endpoint)
            {
                errs.push(FieldError::invalid(
                    "status.nodeletEndpoint",
                    endpoint,
                    rule.to_string(),
                ));
            }
        }
        errs
    }

    /// Besides `validate`: `status.nodeletEndpoint` may not change once set, so a
    /// Node cannot send the API server's calls somewhere else later (until nodes
    /// have an identity); a nodelet that moves needs its Node deleted first.
    /// Nor may `spec.taskCIDR` (as Kubernetes' `podCIDR`): tasks hold addresses
    /// in it, and other nodes route to it.
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        // (An over-long value is already refused by `validate`, without echoing it.)
        if !old.spec.task_cidr.is_empty()
            && self.spec.task_cidr != old.spec.task_cidr
            && self.spec.task_cidr.len() <= MAX_CIDR_LENGTH
        {
            errs.push(FieldError::invalid(
                "spec.taskCIDR",
                &self.spec.task_cidr,
                format!(
                    "field is immutable once set (it was {}): delete and register the Node again to change it",
                    old.spec.task_cidr
                ),
            ));
        }
        let endpoint = |n: &Node| {
            n.status
                .as_ref()
                .map(|s| s.nodelet_endpoint.clone())
                .unwrap_or_default()
        };
        let (new_endpoint, old_endpoint) = (endpoint(self), endpoint(old));
        if !old_endpoint.is_empty() && new_endpoint != old_endpoint {
            errs.push(FieldError::invalid(
                "status.nodeletEndpoint",
                new_endpoint,
                "field is immutable",
            ));
        }
        errs
    }
}

// ---- Namespace ----

impl Validate for Namespace {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Namespace>(&self.api_version, &self.kind, &self.metadata);
        for (i, f) in self.spec.finalizers.iter().enumerate() {
            qualified_name(&mut errs, &index("spec.finalizers", i), f);
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        errs
    }
}

// ---- Event ----

impl Validate for Event {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Event>(&self.api_version, &self.kind, &self.metadata);
        let involved = &self.involved_object;
        if involved.kind.is_empty() {
            errs.push(FieldError::required("involvedObject.kind", ""));
        }
        if involved.name.is_empty() {
            errs.push(FieldError::required("involvedObject.name", ""));
        }
        if !involved.namespace.is_empty() && involved.namespace != self.metadata.namespace {
            errs.push(FieldError::invalid(
                "involvedObject.namespace",
                &involved.namespace,
                "does not match event.namespace",
            ));
        }
        if self.reason.len() > EVENT_REASON_MAX_LENGTH {
            errs.push(FieldError::too_long("reason", EVENT_REASON_MAX_LENGTH));
        }
        non_negative(&mut errs, "count", self.count);
        errs
    }
}

// ---- Lease ----

impl Validate for Lease {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate_common::<Lease>(&self.api_version, &self.kind, &self.metadata);
        if let Some(d) = self.spec.lease_duration_seconds
            && d <= 0
        {
            errs.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                d,
                "must be greater than 0",
            ));
        }
        non_negative(
            &mut errs,
            "spec.leaseTransitions",
            self.spec.lease_transitions,
        );
        errs
    }
}

// ---- ResourceDefinition ----

impl Validate for ResourceDefinition {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs =
            validate_common::<ResourceDefinition>(&self.api_version, &self.kind, &self.metadata);
        let spec = &self.spec;
        let names_spec = &spec.names;
        let expected_name = format!("{}.{}", names_spec.plural, spec.group);
        if !self.metadata.name.is_empty() && self.metadata.name != expected_name {
            errs.push(FieldError::invalid(
                "metadata.name",
                &self.metadata.name,
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        if spec.group.is_empty() {
            errs.push(FieldError::required("spec.group", ""));
        } else {
            each_message(
                &mut errs,
                "spec.group",
                &spec.group,
                names::is_dns1123_subdomain(&spec.group),
            );
            if !spec.group.contains('.') {
                errs.push(FieldError::invalid(
                    "spec.group",
                    &spec.group,
                    "should be a domain with at least one dot",
                ));
            }
        }
        let label = |errs: &mut Vec<FieldError>, field: &str, value: &str, required: bool| {
            if value.is_empty() {
                if required {
                    errs.push(FieldError::required(field, ""));
                }
            } else {
                each_message(errs, field, value, names::is_dns1123_label(value));
            }
        };
        label(&mut errs, "spec.names.plural", &names_spec.plural, true);
        label(
            &mut errs,
            "spec.names.singular",
            &names_spec.singular,
            false,
        );
        let mut short = BTreeSet::new();
        for (i, s) in names_spec.short_names.iter().enumerate() {
            let p = index("spec.names.shortNames", i);
            label(&mut errs, &p, s, true);
            if !short.insert(s.as_str()) {
                errs.push(FieldError::duplicate(p, s));
            }
        }
        if names_spec.kind.is_empty() {
            errs.push(FieldError::required("spec.names.kind", ""));
        } else {
            each_message(
                &mut errs,
                "spec.names.kind",
                &names_spec.kind,
                names::is_camel_case_kind(&names_spec.kind),
            );
        }
        if !names_spec.list_kind.is_empty() {
            each_message(
                &mut errs,
                "spec.names.listKind",
                &names_spec.list_kind,
                names::is_camel_case_kind(&names_spec.list_kind),
            );
            if names_spec.list_kind == names_spec.kind {
                errs.push(FieldError::invalid(
                    "spec.names.listKind",
                    &names_spec.list_kind,
                    "kind and listKind may not be the same",
                ));
            }
        }
        if spec.versions.is_empty() {
            errs.push(FieldError::required(
                "spec.versions",
                "must have at least one version",
            ));
        } else {
            let storage = spec.versions.iter().filter(|v| v.storage).count();
            if storage != 1 {
                errs.push(FieldError::invalid(
                    "spec.versions",
                    storage,
                    "must have exactly one version marked as storage version",
                ));
            }
        }
        let mut versions = BTreeSet::new();
        for (i, v) in spec.versions.iter().enumerate() {
            let p = index("spec.versions", i);
            let name_path = child(&p, "name");
            label(&mut errs, &name_path, &v.name, true);
            if !v.name.is_empty() && !versions.insert(v.name.as_str()) {
                errs.push(FieldError::duplicate(name_path, &v.name));
            }
            let schema_path = child(&p, "schema.openAPIV3Schema");
            match &v.schema {
                None => errs.push(FieldError::required(schema_path, "schemas are required")),
                Some(s) if s.open_api_v3_schema.is_null() => {
                    errs.push(FieldError::required(schema_path, "schemas are required"));
                }
                Some(s) if !s.open_api_v3_schema.is_object() => {
                    errs.push(FieldError::invalid(
                        schema_path,
                        s.open_api_v3_schema.to_string(),
                        "must be a JSON schema object",
                    ));
                }
                Some(_) => {}
            }
        }
        errs
    }

    /// Besides `validate`: the scope may not change.
    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        errs.extend(validate_object_meta_update(&self.metadata, &old.metadata));
        if self.spec.scope != old.spec.scope {
            errs.push(FieldError::invalid(
                "spec.scope",
                format!("{:?}", self.spec.scope),
                "field is immutable",
            ));
        }
        errs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kinds::*;
    use crate::meta::{ObjectReference, OwnerReference};
    use crate::quantity::Quantity;

    fn fields(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.to_string()).collect()
    }

    fn has(errs: &[FieldError], text: &str) -> bool {
        errs.iter().any(|e| e.to_string() == text)
    }

    fn assert_has(errs: &[FieldError], text: &str) {
        assert!(has(errs, text), "missing {text:?} in {:#?}", fields(errs));
    }

    fn valid_task() -> Task {
        let mut task = Task::new(
            "t",
            TaskSpec {
                image: "busybox".into(),
                ..TaskSpec::default()
            },
        );
        task.metadata.namespace = "default".into();
        task
    }

    fn valid_job() -> Job {
        let mut job = Job::new(
            "j",
            JobSpec {
                replicas: Some(3),
                template: TaskTemplate {
                    spec: TaskSpec {
                        image: "busybox".into(),
                        ..TaskSpec::default()
                    },
                    ..TaskTemplate::default()
                },
                ..JobSpec::default()
            },
        );
        job.metadata.namespace = "default".into();
        job
    }

    #[test]
    fn field_error_display_matches_kubernetes() {
        assert_eq!(
            FieldError::invalid("spec.replicas", -1, "must be greater than or equal to 0")
                .to_string(),
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            FieldError::invalid("metadata.name", "A", "bad").to_string(),
            "metadata.name: Invalid value: \"A\": bad"
        );
        assert_eq!(
            FieldError::required("spec.image", "").to_string(),
            "spec.image: Required value"
        );
        assert_eq!(
            FieldError::not_supported("spec.x", "b", &["a", "c"]).to_string(),
            "spec.x: Unsupported value: \"b\": supported values: \"a\", \"c\""
        );
        assert_eq!(
            FieldError::duplicate("spec.p[1]", 80).to_string(),
            "spec.p[1]: Duplicate value: 80"
        );
        assert_eq!(
            FieldError::too_long("metadata.annotations", 262144).to_string(),
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
        assert_eq!(
            FieldError::forbidden("metadata.namespace", "not allowed on this type").to_string(),
            "metadata.namespace: Forbidden: not allowed on this type"
        );
        let errs = [FieldError::required("a", ""), FieldError::required("b", "")];
        assert_eq!(
            FieldErrors(&errs).to_string(),
            "a: Required value\nb: Required value"
        );
    }

    #[test]
    fn valid_objects_have_no_errors() {
        assert_eq!(fields(&valid_task().validate()), Vec::<String>::new());
        assert_eq!(fields(&valid_job().validate()), Vec::<String>::new());
        let ns = Namespace::new("team-a", NamespaceSpec::default());
        assert_eq!(fields(&ns.validate()), Vec::<String>::new());
        let node = Node::new("node-1.example", NodeSpec::default());
        assert_eq!(fields(&node.validate()), Vec::<String>::new());
    }

    #[test]
    fn metadata_rules() {
        let mut task = valid_task();
        task.metadata.name = String::new();
        task.metadata.namespace = String::new();
        task.metadata.labels.insert("bad key".into(), "-".into());
        task.metadata
            .annotations
            .insert("big".into(), "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT));
        task.metadata.finalizers.push("a/b/c".into());
        task.metadata.owner_references = vec![
            OwnerReference {
                controller: Some(true),
                ..OwnerReference::default()
            },
            OwnerReference {
                api_version: "v".into(),
                kind: "k".into(),
                name: "n".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ];
        let errs = task.validate();
        assert_has(
            &errs,
            "metadata.name: Required value: name or generateName is required",
        );
        assert_has(&errs, "metadata.namespace: Required value");
        assert!(has(
            &errs,
            "metadata.labels: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        ));
        assert!(
            errs.iter()
                .any(|e| e.field == "metadata.labels" && e.value.as_deref() == Some("\"-\""))
        );
        assert_has(
            &errs,
            "metadata.annotations: Too long: may not be more than 262144 bytes",
        );
        assert!(errs.iter().any(|e| e.field == "metadata.finalizers[0]"));
        assert_has(
            &errs,
            "metadata.ownerReferences[0].apiVersion: Required value",
        );
        assert_has(&errs, "metadata.ownerReferences[0].uid: Required value");
        assert_has(
            &errs,
            "metadata.ownerReferences: Invalid value: 2: only one reference can have controller set to true",
        );

        let mut task = valid_task();
        task.metadata.name = "Bad_Name".into();
        let errs = task.validate();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().starts_with("metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"));

        let mut task = valid_task();
        task.metadata.name = String::new();
        task.metadata.generate_name = "web-".into();
        assert!(task.validate().is_empty());

        let mut node = Node::new("n", NodeSpec::default());
        node.metadata.namespace = "default".into();
        assert_eq!(
            fields(&node.validate()),
            vec!["metadata.namespace: Forbidden: not allowed on this type"]
        );

        let ns = Namespace::new("a.b", NamespaceSpec::default());
        assert!(ns.validate()[0].to_string().contains("RFC 1123 label"));

        let mut task = valid_task();
        task.kind = "Job".into();
        assert_eq!(
            fields(&task.validate()),
            vec!["kind: Unsupported value: \"Job\": supported values: \"Task\""]
        );
    }

    #[test]
    fn job_rules() {
        let mut job = valid_job();
        job.spec.replicas = Some(-1);
        job.spec.parallelism = Some(0);
        job.spec.max_retries = Some(-2);
        job.spec.time_limit_seconds = Some(0);
        job.spec.depends_on = vec!["j".into(), "prep".into(), "prep".into(), "Bad".into()];
        job.spec.output_dir = "out".into();
        job.spec.inputs = vec![JobInput {
            source: "/data".into(),
            target: "data".into(),
        }];
        job.spec.env = vec![
            EnvVar::new("1X", "a"),
            EnvVar::new("A", "b"),
            EnvVar::new("A", "c"),
        ];
        let errs = job.validate();
        assert_has(
            &errs,
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        );
        assert_has(
            &errs,
            "spec.parallelism: Invalid value: 0: must be greater than or equal to 1",
        );
        assert_has(
            &errs,
            "spec.maxRetries: Invalid value: -2: must be greater than or equal to 0",
        );
        assert_has(
            &errs,
            "spec.timeLimitSeconds: Invalid value: 0: must be greater than 0",
        );
        assert_has(
            &errs,
            "spec.dependsOn[0]: Invalid value: \"j\": a job may not depend on itself",
        );
        assert_has(&errs, "spec.dependsOn[2]: Duplicate value: \"prep\"");
        assert!(errs.iter().any(|e| e.field == "spec.dependsOn[3]" && e.message.contains("RFC 1123 subdomain")));
        assert_has(
            &errs,
            "spec.outputDir: Invalid value: \"out\": must be an absolute path",
        );
        assert_has(
            &errs,
            "spec.inputs[0].target: Invalid value: \"data\": must be an absolute path",
        );
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.env[0].name" && e.message.contains("C identifier"))
        );
        assert_has(&errs, "spec.env[2].name: Duplicate value: \"A\"");
    }

    #[test]
    fn job_overrides() {
        let mut job = valid_job();
        job.spec.overrides = vec![
            TaskOverride {
                indexes: "0,3-5".into(),
                spec: TaskSpec::default(),
            },
            TaskOverride {
                indexes: "5-3".into(),
                spec: TaskSpec::default(),
            },
            TaskOverride {
                indexes: "x".into(),
                spec: TaskSpec::default(),
            },
            TaskOverride {
                indexes: "".into(),
                spec: TaskSpec {
                    node_name: "n".into(),
                    ..TaskSpec::default()
                },
            },
            TaskOverride {
                indexes: "1".into(),
                spec: TaskSpec {
                    args: vec!["--leader".into()],
                    ..TaskSpec::default()
                },
            },
        ];
        let errs = job.validate();
        assert_has(
            &errs,
            "spec.overrides[0].indexes: Invalid value: \"0,3-5\": index 3 is out of range: the job has 3 replicas, so indexes run from 0 to 2",
        );
        assert_has(
            &errs,
            "spec.overrides[1].indexes: Invalid value: \"5-3\": range \"5-3\" is reversed: its start must not be greater than its end",
        );
        assert_has(
            &errs,
            "spec.overrides[2].indexes: Invalid value: \"x\": \"x\" is not an index: expected a non-negative integer or a range such as \"3-5\"",
        );
        assert_has(
            &errs,
            "spec.overrides[3].indexes: Required value: e.g. \"0,3-5\"",
        );
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.overrides[3].spec.nodeName"
                    && e.kind == FieldErrorKind::Forbidden)
        );
        assert!(
            !errs
                .iter()
                .any(|e| e.field.starts_with("spec.overrides[4]"))
        );
        assert!(
            !errs.iter().any(|e| e.field.contains("image")),
            "partial specs need no image"
        );
    }

    #[test]
    fn task_spec_rules() {
        let spec = TaskSpec {
            driver: Some(Driver::Container),
            resources: TaskResources {
                cpu: Some(Quantity::parse("-1").unwrap()),
                ports: vec![0, 80, 80, 70000],
                extended: [("bad key".to_string(), Quantity::parse("1").unwrap())].into(),
                ..TaskResources::default()
            },
            constraints: vec![
                Requirement {
                    key: "a".into(),
                    operator: Operator::In,
                    values: vec![],
                },
                Requirement {
                    key: "b".into(),
                    operator: Operator::Exists,
                    values: vec!["x".into()],
                },
                Requirement {
                    key: "c".into(),
                    operator: Operator::Gt,
                    values: vec!["1".into(), "2".into()],
                },
                Requirement {
                    key: "d".into(),
                    operator: Operator::Lt,
                    values: vec!["x".into()],
                },
                Requirement {
                    key: "e".into(),
                    operator: Operator::Equals,
                    values: vec!["x".into()],
                },
                Requirement {
                    key: "f".into(),
                    operator: Operator::Gt,
                    values: vec!["10".into()],
                },
            ],
            tolerations: vec![
                Toleration {
                    value: "x".into(),
                    ..Toleration::default()
                },
                Toleration {
                    key: "k".into(),
                    operator: Some(TolerationOperator::Exists),
                    value: "v".into(),
                    ..Toleration::default()
                },
            ],
            time_limit_seconds: Some(-5),
            termination_grace_period_seconds: Some(-1),
            mounts: vec![
                Mount {
                    source: "rel".into(),
                    target: "/in".into(),
                    read_only: None,
                },
                Mount {
                    source: "/a".into(),
                    target: "/in".into(),
                    read_only: Some(false),
                },
                Mount::default(),
            ],
            log_path: "../../etc/shadow".into(),
            index: Some(-1),
            ..TaskSpec::default()
        };
        let errs = validate_task_spec(&spec, "spec", TaskSpecContext::Task);
        for expected in [
            "spec.image: Required value: required for the container driver",
            "spec.resources.cpu: Invalid value: \"-1\": must be greater than or equal to 0",
            "spec.resources.ports[0]: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.resources.ports[2]: Duplicate value: 80",
            "spec.resources.ports[3]: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.constraints[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
            "spec.constraints[1].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            "spec.constraints[2].values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'",
            "spec.constraints[3].values[0]: Invalid value: \"x\": must be an integer",
            "spec.constraints[4].operator: Unsupported value: \"Equals\": supported values: \"DoesNotExist\", \"Exists\", \"Gt\", \"In\", \"Lt\", \"NotIn\"",
            "spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            "spec.tolerations[1].operator: Invalid value: \"v\": value must be empty when `operator` is 'Exists'",
            "spec.timeLimitSeconds: Invalid value: -5: must be greater than 0",
            "spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0",
            "spec.mounts[0].source: Invalid value: \"rel\": must be an absolute path",
            "spec.mounts[1].target: Duplicate value: \"/in\"",
            "spec.mounts[2].source: Required value",
            "spec.mounts[2].target: Required value",
            "spec.logPath: Invalid value: \"../../etc/shadow\": must be a file name inside the task's log directory: 1 to 255 characters of [A-Za-z0-9._-], not starting with '.' (no '/')",
            "spec.index: Invalid value: -1: must be greater than or equal to 0",
        ] {
            assert_has(&errs, expected);
        }
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.resources.extended[bad key]")
        );
        assert!(
            !errs
                .iter()
                .any(|e| e.field.starts_with("spec.constraints[5]"))
        );

        let exec = TaskSpec {
            driver: Some(Driver::Exec),
            ..TaskSpec::default()
        };
        assert_eq!(
            fields(&validate_task_spec(&exec, "spec", TaskSpecContext::Task)),
            vec!["spec.command: Required value: required for the exec driver"]
        );
        let templated = TaskSpec {
            image: "x".into(),
            node_name: "n".into(),
            index: Some(1),
            ..TaskSpec::default()
        };
        let errs = validate_task_spec(&templated, "spec.template.spec", TaskSpecContext::Template);
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().all(|e| e.kind == FieldErrorKind::Forbidden));
    }

    #[test]
    fn task_updates() {
        let old = valid_task();
        let mut bound = old.clone();
        bound.spec.node_name = "node-1".into();
        assert!(bound.validate_update(&old).is_empty());
        // The node opens the log when it starts the task: a name given later, or
        // changed, would not be the file it writes.
        let mut named = bound.clone();
        named.spec.log_path = "t.log".into();
        assert_has(
            &named.validate_update(&bound),
            "spec.logPath: Invalid value: \"t.log\": field is immutable",
        );
        let mut moved = named.clone();
        moved.spec.log_path = "other.log".into();
        assert_has(
            &moved.validate_update(&named),
            "spec.logPath: Invalid value: \"other.log\": field is immutable",
        );
        assert!(named.validate_update(&named).is_empty());
        let mut rebound = bound.clone();
        rebound.spec.node_name = "node-2".into();
        assert_has(
            &rebound.validate_update(&bound),
            "spec.nodeName: Invalid value: \"node-2\": may not change once set",
        );
        let mut changed = old.clone();
        changed.spec.image = "other".into();
        assert!(
            changed
                .validate_update(&old)
                .iter()
                .any(|e| e.field == "spec" && e.kind == FieldErrorKind::Forbidden)
        );
        let mut renamed = old.clone();
        renamed.metadata.name = "u".into();
        assert_has(
            &renamed.validate_update(&old),
            "metadata.name: Invalid value: \"u\": field is immutable",
        );
        let mut done = old.clone();
        done.status = Some(TaskStatus {
            phase: TaskPhase::Completed,
            ..TaskStatus::default()
        });
        let mut revived = done.clone();
        revived.status = Some(TaskStatus {
            phase: TaskPhase::Running,
            ..TaskStatus::default()
        });
        assert_has(
            &revived.validate_update(&done),
            "status.phase: Invalid value: \"Running\": may not change once it is Completed, a terminal phase",
        );
        let mut job = valid_job();
        job.status = Some(JobStatus {
            phase: JobPhase::Failed,
            ..JobStatus::default()
        });
        let mut job2 = job.clone();
        job2.status = Some(JobStatus {
            phase: JobPhase::Running,
            ..JobStatus::default()
        });
        assert_eq!(job2.validate_update(&job).len(), 1);
    }

    #[test]
    fn log_path_is_a_bare_file_name() {
        for good in ["train.log", "a", "x-1_2.txt", "log..1", &"a".repeat(255)] {
            assert!(is_log_file_name(good), "{good:?} refused");
            let mut task = valid_task();
            task.spec.log_path = good.to_owned();
            assert_eq!(fields(&task.validate()), Vec::<String>::new(), "{good:?}");
        }
        let long = "a".repeat(256);
        for bad in [
            "/etc/shadow",
            "/dev/zero",
            "../x",
            "..",
            ".",
            ".hidden",
            "a/b",
            "logs/",
            "a\0b",
            "a b",
            "a\\b",
            "\u{e9}t\u{e9}.log",
            long.as_str(),
        ] {
            assert!(!is_log_file_name(bad), "{bad:?} accepted");
            let mut task = valid_task();
            task.spec.log_path = bad.to_owned();
            assert_eq!(
                fields(&task.validate()),
                vec![format!(
                    "spec.logPath: Invalid value: {bad:?}: {LOG_FILE_NAME_RULE}"
                )]
            );
        }
        // Templates and overrides follow the same rule.
        let mut job = valid_job();
        job.spec.template.spec.log_path = "/etc/passwd".into();
        job.spec.overrides = vec![TaskOverride {
            indexes: "1".into(),
            spec: TaskSpec {
                log_path: "../../root/.ssh/authorized_keys".into(),
                ..TaskSpec::default()
            },
        }];
        let errs = job.validate();
        assert!(errs.iter().any(|e| e.field == "spec.template.spec.logPath"));
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.overrides[0].spec.logPath")
        );
        let mut svc = Service::new(
            "web",
            ServiceSpec {
                template: TaskTemplate {
                    spec: TaskSpec {
                        image: "nginx".into(),
                        log_path: "/proc/self/mem".into(),
                        ..TaskSpec::default()
                    },
                    ..TaskTemplate::default()
                },
                ..ServiceSpec::default()
            },
        );
        svc.metadata.namespace = "default".into();
        assert!(
            svc.validate()
                .iter()
                .any(|e| e.field == "spec.template.spec.logPath")
        );
    }

    #[test]
    fn job_log_dir_is_accepted_and_ignored() {
        let mut job = valid_job();
        job.spec.log_dir = "/var/log/anything".into();
        assert_eq!(fields(&job.validate()), Vec::<String>::new());
    }

    #[test]
    fn counts_are_bounded() {
        let mut job = valid_job();
        job.spec.replicas = Some(MAX_REPLICAS);
        job.spec.parallelism = Some(MAX_REPLICAS);
        job.spec.max_retries = Some(MAX_RETRIES);
        assert_eq!(fields(&job.validate()), Vec::<String>::new());
        job.spec.replicas = Some(100_001);
        job.spec.parallelism = Some(i32::MAX);
        job.spec.max_retries = Some(1_001);
        job.spec.depends_on = (0..=MAX_DEPENDS_ON).map(|i| format!("d{i}")).collect();
        job.spec.overrides = vec![
            TaskOverride {
                indexes: "0".into(),
                spec: TaskSpec::default(),
            };
            MAX_OVERRIDES + 1
        ];
        job.spec.inputs = vec![
            JobInput {
                source: "/a".into(),
                target: "/a".into(),
            };
            1
        ];
        job.spec.env = (0..=MAX_ENV)
            .map(|i| EnvVar::new(format!("V{i}"), ""))
            .collect();
        let errs = job.validate();
        assert_has(
            &errs,
            "spec.replicas: Invalid value: 100001: must be less than or equal to 100000",
        );
        assert_has(
            &errs,
            "spec.parallelism: Invalid value: 2147483647: must be less than or equal to 100000",
        );
        assert_has(
            &errs,
            "spec.maxRetries: Invalid value: 1001: must be less than or equal to 1000",
        );
        assert_has(
            &errs,
            "spec.dependsOn: Too many: 1001: must have at most 1000 items",
        );
        assert_has(
            &errs,
            "spec.overrides: Too many: 1001: must have at most 1000 items",
        );
        assert_has(
            &errs,
            "spec.env: Too many: 4097: must have at most 4096 items",
        );
        assert!(!errs.iter().any(|e| e.field == "spec.inputs"));

        let mut svc = Service::new(
            "web",
            ServiceSpec {
                replicas: Some(1_000_000),
                template: TaskTemplate {
                    spec: TaskSpec {
                        image: "nginx".into(),
                        ..TaskSpec::default()
                    },
                    ..TaskTemplate::default()
                },
                ..ServiceSpec::default()
            },
        );
        svc.metadata.namespace = "default".into();
        assert_eq!(
            fields(&svc.validate()),
            vec!["spec.replicas: Invalid value: 1000000: must be less than or equal to 100000"]
        );

        let mut task = valid_task();
        task.spec.resources.ports = (1..=1025).collect();
        task.spec.mounts = (0..=MAX_MOUNTS)
            .map(|i| Mount {
                source: format!("/s{i}"),
                target: format!("/t{i}"),
                read_only: None,
            })
            .collect();
        task.spec.command = vec!["x".into(); MAX_ARGV_ITEMS + 1];
        task.spec.args = vec!["y".repeat(MAX_ARGV_BYTES)];
        task.spec.tolerations = vec![
            Toleration {
                key: "k".into(),
                operator: Some(TolerationOperator::Exists),
                ..Toleration::default()
            };
            MAX_RULES + 1
        ];
        let errs = task.validate();
        assert_has(
            &errs,
            "spec.resources.ports: Too many: 1025: must have at most 1024 items",
        );
        assert_has(
            &errs,
            "spec.mounts: Too many: 257: must have at most 256 items",
        );
        assert_has(
            &errs,
            "spec.args: Too many: 4098: must have at most 4096 items",
        );
        assert_has(
            &errs,
            "spec.args: Too long: may not be more than 1048576 bytes",
        );
        assert_has(
            &errs,
            "spec.tolerations: Too many: 1025: must have at most 1024 items",
        );
    }

    #[test]
    fn service_account_names_are_names_not_paths() {
        let mut task = valid_task();
        task.spec.service_account_name = "robot".to_owned();
        assert!(task.validate().is_empty(), "{:?}", task.validate());
        for hostile in ["../default", "a/b", "A", "a b", "-a", &"a".repeat(254)] {
            task.spec.service_account_name = hostile.to_owned();
            let errors = task.validate();
            assert!(
                errors
                    .iter()
                    .any(|e| e.to_string().contains("spec.serviceAccountName")),
                "{hostile:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn nodelet_endpoint_rules() {
        for (good, address) in [
            ("http://127.0.0.1:7444", "127.0.0.1:7444"),
            ("http://10.0.0.5:7444/", "10.0.0.5:7444"),
            ("http://[::1]:1", "[::1]:1"),
            ("http://[2001:db8::5]:65535", "[2001:db8::5]:65535"),
            ("https://1.2.3.4:443", "1.2.3.4:443"),
        ] {
            assert_eq!(
                parse_nodelet_endpoint(good).map(|a| a.to_string()),
                Ok(address.to_owned()),
                "{good}"
            );
        }
        for bad in [
            "http://169.254.169.254/latest",
            "http://user@1.2.3.4:1/",
            "http://user:pw@1.2.3.4:1",
            "file:///etc/shadow",
            "HTTPS://1.2.3.4:443",
            "HTTP://1.2.3.4:80",
            "http://1.2.3.4",
            "http://1.2.3.4:",
            "http://1.2.3.4:0",
            "http://1.2.3.4:65536",
            "http://1.2.3.4:+80",
            "http://1.2.3.4:80/logs",
            "http://1.2.3.4:80//",
            "http://1.2.3.4:80?x=1",
            "http://1.2.3.4:80#x",
            "http://1.2.3.4:80\\x",
            "http://metadata.google.internal:80",
            "http://localhost:7444",
            "http://2130706433:80",
            "http://01.2.3.4:80",
            "http://::1:80",
            "http://[::1]",
            "http://[fe80::1%eth0]:80",
            "http://1.2.3.4 :80",
            "",
            "http://",
        ] {
            assert_eq!(
                parse_nodelet_endpoint(bad),
                Err(EndpointError::Malformed),
                "{bad:?}"
            );
            assert_eq!(
                EndpointError::Malformed.to_string(),
                NODELET_ENDPOINT_RULE,
                "{bad:?}"
            );
        }
        for reserved in [
            "http://169.254.169.254:80",
            "https://169.254.169.254:443/",
            "http://0.0.0.0:7444",
            "http://255.255.255.255:80",
            "http://224.0.0.1:80",
            "http://[::]:80",
            "http://[fe80::1]:80",
            "http://[ff02::1]:80",
            "http://[::ffff:169.254.169.254]:80",
        ] {
            let error = parse_nodelet_endpoint(reserved).unwrap_err().to_string();
            assert!(
                error.starts_with("must not be an unspecified"),
                "{reserved}: {error}"
            );
        }

        let mut node = Node::new("n1", NodeSpec::default());
        node.status = Some(NodeStatus {
            nodelet_endpoint: "http://169.254.169.254/latest".into(),
            ..NodeStatus::default()
        });
        assert_eq!(
            fields(&node.validate()),
            vec![format!(
                "status.nodeletEndpoint: Invalid value: \"http://169.254.169.254/latest\": {NODELET_ENDPOINT_RULE}"
            )]
        );
    }

    #[test]
    fn nodelet_endpoint_is_immutable_once_set() {
        let with = |endpoint: &str| {
            let mut node = Node::new("n1", NodeSpec::default());
            node.status = Some(NodeStatus {
                nodelet_endpoint: endpoint.into(),
                ..NodeStatus::default()
            });
            node
        };
        let unset = with("");
        let set = with("http://10.0.0.5:7444");
        assert!(set.validate_update(&unset).is_empty(), "setting it once");
        assert!(set.validate_update(&set).is_empty(), "keeping it");
        assert_eq!(
            fields(&with("http://10.0.0.6:7444").validate_update(&set)),
            vec![
                "status.nodeletEndpoint: Invalid value: \"http://10.0.0.6:7444\": field is immutable"
            ]
        );
        assert_eq!(
            fields(&unset.validate_update(&set)),
            vec!["status.nodeletEndpoint: Invalid value: \"\": field is immutable"]
        );
        let mut no_status = set.clone();
        no_status.status = None;
        assert!(!no_status.validate_update(&set).is_empty());
    }

    #[test]
    fn service_rules() {
        let mut svc = Service::new(
            "web",
            ServiceSpec {
                replicas: Some(-1),
                template: TaskTemplate {
                    spec: TaskSpec {
                        image: "nginx".into(),
                        restart_policy: Some(RestartPolicy::Never),
                        ..TaskSpec::default()
                    },
                    ..TaskTemplate::default()
                },
                strategy: Some(ServiceStrategy {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some("0%".into()),
                }),
                ..ServiceSpec::default()
            },
        );
        svc.metadata.namespace = "default".into();
        let errs = svc.validate();
        assert_has(
            &errs,
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        );
        assert_has(
            &errs,
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        );
        assert_has(
            &errs,
            "spec.strategy.maxUnavailable: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0",
        );
        svc.spec.replicas = Some(2);
        svc.spec.template.spec.restart_policy = None;
        svc.spec.strategy = Some(ServiceStrategy {
            max_surge: Some("x".into()),
            max_unavailable: Some("150%".into()),
        });
        let errs = svc.validate();
        assert!(errs.iter().any(|e| e.field == "spec.strategy.maxSurge"
            && e.message.starts_with("a valid percent string")));
        assert_has(
            &errs,
            "spec.strategy.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%",
        );
        svc.spec.strategy = Some(ServiceStrategy {
            max_surge: Some(IntOrString::Int(-1)),
            max_unavailable: None,
        });
        assert_has(
            &svc.validate(),
            "spec.strategy.maxSurge: Invalid value: -1: must be greater than or equal to 0",
        );
        svc.spec.strategy = None;
        assert!(svc.validate().is_empty());
    }

    #[test]
    fn node_rules() {
        let mut node = Node::new(
            "n1",
            NodeSpec {
                unschedulable: true,
                taints: vec![
                    Taint {
                        key: "".into(),
                        value: "x y".into(),
                        effect: None,
                    },
                    Taint {
                        key: "gpu".into(),
                        value: "".into(),
                        effect: Some(TaintEffect::NoSchedule),
                    },
                    Taint {
                        key: "gpu".into(),
                        value: "a".into(),
                        effect: Some(TaintEffect::NoSchedule),
                    },
                ],
                ..NodeSpec::default()
            },
        );
        node.status = Some(NodeStatus {
            capacity: [("cpu".to_string(), Quantity::parse("-1").unwrap())].into(),
            ..NodeStatus::default()
        });
        let errs = node.validate();
        assert_has(&errs, "spec.taints[0].key: Required value");
        assert_has(
            &errs,
            "spec.taints[0].effect: Required value: one of NoSchedule, PreferNoSchedule, NoExecute",
        );
        assert!(errs.iter().any(|e| e.field == "spec.taints[0].value"));
        assert_has(&errs, "spec.taints[2]: Duplicate value: \"gpu:NoSchedule\"");
        assert_has(
            &errs,
            "status.capacity[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
        );
    }

    fn with_task_cidr(cidr: &str) -> Node {
        Node::new(
            "n1",
            NodeSpec {
                task_cidr: cidr.into(),
                ..NodeSpec::default()
            },
        )
    }

    #[test]
    fn task_cidr_is_a_canonical_ipv4_cidr() {
        for good in [
            "10.77.0.0/24",
            "10.0.0.0/8",
            "192.168.1.4/30",
            "172.16.0.0/12",
        ] {
            assert!(with_task_cidr(good).validate().is_empty(), "{good}");
            assert_eq!(parse_task_cidr(good).unwrap().to_string(), good);
        }
        assert!(with_task_cidr("").validate().is_empty(), "optional");
        let rule = |value: &str| {
            let errs = with_task_cidr(value).validate();
            assert_eq!(errs.len(), 1, "{value:?}: {:#?}", fields(&errs));
            errs[0].to_string()
        };
        let malformed = "must be an IPv4 CIDR ADDRESS/PREFIX such as 10.77.0.0/24";
        for garbage in [
            "garbage",
            "10.0.0.0",
            "10.0.0.0/",
            "/24",
            "10.0.0.0/24/8",
            "10.0.0.256/24",
            "10.0.0/24",
            "10.0.0.0.0/24",
            "010.0.0.0/24",
            "10.0.0.0/024",
            "10.0.0.0/+8",
            "10.0.0.0/-8",
            " 10.0.0.0/24",
            "10.0.0.0/24 ",
            "10.0.0.0\n/24",
            "10.0.0.0/24\0",
            "١٠.0.0.0/8",
            "0x0a.0.0.0/8",
            "10.0.0.0/33",
        ] {
            assert_eq!(
                rule(garbage),
                format!("spec.taskCIDR: Invalid value: {garbage:?}: {malformed}"),
            );
        }
        assert_eq!(
            rule("10.0.0.1/24"),
            "spec.taskCIDR: Invalid value: \"10.0.0.1/24\": must be the network address of its range, with no host bits set: 10.0.0.0/24"
        );
        assert_eq!(
            rule("0.0.0.0/0"),
            "spec.taskCIDR: Invalid value: \"0.0.0.0/0\": the prefix length must be between /8 and /30 (got /0)"
        );
        assert_eq!(
            rule("10.0.0.0/7"),
            "spec.taskCIDR: Invalid value: \"10.0.0.0/7\": the prefix length must be between /8 and /30 (got /7)"
        );
        for (narrow, prefix) in [("10.0.0.0/31", 31), ("10.0.0.1/32", 32)] {
            assert_eq!(
                rule(narrow),
                format!(
                    "spec.taskCIDR: Invalid value: {narrow:?}: the prefix length must be between /8 and /30 (got /{prefix})"
                )
            );
        }
        for v6 in ["fd00::/64", "::/0", "::ffff:a00:0/104", "fd00::zz/64"] {
            assert_eq!(
                rule(v6),
                format!(
                    "spec.taskCIDR: Invalid value: {v6:?}: must be an IPv4 CIDR such as 10.77.0.0/24: IPv6 is not supported yet"
                )
            );
        }
        // Too long for any CIDR: refused without echoing the value.
        for long in [
            "1".repeat(MAX_CIDR_LENGTH + 1),
            "10.0.0.0/8".repeat(100_000),
        ] {
            assert_eq!(
                rule(&long),
                "spec.taskCIDR: Too long: may not be more than 18 bytes"
            );
            assert_eq!(parse_task_cidr(&long), Err(CidrError::Malformed));
        }
    }

    #[test]
    fn task_cidr_is_immutable_once_set() {
        let unset = with_task_cidr("");
        let set = with_task_cidr("10.77.3.0/24");
        assert!(set.validate_update(&unset).is_empty(), "setting it once");
        assert!(set.validate_update(&set).is_empty(), "keeping it");
        let mut cordoned = set.clone();
        cordoned.spec.unschedulable = true;
        assert!(
            cordoned.validate_update(&set).is_empty(),
            "other fields change"
        );
        let immutable = "field is immutable once set (it was 10.77.3.0/24): delete and register the Node again to change it";
        assert_eq!(
            fields(&with_task_cidr("10.77.4.0/24").validate_update(&set)),
            vec![format!(
                "spec.taskCIDR: Invalid value: \"10.77.4.0/24\": {immutable}"
            )]
        );
        assert_eq!(
            fields(&unset.validate_update(&set)),
            vec![format!("spec.taskCIDR: Invalid value: \"\": {immutable}")]
        );
        // An invalid new value is refused for both reasons; a huge one only as too long.
        assert_eq!(
            with_task_cidr("10.77.3.1/24").validate_update(&set).len(),
            2
        );
        let huge = with_task_cidr(&"9".repeat(4096));
        assert_eq!(
            fields(&huge.validate_update(&set)),
            vec!["spec.taskCIDR: Too long: may not be more than 18 bytes"]
        );
    }

    #[test]
    fn task_cidr_json_name_is_task_cidr_in_capitals() {
        let node = with_task_cidr("10.77.3.0/24");
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["spec"]["taskCIDR"], "10.77.3.0/24");
        assert!(json["spec"].get("taskCidr").is_none());
        let back: Node = serde_json::from_value(json).unwrap();
        assert_eq!(back.spec.task_cidr, "10.77.3.0/24");
        let unset = serde_json::to_value(with_task_cidr("")).unwrap();
        assert!(unset.get("spec").is_none(), "an empty spec is left out");
    }

    proptest::proptest! {
        #[test]
        fn every_network_parses_back_and_host_bits_are_refused(addr: u32, prefix in 8u8..=30) {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(addr), prefix).unwrap();
            let network = net.trunc();
            proptest::prop_assert_eq!(parse_task_cidr(&network.to_string()), Ok(network));
            if net != network {
                proptest::prop_assert_eq!(
                    parse_task_cidr(&net.to_string()),
                    Err(CidrError::NotNetworkAddress(network))
                );
            }
        }
    }

    #[test]
    fn event_and_lease_rules() {
        let mut ev = Event::new(
            "e",
            ObjectReference {
                namespace: "other".into(),
                ..ObjectReference::default()
            },
        );
        ev.metadata.namespace = "default".into();
        ev.reason = "R".repeat(200);
        ev.count = Some(-1);
        let errs = ev.validate();
        assert_has(&errs, "involvedObject.kind: Required value");
        assert_has(&errs, "involvedObject.name: Required value");
        assert_has(
            &errs,
            "involvedObject.namespace: Invalid value: \"other\": does not match event.namespace",
        );
        assert_has(&errs, "reason: Too long: may not be more than 128 bytes");
        assert_has(
            &errs,
            "count: Invalid value: -1: must be greater than or equal to 0",
        );

        let mut lease = Lease::new(
            "l",
            LeaseSpec {
                lease_duration_seconds: Some(0),
                lease_transitions: Some(-1),
                ..LeaseSpec::default()
            },
        );
        lease.metadata.namespace = crate::SYSTEM_NAMESPACE.into();
        let errs = lease.validate();
        assert_eq!(
            fields(&errs),
            vec![
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
            ]
        );
    }

    fn valid_rd() -> ResourceDefinition {
        ResourceDefinition::new(
            "pipelines.example.com",
            ResourceDefinitionSpec {
                group: "example.com".into(),
                names: ResourceNames {
                    kind: "Pipeline".into(),
                    plural: "pipelines".into(),
                    ..ResourceNames::default()
                },
                scope: ResourceScope::Namespaced,
                versions: vec![ResourceVersionDefinition {
                    name: "v1".into(),
                    served: true,
                    storage: true,
                    schema: Some(ResourceValidation {
                        open_api_v3_schema: serde_json::json!({"type": "object"}),
                    }),
                    subresources: None,
                }],
            },
        )
    }

    #[test]
    fn resource_definition_rules() {
        assert_eq!(fields(&valid_rd().validate()), Vec::<String>::new());
        let mut rd = valid_rd();
        rd.metadata.name = "pipes.example.com".into();
        rd.spec.group = "example".into();
        rd.spec.names.kind = "pipeline".into();
        rd.spec.names.plural = "Pipelines".into();
        rd.spec.names.list_kind = "pipeline".into();
        rd.spec.names.short_names = vec!["p".into(), "p".into()];
        rd.spec.versions.push(ResourceVersionDefinition {
            name: "v1".into(),
            storage: true,
            ..ResourceVersionDefinition::default()
        });
        let errs = rd.validate();
        assert_has(
            &errs,
            "metadata.name: Invalid value: \"pipes.example.com\": must be spec.names.plural+\".\"+spec.group",
        );
        assert_has(
            &errs,
            "spec.group: Invalid value: \"example\": should be a domain with at least one dot",
        );
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.names.kind" && e.message.contains("CamelCase"))
        );
        assert!(
            errs.iter()
                .any(|e| e.field == "spec.names.plural" && e.message.contains("RFC 1123 label"))
        );
        assert_has(
            &errs,
            "spec.names.listKind: Invalid value: \"pipeline\": kind and listKind may not be the same",
        );
        assert_has(&errs, "spec.names.shortNames[1]: Duplicate value: \"p\"");
        assert_has(
            &errs,
            "spec.versions: Invalid value: 2: must have exactly one version marked as storage version",
        );
        assert_has(&errs, "spec.versions[1].name: Duplicate value: \"v1\"");
        assert_has(
            &errs,
            "spec.versions[1].schema.openAPIV3Schema: Required value: schemas are required",
        );
        let mut empty = valid_rd();
        empty.spec.versions.clear();
        assert_has(
            &empty.validate(),
            "spec.versions: Required value: must have at least one version",
        );
        let mut cluster = valid_rd();
        cluster.spec.scope = ResourceScope::Cluster;
        assert_has(
            &cluster.validate_update(&valid_rd()),
            "spec.scope: Invalid value: \"Cluster\": field is immutable",
        );
    }

    // ---- ports and probes ----

    fn port(name: &str, container_port: i32) -> ContainerPort {
        ContainerPort {
            name: name.into(),
            container_port,
            ..ContainerPort::default()
        }
    }

    fn http_probe(port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HttpGetAction {
                path: "/healthz".into(),
                port,
                ..HttpGetAction::default()
            }),
            ..Probe::default()
        }
    }

    fn tcp_probe(port: IntOrString) -> Probe {
        Probe {
            tcp_socket: Some(TcpSocketAction {
                port,
                ..TcpSocketAction::default()
            }),
            ..Probe::default()
        }
    }

    fn task_errors(spec: TaskSpec) -> Vec<FieldError> {
        let spec = TaskSpec {
            image: "busybox".into(),
            ..spec
        };
        validate_task_spec(&spec, "spec", TaskSpecContext::Task)
    }

    fn assert_all(errs: &[FieldError], expected: &[&str]) {
        for text in expected {
            assert_has(errs, text);
        }
        assert_eq!(errs.len(), expected.len(), "{:#?}", fields(errs));
    }

    #[test]
    fn a_full_ports_and_probes_spec_is_valid() {
        let spec = TaskSpec {
            image: "nginx".into(),
            ports: vec![
                ContainerPort {
                    host_port: Some(8080),
                    ..port("http", 80)
                },
                ContainerPort {
                    protocol: Some(Protocol::Udp),
                    host_port: Some(8080),
                    ..port("dns", 53)
                },
                ContainerPort {
                    protocol: Some(Protocol::Tcp),
                    ..port("dns-tcp", 53)
                },
                port("", 9090),
            ],
            readiness_probe: Some(Probe {
                http_get: Some(HttpGetAction {
                    path: "/ready?full=1&x=%20".into(),
                    port: "http".into(),
                    host: "10.0.0.1".into(),
                    scheme: Some(Scheme::Http),
                    http_headers: vec![HttpHeader {
                        name: "X-Custom_Header".into(),
                        value: "a value\twith tab".into(),
                    }],
                }),
                initial_delay_seconds: Some(0),
                period_seconds: Some(86_400),
                timeout_seconds: Some(1),
                success_threshold: Some(3),
                failure_threshold: Some(10_000),
                ..Probe::default()
            }),
            liveness_probe: Some(Probe {
                tcp_socket: Some(TcpSocketAction {
                    port: 9090.into(),
                    host: "db.example.svc".into(),
                }),
                success_threshold: Some(1),
                termination_grace_period_seconds: Some(5),
                ..Probe::default()
            }),
            startup_probe: Some(Probe {
                failure_threshold: Some(30),
                ..tcp_probe("http".into())
            }),
            ..TaskSpec::default()
        };
        let errs = validate_task_spec(&spec, "spec", TaskSpecContext::Task);
        assert!(errs.is_empty(), "{:#?}", fields(&errs));
    }

    #[test]
    fn port_names_follow_iana_service_name_rules() {
        assert!(is_port_name("http").is_empty());
        assert!(is_port_name("h2c-8080").is_empty());
        assert!(is_port_name("a23456789012345").is_empty());
        assert_eq!(
            is_port_name("a234567890123456"),
            ["must be no more than 15 characters"]
        );
        assert_eq!(
            is_port_name("HTTP"),
            [
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "must contain at least one letter (a-z)"
            ]
        );
        assert_eq!(
            is_port_name("8080"),
            ["must contain at least one letter (a-z)"]
        );
        assert_eq!(
            is_port_name("a--b"),
            ["must not contain consecutive hyphens"]
        );
        assert_eq!(
            is_port_name("-http"),
            ["must not begin or end with a hyphen"]
        );
        assert_eq!(
            is_port_name("http-"),
            ["must not begin or end with a hyphen"]
        );
        assert_eq!(
            is_port_name("ht tp"),
            ["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]
        );
        assert_eq!(
            is_port_name("ht\u{e9}"),
            ["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]
        );
    }

    #[test]
    fn ports_refuse_bad_names_numbers_and_duplicates() {
        let errs = task_errors(TaskSpec {
            ports: vec![
                port("web", 80),
                port("web", 81),
                port("Web", 82),
                port("", 0),
                port("", 70_000),
                port("", 80),
                ContainerPort {
                    protocol: Some(Protocol::Udp),
                    ..port("", 80)
                },
                ContainerPort {
                    host_port: Some(0),
                    ..port("", 1)
                },
                ContainerPort {
                    host_port: Some(65_536),
                    ..port("", 2)
                },
                ContainerPort {
                    host_port: Some(443),
                    ..port("", 3)
                },
                ContainerPort {
                    host_port: Some(443),
                    ..port("", 4)
                },
                ContainerPort {
                    host_port: Some(443),
                    protocol: Some(Protocol::Udp),
                    ..port("", 5)
                },
            ],
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.ports[1].name: Duplicate value: \"web\"",
                "spec.ports[2].name: Invalid value: \"Web\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.ports[3].containerPort: Required value",
                "spec.ports[4].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ports[5].containerPort: Duplicate value: \"80/TCP\"",
                "spec.ports[7].hostPort: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[8].hostPort: Invalid value: 65536: must be between 1 and 65535, inclusive",
                "spec.ports[10].hostPort: Duplicate value: \"443/TCP\"",
            ],
        );

        let many = TaskSpec {
            ports: (1..=1025).map(|n| port("", n)).collect(),
            ..TaskSpec::default()
        };
        assert_has(
            &task_errors(many),
            "spec.ports: Too many: 1025: must have at most 1024 items",
        );

        // On the node's network a host port is the task's own port.
        let exec = TaskSpec {
            driver: Some(Driver::Exec),
            command: vec!["/bin/server".into()],
            ports: vec![
                ContainerPort {
                    host_port: Some(8080),
                    ..port("", 80)
                },
                ContainerPort {
                    host_port: Some(9090),
                    ..port("", 9090)
                },
            ],
            ..TaskSpec::default()
        };
        assert_all(
            &validate_task_spec(&exec, "spec", TaskSpecContext::Task),
            &[
                "spec.ports[0].hostPort: Invalid value: 8080: must equal containerPort for the exec and raw drivers, which use the node's network",
            ],
        );
    }

    #[test]
    fn a_probe_has_exactly_one_handler() {
        let errs = task_errors(TaskSpec {
            readiness_probe: Some(Probe::default()),
            liveness_probe: Some(Probe {
                exec: Some(ExecAction {
                    command: vec!["true".into()],
                }),
                ..tcp_probe(80.into())
            }),
            startup_probe: Some(Probe {
                exec: Some(ExecAction {
                    command: vec!["true".into()],
                }),
                tcp_socket: Some(TcpSocketAction {
                    port: 80.into(),
                    ..TcpSocketAction::default()
                }),
                ..http_probe(80.into())
            }),
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.readinessProbe: Required value: must have exactly one of exec, httpGet, tcpSocket",
                "spec.livenessProbe: Forbidden: must have exactly one of exec, httpGet, tcpSocket, not several (exec, tcpSocket)",
                "spec.startupProbe: Forbidden: must have exactly one of exec, httpGet, tcpSocket, not several (exec, httpGet, tcpSocket)",
                EXEC_LIVENESS_REFUSED,
                "spec.startupProbe.exec: Forbidden: exec probes are not supported yet (commands inside a task come with exec); use httpGet or tcpSocket",
            ],
        );
    }

    const EXEC_LIVENESS_REFUSED: &str = "spec.livenessProbe.exec: Forbidden: exec probes are not supported yet (commands inside a task come with exec); use httpGet or tcpSocket";

    #[test]
    fn exec_probes_are_refused_until_commands_run_inside_tasks() {
        for role in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let probe = Some(Probe {
                exec: Some(ExecAction {
                    command: vec!["cat".into(), "/tmp/ready".into()],
                }),
                ..Probe::default()
            });
            let mut spec = TaskSpec::default();
            match role {
                "readinessProbe" => spec.readiness_probe = probe,
                "livenessProbe" => spec.liveness_probe = probe,
                _ => spec.startup_probe = probe,
            }
            assert_all(
                &task_errors(spec),
                &[&format!(
                    "spec.{role}.exec: Forbidden: exec probes are not supported yet (commands inside a task come with exec); use httpGet or tcpSocket"
                )],
            );
        }
    }

    #[test]
    fn exec_probe_commands_are_bounded() {
        let exec = |command: Vec<String>| TaskSpec {
            liveness_probe: Some(Probe {
                exec: Some(ExecAction { command }),
                ..Probe::default()
            }),
            ..TaskSpec::default()
        };
        // Every exec probe is refused for now (see the test above); the
        // bounds still hold for when they run.
        assert_all(
            &task_errors(exec(vec![])),
            &[
                "spec.livenessProbe.exec.command[0]: Required value: the executable to run inside the task",
                EXEC_LIVENESS_REFUSED,
            ],
        );
        assert_all(
            &task_errors(exec(vec![String::new(), "x".into()])),
            &[
                "spec.livenessProbe.exec.command[0]: Required value: the executable to run inside the task",
                EXEC_LIVENESS_REFUSED,
            ],
        );
        assert_all(
            &task_errors(exec(vec!["x".into(); 257])),
            &[
                "spec.livenessProbe.exec.command: Too many: 257: must have at most 256 items",
                EXEC_LIVENESS_REFUSED,
            ],
        );
        assert_all(
            &task_errors(exec(vec!["x".repeat(40_000), "y".repeat(40_000)])),
            &[
                "spec.livenessProbe.exec.command: Too long: may not be more than 65536 bytes",
                EXEC_LIVENESS_REFUSED,
            ],
        );
        assert_all(
            &task_errors(exec(vec!["cat".into(), "a\0b".into()])),
            &[
                "spec.livenessProbe.exec.command[1]: Invalid value: \"a\\0b\": must not contain NUL",
                EXEC_LIVENESS_REFUSED,
            ],
        );
        // 256 items of 256 bytes: at both limits.
        assert_all(
            &task_errors(exec(vec!["x".repeat(256); 256])),
            &[EXEC_LIVENESS_REFUSED],
        );
    }

    #[test]
    fn http_probes_refuse_bad_paths_ports_hosts_schemes_and_headers() {
        let http = |f: &dyn Fn(&mut HttpGetAction)| {
            let mut probe = http_probe(8080.into());
            if let Some(h) = probe.http_get.as_mut() {
                f(h);
            }
            task_errors(TaskSpec {
                readiness_probe: Some(probe),
                ..TaskSpec::default()
            })
        };
        assert!(http(&|_| {}).is_empty());
        assert!(
            http(&|h| h.path = String::new()).is_empty(),
            "the default path is /"
        );
        assert_all(
            &http(&|h| h.path = "healthz".into()),
            &["spec.readinessProbe.httpGet.path: Invalid value: \"healthz\": must start with '/'"],
        );
        assert_all(
            &http(&|h| h.path = format!("/{}", "a".repeat(2048))),
            &["spec.readinessProbe.httpGet.path: Too long: may not be more than 2048 bytes"],
        );
        assert!(http(&|h| h.path = format!("/{}", "a".repeat(2047))).is_empty());
        for bad in [
            "/a b",
            "/a\r\nHost: evil",
            "/a\tb",
            "/\u{7f}",
            "/caf\u{e9}",
            "/a\"b",
            "/<x>",
        ] {
            let errs = http(&|h| h.path = bad.into());
            assert_eq!(errs.len(), 1, "{bad:?}: {:#?}", fields(&errs));
            assert_eq!(errs[0].field, "spec.readinessProbe.httpGet.path");
            assert!(errs[0].message.contains("RFC 3986"), "{}", errs[0]);
        }
        assert_all(
            &http(&|h| h.port = 0.into()),
            &[
                "spec.readinessProbe.httpGet.port: Required value: a port number (1-65535) or the name of one of the task's ports",
            ],
        );
        assert_all(
            &http(&|h| h.port = "".into()),
            &[
                "spec.readinessProbe.httpGet.port: Required value: a port number (1-65535) or the name of one of the task's ports",
            ],
        );
        assert_all(
            &http(&|h| h.port = (-1).into()),
            &[
                "spec.readinessProbe.httpGet.port: Invalid value: -1: must be between 1 and 65535, inclusive",
            ],
        );
        assert_all(
            &http(&|h| h.port = 65_536.into()),
            &[
                "spec.readinessProbe.httpGet.port: Invalid value: 65536: must be between 1 and 65535, inclusive",
            ],
        );
        assert_all(
            &http(&|h| h.port = "HTTP".into()),
            &[
                "spec.readinessProbe.httpGet.port: Invalid value: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.readinessProbe.httpGet.port: Invalid value: \"HTTP\": must contain at least one letter (a-z)",
            ],
        );
        assert_all(
            &http(&|h| h.port = "http".into()),
            &[
                "spec.readinessProbe.httpGet.port: Invalid value: \"http\": must be the name of one of the task's ports (spec.ports[].name)",
            ],
        );
        assert_all(
            &http(&|h| h.host = "not a host".into()),
            &[
                "spec.readinessProbe.httpGet.host: Invalid value: \"not a host\": must be an IP address or a DNS name (lower case letters, digits, '-' and '.')",
            ],
        );
        assert_all(
            &http(&|h| h.host = "a".repeat(254)),
            &["spec.readinessProbe.httpGet.host: Too long: may not be more than 253 bytes"],
        );
        assert!(http(&|h| h.host = "::1".into()).is_empty());
        assert!(http(&|h| h.host = "web.default.svc".into()).is_empty());
        assert_all(
            &http(&|h| h.scheme = Some(Scheme::Https)),
            &[
                "spec.readinessProbe.httpGet.scheme: Unsupported value: \"HTTPS\": supported values: \"HTTP\" (HTTPS probes are not supported yet)",
            ],
        );
        let header = |name: &str, value: &str| HttpHeader {
            name: name.into(),
            value: value.into(),
        };
        assert_all(
            &http(&|h| h.http_headers = vec![header("X", "1"); 33]),
            &["spec.readinessProbe.httpGet.httpHeaders: Too many: 33: must have at most 32 items"],
        );
        assert!(http(&|h| h.http_headers = vec![header("X", "1"); 32]).is_empty());
        assert_all(
            &http(&|h| {
                h.http_headers = vec![
                    header("", "v"),
                    header("Bad Name", "v"),
                    header("Bad:Name", "v"),
                    header(&"x".repeat(257), "v"),
                    header("X-Ok", "a\r\nInjected: 1"),
                    header("X-Ok", "caf\u{e9}"),
                    header("X-Ok", &"v".repeat(4097)),
                ]
            }),
            &[
                "spec.readinessProbe.httpGet.httpHeaders[0].name: Required value",
                "spec.readinessProbe.httpGet.httpHeaders[1].name: Invalid value: \"Bad Name\": must be a valid HTTP header name: letters, digits and !#$%&'*+-.^_`|~",
                "spec.readinessProbe.httpGet.httpHeaders[2].name: Invalid value: \"Bad:Name\": must be a valid HTTP header name: letters, digits and !#$%&'*+-.^_`|~",
                "spec.readinessProbe.httpGet.httpHeaders[3].name: Too long: may not be more than 256 bytes",
                "spec.readinessProbe.httpGet.httpHeaders[4].value: Invalid value: \"a\\r\\nInjected: 1\": must be visible ASCII characters, spaces and tabs (no control characters or line breaks)",
                "spec.readinessProbe.httpGet.httpHeaders[5].value: Invalid value: \"café\": must be visible ASCII characters, spaces and tabs (no control characters or line breaks)",
                "spec.readinessProbe.httpGet.httpHeaders[6].value: Too long: may not be more than 4096 bytes",
            ],
        );
    }

    #[test]
    fn probe_ports_must_name_a_tcp_port_of_the_task() {
        let errs = task_errors(TaskSpec {
            ports: vec![
                port("http", 8080),
                ContainerPort {
                    protocol: Some(Protocol::Udp),
                    ..port("dns", 53)
                },
            ],
            readiness_probe: Some(http_probe("http".into())),
            liveness_probe: Some(tcp_probe("dns".into())),
            startup_probe: Some(tcp_probe("metrics".into())),
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.livenessProbe.tcpSocket.port: Invalid value: \"dns\": names a UDP port; probes connect over TCP",
                "spec.startupProbe.tcpSocket.port: Invalid value: \"metrics\": must be the name of one of the task's ports (spec.ports[].name)",
            ],
        );
        assert_all(
            &task_errors(TaskSpec {
                startup_probe: Some(Probe {
                    tcp_socket: Some(TcpSocketAction {
                        port: 80.into(),
                        host: "-bad-".into(),
                    }),
                    ..Probe::default()
                }),
                ..TaskSpec::default()
            }),
            &[
                "spec.startupProbe.tcpSocket.host: Invalid value: \"-bad-\": must be an IP address or a DNS name (lower case letters, digits, '-' and '.')",
            ],
        );
    }

    #[test]
    fn probe_timings_and_thresholds_are_bounded() {
        let probe = Probe {
            initial_delay_seconds: Some(-1),
            period_seconds: Some(0),
            timeout_seconds: Some(86_401),
            success_threshold: Some(0),
            failure_threshold: Some(10_001),
            ..tcp_probe(80.into())
        };
        let errs = task_errors(TaskSpec {
            readiness_probe: Some(probe.clone()),
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.readinessProbe.initialDelaySeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.readinessProbe.periodSeconds: Invalid value: 0: must be greater than or equal to 1",
                "spec.readinessProbe.timeoutSeconds: Invalid value: 86401: must be less than or equal to 86400",
                "spec.readinessProbe.successThreshold: Invalid value: 0: must be greater than or equal to 1",
                "spec.readinessProbe.failureThreshold: Invalid value: 10001: must be less than or equal to 10000",
            ],
        );
        let errs = task_errors(TaskSpec {
            readiness_probe: Some(Probe {
                initial_delay_seconds: Some(86_401),
                period_seconds: Some(-5),
                timeout_seconds: Some(0),
                failure_threshold: Some(0),
                ..tcp_probe(80.into())
            }),
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.readinessProbe.initialDelaySeconds: Invalid value: 86401: must be less than or equal to 86400",
                "spec.readinessProbe.periodSeconds: Invalid value: -5: must be greater than or equal to 1",
                "spec.readinessProbe.timeoutSeconds: Invalid value: 0: must be greater than or equal to 1",
                "spec.readinessProbe.failureThreshold: Invalid value: 0: must be greater than or equal to 1",
            ],
        );
    }

    #[test]
    fn liveness_and_startup_probes_need_a_success_threshold_of_one() {
        let twice = Probe {
            success_threshold: Some(2),
            ..tcp_probe(80.into())
        };
        let errs = task_errors(TaskSpec {
            readiness_probe: Some(twice.clone()),
            liveness_probe: Some(twice.clone()),
            startup_probe: Some(twice),
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.livenessProbe.successThreshold: Invalid value: 2: must be 1 for liveness and startup probes",
                "spec.startupProbe.successThreshold: Invalid value: 2: must be 1 for liveness and startup probes",
            ],
        );
    }

    #[test]
    fn a_probe_grace_period_is_for_liveness_and_startup_only() {
        let grace = |v: i64| Probe {
            termination_grace_period_seconds: Some(v),
            ..tcp_probe(80.into())
        };
        let errs = task_errors(TaskSpec {
            readiness_probe: Some(grace(5)),
            liveness_probe: Some(grace(0)),
            startup_probe: Some(grace(86_401)),
            ..TaskSpec::default()
        });
        assert_all(
            &errs,
            &[
                "spec.readinessProbe.terminationGracePeriodSeconds: Invalid value: 5: must not be set for readiness probes",
                "spec.livenessProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than or equal to 1",
                "spec.startupProbe.terminationGracePeriodSeconds: Invalid value: 86401: must be less than or equal to 86400",
            ],
        );
    }

    #[test]
    fn templates_check_ports_and_probes_under_their_path() {
        let bad = TaskSpec {
            image: "nginx".into(),
            ports: vec![port("http", 80), port("http", 81)],
            readiness_probe: Some(Probe::default()),
            liveness_probe: Some(http_probe("admin".into())),
            ..TaskSpec::default()
        };
        let mut svc = Service::new(
            "web",
            ServiceSpec {
                template: TaskTemplate {
                    spec: bad.clone(),
                    ..TaskTemplate::default()
                },
                ..ServiceSpec::default()
            },
        );
        svc.metadata.namespace = "default".into();
        let expected = [
            "spec.template.spec.ports[1].name: Duplicate value: \"http\"",
            "spec.template.spec.readinessProbe: Required value: must have exactly one of exec, httpGet, tcpSocket",
            "spec.template.spec.livenessProbe.httpGet.port: Invalid value: \"admin\": must be the name of one of the task's ports (spec.ports[].name)",
        ];
        assert_all(&svc.validate(), &expected);
        let mut job = valid_job();
        job.spec.template.spec = bad;
        assert_all(&job.validate(), &expected);
    }

    #[test]
    fn job_overrides_name_ports_of_the_spec_they_make() {
        let mut job = valid_job();
        job.spec.template.spec.ports = vec![port("http", 8080)];
        job.spec.overrides = vec![
            // Names a port of the template: fine.
            TaskOverride {
                indexes: "0".into(),
                spec: TaskSpec {
                    readiness_probe: Some(http_probe("http".into())),
                    ..TaskSpec::default()
                },
            },
            // Its ports replace the template's, and its probe names a port of its own.
            TaskOverride {
                indexes: "1".into(),
                spec: TaskSpec {
                    ports: vec![port("admin", 9000)],
                    liveness_probe: Some(tcp_probe("admin".into())),
                    ..TaskSpec::default()
                },
            },
            // Names a port of neither.
            TaskOverride {
                indexes: "2".into(),
                spec: TaskSpec {
                    startup_probe: Some(tcp_probe("grpc".into())),
                    ..TaskSpec::default()
                },
            },
        ];
        assert_all(
            &job.validate(),
            &[
                "spec.overrides[2].spec.startupProbe.tcpSocket.port: Invalid value: \"grpc\": must be the name of one of the task's ports (spec.ports[].name) once this override is applied",
            ],
        );
        // A template probe whose port an override takes away.
        job.spec.template.spec.liveness_probe = Some(tcp_probe("http".into()));
        job.spec.overrides.truncate(2);
        job.spec.overrides[1].spec.liveness_probe = None;
        assert_all(
            &job.validate(),
            &[
                "spec.overrides[1].spec.livenessProbe.tcpSocket.port: Invalid value: \"http\": must be the name of one of the task's ports (spec.ports[].name) once this override is applied",
            ],
        );
    }
}
