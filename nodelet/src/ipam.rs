//! Task addresses from the node's task subnet, one per run, kept as files:
//! `STATE/ipam/SUBNET/IP` holds the run directory the address is lent to.
//! Each is made with `O_EXCL` (two starts never get one address) and removed
//! when its run ends; a nodelet restart keeps a running task's address (the
//! file stays). Addresses go round the subnet (the next after the last one
//! lent, across restarts), so an address just freed is not reused at once
//! while connections to it may linger. An address whose run ended without
//! giving it back (the nodelet died first) is taken back when the subnet
//! runs out, or by [`Ipam::reclaim`].

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::run::write_replace;

/// The addresses of one subnet.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
    /// Serialises this process's allocations (the files make them safe
    /// across processes; this makes the round-robin cursor consistent).
    lock: Mutex<()>,
}

/// The subnet has no address left.
pub const EXHAUSTED: &str = "AddressesExhausted";

impl Ipam {
    /// The addresses of `subnet`, kept under `state_dir/ipam`.
    pub fn new(state_dir: &Path, subnet: Ipv4Net) -> Ipam {
        let name = format!("{}_{}", subnet.network(), subnet.prefix_len());
        Ipam {
            dir: state_dir.join("ipam").join(name),
            subnet,
            lock: Mutex::new(()),
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The addresses a task may get: the subnet's hosts but the first (the
    /// gateway on the bridge).
    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.subnet.hosts().skip(1)
    }

    fn last(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join("last"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|ip| self.subnet.contains(ip))
    }

    /// Lends an address to `owner` (a run directory). `ended(owner)` says
    /// whether a holder's run is over, for taking addresses back when none
    /// is free.
    pub fn allocate(&self, owner: &Path, ended: impl Fn(&Path) -> bool) -> io::Result<Ipv4Addr> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(&self.dir)?;
        for attempt in 0..2 {
            if attempt == 1 && self.reclaim_locked(&ended)? == 0 {
                break;
            }
            let all: Vec<Ipv4Addr> = self.candidates().collect();
            if all.is_empty() {
                break;
            }
            let start = self
                .last()
                .and_then(|last| all.iter().position(|ip| *ip == last))
                .map_or(0, |i| i + 1);
            for i in 0..all.len() {
                let ip = all[(start + i) % all.len()];
                if self.claim(ip, owner)? {
                    let _ = write_replace(&self.dir.join("last"), ip.to_string().as_bytes());
                    return Ok(ip);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("the node's task subnet {} has no free address", self.subnet),
        ))
    }

    /// Takes `ip` for `owner` if it is free.
    fn claim(&self, ip: Ipv4Addr, owner: &Path) -> io::Result<bool> {
        use std::io::Write as _;
        let path = self.dir.join(ip.to_string());
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        let written = file
            .write_all(owner.as_os_str().as_encoded_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(true)
    }

    /// Who holds `ip`.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<PathBuf> {
        std::fs::read(self.dir.join(ip.to_string()))
            .ok()
            .map(|bytes| PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Gives `ip` back if `owner` holds it.
    pub fn release(&self, ip: Ipv4Addr, owner: &Path) -> io::Result<bool> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.holder(ip).as_deref() != Some(owner) {
            return Ok(false);
        }
        match std::fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives back every address `owner` holds. Returns how many.
    pub fn release_owner(&self, owner: &Path) -> io::Result<usize> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.reclaim_locked(&|holder: &Path| holder == owner)
    }

    /// Takes back every address whose run `ended`. Returns how many.
    pub fn reclaim(&self, ended: impl Fn(&Path) -> bool) -> io::Result<usize> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.reclaim_locked(&ended)
    }

    fn reclaim_locked(&self, ended: &dyn Fn(&Path) -> bool) -> io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut taken = 0;
        for entry in entries.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let Some(owner) = self.holder(ip) else {
                continue;
            };
            if ended(&owner) {
                std::fs::remove_file(entry.path())?;
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// How many addresses are lent.
    pub fn in_use(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|s| s.parse::<Ipv4Addr>().is_ok())
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ipam(dir: &Path, net: &str) -> Ipam {
        Ipam::new(dir, net.parse().unwrap())
    }

    #[test]
    fn addresses_skip_the_gateway_and_go_round() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.9.0.0/29");
        let never = |_: &Path| false;
        let a = ipam.allocate(Path::new("/runs/a"), never).unwrap();
        let b = ipam.allocate(Path::new("/runs/b"), never).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert!(ipam.release(a, Path::new("/runs/a")).unwrap());
        // Not reused at once: the next one after the last lent.
        let c = ipam.allocate(Path::new("/runs/c"), never).unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 9, 0, 4));
        // A restart (a new Ipam over the same files) keeps what is lent.
        let again = super::Ipam::new(dir.path(), "10.9.0.0/29".parse().unwrap());
        assert_eq!(again.holder(b).as_deref(), Some(Path::new("/runs/b")));
        let d = again.allocate(Path::new("/runs/d"), never).unwrap();
        assert_eq!(d, Ipv4Addr::new(10, 9, 0, 5));
        assert_eq!(again.in_use(), 3);
    }

    #[test]
    fn only_the_holder_releases() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.9.0.0/30");
        let a = ipam.allocate(Path::new("/runs/a"), |_| false).unwrap();
        assert!(!ipam.release(a, Path::new("/runs/other")).unwrap());
        assert_eq!(ipam.in_use(), 1);
        assert!(ipam.release(a, Path::new("/runs/a")).unwrap());
        assert!(!ipam.release(a, Path::new("/runs/a")).unwrap());
        let b = ipam.allocate(Path::new("/runs/b"), |_| false).unwrap();
        assert_eq!(ipam.release_owner(Path::new("/runs/c")).unwrap(), 0);
        assert_eq!(ipam.release_owner(Path::new("/runs/b")).unwrap(), 1);
        assert_eq!(ipam.holder(b), None);
    }

    #[test]
    fn an_exhausted_subnet_takes_back_ended_runs_or_says_it_is_full() {
        let dir = tempfile::tempdir().unwrap();
        // A /30 has two hosts: the gateway and one task address.
        let ipam = ipam(dir.path(), "10.9.0.0/30");
        let a = ipam.allocate(Path::new("/runs/a"), |_| false).unwrap();
        let full = ipam.allocate(Path::new("/runs/b"), |_| false).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        assert!(full.to_string().contains("10.9.0.0/30"), "{full}");
        // Run a ended without giving its address back: b gets it.
        let b = ipam
            .allocate(Path::new("/runs/b"), |owner| owner == Path::new("/runs/a"))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(ipam.holder(b).as_deref(), Some(Path::new("/runs/b")));
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = std::sync::Arc::new(ipam(dir.path(), "10.9.0.0/26"));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    (0..7)
                        .map(|i| {
                            ipam.allocate(&PathBuf::from(format!("/runs/{t}-{i}")), |_| false)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 56);
    }
}
