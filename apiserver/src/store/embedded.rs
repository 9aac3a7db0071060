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
use tracing::{debug, info, warn};

use super::{
    Deleted, Error, Event, KeyValue, ListOptions, ListPlan, ListResult, Result, Revision, Snapshot,
    SnapshotKind, Store, WatchStream, check_value_size, prefix_end,
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
        remove_stale_copies(&path);
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

    async fn snapshot(&self) -> Result<Snapshot> {
        let path = self.shared.path.clone();
        tokio::task::spawn_blocking(move || backup(&path))
            .await
            .map_err(|e| Error::Backend(format!("the snapshot failed: {e}")))?
    }
}

/// The name of a snapshot's copy while it is made, beside the store.
const SNAPSHOT_TEMP_PREFIX: &str = ".loom-snapshot-";

/// What a snapshot file of the embedded store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The revision of its last write.
    pub revision: Revision,
    /// History before this revision is gone.
    pub compacted: Revision,
    /// Keys in it.
    pub keys: i64,
    /// Its format ([`FORMAT_VERSION`] or older).
    pub format: i64,
}

/// Copies the database at `path` with SQLite's online backup into an unlinked
/// file beside it (the data dir, not a small /tmp), while the writer goes on.
fn backup(path: &Path) -> Result<Snapshot> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(SNAPSHOT_TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| {
            Error::Backend(format!(
                "cannot make the snapshot's file in {}: {e}",
                dir.display()
            ))
        })?;
    let revision = {
        let source = open_reader(path)?;
        let mut copy = Connection::open(temp.path()).map_err(sqlite)?;
        {
            let backup = rusqlite::backup::Backup::new(&source, &mut copy).map_err(sqlite)?;
            // Every page in one step: one read transaction, so one consistent
            // state, which WAL lets the writer keep committing beside. (Smaller
            // steps restart whenever the writer commits in between.)
            match backup.step(-1).map_err(sqlite)? {
                rusqlite::backup::StepResult::Done => {}
                other => {
                    return Err(Error::Backend(format!(
                        "the online backup did not finish: {other:?}"
                    )));
                }
            }
        }
        // One self-contained file: no write-ahead log beside it.
        let _: String = copy
            .query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))
            .map_err(sqlite)?;
        let revision = read_sequence(&copy)?;
        copy.close().map_err(|(_, e)| sqlite(e))?;
        revision
    };
    let file = temp
        .reopen()
        .map_err(|e| Error::Backend(format!("cannot read the snapshot back: {e}")))?;
    // The name goes now; the open file stays readable until closed.
    temp.close()
        .map_err(|e| Error::Backend(format!("cannot remove the snapshot's name: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| Error::Backend(format!("cannot read the snapshot back: {e}")))?
        .len();
    debug!(revision, size, "embedded store snapshot taken");
    Ok(Snapshot {
        kind: SnapshotKind::Embedded,
        revision,
        file,
        size,
    })
}

/// Checks a snapshot file of the embedded store (SQLite's quick check, the
/// tables, a format this build reads) and says what it holds.
pub fn inspect(path: &Path) -> Result<SnapshotInfo> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::Backend(format!("cannot open {}: {e}", path.display())))?;
    let format = format_version(&conn, path)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| Error::Backend(format!("{} is not a sound database: {e}", path.display())))?;
    if check != "ok" {
        return Err(Error::Backend(format!(
            "{} is damaged: {check}",
            path.display()
        )));
    }
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
             AND name IN ('log', 'current', 'meta')",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite)?;
    if tables != 3 {
        return Err(Error::Backend(format!(
            "{} is a SQLite database but not a Loom store",
            path.display()
        )));
    }
    Ok(SnapshotInfo {
        revision: read_sequence(&conn)?,
        compacted: read_meta(&conn, "compact_revision")?,
        keys: conn
            .query_row("SELECT COUNT(*) FROM current", [], |row| row.get(0))
            .map_err(sqlite)?,
        format,
    })
}

/// Revisions a restore skips by default, as etcd's `--bump-revision` advice
/// for Kubernetes: more writes than a cluster makes between a snapshot and its
/// restore, so every resourceVersion a client still holds from the lost
/// history is older than the restored store's first and gets 410 Gone.
pub const DEFAULT_RESTORE_BUMP: i64 = 1_000_000_000;

