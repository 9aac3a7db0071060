//! Cgroups: the raw driver's own (v1 hierarchies, or the unified v2 tree when the
//! machine has no v1 controllers), OOM detection and usage sampling for every driver.

use std::io;
use std::path::{Path, PathBuf};

use crate::run::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// The controllers Loom uses, by their v1 hierarchy name.
const CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

/// The rules libcontainer 0.7 always allows (libcgroups' `default_allow_devices`)
/// that Loom's spec does not.
const EXTRA_DEVICES: [&str; 4] = ["c *:* m", "b *:* m", "c 5:1 rwm", "c 10:200 rwm"];

/// Whether this machine uses cgroup v1 hierarchies for memory (hybrid or legacy).
pub fn is_v1() -> bool {
    Path::new(ROOT).join("memory").is_dir()
}

/// One cgroup path (e.g. `/loom/node-a/ID`) across the controllers.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: String,
}

impl Cgroup {
    /// The cgroup at `path` below each controller's root.
    pub fn new(path: &str) -> Cgroup {
        Cgroup {
            path: path.trim_start_matches('/').to_owned(),
        }
    }

    /// The directory of this cgroup in `controller`'s hierarchy.
    pub fn dir(&self, controller: &str) -> PathBuf {
        if is_v1() {
            Path::new(ROOT).join(controller).join(&self.path)
        } else {
            Path::new(ROOT).join(&self.path)
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        if is_v1() {
            CONTROLLERS.iter().map(|c| self.dir(c)).collect()
        } else {
            vec![self.dir("")]
        }
    }

    /// Creates the cgroup and writes its limits.
    pub fn create(&self, limits: &Limits) -> io::Result<()> {
        for dir in self.dirs() {
            std::fs::create_dir_all(&dir)?;
        }
        if is_v1() {
            if let Some(millis) = limits.cpu_millis {
                let period = 100_000u64;
                let quota = (millis * period / 1000).max(1000);
                write(&self.dir("cpu"), "cpu.cfs_period_us", &period.to_string())?;
                write(&self.dir("cpu"), "cpu.cfs_quota_us", &quota.to_string())?;
            }
            if let Some(bytes) = limits.memory_bytes {
                write(
                    &self.dir("memory"),
                    "memory.limit_in_bytes",
                    &bytes.to_string(),
                )?;
            }
            if let Some(pids) = limits.pids {
                write(&self.dir("pids"), "pids.max", &pids.to_string())?;
            }
        } else {
            let dir = self.dir("");
            if let Some(millis) = limits.cpu_millis {
                let period = 100_000u64;
                let quota = (millis * period / 1000).max(1000);
                write(&dir, "cpu.max", &format!("{quota} {period}"))?;
            }
            if let Some(bytes) = limits.memory_bytes {
                write(&dir, "memory.max", &bytes.to_string())?;
                let _ = write(&dir, "memory.swap.max", "0");
            }
            if let Some(pids) = limits.pids {
                write(&dir, "pids.max", &pids.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process joins (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = if is_v1() {
            self.dir("pids")
        } else {
            self.dir("")
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Sends SIGKILL to every process in the cgroup until it is empty (at most ~2 s).
    pub fn kill_all(&self) {
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from the cgroup; no memory is touched.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether the memory controller killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        if is_v1() {
            let text = std::fs::read_to_string(self.dir("memory").join("memory.oom_control"))
                .unwrap_or_default();
            counter(&text, "oom_kill") > 0
        } else {
            let text =
                std::fs::read_to_string(self.dir("").join("memory.events")).unwrap_or_default();
            counter(&text, "oom_kill") > 0
        }
    }

    /// Memory in use, in bytes.
    pub fn memory_bytes(&self) -> Option<u64> {
        let (dir, file) = if is_v1() {
            (self.dir("memory"), "memory.usage_in_bytes")
        } else {
            (self.dir(""), "memory.current")
        };
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// CPU time used so far, in nanoseconds.
    pub fn cpu_nanos(&self) -> Option<u64> {
        if is_v1() {
            std::fs::read_to_string(self.dir("cpuacct").join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
        } else {
            let text = std::fs::read_to_string(self.dir("").join("cpu.stat")).ok()?;
            Some(counter(&text, "usage_usec") * 1000)
        }
    }

    /// Takes back the device access libcontainer grants every container beyond its
    /// spec (cgroup v1: `c *:* m`, `b *:* m`, the console and tun/tap), so the
    /// spec's rules are the whole list. On v2 devices are an eBPF program that
    /// cannot be amended; there the missing CAP_MKNOD and a `/dev` without those
    /// nodes keep them out of reach.
    pub fn deny_extra_devices(&self) -> io::Result<()> {
        if !is_v1() {
            return Ok(());
        }
        let dir = self.dir("devices");
        for rule in EXTRA_DEVICES {
            write(&dir, "devices.deny", rule)?;
        }
        Ok(())
    }

    /// The device rules in force (cgroup v1's `devices.list`).
    pub fn device_list(&self) -> io::Result<String> {
        std::fs::read_to_string(self.dir("devices").join("devices.list"))
    }

    /// This cgroup's directories in every hierarchy that has it (libcontainer
    /// makes a container's in every v1 hierarchy, not only Loom's four).
    pub fn dirs_everywhere(&self) -> Vec<PathBuf> {
        if !is_v1() {
            return vec![self.dir("")]
                .into_iter()
                .filter(|d| d.is_dir())
                .collect();
        }
        std::fs::read_dir(ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(&self.path))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Removes what is left of a dead run's cgroup: SIGKILL to every process
    /// still in it, or in a cgroup below it, in any hierarchy, until none is
    /// left (at most ~2 s), then its directories, deepest first. Returns the
    /// processes that were killed.
    pub fn remove_leftovers(&self) -> usize {
        let dirs = self.dirs_everywhere();
        let mut killed = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let pids: Vec<i32> = dirs.iter().flat_map(|d| pids_below(d)).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                killed.insert(pid);
                // SAFETY: kill(2) with a pid read from the cgroup; no memory is touched.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for dir in &dirs {
            for _ in 0..50 {
                remove_empty(dir);
                if !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        killed.len()
    }

    /// Removes the cgroup's directories (it must be empty).
    pub fn remove(&self) {
        for dir in self.dirs() {
            for _ in 0..50 {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

/// Removes empty cgroup directories below `parent` (e.g. `/loom/node-a`) in every
/// hierarchy, and `parent` itself if empty.
pub fn remove_tree(parent: &str) {
    let cgroup = Cgroup::new(parent);
    for dir in cgroup.dirs() {
        remove_empty(&dir);
    }
}

/// The processes in the cgroup at `dir` and in the cgroups below it.
fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(pids_below(&entry.path()));
        }
    }
    pids
}

fn remove_empty(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write {value} to {}: {e}", dir.join(file).display()),
        )
    })
}

/// The value of `name` in a `name value` per line file.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(text, "oom_kill"), 2);
        assert_eq!(counter(text, "under_oom"), 0);
        assert_eq!(counter(text, "missing"), 0);
    }
}
