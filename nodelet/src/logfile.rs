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
        let file = open_append(path)?;
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
            self.file = open_append(&self.path)?;
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

/// Opens a log file for appending: never through a symbolic link, and only a
/// regular file.
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    regular(file, path)
}

/// Opens a log file for reading: never through a symbolic link, never a
/// device, a pipe or a directory.
pub fn open_read(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    regular(file, path)
}

fn regular(file: File, path: &Path) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ))
    }
}

/// The whole log (rotated part first), at most its last `max` bytes.
pub fn read_all(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut found = false;
    for part in [rotated(path), path.to_owned()] {
        match open_read(&part) {
            Ok(mut file) => {
                found = true;
                // Only the newest `max` bytes of each part can be kept.
                let len = file.metadata()?.len();
                file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
                file.take(max).read_to_end(&mut out)?;
                if out.len() as u64 > max {
                    out.drain(..out.len() - max as usize);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !found {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no log yet"));
    }
    Ok(out)
}

/// The log as a stream (rotated part first), at most `max` bytes: what the
/// endpoint sends for a whole log, never held in memory at once.
pub fn stream(
    path: &Path,
    max: u64,
) -> io::Result<impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static> {
    use tokio::io::AsyncReadExt as _;
    let open = |part: &Path| match open_read(part) {
        Ok(file) => Ok(Some(tokio::fs::File::from_std(file))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let old = open(&rotated(path))?;
    let new = open(path)?;
    let empty = || tokio::io::empty();
    let reader: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> = match (old, new) {
        (Some(old), Some(new)) => Box::pin(old.chain(new).take(max)),
        (Some(old), None) => Box::pin(old.take(max)),
        (None, Some(new)) => Box::pin(new.take(max)),
        (None, None) => Box::pin(empty()),
    };
    Ok(tokio_util::io::ReaderStream::new(reader))
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

/// The most a follower returns from one poll.
const FOLLOW_CHUNK: u64 = 1 << 20;

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
                file.take(FOLLOW_CHUNK).read_to_end(&mut out)?;
                self.offset = 0;
            }
            let mut file = open_read(&self.path)?;
            file.seek(SeekFrom::Start(self.offset.min(meta.len())))?;
            self.file = Some(file);
            self.inode = meta.ino();
        }
        if let Some(file) = self.file.as_mut() {
            let room = FOLLOW_CHUNK.saturating_sub(out.len() as u64);
            let read = file.take(room).read_to_end(&mut out)?;
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
        let all = read_all(&path, 1 << 20).unwrap();
        assert!(all.len() <= 2048, "{} bytes kept", all.len());
        assert_eq!(read_all(&path, 9).unwrap(), b"line 999\n");
        assert!(all.ends_with(b"line 999\n"));
        assert_eq!(tail(&all, 1), b"line 999\n");
    }

    #[test]
    fn only_regular_files_are_read_and_never_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root's secret").unwrap();
        let path = dir.path().join("log");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert!(read_all(&path, 1 << 20).is_err());
        assert!(RotatingWriter::open(&path, 1024).is_err());
        assert_eq!(std::fs::read(&secret).unwrap(), b"root's secret");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(read_all(&path, 1 << 20).is_err());
        assert!(open_read(Path::new("/dev/zero")).is_err());
        assert!(open_read(dir.path()).is_err());
    }

    #[tokio::test]
    async fn a_streamed_log_is_bounded() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut writer = RotatingWriter::open(&path, 1024).unwrap();
        for i in 0..100 {
            writer.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        let mut got = Vec::new();
        let mut short = std::pin::pin!(stream(&path, 100).unwrap());
        while let Some(chunk) = short.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got.len(), 100);
        let mut whole = Vec::new();
        let mut long = std::pin::pin!(stream(&path, 1 << 20).unwrap());
        while let Some(chunk) = long.next().await {
            whole.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(whole, read_all(&path, 1 << 20).unwrap());
        assert!(whole.ends_with(b"line 99\n"));
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
