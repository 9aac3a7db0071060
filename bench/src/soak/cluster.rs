//! The soak's cluster: real processes (etcd, API servers, schedulers,
//! controllers, nodelets) started, killed with SIGKILL and restarted on the
//! same data, each nodelet in a network-namespace host of its own (which a
//! partition cuts off with nftables), with fault proxies on the links that
//! are slowed or cut from the host.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use loom_testing::netns::{self, NetnsHost};
use loom_testing::proxy::FaultProxy;

use crate::access::{Component, Pki};

/// The API servers' `--event-ttl-seconds` in a soak.
pub const SOAK_EVENT_TTL_SECONDS: u64 = 300;

/// One process of the cluster, restartable with the same arguments.
#[derive(Debug)]
pub struct Part {
    /// `apiserver-0`, `etcd`, `nodelet-soak-1`...
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Extra environment (a nodelet's stepped clock).
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Starts so far.
    pub starts: u32,
    /// When the running process started.
    pub since: Instant,
    /// (seconds since the soak began, RSS bytes) of the running process;
    /// cleared by a restart (a new process, a new curve).
    pub samples: Vec<(f64, u64)>,
    /// The longest sample series of any of its processes.
    pub longest: Vec<(f64, u64)>,
}

impl Part {
    fn new(name: &str, program: &Path, args: Vec<String>, dir: &Path) -> Self {
        Part {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            env: Vec::new(),
            log: dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
            since: Instant::now(),
            samples: Vec::new(),
            longest: Vec::new(),
        }
    }

    /// Starts it (appending to its log).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A soak killed (SIGKILL, or a crash) takes its cluster with it.
        loom_testing::process::die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        self.starts += 1;
        self.since = Instant::now();
        if self.samples.len() > self.longest.len() {
            self.longest = std::mem::take(&mut self.samples);
        }
        self.samples.clear();
        Ok(())
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it exited by itself (a crash the soak did not cause).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Records its RSS at `t`.
    pub fn sample(&mut self, t: f64) {
        if let Some(pid) = self.pid() {
            let rss = crate::measure::rss_of(&pid.to_string());
            if rss > 0 {
                self.samples.push((t, rss));
            }
        }
    }

