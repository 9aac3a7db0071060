//! Network-namespace hosts for tests and benchmarks: a namespace joined to
//! the root one by a veth pair, processes run inside it through `nsenter
//! --net` (not `ip netns exec`, whose private /sys mount breaks
//! libcontainer), cut from the network by nftables drop rules of its own
//! (a partition), and everything it made removed by name, also what a dead
//! run left behind.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{Error, Result};

/// Where `ip netns` keeps the namespaces' names.
pub const NETNS_DIR: &str = "/run/netns";

/// The nftables table (family `inet`) a partition is, inside a host's
/// namespace.
pub const PARTITION_TABLE: &str = "loom_partition";

/// A partition: everything in and out dropped but loopback, so the host's
/// own processes still reach each other. Made in one transaction that
/// first removes a table of the name (a partition made twice is one).
fn partition_rules() -> String {
    format!(
        "table inet {PARTITION_TABLE} {{}}\n\
         delete table inet {PARTITION_TABLE}\n\
         table inet {PARTITION_TABLE} {{\n\
         \tchain input {{ type filter hook input priority 0; policy drop; iifname \"lo\" accept; }}\n\
         \tchain output {{ type filter hook output priority 0; policy drop; oifname \"lo\" accept; }}\n\
         }}\n"
    )
}

/// The partition's table removed; nothing if there is none.
fn heal_rules() -> String {
    format!("table inet {PARTITION_TABLE} {{}}\ndelete table inet {PARTITION_TABLE}\n")
}

/// nft: `/usr/sbin/nft`, or whatever `PATH` finds.
pub fn nft() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nft");
    if sbin.is_file() {
        sbin.to_owned()
    } else {
        PathBuf::from("nft")
    }
}

/// Whether nft runs here (and the kernel has nf_tables).
pub fn nft_works() -> bool {
    Command::new(nft())
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One "host": a network namespace, with `lo` up, joined to the root
/// namespace by a veth pair on a point-to-point subnet (a /30): `host_ip` on
/// the root end, `ip` inside, whose default route is `host_ip`. Removed when
/// dropped.
#[derive(Debug)]
pub struct NetnsHost {
    /// The namespace's name (under [`NETNS_DIR`]).
    pub netns: String,
    /// The veth end in the root namespace.
    pub host_veth: String,
    /// The veth end inside.
    pub inner_veth: String,
    /// The root end's address: what the host's processes listen on to be
    /// reached from inside.
    pub host_ip: Ipv4Addr,
    /// The host's own address, inside.
    pub ip: Ipv4Addr,
    /// The namespace's inode: what `/proc/PID/ns/net` of a process in it
    /// names, also once its name is gone.
    inode: u64,
}

impl NetnsHost {
    /// Makes the namespace and its link; on failure removes what it made.
    pub fn create(
        netns: &str,
        host_veth: &str,
        inner_veth: &str,
        host_ip: Ipv4Addr,
        ip: Ipv4Addr,
    ) -> Result<Self> {
        let mut host = NetnsHost {
            netns: netns.to_owned(),
            host_veth: host_veth.to_owned(),
            inner_veth: inner_veth.to_owned(),
            host_ip,
            ip,
            inode: 0,
        };
        if let Err(error) = host.set_up() {
            host.remove();
            return Err(error);
        }
        Ok(host)
    }

    fn set_up(&mut self) -> Result<()> {
        let ns = self.netns.clone();
        run("ip", &["netns", "add", &ns], None)?;
        self.inode = std::fs::metadata(self.path())
            .map_err(|e| Error::Command {
                command: format!("stat {}", self.path().display()),
                detail: e.to_string(),
            })?
            .ino();
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &self.inner_veth,
            ],
            None,
        )?;
        run("ip", &["link", "set", &self.inner_veth, "netns", &ns], None)?;
        let host_cidr = format!("{}/30", self.host_ip);
        run(
            "ip",
            &["addr", "add", &host_cidr, "dev", &self.host_veth],
            None,
        )?;
        run("ip", &["link", "set", &self.host_veth, "up"], None)?;
        let cidr = format!("{}/30", self.ip);
        run(
            "ip",
            &["-n", &ns, "addr", "add", &cidr, "dev", &self.inner_veth],
            None,
        )?;
        run(
            "ip",
            &["-n", &ns, "link", "set", &self.inner_veth, "up"],
            None,
        )?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
        let gateway = self.host_ip.to_string();
        run(
            "ip",
            &["-n", &ns, "route", "add", "default", "via", &gateway],
            None,
        )?;
        Ok(())
    }

    /// The namespace's path (what `nsenter --net=` takes).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// The program and arguments that run `program args` inside.
    pub fn wrap(&self, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let mut wrapped = vec![
            format!("--net={}", self.path().display()),
            "--".to_owned(),
            program.display().to_string(),
        ];
        wrapped.extend(args);
        (PathBuf::from("nsenter"), wrapped)
    }

    /// Cuts the host off: every packet in or out dropped (but on `lo`), so
    /// connections open go silent both ways and new ones hear nothing.
    pub fn partition(&self) -> Result<()> {
        self.nft(&partition_rules())
    }

    /// Ends a partition (nothing if there is none).
    pub fn heal(&self) -> Result<()> {
        self.nft(&heal_rules())
    }

    /// Whether a partition is in force.
    pub fn is_partitioned(&self) -> bool {
        let net = format!("--net={}", self.path().display());
        let nft = nft().display().to_string();
        run(
            "nsenter",
            &[&net, "--", &nft, "list", "table", "inet", PARTITION_TABLE],
            None,
        )
        .is_ok()
    }

    fn nft(&self, rules: &str) -> Result<()> {
        let net = format!("--net={}", self.path().display());
        let nft = nft().display().to_string();
        run("nsenter", &[&net, "--", &nft, "-f", "-"], Some(rules)).map(drop)
    }

    /// Processes in the namespace (by its inode: also once its name is gone).
    pub fn processes(&self) -> Vec<i32> {
        processes_in(self.inode)
    }

    /// Removes the link and the namespace (a partition goes with it).
    /// Processes still inside keep it alive, nameless: see
    /// [`NetnsHost::leftovers`].
    pub fn remove(&self) {
        remove_link(&self.host_veth);
        remove_netns(&self.netns);
    }

    /// What is left of the host: its link, its namespace (and a partition
    /// in it), processes in it.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if link_exists(&self.host_veth) {
            left.push(format!("link {}", self.host_veth));
        }
        if self.path().exists() {
            left.push(format!("network namespace {}", self.netns));
            if self.is_partitioned() {
                left.push(format!(
                    "nftables table inet {PARTITION_TABLE} in network namespace {}",
                    self.netns
                ));
            }
        }
        let processes = self.processes();
        if !processes.is_empty() {
            left.push(format!(
                "processes in network namespace {}: {processes:?}",
                self.netns
            ));
        }
        left
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Whether the root namespace holds a partition table (one made in the
/// wrong namespace).
pub fn partition_in_root_namespace() -> bool {
    run(
        &nft().display().to_string(),
        &["list", "table", "inet", PARTITION_TABLE],
        None,
    )
    .is_ok()
}

/// Whether network interface `name` exists (in this namespace).
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes link `name` (a veth: its peer goes with it), if it exists.
pub fn remove_link(name: &str) {
    if link_exists(name) {
        let _ = run("ip", &["link", "del", name], None);
    }
}

/// Deletes the name of namespace `name`, if it exists (the namespace goes
/// once no process is left in it).
pub fn remove_netns(name: &str) {
    if Path::new(NETNS_DIR).join(name).exists() {
        let _ = run("ip", &["netns", "del", name], None);
    }
}

/// The inode of named namespace `name`, if it exists.
pub fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(Path::new(NETNS_DIR).join(name))
        .ok()
        .map(|m| m.ino())
}

