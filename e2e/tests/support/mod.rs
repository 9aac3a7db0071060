//! The e2e cluster: etcd, two API servers, the controllers, the scheduler and three
//! nodelets, each nodelet in its own network namespace; everything it made is
//! removed on drop, also when a test panics.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Nodelets in a cluster.
pub const NODES: usize = 3;
/// The API servers' service range (their default), which every node's proxy
/// serves.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Seconds without a heartbeat before a node is NotReady (nodelets renew their
/// Lease every 10 s), and then before its tasks are Lost.
const NODE_GRACE_SECONDS: u64 = 15;
const LOST_GRACE_SECONDS: u64 = 5;

/// Why the suite cannot run on this machine, if it cannot.
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "the e2e suite runs containers, cgroups and namespaces: run it as root".into(),
        );
    }
    for tool in ["etcd", "nsenter", "ip"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (scripts/deps installs it)"
            ));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt install busybox-static)".into());
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Everything a cluster creates on the machine, by name: enough to remove it, and
/// to prove afterwards that it is gone.
#[derive(Debug, Clone)]
pub struct Footprint {
    /// The run's directory: state, logs, outputs.
    pub dir: PathBuf,
    /// The cgroup parent of every node's tasks, in every hierarchy.
    pub cgroup_parent: String,
    /// The network namespaces.
    pub netns: Vec<String>,
    /// The host ends of the veth pairs.
    pub veths: Vec<String>,
}

impl Footprint {
    fn dir_marker(&self) -> Vec<u8> {
        self.dir.as_os_str().as_encoded_bytes().to_vec()
    }

    /// Processes whose command line names the run's directory (nodelets, shims, etcd).
    fn marked_processes(&self) -> Vec<i32> {
        let marker = self.dir_marker();
        let me = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| contains(&cmdline, &marker))
            })
            .collect()
    }

    /// The run's cgroup directories that exist, in every hierarchy (v1) or the unified tree.
    fn cgroup_roots(&self) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        let mut roots = vec![root.join(&self.cgroup_parent)];
        if let Ok(entries) = fs::read_dir(root) {
            for entry in entries.flatten() {
                roots.push(entry.path().join(&self.cgroup_parent));
            }
        }
        roots.retain(|dir| dir.is_dir());
        roots
    }

    /// Every process in the run's cgroups: the containers and what they started.
    fn cgroup_processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for root in self.cgroup_roots() {
            for dir in walk_dirs(&root) {
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Mount points under the run's directory (the tasks' overlay root filesystems).
    fn mounts(&self) -> Vec<PathBuf> {
        let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
            return Vec::new();
        };
        mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|point| PathBuf::from(point.replace("\\040", " ")))
            .filter(|point| point.starts_with(&self.dir))
            .collect()
    }

    /// Removes everything: kills the run's processes, unmounts, removes the
    /// cgroups, the veths, the namespaces and the directory.
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut pids = self.marked_processes();
            pids.extend(self.cgroup_processes());
            for &pid in &pids {
                // SAFETY: kill has no memory effects; the pids are this run's.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let alive = pids.iter().filter(|pid| is_running(**pid)).count();
            if alive == 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
                // SAFETY: path is a valid NUL-terminated string for the call's duration.
                unsafe {
                    libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        // A cgroup can be removed once its last process has left, which lags the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for root in self.cgroup_roots() {
                let mut dirs = walk_dirs(&root);
                dirs.reverse();
                for dir in dirs {
                    let _ = fs::remove_dir(dir);
                }
            }
            if self.cgroup_roots().is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for veth in &self.veths {
            if Path::new("/sys/class/net").join(veth).exists() {
                let _ = quiet("ip", &["link", "del", veth]);
            }
        }
        for netns in &self.netns {
            if Path::new("/run/netns").join(netns).exists() {
                let _ = quiet("ip", &["netns", "del", netns]);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// What is left of the run on the machine; empty after [`Footprint::remove`].
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let processes: Vec<i32> = self
            .marked_processes()
            .into_iter()
            .chain(self.cgroup_processes())
            .filter(|pid| is_running(*pid))
            .collect();
        if !processes.is_empty() {
            left.push(format!("processes {processes:?}"));
        }
        for mount in self.mounts() {
            left.push(format!("mount {}", mount.display()));
        }
        for cgroup in self.cgroup_roots() {
            left.push(format!("cgroup {}", cgroup.display()));
        }
        for veth in &self.veths {
            if Path::new("/sys/class/net").join(veth).exists() {
                left.push(format!("link {veth}"));
            }
        }
        for netns in &self.netns {
            if Path::new("/run/netns").join(netns).exists() {
                left.push(format!("network namespace {netns}"));
            }
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        left
    }
}

/// Removes what runs of the suite that died without tearing down left behind
/// (a test killed by a timeout), found by their names.
fn sweep_dead_runs() {
    let mut pids = Vec::new();
    let mut places = vec![PathBuf::from("/run/netns"), std::env::temp_dir()];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        places.extend(entries.flatten().map(|e| e.path()));
    }
    for place in &places {
        let Ok(entries) = fs::read_dir(place) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("loom-e2e-")) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(pid) = digits.parse::<u32>() {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let id = format!("loom-e2e-{pid}");
        let netns: Vec<String> = fs::read_dir("/run/netns")
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{id}-")))
                    .collect()
            })
            .unwrap_or_default();
        let mut dirs: Vec<PathBuf> = fs::read_dir(std::env::temp_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.starts_with(&format!("{id}-")))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        if dirs.is_empty() {
            dirs.push(std::env::temp_dir().join(format!("{id}-gone")));
        }
        for dir in dirs {
            eprintln!("removing what the dead e2e run {pid} left behind");
            Footprint {
                dir,
                cgroup_parent: id.clone(),
                netns: netns.clone(),
                veths: (1..=NODES).map(|n| format!("le{pid}h{n}")).collect(),
            }
            .remove();
        }
    }
}

