//! The audit log's writer: a thread of its own appends the lines a bounded
//! queue hands it to a file, rotated by size, so no request ever waits on
//! the disk.
//!
//! A full queue drops the line and counts it
//! (`loom_apiserver_audit_events_dropped_total`) rather than blocking the
//! request: a log that stalls the API when the disk is slow would make the
//! disk everyone's bottleneck, and the counter (with a warning in the
//! server's log) says that the audit trail has a gap.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use prometheus_client::metrics::counter::Counter;
use tracing::warn;

/// Lines waiting for the writer at most.
pub const QUEUE_LINES: usize = 16_384;

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFile {
    /// The file (`-`: standard output, never rotated).
    pub path: PathBuf,
    /// Rotate before the file grows past this many bytes (0: never).
    pub max_size_bytes: u64,
    /// Rotated files kept (`PATH.1` the newest); 0 keeps every one.
    pub max_backups: usize,
}

/// The sending end: hands lines to the writer without waiting.
#[derive(Clone, Debug)]
pub struct Sender {
    queue: SyncSender<Vec<u8>>,
    dropped: Counter,
    drops: Arc<AtomicU64>,
}

impl Sender {
    /// Queues one line (with its newline), or drops and counts it when the
    /// queue is full.
    pub fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.inc();
                // A warning for the first drop and every thousandth after.
                if self
                    .drops
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1_000)
                {
                    warn!(
                        dropped = self.dropped.get(),
                        "the audit log's queue is full: audit events are being dropped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// Opens the log (creating it owner-only) and starts its writer thread,
/// which ends when every [`Sender`] is gone. `written` and `dropped` count
/// lines.
pub fn start(
    file: &LogFile,
    written: Counter,
    dropped: Counter,
) -> std::io::Result<(Sender, std::thread::JoinHandle<()>)> {
    let output = Output::open(file)?;
    let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE_LINES);
    let dropped_by_writer = dropped.clone();
    let thread = std::thread::Builder::new()
        .name("audit-log".to_owned())
        .spawn(move || write_lines(output, lines, written, dropped_by_writer))?;
    Ok((
        Sender {
            queue,
            dropped,
            drops: Arc::new(AtomicU64::new(0)),
        },
        thread,
    ))
}

fn write_lines(mut output: Output, lines: Receiver<Vec<u8>>, written: Counter, dropped: Counter) {
    // One line at a time from the queue, flushed once it is empty: a burst is
    // written in large writes, a lone request's line reaches the file at once.
    while let Ok(line) = lines.recv() {
        let mut next = Some(line);
        while let Some(line) = next {
            match output.write(&line) {
                Ok(()) => {
                    written.inc();
                }
                Err(error) => {
                    dropped.inc();
                    warn!(%error, path = %output.path.display(), "cannot write the audit log");
                }
            }
            next = lines.try_recv().ok();
        }
        if let Err(error) = output.flush() {
            warn!(%error, path = %output.path.display(), "cannot write the audit log");
        }
    }
    let _ = output.flush();
}

enum Sink {
    File(BufWriter<File>),
    Stdout(std::io::Stdout),
}

struct Output {
    path: PathBuf,
    max_size: u64,
    max_backups: usize,
    size: u64,
    sink: Sink,
}

impl Output {
    fn open(file: &LogFile) -> std::io::Result<Output> {
        let (sink, size) = if file.path == Path::new("-") {
            (Sink::Stdout(std::io::stdout()), 0)
        } else {
            let opened = open_append(&file.path)?;
            let size = opened
                .metadata()
                .map(|m| m.len())
                .map_err(|e| named(&file.path, e))?;
            (
                Sink::File(BufWriter::with_capacity(256 * 1024, opened)),
                size,
            )
        };
        Ok(Output {
            path: file.path.clone(),
            max_size: file.max_size_bytes,
            max_backups: file.max_backups,
            size,
            sink,
        })
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        let length = line.len() as u64;
        if self.max_size > 0 && self.size > 0 && self.size + length > self.max_size {
            self.rotate()?;
        }
        match &mut self.sink {
            Sink::File(file) => file.write_all(line)?,
            Sink::Stdout(out) => out.lock().write_all(line)?,
        }
        self.size += length;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::File(file) => file.flush(),
            Sink::Stdout(out) => out.flush(),
        }
    }

    /// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, …; the oldest
    /// beyond `max_backups` are removed; a new `PATH` is started.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Sink::File(file) = &mut self.sink else {
            return Ok(());
        };
        file.flush()?;
        let mut free = 1;
        while backup(&self.path, free).exists() {
            free += 1;
        }
        for n in (1..free).rev() {
            std::fs::rename(backup(&self.path, n), backup(&self.path, n + 1))
                .map_err(|e| named(&backup(&self.path, n), e))?;
        }
        std::fs::rename(&self.path, backup(&self.path, 1)).map_err(|e| named(&self.path, e))?;
        if self.max_backups > 0 {
            for n in self.max_backups + 1..=free {
                match std::fs::remove_file(backup(&self.path, n)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(named(&backup(&self.path, n), e)),
                }
            }
        }
        *file = BufWriter::with_capacity(256 * 1024, open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

/// `PATH.n`.
pub fn backup(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| named(path, e))
}

