//! Discovery and API documents: `/api`, `/apis`, group and version resource lists
//! (legacy and aggregated), and the OpenAPI v3 documents of every kind.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, ServedResource};

/// Content type of aggregated discovery, which kubectl asks for first.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const SUB_VERBS: [&str; 3] = ["get", "patch", "update"];

/// `GET /api`: the core group's versions (`v1`: Namespace and ServiceAccount).
pub fn core_versions(catalog: &Catalog) -> Value {
    let served = catalog.resources().iter().any(|r| r.info.group.is_empty());
    let versions: Vec<&str> = if served { vec!["v1"] } else { Vec::new() };
    json!({
        "kind": "APIVersions",
        "versions": versions,
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`, legacy form.
pub fn group_list(catalog: &Catalog) -> Value {
    let mut groups: Vec<Value> = catalog
        .groups()
        .iter()
        .map(|(group, versions)| group_json(group, versions))
        .collect();
    // Loom's own group first (clients prefer the first group serving a name).
    groups.sort_by_key(|g| g["name"] != api_types::GROUP);
    groups.push(crate::authn::review::group_entry());
    groups.push(crate::authz::review::group_entry());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`.
pub fn group(catalog: &Catalog, group: &str) -> Option<Value> {
    let groups = catalog.groups();
    let versions = groups.get(group)?;
    let mut doc = group_json(group, versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn in_version<'a>(
    resources: &'a [std::sync::Arc<ServedResource>],
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ServedResource>> + 'a {
    resources
        .iter()
        .filter(move |r| r.info.group == group && r.info.version == version)
}

/// `GET /apis/{group}/{version}`: the APIResourceList.
pub fn resource_list(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let all = catalog.resources();
    let mut resources = Vec::new();
    for r in in_version(&all, group, version) {
        resources.push(json!({
            "name": r.info.plural,
            "singularName": r.info.singular,
            "namespaced": r.info.namespaced,
            "kind": r.info.kind,
            "verbs": VERBS,
            "shortNames": r.info.short_names,
        }));
        for sub in &r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.info.plural, sub.name()),
                "singularName": "",
                "namespaced": r.info.namespaced,
                "kind": sub.kind().unwrap_or(&r.info.kind),
                "verbs": sub.verbs(),
            });
            // A kind of another group (a Scale) says which, as Kubernetes'
            // `deployments/scale` does.
            if let Some((group, version)) = sub.group_version() {
                entry["group"] = json!(group);
                entry["version"] = json!(version);
            }
            resources.push(entry);
        }
        if r.info.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.info.plural),
                "singularName": "",
                "namespaced": r.info.namespaced,
                "kind": r.info.kind,
                "verbs": SUB_VERBS,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") },
        "resources": resources,
    }))
}

/// One resource of aggregated discovery, with every subresource the legacy
/// list names (`status`, `binding`, `log`, `token`, …).
fn aggregated_resource(r: &ServedResource) -> Value {
    let kind = |name: &str| json!({"group": r.info.group, "version": r.info.version, "kind": name});
    let mut subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let mut response_kind = kind(sub.kind().unwrap_or(&r.info.kind));
            if let Some((group, version)) = sub.group_version() {
                response_kind["group"] = json!(group);
                response_kind["version"] = json!(version);
            }
            json!({
                "subresource": sub.name(),
                "responseKind": response_kind,
                "verbs": sub.verbs(),
            })
        })
        .collect();
    if r.info.has_status {
        subresources.push(json!({
            "subresource": "status",
            "responseKind": kind(&r.info.kind),
            "verbs": SUB_VERBS,
        }));
    }
    let mut doc = json!({
        "resource": r.info.plural,
        "responseKind": kind(&r.info.kind),
        "scope": if r.info.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.info.singular,
        "verbs": VERBS,
        "shortNames": r.info.short_names,
    });
    if !subresources.is_empty() {
        doc["subresources"] = json!(subresources);
    }
    doc
}

