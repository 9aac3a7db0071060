//! Services' virtual addresses (`spec.clusterIP`) from the service range, given
//! out race-free by every API server sharing one store.
//!
//! One store key per address given, `serviceips/{ip}`, created only if absent
//! (as Kubernetes 1.27+ keeps one IPAddress object per address): two API
//! servers choosing the same free address both try to create its key and the
//! store lets exactly one succeed, so no address is ever given twice. Taking
//! one is one conditional write, giving one back one conditional delete, and
//! the repair pass reads both sides and mends what a crash left behind. The
//! keys hold no group, so no served kind's keys can collide with them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use api_types::{ClusterIp, FieldError, Resource, Service, ServiceRange, Status};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store::{self, ListOptions, Store};

/// Where the addresses given are recorded.
pub const KEY_PREFIX: &str = "serviceips/";

/// How long an address may be recorded without a Service holding it before
/// the repair pass gives it back: longer than any create takes between taking
/// the address and writing its Service.
pub const REPAIR_GRACE: Duration = Duration::from_secs(10 * 60);

/// How often each API server runs the repair pass.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(3 * 60);

/// Random addresses tried before the records are read.
const RANDOM_TRIES: usize = 4;

/// The `kubernetes` Service in `default`, which alone may hold the range's first address.
pub const API_SERVER_SERVICE: (&str, &str) = (
    api_types::kinds::service::API_SERVER_SERVICE_NAMESPACE,
    api_types::kinds::service::API_SERVER_SERVICE_NAME,
);

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    namespace: String,
    name: String,
    uid: String,
    /// When the address was taken (RFC 3339).
    allocated: String,
}

fn key(ip: Ipv4Addr) -> String {
    format!("{KEY_PREFIX}{ip}")
}

