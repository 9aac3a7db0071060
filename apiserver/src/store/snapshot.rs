//! Snapshots of a whole store: what one is, which backend made it, and the
//! checks a snapshot file passes before anything is restored from it.
//!
//! The embedded store's snapshot is a SQLite database file (its online backup);
//! etcd's is etcd's own: the bbolt database followed by the SHA-256 of it, as
//! etcd's maintenance API streams it and `etcdutl snapshot restore` expects.
//! Both keep every key's revisions, so resourceVersions survive a restore.

use std::io::Read as _;
use std::path::Path;

use sha2::Digest as _;

use super::{Error, Result, Revision};

/// Which backend a snapshot is of: the two are restored differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// A SQLite database of the embedded store.
    Embedded,
    /// An etcd snapshot (bbolt database and its SHA-256).
    Etcd,
}

impl SnapshotKind {
    /// `embedded` or `etcd`.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::Embedded => "embedded",
            SnapshotKind::Etcd => "etcd",
        }
    }
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A consistent copy of a whole store, taken while it served.
#[derive(Debug)]
pub struct Snapshot {
    /// The backend it is of.
    pub kind: SnapshotKind,
    /// The store's revision the copy holds; for etcd, the revision read just
    /// before the copy began (the copy holds it or a later one).
    pub revision: Revision,
    /// The copy, already unlinked from the file system: read it from its
    /// start; it is gone when closed.
    pub file: std::fs::File,
    /// Its size in bytes.
    pub size: u64,
}

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// bbolt's magic number, in the meta page after the 16-byte page header.
const BBOLT_MAGIC: u32 = 0xED0C_DAED;
/// The SHA-256 etcd appends to the database it streams.
const ETCD_HASH_BYTES: u64 = 32;

/// Which backend the snapshot file at `path` is of, by its first bytes.
pub fn kind_of(path: &Path) -> Result<SnapshotKind> {
    let mut head = [0u8; 20];
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    file.read_exact(&mut head).map_err(|e| {
        Error::Backend(format!(
            "{} is not a Loom snapshot: too short ({e})",
            path.display()
        ))
    })?;
    if head.starts_with(SQLITE_MAGIC) {
        return Ok(SnapshotKind::Embedded);
    }
    if head[16..20] == BBOLT_MAGIC.to_le_bytes() {
        return Ok(SnapshotKind::Etcd);
    }
    Err(Error::Backend(format!(
        "{} is not a Loom snapshot: neither an embedded store's (SQLite) nor etcd's",
        path.display()
    )))
}

/// Checks an etcd snapshot file: bbolt's magic at its start and, at its end,
/// the SHA-256 of everything before it (a truncated or altered copy fails).
/// Returns the file's size.
pub fn check_etcd_snapshot(path: &Path) -> Result<u64> {
    if kind_of(path)? != SnapshotKind::Etcd {
        return Err(Error::Backend(format!(
            "{} is not an etcd snapshot",
            path.display()
        )));
    }
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let size = file.metadata().map_err(|e| io(path, e))?.len();
    if size <= ETCD_HASH_BYTES {
        return Err(Error::Backend(format!(
            "{} is too short for an etcd snapshot ({size} bytes)",
            path.display()
        )));
    }
    let mut hasher = sha2::Sha256::new();
    let mut remaining = size - ETCD_HASH_BYTES;
    let mut buffer = vec![0u8; 1 << 20];
    while remaining > 0 {
        let want = usize::try_from(remaining.min(buffer.len() as u64)).unwrap_or(buffer.len());
        let chunk = buffer.get_mut(..want).unwrap_or_default();
        file.read_exact(chunk).map_err(|e| io(path, e))?;
        hasher.update(&*chunk);
        remaining -= want as u64;
    }
    let mut trailer = [0u8; 32];
    file.read_exact(&mut trailer).map_err(|e| io(path, e))?;
    if hasher.finalize().as_slice() != trailer {
        return Err(Error::Backend(format!(
            "{}: the etcd snapshot's SHA-256 does not match its contents (truncated or altered)",
            path.display()
        )));
    }
    Ok(size)
}

fn io(path: &Path, error: std::io::Error) -> Error {
    Error::Backend(format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut file = std::fs::File::create(&path).expect("a temp file");
        file.write_all(bytes).expect("written");
        path
    }

    fn etcd_like(body_len: usize) -> Vec<u8> {
        let mut body = vec![7u8; body_len];
        body[16..20].copy_from_slice(&BBOLT_MAGIC.to_le_bytes());
        let hash = sha2::Sha256::digest(&body);
        body.extend_from_slice(&hash);
        body
    }

    #[test]
    fn kinds_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let sqlite = write(dir.path(), "a", b"SQLite format 3\0rest of the header");
        assert_eq!(kind_of(&sqlite).ok(), Some(SnapshotKind::Embedded));
        let etcd = write(dir.path(), "b", &etcd_like(4096));
        assert_eq!(kind_of(&etcd).ok(), Some(SnapshotKind::Etcd));
        let other = write(
            dir.path(),
            "c",
            b"{\"apiVersion\": \"v1\", \"kind\": \"List\"}",
        );
        let error = kind_of(&other)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("not a Loom snapshot"), "{error}");
        let short = write(dir.path(), "d", b"SQL");
        assert!(kind_of(&short).is_err());
    }

    #[test]
    fn an_etcd_snapshot_must_match_its_hash() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let good = etcd_like(3 << 20);
        let path = write(dir.path(), "good", &good);
        assert_eq!(check_etcd_snapshot(&path).ok(), Some(good.len() as u64));
        let mut altered = good.clone();
        altered[100] ^= 1;
        let path = write(dir.path(), "altered", &altered);
        let error = check_etcd_snapshot(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("does not match"), "{error}");
        let path = write(dir.path(), "truncated", &good[..good.len() - 1000]);
        assert!(check_etcd_snapshot(&path).is_err());
    }
}
