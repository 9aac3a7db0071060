//! Discovery as real clients walk it: the legacy documents (`/api`, `/api/v1`,
//! `/apis`, each group version), which kube-rs's `Discovery::run` reads, and
//! the aggregated ones (`/api` and `/apis` in `APIGroupDiscoveryList` form),
//! which kubectl and `Discovery::run_aggregated` ask for first; both forms name
//! the same resources, and real kubectl's `api-versions` and `api-resources`
//! list the core group and Loom's.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use loom_testing::TestServer;
use serde_json::{Value, json};

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// What kubectl 1.32 sends for discovery: aggregated first, legacy after it.
const KUBECTL_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

async fn get(server: &TestServer, path: &str, accept: &str) -> (u16, String, Value) {
    let response = server
        .http()
        .get(format!("{}{path}", server.url))
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = response.json().await.unwrap();
    (code, content_type, body)
}

/// `(groupVersion, resource name)` of every resource a legacy list names
/// (subresources as `plural/sub`), and each top-level resource's kind and scope.
type Named = BTreeSet<(String, String)>;

fn legacy_names(list: &Value, group_version: &str, into: &mut Named) {
    for r in list["resources"].as_array().unwrap() {
        into.insert((
            group_version.to_owned(),
            r["name"].as_str().unwrap().to_owned(),
        ));
    }
}

