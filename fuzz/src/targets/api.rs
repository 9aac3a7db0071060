//! The API server's request decoding, through its own code over a real
//! embedded store in a temp dir: request bodies (JSON, YAML, protobuf) of
//! every kind admitted as a dry-run create; merge, JSON and apply patches as
//! dry-run patches of real objects; list parameters (label and field
//! selectors, resourceVersion, limit and continue tokens) as lists.
//!
//! An input starts with a header line naming what it is (`application/yaml
//! tasks`, `merge services`, `tasks`); a mangled header falls back to a
//! default, so mutations of the body still run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api_types::{Selector, Status};
use apiserver::catalog::{CacheConfig, Catalog, ServedResource};
use apiserver::generic::{GenericStore, ListQuery, Part, PatchKind, WriteOptions};
use apiserver::server::StoreUrl;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Harness;

/// A GenericStore over an embedded store in a temp dir, as the API server
/// builds it (catalog, standard admission chain), with the `default`
/// namespace and one object of each kind patches are tried on.
#[derive(Debug)]
pub struct Api {
    runtime: tokio::runtime::Runtime,
    api: Arc<GenericStore>,
    cancel: CancellationToken,
    /// Every fixture's uid, by plural.
    uids: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The objects patches are tried on, each named `fuzz`.
fn fixtures() -> Vec<(&'static str, Value)> {
    let task_spec = json!({"image": "busybox", "command": ["sleep", "1"],
        "resources": {"cpu": "100m", "memory": "32Mi"}});
    vec![
        (
            "tasks",
            json!({"metadata": {"name": "fuzz", "labels": {"app": "web", "tier": "front"}},
                "spec": task_spec}),
        ),
        (
            "jobs",
            json!({"metadata": {"name": "fuzz"},
                "spec": {"replicas": 2, "template": {"spec": task_spec}}}),
        ),
        (
            "services",
            json!({"metadata": {"name": "fuzz", "labels": {"app": "web"}},
                "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": task_spec}}}),
        ),
        ("serviceaccounts", json!({"metadata": {"name": "fuzz"}})),
        (
            "leases",
            json!({"metadata": {"name": "fuzz"},
                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}),
        ),
        (
            "roles",
            json!({"metadata": {"name": "fuzz"},
                "rules": [{"apiGroups": ["loom.dev"], "resources": ["tasks"], "verbs": ["get"]}]}),
        ),
        (
            "namespaces",
            json!({"metadata": {"name": "fuzz", "labels": {"team": "a"}}}),
        ),
    ]
}

/// A few tasks lists are tried on.
fn list_objects() -> Vec<Value> {
    let mut out = Vec::new();
    for (i, (app, tier)) in [
        ("web", "front"),
        ("web", "back"),
        ("db", "back"),
        ("batch", ""),
        ("web", "front"),
    ]
    .iter()
    .enumerate()
    {
        let mut labels = serde_json::Map::new();
        labels.insert("app".into(), json!(app));
        if !tier.is_empty() {
            labels.insert("tier".into(), json!(tier));
        }
        out.push(
            json!({"metadata": {"name": format!("t{i}"), "labels": labels},
            "spec": {"image": "busybox", "nodeName": if i % 2 == 0 { "n1" } else { "" }}}),
        );
    }
    out
}