/// A group's versions in aggregated discovery (`""` is the core group).
fn aggregated_versions(
    all: &[std::sync::Arc<ServedResource>],
    group: &str,
    versions: &[String],
) -> Vec<Value> {
    versions
        .iter()
        .map(|version| {
            let resources: Vec<Value> = in_version(all, group, version)
                .map(|r| aggregated_resource(r))
                .collect();
            json!({"version": version, "resources": resources, "freshness": "Current"})
        })
        .collect()
}

fn aggregated_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /apis` as an aggregated `APIGroupDiscoveryList`.
pub fn aggregated(catalog: &Catalog) -> Value {
    let all = catalog.resources();
    let mut items: Vec<Value> = catalog
        .groups()
        .iter()
        .map(|(group, versions)| {
            json!({
                "metadata": {"name": group},
                "versions": aggregated_versions(&all, group, versions),
            })
        })
        .collect();
    items.sort_by_key(|g| g["metadata"]["name"] != api_types::GROUP);
    items.push(crate::authn::review::aggregated_entry());
    items.push(crate::authz::review::aggregated_entry());
    aggregated_list(items)
}

/// `GET /api` as an aggregated `APIGroupDiscoveryList`: the core group alone,
/// nameless as Kubernetes serves it (kube-rs's `Discovery::run_aggregated`
/// and kubectl ask for this form first).
pub fn core_aggregated(catalog: &Catalog) -> Value {
    let all = catalog.resources();
    let served = all.iter().any(|r| r.info.group.is_empty());
    let items = if served {
        vec![json!({"metadata": {}, "versions": aggregated_versions(&all, "", &["v1".to_owned()])})]
    } else {
        Vec::new()
    };
    aggregated_list(items)
}

/// `GET /openapi/v3`: one entry per group version, with a hash of its document.
pub fn openapi_root(catalog: &Catalog) -> Value {
    let mut paths = Map::new();
    if let Some(doc) = openapi_document(catalog, "", "v1") {
        let mut hasher = DefaultHasher::new();
        doc.to_string().hash(&mut hasher);
        paths.insert(
            "api/v1".to_owned(),
            json!({"serverRelativeURL": format!("/openapi/v3/api/v1?hash={:016X}", hasher.finish())}),
        );
    }
    for (group, versions) in catalog.groups() {
        for version in versions {
            let doc = openapi_document(catalog, &group, &version).unwrap_or(Value::Null);
            let mut hasher = DefaultHasher::new();
            doc.to_string().hash(&mut hasher);
            paths.insert(
                format!("apis/{group}/{version}"),
                json!({"serverRelativeURL": format!("/openapi/v3/apis/{group}/{version}?hash={:016X}", hasher.finish())}),
            );
        }
    }
    json!({"paths": paths})
}

fn schema_key(group: &str, version: &str, kind: &str) -> String {
    api_types::schema::openapi_schema_key(group, version, kind)
}

/// `GET /openapi/v3/apis/{group}/{version}`: schemas and paths of each kind.
pub fn openapi_document(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let all = catalog.resources();
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for r in in_version(&all, group, version) {
        let key = schema_key(group, version, &r.info.kind);
        schemas.insert(key.clone(), r.openapi.clone());
        let gvk = json!({"group": group, "version": version, "kind": r.info.kind});
        let reference = json!({"$ref": format!("#/components/schemas/{key}")});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let field_validation = json!({
            "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
            "description": "Strict (default), Warn or Ignore: what to do with fields the schema does not declare"
        });
        let dry_run = json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let field_manager = json!({"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let op = |action: &str, with_body: bool| {
            let mut op = json!({
                "operationId": format!("{action}{}", r.info.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [field_validation, dry_run, field_manager],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
            });
            if with_body {
                op["requestBody"] = body.clone();
            }
            op
        };
        let root = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let base = if r.info.namespaced {
            format!("{root}/namespaces/{{namespace}}/{}", r.info.plural)
        } else {
            format!("{root}/{}", r.info.plural)
        };
        paths.insert(
            base.clone(),
            json!({"post": op("post", true), "get": op("list", false)}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": op("get", false), "put": op("put", true), "patch": op("patch", true), "delete": op("delete", false)}),
        );
        if r.info.has_status {
            paths.insert(
                format!("{base}/{{name}}/status"),
                json!({"get": op("get", false), "put": op("put", true), "patch": op("patch", true)}),
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Loom", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
