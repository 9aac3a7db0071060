//! The etcd store: etcd v3 through etcd-client; the etcd revision is the resourceVersion.
//!
//! Keys live under a prefix (`/loom/` by default), so the object key
//! `loom.dev/tasks/default/web-0` is stored at `/loom/loom.dev/tasks/default/web-0`.
//! Conditional writes are single etcd transactions comparing the key's
//! `create_revision` (create) or `mod_revision` (update, delete), so several API
//! servers may share one etcd cluster. Every store compacts etcd's history
//! periodically, together with the other API servers (see [`super::compactor`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, KvClient, MaintenanceClient, PutOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
    WatchOptions,
};

use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;

use super::compactor::Compactor;
use super::{
    Deleted, Error, Event, KeyValue, ListOptions, ListPlan, ListResult, MAX_VALUE_BYTES, Result,
    Revision, Snapshot, SnapshotKind, Store, WatchStream, check_value_size, prefix_end,
};

/// Events buffered for one watcher.
const WATCH_BUFFER: usize = 1_024;
/// How often a watch asks etcd how far it has got while its prefix is quiet.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Responses can hold a whole list; lift tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// How often API servers compact etcd by default, as Kubernetes'.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Revisions every compaction keeps by default, as the embedded store's window.
pub const DEFAULT_COMPACTION_HISTORY: i64 = 10_000;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix.
    pub prefix: String,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How often this store takes part in compacting etcd's history, together
    /// with every other API server on the same etcd; zero turns it off (for
    /// an etcd compacted by someone else, e.g. etcd's `--auto-compaction-*`).
    pub compaction_interval: Duration,
    /// A compaction keeps at least this many revisions of history, and at least
    /// one interval's: watchers and paginated lists less far behind never meet a
    /// compacted revision.
    pub compaction_history: i64,
    /// TLS to etcd (`https://` endpoints): the CA etcd's certificate must
    /// chain to and the client certificate to present.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd with a client certificate, as Kubernetes' `--etcd-cafile`,
/// `--etcd-certfile` and `--etcd-keyfile`.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM CA certificate(s).
    pub ca_pem: String,
    /// PEM client certificate.
    pub cert_pem: String,
    /// PEM private key of the client certificate.
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

impl EtcdTls {
    /// Reads the three files, naming the one that cannot be read or is not PEM.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> std::result::Result<Self, String> {
        let read = |flag: &str, path: &std::path::Path, marker: &str| {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
            if !(text.contains("-----BEGIN ") && text.contains(&format!("{marker}-----"))) {
                return Err(format!(
                    "{flag} {}: no PEM {marker} block in it",
                    path.display()
                ));
            }
            Ok(text)
        };
        Ok(EtcdTls {
            ca_pem: read("--etcd-cafile", ca, "CERTIFICATE")?,
            cert_pem: read("--etcd-certfile", cert, "CERTIFICATE")?,
            key_pem: read("--etcd-keyfile", key, "PRIVATE KEY")?,
        })
    }
}

impl EtcdOptions {
    /// The default prefix `/loom/` at these endpoints.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: "/loom/".to_owned(),
            connect_timeout: Duration::from_secs(5),
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
            compaction_history: DEFAULT_COMPACTION_HISTORY,
            tls: None,
        }
    }
}

/// The etcd-backed store.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    maintenance: MaintenanceClient,
    prefix: String,
    /// Stops the compactor when the last clone of the store is dropped.
    _compaction: Option<Arc<DropGuard>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