impl Api {
    /// Starts it (a second or so: the store and the catalog's caches).
    pub fn start() -> Api {
        let dir = match tempfile::Builder::new().prefix("loom-fuzz-api").tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("cannot make a temp dir: {e}"),
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => panic!("cannot start a runtime: {e}"),
        };
        let cancel = CancellationToken::new();
        let path = dir.path().join("store.db");
        let api = runtime.block_on(async {
            let store =
                match apiserver::open_store(&StoreUrl::Sqlite(path), "", Duration::from_secs(300))
                    .await
                {
                    Ok(store) => store,
                    Err(e) => panic!("cannot open the embedded store: {e}"),
                };
            let catalog = Catalog::new(store.clone(), CacheConfig::default(), cancel.child_token());
            let admission =
                apiserver::admission::Chain::standard(store.clone(), catalog.clone(), None);
            Arc::new(GenericStore {
                store,
                catalog,
                admission: Arc::new(admission),
                max_list_objects: 10_000,
                max_patch_operations: 10_000,
                nodelet_client: match apiserver::logs::nodelet_client(None) {
                    Ok(client) => client,
                    Err(e) => panic!("cannot build the nodelet client: {e}"),
                },
            })
        });
        let mut this = Api {
            runtime,
            api,
            cancel,
            uids: HashMap::new(),
            _dir: dir,
        };
        let options = WriteOptions {
            field_manager: "loom-fuzz".to_owned(),
            ..WriteOptions::default()
        };
        for namespace in ["default", "other"] {
            this.create_fixture(
                "namespaces",
                json!({"metadata": {"name": namespace}}),
                &options,
            );
        }
        for (plural, object) in fixtures() {
            let uid = this.create_fixture(plural, object, &options);
            this.uids.insert(plural.to_owned(), uid);
        }
        for object in list_objects() {
            this.create_fixture("tasks", object.clone(), &options);
            let mut other = object;
            other["metadata"]["namespace"] = json!("other");
            this.create_fixture("tasks", other, &options);
        }
        this
    }

    fn create_fixture(&self, plural: &str, object: Value, options: &WriteOptions) -> String {
        let Some(res) = self.resource(plural) else {
            panic!("{plural} is not served");
        };
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let namespace = res.info.namespaced.then_some(namespace.as_str());
        match self
            .runtime
            .block_on(self.api.create(&res, namespace, object, options))
        {
            Ok(written) => written.object["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            Err(e) => panic!("cannot create the {plural} fixture: {:?}", e.0),
        }
    }

    /// A built-in resource by plural (the `loom.dev` group first, then core,
    /// then any).
    pub fn resource(&self, plural: &str) -> Option<Arc<ServedResource>> {
        let resources = self.api.catalog.resources();
        let find = |group: &str| {
            resources
                .iter()
                .find(|r| r.info.plural == plural && r.info.group == group)
                .cloned()
        };
        find(api_types::GROUP).or_else(|| find("")).or_else(|| {
            resources
                .iter()
                .find(|r| r.info.plural == plural && r.definition.is_none())
                .cloned()
        })
    }

    fn namespace_of(res: &ServedResource) -> Option<&'static str> {
        res.info.namespaced.then_some("default")
    }
}

/// The header line and the rest.
fn split_header(input: &[u8]) -> (Option<&str>, &[u8]) {
    match input.iter().position(|b| *b == b'\n') {
        Some(end) => match std::str::from_utf8(&input[..end]) {
            Ok(line) if line.len() < 100 && !line.contains('{') => (Some(line), &input[end + 1..]),
            _ => (None, input),
        },
        None => (None, input),
    }
}

/// A Status as one line, for failure messages.
fn status_line(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_default()
}

/// An error answer must be the client's fault (4xx), and a 422 must name
/// every bad field.
fn check_error(status: &Status, what: &str) -> Result<(), String> {
    // A resourceVersion (or a continue token's) newer than the store's is a
    // 504 "Too large resource version", as Kubernetes answers: clients retry.
    let too_new = status.code == 504 && status.message.starts_with("Too large resource version");
    if !(400..500).contains(&status.code) && !too_new {
        return Err(format!(
            "{what} answered {} (not a client error): {}",
            status.code,
            status_line(status)
        ));
    }
    if status.code == 422 {
        let causes = status
            .details
            .as_ref()
            .map(|d| d.causes.as_slice())
            .unwrap_or_default();
        if causes.is_empty() {
            return Err(format!(
                "{what} answered 422 without causes: {}",
                status_line(status)
            ));
        }
        // Every cause names its field; a JSON Patch that cannot be applied
        // names the operation's path in its message instead, and an unknown
        // field may be the empty key itself.
        if let Some(cause) = causes.iter().find(|c| {
            c.field.is_empty()
                && !c.message.contains("the JSON patch cannot be applied")
                && !c.message.contains("field not declared in schema")
        }) {
            return Err(format!(
                "{what} answered 422 with a cause that names no field ({:?}): {}",
                cause.message,
                status_line(status)
            ));
        }
    }
    Ok(())
}

/// Equal, numbers compared by value (JSON's `-0` is a float, YAML's an integer).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn yaml_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    headers
}

/// What the server sets on every create, removed before comparing two.
fn without_server_fields(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "creationTimestamp",
            "managedFields",
            "resourceVersion",
        ] {
            meta.remove(field);
        }
    }
    object
}