/// Makes the database `dest` from the snapshot file `snapshot`: the same keys
/// at the same revisions, history before the snapshot's revision compacted,
/// and the next write `bump` revisions past it (`etcdutl snapshot restore
/// --bump-revision --mark-compacted`): a client's resourceVersion from after
/// the snapshot is then older than the restored store's compaction, so its
/// watch gets 410 Gone and it relists, rather than waiting for a revision
/// that would mean something else now. `dest` must not exist.
pub fn restore(snapshot: &Path, dest: &Path, bump: i64) -> Result<Restored> {
    if bump < 0 {
        return Err(Error::Backend(format!(
            "the revision bump must not be negative (got {bump})"
        )));
    }
    for suffix in ["", "-wal"] {
        let mut file = dest.as_os_str().to_owned();
        file.push(suffix);
        if Path::new(&file).exists() {
            return Err(Error::Backend(format!(
                "{} already exists: restore into a new data dir, or move the old store aside first",
                Path::new(&file).display()
            )));
        }
    }
    let info = inspect(snapshot)?;
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Backend(format!("cannot create {}: {e}", dir.display())))?;
    let temp = tempfile::Builder::new()
        .prefix(".loom-restore-")
        .tempfile_in(dir)
        .map_err(|e| Error::Backend(format!("cannot make a file in {}: {e}", dir.display())))?;
    std::fs::copy(snapshot, temp.path()).map_err(|e| {
        Error::Backend(format!(
            "cannot copy {} to {}: {e}",
            snapshot.display(),
            temp.path().display()
        ))
    })?;
    let start = {
        // Migrates an older format, as opening the store would.
        let mut conn = open_writer(temp.path())?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        let head = read_sequence(&tx)?;
        let scanned = read_meta(&tx, "compact_scanned")?;
        let start = head
            .checked_add(bump)
            .ok_or_else(|| Error::Backend(format!("revision {head} + bump {bump} is too large")))?;
        // The history before the snapshot's revision is compacted, as a
        // compaction up to it would: every superseded row and every delete.
        tx.execute(
            "DELETE FROM log WHERE revision IN
             (SELECT prev_revision FROM log WHERE revision > ?1 AND prev_revision > 0)",
            [scanned],
        )
        .map_err(sqlite)?;
        tx.execute(
            "DELETE FROM log WHERE revision > ?1 AND deleted = 1",
            [scanned],
        )
        .map_err(sqlite)?;
        let updated = tx
            .execute(
                "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'log'",
                [start],
            )
            .map_err(sqlite)?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('log', ?1)",
                [start],
            )
            .map_err(sqlite)?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name IN ('compact_revision', 'compact_scanned')",
            [start],
        )
        .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(sqlite)?;
        conn.close().map_err(|(_, e)| sqlite(e))?;
        start
    };
    let file = temp
        .persist_noclobber(dest)
        .map_err(|e| Error::Backend(format!("cannot write {}: {}", dest.display(), e.error)))?;
    file.sync_all()
        .map_err(|e| Error::Backend(format!("cannot sync {}: {e}", dest.display())))?;
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    info!(
        snapshot = %snapshot.display(),
        store = %dest.display(),
        revision = info.revision,
        next = start + 1,
        "store restored"
    );
    Ok(Restored {
        snapshot: info,
        start,
    })
}

/// What a restore made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// What the snapshot held.
    pub snapshot: SnapshotInfo,
    /// The restored store's revision and compaction mark: its next write is one past it.
    pub start: Revision,
}

fn sqlite(error: rusqlite::Error) -> Error {
    Error::Backend(format!("sqlite: {error}"))
}

/// Snapshot copies a crash left beside the store (their names are unlinked
/// as soon as a copy is complete, so any found under the lock are stale).
fn remove_stale_copies(path: &Path) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(SNAPSHOT_TEMP_PREFIX) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(file = %entry.path().display(), "removed a snapshot copy a crash left")
                }
                Err(error) => {
                    warn!(%error, file = %entry.path().display(), "cannot remove a stale snapshot copy")
                }
            }
        }
    }
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
    // Before anything is written to it: a newer Loom's file is left as it is.
    let found = format_version(&conn, path)?;
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
    upgrade(&conn, path, found)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// The format of the database this build reads and writes, kept in SQLite's
