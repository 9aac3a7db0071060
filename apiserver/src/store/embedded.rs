//! The embedded store: one SQLite file in WAL mode, one row per write (the row id is the revision).
//!
//! One writer thread owns the only write connection. Writes queue to it and every
//! write waiting when a transaction starts shares that transaction, so one fsync
//! acknowledges many writes (group commit) and SQLite never sees two writers
//! ("database is locked" cannot happen). Reads use a small pool of read-only
//! connections, which WAL lets run beside the writer. Committed writes are
//! broadcast in revision order to watchers; a watcher that falls behind the
//! broadcast catches up from the log itself, so it never skips an event.
//! Compaction deletes superseded rows in small chunks between write batches, and
//! the WAL is kept short by `journal_size_limit`, so the file stays bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, config::DbConfig,
    params,
};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, warn};

use super::{
    Deleted, Error, Event, KeyValue, ListOptions, ListPlan, ListResult, Result, Revision, Store,
    WatchStream, check_value_size, prefix_end,
};

/// How the embedded store behaves.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The database file; created with its directory if missing.
    pub path: PathBuf,
    /// How many revisions of history to keep for watches and old lists; older
    /// history is compacted automatically. `0` turns automatic compaction off.
    pub history: i64,
    /// How often to check whether history needs compacting.
    pub compact_interval: Duration,
    /// At most this many writes share one transaction.
    pub max_batch: usize,
}

impl EmbeddedOptions {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            path: path.into(),
            history: 10_000,
            compact_interval: Duration::from_secs(5),
            max_batch: 512,
        }
    }
}

/// Revisions a compaction chunk covers, so writes never wait long behind it.
const COMPACT_CHUNK: i64 = 2_000;
/// Revisions a watcher reads from the log at a time while catching up.
const CATCH_UP_CHUNK: i64 = 1_000;
/// Events buffered for one watcher before it must read the log instead.
const WATCH_BUFFER: usize = 1_024;
/// Batches of committed events the broadcast keeps for slow watchers.
const BROADCAST_BATCHES: usize = 4_096;
/// Read connections kept open.
const READERS: usize = 8;
/// The WAL is truncated to this size after a checkpoint.
const WAL_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The embedded SQLite store.
#[derive(Debug)]
pub struct EmbeddedStore {
    writes: mpsc::Sender<Request>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    shared: Arc<Shared>,
    writer: Option<thread::JoinHandle<()>>,
    _lock: File,
}

/// A summary of the embedded store's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The revision of the last write.
    pub revision: Revision,
    /// History before this revision is gone.
    pub compacted: Revision,
    /// Keys that exist now.
    pub keys: i64,
    /// Rows of history kept (one per write not yet compacted away).
    pub history_rows: i64,
    /// The database file's size.
    pub file_bytes: u64,
    /// The write-ahead log's size.
    pub wal_bytes: u64,
}

/// What readers, watchers and the writer share.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// The revision of the last committed write.
    revision: AtomicI64,
    /// History before this revision is gone.
    compacted: AtomicI64,
    readers: Mutex<Vec<Connection>>,
}

enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

enum Outcome {
    Put(KeyValue),
    Deleted(Deleted),
}