    /// The series the memory figure is taken from.
    pub fn series(&self) -> &[(f64, u64)] {
        if self.samples.len() >= self.longest.len() {
            &self.samples
        } else {
            &self.longest
        }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

/// The cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Its directory (data, logs, run log).
    pub dir: PathBuf,
    /// etcd, when on etcd.
    pub etcd: Option<Part>,
    /// The API servers.
    pub apiservers: Vec<Part>,
    /// Each API server's link to etcd.
    pub etcd_links: Vec<FaultProxy>,
    /// The schedulers and the controller-managers (two of each, leader-elected).
    pub schedulers: Vec<Part>,
    pub controllers: Vec<Part>,
    /// The nodelets, by node name.
    pub nodelets: BTreeMap<String, Part>,
    /// Each node's link to the API servers (one proxy per API server,
    /// listening on the host end of the node's veth).
    pub node_links: BTreeMap<String, Vec<FaultProxy>>,
    /// Each node's network-namespace host, where its nodelet (and so its
    /// tasks) runs.
    pub hosts: BTreeMap<String, NetnsHost>,
    /// The API servers' URLs.
    pub urls: Vec<String>,
    /// The credentials.
    pub pki: Pki,
    /// The cgroup parent of every node's tasks.
    pub cgroup_parent: String,
    /// Each node's clock offset file (libfaketime's), when the nodes run
    /// with a steppable clock.
    pub clocks: BTreeMap<String, PathBuf>,
    /// The node whose state dir is a small tmpfs of its own, and that dir.
    pub small_disk: Option<(String, PathBuf)>,
}

/// How the cluster is shaped.
#[derive(Clone, Debug)]
pub struct Shape {
    pub etcd: bool,
    pub apiservers: usize,
    pub nodes: usize,
    /// The controllers' node grace and lost grace.
    pub node_grace: Duration,
    pub lost_grace: Duration,
    /// Whether the nodelets run under libfaketime (clock steps injectable).
    pub clock: bool,
}

/// libfaketime (Debian's `faketime` package), multithreaded flavour.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The size of the small node's state dir: room for its runs' records and
/// logs, small enough to fill in a moment.
const SMALL_DISK: &str = "size=32m";

/// The port of every nodelet's endpoint, on its own address (each has a
/// network namespace of its own).
const NODELET_PORT: u16 = 7444;

/// What every name a soak gives its cgroups, network namespaces and
/// directory begins with, before its pid.
const RUN_PREFIX: &str = "loom-soak-";
/// What its host-side veths' names begin with, before its pid (`ls{pid}h{n}`:
/// within the 15 bytes of an interface name).
const VETH_PREFIX: &str = "ls";

impl Cluster {
    /// Starts everything and waits until every node is Ready.
    pub async fn start(loom: &Path, dir: &Path, shape: &Shape) -> anyhow::Result<Cluster> {
        let ports: Vec<u16> = (0..shape.apiservers)
            .map(|_| loom_testing::free_port())
            .collect::<Result<_, _>>()?;
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let pid = std::process::id();
        let run = format!("{RUN_PREFIX}{pid}");
        sweep_dead_runs();
        let hosts = make_hosts(&run, pid, shape.nodes)?;
        let pki = Pki::make(loom, dir, &urls[0])?;
        // The nodes reach the API servers at the host ends of their veths
        // (through their proxies): the serving certificate must name those.
        let sans: Vec<String> = hosts.values().map(|h| h.host_ip.to_string()).collect();
        add_serving_names(loom, &pki.dir, &urls[0], &sans)?;
        let cgroup_parent = run;

        let mut etcd = None;
        let mut etcd_links = Vec::new();
        if shape.etcd {
            let client_port = loom_testing::free_port()?;
            let peer_port = loom_testing::free_port()?;
            let endpoint = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let binary = std::env::var("LOOM_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned());
            let mut part = Part::new(
                "etcd",
                Path::new(&binary),
                vec![
                    "--name=soak".into(),
                    format!("--data-dir={}", dir.join("etcd").display()),
                    format!("--listen-client-urls={endpoint}"),
                    format!("--advertise-client-urls={endpoint}"),
                    format!("--listen-peer-urls={peer}"),
                    format!("--initial-advertise-peer-urls={peer}"),
                    format!("--initial-cluster=soak={peer}"),
                    "--max-request-bytes=4194304".into(),
                    "--quota-backend-bytes=8589934592".into(),
                    "--log-level=warn".into(),
                ],
                dir,
            );
            part.start()?;
            // The API servers give etcd 5 s at start: it must answer first.
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(loom_listener::tls::client_config(None, None)?)
                .timeout(Duration::from_secs(1))
                .no_proxy()
                .build()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(r) = http.get(format!("{endpoint}/health")).send().await
                    && r.status().is_success()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("etcd did not answer within 30 s: {}", part.log_tail());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            etcd = Some(part);
            let upstream: SocketAddr = format!("127.0.0.1:{client_port}").parse()?;
            for _ in 0..shape.apiservers {
                etcd_links.push(FaultProxy::start(upstream).await?);
            }
        }

        let mut apiservers = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let store = match etcd_links.get(i) {
                Some(link) => format!("etcd://{}", link.address()),
                None => format!("sqlite:{}", dir.join("loom.db").display()),
            };
            let mut args = vec![
                "apiserver".to_owned(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--store".into(),
                store,
                // Events go after 5 min, not the default hour: the memory
                // figure is taken over the last four fifths of the run, and
                // with an hour's TTL an hour-long run only ever adds Events
                // (every task start and end makes some).
                "--event-ttl-seconds".into(),
                SOAK_EVENT_TTL_SECONDS.to_string(),
            ];
            args.extend(pki.server_args());
            // Task logs come from the nodelets' endpoints, over TLS, as the
            // API server (across the nodes' veths).
            let file = |name: &str| pki.dir.join(name).display().to_string();
            args.extend([
                "--nodelet-client-certificate".into(),
                file("apiserver-nodelet-client.crt"),
                "--nodelet-client-key".into(),
                file("apiserver-nodelet-client.key"),
                "--nodelet-certificate-authority".into(),
                file("ca.crt"),
            ]);
            let mut part = Part::new(&format!("apiserver-{i}"), loom, args, dir);
            part.start()?;
            apiservers.push(part);
        }
        let all_urls = urls.join(",");
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            etcd,
            apiservers,
            etcd_links,
            schedulers: Vec::new(),
            controllers: Vec::new(),
            nodelets: BTreeMap::new(),
            node_links: BTreeMap::new(),
            hosts,
            urls: urls.clone(),
            pki,
            cgroup_parent,
            clocks: BTreeMap::new(),
            small_disk: None,
        };
        cluster.wait_ready(Duration::from_secs(60)).await?;
        let access =
            crate::access::Access::new(urls[0].clone(), Some(cluster.pki.clone()), loom.to_owned());
        access.bind_bench_user().await?;

        for i in 0..2 {
            for (part, component, list) in [
                ("scheduler", Component::Scheduler, 0),
                ("controllers", Component::Controllers, 1),
            ] {
                let mut args = vec![part.to_owned()];
                args.extend(with_servers(access.component_args(&component)?, &all_urls));
                if part == "controllers" {
                    args.extend([
                        "--node-grace-seconds".into(),
                        shape.node_grace.as_secs().to_string(),
                        "--lost-grace-seconds".into(),
                        shape.lost_grace.as_secs().to_string(),
                    ]);
                }
                let mut p = Part::new(&format!("{part}-{i}"), loom, args, dir);
                p.start()?;
                if list == 0 {
                    cluster.schedulers.push(p);
                } else {
                    cluster.controllers.push(p);
                }
            }
        }

        for n in 0..shape.nodes {
            let name = format!("soak-{n}");
            let (host_ip, ip) = match cluster.hosts.get(&name) {
                Some(host) => (host.host_ip, host.ip),
                None => bail!("node {name} has no host"),
            };
            let mut links = Vec::new();
            for port in &ports {
                links.push(
                    FaultProxy::start_on(
                        SocketAddr::from((host_ip, 0)),
                        SocketAddr::from(([127, 0, 0, 1], *port)),
                    )
                    .await?,
                );
            }
            let servers = links
                .iter()
                .map(|l| format!("https://{}", l.address()))
                .collect::<Vec<_>>()
                .join(",");
            let mut args = vec!["nodelet".to_owned()];
            args.extend(with_servers(
                access.component_args(&Component::Node(name.clone()))?,
                &servers,
            ));
            let state_dir = dir.join(&name);
            if n == 0 {
                // The first node's state dir is a tmpfs of its own, to fill.
                std::fs::create_dir_all(&state_dir)?;
                mount_tmpfs(&state_dir)?;
                cluster.small_disk = Some((name.clone(), state_dir.clone()));
            }
            args.extend([
                "--name".into(),
                name.clone(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--cgroup-parent".into(),
                cluster.cgroup_parent.clone(),
                "--max-tasks".into(),
                "50".into(),
                "--allow-raw-exec".into(),
                // Its endpoint on its own address: the API servers' calls
                // (task logs) cross its veth, and a partition cuts them.
                "--listen".into(),
                format!("{ip}:{NODELET_PORT}"),
                "--advertise".into(),
                format!("https://{ip}:{NODELET_PORT}"),
            ]);
            let (program, args) = match cluster.hosts.get(&name) {
                Some(host) => host.wrap(loom, args),
                None => bail!("node {name} has no host"),
            };
            let mut part = Part::new(&format!("nodelet-{name}"), &program, args, dir);
            if shape.clock {
                // The clock is stepped by libfaketime, preloaded into the
                // nodelet (and so into its shims and raw tasks), reading its
                // offset from a file the soak rewrites: a step of CLOCK_REALTIME
                // while everything runs, as NTP or an operator makes one, with
                // no hook in Loom's own code (its wall-clock reads are
                // scattered through the nodelet; a test-only offset flag would
                // miss the shims and the tasks). The monotonic clock is left
                // alone, as a real step leaves it.
                let clock = dir.join(format!("clock-{name}"));
                std::fs::write(&clock, "+0s\n")?;
                part.env = vec![
                    ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                    (
                        "FAKETIME_TIMESTAMP_FILE".into(),
                        clock.display().to_string(),
                    ),
                    ("FAKETIME_CACHE_DURATION".into(), "1".into()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                    ("DONT_FAKE_MONOTONIC".into(), "1".into()),
                ];
                cluster.clocks.insert(name.clone(), clock);
            }
            part.start()?;
            cluster.nodelets.insert(name.clone(), part);
            cluster.node_links.insert(name, links);
        }
        Ok(cluster)
    }

    /// A client of every API server (failing over between them) as the
    /// administrator.
    pub fn admin(&self) -> anyhow::Result<client::Client> {
        let mut config = client::Config::from_kubeconfig(&self.pki.dir.join("admin.conf"), None)?;
        config.server = self.urls.join(",");
        Ok(client::Client::new(config)?)
    }

    /// A client of one API server only, as the administrator.
    pub fn admin_of(&self, i: usize) -> anyhow::Result<client::Client> {
        let mut config = client::Config::from_kubeconfig(&self.pki.dir.join("admin.conf"), None)?;
        config.server = self.urls[i].clone();
        Ok(client::Client::new(config)?)
    }

    /// Waits until every API server answers /readyz.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for (i, url) in self.urls.iter().enumerate() {
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(loom_listener::tls::client_config(
                    Some(&std::fs::read_to_string(self.pki.dir.join("ca.crt"))?),
                    None,
                )?)
                .timeout(Duration::from_secs(2))
                .build()?;
            loop {
                if let Ok(r) = http.get(format!("{url}/readyz")).send().await
                    && r.status().is_success()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "API server {i} was not ready within {within:?}: {}",
                        self.apiservers[i].log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Every part, for sampling and checks.
    pub fn parts_mut(&mut self) -> Vec<&mut Part> {
        let mut parts: Vec<&mut Part> = Vec::new();
        if let Some(etcd) = &mut self.etcd {
            parts.push(etcd);
        }
        parts.extend(self.apiservers.iter_mut());
        parts.extend(self.schedulers.iter_mut());
        parts.extend(self.controllers.iter_mut());
        parts.extend(self.nodelets.values_mut());
        parts
    }

    /// Kills node `name` whole, as a power loss: its nodelet and every
    /// process of its runs (shims and tasks) at once.
    pub fn crash_node(&mut self, name: &str) -> usize {
        let state = self.dir.join(name).display().to_string();
        let cgroup = format!("/{}/{name}/", self.cgroup_parent);
        let mut victims = Vec::new();
        if let Some(part) = self.nodelets.get(name)
            && let Some(pid) = part.pid()
        {
            victims.push(pid as i32);
        }
        for pid in processes() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&state) || cgroups.contains(&cgroup) {
                victims.push(pid);
            }
        }
        victims.sort_unstable();
        victims.dedup();
        for pid in &victims {
            // SAFETY: kill(2); a pid gone meanwhile is harmless.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        if let Some(part) = self.nodelets.get_mut(name) {
            part.kill();
        }
        victims.len()
    }

    /// Processes in the nodes' task cgroups.
    pub fn task_processes(&self) -> usize {
        let cgroup = format!("/{}/", self.cgroup_parent);
        processes()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&cgroup))
            })
            .count()
    }

    /// Cuts node `name` off: nftables drop rules inside its network
    /// namespace, every packet in or out (but on `lo`).
    pub fn partition(&self, name: &str) -> anyhow::Result<()> {
        match self.hosts.get(name) {
            Some(host) => Ok(host.partition()?),
            None => bail!("node {name} has no host"),
        }
    }

    /// Ends node `name`'s partition.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        match self.hosts.get(name) {
            Some(host) => Ok(host.heal()?),
            None => bail!("node {name} has no host"),
        }
    }

    /// What is left on this host of the cluster once it stopped: processes
    /// under its directory or cgroups or in its nodes' network namespaces,
    /// cgroups, mounts, the nodes' veths, namespaces and partitions.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for host in self.hosts.values() {
            found.extend(host.leftovers());
        }
        if netns::partition_in_root_namespace() {
            found.push(format!(
                "nftables table inet {} in the root network namespace",
                netns::PARTITION_TABLE
            ));
        }
        let dir = self.dir.display().to_string();
        let cgroup = format!("/{}/", self.cgroup_parent);
        for pid in processes() {
            if pid as u32 == std::process::id() {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cmdline.contains(&dir) || cgroups.contains(&cgroup) {
                found.push(format!("process {pid}: {}", cmdline.trim()));
            }
        }
        // The small node's own tmpfs is unmounted after this look.
        let small = self
            .small_disk
            .as_ref()
            .map(|(_, d)| format!(" {} ", d.display()));
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines() {
                let own = small.as_ref().is_some_and(|s| {
                    line.split(' ').nth(4).map(|m| format!(" {m} ")).as_ref() == Some(s)
                });
                if line.contains(&dir) && !own {
                    found.push(format!("mount: {line}"));
                }
            }
        }
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let root = hierarchy.path().join(&self.cgroup_parent);
                for dir in cgroup_dirs(&root) {
                    let procs =
                        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    // A run's cgroup left behind; the node's own parents are
                    // the nodelet's to keep.
                    if dir.components().count() > root.components().count() + 1
                        || !procs.trim().is_empty()
                    {
                        found.push(format!("cgroup: {}", dir.display()));
                    }
                }
            }
        }
        found
    }

    /// Stops everything: nodelets gracefully (they stop their tasks), then
    /// the control plane, then etcd.
    pub fn stop(&mut self) {
        for part in self.nodelets.values_mut() {
            part.stop(Duration::from_secs(30));
        }
        for part in self
            .schedulers
            .iter_mut()
            .chain(self.controllers.iter_mut())
        {
            part.stop(Duration::from_secs(10));
        }
        for part in &mut self.apiservers {
            part.stop(Duration::from_secs(10));
        }
        if let Some(etcd) = &mut self.etcd {
            etcd.stop(Duration::from_secs(10));
        }
        for host in self.hosts.values() {
            host.remove();
        }
    }

    /// Unmounts the small node's tmpfs (its nodelet stopped); says why not.
    /// `lazy`: detach it even when busy (the last resort of a drop).
    pub fn unmount_small_disk(&mut self, lazy: bool) -> Result<(), String> {
        let Some((_, dir)) = self.small_disk.take() else {
            return Ok(());
        };
        let _ = std::fs::remove_file(dir.join(FILL));
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: umount2(2) of the mount this soak made.
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if lazy {
            // SAFETY: as above.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        } else {
            self.small_disk = Some((String::new(), dir.clone()));
        }
        Err(format!("cannot unmount {}: {error}", dir.display()))
    }

    /// Fills the small node's state dir; returns the bytes written.
    pub fn fill_small_disk(&self) -> anyhow::Result<u64> {
        use std::io::Write as _;
        let Some((_, dir)) = &self.small_disk else {
            return Ok(0);
        };
        let mut file = std::fs::File::create(dir.join(FILL))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The last bytes: a short write may leave a page free.
        let small = [0u8; 512];
        while let Ok(n) = file.write(&small) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        Ok(written)
    }

    /// Frees the small node's state dir again.
    pub fn free_small_disk(&self) {
        if let Some((_, dir)) = &self.small_disk {
            let _ = std::fs::remove_file(dir.join(FILL));
        }
    }

    /// Steps node `name`'s clock to `offset` seconds from the real one.
    pub fn step_clock(&self, name: &str, offset: i64) -> anyhow::Result<()> {
        if let Some(file) = self.clocks.get(name) {
            std::fs::write(file, format!("{offset:+}s\n"))?;
        }
        Ok(())
    }
}

