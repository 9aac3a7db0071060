//! The task sandbox, attacked from inside with real containers and real confined
//! exec processes: devices, namespaces, masked `/proc`, capabilities, the host's
//! files, other tasks' files, mounts left behind. Needs root; skipped otherwise.
#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api_types::Task;
use loom_testing::nodelet::{Harness, is_root, phase};
use serde_json::json;
use sha2::Digest as _;

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the sandbox tests need root");
            return;
        }
    };
}

const LONG: Duration = Duration::from_secs(30);

/// The task's log as the nodelet wrote it.
fn log_of(h: &Harness, task: &Task) -> String {
    let path = h
        .state
        .join("tasks")
        .join(&task.metadata.uid)
        .join("logs")
        .join("log");
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls the task's log until it holds `marker`.
async fn wait_log(h: &Harness, name: &str, marker: &str) -> String {
    let task = h.tasks().get(name).await.unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        let log = log_of(h, &task);
        if log.contains(marker) {
            return log;
        }
        let phase = h.tasks().get(name).await.unwrap();
        assert!(
            Instant::now() < deadline
                && !phase.status.as_ref().is_some_and(|s| s.phase.is_terminal()),
            "{name} never printed {marker:?}: {log}\n{:?}",
            phase.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value printed after `key=` on a line of `log`.
fn value<'a>(log: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    log.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in the log: {log}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_no_devices_namespaces_or_kernel_files() {
    need_root!();
    let h = Harness::new("sbox-ctr").await;
    h.import_busybox();
    let nodelet = h.start(h.config(), None);
    // The masked and read-only paths this kernel has (kcore, sysrq-trigger and
    // others are build options).
    let present = |paths: &[&'static str]| -> Vec<&'static str> {
        paths
            .iter()
            .copied()
            .filter(|p| Path::new(p).exists())
            .collect()
    };
    let masked = present(&nodelet::spec::MASKED_PATHS);
    let readonly = present(&nodelet::spec::READONLY_PATHS);
    assert!(masked.contains(&"/proc/timer_list") && readonly.contains(&"/proc/sys"));
    let script = [
        "mkdir -p /tmp",
        "mknod /tmp/disk b 8 0 && echo mknod=allowed || echo mknod=refused",
        "mknod /tmp/mem c 1 1 && echo mknod-mem=allowed || echo mknod-mem=refused",
        "unshare -U true && echo userns=allowed || echo userns=refused",
        "unshare -r -m true && echo mountns=allowed || echo mountns=refused",
        "unshare -n true && echo netns=allowed || echo netns=refused",
        "echo timer_list=$(wc -c < /proc/timer_list)",
        "echo kcore=$(head -c 16 /proc/kcore 2>/dev/null | wc -c)",
        "for p in $MASKED $READONLY /sys; do \
           awk -v p=$p '$5==p {o=$6} END {print \"mount\" p \"=\" (o ? o : \"none\")}' /proc/self/mountinfo; done",
        "echo 1 > /proc/sys/vm/drop_caches && echo proc-sys=written || echo proc-sys=refused",
        "grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'",
        // Fork and exec still work under the allow-list (clone without namespace
        // flags; clone3 says ENOSYS and glibc falls back).
        "echo forked=$(sh -c 'echo yes' | cat)",
        // Its own network namespace, made by the shim: only `lo`, up, with
        // 127.0.0.1, and a listener on it reachable.
        "echo net-ns=$(readlink /proc/self/ns/net)",
        "echo links=$(ls /sys/class/net | tr '\\n' ' ')",
        "echo lo-flags=$(cat /sys/class/net/lo/flags)",
        // The listener takes one connection; the client retries until it is up.
        "busybox nc -l -p 7070 127.0.0.1 > /tmp/got & listener=$!; \
         for i in $(seq 1 100); do echo hi | busybox nc 127.0.0.1 7070 2>/dev/null && break; sleep 0.1; done; \
         wait $listener; echo lo-connect=$(cat /tmp/got)",
        "echo ready",
        "exec sleep 600",
    ]
    .join("\n");
    let task = h
        .create(json!({"metadata": {"name": "boxed"}, "spec": {
            "command": ["sh", "-c", script],
            "env": [
                {"name": "MASKED", "value": masked.join(" ")},
                {"name": "READONLY", "value": readonly.join(" ")},
            ],
            "timeLimitSeconds": 120,
        }}))
        .await;
    let log = wait_log(&h, "boxed", "\nready").await;

    // The device cgroup holds exactly the standard character devices.
    let devices = nodelet::cgroup::Cgroup::new(&format!(
        "/{}/{}/{}-1",
        h.cgroup_parent, h.name, task.metadata.uid
    ))
    .device_list()
    .unwrap();
    let mut rules: Vec<&str> = devices.lines().collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            "c 136:* rwm",
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:2 rwm"
        ],
        "devices.list: {devices}"
    );

    assert_eq!(value(&log, "mknod"), "refused", "{log}");
    assert_eq!(value(&log, "mknod-mem"), "refused", "{log}");
    assert_eq!(value(&log, "userns"), "refused", "{log}");
    assert_eq!(value(&log, "mountns"), "refused", "{log}");
    assert_eq!(value(&log, "netns"), "refused", "{log}");
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(value(&log, "net-ns"), host_ns.to_str().unwrap(), "{log}");
    assert!(value(&log, "net-ns").starts_with("net:["), "{log}");
    assert_eq!(value(&log, "links"), "lo", "{log}");
    // IFF_UP | IFF_LOOPBACK.
    assert_eq!(value(&log, "lo-flags"), "0x9", "{log}");
    assert_eq!(value(&log, "lo-connect"), "hi", "{log}");
    assert_eq!(value(&log, "timer_list"), "0", "masked: {log}");
    assert_eq!(value(&log, "kcore"), "0", "{log}");
    // Each masked path is covered (by /dev/null or an empty read-only tmpfs),
    // each read-only one and /sys mounted read-only.
    for path in &masked {
        assert_ne!(
            value(&log, &format!("mount{path}")),
            "none",
            "{path} unmasked: {log}"
        );
    }
    for path in readonly.iter().chain(&["/sys"]) {
        let options = value(&log, &format!("mount{path}"));
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{path}: {options}: {log}"
        );
    }
    assert_eq!(value(&log, "proc-sys"), "refused", "{log}");
    // Docker's default set without MKNOD (bit 27) and NET_RAW (bit 13).
    let bounding = u64::from_str_radix(value(&log, "CapBnd"), 16).unwrap();
    assert_eq!(bounding, 0xa004_05fb, "{log}");
    assert_eq!(bounding & (1 << 27 | 1 << 13), 0);
    assert_eq!(value(&log, "Seccomp"), "2", "{log}");
    assert_eq!(value(&log, "forked"), "yes", "{log}");

    h.tasks()
        .delete("boxed", &Default::default())
        .await
        .unwrap();
    let deadline = Instant::now() + LONG;
    while h.tasks().get_opt("boxed").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "boxed was not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodelet.stop().await;
}

