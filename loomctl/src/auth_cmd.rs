//! `loomctl auth whoami` and `loomctl auth can-i`: who the API server takes
//! the caller for (SelfSubjectReview), and whether it may do something
//! (SelfSubjectAccessReview), printed as kubectl prints them.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use client::client::{Body, Method};
use serde_json::{Value, json};

use crate::Context;
use crate::kinds::Kinds;

/// Where `kubectl auth whoami` asks.
pub(crate) const SELF_SUBJECT_REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
/// Where `kubectl auth can-i` asks.
pub(crate) const SELF_SUBJECT_ACCESS_REVIEWS: &str =
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// `loomctl auth` subcommands.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuthCommand {
    /// Who the API server takes you for: user name, uid, groups.
    Whoami {
        /// json or yaml: the whole SelfSubjectReview.
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Whether you may do something: `can-i create tasks`, `can-i get jobs/web`,
    /// `can-i get /healthz`. Prints yes or no; exits 0 for yes, 1 for no.
    CanI {
        /// The verb: get, list, watch, create, update, patch, delete, deletecollection, or *.
        verb: String,
        /// RESOURCE[/NAME] (a plural, short name or kind, optionally .GROUP), or a
        /// non-resource URL starting with /.
        resource: String,
        /// A subresource: status, log, binding.
        #[arg(long)]
        subresource: Option<String>,
        /// In every namespace (cluster-wide).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Print nothing; only the exit code answers.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
}

/// Who a request was authenticated as (`authentication.k8s.io/v1` UserInfo).
#[derive(Debug, Default)]
pub(crate) struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

impl UserInfo {
    fn from_json(value: &Value) -> Self {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
        UserInfo {
            username: text("username"),
            uid: text("uid"),
            groups: strings(&value["groups"]),
            extra: value["extra"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), strings(v)))
                .collect(),
        }
    }
}

/// A SubjectAccessReview's answer (`authorization.k8s.io/v1`).
#[derive(Debug, Default)]
pub(crate) struct AccessStatus {
    pub allowed: bool,
    pub reason: String,
    pub evaluation_error: String,
}

impl AccessStatus {
    fn from_json(value: &Value) -> Self {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
        AccessStatus {
            allowed: value["allowed"].as_bool().unwrap_or(false),
            reason: text("reason"),
            evaluation_error: text("evaluationError"),
        }
    }
}