enum Request {
    Write(Op, oneshot::Sender<Result<Outcome>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_revision ON log (key, revision);
CREATE TABLE IF NOT EXISTS current (
    key BLOB PRIMARY KEY,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('compact_revision', 0), ('compact_scanned', 0);
";

impl EmbeddedStore {
    /// Opens (or creates) the database and starts its writer thread.
    ///
    /// The file is locked: a second process opening it gets an error.
    pub fn open(options: EmbeddedOptions) -> Result<Self> {
        let path = options.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Backend(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let lock = lock_file(&path)?;
        let conn = open_writer(&path)?;
        let revision = read_sequence(&conn)?;
        let compacted = read_meta(&conn, "compact_revision")?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            readers: Mutex::new(Vec::new()),
        });
        let (events, _) = broadcast::channel(BROADCAST_BATCHES);
        let (writes, requests) = mpsc::channel();
        let writer = Writer {
            conn,
            requests,
            events: events.clone(),
            shared: shared.clone(),
            options,
            next: revision,
            job: None,
        };
        let writer = thread::Builder::new()
            .name("loom-store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| Error::Backend(format!("cannot start the store writer thread: {e}")))?;
        debug!(path = %path.display(), revision, compacted, "embedded store opened");
        Ok(EmbeddedStore {
            writes,
            events,
            shared,
            writer: Some(writer),
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The revision before which history is gone.
    pub fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(Ordering::Acquire)
    }

    /// How the store is doing: its revisions, key count and file sizes.
    pub async fn health(&self) -> Result<Health> {
        let path = self.shared.path.clone();
        let (keys, rows) = self
            .read(|conn| {
                let keys = conn
                    .query_row("SELECT COUNT(*) FROM current", [], |row| row.get(0))
                    .map_err(sqlite)?;
                let rows = conn
                    .query_row("SELECT COUNT(*) FROM log", [], |row| row.get(0))
                    .map_err(sqlite)?;
                Ok((keys, rows))
            })
            .await?;
        let size = |suffix: &str| {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0)
        };
        Ok(Health {
            revision: self.shared.revision.load(Ordering::Acquire),
            compacted: self.compacted_revision(),
            keys,
            history_rows: rows,
            file_bytes: size(""),
            wal_bytes: size("-wal"),
        })
    }

    /// Stops the writer after it has committed every queued write, and waits for it.
    pub async fn close(mut self) {
        let writer = self.writer.take();
        drop(self);
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    async fn write(&self, op: Op) -> Result<Outcome> {
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(Request::Write(op, reply))
            .map_err(|_| Error::Backend("the store is closed".to_owned()))?;
        outcome
            .await
            .map_err(|_| Error::Backend("the store writer stopped".to_owned()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        read(&self.shared, f).await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |conn| current(conn, &key)).await
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let plan = ListPlan::new(prefix, options)?;
        let prefix = prefix.to_owned();
        self.read(move |conn| list(conn, &prefix, &plan)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        check_value_size(key, &value)?;
        let op = Op::Create {
            key: key.to_owned(),
            value,
        };
        match self.write(op).await? {
            Outcome::Put(kv) => Ok(kv),
            Outcome::Deleted(_) => Err(Error::Backend("unexpected write outcome".to_owned())),
        }
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        check_value_size(key, &value)?;
        let op = Op::Update {
            key: key.to_owned(),
            value,
            expected,
        };
        match self.write(op).await? {
            Outcome::Put(kv) => Ok(kv),
            Outcome::Deleted(_) => Err(Error::Backend("unexpected write outcome".to_owned())),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        let op = Op::Delete {
            key: key.to_owned(),
            expected,
        };
        match self.write(op).await? {
            Outcome::Deleted(deleted) => Ok(deleted),
            Outcome::Put(_) => Err(Error::Backend("unexpected write outcome".to_owned())),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before reading the log, so nothing committed in between is missed.
        let live = self.events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let shared = self.shared.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            if let Err(error) = run_watch(&shared, live, &prefix, after, &tx).await {
                let _ = tx.send(Err(error)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.writes
            .send(Request::Compact(revision, reply))
            .map_err(|_| Error::Backend("the store is closed".to_owned()))?;
        done.await
            .map_err(|_| Error::Backend("the store writer stopped".to_owned()))?
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }
}

fn sqlite(error: rusqlite::Error) -> Error {
    Error::Backend(format!("sqlite: {error}"))
}

fn lock_file(path: &Path) -> Result<File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = File::create(&lock_path).map_err(|e| {
        Error::Backend(format!(
            "cannot create lock file {}: {e}",
            Path::new(&lock_path).display()
        ))
    })?;
    file.try_lock().map_err(|e| {
        Error::Backend(format!(
            "the store {} is in use by another process ({e})",
            path.display()
        ))
    })?;
    Ok(file)
}

fn open_writer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| Error::Backend(format!("cannot open the store {}: {e}", path.display())))?;
    // auto_vacuum only takes effect before the first table exists.
    conn.execute_batch(&format!(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 10000;
         PRAGMA journal_size_limit = {WAL_LIMIT_BYTES};
         PRAGMA cache_size = -16384;
         PRAGMA temp_store = MEMORY;"
    ))
    .map_err(sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Backend(format!(
            "the store {} cannot use WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.execute_batch(SCHEMA).map_err(sqlite)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Keeps each statement's query plan once compiled. SQLite otherwise marks a
/// statement whose plan could depend on a bound value (STAT4 is compiled in) for
/// recompiling on every new binding: each point read by key was parsed and
/// planned again, a tenth of the API server's CPU under write load.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(sqlite)?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::Backend(format!("cannot open the store {}: {e}", path.display())))?;
    conn.execute_batch("PRAGMA busy_timeout = 10000; PRAGMA cache_size = -8192;")
        .map_err(sqlite)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Runs `f` on a pooled read connection on the blocking pool.
async fn read<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let pooled = shared
            .readers
            .lock()
            .map_err(|_| Error::Backend("reader pool poisoned".to_owned()))?
            .pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&shared.path)?,
        };
        let result = f(&mut conn);
        if let Ok(mut pool) = shared.readers.lock()
            && pool.len() < READERS
        {
            pool.push(conn);
        }
        result
    })
    .await
    .map_err(|e| Error::Backend(format!("store read failed: {e}")))?
}

fn read_sequence(conn: &Connection) -> Result<Revision> {
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'log'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(sqlite)?
        .unwrap_or(0))
}

fn read_meta(conn: &Connection, name: &str) -> Result<i64> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .map_err(sqlite)
}

fn key_string(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// The key's latest value.
fn current(conn: &Connection, key: &str) -> Result<Option<KeyValue>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT l.create_revision, l.revision, l.value FROM current c
             JOIN log l ON l.revision = c.revision WHERE c.key = ?1",
        )
        .map_err(sqlite)?;
    stmt.query_row([key.as_bytes()], |row| {
        Ok(KeyValue {
            key: key.to_owned(),
            create_revision: row.get(0)?,
            mod_revision: row.get(1)?,
            value: Bytes::from(row.get::<_, Vec<u8>>(2)?),
        })
    })
    .optional()
    .map_err(sqlite)
}

fn list(conn: &mut Connection, prefix: &str, plan: &ListPlan) -> Result<ListResult> {
    // One read transaction: the revision, the compaction mark and the rows agree.
    let tx = conn.transaction().map_err(sqlite)?;
    let head = read_sequence(&tx)?;
    let compacted = read_meta(&tx, "compact_revision")?;
    let revision = plan.revision.unwrap_or(head);
    if revision > head {
        return Err(Error::FutureRevision {
            requested: revision,
            current: head,
        });
    }
    if revision < compacted {
        return Err(Error::Compacted {
            requested: revision,
            compacted,
        });
    }
    let (start, start_inclusive) = match &plan.after_key {
        Some(after) => (after.as_bytes().to_vec(), false),
        None => (prefix.as_bytes().to_vec(), true),
    };
    let end = prefix_end(prefix);
    let end = if end.is_empty() { vec![0xff; 1] } else { end };
    // Read one more than the limit to know whether another page follows.
    let limit = plan
        .limit
        .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX - 1) + 1);
    let lower = if start_inclusive { ">=" } else { ">" };
    let read_row = |row: &rusqlite::Row<'_>| {
        Ok(KeyValue {
            key: key_string(row.get(0)?)?,
            create_revision: row.get(1)?,
            mod_revision: row.get(2)?,
            value: Bytes::from(row.get::<_, Vec<u8>>(3)?),
        })
    };
    let items = if revision == head {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT c.key, l.create_revision, l.revision, l.value FROM current c
                 JOIN log l ON l.revision = c.revision
                 WHERE c.key {lower} ?1 AND c.key < ?2 ORDER BY c.key LIMIT ?3"
            ))
            .map_err(sqlite)?;
        stmt.query_map(params![start, end, limit], read_row)
            .map_err(sqlite)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sqlite)?
    } else {
        // SQLite takes the bare columns from the row holding MAX(revision).
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT key, create_revision, revision, value FROM (
                    SELECT key, MAX(revision) AS revision, create_revision, deleted, value
                    FROM log WHERE key {lower} ?1 AND key < ?2 AND revision <= ?3 GROUP BY key
                 ) WHERE deleted = 0 ORDER BY key LIMIT ?4"
            ))
            .map_err(sqlite)?;
        stmt.query_map(params![start, end, revision, limit], read_row)
            .map_err(sqlite)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sqlite)?
    };
    tx.finish().map_err(sqlite)?;
    Ok(plan.page(items, revision))
}