fn named(path: &Path, error: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        error.kind(),
        format!("audit log {}: {error}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn lines_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_are_appended_and_the_file_rotates_by_size_keeping_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = LogFile {
            path: path.clone(),
            max_size_bytes: 100,
            max_backups: 2,
        };
        let (written, dropped) = (Counter::default(), Counter::default());
        let (sender, thread) = start(&file, written.clone(), dropped.clone()).unwrap();
        // 10 lines of 40 bytes: two a file, so five files were written.
        for i in 0..10 {
            sender.send(format!("{i:039}\n").into_bytes());
        }
        drop(sender);
        thread.join().unwrap();
        assert_eq!(written.get(), 10);
        assert_eq!(dropped.get(), 0);
        assert_eq!(
            lines_in(&path),
            [format!("{:039}", 8), format!("{:039}", 9)]
        );
        assert_eq!(
            lines_in(&backup(&path, 1)),
            [format!("{:039}", 6), format!("{:039}", 7)]
        );
        assert_eq!(
            lines_in(&backup(&path, 2)),
            [format!("{:039}", 4), format!("{:039}", 5)]
        );
        assert!(!backup(&path, 3).exists(), "only two backups are kept");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn without_max_backups_every_rotated_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = LogFile {
            path: path.clone(),
            max_size_bytes: 10,
            max_backups: 0,
        };
        let (sender, thread) = start(&file, Counter::default(), Counter::default()).unwrap();
        for i in 0..5 {
            sender.send(format!("line-{i:03}\n").into_bytes());
        }
        drop(sender);
        thread.join().unwrap();
        assert_eq!(lines_in(&path), ["line-004"]);
        assert_eq!(lines_in(&backup(&path, 4)), ["line-000"]);
    }

    #[test]
    fn a_dash_is_standard_output_never_rotated() {
        let file = LogFile {
            path: PathBuf::from("-"),
            max_size_bytes: 1,
            max_backups: 1,
        };
        let written = Counter::default();
        let (sender, thread) = start(&file, written.clone(), Counter::default()).unwrap();
        sender.send(b"{\"kind\":\"Event\"}\n".to_vec());
        sender.send(b"{\"kind\":\"Event\"}\n".to_vec());
        drop(sender);
        thread.join().unwrap();
        assert_eq!(written.get(), 2);
        assert!(!Path::new("-.1").exists());
    }

    #[test]
    fn a_log_that_cannot_be_opened_is_an_error_naming_it() {
        let file = LogFile {
            path: PathBuf::from("/nonexistent-dir/audit.log"),
            max_size_bytes: 0,
            max_backups: 0,
        };
        let error = start(&file, Counter::default(), Counter::default()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("audit log /nonexistent-dir/audit.log: "),
            "{error}"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, lines) = std::sync::mpsc::sync_channel(2);
        let dropped = Counter::default();
        let sender = Sender {
            queue,
            dropped: dropped.clone(),
            drops: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..5 {
            sender.send(b"x\n".to_vec());
        }
        assert_eq!(dropped.get(), 3);
        assert_eq!(lines.try_iter().count(), 2);
    }
}
