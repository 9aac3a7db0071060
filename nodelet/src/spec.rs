//! The OCI runtime spec of a run. A container gets its own pid, mount, uts, ipc,
//! network and cgroup namespaces and Docker's default capabilities without MKNOD
//! and NET_RAW; a confined exec process gets the host's root read-only and the
//! host's network, an unprivileged user and no capabilities. Both get no new
//! privileges, the same seccomp allow-list (containerd's RuntimeDefault without
//! `ptrace`), a deny-all device rule with only the standard character devices
//! allowed, runc's masked and read-only `/proc` and `/sys` paths, cgroup limits
//! and the task's mounts.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use crate::run::{DriverKind, MountSpec, RunSpec, Sandbox};

/// Capabilities a container keeps (Docker's default set without CAP_MKNOD and
/// CAP_NET_RAW); every other is dropped. A confined exec process keeps none.
pub const CAPABILITIES: [&str; 12] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths over `/proc` and `/sys` hidden from the task (runc's and containerd's
/// defaults): host hardware, kernel memory and keys, timers that leak other
/// processes' activity.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of `/proc` the task may read but not write (runc's defaults).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The character devices a task may use (major, minor; `None` is every minor):
/// null, zero, full, random, urandom, tty, ptmx and the pseudo-terminals. Every
/// other device is denied by the cgroup, whatever node a task manages to reach.
pub const ALLOWED_DEVICES: [(i64, Option<i64>); 8] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

/// System calls the seccomp profile allows without conditions: containerd's
/// RuntimeDefault list (x86_64 and aarch64; the 32-bit compat names in it
/// resolve to nothing on the native architecture, the only one the filter
/// admits). Everything else fails with EPERM, among them
/// `unshare`, `setns`, `mount` and the new mount API (`open_tree`, `move_mount`,
/// `mount_setattr`, `fsopen`...), `keyctl`, `bpf`, `userfaultfd`, `io_uring_*`,
/// `perf_event_open`, kernel modules, clocks and reboot. Unlike containerd's,
/// `ptrace` and `process_vm_readv`/`writev` (the same access to another
/// process's memory) are not allowed.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// The namespace flags `clone` may not carry (containerd's rule for processes
/// without CAP_SYS_ADMIN): a task forks and makes threads, nothing more.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Personalities a task may switch to (containerd's): Linux, its 32-bit and
/// uname-26 variants, and the query.
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// Builds the run's `config.json`. The root is `rootfs` in the bundle: the
/// image's overlay for a container, a read-only bind of the host's root for
/// `exec` (the shim mounts both).
pub fn runtime_spec(run: &RunSpec) -> Result<Spec, String> {
    let mut spec = serde_json::to_value(Spec::default()).map_err(|e| e.to_string())?;
    spec["hostname"] = json!(run.hostname);
    let process = &mut spec["process"];
    process["args"] = json!(run.args);
    process["env"] = json!(run.env);
    process["cwd"] = json!(if run.cwd.is_empty() { "/" } else { &run.cwd });
    process["noNewPrivileges"] = json!(true);
    process["terminal"] = json!(false);
    let capabilities: &[&str] = match run.driver {
        DriverKind::Container => &CAPABILITIES,
        DriverKind::Exec | DriverKind::Raw => &[],
    };
    let caps = json!(capabilities);
    process["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
        "inheritable": [], "ambient": [],
    });
    match run.driver {
        DriverKind::Container => {
            spec["root"] = json!({"path": "rootfs", "readonly": false});
            if let Some(mounts) = spec["mounts"].as_array_mut() {
                for mount in &run.mounts {
                    mounts.push(bind(
                        &mount.source,
                        Path::new(&mount.target),
                        mount.read_only,
                    ));
                }
                if let Some(dir) = &run.service_account {
                    mounts.push(bind(
                        dir,
                        Path::new(crate::service_account::MOUNT_PATH),
                        true,
                    ));
                }
                if let Some(etc) = &run.etc_files {
                    mounts.push(bind(&etc.hosts, Path::new("/etc/hosts"), true));
                    mounts.push(bind(&etc.resolv_conf, Path::new("/etc/resolv.conf"), true));
                }
            }
        }
        DriverKind::Exec | DriverKind::Raw => {
            let sandbox = run
                .sandbox
                .as_ref()
                .ok_or_else(|| format!("run of {}: the exec driver needs a sandbox", run.task))?;
            spec["root"] = json!({"path": "rootfs", "readonly": true});
            spec["process"]["user"] = json!({"uid": sandbox.uid, "gid": sandbox.uid});
            let mut mounts = exec_mounts(sandbox, &run.mounts);
            if let Some(dir) = &run.service_account {
                // Inside the sandbox's empty /run (/var/run is its symlink on
                // the host), so the mount point is made in a tmpfs, never on
                // the host.
                mounts.push(bind(dir, &exec_service_account_path(), true));
            }
            spec["mounts"] = json!(mounts);
            // The host's network: no network namespace.
            spec["linux"]["namespaces"] = json!(
                ["pid", "ipc", "uts", "mount", "cgroup"]
                    .iter()
                    .map(|t| json!({"type": t}))
                    .collect::<Vec<_>>()
            );
        }
    }
    let capabilities = capabilities.to_vec();
    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = json!(run.cgroup_path);
    linux["maskedPaths"] = json!(MASKED_PATHS);
    linux["readonlyPaths"] = json!(READONLY_PATHS);
    let mut resources = json!({"devices": device_rules()});
    if let Some(millis) = run.limits.cpu_millis {
        let period = 100_000u64;
        resources["cpu"] = json!({"quota": (millis * period / 1000).max(1000), "period": period});
    }
    if let Some(bytes) = run.limits.memory_bytes {
        // Swap included: a container over its memory is OOM-killed, not swapped.
        resources["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    if let Some(pids) = run.limits.pids {
        resources["pids"] = json!({"limit": pids});
    }
    linux["resources"] = resources;
    linux["seccomp"] = seccomp_profile(&capabilities);
    serde_json::from_value(spec).map_err(|e| format!("invalid runtime spec: {e}"))
}

fn bind(source: &Path, destination: &Path, read_only: bool) -> Value {
    let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": options,
    })
}

