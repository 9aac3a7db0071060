//! Which kinds the server serves, found through discovery, and how the user names them.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use api_types::ResourceInfo;
use client::Client;
use client::client::Method;
use serde_json::Value;

/// Every kind the server serves.
pub(crate) struct Kinds {
    all: Vec<ResourceInfo>,
    /// Every `GROUP/VERSION/PLURAL/SUBRESOURCE` served (`loom.dev/v1/services/scale`).
    subresources: BTreeSet<String>,
}

impl Kinds {
    /// Asks the server (`/apis`, then each group version).
    pub async fn discover(client: &Client) -> anyhow::Result<Self> {
        let groups: Value = client
            .request(Method::GET, "/apis", None)
            .await
            .with_context(|| {
                format!("cannot reach the API server at {}", client.config().server)
            })?;
        let mut all = Vec::new();
        let mut subresources = BTreeSet::new();
        for group in groups["groups"].as_array().into_iter().flatten() {
            let name = group["name"].as_str().unwrap_or_default();
            for version in group["versions"].as_array().into_iter().flatten() {
                let version = version["version"].as_str().unwrap_or_default();
                let list: Value = client
                    .request(Method::GET, &format!("/apis/{name}/{version}"), None)
                    .await?;
                let resources = list["resources"].as_array().cloned().unwrap_or_default();
                for r in &resources {
                    let plural = r["name"].as_str().unwrap_or_default();
                    if plural.contains('/') {
                        subresources.insert(format!("{name}/{version}/{plural}"));
                        continue;
                    }
                    let kind = r["kind"].as_str().unwrap_or_default().to_owned();
                    all.push(ResourceInfo {
                        group: name.to_owned(),
                        version: version.to_owned(),
                        list_kind: format!("{kind}List"),
                        kind,
                        plural: plural.to_owned(),
                        singular: r["singularName"].as_str().unwrap_or_default().to_owned(),
                        short_names: r["shortNames"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect(),
                        namespaced: r["namespaced"].as_bool().unwrap_or(false),
                        has_status: resources
                            .iter()
                            .any(|s| s["name"].as_str() == Some(&format!("{plural}/status"))),
                    });
                }
            }
        }
        Ok(Kinds { all, subresources })
    }

    /// A kind by what a user types: `tasks`, `task`, `t`, `Task`, `tasks.loom.dev`.
    pub fn by_name(&self, name: &str) -> anyhow::Result<&ResourceInfo> {
        let (short, group) = match name.split_once('.') {
            Some((short, group)) => (short, Some(group)),
            None => (name, None),
        };
        let found = self.all.iter().find(|r| {
            group.is_none_or(|g| g == r.group)
                && (r.plural == short
                    || r.singular == short
                    || r.kind.eq_ignore_ascii_case(short)
                    || r.short_names.iter().any(|s| s == short))
        });
        match found {
            Some(r) => Ok(r),
            None => bail!(
                "the server does not serve a kind called {name:?} (known: {})",
                self.all
                    .iter()
                    .map(|r| r.plural.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Whether the server serves `sub` below objects of `kind` (`scale`).
    pub fn has_subresource(&self, kind: &ResourceInfo, sub: &str) -> bool {
        self.subresources.contains(&format!(
            "{}/{}/{}/{sub}",
            kind.group, kind.version, kind.plural
        ))
    }

    /// The kind of a manifest: by `apiVersion` and `kind`.
    pub fn by_type(&self, api_version: &str, kind: &str) -> Option<&ResourceInfo> {
        self.all
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }
}

/// `job.loom.dev`: how output names a kind.
pub(crate) fn display_name(info: &ResourceInfo) -> String {
    format!("{}.{}", info.kind.to_lowercase(), info.group)
}