pub(super) fn etcd(error: etcd_client::Error) -> Error {
    match error {
        // tonic's Display repeats the whole source chain; its message is the point.
        // gRPC's DEADLINE_EXCEEDED (4) and UNAVAILABLE (14): no answer.
        etcd_client::Error::GRpcStatus(status) if matches!(status.code() as i32, 4 | 14) => {
            Error::Unavailable(format!("etcd: {} ({:?})", status.message(), status.code()))
        }
        etcd_client::Error::GRpcStatus(status) => {
            Error::Backend(format!("etcd: {} ({:?})", status.message(), status.code()))
        }
        error @ etcd_client::Error::TransportError(_) => {
            Error::Unavailable(format!("etcd: {error}"))
        }
        error => Error::Backend(format!("etcd: {error}")),
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem))
                    .identity(etcd_client::Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
            );
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| {
                Error::Backend(format!(
                    "cannot connect to etcd at {}: {e}",
                    options.endpoints.join(",")
                ))
            })?;
        let mut store = EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_VALUE_BYTES * 2),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            maintenance: client.maintenance_client(),
            prefix: options.prefix,
            _compaction: None,
        };
        // A connection is lazy: ask for something so an unreachable etcd fails here.
        let probe = tokio::time::timeout(options.connect_timeout, store.current_revision()).await;
        match probe {
            Ok(Ok(_)) => {
                if !options.compaction_interval.is_zero() {
                    let stop = CancellationToken::new();
                    let compactor = store.compactor(options.compaction_history);
                    let span = tracing::info_span!("etcd_compactor", prefix = %store.prefix);
                    tokio::spawn(
                        compactor
                            .run(options.compaction_interval, stop.clone())
                            .instrument(span),
                    );
                    store._compaction = Some(Arc::new(stop.drop_guard()));
                }
                Ok(store)
            }
            Ok(Err(error)) => {
                let why = match error {
                    Error::Backend(why) | Error::Unavailable(why) => why,
                    other => other.to_string(),
                };
                Err(Error::Backend(format!(
                    "etcd at {} does not answer: {why}",
                    options.endpoints.join(",")
                )))
            }
            Err(_) => Err(Error::Backend(format!(
                "etcd at {} did not answer within {:?}",
                options.endpoints.join(","),
                options.connect_timeout
            ))),
        }
    }

    /// A compactor over this store's etcd keeping at least `history` revisions,
    /// to drive by hand; [`EtcdStore::connect`] already runs one unless
    /// [`EtcdOptions::compaction_interval`] is zero.
    pub fn compactor(&self, history: i64) -> Compactor {
        Compactor::new(self.kv.clone(), history)
    }

    /// etcd's own snapshot of its whole keyspace (every prefix, not only
    /// this store's), through the maintenance API, into an unlinked temp
    /// file; its SHA-256 trailer is checked before it is returned.
    async fn take_snapshot(&self) -> Result<Snapshot> {
        use tokio::io::AsyncWriteExt as _;
        let revision = self.current_revision().await?;
        let mut maintenance = self.maintenance.clone();
        let mut stream = maintenance.snapshot().await.map_err(etcd)?;
        let temp = tempfile::NamedTempFile::new()
            .map_err(|e| Error::Backend(format!("cannot make the snapshot's temp file: {e}")))?;
        let (file, path) = temp.into_parts();
        let write_error =
            |e: std::io::Error| Error::Backend(format!("cannot write the snapshot: {e}"));
        let mut writer = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
        let mut size = 0u64;
        while let Some(chunk) = stream.message().await.map_err(etcd)? {
            writer.write_all(chunk.blob()).await.map_err(write_error)?;
            size += chunk.blob().len() as u64;
        }
        writer.flush().await.map_err(write_error)?;
        let mut file = writer.into_inner().into_std().await;
        let checked = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || super::snapshot::check_etcd_snapshot(&path))
                .await
                .map_err(|e| Error::Backend(format!("cannot check the snapshot: {e}")))?
        };
        // The name goes either way; the open file stays readable until closed.
        drop(path);
        checked?;
        std::io::Seek::rewind(&mut file)
            .map_err(|e| Error::Backend(format!("cannot read the snapshot back: {e}")))?;
        tracing::debug!(revision, size, "etcd snapshot taken");
        Ok(Snapshot {
            kind: SnapshotKind::Etcd,
            revision,
            file,
            size,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = kv
            .key_str()
            .map_err(etcd)?
            .strip_prefix(&self.prefix)
            .ok_or_else(|| Error::Backend("etcd returned a key outside the prefix".to_owned()))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// The key as read inside a failed transaction's else branch.
    fn read_back(&self, responses: Vec<TxnOpResponse>) -> Result<Option<KeyValue>> {
        for response in responses {
            if let TxnOpResponse::Get(get) = response {
                return get.kvs().first().map(|kv| self.to_kv(kv)).transpose();
            }
        }
        Ok(None)
    }
}

/// Compacts etcd's history before `revision`, waiting until it is gone from disk.
pub(super) async fn compact_to(kv: &mut KvClient, revision: Revision) -> Result<()> {
    match kv
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
    {
        Ok(_) => Ok(()),
        // Compacting to a revision already compacted is done already.
        Err(error) => match revision_error(error, revision) {
            Error::Compacted { .. } => Ok(()),
            error => Err(error),
        },
    }
}

fn revision_error(error: etcd_client::Error, requested: Revision) -> Error {
    if let etcd_client::Error::GRpcStatus(status) = &error {
        let message = status.message();
        if message.contains("required revision has been compacted") {
            return Error::Compacted {
                requested,
                compacted: requested + 1,
            };
        }
        if message.contains("required revision is a future revision") {
            return Error::FutureRevision {
                requested,
                current: requested - 1,
            };
        }
    }
    etcd(error)
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.kv.clone();
        let response = kv.get(self.full_key(key), None).await.map_err(etcd)?;
        response.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let plan = ListPlan::new(prefix, options)?;
        let full_prefix = self.full_key(prefix);
        let start = match &plan.after_key {
            // The first key after `after` is `after` followed by a zero byte.
            Some(after) => format!("{}{after}\0", self.prefix),
            None => full_prefix.clone(),
        };
        let mut get = GetOptions::new().with_range(prefix_end(&full_prefix));
        if let Some(revision) = plan.revision {
            get = get.with_revision(revision);
        }
        if let Some(limit) = plan.limit {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1);
        }
        let mut kv = self.kv.clone();
        let response = kv
            .get(start, Some(get))
            .await
            .map_err(|e| revision_error(e, plan.revision.unwrap_or(0)))?;
        let revision = match plan.revision {
            Some(revision) => revision,
            None => response
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))?,
        };
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(plan.page(items, revision))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        check_value_size(key, &value)?;
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value.to_vec(), None)]);
        let mut kv = self.kv.clone();
        let response = kv.txn(txn).await.map_err(etcd)?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        check_value_size(key, &value)?;
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(
                full.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.kv.clone();
        let response = kv.txn(txn).await.map_err(etcd)?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))?;
        if !response.succeeded() {
            return match self.read_back(response.op_responses())? {
                Some(current) => Err(Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: Box::new(current),
                }),
                None => Err(Error::NotFound {
                    key: key.to_owned(),
                }),
            };
        }
        let mut create_revision = revision;
        for op in response.op_responses() {
            if let TxnOpResponse::Put(put) = op
                && let Some(prev) = put.prev_key()
            {
                create_revision = prev.create_revision();
            }
        }
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        let full = self.full_key(key);
        let compare = match expected {
            Some(expected) => Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
            None => Compare::create_revision(full.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.kv.clone();
        let response = kv.txn(txn).await.map_err(etcd)?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))?;
        if !response.succeeded() {
            return match (self.read_back(response.op_responses())?, expected) {
                (Some(current), Some(expected)) => Err(Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: Box::new(current),
                }),
                _ => Err(Error::NotFound {
                    key: key.to_owned(),
                }),
            };
        }
        for op in response.op_responses() {
            if let TxnOpResponse::Delete(delete) = op
                && let Some(prev) = delete.prev_kvs().first()
            {
                return Ok(Deleted {
                    revision,
                    prev: self.to_kv(prev)?,
                });
            }
        }
        Err(Error::NotFound {
            key: key.to_owned(),
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let full_prefix = self.full_key(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(&full_prefix))
            // Start at `after` itself, not after it: etcd then reports a compacted
            // `after`, whose state the previous values of later events depend on.
            // The events at `after` are dropped below.
            .with_start_revision(after.max(1))
            .with_prev_key();
        let mut client = self.watch.clone();
        let stream = client
            .watch(full_prefix, Some(options))
            .await
            .map_err(etcd)?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(error) = store.run_watch(stream, after, &tx).await {
                let _ = tx.send(Err(error)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        compact_to(&mut self.kv.clone(), revision).await
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        self.take_snapshot().await
    }

    async fn current_revision(&self) -> Result<Revision> {
        let mut kv = self.kv.clone();
        let response = kv
            .get(
                self.prefix.clone(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(etcd)?;
        response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Error::Backend("etcd response without a header".to_owned()))
    }
}

impl EtcdStore {
    /// Forwards one etcd watch, asking etcd for progress while the prefix is quiet.
    async fn run_watch(
        &self,
        stream: etcd_client::WatchStream,
        after: Revision,
        tx: &tokio::sync::mpsc::Sender<Result<Event>>,
    ) -> Result<()> {
        let (mut requests, mut responses) = stream.split();
        // Not at once: etcd before 3.4.24 and 3.5.8 answers a progress request
        // with its current revision even while this watch is still replaying
        // older events (etcd issue 15220), which would claim events not yet sent.
        // etcd replays to a new watch within its 100 ms sync loop, so asking
        // only after PROGRESS_INTERVAL keeps replays (and a compacted start)
        // ahead of the first progress; fixed etcd holds the answer back itself.
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + PROGRESS_INTERVAL,
            PROGRESS_INTERVAL,
        );
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = after;
        loop {
            let response = tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = progress.tick() => {
                    requests.request_progress().await.map_err(etcd)?;
                    continue;
                }
                response = responses.message() => response,
            };
            let response = match response {
                Ok(Some(response)) => response,
                Ok(None) => return Err(Error::Backend("etcd closed the watch".to_owned())),
                Err(error) => return Err(etcd(error)),
            };
            if response.compact_revision() > 0 {
                return Err(Error::Compacted {
                    requested: after,
                    compacted: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(Error::Backend(format!(
                    "etcd cancelled the watch: {}",
                    response.cancel_reason()
                )));
            }
            if response.created() {
                continue;
            }
            if response.events().is_empty() {
                // A progress notification: every event up to its revision was sent.
                let revision = response.header().map_or(0, |h| h.revision());
                if revision > last {
                    last = revision;
                    if tx.send(Ok(Event::Progress { revision })).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
            for event in response.events() {
                // The watch starts at `after` itself; its events were seen already.
                if event.kv().is_some_and(|kv| kv.mod_revision() <= after) {
                    continue;
                }
                let event = self.to_event(event)?;
                last = last.max(event.revision());
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    fn to_event(&self, event: &etcd_client::Event) -> Result<Event> {
        let kv = event
            .kv()
            .ok_or_else(|| Error::Backend("etcd watch event without a key".to_owned()))?;
        let kv = self.to_kv(kv)?;
        let prev = event.prev_kv().map(|prev| self.to_kv(prev)).transpose()?;
        match (event.event_type(), prev) {
            (EventType::Put, None) if kv.create_revision == kv.mod_revision => {
                Ok(Event::Created(kv))
            }
            (EventType::Put, None) => Err(Error::Backend(format!(
                "etcd lost the previous value of {} written at revision {}",
                kv.key, kv.mod_revision
            ))),
            (EventType::Put, Some(prev)) => Ok(Event::Updated { kv, prev }),
            (EventType::Delete, Some(prev)) => Ok(Event::Deleted {
                revision: kv.mod_revision,
                prev,
            }),
            (EventType::Delete, None) => Err(Error::Backend(format!(
                "etcd lost the value of {} deleted at revision {}",
                kv.key, kv.mod_revision
            ))),
        }
    }
}
