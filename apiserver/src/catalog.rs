//! The resources the API serves: the built-in kinds and the custom kinds
//! ResourceDefinitions add, each with its REST storage (strategy, hooks,
//! subresources), schema and watch cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use api_types::{
    Event, GroupResource, Job, Lease, Namespace, Node, Resource, ResourceDefinition, ResourceInfo,
    Service, ServiceAccount, Task,
};
use schemars::JsonSchema;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{self, Hooks, Rest, Strategy, Subresource, custom::Custom};
use crate::schema::{Dialect, InvalidSchema, SchemaValidator};
use crate::store::Store;
use crate::watch_cache::{EventType, Filter, WatchCache, WatchItem};

/// One resource the API serves.
pub struct ServedResource {
    /// Its names and scope.
    pub info: ResourceInfo,
    /// What is special about it.
    pub strategy: Arc<dyn Strategy>,
    /// What happens around its writes.
    pub hooks: Arc<dyn Hooks>,
    /// Its subresources besides `status`, in discovery order.
    pub subresources: Vec<Arc<dyn Subresource>>,
    /// Its schema, for validation.
    pub schema: Arc<SchemaValidator>,
    /// Its OpenAPI v3 schema, for `/openapi/v3`.
    pub openapi: Value,
    /// Its watch cache.
    pub cache: Arc<WatchCache>,
    /// Built in, or added by a ResourceDefinition (named here).
    pub definition: Option<String>,
    /// The group of its store keys: `info.group`, but `loom.dev` for a
    /// built-in kind served in the core group (one storage for both paths).
    pub storage_group: String,
    /// The `apiVersion` its objects are stored with; responses carry
    /// `info.api_version()`, the version of the path used.
    pub stored_api_version: String,
}

impl std::fmt::Debug for ServedResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedResource")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ServedResource {
    /// The store prefix of all its objects, or of those in one namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.info.namespaced => {
                format!("{}/{}/{ns}/", self.storage_group, self.info.plural)
            }
            _ => format!("{}/{}/", self.storage_group, self.info.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.info.namespaced {
            format!(
                "{}/{}/{namespace}/{name}",
                self.storage_group, self.info.plural
            )
        } else {
            format!("{}/{}/{name}", self.storage_group, self.info.plural)
        }
    }

    /// Whether its objects are stored at another `apiVersion` than its path's,
    /// so responses rewrite theirs.
    pub fn presents_other_version(&self) -> bool {
        self.info.api_version() != self.stored_api_version
    }

    /// `plural.group`, as errors name it.
    pub fn group_resource(&self) -> GroupResource {
        self.info.group_resource()
    }

    /// Whether it is the built-in kind `K`, at any path it is served (a
    /// custom kind of the same name is not).
    pub fn is<K: Resource>(&self) -> bool {
        self.definition.is_none() && self.info.plural == K::PLURAL && self.info.kind == K::KIND
    }

    /// Its subresource at `{plural}/{name}/{sub}`, if it has one (not `status`).
    pub fn subresource(&self, name: &str) -> Option<&Arc<dyn Subresource>> {
        self.subresources.iter().find(|s| s.name() == name)
    }

    /// Field selectors it accepts.
    pub fn selectable_fields(&self) -> Vec<String> {
        let mut fields = vec!["metadata.name".to_owned(), "metadata.namespace".to_owned()];
        fields.extend(self.strategy.selectable_fields());
        fields
    }
}

/// How caches behave.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Events kept per resource.
    pub capacity: usize,
    /// How often watchers get bookmarks.
    pub bookmark_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: crate::watch_cache::DEFAULT_CAPACITY,
            bookmark_interval: Duration::from_secs(10),
        }
    }
}

type ResourceKey = (String, String, String);

/// Why a definition's kind cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The schema of one of its served versions does not compile.
    #[error("version {version}: {source}")]
    Schema {
        /// The version.
        version: String,
        /// What is wrong with its schema.
        #[source]
        source: InvalidSchema,
    },
}