/// A tree of files on the host that no task may change: removed on drop.
struct Canary(PathBuf);

impl Canary {
    fn plant() -> Canary {
        let dir = PathBuf::from(format!("/var/tmp/loom-canary-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), "canary a\n").unwrap();
        std::fs::write(dir.join("sub/b"), "canary b\n").unwrap();
        // World-writable: only the read-only root keeps a task out.
        for path in [
            dir.clone(),
            dir.join("sub"),
            dir.join("a"),
            dir.join("sub/b"),
        ] {
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .unwrap();
        }
        Canary(dir)
    }

    /// Names, modes, owners and contents of the tree.
    fn checksum(&self) -> String {
        fn walk(dir: &Path, hash: &mut sha2::Sha256) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let meta = entry.metadata().unwrap();
                hash.update(entry.path().as_os_str().as_encoded_bytes());
                hash.update(format!("{:o} {} {}", meta.mode(), meta.uid(), meta.gid()));
                if meta.is_dir() {
                    walk(&entry.path(), hash);
                } else {
                    hash.update(std::fs::read(entry.path()).unwrap());
                }
            }
        }
        let mut hash = sha2::Sha256::new();
        walk(&self.0, &mut hash);
        format!("{:x}", hash.finalize())
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The mount points at or below `under` in the mount namespace `ns`.
fn mounts_in(ns: &std::fs::File, under: &Path) -> Vec<String> {
    let fd = ns.as_raw_fd();
    let under = under.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: unshare and setns affect only this thread, which reads one file
        // and exits.
        unsafe {
            assert_eq!(
                libc::unshare(libc::CLONE_FS),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::setns(fd, libc::CLONE_NEWNS),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
        }
        std::fs::read_to_string("/proc/thread-self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| Path::new(m).starts_with(&under))
            .collect()
    })
    .join()
    .unwrap()
}

fn host_mounts_under(under: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(under))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tasks_run_confined_on_a_read_only_host() {
    need_root!();
    let h = Harness::new("sbox-exec").await;
    let canary = Canary::plant();
    let before = canary.checksum();
    let base = h.state.parent().unwrap().to_owned();
    let output = base.join("out");
    let input = base.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("in.txt"), "input\n").unwrap();
    // Another task's files, in the nodelet's state directory.
    let other = h.state.join("tasks").join("other-task");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret"), "secret\n").unwrap();
    let tag = std::process::id();
    let host_tmp = std::env::temp_dir().join(format!("loom-host-tmp-{tag}"));
    std::fs::write(&host_tmp, "host\n").unwrap();
    let _host_tmp = Canary(host_tmp.clone());
    let etc_file = PathBuf::from(format!("/etc/loom-escape-{tag}"));
    let usr_file = PathBuf::from(format!("/usr/loom-escape-{tag}"));
    // A loopback listener on the host: the task reaches it over the host network.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let accepted = std::thread::spawn(move || {
        let deadline = Instant::now() + LONG;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(LONG)).unwrap();
                    // One line, then close: nc ends when the peer does.
                    let mut got = String::new();
                    let _ = std::io::BufReader::new(stream).read_line(&mut got);
                    return got;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return String::new();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });

    let nodelet = h.start(h.config(), None);
    let mut script = vec![
        "echo uid=$(id -u) gid=$(id -g)".to_owned(),
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/:/=/'".into(),
        "echo pid=$$".into(),
        format!("echo x > {} && echo etc=written || echo etc=refused", etc_file.display()),
        format!("echo x > {} && echo usr=written || echo usr=refused", usr_file.display()),
        "C=$CANARY; rm -rf $C/sub; echo evil >> $C/a; chmod 700 $C/a; touch $C/new; mv $C/a $C/b; \
         [ \"$(cat $C/a)\" = 'canary a' ] && echo canary=intact || echo canary=changed"
            .into(),
        "ls -a $STATE/tasks | tr '\\n' ' ' | sed 's/^/state-tasks=/'; echo".into(),
        "cat $STATE/tasks/other-task/secret 2>/dev/null && echo secret=read || echo secret=hidden".into(),
        "echo work > work.txt && echo cwd=$(pwd) work=written || echo work=refused".into(),
        "echo out > $LOOM_OUTPUT_DIR/out.txt && echo output=written || echo output=refused".into(),
        "echo x > $INPUT/y && echo input=written || echo input=refused".into(),
        "cat $INPUT/in.txt | sed 's/^/input-read=/'".into(),
        "echo tmp=$(ls -A /tmp)".into(),
        format!("cat {} 2>/dev/null && echo host-tmp=visible || echo host-tmp=hidden", host_tmp.display()),
        "ls /sys/class/net | tr '\\n' ' ' | sed 's/^/net=/'; echo".into(),
        format!("echo from-exec | busybox nc 127.0.0.1 {port} && echo connect=ok || echo connect=failed"),
        "unshare -U true 2>/dev/null && echo userns=allowed || echo userns=refused".into(),
        "unshare -r -m true 2>/dev/null && echo mountns=allowed || echo mountns=refused".into(),
        "mount -t tmpfs none /tmp 2>/dev/null && echo mount=allowed || echo mount=refused".into(),
        "echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)".into(),
        "echo devices=$(ls /dev | tr '\\n' ' ')".into(),
    ];
    let perl = cfg!(target_arch = "x86_64") && Path::new("/usr/bin/perl").exists();
    if perl {
        // clone(2) with CLONE_NEWUSER | SIGCHLD: only seccomp stops an
        // unprivileged user from making a user namespace this way.
        script.push(
            "perl -e '$r = syscall(56, 0x10000011, 0, 0, 0, 0); exit 0 if $r == 0; print \"clone-newuser=\", ($r < 0 ? \"refused\" : \"allowed\"), \"\\n\"'"
                .into(),
        );
    }
    if perl {
        // clone3(2) fails with ENOSYS, so that glibc falls back to clone(2),
        // whose flags seccomp can see.
        script.push("perl -e 'syscall(435, 0, 0); print \"clone3-errno=\", $!+0, \"\\n\"'".into());
    }
    script.push("echo ready".into());
    // The test holds the shim's mount namespace, then lets the task end.
    script.push("while [ ! -e go ]; do sleep 0.05; done; echo done".into());
    let task = h
        .create(json!({"metadata": {"name": "confined"}, "spec": {
            "driver": "exec",
            "command": ["/bin/sh", "-c", script.join("\n")],
            "env": [
                {"name": "LOOM_OUTPUT_DIR", "value": "/output"},
                {"name": "INPUT", "value": "/input"},
                {"name": "STATE", "value": h.state.display().to_string()},
                {"name": "CANARY", "value": canary.0.display().to_string()},
            ],
            "mounts": [
                {"source": output.display().to_string(), "target": "/output", "readOnly": false},
                {"source": input.display().to_string(), "target": "/input"},
            ],
            "resources": {"memory": "48Mi"},
            "timeLimitSeconds": 120,
        }}))
        .await;
    let log = wait_log(&h, "confined", "\nready").await;

    // The shim's mount namespace holds the bind of the host's root; the host's
    // does not, ever.
    let run = h.runs(&task)[0].clone();
    let shim_pid: i32 = std::fs::read_to_string(run.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let shim_ns = std::fs::File::open(format!("/proc/{shim_pid}/ns/mnt")).unwrap();
    let during = mounts_in(&shim_ns, &run);
    assert!(
        during.iter().any(|m| Path::new(m) == run.join("rootfs")),
        "the shim's namespace has the root bind: {during:?}"
    );
    assert!(
        host_mounts_under(&h.state).is_empty(),
        "{:?}",
        host_mounts_under(&h.state)
    );
    let work_dir = h
        .state
        .canonicalize()
        .unwrap()
        .join("tasks")
        .join(&task.metadata.uid)
        .join("sandbox");
    std::fs::write(work_dir.join("go"), "").unwrap();
    let done = h
        .wait_for("confined", LONG, |t| phase(t) == "Completed")
        .await;
    assert_eq!(done.status.unwrap().exit_code, Some(0));
    let log = format!(
        "{log}{}",
        log_of(&h, &task).split_once("\nready").unwrap().1
    );
    assert!(log.contains("\ndone"), "{log}");

    // Every mount is gone, in the shim's namespace (kept alive by our handle)
    // as on the host.
    let after = mounts_in(&shim_ns, &run);
    assert!(after.is_empty(), "mounts left after the run: {after:?}");
    assert!(host_mounts_under(&h.state).is_empty());

    assert_eq!(value(&log, "uid"), "65534 gid=65534", "{log}");
    assert_eq!(value(&log, "CapEff"), "0000000000000000", "{log}");
    assert_eq!(value(&log, "CapBnd"), "0000000000000000", "{log}");
    assert_eq!(value(&log, "NoNewPrivs"), "1", "{log}");
    assert_eq!(value(&log, "Seccomp"), "2", "{log}");
    assert_eq!(value(&log, "pid"), "1", "its own pid namespace: {log}");
    assert_eq!(value(&log, "etc"), "refused", "{log}");
    assert_eq!(value(&log, "usr"), "refused", "{log}");
    assert!(!etc_file.exists() && !usr_file.exists());
    assert_eq!(value(&log, "canary"), "intact", "{log}");
    assert_eq!(canary.checksum(), before, "the canary tree changed");
    assert_eq!(
        value(&log, "state-tasks"),
        format!(". .. {}", task.metadata.uid),
        "other tasks' directories are hidden: {log}"
    );
    assert_eq!(value(&log, "secret"), "hidden", "{log}");
    assert_eq!(
        value(&log, "cwd"),
        format!("{} work=written", work_dir.display()),
        "{log}"
    );
    let written = std::fs::metadata(work_dir.join("work.txt")).unwrap();
    assert_eq!((written.uid(), written.gid()), (65534, 65534));
    assert_eq!(value(&log, "output"), "written", "{log}");
    assert_eq!(
        std::fs::read_to_string(output.join("out.txt")).unwrap(),
        "out\n"
    );
    assert_eq!(value(&log, "input"), "refused", "{log}");
    assert!(!input.join("y").exists());
    assert_eq!(value(&log, "input-read"), "input", "{log}");
    // /tmp is empty but for the way to the mounts (the test's temporary dir).
    let temp_name = base.file_name().unwrap().to_str().unwrap();
    assert_eq!(value(&log, "tmp"), temp_name, "{log}");
    assert_eq!(value(&log, "host-tmp"), "hidden", "{log}");
    assert!(value(&log, "net").split(' ').any(|i| i == "lo"), "{log}");
    assert_eq!(value(&log, "connect"), "ok", "{log}");
    assert_eq!(accepted.join().unwrap(), "from-exec\n");
    assert_eq!(value(&log, "userns"), "refused", "{log}");
    assert_eq!(value(&log, "mountns"), "refused", "{log}");
    assert_eq!(value(&log, "mount"), "refused", "{log}");
    assert_eq!(value(&log, "memory"), (48u64 << 20).to_string(), "{log}");
    let devices: Vec<&str> = value(&log, "devices").split(' ').collect();
    assert!(
        devices.contains(&"null")
            && !devices
                .iter()
                .any(|d| d.starts_with("sd") || d.starts_with("nvme") || d.starts_with("vd")),
        "{log}"
    );
    if perl {
        assert_eq!(value(&log, "clone-newuser"), "refused", "{log}");
        assert_eq!(
            value(&log, "clone3-errno"),
            libc::ENOSYS.to_string(),
            "{log}"
        );
    }
    nodelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tasks_run_unconfined_where_allowed_and_exec_start_failures_say_why() {
    need_root!();
    let h = Harness::new("sbox-raw").await;
    let mut config = h.config();
    config.allow_raw_exec = true;
    let nodelet = h.start(config, None);
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    h.create(json!({"metadata": {"name": "raw"}, "spec": {
        "driver": "raw",
        "command": ["/bin/sh", "-c", "echo uid=$(id -u); echo mnt=$(readlink /proc/self/ns/mnt); grep memory /proc/self/cgroup | sed 's/^/cgroup=/'"],
    }}))
    .await;
    h.create(json!({"metadata": {"name": "missing"}, "spec": {
        "driver": "exec",
        "command": ["/no/such/program"],
    }}))
    .await;
    let raw = h.wait_for("raw", LONG, |t| phase(t) == "Completed").await;
    let log = log_of(&h, &raw);
    assert_eq!(value(&log, "uid"), "0", "{log}");
    assert_eq!(
        value(&log, "mnt"),
        host_mnt.display().to_string(),
        "the host's mounts: {log}"
    );
    assert!(
        value(&log, "cgroup").contains(&h.cgroup_parent),
        "in its cgroup: {log}"
    );
    let missing = h.wait_for("missing", LONG, |t| phase(t) == "Failed").await;
    let status = missing.status.unwrap();
    assert!(status.message.contains("/no/such/program"), "{status:?}");
    assert_eq!(status.reason, "CommandNotFound", "{status:?}");
    nodelet.stop().await;
}