/// The file that fills the small node's disk.
const FILL: &str = "soak-disk-fill";

/// Mounts a small tmpfs on `dir`.
fn mount_tmpfs(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", SMALL_DISK, "loom-soak-disk"])
        .arg(dir)
        .status()
        .context("cannot run mount")?;
    if !status.success() {
        bail!("cannot mount a tmpfs on {}: {status}", dir.display());
    }
    Ok(())
}

/// The nodes' hosts (`soak-N` in namespace `{run}-N`, host-side veth
/// `ls{pid}hN`) on a 10.X.0.0/16 free here: node N's link is 10.X.N.0/30.
fn make_hosts(run: &str, pid: u32, nodes: usize) -> anyhow::Result<BTreeMap<String, NetnsHost>> {
    if nodes > 250 {
        bail!("at most 250 nodes (one /30 each in a /16)");
    }
    // From an offset of the pid: two soaks starting at once seldom pick
    // the same; the e2e suite's are 200 and up.
    let net = netns::free_net((0..50u32).map(|i| 150 + ((pid + i) % 50) as u8))?
        .context("no 10.X.0.0/16 free here among 10.150-10.199")?;
    let mut hosts = BTreeMap::new();
    for n in 0..nodes {
        let third = n as u8;
        let host = NetnsHost::create(
            &format!("{run}-{n}"),
            &format!("{VETH_PREFIX}{pid}h{n}"),
            &format!("{VETH_PREFIX}{pid}n{n}"),
            Ipv4Addr::new(10, net, third, 1),
            Ipv4Addr::new(10, net, third, 2),
        )?;
        hosts.insert(format!("soak-{n}"), host);
    }
    Ok(hosts)
}

