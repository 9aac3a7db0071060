//! The format of a nodelet's state dir, kept in its `state-version` file and
//! checked when the nodelet starts: an older dir is migrated, a newer one (a
//! newer Loom's) refused with a message naming the file and both formats.

use std::path::{Path, PathBuf};

/// The format this build reads and writes.
///
/// 1: `tasks/<uid>/` run records, `containers/`, `images/` (an OCI store). A
/// dir from before formats were recorded has no file: format 0, the same layout.
pub const STATE_FORMAT: u32 = 1;

/// The file holding the format, in the state dir.
pub const VERSION_FILE: &str = "state-version";

/// What is wrong with a state dir's format.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Written by a newer nodelet.
    #[error(
        "the nodelet state dir {dir} is in format {found}, newer than format {STATE_FORMAT} that \
         this build of Loom reads ({file}): it was written by a newer Loom. Run that version (or \
         a newer one), or give this one another --state-dir"
    )]
    Newer {
        /// The state dir.
        dir: PathBuf,
        /// Its version file.
        file: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The version file holds something else than a format number.
    #[error("{file}: not a state format number ({content:?})")]
    Unreadable {
        /// The version file.
        file: PathBuf,
        /// What it holds (at most 64 bytes of it).
        content: String,
    },
    /// Reading or writing the version file failed.
    #[error("{file}: {source}")]
    Io {
        /// The version file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The steps from an older format: `MIGRATIONS[v]` brings a dir from format
/// `v` to `v + 1`.
const MIGRATIONS: [fn(&Path) -> std::io::Result<()>; 1] = [
    // 0 → 1: the same layout; only the version file is new.
    |_| Ok(()),
];
const _: () = assert!(MIGRATIONS.len() as u32 == STATE_FORMAT);

/// The format of the state dir `dir` as found: 0 for a dir without a version
/// file (a new one, or one from before formats were recorded).
pub fn read(dir: &Path) -> Result<u32, Error> {
    let file = dir.join(VERSION_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => text.trim().parse().map_err(|_| Error::Unreadable {
            content: text.chars().take(64).collect(),
            file,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(Error::Io { file, source }),
    }
}

/// Opens the state dir `dir` (creating it if missing): refuses a newer format,
/// migrates an older one, and records [`STATE_FORMAT`]. Returns the format
/// found before.
pub fn open(dir: &Path) -> Result<u32, Error> {
    let file = dir.join(VERSION_FILE);
    let io = |source| Error::Io {
        file: file.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let found = read(dir)?;
    if found > STATE_FORMAT {
        return Err(Error::Newer {
            dir: dir.to_owned(),
            file,
            found,
        });
    }
    if found == STATE_FORMAT {
        return Ok(found);
    }
    for migrate in MIGRATIONS.iter().skip(found as usize) {
        migrate(dir).map_err(io)?;
    }
    // Written whole beside, then renamed: a crash leaves the old or the new.
    let temp = dir.join(format!(".{VERSION_FILE}.tmp"));
    std::fs::write(&temp, format!("{STATE_FORMAT}\n")).map_err(io)?;
    std::fs::rename(&temp, &file).map_err(io)?;
    if found > 0 || dir.join("tasks").exists() {
        tracing::info!(dir = %dir.display(), from = found, to = STATE_FORMAT, "nodelet state dir migrated");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_gets_the_current_format() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let state = dir.path().join("state");
        assert_eq!(open(&state).ok(), Some(0));
        assert_eq!(read(&state).ok(), Some(STATE_FORMAT));
        // Opening again finds it current.
        assert_eq!(open(&state).ok(), Some(STATE_FORMAT));
    }

    #[test]
    fn an_unversioned_dir_is_migrated() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("tasks/u1")).expect("a run dir");
        assert_eq!(open(dir.path()).ok(), Some(0));
        assert_eq!(read(dir.path()).ok(), Some(STATE_FORMAT));
        assert!(dir.path().join("tasks/u1").exists(), "runs are kept");
    }

    #[test]
    fn a_newer_dir_is_refused_naming_the_file_and_formats() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join(VERSION_FILE);
        std::fs::write(&file, format!("{}\n", STATE_FORMAT + 1)).expect("written");
        let error = open(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(
            error.contains(&format!("format {}", STATE_FORMAT + 1)),
            "{error}"
        );
        assert!(error.contains(&format!("format {STATE_FORMAT}")), "{error}");
        // Left as it was.
        assert_eq!(read(dir.path()).ok(), Some(STATE_FORMAT + 1));
    }

    /// The state dir of the committed data dir fixture, made by the build
    /// that introduced format 1, opens in this one.
    #[test]
    fn the_format_1_fixture_opens() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testing/fixtures/data-dir-format-1/nodelet");
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::copy(fixture.join(VERSION_FILE), dir.path().join(VERSION_FILE))
            .expect("the fixture's version file");
        assert_eq!(open(dir.path()).ok(), Some(1));
        assert_eq!(read(dir.path()).ok(), Some(STATE_FORMAT));
    }

    #[test]
    fn a_garbled_version_file_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(VERSION_FILE), "one\n").expect("written");
        assert!(matches!(open(dir.path()), Err(Error::Unreadable { .. })));
    }
}