/// The second octet of a 10.X.0.0/16 that no interface of this machine uses, for
/// the nodes' links (so two runs on one machine do not collide).
fn free_net() -> u8 {
    let output = quiet("ip", &["-o", "-4", "addr", "show"]).expect("ip runs");
    let addrs = String::from_utf8_lossy(&output.stdout).into_owned();
    (200..=254)
        .find(|x| !addrs.contains(&format!(" 10.{x}.")))
        .expect("a free 10.X.0.0/16 among 10.200-10.254")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a process exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// `root` and every directory below it, parents before children.
fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = fs::read_dir(&dirs[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
        i += 1;
    }
    dirs
}

fn quiet(program: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Runs a setup command; panics with its stderr if it fails.
fn must(program: &str, args: &[&str]) {
    let output = quiet(program, args).unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One nodelet's "host": a network namespace joined to the root one by a veth pair.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name in Loom.
    pub name: String,
    /// The network namespace.
    pub netns: String,
    /// The veth end in the root namespace.
    pub host_veth: String,
    /// The address of the veth end in the root namespace.
    pub host_ip: String,
    /// The node's own address, inside its namespace.
    pub ip: String,
}

#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    footprint: Footprint,
    loom: PathBuf,
    loomctl: PathBuf,
    etcd_url: String,
    /// The API servers' addresses, on the host ends of the first two nodes' veths:
    /// every node reaches both through its default route, and so can fail over.
    api: Vec<SocketAddr>,
    etcd: Option<Proc>,
    apiservers: Vec<Option<Proc>>,
    controllers: Option<Proc>,
    scheduler: Option<Proc>,
    nodelets: Vec<Option<Proc>>,
    /// Each node's `loom proxy`, beside its nodelet.
    proxies: Vec<Option<Proc>>,
    /// The bootstrap token nodes join with, and the CA hash they pin.
    join: Option<(String, String)>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The cluster's task network, nodes' task subnets are given from:
    /// `10.NET.128.0/17`, in the test's own 10.NET.0.0/16.
    pub cluster_cidr: String,
}

impl Cluster {
    /// Starts a cluster and waits until every node is Ready.
    pub fn start() -> Cluster {
        // `loom` and `loomctl`: `$LOOM_BIN_DIR`, else the profile directory of this test binary.
        let bins = loom_testing::process::bin_dir();
        let loom = bins.join("loom");
        let loomctl = bins.join("loomctl");
        for bin in [&loom, &loomctl] {
            assert!(
                bin.is_file(),
                "{} is missing: build it first (cargo build -p loom-bin -p loomctl -p loom-nodelet), \
                 or point LOOM_BIN_DIR at the directory holding it",
                bin.display()
            );
        }
        sweep_dead_runs();
        let pid = std::process::id();
        let id = format!("loom-e2e-{pid}");
        let net = free_net();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .expect("a temp dir")
            .keep();
        let nodes: Vec<Node> = (1..=NODES)
            .map(|n| Node {
                name: format!("e2e-node-{n}"),
                netns: format!("{id}-{n}"),
                host_veth: format!("le{pid}h{n}"),
                host_ip: format!("10.{net}.{n}.1"),
                ip: format!("10.{net}.{n}.2"),
            })
            .collect();
        let footprint = Footprint {
            dir: dir.clone(),
            cgroup_parent: id.clone(),
            netns: nodes.iter().map(|n| n.netns.clone()).collect(),
            veths: nodes.iter().map(|n| n.host_veth.clone()).collect(),
        };
        let mut cluster = Cluster {
            footprint,
            loom,
            loomctl,
            etcd_url: String::new(),
            api: Vec::new(),
            etcd: None,
            apiservers: Vec::new(),
            controllers: None,
            scheduler: None,
            nodelets: Vec::new(),
            proxies: Vec::new(),
            join: None,
            nodes,
            cluster_cidr: format!("10.{net}.128.0/17"),
        };
        fs::create_dir_all(cluster.logs()).expect("the log dir");
        cluster.network();
        cluster.start_etcd();
        cluster.api = vec![
            free_port(&cluster.nodes[1].host_ip),
            free_port(&cluster.nodes[0].host_ip),
        ];
        cluster.certs();
        for i in 0..cluster.api.len() {
            let proc = cluster.spawn_apiserver(i);
            cluster.apiservers.push(Some(proc));
        }
        for &addr in &cluster.api {
            wait_api_ready(addr, &cluster.pki().join("ca.crt"));
        }
        cluster.start_controllers();
        cluster.start_scheduler();
        cluster.images();
        cluster.join = Some(cluster.token_create());
        for n in 0..NODES {
            let proc = cluster.spawn_nodelet(n);
            cluster.nodelets.push(Some(proc));
            let proc = cluster.spawn_proxy(n);
            cluster.proxies.push(Some(proc));
        }
        cluster.wait_ready_nodes(NODES, Duration::from_secs(60));
        cluster.route_task_subnets();
        cluster
    }

    /// Routes every node's task subnet, once the controller-manager gave it
    /// one, through the root namespace (the test's "router" between the
    /// hosts, as an operator's network routes the node subnets): a route to
    /// the subnet via the node's address, forwarding on the host ends only.
    /// The nodelets route between the subnets through their default route.
    pub fn route_task_subnets(&self) {
        let subnets = wait_for("every node's task subnet", Duration::from_secs(30), || {
            let nodes = self.try_list("nodes").ok_or("no node list")?;
            let subnets: Vec<(String, String)> = nodes
                .iter()
                .filter_map(|n| {
                    let cidr = n["spec"]["taskCIDR"].as_str()?;
                    Some((n["metadata"]["name"].as_str()?.to_owned(), cidr.to_owned()))
                })
                .collect();
            if subnets.len() >= self.nodes.len() {
                Ok(subnets)
            } else {
                Err(format!("{subnets:?}"))
            }
        });
        for node in &self.nodes {
            let Some((_, cidr)) = subnets.iter().find(|(name, _)| *name == node.name) else {
                panic!("node {} has no task subnet: {subnets:?}", node.name);
            };
            must(
                "ip",
                &[
                    "route",
                    "replace",
                    cidr,
                    "via",
                    &node.ip,
                    "dev",
                    &node.host_veth,
                ],
            );
            fs::write(
                format!("/proc/sys/net/ipv4/conf/{}/forwarding", node.host_veth),
                "1",
            )
            .expect("forwarding on a host end");
        }
    }

    /// What the cluster put on the machine.
    pub fn footprint(&self) -> Footprint {
        self.footprint.clone()
    }

    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.footprint.dir
    }

    fn logs(&self) -> PathBuf {
        self.footprint.dir.join("logs")
    }

    /// The servers every client is given, in failover order.
    pub fn servers(&self) -> String {
        self.api
            .iter()
            .map(|a| format!("https://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster's PKI dir: CA, certificates, keys and kubeconfigs of `loom certs`.
    pub fn pki(&self) -> PathBuf {
        self.dir().join("pki")
    }

    /// The kubeconfig `loom certs` wrote for `name` (`admin`, `scheduler`,
    /// `controllers`).
    pub fn kubeconfig(&self, name: &str) -> String {
        self.pki()
            .join(format!("{name}.conf"))
            .display()
            .to_string()
    }

    /// The cluster's credentials, made as an operator would: `loom certs`
    /// with the API servers' addresses as extra names. Nodes get theirs by
    /// joining (`loom token create`).
    fn certs(&self) {
        let mut args = vec![
            "certs".to_owned(),
            "--dir".to_owned(),
            self.pki().display().to_string(),
            "--server".to_owned(),
            format!("https://{}", self.api[0]),
        ];
        for addr in &self.api {
            args.push("--tls-san".to_owned());
            args.push(addr.ip().to_string());
        }
        let output = Command::new(&self.loom)
            .args(&args)
            .output()
            .expect("loom certs runs");
        assert!(
            output.status.success(),
            "loom certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A bootstrap token for the nodes to join with, made as an operator
    /// would (`loom token create` against the cluster, as the administrator),
    /// and the CA hash the join command it prints pins.
    fn token_create(&self) -> (String, String) {
        let output = Command::new(&self.loom)
            .args([
                "token",
                "create",
                "--ttl",
                "2h",
                "--description",
                "e2e nodes",
            ])
            .args(["--kubeconfig", &self.kubeconfig("admin")])
            .args(["--server", &self.servers()])
            .env("LOOMCONFIG", self.dir().join("no-config"))
            .stdin(Stdio::null())
            .output()
            .expect("loom token create runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "loom token create failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = stdout.lines().next().unwrap_or_default().trim().to_owned();
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let hash = words
            .windows(2)
            .find(|w| w[0] == "--ca-cert-hash")
            .map(|w| w[1].to_owned())
            .unwrap_or_else(|| panic!("no --ca-cert-hash in loom token create's output: {stdout}"));
        assert!(!token.is_empty(), "no token in: {stdout}");
        (token, hash)
    }

    fn network(&self) {
        for node in &self.nodes {
            let inner = node.host_veth.replacen('h', "n", 1);
            must("ip", &["netns", "add", &node.netns]);
            must(
                "ip",
                &[
                    "link",
                    "add",
                    &node.host_veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &inner,
                ],
            );
            must("ip", &["link", "set", &inner, "netns", &node.netns]);
            must(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/30", node.host_ip),
                    "dev",
                    &node.host_veth,
                ],
            );
            must("ip", &["link", "set", &node.host_veth, "up"]);
            let ns = node.netns.as_str();
            must(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/30", node.ip),
                    "dev",
                    &inner,
                ],
            );
            must("ip", &["-n", ns, "link", "set", &inner, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
            must(
                "ip",
                &["-n", ns, "route", "add", "default", "via", &node.host_ip],
            );
        }
    }

    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Proc {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs().join(format!("{name}.log")))
            .expect("a log file");
        let log_err = log.try_clone().expect("a log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("LOOMCONFIG", self.dir().join("no-config"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // The control plane dies with the test, even when the test is SIGKILLed.
        loom_testing::process::die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    fn start_etcd(&mut self) {
        let client = free_port("127.0.0.1");
        let peer = free_port("127.0.0.1");
        let data = self.dir().join("etcd");
        let url = format!("http://{client}");
        let args = vec![
            "--name=loom-e2e".to_owned(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=http://{peer}"),
            format!("--initial-advertise-peer-urls=http://{peer}"),
            format!("--initial-cluster=loom-e2e=http://{peer}"),
            "--log-level=warn".to_owned(),
        ];
        let etcd = which("etcd").expect("etcd");
        self.etcd = Some(self.spawn("etcd", &etcd, &args));
        wait_for("etcd", Duration::from_secs(30), || {
            match http_get(client, "/health") {
                Some((200, body)) if body.contains("true") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        self.etcd_url = format!("etcd://{client}");
    }

    fn spawn_apiserver(&self, i: usize) -> Proc {
        let args = vec![
            "apiserver".to_owned(),
            "--listen".to_owned(),
            self.api[i].to_string(),
            "--store".to_owned(),
            self.etcd_url.clone(),
            "--store-prefix".to_owned(),
            "/loom/".to_owned(),
            "--tls-cert-file".to_owned(),
            self.pki().join("apiserver.crt").display().to_string(),
            "--tls-private-key-file".to_owned(),
            self.pki().join("apiserver.key").display().to_string(),
            "--client-ca-file".to_owned(),
            self.pki().join("ca.crt").display().to_string(),
            // Service-account tokens: one key pair for both API servers.
            "--service-account-key-file".to_owned(),
            self.pki().join("sa.pub").display().to_string(),
            "--service-account-signing-key-file".to_owned(),
            self.pki().join("sa.key").display().to_string(),
            // Task logs come from nodelets over TLS, as the API server.
            "--nodelet-client-certificate".to_owned(),
            self.pki()
                .join("apiserver-nodelet-client.crt")
                .display()
                .to_string(),
            "--nodelet-client-key".to_owned(),
            self.pki()
                .join("apiserver-nodelet-client.key")
                .display()
                .to_string(),
            "--nodelet-certificate-authority".to_owned(),
            self.pki().join("ca.crt").display().to_string(),
            // Nodes join by token: their certificate requests are signed
            // with the cluster CA.
            "--cluster-signing-cert-file".to_owned(),
            self.pki().join("ca.crt").display().to_string(),
            "--cluster-signing-key-file".to_owned(),
            self.pki().join("ca.key").display().to_string(),
        ];
        self.spawn(&format!("apiserver-{i}"), &self.loom, &args)
    }

    /// Starts the controller-manager (again).
    pub fn start_controllers(&mut self) {
        let args = vec![
            "controllers".to_owned(),
            "--kubeconfig".to_owned(),
            self.kubeconfig("controllers"),
            "--server".to_owned(),
            self.servers(),
            "--node-grace-seconds".to_owned(),
            NODE_GRACE_SECONDS.to_string(),
            "--lost-grace-seconds".to_owned(),
            LOST_GRACE_SECONDS.to_string(),
            "--cluster-cidr".to_owned(),
            self.cluster_cidr.clone(),
        ];
        self.controllers = Some(self.spawn("controllers", &self.loom, &args));
    }

    /// Starts the scheduler (again).
    pub fn start_scheduler(&mut self) {
        let args = vec![
            "scheduler".to_owned(),
            "--kubeconfig".to_owned(),
            self.kubeconfig("scheduler"),
            "--server".to_owned(),
            self.servers(),
        ];
        self.scheduler = Some(self.spawn("scheduler", &self.loom, &args));
    }

    /// Puts a busybox image, built from the host's static busybox, in every node's store.
    fn images(&self) {
        let layout = self.dir().join("busybox-layout");
        nodelet::image::busybox_layout(&layout, Path::new("/bin/busybox"), "latest")
            .expect("a busybox image layout");
        for n in 0..NODES {
            let store = nodelet::image::ImageStore::new(&self.state_dir(n).join("images"));
            store
                .import(&layout, Some("busybox"))
                .expect("the busybox image imported");
        }
    }

    fn state_dir(&self, n: usize) -> PathBuf {
        self.dir().join(&self.nodes[n].name)
    }

    fn spawn_nodelet(&self, n: usize) -> Proc {
        let node = &self.nodes[n];
        std::fs::create_dir_all(self.dir().join("out")).expect("the output directory");
        let port = 7444;
        // The node joins with the bootstrap token (its client and serving
        // certificates are asked for, signed and kept in its state dir); a
        // restarted node finds them there.
        let (token, hash) = self.join.clone().expect("a bootstrap token");
        let args = vec![
            format!("--net=/run/netns/{}", node.netns),
            self.loom.display().to_string(),
            "nodelet".to_owned(),
            "--token".to_owned(),
            token,
            "--ca-cert-hash".to_owned(),
            hash,
            "--server".to_owned(),
            self.servers(),
            "--name".to_owned(),
            node.name.clone(),
            "--state-dir".to_owned(),
            self.state_dir(n).display().to_string(),
            "--cgroup-parent".to_owned(),
            self.footprint.cgroup_parent.clone(),
            "--listen".to_owned(),
            format!("{}:{port}", node.ip),
            "--advertise".to_owned(),
            format!("https://{}:{port}", node.ip),
            "--stop-tasks-on-exit".to_owned(),
            // Tasks resolve the cluster's names through the node's proxy.
            "--cluster-dns".to_owned(),
            // The jobs' output directories are host paths: allowed here only.
            "--allow-host-paths".to_owned(),
            self.dir().join("out").display().to_string(),
        ];
        let nsenter = which("nsenter").expect("nsenter");
        self.spawn(&node.name, &nsenter, &args)
    }

    /// Node `n`'s proxy: Services' addresses and the resolver for its tasks,
    /// in the node's namespace, as its own user.
    fn spawn_proxy(&self, n: usize) -> Proc {
        let node = &self.nodes[n];
        let args = vec![
            format!("--net=/run/netns/{}", node.netns),
            self.loom.display().to_string(),
            "proxy".to_owned(),
            "--kubeconfig".to_owned(),
            self.kubeconfig("proxy"),
            "--server".to_owned(),
            self.servers(),
            "--node".to_owned(),
            node.name.clone(),
            "--service-cidr".to_owned(),
            SERVICE_CIDR.to_owned(),
        ];
        let nsenter = which("nsenter").expect("nsenter");
        self.spawn(&format!("{}-proxy", node.name), &nsenter, &args)
    }

    /// Waits until `count` nodes are Ready.
    pub fn wait_ready_nodes(&self, count: usize, timeout: Duration) {
        wait_for(&format!("{count} Ready nodes"), timeout, || {
            let nodes = self.try_list("nodes").ok_or("no node list")?;
            let ready = nodes
                .iter()
                .filter(|node| {
                    node["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            if ready >= count {
                Ok(())
            } else {
                Err(format!("{ready} Ready"))
            }
        });
    }

    /// Runs loomctl against every API server.
    pub fn loomctl(&self, args: &[&str]) -> Output {
        Command::new(&self.loomctl)
            .arg("--server")
            .arg(self.servers())
            .args(args)
            .env("LOOMCONFIG", self.kubeconfig("admin"))
            .stdin(Stdio::null())
            .output()
            .expect("loomctl runs")
    }

    /// Runs loomctl; panics with its output if it fails.
    pub fn loomctl_ok(&self, args: &[&str]) -> String {
        let output = self.loomctl(args);
        assert!(
            output.status.success(),
            "loomctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Applies a manifest through loomctl.
    pub fn apply(&self, name: &str, yaml: &str) {
        let dir = self.dir().join("manifests");
        fs::create_dir_all(&dir).expect("the manifest dir");
        let path = dir.join(format!("{name}.yaml"));
        fs::write(&path, yaml).expect("the manifest written");
        self.loomctl_ok(&["apply", "-f", &path.display().to_string()]);
    }

    fn try_list(&self, kind: &str) -> Option<Vec<Value>> {
        let output = self.loomctl(&["get", kind, "-o", "json"]);
        if !output.status.success() {
            return None;
        }
        let list: Value = serde_json::from_slice(&output.stdout).ok()?;
        list["items"].as_array().cloned()
    }

    /// `loomctl get KIND -o json`'s items.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        self.try_list(kind)
            .unwrap_or_else(|| panic!("loomctl get {kind} -o json: {}", self.loomctl_err(kind)))
    }

    fn loomctl_err(&self, kind: &str) -> String {
        let output = self.loomctl(&["get", kind, "-o", "json"]);
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// A host directory for a job's outputs.
    pub fn output_dir(&self, job: &str) -> PathBuf {
        self.dir().join("out").join(job)
    }

    /// Kills an API server with SIGKILL.
    pub fn kill_apiserver(&mut self, i: usize) {
        if let Some(mut proc) = self.apiservers[i].take() {
            proc.kill();
        }
    }

    /// Starts a killed API server again and waits until it is ready.
    pub fn restart_apiserver(&mut self, i: usize) {
        let proc = self.spawn_apiserver(i);
        self.apiservers[i] = Some(proc);
        wait_api_ready(self.api[i], &self.pki().join("ca.crt"));
    }

    /// Kills the scheduler with SIGKILL.
    pub fn kill_scheduler(&mut self) {
        if let Some(mut proc) = self.scheduler.take() {
            proc.kill();
        }
    }

    /// Kills the controller-manager with SIGKILL.
    pub fn kill_controllers(&mut self) {
        if let Some(mut proc) = self.controllers.take() {
            proc.kill();
        }
    }

    /// Takes a node's link down: it can no longer reach the API servers.
    pub fn cut_link(&self, n: usize) {
        must("ip", &["link", "set", &self.nodes[n].host_veth, "down"]);
    }

    /// Brings a cut link back up (the host side's route to the node comes
    /// back with it).
    pub fn restore_link(&self, n: usize) {
        must("ip", &["link", "set", &self.nodes[n].host_veth, "up"]);
    }

    /// The uids of the tasks with a run cgroup on node `n` (a container id is
    /// `UID-N`): the runs the node still has.
    pub fn runs_on(&self, n: usize) -> std::collections::BTreeSet<String> {
        let mut uids = std::collections::BTreeSet::new();
        for root in self.node_cgroups(n) {
            for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let id = entry.file_name().to_string_lossy().into_owned();
                if let Some((uid, _)) = id.rsplit_once('-') {
                    uids.insert(uid.to_owned());
                }
            }
        }
        uids
    }

    /// Panics if a part that should run has exited.
    pub fn assert_running(&mut self) {
        let parts = self
            .etcd
            .iter_mut()
            .chain(self.apiservers.iter_mut().flatten())
            .chain(self.controllers.iter_mut())
            .chain(self.scheduler.iter_mut())
            .chain(self.nodelets.iter_mut().flatten());
        for proc in parts {
            if let Some(status) = proc.exited() {
                panic!("{} exited: {status}", proc.name);
            }
        }
    }

    /// Copies the parts' logs out of the run's directory, and shows their ends.
    fn keep_logs(&self) {
        // Not named like a run's directory, which the next run would sweep away.
        let kept = std::env::temp_dir().join(format!("loom-e2e-logs-{}", std::process::id()));
        let _ = fs::create_dir_all(&kept);
        let Ok(entries) = fs::read_dir(self.logs()) else {
            return;
        };
        eprintln!("the logs of every part are kept in {}", kept.display());
        for entry in entries.flatten() {
            let _ = fs::copy(entry.path(), kept.join(entry.file_name()));
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("==== {} (last 30 lines)", entry.path().display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        // Nodelets first, so none restarts a task while the rest goes.
        for proc in self
            .nodelets
            .iter_mut()
            .chain(self.proxies.iter_mut())
            .flatten()
        {
            proc.kill();
        }
        for proc in self
            .controllers
            .iter_mut()
            .chain(self.scheduler.iter_mut())
            .chain(self.apiservers.iter_mut().flatten())
            .chain(self.etcd.iter_mut())
        {
            proc.kill();
        }
        self.footprint.remove();
    }
}

/// A free TCP port on `ip`.
fn free_port(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("no port on {ip}: {e}"));
    listener.local_addr().expect("a bound address")
}

fn wait_api_ready(addr: SocketAddr, ca: &Path) {
    wait_for(
        &format!("the API server at {addr}"),
        Duration::from_secs(30),
        || {
            let output = Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                ])
                .arg("--cacert")
                .arg(ca)
                .arg(format!("https://{addr}/readyz"))
                .output()
                .map_err(|e| format!("curl: {e}"))?;
            let code = String::from_utf8_lossy(&output.stdout).into_owned();
            if code == "200" {
                Ok(())
            } else {
                Err(format!(
                    "{code} {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        },
    );
}

/// A plain HTTP GET: the status code and body, or None if nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let code = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Polls `check` until it gives a value; after `timeout`, panics naming `what` and
/// what `check` last saw.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last saw: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// A node's crash and restart on the same state dir (a power loss, a reboot).
impl Cluster {
    /// Crashes node `n` as a power loss would: its nodelet, every shim of its
    /// state dir and every process in its cgroups get SIGKILL (shims first, so
    /// none records its task's end), until none is left. Mounts, cgroup
    /// directories and run files stay as they were.
    pub fn crash_node(&mut self, n: usize) {
        if let Some(mut proc) = self.nodelets[n].take() {
            proc.kill();
        }
        if let Some(mut proc) = self.proxies[n].take() {
            proc.kill();
        }
        let mut marker = self.state_dir(n).as_os_str().as_encoded_bytes().to_vec();
        marker.push(b'/');
        let cgroups = self.node_cgroups(n);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut pids: Vec<i32> = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|cmdline| contains(&cmdline, &marker))
                })
                .collect();
            for root in &cgroups {
                for dir in walk_dirs(root) {
                    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                    }
                }
            }
            pids.retain(|pid| is_running(*pid));
            if pids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes of {} outlive its crash: {pids:?}",
                self.nodes[n].name
            );
            for pid in pids {
                // SAFETY: kill has no memory effects; the pids are this node's.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `n`'s nodelet again after [`Cluster::crash_node`], on the
    /// same state dir.
    pub fn restart_nodelet(&mut self, n: usize) {
        let proc = self.spawn_nodelet(n);
        self.nodelets[n] = Some(proc);
        if self.proxies[n].is_none() {
            let proc = self.spawn_proxy(n);
            self.proxies[n] = Some(proc);
        }
    }

    /// Node `n`'s cgroup directories, in every hierarchy that has one.
    fn node_cgroups(&self, n: usize) -> Vec<PathBuf> {
        let below = Path::new(&self.footprint.cgroup_parent).join(&self.nodes[n].name);
        fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(&below))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// What runs of node `n` whose shim is dead left behind: mounts under its
    /// state dir, cgroups and libcontainer state of their containers. Empty
    /// once a nodelet has cleaned up after a crash.
    pub fn dead_run_leftovers(&self, n: usize) -> Vec<String> {
        let state = self.state_dir(n);
        let tasks = state.join("tasks");
        // A container id is `UID-N`, the run `tasks/UID/run-N`.
        let run_of = |id: &str| {
            let (uid, n) = id.rsplit_once('-')?;
            Some(tasks.join(uid).join(format!("run-{n}")))
        };
        let dead = |run: &Path| {
            let shim = fs::read_to_string(run.join("shim.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            let needle = run.as_os_str().as_encoded_bytes();
            !shim.is_some_and(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| contains(&c, needle))
            })
        };
        let mut left = Vec::new();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mountinfo.lines().filter_map(|l| l.split(' ').nth(4)) {
            let point = Path::new(point);
            if let Ok(rest) = point.strip_prefix(&tasks) {
                let run: PathBuf = tasks.join(rest.iter().take(2).collect::<PathBuf>());
                if dead(&run) {
                    left.push(format!("mount {}", point.display()));
                }
            }
        }
        for root in self.node_cgroups(n) {
            for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let id = entry.file_name().to_string_lossy().into_owned();
                if run_of(&id).is_none_or(|run| dead(&run)) {
                    left.push(format!("cgroup {}", entry.path().display()));
                }
            }
        }
        for entry in fs::read_dir(state.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let id = entry.file_name().to_string_lossy().into_owned();
            if run_of(&id).is_none_or(|run| dead(&run)) {
                left.push(format!("container state {}", entry.path().display()));
            }
        }
        left
    }
}