fn holder_of(service: &Value) -> Holder {
    Holder {
        namespace: object::namespace(service).to_owned(),
        name: object::name(service).to_owned(),
        uid: object::meta_str(service, "uid")
            .unwrap_or_default()
            .to_owned(),
        allocated: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

fn invalid(service: &Value, value: &str, message: String) -> ApiError {
    ApiError::from(Status::invalid(
        &Service::info().group_kind(),
        object::name(service),
        &[FieldError::invalid("spec.clusterIP", value, message)],
    ))
}

fn store_error(error: store::Error) -> ApiError {
    ApiError::internal(format!("cannot record a service address: {error}"))
}

/// What one repair pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Addresses given back: recorded, held by no Service, older than the grace.
    pub released: Vec<Ipv4Addr>,
    /// Addresses Services hold that were not recorded, now recorded.
    pub recorded: Vec<Ipv4Addr>,
    /// Addresses held by more than one Service (`namespace/name` each).
    pub duplicates: BTreeMap<Ipv4Addr, Vec<String>>,
    /// Services whose address is outside the range (`namespace/name`, address).
    pub outside: Vec<(String, Ipv4Addr)>,
}

/// The addresses of one service range.
#[derive(Clone, Copy, Debug)]
pub struct ServiceIps {
    range: ServiceRange,
}

impl ServiceIps {
    /// Addresses from `range`.
    pub fn new(range: ServiceRange) -> Self {
        ServiceIps { range }
    }

    /// The range.
    pub fn range(&self) -> ServiceRange {
        self.range
    }

    /// Checks an address the Service `namespace/name` asks for: inside the
    /// range, and the first only for the `kubernetes` Service in `default`.
    /// (Whether it is free is known only when it is taken.) `Err` is the rule.
    pub fn check_requested(&self, namespace: &str, name: &str, ip: Ipv4Addr) -> Result<(), String> {
        match self.range.offset(ip) {
            None => Err(format!(
                "must be inside the service range {} ({} to {})",
                self.range,
                self.range.nth(0),
                self.range.nth(self.range.size() - 1)
            )),
            Some(0) if (namespace, name) != API_SERVER_SERVICE => Err(format!(
                "is kept for the Service {}/{} (the API server)",
                API_SERVER_SERVICE.0, API_SERVER_SERVICE.1
            )),
            Some(_) => Ok(()),
        }
    }

    /// Gives `service` the address its `spec.clusterIP` asks for, or a free one
    /// when it is empty (set in the object); nothing for a headless Service.
    pub async fn take(&self, store: &dyn Store, service: &mut Value) -> ApiResult<()> {
        let requested = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let parsed =
            ClusterIp::parse(&requested).map_err(|rule| invalid(service, &requested, rule))?;
        match parsed {
            ClusterIp::Headless => Ok(()),
            ClusterIp::Address(ip) => {
                self.check_requested(object::namespace(service), object::name(service), ip)
                    .map_err(|rule| invalid(service, &requested, rule))?;
                self.claim(store, service, ip).await
            }
            ClusterIp::Unset => {
                let ip = self.allocate(store, service).await?;
                match service.as_object_mut() {
                    Some(map) => {
                        let spec = map
                            .entry("spec")
                            .or_insert_with(|| Value::Object(Default::default()));
                        if !spec.is_object() {
                            *spec = Value::Object(Default::default());
                        }
                        spec["clusterIP"] = Value::String(ip.to_string());
                        Ok(())
                    }
                    None => Err(ApiError::internal("a Service is not a JSON object")),
                }
            }
        }
    }

    /// Records `ip` as `service`'s: 422 naming `spec.clusterIP` if it is taken.
    async fn claim(&self, store: &dyn Store, service: &Value, ip: Ipv4Addr) -> ApiResult<()> {
        let holder = encode(&holder_of(service))?;
        match store.create(&key(ip), holder).await {
            Ok(_) => Ok(()),
            Err(store::Error::AlreadyExists { .. }) => {
                let by = self
                    .holder(store, ip)
                    .await
                    .map(|h| format!(" by {}/{}", h.namespace, h.name))
                    .unwrap_or_default();
                Err(invalid(
                    service,
                    &ip.to_string(),
                    format!(
                        "address is already allocated{by}: ask for another, or leave it empty to be given a free one"
                    ),
                ))
            }
            Err(error) => Err(store_error(error)),
        }
    }

    async fn holder(&self, store: &dyn Store, ip: Ipv4Addr) -> Option<Holder> {
        let kv = store.get(&key(ip)).await.ok()??;
        serde_json::from_slice(&kv.value).ok()
    }

    /// Every address recorded, with the revision of its record.
    async fn recorded(
        &self,
        store: &dyn Store,
    ) -> ApiResult<Vec<(Ipv4Addr, Holder, store::KeyValue)>> {
        let mut all = Vec::new();
        let mut continue_token = None;
        loop {
            let page = store
                .list(
                    KEY_PREFIX,
                    ListOptions {
                        limit: Some(10_000),
                        continue_token: continue_token.take(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(store_error)?;
            for kv in page.items {
                let Some(ip) = kv
                    .key
                    .strip_prefix(KEY_PREFIX)
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                let holder = serde_json::from_slice(&kv.value).unwrap_or(Holder {
                    namespace: String::new(),
                    name: String::new(),
                    uid: String::new(),
                    allocated: String::new(),
                });
                all.push((ip, holder, kv));
            }
            match page.continue_token {
                Some(token) => continue_token = Some(token),
                None => return Ok(all),
            }
        }
    }

    /// Takes a free address for `service`: a few random addresses first
    /// (one write, no read, while the range is sparse), then, from a random
    /// place in the range, the first address no record holds whose key this
    /// server creates first.
    async fn allocate(&self, store: &dyn Store, service: &Value) -> ApiResult<Ipv4Addr> {
        // The first address is the API server's: never given out here.
        let usable = self.range.size() - 1;
        let random = || (uuid::Uuid::new_v4().as_u128() % u128::from(usable)) as u32;
        let holder = encode(&holder_of(service))?;
        for _ in 0..RANDOM_TRIES {
            let ip = self.range.nth(1 + random());
            match store.create(&key(ip), holder.clone()).await {
                Ok(_) => return Ok(ip),
                Err(store::Error::AlreadyExists { .. }) => continue,
                Err(error) => return Err(store_error(error)),
            }
        }
        let taken: BTreeSet<u32> = self
            .recorded(store)
            .await?
            .iter()
            .filter_map(|(ip, _, _)| self.range.offset(*ip))
            .collect();
        let start = random();
        for step in 0..usable {
            let offset = 1 + (start + step) % usable;
            if taken.contains(&offset) {
                continue;
            }
            let ip = self.range.nth(offset);
            match store.create(&key(ip), holder.clone()).await {
                Ok(_) => return Ok(ip),
                // Another API server took it since the list: try the next.
                Err(store::Error::AlreadyExists { .. }) => continue,
                Err(error) => return Err(store_error(error)),
            }
        }
        Err(ApiError::from(Status::internal_error(&format!(
            "cannot give the Service an address (spec.clusterIP): the service range {} is full ({usable} addresses, all allocated); delete Services or restart the API servers with a larger --service-cidr",
            self.range
        ))))
    }

    /// Gives back the address of a Service that is gone (or never written),
    /// if the record is still that Service's.
    pub async fn release(&self, store: &dyn Store, service: &Value) {
        let Some(ip) = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            return;
        };
        let uid = object::meta_str(service, "uid").unwrap_or_default();
        let Ok(Some(kv)) = store.get(&key(ip)).await else {
            return;
        };
        let holder: Option<Holder> = serde_json::from_slice(&kv.value).ok();
        if holder.is_some_and(|h| h.uid == uid) {
            match store.delete(&key(ip), Some(kv.mod_revision)).await {
                Ok(_) | Err(store::Error::NotFound { .. } | store::Error::Conflict { .. }) => {}
                Err(error) => {
                    warn!(%error, %ip, "cannot give back a service address; the repair pass will")
                }
            }
        }
    }

    /// One repair pass: records the addresses Services hold that are not
    /// recorded, gives back those recorded longer than `grace` that no Service
    /// holds, and reports addresses held twice and outside the range.
    /// `services` lists every Service (as stored), read after the records.
    pub async fn repair(
        &self,
        store: &dyn Store,
        services: &[Value],
        records: Vec<(Ipv4Addr, String, store::KeyValue)>,
        grace: Duration,
    ) -> RepairReport {
        let mut report = RepairReport::default();
        let mut held: BTreeMap<Ipv4Addr, Vec<&Value>> = BTreeMap::new();
        for service in services {
            if let Some(Ok(ClusterIp::Address(ip))) = service
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .map(ClusterIp::parse)
            {
                held.entry(ip).or_default().push(service);
            }
        }
        let recorded: BTreeSet<Ipv4Addr> = records.iter().map(|(ip, _, _)| *ip).collect();
        for (ip, holders) in &held {
            let names: Vec<String> = holders
                .iter()
                .map(|s| format!("{}/{}", object::namespace(s), object::name(s)))
                .collect();
            if names.len() > 1 {
                warn!(%ip, services = ?names, "a service address is held by more than one Service");
                report.duplicates.insert(*ip, names.clone());
            }
            if self.range.offset(*ip).is_none() {
                warn!(%ip, service = %names[0], range = %self.range, "a Service's address is outside the service range");
                report.outside.push((names[0].clone(), *ip));
                continue;
            }
            if !recorded.contains(ip) {
                match store
                    .create(
                        &key(*ip),
                        encode(&holder_of(holders[0])).unwrap_or_default(),
                    )
                    .await
                {
                    Ok(_) => {
                        info!(%ip, service = %names[0], "recorded a service address that was not");
                        report.recorded.push(*ip);
                    }
                    Err(store::Error::AlreadyExists { .. }) => {}
                    Err(error) => warn!(%error, %ip, "cannot record a service address"),
                }
            }
        }
        let now = Utc::now();
        for (ip, allocated, kv) in records {
            if held.contains_key(&ip) {
                continue;
            }
            let old_enough = DateTime::parse_from_rfc3339(&allocated)
                .map(|at| {
                    now.signed_duration_since(at.with_timezone(&Utc))
                        .to_std()
                        .is_ok_and(|age| age >= grace)
                })
                // A record that does not say when it was made is old.
                .unwrap_or(true);
            if !old_enough {
                continue;
            }
            match store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => {
                    info!(%ip, "gave back a service address no Service holds");
                    report.released.push(ip);
                }
                Err(store::Error::NotFound { .. } | store::Error::Conflict { .. }) => {}
                Err(error) => warn!(%error, %ip, "cannot give back a service address"),
            }
        }
        report
    }

    /// The records as the repair pass takes them: address, when it was
    /// taken, and the record.
    pub async fn records(
        &self,
        store: &dyn Store,
    ) -> ApiResult<Vec<(Ipv4Addr, String, store::KeyValue)>> {
        Ok(self
            .recorded(store)
            .await?
            .into_iter()
            .map(|(ip, holder, kv)| (ip, holder.allocated, kv))
            .collect())
    }
}

fn encode(holder: &Holder) -> ApiResult<Bytes> {
    serde_json::to_vec(holder)
        .map(Bytes::from)
        .map_err(ApiError::internal)
}
