//! Child processes that never outlive the test that started them.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

/// Has the kernel SIGKILL the child when the process that started it dies,
/// even when a test is itself killed with SIGKILL.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and only changes the child being set up.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Where the workspace's binaries are: `$LOOM_BIN_DIR`, else the profile
/// directory the running test binary was built in (`target/debug/deps/x-…` →
/// `target/debug`), where cargo puts a package's binaries before its tests run.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOOM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    deps.parent().unwrap_or(deps).to_owned()
}