fn tmpfs(destination: &str, mode: &str) -> Value {
    json!({
        "destination": destination,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", format!("mode={mode}")],
    })
}

/// Where an exec task's service-account files are bound: the mount path
/// with `/var/run` resolved as the host resolves it (to `/run`).
fn exec_service_account_path() -> PathBuf {
    let mount = Path::new(crate::service_account::MOUNT_PATH);
    match std::fs::canonicalize("/var/run") {
        Ok(run) => match mount.strip_prefix("/var/run") {
            Ok(rest) => run.join(rest),
            Err(_) => mount.to_owned(),
        },
        Err(_) => mount.to_owned(),
    }
}

/// The mounts of a confined exec process over the host's read-only root: fresh
/// `/proc`, `/dev` and `/sys` (with its own cgroup), empty `/tmp` and `/run`, the hidden directories
/// emptied, then the work directory and the task's mounts at their host paths.
/// libcontainer creates a missing mount point, which fails on the read-only
/// root (nothing is ever written to the host): each lies on the host already or
/// inside a tmpfs mounted before it, so the binds go parents first.
fn exec_mounts(sandbox: &Sandbox, mounts: &[MountSpec]) -> Vec<Value> {
    let mut out = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        // The task's own cgroup (a cgroup namespace's root), read-only: its limits.
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        tmpfs("/tmp", "1777"),
        tmpfs("/run", "755"),
    ];
    // The host's resolver configuration often lives under /run (systemd-resolved):
    // keep it visible through the empty /run.
    if let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf")
        && resolv.starts_with("/run")
    {
        out.push(bind(&resolv, &resolv, true));
    }
    for hidden in &sandbox.hidden {
        out.push(tmpfs(&hidden.display().to_string(), "755"));
    }
    let mut binds: Vec<(PathBuf, bool)> = vec![(sandbox.work_dir.clone(), false)];
    binds.extend(mounts.iter().map(|m| (m.source.clone(), m.read_only)));
    binds.sort_by_key(|(path, _)| path.components().count());
    out.extend(binds.iter().map(|(path, ro)| bind(path, path, *ro)));
    out
}

/// The device cgroup rules: deny everything, then allow [`ALLOWED_DEVICES`].
fn device_rules() -> Vec<Value> {
    let mut rules = vec![json!({"allow": false, "access": "rwm"})];
    rules.extend(ALLOWED_DEVICES.iter().map(|(major, minor)| {
        let mut rule = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
        if let Some(minor) = minor {
            rule["minor"] = json!(minor);
        }
        rule
    }));
    rules
}