/// Every resource served, by group, version and plural.
pub struct Catalog {
    store: Arc<dyn Store>,
    cancel: CancellationToken,
    config: CacheConfig,
    served: RwLock<BTreeMap<ResourceKey, Arc<ServedResource>>>,
    /// Caches by (group, plural): the versions of a kind share one.
    caches: Mutex<HashMap<(String, String), Arc<WatchCache>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// The built-in kinds over `store`.
    pub fn new(store: Arc<dyn Store>, config: CacheConfig, cancel: CancellationToken) -> Arc<Self> {
        let catalog = Arc::new(Catalog {
            store,
            cancel,
            config,
            served: RwLock::new(BTreeMap::new()),
            caches: Mutex::new(HashMap::new()),
        });
        catalog.builtin::<Task>(registry::task::rest());
        catalog.builtin::<Job>(Rest::new(registry::job::strategy()));
        catalog.builtin::<Service>(
            registry::service::rest(crate::server::default_service_cidr())
                .subresource(registry::scale::ServiceScale),
        );
        catalog.builtin::<api_types::Endpoints>(Rest::new(registry::endpoints::strategy()));
        catalog.builtin::<Node>(Rest::new(registry::node::strategy()));
        catalog.builtin::<Namespace>(registry::namespace::rest());
        // kubectl creates namespaces and service accounts in the core group.
        catalog.builtin_at::<Namespace>(registry::namespace::rest(), "", "v1");
        catalog.builtin::<ServiceAccount>(registry::service_account::rest());
        catalog.builtin_at::<ServiceAccount>(
            registry::service_account::rest(),
            api_types::GROUP,
            api_types::VERSION,
        );
        catalog.builtin::<Event>(Rest::new(registry::event::strategy()));
        catalog.builtin::<Lease>(Rest::new(registry::lease::strategy()));
        catalog.builtin::<ResourceDefinition>(registry::resource_definition::rest());
        catalog.builtin::<api_types::Role>(crate::authz::registry::role());
        catalog.builtin::<api_types::ClusterRole>(crate::authz::registry::cluster_role());
        catalog.builtin::<api_types::RoleBinding>(crate::authz::registry::role_binding());
        catalog.builtin::<api_types::ClusterRoleBinding>(
            crate::authz::registry::cluster_role_binding(),
        );
        catalog.builtin::<api_types::CertificateSigningRequest>(crate::certificates::rest());
        catalog.builtin::<api_types::BootstrapToken>(crate::certificates::bootstrap_tokens());
        catalog
    }

    /// Serves the built-in kind `K` with `rest` (again, to replace how it was served).
    pub(crate) fn builtin<K: Resource + JsonSchema>(&self, rest: Rest) {
        self.builtin_at::<K>(rest, K::GROUP, K::VERSION);
    }

    /// Serves the built-in kind `K` at `group`/`version` too, over its one
    /// storage (keys under `loom.dev`, objects at `K`'s own apiVersion).
    fn builtin_at<K: Resource + JsonSchema>(&self, rest: Rest, group: &str, version: &str) {
        let mut info = K::info();
        info.group = group.to_owned();
        info.version = version.to_owned();
        let storage_group = if K::GROUP.is_empty() {
            api_types::GROUP
        } else {
            K::GROUP
        };
        let schema =
            match SchemaValidator::new(api_types::schema::json_schema::<K>(), Dialect::Draft2020) {
                Ok(schema) => schema,
                Err(error) => {
                    // The schemas are derived from our own types; this is a bug, loudly.
                    panic!("the schema of {} does not compile: {error}", K::KIND);
                }
            };
        let cache = self.cache_for(&info, storage_group, rest.strategy.selectable_fields());
        self.insert(ServedResource {
            info,
            strategy: rest.strategy,
            hooks: rest.hooks,
            subresources: rest.subresources,
            schema: Arc::new(schema),
            openapi: api_types::schema::openapi_v3_schema::<K>(),
            cache,
            definition: None,
            storage_group: storage_group.to_owned(),
            stored_api_version: K::api_version(),
        });
    }

