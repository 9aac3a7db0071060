//! The shim: one small single-threaded process per run of a task (`loom shim DIR`
//! or `loom-shim DIR`). It creates the container through libcontainer (the exec
//! driver's confined process too, over a read-only bind of the host's root; or
//! starts the raw driver's host process in its cgroup), reports the process id on its
//! stdout, copies the process's output into the rotating log, waits for the exit,
//! cleans the container, cgroup and root filesystem up, and writes `exit.json`.
//!
//! The shim runs in its own session, so it outlives a nodelet that is killed: a
//! restarted nodelet adopts the runs whose shims are still alive and reads the exit
//! records of those that ended meanwhile. libcontainer's `build()` changes the
//! working directory of its process and is not safe with other threads doing the
//! same; here it runs once, before any other thread exists.

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::cgroup::Cgroup;
use crate::logfile::RotatingWriter;
use crate::run::{DriverKind, ExitRecord, RunDir, RunSpec, Started, write_replace};

/// Runs the shim for the run directory `dir`. Returns non-zero only when it could
/// not even record why it failed.
pub fn main(dir: &Path) -> ExitCode {
    // The nodelet may be gone when the shim reports: never die of a closed pipe.
    // SAFETY: setting a signal disposition; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    catch_stop_signals();
    let run_dir = RunDir(dir.to_owned());
    let record = match std::fs::read(run_dir.spec())
        .map_err(|e| format!("cannot read {}: {e}", run_dir.spec().display()))
        .and_then(|bytes| {
            serde_json::from_slice::<RunSpec>(&bytes)
                .map_err(|e| format!("bad run spec {}: {e}", run_dir.spec().display()))
        }) {
        Ok(spec) => {
            let _ = std::fs::write(run_dir.shim_pid(), std::process::id().to_string());
            run(&run_dir, &spec)
        }
        Err(error) => ExitRecord::failed("ShimFailed", error),
    };
    let bytes = match serde_json::to_vec(&record) {
        Ok(bytes) => bytes,
        Err(_) => return ExitCode::FAILURE,
    };
    match write_replace(&run_dir.exit(), &bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            shim_log(&run_dir, &format!("cannot write the exit record: {error}"));
            ExitCode::FAILURE
        }
    }
}

fn shim_log(dir: &RunDir, line: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.shim_log())
    {
        let _ = writeln!(file, "{} {line}", Utc::now().to_rfc3339());
    }
}

/// A started run: what must be waited for and cleaned up.
enum Running {
    /// A libcontainer container (the `container` and `exec` drivers) over
    /// `rootfs`.
    Container {
        container: Box<libcontainer::container::Container>,
        rootfs: PathBuf,
    },
    /// A host process in its own cgroup.
    Raw,
}

