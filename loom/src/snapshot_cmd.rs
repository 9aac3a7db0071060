//! `loom snapshot`: save a consistent snapshot of a running cluster's store,
//! check one, and make a data dir from one.
//!
//! `save` asks the API server for `/snapshot` (a cluster administrator's
//! kubeconfig; either backend), or etcd's maintenance API straight
//! (`--etcd-endpoints`). The file is written beside FILE, checked (SQLite's
//! quick check and Loom's tables, or etcd's SHA-256 trailer), then renamed
//! into place, owner-only: it holds every Secret of the cluster.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use apiserver::store::embedded::{self, DEFAULT_RESTORE_BUMP};
use apiserver::store::snapshot::{SnapshotKind, check_etcd_snapshot, kind_of};
use apiserver::store::{EtcdOptions, EtcdStore, EtcdTls, Store as _};
use clap::Subcommand;
use futures::StreamExt as _;

use crate::node_cmd::ApiArgs;

/// `loom snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Save a consistent snapshot of the running cluster's store to FILE,
    /// through the API server (as a cluster administrator) or straight from
    /// etcd; the cluster keeps serving meanwhile.
    Save(SaveArgs),
    /// Make a data dir the API server starts from out of a snapshot: the same
    /// objects at the same resourceVersions.
    Restore(RestoreArgs),
    /// Check a snapshot file and say what it holds.
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct SaveArgs {
    /// Where to write the snapshot (replaced atomically if it exists).
    file: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
    /// Take etcd's snapshot straight from etcd (its client URLs, comma
    /// separated) rather than through the API server.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// With --etcd-endpoints over TLS: the PEM CA etcd's certificate chains to.
    #[arg(long, requires_all = ["etcd_certfile", "etcd_keyfile", "etcd_endpoints"])]
    etcd_cafile: Option<PathBuf>,
    /// The PEM client certificate presented to etcd.
    #[arg(long, requires = "etcd_cafile")]
    etcd_certfile: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long, requires = "etcd_cafile")]
    etcd_keyfile: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The snapshot file (of the embedded store; an etcd snapshot is restored
    /// with etcd's own tool, as the command explains).
    file: PathBuf,
    /// The data dir to make (`loom up --data-dir`); its store, loom.db, must
    /// not exist yet.
    #[arg(long)]
    data_dir: PathBuf,
    /// Revisions the restored store skips before its next write, so that a
    /// resourceVersion a client still holds from after the snapshot is older
    /// than the restored history and its watch gets 410 Gone (and relists).
    #[arg(long, default_value_t = DEFAULT_RESTORE_BUMP, value_parser = clap::value_parser!(i64).range(0..))]
    bump_revision: i64,
}

/// Runs `loom snapshot`.
pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Save(args) => save(args).await,
        SnapshotCommand::Restore(args) => tokio::task::spawn_blocking(move || restore(&args))
            .await
            .context("the restore panicked")?,
        SnapshotCommand::Status { file } => {
            let summary = tokio::task::spawn_blocking(move || check(&file))
                .await
                .context("the check panicked")??;
            println!("{summary}");
            Ok(())
        }
    }
}

async fn save(args: SaveArgs) -> anyhow::Result<()> {
    let partial = partial_path(&args.file);
    let result = if args.etcd_endpoints.is_empty() {
        save_through_api(&args.api, &partial).await
    } else {
        save_from_etcd(&args, &partial).await
    };
    let summary = result.and_then(|()| check(&partial));
    let summary = match summary {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, &args.file).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            args.file.display()
        )
    })?;
    println!("snapshot saved to {}: {summary}", args.file.display());
    Ok(())
}

/// `FILE.part`, beside FILE.
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// A new owner-only file (a snapshot holds every Secret).
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

async fn save_through_api(api: &ApiArgs, partial: &Path) -> anyhow::Result<()> {
    let client = api.client()?;
    let mut body = client
        .stream_as(
            apiserver::snapshot::SNAPSHOT_PATH,
            "application/octet-stream",
        )
        .await
        .with_context(|| format!("{} refused the snapshot", client.server()))?;
    let mut file = create_private(partial)?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the snapshot's download failed")?;
        file.write_all(&chunk)
            .with_context(|| format!("cannot write {}", partial.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    Ok(())
}

async fn save_from_etcd(args: &SaveArgs, partial: &Path) -> anyhow::Result<()> {
    let tls = match (&args.etcd_cafile, &args.etcd_certfile, &args.etcd_keyfile) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(EtcdTls::from_files(ca, cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoints = args
        .etcd_endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_owned()
            } else {
                format!("{scheme}://{e}")
            }
        })
        .collect();
    let mut options = EtcdOptions::new(endpoints);
    options.tls = tls;
    // Only reading: no part in compacting etcd.
    options.compaction_interval = std::time::Duration::ZERO;
    let store = EtcdStore::connect(options).await?;
    let snapshot = store.snapshot().await?;
    let partial = partial.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut from = snapshot.file;
        let mut to = create_private(&partial)?;
        std::io::copy(&mut from, &mut to)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        to.sync_all()
            .with_context(|| format!("cannot sync {}", partial.display()))?;
        Ok(())
    })
    .await
    .context("the copy panicked")?
}

