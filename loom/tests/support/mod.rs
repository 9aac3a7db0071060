//! What the binary's integration tests share: running `loom`, curl, a child
//! killed on drop.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn loom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("LOOM_TOKEN")
        .env_remove("LOOM_KUBECONFIG")
        .output()
        .expect("run loom")
}

/// A child process killed on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// curl's body and HTTP code.
pub fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (body.to_owned(), code.to_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