/// Processes whose network namespace is the one of inode `inode`.
pub fn processes_in(inode: u64) -> Vec<i32> {
    let wanted = format!("net:[{inode}]");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|link| link.as_os_str() == wanted.as_str())
        })
        .collect()
}

/// The names in `dir` that are `prefix`, a pid, then anything but a digit
/// (or nothing), with that pid.
pub fn names_with_pid(dir: &Path, prefix: &str) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let rest = name.strip_prefix(prefix)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let pid = digits.parse().ok()?;
            Some((name, pid))
        })
        .collect()
}

/// The second octet of a 10.X.0.0/16 no address of this namespace is in,
/// trying `candidates` in turn.
pub fn free_net(candidates: impl IntoIterator<Item = u8>) -> Result<Option<u8>> {
    let output = run("ip", &["-o", "-4", "addr", "show"], None)?;
    let addrs = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(candidates
        .into_iter()
        .find(|x| !addrs.contains(&format!(" 10.{x}."))))
}

/// Runs a command, with `stdin` if given; its output, or why it failed.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let command_line = format!("{program} {}", args.join(" "));
    let failed = |detail: String| Error::Command {
        command: command_line.clone(),
        detail,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| failed(format!("writing its input: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_keeps_loopback_and_is_made_and_healed_idempotently() {
        let rules = partition_rules();
        assert!(rules.contains("hook input priority 0; policy drop; iifname \"lo\" accept"));
        assert!(rules.contains("hook output priority 0; policy drop; oifname \"lo\" accept"));
        // Any earlier table of the name is removed first, in the same
        // transaction; healing a host not partitioned is no error.
        assert!(rules.starts_with(&heal_rules()));
    }

    #[test]
    fn names_with_a_pid_are_found_by_prefix() {
        let dir = tempfile::tempdir().expect("a temp dir");
        for name in ["loom-soak-12-1", "loom-soak-7", "loom-soak-x", "other-3"] {
            std::fs::write(dir.path().join(name), b"").expect("a file");
        }
        let mut found = names_with_pid(dir.path(), "loom-soak-");
        found.sort();
        assert_eq!(
            found,
            vec![
                ("loom-soak-12-1".to_owned(), 12),
                ("loom-soak-7".to_owned(), 7)
            ]
        );
    }
}