/// `user_version` (in the file's header, so snapshots carry it).
///
/// 1: the `log`, `current` and `meta` tables. A file from before formats were
/// recorded has 0 and the same tables.
pub const FORMAT_VERSION: i64 = 1;

/// The steps from an older format: `MIGRATIONS[v]` brings a file from format
/// `v` to `v + 1`, inside the transaction that opens it.
const MIGRATIONS: [&str; 1] = [
    // 0 → 1: the same tables; only the format is new.
    "",
];
const _: () = assert!(MIGRATIONS.len() as i64 == FORMAT_VERSION);

/// The file's format, refusing one newer than this build's.
fn format_version(conn: &Connection, path: &Path) -> Result<i64> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| Error::Backend(format!("cannot read the store {}: {e}", path.display())))?;
    if found > FORMAT_VERSION {
        return Err(Error::Backend(format!(
            "the store {} is in format {found}, newer than format {FORMAT_VERSION} that this \
             build of Loom reads: it was written by a newer Loom. Run that version (or a newer \
             one), or restore a snapshot this version took",
            path.display()
        )));
    }
    if found < 0 {
        return Err(Error::Backend(format!(
            "the store {} has an unknown format ({found}): it is not a Loom store",
            path.display()
        )));
    }
    Ok(found)
}