fn run(dir: &RunDir, spec: &RunSpec) -> ExitRecord {
    let (read, write) = match pipe() {
        Ok(pair) => pair,
        Err(e) => {
            return ExitRecord::failed("ShimFailed", format!("cannot create the output pipe: {e}"));
        }
    };
    let cgroup = Cgroup::new(&spec.cgroup_path);
    if let Some(signal) = stop_asked() {
        return ExitRecord::failed(
            "Stopped",
            format!("stopped by signal {signal} before it started"),
        );
    }
    let started = match spec.driver {
        DriverKind::Container => start_container(dir, spec, write),
        DriverKind::Exec => start_confined(dir, spec, write),
        DriverKind::Raw => start_raw(spec, &cgroup, write),
    };
    let (pid, running) = match started {
        Ok(started) => started,
        Err((reason, error)) => {
            shim_log(dir, &format!("{reason}: {error}"));
            return ExitRecord::failed(reason, error);
        }
    };
    // From now on a SIGTERM or SIGINT to the shim goes to the task; one that
    // came while it started goes now.
    forward_stop_signals(pid, !matches!(spec.driver, DriverKind::Container));
    let started_at = Utc::now();
    let report = Started {
        pid,
        started_at,
        task_ip: spec.network.as_ref().map(|n| n.ip),
    };
    if let Ok(line) = serde_json::to_vec(&report) {
        let _ = write_replace(&dir.started(), &line);
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(&line);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    }
    // Nothing else is reported on stdout; let a departed nodelet's pipe go.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto stdout with a valid descriptor.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }

    let log_path = spec.log_path.clone();
    let max = spec.log_max_bytes;
    let copier = std::thread::spawn(move || copy_output(read, &log_path, max));

    let status = wait(pid);
    let oom_killed = cgroup.oom_killed();
    let finished_at = Utc::now();
    match running {
        Running::Container {
            mut container,
            rootfs,
        } => {
            if let Err(e) = container.delete(true) {
                shim_log(dir, &format!("cannot delete the container: {e}"));
            }
            // A lazy unmount of the top detaches the whole tree below it (the
            // exec driver's bind of the host's root included).
            unmount(&rootfs);
            let left = mounts_under(&dir.0);
            if !left.is_empty() {
                shim_log(dir, &format!("mounts left under the run: {left:?}"));
            }
            let _ = std::fs::remove_dir(&rootfs);
            let _ = std::fs::remove_dir_all(dir.0.join("upper"));
            let _ = std::fs::remove_dir_all(dir.0.join("work"));
        }
        Running::Raw => {
            cgroup.kill_all();
            cgroup.remove();
        }
    }
    // Everything that held the pipe is gone: the copier sees its end.
    let _ = copier.join();
    let (exit_code, signal) = match status {
        Ok(Status::Exited(code)) => (Some(code), None),
        Ok(Status::Signaled(signal)) => (Some(128 + signal), Some(signal)),
        Err(e) => {
            shim_log(dir, &format!("cannot wait for {pid}: {e}"));
            (None, None)
        }
    };
    ExitRecord {
        exit_code,
        signal,
        oom_killed,
        error: None,
        reason: None,
        started_at: Some(started_at),
        finished_at: Some(finished_at),
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn copy_output(read: OwnedFd, log_path: &Path, max: u64) {
    let mut pipe = std::fs::File::from(read);
    let mut writer = RotatingWriter::open(log_path, max).ok();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(writer) = writer.as_mut() {
                    let _ = writer.write(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

type StartError = (&'static str, String);

fn start_container(
    dir: &RunDir,
    spec: &RunSpec,
    output: OwnedFd,
) -> Result<(i32, Running), StartError> {
    const REASON: &str = "ContainerCreateFailed";
    let image = spec
        .image_rootfs
        .as_ref()
        .ok_or(("ImageNotFound", "the task has no image".to_owned()))?;
    // Its network namespace is made, and its `lo` brought up, on a thread while
    // the root is mounted and libcontainer builds the container.
    let netns = NetNamespace::start(spec.network.clone())
        .map_err(|e| (REASON, format!("cannot make a network namespace: {e}")))?;
    let rootfs = dir.0.join("rootfs");
    let upper = dir.0.join("upper");
    let work = dir.0.join("work");
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d)
            .map_err(|e| ("ContainerCreateFailed", format!("{}: {e}", d.display())))?;
    }
    mount_overlay(image, &upper, &work, &rootfs).map_err(|e| {
        (
            "ContainerCreateFailed",
            format!("cannot mount the root: {e}"),
        )
    })?;
    create(dir, spec, output, rootfs, Some(netns), REASON)
}

/// Starts the confined exec driver's process: a libcontainer container over a
/// read-only bind of the host's root filesystem. The bind is made in a mount
/// namespace of the shim's own (a slave of the host's), so it never shows on
/// the host nor in another run's bind, and goes with the shim whatever happens.
fn start_confined(
    dir: &RunDir,
    spec: &RunSpec,
    output: OwnedFd,
) -> Result<(i32, Running), StartError> {
    const REASON: &str = "SandboxFailed";
    let sandbox = spec
        .sandbox
        .as_ref()
        .ok_or((REASON, "the exec run has no sandbox".to_owned()))?;
    // The process runs as an unprivileged user: it owns its work directory and
    // the writable mounts (their top directory; what is in them keeps its owner).
    let writable = std::iter::once(sandbox.work_dir.as_path()).chain(
        spec.mounts
            .iter()
            .filter(|m| !m.read_only)
            .map(|m| m.source.as_path()),
    );
    for path in writable {
        std::os::unix::fs::lchown(path, Some(sandbox.uid), Some(sandbox.uid)).map_err(|e| {
            (
                REASON,
                format!("cannot give {} to uid {}: {e}", path.display(), sandbox.uid),
            )
        })?;
    }
    private_mount_namespace()
        .map_err(|e| (REASON, format!("cannot make a mount namespace: {e}")))?;
    let rootfs = dir.0.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| (REASON, format!("{}: {e}", rootfs.display())))?;
    bind_host_root(&rootfs).map_err(|e| {
        unmount(&rootfs);
        (
            REASON,
            format!("cannot bind the host's root read-only: {e}"),
        )
    })?;
    create(dir, spec, output, rootfs, None, REASON)
}

/// Gives the shim a mount namespace of its own that receives the host's mount
/// events but sends none back.
fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare and mount with constant arguments; the shim has no other
    // thread yet (a mount namespace is unshared only by a process whose threads
    // do not share its filesystem context).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Binds the host's root filesystem onto `target` and makes it read-only,
/// nosuid, nodev and private. Only the root mount itself, not the mounts below
/// it: every other task's root filesystem is a mount there too, and copying
/// them all at each start made a busy node's confined starts slow down with
/// its task count (a 10,000-task job took 179 s at 440 tasks at once; /proc,
/// /sys, /dev, /tmp and /run are mounted afresh anyway).
fn bind_host_root(target: &Path) -> std::io::Result<()> {
    let target = cstring(target)?;
    let root = c"/";
    // SAFETY: mount with valid NUL-terminated paths and no data.
    let rc = unsafe {
        libc::mount(
            root.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr`, of the size passed, for the call's
    // duration; the path is a valid NUL-terminated string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates and starts the libcontainer container of `spec` over `rootfs` (already
/// mounted; unmounted again if the start fails).
fn create(
    dir: &RunDir,
    spec: &RunSpec,
    output: OwnedFd,
    rootfs: PathBuf,
    netns: Option<NetNamespace>,
    reason: &'static str,
) -> Result<(i32, Running), StartError> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    let result = (|| {
        let mut config = crate::spec::runtime_spec(spec).map_err(|e| (reason, e))?;
        if let Some(netns) = &netns {
            let path = netns
                .made()
                .map_err(|e| (reason, format!("cannot make a network namespace: {e}")))?;
            join_network(&mut config, &path);
        }
        config
            .save(dir.0.join("config.json"))
            .map_err(|e| (reason, format!("cannot write config.json: {e}")))?;
        let stderr = output.try_clone().map_err(|e| (reason, e.to_string()))?;
        let stdin = std::fs::File::open("/dev/null").map_err(|e| (reason, e.to_string()))?;
        let mut container = ContainerBuilder::new(spec.container_id.clone(), SyscallType::Linux)
            .with_root_path(&spec.container_root)
            .map_err(|e| (reason, e.to_string()))?
            .with_stdin(stdin)
            .with_stdout(output)
            .with_stderr(stderr)
            .as_init(&dir.0)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| {
                let message = e.to_string();
                // libcontainer checks the program before it starts anything.
                if message.contains("not found in $PATH") {
                    ("CommandNotFound", message)
                } else {
                    (reason, message)
                }
            })?;
        let ready = (|| {
            let pid = container
                .pid()
                .map(|pid| pid.as_raw())
                .ok_or("the container has no pid".to_owned())?;
            Cgroup::new(&spec.cgroup_path)
                .deny_extra_devices()
                .map_err(|e| format!("cannot restrict its devices: {e}"))?;
            if let Some(netns) = netns {
                netns
                    .finish()
                    .map_err(|e| format!("cannot set up its network: {e}"))?;
            }
            container
                .start()
                .map_err(|e| format!("cannot start: {e}"))?;
            Ok::<_, String>(pid)
        })();
        match ready {
            Ok(pid) => Ok((pid, container)),
            Err(error) => {
                let _ = container.delete(true);
                Err((reason, error))
            }
        }
    })();
    match result {
        Ok((pid, container)) => Ok((
            pid,
            Running::Container {
                container: Box::new(container),
                rootfs,
            },
        )),
        Err(error) => {
            unmount(&rootfs);
            Err(error)
        }
    }
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> std::io::Result<()> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let source = c"overlay";
    let fstype = c"overlay";
    let target = cstring(target)?;
    let data = CString::new(options).map_err(std::io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(target: &Path) {
    if let Ok(target) = cstring(target) {
        // SAFETY: a valid NUL-terminated path.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// The mount points of this process's namespace at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// A network namespace made for one container by a thread of the shim's, which
/// brings its `lo` up (a new namespace has it down) while libcontainer builds the
/// container; the container joins it through the thread's `/proc` path. Making
/// a network namespace and bringing an interface up are a few milliseconds of
/// kernel work that this takes off a task's start.
///
/// The thread holds the namespace until [`NetNamespace::finish`], by which time
/// the container's process is in it. While libcontainer forks, the thread only
/// makes system calls and waits on channels made before: nothing it does takes a
/// lock a forked child could need.
struct NetNamespace {
    /// The thread's id once it is in its new namespace.
    made: std::sync::mpsc::Receiver<std::io::Result<i32>>,
    /// Whether `lo` came up.
    up: std::sync::mpsc::Receiver<std::io::Result<()>>,
    /// Dropped to let the thread end.
    release: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetNamespace {
    /// Starts the thread; with `network`, it plumbs the task's interface too.
    fn start(network: Option<crate::network::TaskNetwork>) -> std::io::Result<Self> {
        use std::sync::mpsc::sync_channel;
        let (made_tx, made) = sync_channel(1);
        let (up_tx, up) = sync_channel(1);
        let (release, released) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("netns".to_owned())
            .spawn(move || {
                // The host's side is plumbed through a socket opened before
                // the thread leaves the host's namespace.
                let host = match network.as_ref().map(|_| crate::network::Netlink::open()) {
                    Some(Ok(host)) => Some(host),
                    Some(Err(e)) => {
                        let _ = made_tx.send(Err(e));
                        return;
                    }
                    None => None,
                };
                // SAFETY: unsharing the network namespace changes only this
                // thread's.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let _ = made_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                // SAFETY: gettid has no preconditions.
                let _ = made_tx.send(Ok(unsafe { libc::gettid() }));
                let plumbed = match (host, network) {
                    (Some(mut host), Some(network)) => plumb(&mut host, &network),
                    _ => loopback_up(),
                };
                let _ = up_tx.send(plumbed);
                let _ = released.recv();
            })?;
        Ok(NetNamespace {
            made,
            up,
            release: Some(release),
            thread: Some(thread),
        })
    }

    /// Waits for the namespace and returns its path, `/proc/PID/task/TID/ns/net`
    /// (valid while the thread lives).
    fn made(&self) -> std::io::Result<PathBuf> {
        let tid = self
            .made
            .recv()
            .map_err(|_| std::io::Error::other("the namespace thread ended"))??;
        Ok(PathBuf::from(format!(
            "/proc/{}/task/{tid}/ns/net",
            std::process::id()
        )))
    }

    /// Waits for `lo` and lets the thread go (the container holds the namespace
    /// now).
    fn finish(self) -> std::io::Result<()> {
        self.up
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread ended")))
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        self.release.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Plumbs the calling thread's (new) network namespace onto the node's task
/// network through `host`, a socket in the host's namespace.
fn plumb(
    host: &mut crate::network::Netlink,
    network: &crate::network::TaskNetwork,
) -> std::io::Result<()> {
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let mut inside = crate::network::Netlink::open()?;
    crate::network::plumb_task(host, &mut inside, &netns, network)
}

/// Makes the container of `config` join the network namespace at `path`.
fn join_network(config: &mut oci_spec::runtime::Spec, path: &Path) {
    let namespaces = config
        .linux_mut()
        .as_mut()
        .and_then(|linux| linux.namespaces_mut().as_mut());
    for namespace in namespaces.into_iter().flatten() {
        if namespace.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
            namespace.set_path(Some(path.to_owned()));
        }
    }
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket used only for the interface ioctls.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the socket was just created and is owned here.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: the ioctls read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the `raw` driver's process: unconfined, as root on the host, in its
/// own cgroup and session.
fn start_raw(
    spec: &RunSpec,
    cgroup: &Cgroup,
    output: OwnedFd,
) -> Result<(i32, Running), StartError> {
    cgroup
        .create(&spec.limits)
        .map_err(|e| ("CgroupFailed", format!("cannot create the cgroup: {e}")))?;
    let Some((program, args)) = spec.args.split_first() else {
        cgroup.remove();
        return Err(("InvalidCommand", "the task has no command".into()));
    };
    let procs: Vec<CString> = cgroup
        .procs_files()
        .iter()
        .filter_map(|p| cstring(p).ok())
        .collect();
    let stderr = output
        .try_clone()
        .map_err(|e| ("StartFailed", e.to_string()))?;
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(std::process::Stdio::null())
        .stdout(output)
        .stderr(stderr);
    if !spec.cwd.is_empty() {
        command.current_dir(&spec.cwd);
    }
    // SAFETY: between fork and exec the closure only calls async-signal-safe
    // functions (open, write, close, setsid) on memory prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    match command.spawn() {
        Ok(child) => {
            let pid = child.id() as i32;
            // The child is reaped by `wait`, not through `Child`.
            std::mem::forget(child);
            Ok((pid, Running::Raw))
        }
        Err(e) => {
            cgroup.remove();
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                "CommandNotFound"
            } else {
                "StartFailed"
            };
            Err((reason, format!("cannot run {program:?}: {e}")))
        }
    }
}

enum Status {
    Exited(i32),
    Signaled(i32),
}

fn wait(pid: i32) -> std::io::Result<Status> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(Status::Exited(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(Status::Signaled(libc::WTERMSIG(status)));
            }
            continue;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(error);
    }
}

/// The task's process once it runs (0 before): where the shim's stop signals go.
static TASK_PID: AtomicI32 = AtomicI32::new(0);
/// Whether the task's process leads a process group that gets them too.
static TASK_GROUP: AtomicBool = AtomicBool::new(false);
/// A stop signal that came before the task ran (0: none).
static STOP_ASKED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    let pid = TASK_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            if TASK_GROUP.load(Ordering::SeqCst) {
                libc::kill(-pid, signal);
            }
            libc::kill(pid, signal);
        }
    } else {
        STOP_ASKED.store(signal, Ordering::SeqCst);
    }
}

/// SIGTERM and SIGINT to the shim stop its run at every stage: before the task
/// runs they cancel the start (a system call in progress is interrupted, not
/// restarted, so a start that waits on a child that died does not wait on),
/// and once it runs they go to the task (whose end the shim then records as
/// usual). Someone stopping a run that has no start record yet, or whose record
/// is gone, signals the shim.
fn catch_stop_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: sigaction with a handler that only touches atomics and calls
        // kill(2); the struct is zeroed, then its handler set; no SA_RESTART.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The stop signal asked before the task ran, if one was.
fn stop_asked() -> Option<i32> {
    match STOP_ASKED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Sends the shim's stop signals to `pid` (and its group) from now on, and the
/// one asked while the task started, if any.
fn forward_stop_signals(pid: i32, group: bool) {
    TASK_GROUP.store(group, Ordering::SeqCst);
    TASK_PID.store(pid, Ordering::SeqCst);
    if let Some(signal) = stop_asked() {
        on_stop_signal(signal);
    }
}

/// What [`remove_leftovers`] found of a dead run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Processes killed: the run's, in its cgroup, or libcontainer's clones of
    /// its shim.
    pub processes: usize,
    /// Mounts removed.
    pub mounts: Vec<String>,
}

/// Removes what a run whose shim died before cleaning up (a node crash, a
/// killed shim) left behind: its processes (everything in its cgroup, and the
/// clones libcontainer makes of the shim, which carry its command line until
/// they exec), its mounts (the container's overlay root), its root's upper and
/// work directories, its cgroup in every hierarchy and libcontainer's state of
/// its container. Idempotent and blocking; the run's shim must be dead.
pub fn remove_leftovers(dir: &RunDir) -> Leftovers {
    let spec = std::fs::read(dir.spec())
        .ok()
        .and_then(|b| serde_json::from_slice::<RunSpec>(&b).ok());
    let mut killed = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let pids = processes_naming(&dir.0);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            killed.insert(pid);
            // SAFETY: kill(2); the process names this dead run's directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut processes = killed.len();
    if let Some(spec) = &spec {
        processes += Cgroup::new(&spec.cgroup_path).remove_leftovers();
    }
    let mut mounts = mounts_under(&dir.0);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in &mounts {
        unmount(Path::new(mount));
    }
    let _ = std::fs::remove_dir(dir.0.join("rootfs"));
    let _ = std::fs::remove_dir_all(dir.0.join("upper"));
    let _ = std::fs::remove_dir_all(dir.0.join("work"));
    if let Some(spec) = &spec
        && is_plain_name(&spec.container_id)
    {
        let state = spec.container_root.join(&spec.container_id);
        if let Err(error) = std::fs::remove_dir_all(&state)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            shim_log(dir, &format!("cannot remove {}: {error}", state.display()));
        }
    }
    Leftovers { processes, mounts }
}

/// Unmounts every mount at or below `dir`, deepest first (lazily: a busy one
/// goes once it is not). Returns them.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in &mounts {
        unmount(Path::new(mount));
    }
    mounts
}

/// A single path component, neither `.` nor `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// The processes, other than this one, whose command line has `dir` as an
/// argument.
fn processes_naming(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == needle))
        })
        .collect()
}

/// How long a killed task's leftovers may take to go.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