/// `loom certs` again, the API servers' serving certificate made to name
/// `sans` too (what is there and fits is kept).
fn add_serving_names(loom: &Path, pki: &Path, url: &str, sans: &[String]) -> anyhow::Result<()> {
    let output = Command::new(loom)
        .arg("certs")
        .arg("--dir")
        .arg(pki)
        .args(["--server", url, "--tls-san", &sans.join(",")])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} certs", loom.display()))?;
    if !output.status.success() {
        bail!(
            "{} certs --tls-san {}: {}",
            loom.display(),
            sans.join(","),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Removes what soaks that died without their cleanup (SIGKILLed) left on
/// this host, found by the pid in their names: processes in their cgroups
/// and nodes' namespaces, their cgroups, mounts, veths and namespaces. Their
/// directories (logs) are kept.
fn sweep_dead_runs() {
    let mut found: Vec<(String, u32)> =
        netns::names_with_pid(Path::new(netns::NETNS_DIR), RUN_PREFIX);
    found.extend(netns::names_with_pid(&std::env::temp_dir(), RUN_PREFIX));
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for hierarchy in hierarchies.flatten() {
            found.extend(netns::names_with_pid(&hierarchy.path(), RUN_PREFIX));
        }
    }
    found.extend(netns::names_with_pid(
        Path::new("/sys/fs/cgroup"),
        RUN_PREFIX,
    ));
    // Only names this soak gives: `loom-soak-PID` or `loom-soak-PID-…`.
    let mut pids: Vec<u32> = found
        .into_iter()
        .filter(|(name, pid)| {
            let run = format!("{RUN_PREFIX}{pid}");
            *name == run || name.starts_with(&format!("{run}-"))
        })
        .map(|(_, pid)| pid)
        .collect();
    pids.extend(
        netns::names_with_pid(Path::new("/sys/class/net"), VETH_PREFIX)
            .into_iter()
            .filter(|(name, pid)| name.starts_with(&format!("{VETH_PREFIX}{pid}h")))
            .map(|(_, pid)| pid),
    );
    pids.sort_unstable();
    pids.dedup();
    let me = std::process::id();
    for pid in pids {
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("soak: removing what the dead soak {pid} left on this host");
        let run = format!("{RUN_PREFIX}{pid}");
        let namespaces: Vec<String> =
            netns::names_with_pid(Path::new(netns::NETNS_DIR), RUN_PREFIX)
                .into_iter()
                .filter(|(name, _)| name.starts_with(&format!("{run}-")))
                .map(|(name, _)| name)
                .collect();
        let mut cgroups: Vec<PathBuf> = Vec::new();
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                cgroups.extend(cgroup_dirs(&hierarchy.path().join(&run)));
            }
        }
        cgroups.extend(cgroup_dirs(&Path::new("/sys/fs/cgroup").join(&run)));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut victims: Vec<i32> = namespaces
                .iter()
                .filter_map(|name| netns::netns_inode(name))
                .flat_map(netns::processes_in)
                .collect();
            for dir in &cgroups {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    victims.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
            if victims.is_empty() || Instant::now() > deadline {
                break;
            }
            for victim in victims {
                // SAFETY: kill(2) of a dead soak's leftover; a pid gone
                // meanwhile is harmless.
                unsafe {
                    libc::kill(victim, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cgroups.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in cgroups {
            let _ = std::fs::remove_dir(dir);
        }
        let under = std::env::temp_dir().join(format!("{run}-"));
        let under = under.display().to_string();
        if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mountinfo
                .lines()
                .filter_map(|line| line.split(' ').nth(4))
                .filter(|point| point.starts_with(&under))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                if let Ok(path) = std::ffi::CString::new(point) {
                    // SAFETY: umount2(2) of a dead soak's mount.
                    unsafe {
                        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                    }
                }
            }
        }
        for (name, _) in netns::names_with_pid(Path::new("/sys/class/net"), VETH_PREFIX) {
            if name.starts_with(&format!("{VETH_PREFIX}{pid}h")) {
                netns::remove_link(&name);
            }
        }
        for name in namespaces {
            netns::remove_netns(&name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for part in self.parts_mut() {
            part.kill();
        }
        let names: Vec<String> = self.nodelets.keys().cloned().collect();
        for name in names {
            self.crash_node(&name);
        }
        // The killed tasks leave their cgroups once they are reaped.
        let gone = Instant::now() + Duration::from_secs(5);
        while self.task_processes() > 0 && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(100));
        }
        nodelet::cgroup::remove_tree(&format!("/{}", self.cgroup_parent));
        // Every v1 hierarchy, not only the ones the nodelet sets limits in:
        // the deepest first.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let mut dirs = cgroup_dirs(&hierarchy.path().join(&self.cgroup_parent));
                dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                for dir in dirs {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
        let _ = self.unmount_small_disk(true);
    }
}

/// Replaces the `--server URL` of `args` with `servers`.
fn with_servers(mut args: Vec<String>, servers: &str) -> Vec<String> {
    if let Some(i) = args.iter().position(|a| a == "--server")
        && i + 1 < args.len()
    {
        args[i + 1] = servers.to_owned();
    } else {
        args.extend(["--server".to_owned(), servers.to_owned()]);
    }
    args
}

/// Every pid on the host.
fn processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// `root` and every cgroup below it.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        if !dir.is_dir() {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        found.push(dir);
    }
    found
}