/// Events under `prefix` after revision `after`, a chunk at a time: returns the
/// events, the revision they reach, and the log's head in the same snapshot.
fn read_events(
    conn: &mut Connection,
    prefix: &str,
    after: Revision,
) -> Result<(Vec<Event>, Revision, Revision)> {
    let tx = conn.transaction().map_err(sqlite)?;
    let head = read_sequence(&tx)?;
    let compacted = read_meta(&tx, "compact_revision")?;
    if after < compacted {
        return Err(Error::Compacted {
            requested: after,
            compacted,
        });
    }
    let up_to = head.min(after.saturating_add(CATCH_UP_CHUNK));
    let end = prefix_end(prefix);
    let end = if end.is_empty() { vec![0xff; 1] } else { end };
    let events = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT l.revision, l.key, l.create_revision, l.deleted, l.value,
                        p.revision, p.create_revision, p.value
                 FROM log l LEFT JOIN log p ON p.revision = l.prev_revision
                 WHERE l.revision > ?1 AND l.revision <= ?2 AND l.key >= ?3 AND l.key < ?4
                 ORDER BY l.revision",
            )
            .map_err(sqlite)?;
        let rows = stmt
            .query_map(params![after, up_to, prefix.as_bytes(), end], |row| {
                let revision: Revision = row.get(0)?;
                let key = key_string(row.get(1)?)?;
                let create_revision: Revision = row.get(2)?;
                let deleted: bool = row.get(3)?;
                let prev = match row.get::<_, Option<Revision>>(5)? {
                    Some(prev_revision) => Some(KeyValue {
                        key: key.clone(),
                        create_revision: row.get(6)?,
                        mod_revision: prev_revision,
                        value: Bytes::from(row.get::<_, Vec<u8>>(7)?),
                    }),
                    None => None,
                };
                let kv = KeyValue {
                    key,
                    create_revision,
                    mod_revision: revision,
                    value: Bytes::from(row.get::<_, Vec<u8>>(4)?),
                };
                Ok((revision, deleted, kv, prev))
            })
            .map_err(sqlite)?;
        let mut events = Vec::new();
        for row in rows {
            let (revision, deleted, kv, prev) = row.map_err(sqlite)?;
            let event = match (deleted, prev) {
                (false, None) => Event::Created(kv),
                (false, Some(prev)) => Event::Updated { kv, prev },
                (true, Some(prev)) => Event::Deleted { revision, prev },
                (true, None) => {
                    return Err(Error::Backend(format!(
                        "the log lost the value deleted at revision {revision}"
                    )));
                }
            };
            events.push(event);
        }
        events
    };
    tx.finish().map_err(sqlite)?;
    Ok((events, up_to, head))
}