/// The seccomp architecture of this machine, and only it: a system call made
/// through a 32-bit compatibility ABI (`int 0x80`, x32, AArch32) kills the
/// process. Nodes pull images for their own platform, the compat entry points
/// have been a steady source of kernel bugs, and every further architecture
/// makes libseccomp build the whole filter again for each container start
/// (three of them tripled its ~350 rules and cost ~8 ms a start here).
fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64"]
    } else {
        vec![]
    }
}

/// The seccomp allow-list: [`ALLOWED_SYSCALLS`], `socket` but for AF_ALG and
/// AF_VSOCK, `personality` to the usual values, `clone` without namespace flags,
/// `chroot` with CAP_SYS_CHROOT, and `clone3` failing with ENOSYS (its flags sit
/// in memory that seccomp cannot inspect; glibc falls back to `clone`).
fn seccomp_profile(capabilities: &[&str]) -> Value {
    let only = |name: &str, index: u32, op: &str, value: u64| {
        json!({"names": [name], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": index, "value": value, "op": op}]})
    };
    let mut syscalls = vec![json!({"names": ALLOWED_SYSCALLS, "action": "SCMP_ACT_ALLOW"})];
    let af_alg = libc::AF_ALG as u64;
    let af_vsock = libc::AF_VSOCK as u64;
    // Three single-condition rules (conditions on one argument in one rule would
    // be split into rules that each allow).
    syscalls.push(only("socket", 0, "SCMP_CMP_LT", af_alg));
    for family in af_alg + 1..af_vsock {
        syscalls.push(only("socket", 0, "SCMP_CMP_EQ", family));
    }
    syscalls.push(only("socket", 0, "SCMP_CMP_GT", af_vsock));
    for persona in PERSONALITIES {
        syscalls.push(only("personality", 0, "SCMP_CMP_EQ", persona));
    }
    // (arg0 & flags) == 0. libcontainer 0.7 hands libseccomp `valueTwo` as the
    // mask and `value` as the datum (runc reads them the other way round).
    syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 0, "valueTwo": CLONE_NAMESPACE_FLAGS,
                  "op": "SCMP_CMP_MASKED_EQ"}]}));
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": libc::ENOSYS}));
    if capabilities.contains(&"CAP_SYS_CHROOT") {
        syscalls.push(json!({"names": ["chroot"], "action": "SCMP_ACT_ALLOW"}));
    }
    if cfg!(target_arch = "x86_64") {
        syscalls.push(json!({"names": ["arch_prctl", "modify_ldt"], "action": "SCMP_ACT_ALLOW"}));
    } else if cfg!(target_arch = "aarch64") {
        syscalls.push(json!({"names": ["arm_fadvise64_64", "arm_sync_file_range",
            "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
            "action": "SCMP_ACT_ALLOW"}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::run::{DriverKind, Limits, MountSpec};

    fn run() -> RunSpec {
        RunSpec {
            task: "default/t".into(),
            driver: DriverKind::Container,
            container_id: "abc".into(),
            container_root: "/run/loom".into(),
            image_rootfs: Some("/img".into()),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: String::new(),
            mounts: vec![MountSpec {
                source: "/data/in".into(),
                target: "/input".into(),
                read_only: true,
            }],
            limits: Limits {
                cpu_millis: Some(500),
                memory_bytes: Some(64 << 20),
                pids: Some(100),
            },
            cgroup_path: "/loom/n/abc".into(),
            log_path: "/tmp/log".into(),
            log_max_bytes: 1 << 20,
            hostname: "t".into(),
            grace_seconds: None,
            sandbox: None,
            service_account: Some("/var/lib/loom/tasks/u/serviceaccount".into()),
            network: None,
            etc_files: None,
        }
    }

    #[test]
    fn the_service_account_is_mounted_read_only_where_clients_look() {
        let spec = serde_json::to_value(runtime_spec(&run()).unwrap()).unwrap();
        let sa = mount(&spec, crate::service_account::MOUNT_PATH);
        assert_eq!(sa["source"], "/var/lib/loom/tasks/u/serviceaccount");
        assert!(
            sa["options"].as_array().unwrap().iter().any(|o| o == "ro"),
            "{sa}"
        );
        // An exec task sees it through the sandbox's own /run.
        let spec = serde_json::to_value(runtime_spec(&exec_run()).unwrap()).unwrap();
        let path = exec_service_account_path();
        let sa = mount(&spec, &path.display().to_string());
        assert_eq!(sa["source"], "/var/lib/loom/tasks/u/serviceaccount");
        assert!(
            sa["options"].as_array().unwrap().iter().any(|o| o == "ro"),
            "{sa}"
        );
        let mounts = spec["mounts"].as_array().unwrap();
        let run_tmpfs = mounts
            .iter()
            .position(|m| m["destination"] == "/run")
            .unwrap();
        let bound = mounts
            .iter()
            .position(|m| m["destination"] == path.display().to_string())
            .unwrap();
        assert!(
            run_tmpfs < bound,
            "the bind goes into the sandbox's /run, after it"
        );
        let mut without = run();
        without.service_account = None;
        let spec = serde_json::to_value(runtime_spec(&without).unwrap()).unwrap();
        assert!(
            !spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == crate::service_account::MOUNT_PATH)
        );
    }

    fn exec_run() -> RunSpec {
        RunSpec {
            driver: DriverKind::Exec,
            image_rootfs: None,
            cwd: "/var/lib/loom/tasks/u/sandbox".into(),
            mounts: vec![
                MountSpec {
                    source: "/data/out/deep/er".into(),
                    target: "/output".into(),
                    read_only: false,
                },
                MountSpec {
                    source: "/data/in".into(),
                    target: "/input".into(),
                    read_only: true,
                },
            ],
            sandbox: Some(Sandbox {
                work_dir: "/var/lib/loom/tasks/u/sandbox".into(),
                hidden: vec!["/var/lib/loom".into()],
                uid: 65534,
            }),
            ..run()
        }
    }

    fn namespaces(spec: &Value) -> Vec<&str> {
        spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect()
    }

    fn rules_for<'a>(spec: &'a Value, name: &str) -> Vec<&'a Value> {
        spec["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().contains(&json!(name)))
            .collect()
    }

    fn mount<'a>(spec: &'a Value, destination: &str) -> &'a Value {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == destination)
            .unwrap_or_else(|| panic!("no mount at {destination}: {}", spec["mounts"]))
    }

    #[test]
    fn the_spec_isolates_and_limits_the_task() {
        let spec = serde_json::to_value(runtime_spec(&run()).unwrap()).unwrap();
        let namespaces = namespaces(&spec);
        for ns in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(namespaces.contains(&ns), "{ns} missing from {namespaces:?}");
        }
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["args"], json!(["sh", "-c", "true"]));
        assert_eq!(spec["process"]["cwd"], "/");
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        for dropped in [
            "CAP_SYS_ADMIN",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SYS_PTRACE",
        ] {
            assert!(!caps.contains(&json!(dropped)), "{dropped} kept");
        }
        assert!(caps.contains(&json!("CAP_CHOWN")));
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(spec["linux"]["cgroupsPath"], "/loom/n/abc");
        assert!(
            mount(&spec, "/input")["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
        let masked = spec["linux"]["maskedPaths"].as_array().unwrap();
        for path in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/proc/interrupts",
        ] {
            assert!(masked.contains(&json!(path)), "{path} not masked");
        }
        assert!(
            spec["linux"]["readonlyPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/sysrq-trigger"))
        );
        assert!(
            mount(&spec, "/sys")["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
    }

    #[test]
    fn devices_are_denied_but_the_standard_character_devices() {
        let spec = serde_json::to_value(runtime_spec(&run()).unwrap()).unwrap();
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(
            rules[0],
            json!({"allow": false, "access": "rwm"}),
            "deny-all first"
        );
        let allowed: Vec<String> = rules[1..]
            .iter()
            .map(|r| {
                assert_eq!(r["allow"], true);
                assert_eq!(r["type"], "c", "{r}");
                format!(
                    "{}:{}",
                    r["major"],
                    r.get("minor").map_or("*".into(), Value::to_string)
                )
            })
            .collect();
        assert_eq!(
            allowed,
            ["1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:2", "136:*"]
        );
    }

    #[test]
    fn seccomp_is_an_allow_list_without_escapes() {
        let spec = serde_json::to_value(runtime_spec(&run()).unwrap()).unwrap();
        let seccomp = &spec["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        for allowed in ["read", "execve", "wait4", "openat", "futex", "chroot"] {
            let rules = rules_for(&spec, allowed);
            assert!(
                rules
                    .iter()
                    .any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none()),
                "{allowed} not allowed"
            );
        }
        for denied in [
            "ptrace",
            "process_vm_readv",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "keyctl",
            "bpf",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "open_tree",
            "move_mount",
            "mount_setattr",
            "fsopen",
            "perf_event_open",
            "init_module",
            "reboot",
            "pivot_root",
        ] {
            assert!(rules_for(&spec, denied).is_empty(), "{denied} has a rule");
        }
        let clone3 = rules_for(&spec, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(
            clone3[0]["errnoRet"], 38,
            "ENOSYS: glibc falls back to clone"
        );
        let clone = rules_for(&spec, "clone");
        assert_eq!(clone.len(), 1);
        let arg = &clone[0]["args"][0];
        assert_eq!(arg["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(arg["value"], 0);
        assert_eq!(
            arg["valueTwo"], 0x7e02_0000u64,
            "every namespace flag masked"
        );
        // socket: every family but AF_ALG (38) and AF_VSOCK (40).
        let socket = rules_for(&spec, "socket");
        let allows = |family: u64| {
            socket.iter().any(|r| {
                let arg = &r["args"][0];
                let value = arg["value"].as_u64().unwrap();
                match arg["op"].as_str().unwrap() {
                    "SCMP_CMP_LT" => family < value,
                    "SCMP_CMP_EQ" => family == value,
                    "SCMP_CMP_GT" => family > value,
                    op => panic!("unexpected {op}"),
                }
            })
        };
        for family in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
            39,
            41,
        ] {
            assert!(allows(family as u64), "family {family} refused");
        }
        assert!(!allows(libc::AF_ALG as u64) && !allows(libc::AF_VSOCK as u64));
        // The spec parses back into the typed form libcontainer loads.
        let typed = runtime_spec(&run()).unwrap();
        assert!(typed.linux().as_ref().unwrap().seccomp().is_some());
    }

    #[test]
    fn exec_runs_confined_on_the_host_root() {
        let spec = serde_json::to_value(runtime_spec(&exec_run()).unwrap()).unwrap();
        assert_eq!(spec["root"], json!({"path": "rootfs", "readonly": true}));
        let namespaces = namespaces(&spec);
        assert!(
            !namespaces.contains(&"network"),
            "host network: {namespaces:?}"
        );
        for ns in ["pid", "ipc", "uts", "mount", "cgroup"] {
            assert!(namespaces.contains(&ns), "{ns} missing from {namespaces:?}");
        }
        assert_eq!(spec["process"]["user"]["uid"], 65534);
        assert_eq!(spec["process"]["user"]["gid"], 65534);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert_eq!(spec["process"]["capabilities"][set], json!([]), "{set}");
        }
        assert!(
            rules_for(&spec, "chroot").is_empty(),
            "no CAP_SYS_CHROOT, no chroot"
        );
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["cwd"], "/var/lib/loom/tasks/u/sandbox");
        for (destination, kind) in [
            ("/proc", "proc"),
            ("/dev", "tmpfs"),
            ("/sys", "sysfs"),
            ("/tmp", "tmpfs"),
            ("/run", "tmpfs"),
            ("/var/lib/loom", "tmpfs"),
        ] {
            assert_eq!(mount(&spec, destination)["type"], kind, "{destination}");
        }
        assert!(
            mount(&spec, "/sys")["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
        // Binds at their host paths, read-only unless the mount says otherwise,
        // after the tmpfs that hides the state directory.
        let work = mount(&spec, "/var/lib/loom/tasks/u/sandbox");
        assert_eq!(work["source"], "/var/lib/loom/tasks/u/sandbox");
        assert!(!work["options"].as_array().unwrap().contains(&json!("ro")));
        let output = mount(&spec, "/data/out/deep/er");
        assert!(!output["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(
            mount(&spec, "/data/in")["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
        let position = |d: &str| {
            spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .position(|m| m["destination"] == d)
                .unwrap()
        };
        assert!(position("/var/lib/loom") < position("/var/lib/loom/tasks/u/sandbox"));
        assert!(position("/tmp") < position("/data/in"));
        assert!(
            spec["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
        let mut without = exec_run();
        without.sandbox = None;
        assert!(runtime_spec(&without).unwrap_err().contains("sandbox"));
    }
}