/// `api_body`: a request body of any kind, decoded by content type and
/// admitted as a dry-run create. A body admitted once is admitted again
/// unchanged (admission is idempotent: what it stores it would accept).
pub fn api_body() -> Box<dyn Harness> {
    let api = Api::start();
    Box::new(move |input: &[u8]| -> Result<(), String> {
        let (header, body) = split_header(input);
        let mut words = header.unwrap_or_default().split_whitespace();
        let content_type = words.next().unwrap_or("application/json").to_owned();
        let plural = words.next().unwrap_or("tasks");
        let Some(res) = api.resource(plural).or_else(|| api.resource("tasks")) else {
            return Err("tasks are not served".to_owned());
        };
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&content_type) {
            headers.insert(header::CONTENT_TYPE, value);
        }
        let body = Bytes::copy_from_slice(body);
        let value = match apiserver::http::parse_body(&headers, &body) {
            Ok(value) => value,
            Err(e) => return check_error(&e.0, "decoding the body"),
        };
        // JSON is YAML: a JSON body sent as YAML decodes to the same object.
        if content_type.contains("json")
            && let Ok(as_yaml) = apiserver::http::parse_body(&yaml_headers(), &body)
            && !same_value(&as_yaml, &value)
        {
            return Err(format!(
                "a JSON body decodes differently as YAML:\n  JSON {value}\n  YAML {as_yaml}"
            ));
        }
        let options = WriteOptions {
            dry_run: true,
            field_manager: "loom-fuzz".to_owned(),
            ..WriteOptions::default()
        };
        let namespace = Api::namespace_of(&res);
        let first =
            match api
                .runtime
                .block_on(api.api.create(&res, namespace, value.clone(), &options))
            {
                Ok(written) => written.object,
                Err(e) => return check_error(&e.0, "a dry-run create"),
            };
        // Round trip: what was admitted, sent again as JSON, is admitted as is.
        let text = serde_json::to_vec(&first).map_err(|e| format!("cannot encode: {e}"))?;
        let again = apiserver::http::parse_body(&HeaderMap::new(), &Bytes::from(text))
            .map_err(|e| format!("the admitted object does not decode: {:?}", e.0))?;
        let second = api
            .runtime
            .block_on(api.api.create(&res, namespace, again, &options))
            .map_err(|e| {
                format!(
                    "the admitted object {first} is refused when sent again: {}",
                    status_line(&e.0)
                )
            })?;
        let (a, b) = (
            without_server_fields(first),
            without_server_fields(second.object),
        );
        if a != b {
            return Err(format!(
                "admission is not idempotent:\n  first  {a}\n  second {b}"
            ));
        }
        Ok(())
    })
}

/// `api_patch`: a merge, JSON or apply patch of a real object, as a dry run.
/// A patch never changes an object's identity (name, namespace, uid, kind).
pub fn api_patch() -> Box<dyn Harness> {
    let api = Api::start();
    Box::new(move |input: &[u8]| -> Result<(), String> {
        let (header, body) = split_header(input);
        let mut words = header.unwrap_or_default().split_whitespace();
        let kind = match words.next() {
            Some("json") => PatchKind::Json,
            Some("apply") => PatchKind::Apply,
            _ => PatchKind::Merge,
        };
        let plural = words.next().unwrap_or("tasks");
        let part = match words.next() {
            Some("status") => Part::Status,
            _ => Part::Main,
        };
        let Some(res) = api.resource(plural).or_else(|| api.resource("tasks")) else {
            return Err("tasks are not served".to_owned());
        };
        let plural = res.info.plural.clone();
        let options = WriteOptions {
            dry_run: true,
            field_manager: "loom-fuzz".to_owned(),
            force: kind == PatchKind::Apply && body.len() % 2 == 0,
            ..WriteOptions::default()
        };
        let namespace = Api::namespace_of(&res).unwrap_or_default();
        let body = Bytes::copy_from_slice(body);
        let written = match api.runtime.block_on(
            api.api
                .patch(&res, namespace, "fuzz", kind, &body, part, &options),
        ) {
            Ok(written) => written.object,
            Err(e) => return check_error(&e.0, "a dry-run patch"),
        };
        let meta = &written["metadata"];
        let uid = api.uids.get(&plural).map(String::as_str).unwrap_or("");
        if meta["name"] != "fuzz"
            || meta["namespace"].as_str().unwrap_or("") != namespace
            || meta["uid"].as_str().unwrap_or("") != uid
            || written["kind"].as_str() != Some(res.info.kind.as_str())
        {
            return Err(format!(
                "a patch changed the object's identity: {}",
                json!({"kind": written["kind"], "metadata": meta})
            ));
        }
        Ok(())
    })
}