pub(crate) async fn run(ctx: &Context, args: &AuthArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        AuthCommand::Whoami { output } => whoami(ctx, output.as_deref()).await,
        AuthCommand::CanI {
            verb,
            resource,
            subresource,
            all_namespaces,
            quiet,
        } => {
            let namespace = if *all_namespaces {
                ""
            } else {
                ctx.namespace.as_str()
            };
            let attributes =
                attributes(ctx, verb, resource, subresource.as_deref(), namespace).await?;
            let status = can_i(ctx, attributes).await?;
            if !*quiet {
                println!("{}", answer(&status));
            }
            Ok(if status.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn json_body(value: &Value) -> anyhow::Result<Body> {
    Ok(Body {
        content_type: "application/json",
        bytes: serde_json::to_vec(value)?.into(),
    })
}

async fn whoami(ctx: &Context, output: Option<&str>) -> anyhow::Result<ExitCode> {
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "metadata": {},
        "status": {},
    });
    let answer: Value = ctx
        .client
        .request(
            Method::POST,
            SELF_SUBJECT_REVIEWS,
            Some(json_body(&review)?),
        )
        .await
        .context("cannot ask the API server who you are (SelfSubjectReview)")?;
    match output {
        Some("json") => println!("{}", serde_json::to_string_pretty(&answer)?),
        Some("yaml") => print!("{}", serde_saphyr::to_string(&answer)?),
        Some(other) => bail!("--output {other:?}: json or yaml"),
        None => {
            let user = &answer["status"]["userInfo"];
            if !user.is_object() {
                bail!("the API server's SelfSubjectReview has no status.userInfo: {answer}");
            }
            let user = UserInfo::from_json(user);
            print!("{}", whoami_table(&user));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kubectl auth whoami`'s table.
pub(crate) fn whoami_table(user: &UserInfo) -> String {
    let mut rows = vec![("ATTRIBUTE".to_owned(), "VALUE".to_owned())];
    if !user.username.is_empty() {
        rows.push(("Username".to_owned(), user.username.clone()));
    }
    if !user.uid.is_empty() {
        rows.push(("UID".to_owned(), user.uid.clone()));
    }
    if !user.groups.is_empty() {
        rows.push(("Groups".to_owned(), format!("[{}]", user.groups.join(" "))));
    }
    for (key, values) in &user.extra {
        rows.push((format!("Extra: {key}"), format!("[{}]", values.join(" "))));
    }
    let width = rows.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(a, v)| format!("{a:<width$}   {v}\n"))
        .collect()
}

/// The `spec` of a SelfSubjectAccessReview for `verb` on `resource`: a
/// non-resource URL as given, a resource resolved through discovery (a
/// resource the server does not list is asked about as typed, with a warning,
/// as kubectl does).
async fn attributes(
    ctx: &Context,
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
    namespace: &str,
) -> anyhow::Result<Value> {
    if resource.starts_with('/') {
        if subresource.is_some() {
            bail!("--subresource: not for a non-resource URL");
        }
        return Ok(json!({"nonResourceAttributes": {"path": resource, "verb": verb}}));
    }
    let (typed, name) = match resource.split_once('/') {
        Some((typed, name)) => (typed, name),
        None => (resource, ""),
    };
    if typed.is_empty() {
        bail!("{resource:?}: give a resource, e.g. tasks or tasks/NAME");
    }
    let (group, plural, namespaced) = if typed == "*" {
        ("*".to_owned(), "*".to_owned(), true)
    } else {
        // The core group first, as kubectl: Namespace and ServiceAccount are
        // served there and in loom.dev, and RBAC rules name the core group.
        let core = if typed.contains('.') {
            None
        } else {
            core_resource(ctx, typed).await
        };
        let kinds = match core {
            Some(_) => None,
            None => Some(Kinds::discover(&ctx.client).await?),
        };
        match (core, kinds.as_ref().map(|k| k.by_name(typed))) {
            (Some((plural, namespaced)), _) => (String::new(), plural, namespaced),
            (None, Some(Ok(info))) => (info.group.clone(), info.plural.clone(), info.namespaced),
            (None, _) => {
                eprintln!("Warning: the server doesn't have a resource type '{typed}'");
                let (plural, group) = typed.split_once('.').unwrap_or((typed, ""));
                (group.to_owned(), plural.to_owned(), true)
            }
        }
    };
    Ok(resource_attributes(
        verb,
        &group,
        &plural,
        subresource.unwrap_or(""),
        name,
        if namespaced { namespace } else { "" },
    ))
}

/// A resource of the core group (`/api/v1`: namespaces, serviceaccounts) by
/// plural, singular, short name or kind: its plural and whether it is namespaced.
async fn core_resource(ctx: &Context, typed: &str) -> Option<(String, bool)> {
    let list: Value = ctx
        .client
        .request(Method::GET, "/api/v1", None)
        .await
        .ok()?;
    list["resources"].as_array()?.iter().find_map(|r| {
        let plural = r["name"].as_str()?;
        let matches = !plural.contains('/')
            && (plural == typed
                || r["singularName"].as_str() == Some(typed)
                || r["kind"]
                    .as_str()
                    .is_some_and(|k| k.eq_ignore_ascii_case(typed))
                || strings(&r["shortNames"]).iter().any(|s| s == typed));
        matches.then(|| (plural.to_owned(), r["namespaced"].as_bool().unwrap_or(true)))
    })
}

/// The wire form of resource attributes (empty fields left out, as Kubernetes does).
pub(crate) fn resource_attributes(
    verb: &str,
    group: &str,
    resource: &str,
    subresource: &str,
    name: &str,
    namespace: &str,
) -> Value {
    let mut attributes = serde_json::Map::new();
    for (key, value) in [
        ("namespace", namespace),
        ("verb", verb),
        ("group", group),
        ("resource", resource),
        ("subresource", subresource),
        ("name", name),
    ] {
        if !value.is_empty() {
            attributes.insert(key.to_owned(), json!(value));
        }
    }
    json!({ "resourceAttributes": attributes })
}

async fn can_i(ctx: &Context, spec: Value) -> anyhow::Result<AccessStatus> {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {},
        "spec": spec,
    });
    let answer: Value = ctx
        .client
        .request(
            Method::POST,
            SELF_SUBJECT_ACCESS_REVIEWS,
            Some(json_body(&review)?),
        )
        .await
        .context("cannot ask the API server (SelfSubjectAccessReview)")?;
    match &answer["status"] {
        status if status.is_object() => Ok(AccessStatus::from_json(status)),
        _ => bail!("the API server's SelfSubjectAccessReview has no status: {answer}"),
    }
}

/// `yes`, or `no` with the server's reason, as kubectl prints it.
pub(crate) fn answer(status: &AccessStatus) -> String {
    if status.allowed {
        return "yes".to_owned();
    }
    let mut line = "no".to_owned();
    for part in [&status.reason, &status.evaluation_error] {
        if !part.is_empty() {
            line.push_str(" - ");
            line.push_str(part);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_prints_like_kubectl() {
        let user = UserInfo {
            username: "admin".to_owned(),
            uid: "u-1".to_owned(),
            groups: vec![
                "system:masters".to_owned(),
                "system:authenticated".to_owned(),
            ],
            extra: [("scopes".to_owned(), vec!["a".to_owned()])].into(),
        };
        assert_eq!(
            whoami_table(&user),
            "ATTRIBUTE       VALUE\nUsername        admin\nUID             u-1\n\
             Groups          [system:masters system:authenticated]\nExtra: scopes   [a]\n"
        );
    }

    #[test]
    fn a_denial_carries_its_reason() {
        let mut status = AccessStatus::default();
        assert_eq!(answer(&status), "no");
        status.reason = "no RBAC policy matched".to_owned();
        assert_eq!(answer(&status), "no - no RBAC policy matched");
        status.allowed = true;
        assert_eq!(answer(&status), "yes");
    }

    #[test]
    fn empty_attributes_are_left_out() {
        assert_eq!(
            resource_attributes("get", "", "namespaces", "", "", ""),
            json!({"resourceAttributes": {"verb": "get", "resource": "namespaces"}})
        );
    }
}
