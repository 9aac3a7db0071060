//! Task log files: written by the shim with a size cap (the file rotates to
//! `NAME.1` past the cap, so a task keeps at most twice the cap), read back whole,
//! by their last lines, or followed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Appends to a log file, rotating it at `max_bytes`.
#[derive(Debug)]
pub struct RotatingWriter {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl RotatingWriter {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<RotatingWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingWriter {
            path: path.to_owned(),
            file,
            written,
            max_bytes: max_bytes.max(1024),
        })
    }

    /// Appends `bytes`, rotating first if they would pass the cap.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + bytes.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// The rotated file of `path`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The whole log (rotated part first).
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = std::fs::read(rotated(path)).unwrap_or_default();
    match std::fs::read(path) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// The last `lines` lines of `bytes` (a final line without a newline counts).
pub fn tail(bytes: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return &bytes[bytes.len()..];
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

/// Follows a log file from `offset`: yields new bytes as they are written,
/// across rotations.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
}

impl Follower {
    /// Follows `path` from byte `offset` of its current file.
    pub fn new(path: &Path, offset: u64) -> Follower {
        Follower {
            path: path.to_owned(),
            file: None,
            inode: 0,
            offset,
        }
    }

    /// Reads what was appended since the last call (empty if nothing).
    pub fn poll(&mut self) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::MetadataExt as _;
        let mut out = Vec::new();
        if let Ok(meta) = std::fs::metadata(&self.path)
            && meta.ino() != self.inode
        {
            // The file rotated (or appeared): finish the old one, start the new one.
            if let Some(file) = self.file.as_mut() {
                file.read_to_end(&mut out)?;
                self.offset = 0;
            }
            let mut file = File::open(&self.path)?;
            file.seek(SeekFrom::Start(self.offset.min(meta.len())))?;
            self.file = Some(file);
            self.inode = meta.ino();
        }
        if let Some(file) = self.file.as_mut() {
            let read = file.read_to_end(&mut out)?;
            self.offset += read as u64;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
        assert_eq!(tail(b"", 3), b"");
    }

    #[test]
    fn rotation_caps_the_log_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut writer = RotatingWriter::open(&path, 1024).unwrap();
        for i in 0..1000 {
            writer.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        let all = read_all(&path).unwrap();
        assert!(all.len() <= 2048, "{} bytes kept", all.len());
        assert!(all.ends_with(b"line 999\n"));
        assert_eq!(tail(&all, 1), b"line 999\n");
    }

    #[test]
    fn a_follower_sees_appends_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut writer = RotatingWriter::open(&path, 1024).unwrap();
        writer.write(b"first\n").unwrap();
        let mut follower = Follower::new(&path, 0);
        assert_eq!(follower.poll().unwrap(), b"first\n");
        assert_eq!(follower.poll().unwrap(), b"");
        let mut expected = Vec::new();
        for i in 0..200 {
            let line = format!("line {i}\n");
            writer.write(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
            if i % 50 == 0 {
                // Poll while rotations happen in between.
                let got = follower.poll().unwrap();
                assert!(expected.starts_with(&got));
                expected.drain(..got.len());
            }
        }
        let got = follower.poll().unwrap();
        assert_eq!(got, expected);
    }
}