fn aggregated_names(item: &Value, into: &mut Named) {
    let group = item["metadata"]["name"].as_str().unwrap_or("");
    for version in item["versions"].as_array().unwrap() {
        let name = version["version"].as_str().unwrap();
        let gv = if group.is_empty() {
            name.to_owned()
        } else {
            format!("{group}/{name}")
        };
        let resources = version["resources"].as_array().unwrap();
        for r in resources {
            let plural = r["resource"].as_str().unwrap();
            assert!(
                r["responseKind"]["kind"].is_string(),
                "{gv} {plural}: {r:#}"
            );
            assert!(
                r["scope"] == "Namespaced" || r["scope"] == "Cluster",
                "{gv} {plural}: {r:#}"
            );
            into.insert((gv.clone(), plural.to_owned()));
            for sub in r["subresources"].as_array().into_iter().flatten() {
                assert!(sub["verbs"].as_array().is_some_and(|v| !v.is_empty()));
                into.insert((
                    gv.clone(),
                    format!("{plural}/{}", sub["subresource"].as_str().unwrap()),
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_aggregated_discovery_name_the_same_resources() {
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();

    // The core group: /api lists v1 (kube-rs's Discovery::run failed with
    // "Empty Api Group" while it listed none), /api/v1 its kinds.
    let (code, _, core) = get(&server, "/api", "application/json").await;
    assert_eq!(code, 200);
    assert_eq!(core["kind"], "APIVersions");
    assert_eq!(core["versions"], json!(["v1"]));
    let (code, _, v1) = get(&server, "/api/v1", "application/json").await;
    assert_eq!(code, 200, "{v1:#}");
    assert_eq!(
        (&v1["kind"], &v1["groupVersion"]),
        (&json!("APIResourceList"), &json!("v1"))
    );
    let find = |list: &Value, name: &str| -> Value {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not in {list:#}"))
    };
    let namespaces = find(&v1, "namespaces");
    assert_eq!(
        (&namespaces["kind"], &namespaces["namespaced"]),
        (&json!("Namespace"), &json!(false))
    );
    let accounts = find(&v1, "serviceaccounts");
    assert_eq!(
        (&accounts["kind"], &accounts["namespaced"]),
        (&json!("ServiceAccount"), &json!(true))
    );
    assert_eq!(
        find(&v1, "serviceaccounts/token")["verbs"],
        json!(["create"])
    );

    // The legacy walk, as kube-rs's Discovery::run does it: every group of
    // /apis has a preferred version and every version a non-empty list.
    let mut legacy = Named::new();
    legacy_names(&v1, "v1", &mut legacy);
    let (code, content_type, groups) = get(&server, "/apis", "application/json").await;
    assert_eq!((code, content_type.as_str()), (200, "application/json"));
    assert_eq!(groups["kind"], "APIGroupList");
    for group in groups["groups"].as_array().unwrap() {
        let name = group["name"].as_str().unwrap();
        assert!(
            !name.is_empty(),
            "the core group is not under /apis: {groups:#}"
        );
        let versions = group["versions"].as_array().unwrap();
        assert!(!versions.is_empty(), "{name} lists no version");
        assert!(versions.contains(&group["preferredVersion"]), "{group:#}");
        for version in versions {
            let gv = version["groupVersion"].as_str().unwrap();
            let (code, _, list) = get(&server, &format!("/apis/{gv}"), "application/json").await;
            assert_eq!(code, 200, "/apis/{gv}: {list:#}");
            assert_eq!(
                (&list["kind"], &list["groupVersion"]),
                (&json!("APIResourceList"), &json!(gv))
            );
            assert!(
                list["resources"].as_array().is_some_and(|r| !r.is_empty()),
                "/apis/{gv} lists nothing"
            );
            legacy_names(&list, gv, &mut legacy);
        }
    }

    // The aggregated core group: one nameless item holding v1.
    let (code, content_type, core) = get(&server, "/api", KUBECTL_ACCEPT).await;
    assert_eq!((code, content_type.as_str()), (200, AGGREGATED), "{core:#}");
    assert_eq!(core["kind"], "APIGroupDiscoveryList");
    let items = core["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{core:#}");
    assert_eq!(items[0]["metadata"]["name"].as_str().unwrap_or(""), "");
    assert_eq!(items[0]["versions"][0]["version"], "v1");
    let mut aggregated = Named::new();
    aggregated_names(&items[0], &mut aggregated);
    let resources = items[0]["versions"][0]["resources"].as_array().unwrap();
    let scope = |plural: &str| {
        resources
            .iter()
            .find(|r| r["resource"] == plural)
            .map(|r| r["scope"].clone())
    };
    assert_eq!(scope("namespaces"), Some(json!("Cluster")));
    assert_eq!(scope("serviceaccounts"), Some(json!("Namespaced")));

    // The aggregated groups: Loom's first, none nameless, and the same
    // resources and subresources as the legacy walk found.
    let (code, content_type, apis) = get(&server, "/apis", KUBECTL_ACCEPT).await;
    assert_eq!((code, content_type.as_str()), (200, AGGREGATED));
    let items = apis["items"].as_array().unwrap();
    assert_eq!(items[0]["metadata"]["name"], "loom.dev");
    for item in items {
        let name = item["metadata"]["name"].as_str().unwrap_or("");
        assert!(!name.is_empty(), "a nameless group under /apis: {item:#}");
        assert!(
            item["versions"].as_array().is_some_and(|v| !v.is_empty()),
            "{name} lists no version"
        );
        aggregated_names(item, &mut aggregated);
    }
    assert_eq!(
        legacy.difference(&aggregated).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in the legacy documents only"
    );
    assert_eq!(
        aggregated.difference(&legacy).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in the aggregated documents only"
    );
    for expected in [
        ("v1", "namespaces"),
        ("loom.dev/v1", "tasks"),
        ("loom.dev/v1", "tasks/status"),
        ("loom.dev/v1", "jobs"),
    ] {
        assert!(
            legacy.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} is not discovered"
        );
    }
}

/// The `kubectl` on `PATH`, if there is one.
fn kubectl() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_api_versions_and_resources() {
    let Some(kubectl) = kubectl() else {
        println!(
            "kubectl_lists_api_versions_and_resources: skipped because kubectl is absent (not on PATH)"
        );
        return;
    };
    let server = TestServer::embedded(apiserver::Config::default())
        .await
        .unwrap();
    let kubeconfig = server.kubeconfig().unwrap();
    let home = tempfile::Builder::new()
        .prefix("loom-kubectl-")
        .tempdir()
        .unwrap();
    let run = async |args: &[&str]| {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&kubectl)
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .env("KUBECACHEDIR", home.path().join("cache"))
                .env("HOME", home.path())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 30 s"))
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "kubectl {args:?}: {stderr}");
        // A discovery error is printed as a warning with exit code 0.
        assert!(
            !stderr.contains("unable to retrieve") && !stderr.contains("couldn't get"),
            "kubectl {args:?}: {stderr}"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let versions = run(&["api-versions"]).await;
    let versions: Vec<&str> = versions.lines().collect();
    for expected in ["v1", "loom.dev/v1", "authentication.k8s.io/v1"] {
        assert!(versions.contains(&expected), "{expected} in {versions:?}");
    }
    let resources = run(&["api-resources", "--no-headers"]).await;
    let rows: Vec<Vec<&str>> = resources
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // NAME [SHORTNAMES] APIVERSION NAMESPACED KIND: the last three cells.
    let row = |name: &str, api_version: &str| {
        rows.iter()
            .find(|r| r[0] == name && r.len() >= 4 && r[r.len() - 3] == api_version)
            .map(|r| r[r.len() - 3..].join(" "))
            .unwrap_or_else(|| panic!("{name} {api_version} not in:\n{resources}"))
    };
    assert_eq!(row("namespaces", "v1"), "v1 false Namespace");
    assert_eq!(row("serviceaccounts", "v1"), "v1 true ServiceAccount");
    assert_eq!(row("tasks", "loom.dev/v1"), "loom.dev/v1 true Task");
    assert_eq!(row("jobs", "loom.dev/v1"), "loom.dev/v1 true Job");
}