/// `api_list`: a list's query string (`labelSelector`, `fieldSelector`,
/// `resourceVersion`, `resourceVersionMatch`, `limit`, `continue`) decoded as
/// a list request decodes it, then listed. Every item listed matches the
/// selectors, and a page's continue token reads the next page.
pub fn api_list() -> Box<dyn Harness> {
    let api = Api::start();
    Box::new(move |input: &[u8]| -> Result<(), String> {
        let (header, rest) = split_header(input);
        let plural = header
            .and_then(|h| h.split_whitespace().next())
            .unwrap_or("tasks");
        let Some(res) = api.resource(plural).or_else(|| api.resource("tasks")) else {
            return Err("tasks are not served".to_owned());
        };
        let Ok(text) = std::str::from_utf8(rest) else {
            return Ok(());
        };
        // What hyper takes as a request target, axum's Query decodes.
        let Ok(uri) = format!("/x?{}", text.trim_end_matches('\n')).parse::<Uri>() else {
            return Ok(());
        };
        let Ok(axum::extract::Query(query)) =
            axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
        else {
            return Ok(());
        };
        let namespace = Api::namespace_of(&res).map(str::to_owned);
        if let Err(e) =
            apiserver::generic::watch_from(query.get("resourceVersion").map(String::as_str))
        {
            check_error(&e.0, "a watch's resourceVersion")?;
        }
        // A watch's own parameters, as a watch request reads them.
        let _ =
            api_types::options::WatchOptions::from_query(|key| query.get(key).map(String::as_str));
        let list = match apiserver::http::decode_list_query(res.clone(), namespace, &query) {
            Ok(list) => list,
            Err(e) => return check_error(&e.0, "decoding a list's parameters"),
        };
        // A resourceVersion newer than the store's waits for the cache (3 s)
        // before a 504: right, but it would stall the loop.
        let newest = api
            .runtime
            .block_on(api.api.store.current_revision())
            .map_err(|e| format!("cannot read the revision: {e}"))?;
        let future = |rv: &Option<String>| {
            rv.as_deref()
                .and_then(|rv| rv.parse::<i64>().ok())
                .is_some_and(|rv| rv > newest)
        };
        if future(&list.resource_version) {
            return Ok(());
        }
        let page = match api.runtime.block_on(api.api.list(&res, list.clone())) {
            Ok(page) => page,
            Err(e) => return check_error(&e.0, "a list"),
        };
        let labels = list
            .filter
            .labels
            .clone()
            .unwrap_or_else(Selector::everything);
        let fields = list.filter.fields.clone();
        let mut seen = Vec::new();
        for item in &page.items {
            let object: Value = serde_json::from_slice(item)
                .map_err(|e| format!("a listed item is not JSON: {e}"))?;
            let object_labels: BTreeMap<String, String> = object["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            if !labels.matches(&object_labels) {
                return Err(format!(
                    "a list with labelSelector {labels} returned {}",
                    object["metadata"]
                ));
            }
            if let Some(fields) = &fields
                && !fields.matches_json(&object)
            {
                return Err(format!(
                    "a list with fieldSelector {fields} returned {}",
                    object["metadata"]
                ));
            }
            seen.push(object["metadata"]["name"].clone());
        }
        if let Some(token) = page.continue_token {
            let next = ListQuery {
                continue_token: Some(token.clone()),
                resource_version: None,
                resource_version_match: None,
                ..list
            };
            let page2 = api
                .runtime
                .block_on(api.api.list(&res, next))
                .map_err(|e| {
                    format!(
                        "the continue token {token:?} of a page is refused: {}",
                        status_line(&e.0)
                    )
                })?;
            for item in &page2.items {
                let object: Value = serde_json::from_slice(item).unwrap_or_default();
                if seen.contains(&object["metadata"]["name"]) {
                    return Err(format!(
                        "the page after {token:?} repeats {}",
                        object["metadata"]["name"]
                    ));
                }
            }
        }
        Ok(())
    })
}

/// `api_delete`: a DELETE's body (DeleteOptions: preconditions, propagation
/// policy, grace period) decoded as a delete request decodes it, then a
/// dry-run delete of a real object. Errors are 4xx, and a dry run deletes
/// nothing: the object is still there, unchanged, not being deleted.
pub fn api_delete() -> Box<dyn Harness> {
    let api = Api::start();
    Box::new(move |input: &[u8]| -> Result<(), String> {
        let (header, body) = split_header(input);
        let plural = header
            .and_then(|h| h.split_whitespace().next())
            .unwrap_or("tasks");
        let Some(res) = api.resource(plural).or_else(|| api.resource("tasks")) else {
            return Err("tasks are not served".to_owned());
        };
        let mut options: api_types::options::DeleteOptions = if body.is_empty() {
            Default::default()
        } else {
            match serde_json::from_slice(body) {
                Ok(options) => options,
                Err(_) => return Ok(()),
            }
        };
        // As `?dryRun=All` sets it.
        options.dry_run = vec!["All".to_owned()];
        let namespace = Api::namespace_of(&res).unwrap_or_default();
        let before = api
            .runtime
            .block_on(api.api.get(&res, namespace, "fuzz"))
            .map_err(|e| format!("the fixture is gone: {}", status_line(&e.0)))?;
        if let Err(e) = api
            .runtime
            .block_on(api.api.delete(&res, namespace, "fuzz", &options))
        {
            check_error(&e.0, "a dry-run delete")?;
        }
        let after = api
            .runtime
            .block_on(api.api.get(&res, namespace, "fuzz"))
            .map_err(|e| {
                format!(
                    "a dry-run delete of {plural}/fuzz deleted it: {}",
                    status_line(&e.0)
                )
            })?;
        if after != before {
            return Err(format!(
                "a dry-run delete changed {plural}/fuzz:\n  before {before}\n  after  {after}"
            ));
        }
        Ok(())
    })
}
