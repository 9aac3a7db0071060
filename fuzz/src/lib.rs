//! Fuzzing Loom's decoders on stable Rust: one target per decoder, each
//! calling the code the API server, loomctl or the nodelet runs on what it is
//! given, checking invariants beyond "no panic"; a committed corpus
//! (`fuzz/corpus/TARGET/`) replayed as tests; and a coverage-free mutation
//! loop (byte flips, splices, dictionary tokens, structure-aware generators)
//! bounded by time, for CI (seconds) and long runs (hours).
//!
//! A target is a [`Harness`]: `run(&[u8])` returns `Err` when an invariant
//! breaks; a panic is caught and counts as a failure too.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod mutate;
pub mod targets;

pub use mutate::Rng;

/// One fuzz target, made ready to run inputs (it may hold a store, a runtime
/// or a temp dir, dropped when the run ends).
pub trait Harness {
    /// Runs one input: `Err` names the invariant it broke.
    fn run(&mut self, input: &[u8]) -> Result<(), String>;
}

impl<F: FnMut(&[u8]) -> Result<(), String>> Harness for F {
    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        self(input)
    }
}

/// A target: its name (its corpus directory), how to make its harness, how to
/// generate a fresh input, and tokens mutations insert.
#[derive(Clone, Copy)]
pub struct Target {
    /// Its name, also the directory of its corpus.
    pub name: &'static str,
    /// What it fuzzes, one line.
    pub about: &'static str,
    /// Makes the harness.
    pub harness: fn() -> Box<dyn Harness>,
    /// A structure-aware input, made from scratch.
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Tokens that mean something to the decoder (`..`, `in`, `Mi`, `{`).
    pub dictionary: &'static [&'static str],
    /// Repairs a mutated input so it gets past a checksum (tar headers).
    pub fixup: Option<fn(&mut [u8])>,
    /// The largest input mutations build.
    pub max_len: usize,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

/// Every target.
pub fn all() -> Vec<Target> {
    targets::all()
}

/// The target named `name`.
pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

/// The committed corpus's root (`fuzz/corpus`).
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// An input that broke an invariant or panicked.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The input.
    pub input: Vec<u8>,
    /// What went wrong.
    pub message: String,
    /// Where it came from (a corpus file, or "mutated").
    pub origin: String,
    /// Where it was saved, if it was.
    pub saved: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}\n  input ({} bytes): {}",
            self.origin,
            self.message,
            self.input.len(),
            escape(&self.input, 600)
        )?;
        if let Some(saved) = &self.saved {
            write!(f, "\n  saved as {}", saved.display())?;
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Corpus files replayed.
    pub replayed: usize,
    /// Inputs run in all (replayed and mutated).
    pub executions: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Every failure (at most [`MAX_FAILURES`]).
    pub failures: Vec<Failure>,
}

impl Outcome {
    /// Executions per second.
    pub fn rate(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A run stops after this many failures.
pub const MAX_FAILURES: usize = 20;

/// An input slower than this is a failure (a hang, or work out of proportion).
pub const SLOW: Duration = Duration::from_secs(10);

/// How a run goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long to mutate after the corpus is replayed.
    pub duration: Duration,
    /// The random seed (printed, so a run can be repeated).
    pub seed: u64,
    /// Where failing inputs are saved (`crash-HASH`), if anywhere.
    pub save_crashes: Option<PathBuf>,
    /// The corpus directory (default `fuzz/corpus/TARGET`).
    pub corpus: Option<PathBuf>,
}

/// Runs one input, catching a panic.
pub fn check(harness: &mut dyn Harness, input: &[u8]) -> Result<(), String> {
    let started = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| harness.run(input))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(format!("panicked: {message}"))
        }
    };
    let took = started.elapsed();
    match result {
        Ok(()) if took > SLOW => Err(format!("took {took:?}, more than {SLOW:?}")),
        other => other,
    }
}

/// The corpus files of a directory, sorted, with their names.
pub fn read_corpus(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path())?));
        }
    }
    files.sort();
    Ok(files)
}

/// A stable short name for an input (FNV-1a, 64 bits).
pub fn input_hash(input: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Replays the corpus of `target`, then mutates it for `options.duration`.
pub fn run(target: &Target, options: &RunOptions) -> std::io::Result<Outcome> {
    let dir = options
        .corpus
        .clone()
        .unwrap_or_else(|| corpus_root().join(target.name));
    let corpus = read_corpus(&dir)?;
    let mut harness = (target.harness)();
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let fail = |outcome: &mut Outcome, input: &[u8], message: String, origin: String| {
        let saved = options.save_crashes.as_ref().and_then(|dir| {
            let path = dir.join(format!("crash-{}", input_hash(input)));
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, input))
                .ok()
                .map(|()| path)
        });
        outcome.failures.push(Failure {
            input: input.to_vec(),
            message,
            origin,
            saved,
        });
    };
    for (name, input) in &corpus {
        outcome.executions += 1;
        if let Err(message) = check(harness.as_mut(), input) {
            // A corpus file is already saved.
            outcome.failures.push(Failure {
                input: input.clone(),
                message,
                origin: format!("corpus file {}", dir.join(name).display()),
                saved: None,
            });
        }
    }
    outcome.replayed = corpus.len();
    let inputs: Vec<Vec<u8>> = corpus.into_iter().map(|(_, input)| input).collect();
    let mut rng = Rng::new(options.seed);
    let deadline = Instant::now() + options.duration;
    while Instant::now() < deadline && outcome.failures.len() < MAX_FAILURES {
        let input = mutate::next_input(target, &inputs, &mut rng);
        outcome.executions += 1;
        if let Err(message) = check(harness.as_mut(), &input) {
            fail(&mut outcome, &input, message, "mutated".to_owned());
        }
    }
    drop(harness);
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// `input` as text a person can read: printable ASCII kept, the rest escaped,
/// cut at `max` bytes.
pub fn escape(input: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in input.iter().take(max) {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b' '..=b'~' => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if input.len() > max {
        out.push_str("...");
    }
    out
}

/// The seed of a run: `LOOM_FUZZ_SEED`, else the clock.
pub fn seed_from_env() -> u64 {
    std::env::var("LOOM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// How long each target mutates in tests: `LOOM_FUZZ_SECONDS` (default 2).
pub fn seconds_from_env() -> f64 {
    std::env::var("LOOM_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .unwrap_or(2.0)
}
