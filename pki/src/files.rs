//! Reading and writing credential files: private ones `0600`, every write
//! atomic and durable (a crash leaves the old file or the new one).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::{Error, Result};

/// Reads a text file, the error naming it.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file only its owner may read (a private key, a token).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    write(path, contents, 0o600)
}

/// Writes a file anyone may read (a certificate, a public key).
pub fn write_public(path: &Path, contents: &str) -> Result<()> {
    write(path, contents, 0o644)
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let failed = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    // A leftover of a crash may have other permissions: start afresh.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    std::fs::rename(tmp, path).map_err(failed)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn private_files_are_owner_only_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        // A stale temp file of a crash, readable by all.
        std::fs::write(dir.path().join("a.key.tmp"), "old").unwrap();
        write_private(&path, "secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_file(&path).unwrap(), "secret");
        write_public(&dir.path().join("a.crt"), "cert").unwrap();
        let mode = std::fs::metadata(dir.path().join("a.crt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(!dir.path().join("a.key.tmp").exists());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let error = read_file(Path::new("/nonexistent/ca.key")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.key"), "{error}");
    }
}
