//! The OCI runtime spec of a container run: its own pid, mount, uts, ipc, network
//! and cgroup namespaces, Docker's default capability set, no new privileges, a
//! default seccomp profile, cgroup limits, the task's mounts.

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use crate::run::RunSpec;

/// Capabilities a container keeps (Docker's default set); every other is dropped.
const CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// System calls the default profile refuses with EPERM: kernel modules, reboot,
/// clocks, swap, namespaces and mounts, kernel keyrings, BPF, tracing of other
/// processes' memory and the like (the dangerous part of Docker's default list).
pub const DENIED_SYSCALLS: [&str; 33] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
];

/// Builds the container's `config.json`. The root is `rootfs` in the bundle.
pub fn container_spec(run: &RunSpec) -> Result<Spec, String> {
    let mut spec = serde_json::to_value(Spec::default()).map_err(|e| e.to_string())?;
    spec["hostname"] = json!(run.hostname);
    spec["root"] = json!({"path": "rootfs", "readonly": false});
    let process = &mut spec["process"];
    process["args"] = json!(run.args);
    process["env"] = json!(run.env);
    process["cwd"] = json!(if run.cwd.is_empty() { "/" } else { &run.cwd });
    process["noNewPrivileges"] = json!(true);
    process["terminal"] = json!(false);
    let caps = json!(CAPABILITIES);
    process["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for mount in &run.mounts {
            let mut options = vec!["rbind", "rprivate"];
            if mount.read_only {
                options.push("ro");
            }
            mounts.push(json!({
                "destination": mount.target,
                "type": "bind",
                "source": mount.source,
                "options": options,
            }));
        }
    }
    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = json!(run.cgroup_path);
    let mut resources = json!({});
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
    let devices = linux["resources"]["devices"].clone();
    if !devices.is_null() {
        resources["devices"] = devices;
    }
    linux["resources"] = resources;
    linux["seccomp"] = seccomp_profile();
    serde_json::from_value(spec).map_err(|e| format!("invalid runtime spec: {e}"))
}

/// The default seccomp profile: everything allowed but [`DENIED_SYSCALLS`].
fn seccomp_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": &DENIED_SYSCALLS[..],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }],
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
        }
    }

    #[test]
    fn the_spec_isolates_and_limits_the_task() {
        let spec = serde_json::to_value(container_spec(&run()).unwrap()).unwrap();
        let namespaces: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for ns in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(namespaces.contains(&ns), "{ns} missing from {namespaces:?}");
        }
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["args"], json!(["sh", "-c", "true"]));
        assert_eq!(spec["process"]["cwd"], "/");
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(spec["linux"]["cgroupsPath"], "/loom/n/abc");
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let input = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/input")
            .unwrap();
        assert!(input["options"].as_array().unwrap().contains(&json!("ro")));
    }
}