/// Checks a snapshot file and says what it holds, in one line.
fn check(file: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    match kind_of(file)? {
        SnapshotKind::Embedded => {
            let info = embedded::inspect(file)?;
            Ok(format!(
                "embedded store snapshot (format {}) at revision {}, {} keys, {size} bytes",
                info.format, info.revision, info.keys
            ))
        }
        SnapshotKind::Etcd => {
            check_etcd_snapshot(file)?;
            Ok(format!(
                "etcd snapshot, {size} bytes, SHA-256 verified (restore it with etcdutl)"
            ))
        }
    }
}

fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    match kind_of(&args.file)? {
        SnapshotKind::Embedded => {
            let store = args.data_dir.join("loom.db");
            let restored = embedded::restore(&args.file, &store, args.bump_revision)?;
            println!(
                "restored {} into {}: {} keys at revision {}; the next write is revision {}",
                args.file.display(),
                store.display(),
                restored.snapshot.keys,
                restored.snapshot.revision,
                restored.start + 1
            );
            if !args.data_dir.join("pki").exists() {
                println!(
                    "{} has no pki/: copy the old data dir's pki/ into it before `loom up`, \
                     or loom up makes a new cluster CA and every old credential (nodes, \
                     kubeconfigs, service-account tokens) stops working",
                    args.data_dir.display()
                );
            }
            Ok(())
        }
        SnapshotKind::Etcd => anyhow::bail!(
            "{file} is an etcd snapshot: restore it with etcd's own tool into a new etcd data \
             dir, then start etcd on it and `loom apiserver --store etcd://...`:\n  \
             etcdutl snapshot restore {file} --data-dir {dir} --bump-revision {bump} --mark-compacted\n\
             (etcd 3.4's `etcdctl snapshot restore` has no --bump-revision: see docs/operations.md)",
            file = args.file.display(),
            dir = args.data_dir.display(),
            bump = args.bump_revision,
        ),
    }
}

/// Snapshots `loom up` takes on a schedule (`--snapshot-interval-seconds`).
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Where they go (`DATA_DIR/snapshots` by default).
    pub dir: PathBuf,
    /// How often.
    pub interval: std::time::Duration,
    /// How many are kept, the newest; older ones are removed.
    pub keep: usize,
}

/// The file name of a scheduled snapshot: sorts by time, says the revision.
fn scheduled_name(unix_seconds: u64, revision: i64) -> String {
    format!("loom-{unix_seconds:012}-r{revision}.snapshot")
}

/// The scheduled snapshots in `names` to remove so that `keep` remain: the
/// oldest (the names sort by time). Other files are never touched.
fn to_prune(mut names: Vec<String>, keep: usize) -> Vec<String> {
    names.retain(|n| n.starts_with("loom-") && n.ends_with(".snapshot"));
    names.sort();
    let excess = names.len().saturating_sub(keep);
    names.truncate(excess);
    names
}

/// Takes a snapshot of `store` into `schedule.dir` every interval, keeping
/// the newest `schedule.keep`, for as long as the process runs (a copy cut
/// short by its end is only ever a `.part` file).
pub async fn run_schedule(store: std::sync::Arc<dyn apiserver::store::Store>, schedule: Schedule) {
    loop {
        tokio::time::sleep(schedule.interval).await;
        match take_scheduled(&store, &schedule).await {
            Ok(path) => tracing::info!(file = %path.display(), "scheduled snapshot saved"),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "scheduled snapshot failed")
            }
        }
    }
}

async fn take_scheduled(
    store: &std::sync::Arc<dyn apiserver::store::Store>,
    schedule: &Schedule,
) -> anyhow::Result<PathBuf> {
    let snapshot = store.snapshot().await?;
    let schedule = schedule.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&schedule.dir)
            .with_context(|| format!("cannot create {}", schedule.dir.display()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let path = schedule.dir.join(scheduled_name(now, snapshot.revision));
        let partial = partial_path(&path);
        let written = (|| -> anyhow::Result<()> {
            let mut from = snapshot.file;
            let mut to = create_private(&partial)?;
            std::io::copy(&mut from, &mut to)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            to.sync_all()
                .with_context(|| format!("cannot sync {}", partial.display()))?;
            std::fs::rename(&partial, &path)
                .with_context(|| format!("cannot rename {}", partial.display()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written?;
        let names = std::fs::read_dir(&schedule.dir)
            .with_context(|| format!("cannot list {}", schedule.dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        for name in to_prune(names, schedule.keep) {
            let old = schedule.dir.join(name);
            if let Err(error) = std::fs::remove_file(&old) {
                tracing::warn!(%error, file = %old.display(), "cannot remove an old snapshot");
            }
        }
        Ok(path)
    })
    .await
    .context("the scheduled snapshot panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_snapshots_sort_by_time_and_the_oldest_go() {
        let names = vec![
            scheduled_name(1_700_000_100, 5),
            "notes.txt".to_owned(),
            scheduled_name(1_700_000_000, 1_000_000_007),
            scheduled_name(999, 3),
            format!("{}.part", scheduled_name(2_000_000_000, 9)),
            scheduled_name(1_700_000_200, 12),
        ];
        assert_eq!(
            to_prune(names.clone(), 2),
            vec![
                scheduled_name(999, 3),
                scheduled_name(1_700_000_000, 1_000_000_007)
            ]
        );
        assert!(to_prune(names.clone(), 4).is_empty());
        assert_eq!(to_prune(names, 0).len(), 4, "never other files");
    }
}
