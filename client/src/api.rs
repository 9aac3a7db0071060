//! `Api<K>`: the verbs on one kind, typed for built-in kinds and dynamic for custom ones.

use std::fmt::Debug;
use std::marker::PhantomData;

use api_types::{ListMeta, ObjectMeta, Resource, ResourceInfo, WatchEvent};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{Body, Client};
use crate::error::{Error, Result};

/// Anything the API serves: it has metadata and is JSON.
pub trait Object: Clone + Debug + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;
    /// Its metadata, to change.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

impl<K: Resource> Object for K {
    fn meta(&self) -> &ObjectMeta {
        Resource::meta(self)
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        Resource::meta_mut(self)
    }
}

/// An object of a kind known only at run time (a custom kind).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicObject {
    /// `group/version`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Everything else (`spec`, `status`, …).
    #[serde(flatten)]
    pub data: serde_json::Map<String, Value>,
}

impl Object for DynamicObject {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A list and its metadata.
#[derive(Clone, Debug, Deserialize)]
pub struct ObjectList<K> {
    /// `resourceVersion` and `continue`.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The objects.
    #[serde(default = "Vec::new")]
    pub items: Vec<K>,
}

/// Options of a list: its query parameters, as the API server reads them.
pub type ListParams = api_types::options::ListOptions;

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct PostParams {
    /// Check, do not write.
    pub dry_run: bool,
    /// Who writes (`fieldManager`).
    pub field_manager: Option<String>,
}

impl PostParams {
    fn query(&self, query: &mut Query) {
        if self.dry_run {
            query.push("dryRun", "All");
        }
        query.opt("fieldManager", self.field_manager.as_deref());
    }
}

/// A patch.
#[derive(Clone, Debug)]
pub enum Patch<P: Serialize> {
    /// RFC 7386 merge patch.
    Merge(P),
    /// RFC 6902 JSON patch.
    Json(json_patch::Patch),
    /// Server-side apply of a (partial) object; needs a field manager.
    Apply(P),
}

/// Options of a patch.
#[derive(Clone, Debug, Default)]
pub struct PatchParams {
    /// Who patches (`fieldManager`; required for apply).
    pub field_manager: Option<String>,
    /// Apply: take over fields other managers own.
    pub force: bool,
    /// Check, do not write.
    pub dry_run: bool,
}

impl PatchParams {
    /// Server-side apply as `manager`.
    pub fn apply(manager: &str) -> Self {
        PatchParams {
            field_manager: Some(manager.to_owned()),
            ..Default::default()
        }
    }