/// Feeds one watcher: history from the log, then the live broadcast; back to the
/// log whenever the watcher fell too far behind the broadcast.
async fn run_watch(
    shared: &Arc<Shared>,
    mut live: broadcast::Receiver<Arc<Vec<Event>>>,
    prefix: &str,
    after: Revision,
    tx: &tokio::sync::mpsc::Sender<Result<Event>>,
) -> Result<()> {
    let mut last = after;
    loop {
        // Catch up from the log to its head.
        loop {
            let owned_prefix = prefix.to_owned();
            let (events, up_to, head) =
                read(shared, move |conn| read_events(conn, &owned_prefix, last)).await?;
            let quiet = events.is_empty();
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            if quiet
                && up_to > last
                && tx
                    .send(Ok(Event::Progress { revision: up_to }))
                    .await
                    .is_err()
            {
                return Ok(());
            }
            last = last.max(up_to);
            if up_to >= head {
                break;
            }
        }
        // Then follow the broadcast until it is closed or overtakes us.
        loop {
            let batch = tokio::select! {
                _ = tx.closed() => return Ok(()),
                batch = live.recv() => batch,
            };
            match batch {
                Ok(batch) => {
                    let mut sent = false;
                    for event in batch.iter() {
                        if event.revision() > last && event.key().starts_with(prefix) {
                            sent = true;
                            if tx.send(Ok(event.clone())).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    let Some(newest) = batch.last().map(Event::revision) else {
                        continue;
                    };
                    if !sent
                        && newest > last
                        && tx
                            .send(Ok(Event::Progress { revision: newest }))
                            .await
                            .is_err()
                    {
                        return Ok(());
                    }
                    last = last.max(newest);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Skip the backlog: re-subscribe first, then read it from the log.
                    live = live.resubscribe();
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Backend("the store is closed".to_owned()));
                }
            }
        }
    }
}

/// A compaction in progress: rows before `target` still to sweep, from `scanned`.
struct CompactionJob {
    target: Revision,
    scanned: Revision,
}

/// The one thread that writes.
struct Writer {
    conn: Connection,
    requests: mpsc::Receiver<Request>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    shared: Arc<Shared>,
    options: EmbeddedOptions,
    /// The revision of the last row written (committed or not).
    next: Revision,
    job: Option<CompactionJob>,
}

impl Writer {
    fn run(mut self) {
        // Finish a compaction an earlier process started.
        match (
            read_meta(&self.conn, "compact_revision"),
            read_meta(&self.conn, "compact_scanned"),
        ) {
            (Ok(target), Ok(scanned)) if scanned < target => {
                self.job = Some(CompactionJob { target, scanned });
            }
            (Err(error), _) | (_, Err(error)) => warn!(%error, "cannot read compaction state"),
            _ => {}
        }
        let mut last_check = Instant::now();
        loop {
            let wait = if self.job.is_some() {
                Duration::ZERO
            } else {
                self.options.compact_interval
            };
            let first = match self.requests.recv_timeout(wait) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut writes = Vec::new();
                let mut compacts = Vec::new();
                let mut next = Some(first);
                while let Some(request) = next {
                    match request {
                        Request::Write(op, reply) => writes.push((op, reply)),
                        Request::Compact(revision, reply) => compacts.push((revision, reply)),
                    }
                    next = if writes.len() < self.options.max_batch {
                        self.requests.try_recv().ok()
                    } else {
                        None
                    };
                }
                if !writes.is_empty() {
                    self.commit(writes);
                }
                for (revision, reply) in compacts {
                    let _ = reply.send(self.start_compaction(revision));
                }
            }
            if last_check.elapsed() >= self.options.compact_interval {
                last_check = Instant::now();
                self.auto_compact();
            }
            if self.job.is_some() {
                self.compact_chunk();
            }
        }
        debug!("embedded store writer stopped");
    }

    /// Applies a batch of writes in one transaction, then replies and broadcasts.
    fn commit(&mut self, writes: Vec<(Op, oneshot::Sender<Result<Outcome>>)>) {
        let start = self.next;
        let mut events = Vec::with_capacity(writes.len());
        let mut outcomes = Vec::with_capacity(writes.len());
        let result = (|| -> Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            for (op, _) in &writes {
                let outcome = apply(&tx, op, &mut self.next, &mut events);
                if let Err(Error::Backend(error)) = outcome {
                    return Err(Error::Backend(error));
                }
                outcomes.push(outcome);
            }
            tx.commit().map_err(sqlite)
        })();
        match result {
            Ok(()) => {
                self.shared.revision.store(self.next, Ordering::Release);
                if !events.is_empty() {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(Arc::new(events));
                }
                for ((_, reply), outcome) in writes.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                warn!(%error, writes = writes.len(), "store transaction failed");
                self.next = start;
                for (_, reply) in writes {
                    let _ = reply.send(Err(Error::Backend(error.to_string())));
                }
            }
        }
    }

    fn auto_compact(&mut self) {
        if self.options.history <= 0 || self.job.is_some() {
            return;
        }
        let target = self.next - self.options.history;
        if target > self.shared.compacted.load(Ordering::Acquire)
            && let Err(error) = self.start_compaction(target)
        {
            warn!(%error, target, "automatic compaction failed");
        }
    }

    /// Moves the compaction mark to `target` at once; the rows go in chunks later.
    fn start_compaction(&mut self, target: Revision) -> Result<()> {
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if target <= compacted {
            return Ok(());
        }
        if target > self.next {
            return Err(Error::FutureRevision {
                requested: target,
                current: self.next,
            });
        }
        self.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE name = 'compact_revision'",
                [target],
            )
            .map_err(sqlite)?;
        self.shared.compacted.store(target, Ordering::Release);
        let scanned = read_meta(&self.conn, "compact_scanned")?;
        self.job = Some(CompactionJob { target, scanned });
        debug!(target, "compaction started");
        Ok(())
    }

    /// Deletes the rows one chunk of history no longer needs: every row superseded
    /// by a later row before the target, and every delete marker before it.
    fn compact_chunk(&mut self) {
        let Some(job) = self.job.as_mut() else { return };
        // The state at `target` stays readable: it holds the previous value of
        // every later event.
        let last = job.target;
        let from = job.scanned;
        if from >= last {
            self.job = None;
            return;
        }
        let to = last.min(from + COMPACT_CHUNK);
        let result = (|| -> Result<()> {
            let tx = self.conn.transaction().map_err(sqlite)?;
            {
                let mut superseded = tx
                    .prepare_cached(
                        "SELECT prev_revision FROM log
                         WHERE revision > ?1 AND revision <= ?2 AND prev_revision > 0",
                    )
                    .map_err(sqlite)?;
                let prevs = superseded
                    .query_map([from, to], |row| row.get::<_, i64>(0))
                    .map_err(sqlite)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sqlite)?;
                let mut delete = tx
                    .prepare_cached("DELETE FROM log WHERE revision = ?1")
                    .map_err(sqlite)?;
                for prev in prevs {
                    delete.execute([prev]).map_err(sqlite)?;
                }
                tx.execute(
                    "DELETE FROM log WHERE revision > ?1 AND revision <= ?2 AND deleted = 1",
                    [from, to],
                )
                .map_err(sqlite)?;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE name = 'compact_scanned'",
                    [to],
                )
                .map_err(sqlite)?;
            }
            tx.commit().map_err(sqlite)
        })();
        match result {
            Ok(()) => {
                job.scanned = to;
                if to >= last {
                    debug!(target = job.target, "compaction finished");
                    self.job = None;
                    // Give freed pages back to the file system a bounded amount at a time.
                    if let Err(error) = self.conn.execute_batch("PRAGMA incremental_vacuum(4096)") {
                        warn!(%error, "incremental vacuum failed");
                    }
                }
            }
            Err(error) => {
                warn!(%error, "compaction chunk failed; retrying later");
                self.job = None;
            }
        }
    }
}