/// Creates the tables of a new file, or migrates an older one to
/// [`FORMAT_VERSION`], in one transaction: a crash leaves the old format.
fn upgrade(conn: &Connection, path: &Path, found: i64) -> Result<()> {
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log')",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite)?;
    if exists && found == FORMAT_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sqlite)?;
    let result = (|| -> Result<()> {
        if exists {
            let from = usize::try_from(found).unwrap_or(0);
            for (step, migration) in MIGRATIONS.iter().enumerate().skip(from) {
                conn.execute_batch(migration).map_err(|e| {
                    Error::Backend(format!(
                        "cannot migrate the store {} from format {step} to {}: {e}",
                        path.display(),
                        step + 1
                    ))
                })?;
            }
        }
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        conn.execute_batch(&format!("PRAGMA user_version = {FORMAT_VERSION}"))
            .map_err(sqlite)
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(sqlite)?,
        Err(error) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(error);
        }
    }
    if exists {
        info!(path = %path.display(), from = found, to = FORMAT_VERSION, "store migrated");
    }
    Ok(())
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

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temp dir")
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .and_then(|c| c.query_row("PRAGMA user_version", [], |row| row.get(0)))
            .expect("the file's user_version")
    }

    #[tokio::test]
    async fn a_store_from_before_formats_is_migrated() -> Result<()> {
        let dir = temp();
        let path = dir.path().join("loom.db");
        {
            // As the build before formats made it: the tables, user_version 0.
            let conn = Connection::open(&path).map_err(sqlite)?;
            conn.execute_batch("PRAGMA journal_mode = WAL;")
                .map_err(sqlite)?;
            conn.execute_batch(SCHEMA).map_err(sqlite)?;
            conn.execute(
                "INSERT INTO log (key, create_revision, prev_revision, deleted, value)
                 VALUES (?1, 1, 0, 0, x'7b7d')",
                [b"/a".as_slice()],
            )
            .map_err(sqlite)?;
            conn.execute(
                "INSERT INTO current (key, revision) VALUES (?1, 1)",
                [b"/a".as_slice()],
            )
            .map_err(sqlite)?;
        }
        assert_eq!(user_version(&path), 0);
        let store = EmbeddedStore::open(EmbeddedOptions::new(&path))?;
        let kv = store.get("/a").await?.expect("the old key");
        assert_eq!((kv.mod_revision, &kv.value[..]), (1, &b"{}"[..]));
        assert_eq!(
            store
                .create("/b", Bytes::from_static(b"{}"))
                .await?
                .mod_revision,
            2
        );
        store.close().await;
        assert_eq!(user_version(&path), FORMAT_VERSION);
        Ok(())
    }

    #[tokio::test]
    async fn a_snapshot_copy_a_crash_left_is_removed_at_open() -> Result<()> {
        let dir = temp();
        let stale = dir.path().join(format!("{SNAPSHOT_TEMP_PREFIX}abc123"));
        let other = dir.path().join("notes.txt");
        for file in [&stale, &other] {
            std::fs::write(file, b"x").map_err(|e| Error::Backend(e.to_string()))?;
        }
        EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("loom.db")))?
            .close()
            .await;
        assert!(!stale.exists());
        assert!(other.exists());
        Ok(())
    }

    #[tokio::test]
    async fn a_newer_store_is_refused_naming_the_file_and_formats() -> Result<()> {
        let dir = temp();
        let path = dir.path().join("loom.db");
        EmbeddedStore::open(EmbeddedOptions::new(&path))?
            .close()
            .await;
        let newer = FORMAT_VERSION + 1;
        Connection::open(&path)
            .and_then(|c| c.execute_batch(&format!("PRAGMA user_version = {newer}")))
            .map_err(sqlite)?;
        let error = EmbeddedStore::open(EmbeddedOptions::new(&path))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(
            error.contains(&format!(
                "format {newer}, newer than format {FORMAT_VERSION}"
            )),
            "{error}"
        );
        assert!(error.contains("newer Loom"), "{error}");
        // Left as it was, and a snapshot of it is refused too.
        assert_eq!(user_version(&path), newer);
        assert!(inspect(&path).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_restore_keeps_revisions_and_compacts_what_came_before() -> Result<()> {
        let dir = temp();
        let path = dir.path().join("loom.db");
        let store = EmbeddedStore::open(EmbeddedOptions::new(&path))?;
        let value = || Bytes::from_static(b"{}");
        let a = store.create("/k/a", value()).await?;
        let b = store.create("/k/b", value()).await?;
        let b = store.update("/k/b", value(), b.mod_revision).await?;
        let c = store.create("/k/c", value()).await?;
        store.delete("/k/c", Some(c.mod_revision)).await?;
        let snapshot = store.snapshot().await?;
        let taken_at = snapshot.revision;
        // Written after the snapshot: not in it.
        let late = store.create("/k/late", value()).await?;
        assert!(late.mod_revision > taken_at);
        let file = dir.path().join("snap.db");
        {
            let mut from = snapshot.file;
            let mut to = File::create(&file).map_err(|e| Error::Backend(e.to_string()))?;
            std::io::copy(&mut from, &mut to).map_err(|e| Error::Backend(e.to_string()))?;
        }
        store.close().await;
        // Only the named copy is left beside the store.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .map_err(|e| Error::Backend(e.to_string()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".loom-"))
            .collect();
        names.sort();
        assert!(names.is_empty(), "{names:?}");
        let info = inspect(&file)?;
        assert_eq!(
            (info.revision, info.keys, info.format),
            (taken_at, 2, FORMAT_VERSION)
        );

        let restored_path = dir.path().join("restored/loom.db");
        let restored = restore(&file, &restored_path, 1_000)?;
        assert_eq!(restored.start, taken_at + 1_000);
        assert!(
            restore(&file, &restored_path, 1_000).is_err(),
            "never over a store"
        );
        let store = EmbeddedStore::open(EmbeddedOptions::new(&restored_path))?;
        assert_eq!(
            store.get("/k/a").await?.map(|kv| kv.mod_revision),
            Some(a.mod_revision)
        );
        assert_eq!(
            store.get("/k/b").await?.map(|kv| kv.mod_revision),
            Some(b.mod_revision)
        );
        assert_eq!(store.get("/k/c").await?, None);
        assert_eq!(store.get("/k/late").await?, None);
        assert_eq!(store.current_revision().await?, taken_at + 1_000);
        let listed = store.list("/k/", ListOptions::default()).await?;
        assert_eq!(listed.items.len(), 2);
        assert_eq!(listed.revision, taken_at + 1_000);
        // A revision from the lost history (after the snapshot) is compacted.
        let mut watch = store.watch("/k/", late.mod_revision).await?;
        let first = futures::StreamExt::next(&mut watch).await;
        assert!(
            matches!(first, Some(Err(Error::Compacted { .. }))),
            "{first:?}"
        );
        let old_list = ListOptions {
            revision: Some(taken_at),
            ..ListOptions::default()
        };
        assert!(matches!(
            store.list("/k/", old_list).await,
            Err(Error::Compacted { .. })
        ));
        // Writes go on after the bump.
        let next = store.create("/k/d", value()).await?;
        assert_eq!(next.mod_revision, taken_at + 1_001);
        store.close().await;
        Ok(())
    }

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