    /// Take over conflicting fields.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }
}

/// What a client asks of a delete: the API's own
/// [`DeleteOptions`](api_types::options::DeleteOptions), sent as the body.
pub type DeleteParams = api_types::options::DeleteOptions;

/// Preconditions of a delete.
pub use api_types::options::Preconditions;

/// Options of a watch: its query parameters besides where it starts.
pub type WatchParams = api_types::options::WatchOptions;

/// Builds a query string.
#[derive(Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn push(&mut self, key: &str, value: &str) {
        self.0.push((key.to_owned(), value.to_owned()));
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            self.push(key, value);
        }
    }

    fn extend(&mut self, pairs: Vec<(&'static str, String)>) {
        self.0.extend(
            pairs
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
    }

    fn render(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("?{}", pairs.join("&"))
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The verbs on one kind, in one namespace or all.
#[derive(Clone, Debug)]
pub struct Api<K> {
    client: Client,
    resource: ResourceInfo,
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Resource> Api<K> {
    /// Every namespace (or a cluster-scoped kind).
    pub fn all(client: Client) -> Self {
        Api::all_with(client, &K::info())
    }

    /// One namespace.
    pub fn namespaced(client: Client, namespace: &str) -> Self {
        Api::namespaced_with(client, namespace, &K::info())
    }

    /// The client's default namespace.
    pub fn default_namespaced(client: Client) -> Self {
        let namespace = client.default_namespace().to_owned();
        Api::namespaced(client, &namespace)
    }
}

impl<K: Object> Api<K> {
    /// Every namespace of a kind described at run time.
    pub fn all_with(client: Client, resource: &ResourceInfo) -> Self {
        Api {
            client,
            resource: resource.clone(),
            namespace: None,
            _kind: PhantomData,
        }
    }

    /// One namespace of a kind described at run time.
    pub fn namespaced_with(client: Client, namespace: &str, resource: &ResourceInfo) -> Self {
        Api {
            client,
            resource: resource.clone(),
            namespace: resource.namespaced.then(|| namespace.to_owned()),
            _kind: PhantomData,
        }
    }

    /// The kind's facts.
    pub fn resource(&self) -> &ResourceInfo {
        &self.resource
    }

    /// The namespace, if the Api is bound to one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same kind in another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Self {
        Api::namespaced_with(self.client.clone(), namespace, &self.resource)
    }

    /// The path of the collection (`/apis/GROUP/VERSION/[namespaces/NS/]PLURAL`).
    pub fn collection(&self) -> String {
        let r = &self.resource;
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        match &self.namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", r.plural),
            None => format!("{base}/{}", r.plural),
        }
    }

    /// The path of one object.
    pub fn item(&self, name: &str) -> String {
        format!("{}/{name}", self.collection())
    }

    fn json_body<T: Serialize>(value: &T) -> Result<Body> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(Body {
            content_type: "application/json",
            bytes: Bytes::from(bytes),
        })
    }

    /// One object.
    pub async fn get(&self, name: &str) -> Result<K> {
        self.client
            .request(Method::GET, &self.item(name), None)
            .await
    }

    /// One object, or `None` if it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One page of objects.
    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>> {
        let mut query = Query::default();
        query.extend(params.query_pairs());
        self.client
            .request(
                Method::GET,
                &format!("{}{}", self.collection(), query.render()),
                None,
            )
            .await
    }

    /// Every object, page by page, and the list's resourceVersion.
    pub async fn list_all(&self, params: &ListParams) -> Result<(Vec<K>, String)> {
        let mut params = params.clone();
        let mut items = Vec::new();
        loop {
            let page = self.list(&params).await?;
            items.extend(page.items);
            match Some(page.metadata.continue_).filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => return Ok((items, page.metadata.resource_version)),
            }
        }
    }

    /// Creates an object.
    pub async fn create(&self, params: &PostParams, object: &K) -> Result<K> {
        let mut query = Query::default();
        params.query(&mut query);
        let path = format!("{}{}", self.collection(), query.render());
        self.client
            .request(Method::POST, &path, Some(Self::json_body(object)?))
            .await
    }

    /// Replaces an object (its resourceVersion, if set, must be current).
    pub async fn replace(&self, name: &str, params: &PostParams, object: &K) -> Result<K> {
        let mut query = Query::default();
        params.query(&mut query);
        let path = format!("{}{}", self.item(name), query.render());
        self.client
            .request(Method::PUT, &path, Some(Self::json_body(object)?))
            .await
    }

    /// Replaces an object's status.
    pub async fn replace_status(&self, name: &str, params: &PostParams, object: &K) -> Result<K> {
        let mut query = Query::default();
        params.query(&mut query);
        let path = format!("{}/status{}", self.item(name), query.render());
        self.client
            .request(Method::PUT, &path, Some(Self::json_body(object)?))
            .await
    }

    /// Posts `body` to the subresource `sub` of object `name` (e.g. a task's
    /// `binding`), as kube-rs's `create_subresource`; the answer is decoded as `R`.
    pub async fn create_subresource<B: Serialize, R: DeserializeOwned>(
        &self,
        sub: &str,
        name: &str,
        params: &PostParams,
        body: &B,
    ) -> Result<R> {
        let mut query = Query::default();
        params.query(&mut query);
        let path = format!("{}/{sub}{}", self.item(name), query.render());
        self.client
            .request(Method::POST, &path, Some(Self::json_body(body)?))
            .await
    }

    async fn patch_at<P: Serialize>(
        &self,
        path: &str,
        params: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<K> {
        let mut query = Query::default();
        query.opt("fieldManager", params.field_manager.as_deref());
        if params.force {
            query.push("force", "true");
        }
        if params.dry_run {
            query.push("dryRun", "All");
        }
        let (content_type, bytes) = match patch {
            Patch::Merge(p) => ("application/merge-patch+json", serde_json::to_vec(p)),
            Patch::Json(p) => ("application/json-patch+json", serde_json::to_vec(p)),
            Patch::Apply(p) => ("application/apply-patch+yaml", serde_json::to_vec(p)),
        };
        let bytes = bytes.map_err(|e| Error::Decode(e.to_string()))?;
        self.client
            .request(
                Method::PATCH,
                &format!("{path}{}", query.render()),
                Some(Body {
                    content_type,
                    bytes: Bytes::from(bytes),
                }),
            )
            .await
    }

    /// Patches an object.
    pub async fn patch<P: Serialize>(
        &self,
        name: &str,
        params: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<K> {
        self.patch_at(&self.item(name), params, patch).await
    }

    /// Patches an object's status.
    pub async fn patch_status<P: Serialize>(
        &self,
        name: &str,
        params: &PatchParams,
        patch: &Patch<P>,
    ) -> Result<K> {
        self.patch_at(&format!("{}/status", self.item(name)), params, patch)
            .await
    }

    /// Deletes an object; with finalizers it is only marked (and returned).
    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<K> {
        self.client
            .request(
                Method::DELETE,
                &self.item(name),
                Some(Self::json_body(params)?),
            )
            .await
    }

    /// Deletes every object a list selects.
    pub async fn delete_collection(&self, params: &ListParams) -> Result<ObjectList<K>> {
        let mut query = Query::default();
        query.extend(params.query_pairs());
        self.client
            .request(
                Method::DELETE,
                &format!("{}{}", self.collection(), query.render()),
                None,
            )
            .await
    }

    /// Watches changes after `resource_version` (all current objects first when `"0"` or empty).
    pub async fn watch(
        &self,
        params: &WatchParams,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>>> + Send + 'static + use<K>> {
        let mut query = Query::default();
        query.extend(params.query_pairs(resource_version));
        let bytes = self
            .client
            .stream(&format!("{}{}", self.collection(), query.render()))
            .await?;
        Ok(lines(bytes).map(|line| {
            let line = line?;
            serde_json::from_slice::<WatchEvent<K>>(&line)
                .map_err(|e| Error::Decode(format!("watch event: {e}")))
        }))
    }
}

impl<K: Object> Api<K> {
    /// The log of an object that has one (a task), as it arrives; with `follow`
    /// the stream stays open for new output.
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        tail_lines: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static + use<K>> {
        let mut query = Query::default();
        if follow {
            query.push("follow", "true");
        }
        query.opt("tailLines", tail_lines.map(|t| t.to_string()).as_deref());
        self.client
            .stream(&format!("{}/log{}", self.item(name), query.render()))
            .await
    }
}

/// Splits a byte stream into lines (watch events are one JSON object a line).
pub fn lines<S>(bytes: S) -> impl Stream<Item = Result<Bytes>> + Send + 'static
where
    S: Stream<Item = Result<Bytes>> + Send + 'static,
{
    futures::stream::unfold(
        (Box::pin(bytes), bytes::BytesMut::new(), false),
        |(mut bytes, mut buffer, mut done)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line = buffer.split_to(end + 1).freeze();
                    let line = line.slice(..line.len() - 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((Ok(line), (bytes, buffer, done)));
                }
                if done {
                    if buffer.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let rest = buffer.split().freeze();
                    return Some((Ok(rest), (bytes, buffer, done)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(error)) => {
                        done = true;
                        buffer.clear();
                        return Some((Err(error), (bytes, buffer, done)));
                    }
                    None => done = true,
                }
            }
        },
    )
}

/// Finds a kind the API serves, by group, version and kind or plural, through discovery.
pub async fn discover(
    client: &Client,
    group: &str,
    version: &str,
    name: &str,
) -> Result<ResourceInfo> {
    #[derive(Deserialize)]
    struct ResourceList {
        resources: Vec<Entry>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        name: String,
        #[serde(default)]
        singular_name: String,
        namespaced: bool,
        kind: String,
        #[serde(default)]
        short_names: Vec<String>,
    }
    let list: ResourceList = client
        .request(Method::GET, &format!("/apis/{group}/{version}"), None)
        .await?;
    let entry = list
        .resources
        .iter()
        .filter(|r| !r.name.contains('/'))
        .find(|r| {
            r.name == name
                || r.kind == name
                || r.singular_name == name
                || r.short_names.iter().any(|s| s == name)
        })
        .ok_or_else(|| {
            let mut status =
                api_types::Status::not_found(&api_types::GroupResource::new(group, name), "");
            status.message = format!("the server does not serve {name} in {group}/{version}");
            Error::Api(Box::new(status))
        })?;
    let status_name = format!("{}/status", entry.name);
    Ok(ResourceInfo {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: entry.kind.clone(),
        plural: entry.name.clone(),
        singular: entry.singular_name.clone(),
        short_names: entry.short_names.clone(),
        list_kind: format!("{}List", entry.kind),
        namespaced: entry.namespaced,
        has_status: list.resources.iter().any(|r| r.name == status_name),
    })
}