    fn cache_for(
        &self,
        info: &ResourceInfo,
        storage_group: &str,
        selectable: Vec<String>,
    ) -> Arc<WatchCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        caches
            .entry((storage_group.to_owned(), info.plural.clone()))
            .or_insert_with(|| {
                WatchCache::start(
                    self.store.clone(),
                    format!("{storage_group}/{}/", info.plural),
                    selectable,
                    self.config.capacity,
                    self.config.bookmark_interval,
                    self.cancel.child_token(),
                )
            })
            .clone()
    }

    fn insert(&self, resource: ServedResource) {
        let key = (
            resource.info.group.clone(),
            resource.info.version.clone(),
            resource.info.plural.clone(),
        );
        self.served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::new(resource));
    }

    /// The resource at `/apis/{group}/{version}/{plural}`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ServedResource>> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// A built-in resource.
    pub fn builtin_resource<K: Resource>(&self) -> Arc<ServedResource> {
        match self.lookup(K::GROUP, K::VERSION, K::PLURAL) {
            Some(resource) => resource,
            None => panic!("{} is always served", K::PLURAL),
        }
    }

    /// Every resource served.
    pub fn resources(&self) -> Vec<Arc<ServedResource>> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The named groups served (`/apis`; the core group is `/api`) and their versions.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for resource in self.resources() {
            if resource.info.group.is_empty() {
                continue;
            }
            let versions = groups.entry(resource.info.group.clone()).or_default();
            if !versions.contains(&resource.info.version) {
                versions.push(resource.info.version.clone());
            }
        }
        groups
    }

    /// Serves the kind a definition describes (every served version); stops
    /// serving versions it no longer serves.
    pub fn apply_definition(&self, definition: &ResourceDefinition) -> Result<(), Error> {
        let name = definition.metadata.name.clone();
        let mut served = Vec::new();
        for version in definition.spec.versions.iter().filter(|v| v.served) {
            let Some(info) = definition.info_for_version(&version.name) else {
                continue;
            };
            let schema = custom_schema(version.schema.as_ref().map(|s| &s.open_api_v3_schema));
            let validator =
                SchemaValidator::new(schema.clone(), Dialect::OpenApiV3).map_err(|source| {
                    Error::Schema {
                        version: version.name.clone(),
                        source,
                    }
                })?;
            served.push((info, validator, schema));
        }
        self.remove_definition_versions(&name, |version| {
            !served.iter().any(|(info, _, _)| info.version == version)
        });
        for (info, validator, schema) in served {
            let mut openapi = schema;
            if let Some(object) = openapi.as_object_mut() {
                object.insert(
                    "x-kubernetes-group-version-kind".to_owned(),
                    json!([{"group": info.group, "version": info.version, "kind": info.kind}]),
                );
            }
            let cache = self.cache_for(&info, &info.group, Vec::new());
            let rest = Rest::new(Custom::new(info.namespaced));
            self.insert(ServedResource {
                strategy: rest.strategy,
                hooks: rest.hooks,
                subresources: rest.subresources,
                storage_group: info.group.clone(),
                stored_api_version: info.api_version(),
                info,
                schema: Arc::new(validator),
                openapi,
                cache,
                definition: Some(name.clone()),
            });
        }
        Ok(())
    }

    /// Stops serving every version a definition added.
    pub fn remove_definition(&self, name: &str) {
        self.remove_definition_versions(name, |_| true);
    }

    fn remove_definition_versions(&self, name: &str, remove: impl Fn(&str) -> bool) {
        let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<ResourceKey> = served
            .iter()
            .filter(|(_, r)| r.definition.as_deref() == Some(name) && remove(&r.info.version))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(resource) = served.remove(&key) {
                info!(group = %key.0, version = %key.1, plural = %key.2, "stopped serving a custom kind");
                let still_used = served
                    .values()
                    .any(|r| r.info.group == key.0 && r.info.plural == key.2);
                if !still_used {
                    resource.cache.stop();
                    self.caches
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(key.0.clone(), key.2.clone()));
                }
            }
        }
    }

    /// Keeps the custom kinds in step with the stored ResourceDefinitions, also
    /// those other API servers write.
    pub fn follow_definitions(self: &Arc<Self>) {
        let catalog = self.clone();
        tokio::spawn(async move {
            loop {
                let cache = catalog
                    .builtin_resource::<ResourceDefinition>()
                    .cache
                    .clone();
                let mut watch = match cache.watch(None, Filter::default()).await {
                    Ok(watch) => watch,
                    Err(_) if catalog.cancel.is_cancelled() => return,
                    Err(error) => {
                        warn!(%error, "cannot watch resource definitions");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let mut items: std::collections::VecDeque<WatchItem> =
                    watch.initial.drain(..).collect();
                loop {
                    let item = match items.pop_front() {
                        Some(item) => item,
                        None => tokio::select! {
                            _ = catalog.cancel.cancelled() => return,
                            item = watch.live.recv() => match item {
                                Some(item) => item,
                                None => break,
                            },
                        },
                    };
                    let WatchItem::Event(kind, object) = item else {
                        continue;
                    };
                    let definition: ResourceDefinition = match serde_json::from_slice(&object.json)
                    {
                        Ok(definition) => definition,
                        Err(error) => {
                            warn!(%error, name = %object.name, "unreadable resource definition");
                            continue;
                        }
                    };
                    let result = match kind {
                        EventType::Deleted => {
                            catalog.remove_definition(&definition.metadata.name);
                            Ok(())
                        }
                        _ => catalog.apply_definition(&definition),
                    };
                    if let Err(error) = result {
                        warn!(%error, name = %definition.metadata.name, "cannot serve resource definition");
                    }
                }
            }
        });
    }
}

/// The validation schema of a custom kind: its own, plus the fields every object has.
fn custom_schema(schema: Option<&Value>) -> Value {
    let mut schema = match schema {
        Some(schema) if schema.is_object() => schema.clone(),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    if let Some(object) = schema.as_object_mut() {
        let properties = object.entry("properties").or_insert_with(|| json!({}));
        if let Some(properties) = properties.as_object_mut() {
            properties.insert("apiVersion".to_owned(), json!({"type": "string"}));
            properties.insert("kind".to_owned(), json!({"type": "string"}));
            properties.insert(
                "metadata".to_owned(),
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
    }
    schema
}