/// Applies one write inside the batch transaction. Logical failures (conflict,
/// missing key) are the write's own result; a backend error aborts the batch.
fn apply(
    tx: &Transaction<'_>,
    op: &Op,
    next: &mut Revision,
    events: &mut Vec<Event>,
) -> Result<Outcome> {
    let key = match op {
        Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
    };
    let existing = current(tx, key)?;
    let revision = *next + 1;
    let insert = |create_revision: Revision, prev: Revision, deleted: bool, value: &[u8]| {
        tx.prepare_cached(
            "INSERT INTO log (revision, key, create_revision, prev_revision, deleted, value)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                revision,
                key.as_bytes(),
                create_revision,
                prev,
                deleted,
                value
            ])
        })
        .map_err(sqlite)
    };
    let set_current = || {
        tx.prepare_cached(
            "INSERT INTO current (key, revision) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET revision = excluded.revision",
        )
        .and_then(|mut stmt| stmt.execute(params![key.as_bytes(), revision]))
        .map_err(sqlite)
    };
    let outcome = match (op, existing) {
        (Op::Create { .. }, Some(_)) => {
            return Err(Error::AlreadyExists { key: key.clone() });
        }
        (Op::Create { value, .. }, None) => {
            insert(revision, 0, false, value)?;
            set_current()?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: revision,
                mod_revision: revision,
            };
            events.push(Event::Created(kv.clone()));
            Outcome::Put(kv)
        }
        (Op::Update { .. } | Op::Delete { .. }, None) => {
            return Err(Error::NotFound { key: key.clone() });
        }
        (Op::Update { expected, .. }, Some(prev)) if prev.mod_revision != *expected => {
            return Err(Error::Conflict {
                key: key.clone(),
                expected: *expected,
                current: Box::new(prev),
            });
        }
        (
            Op::Delete {
                expected: Some(expected),
                ..
            },
            Some(prev),
        ) if prev.mod_revision != *expected => {
            return Err(Error::Conflict {
                key: key.clone(),
                expected: *expected,
                current: Box::new(prev),
            });
        }
        (Op::Update { value, .. }, Some(prev)) => {
            insert(prev.create_revision, prev.mod_revision, false, value)?;
            set_current()?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: revision,
            };
            events.push(Event::Updated {
                kv: kv.clone(),
                prev,
            });
            Outcome::Put(kv)
        }
        (Op::Delete { .. }, Some(prev)) => {
            insert(prev.create_revision, prev.mod_revision, true, &[])?;
            tx.prepare_cached("DELETE FROM current WHERE key = ?1")
                .and_then(|mut stmt| stmt.execute([key.as_bytes()]))
                .map_err(sqlite)?;
            events.push(Event::Deleted {
                revision,
                prev: prev.clone(),
            });
            Outcome::Deleted(Deleted { revision, prev })
        }
    };
    *next = revision;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point read reuses its compiled statement: binding another key must not
    /// make SQLite compile the query again (it would, per call, if the planner
    /// were allowed to re-plan on bound values).
    #[test]
    fn point_reads_are_not_reprepared() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Backend(e.to_string()))?;
        let path = dir.path().join("store.db");
        let writer = open_writer(&path)?;
        writer
            .execute(
                "INSERT INTO log (key, create_revision, prev_revision, deleted, value)
                 VALUES (?1, 1, 0, 0, x'00')",
                [b"/a".as_slice()],
            )
            .map_err(sqlite)?;
        writer
            .execute(
                "INSERT INTO current (key, revision) VALUES (?1, 1)",
                [b"/a".as_slice()],
            )
            .map_err(sqlite)?;
        for conn in [writer, open_reader(&path)?] {
            for i in 0..50 {
                let key = if i % 2 == 0 {
                    "/a".to_owned()
                } else {
                    format!("/k{i}")
                };
                let found = current(&conn, &key)?;
                assert_eq!(found.is_some(), i % 2 == 0, "{key}");
            }
            let stmt = conn
                .prepare_cached(
                    "SELECT l.create_revision, l.revision, l.value FROM current c
             JOIN log l ON l.revision = c.revision WHERE c.key = ?1",
                )
                .map_err(sqlite)?;
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
        }
        Ok(())
    }
}
