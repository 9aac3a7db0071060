//! The nodelet's state files, read back after a restart: a task directory's
//! `task.json`, a run's `exit.json`, `started.json`, `shim.pid` and
//! `spec.json` (which the shim reads), a service account's `expires`, and the
//! image store's `refs.json` and image configs. Whatever a crash or a disk
//! left in them, reading never panics, and what reads encodes and reads the
//! same.
//!
//! An input's first line names the file (`exit.json`); the rest is its content.

use std::path::Path;

use nodelet::image::ImageStore;
use nodelet::run::{ExitRecord, RunDir, RunSpec, Started};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Harness;

/// A record survives being written and read again.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    what: &str,
    value: &T,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("{what} does not encode: {e}"))?;
    let again: T = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{what} {value:?} encodes as {}, which does not read: {e}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    if &again != value {
        return Err(format!("{what} {value:?} reads back as {again:?}"));
    }
    Ok(())
}

const UID: &str = "4c8a2b1e-0000-4000-8000-000000000001";
const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn write(path: &Path, content: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("setup: {e}"))?;
    }
    std::fs::write(path, content).map_err(|e| format!("setup: {e}"))
}

fn state_file(dir: &Path, file: &str, content: &[u8]) -> Result<(), String> {
    let task = dir.join("tasks").join(UID);
    let run = RunDir(task.join("run-1"));
    match file {
        "task.json" => {
            write(&task.join("task.json"), content)?;
            let records = nodelet::tasks::on_disk(dir);
            if records.len() != 1 || !records.contains_key(UID) {
                return Err(format!("one task directory read as {records:?}"));
            }
        }
        "exit.json" => {
            write(&run.exit(), content)?;
            if let Some(record) = run.read_exit() {
                round_trip::<ExitRecord>("an exit record", &record)?;
            }
        }
        "started.json" => {
            write(&run.started(), content)?;
            if let Some(record) = run.read_started() {
                round_trip::<Started>("a start record", &record)?;
            }
        }
        "shim.pid" => {
            write(&run.shim_pid(), content)?;
            if let Some(pid) = run.read_shim_pid() {
                let text = String::from_utf8_lossy(content);
                if text.trim().parse::<i32>().ok() != Some(pid) {
                    return Err(format!("shim.pid {text:?} read as {pid}"));
                }
            }
        }
        "spec.json" => {
            // As the shim reads it.
            if let Ok(spec) = serde_json::from_slice::<RunSpec>(content) {
                round_trip::<RunSpec>("a run spec", &spec)?;
            }
        }
        "expires" => {
            let account = dir.join("account");
            write(&account.join("expires"), content)?;
            let _ = nodelet::service_account::due(&account, chrono::Utc::now());
        }
        "refs.json" => {
            let images = dir.join("images");
            write(&images.join("refs.json"), content)?;
            let store = ImageStore::new(&images);
            for name in store.list().keys() {
                if let Ok(image) = store.resolve(name)
                    && !image.rootfs.starts_with(&images)
                {
                    return Err(format!(
                        "{name} resolves to {}, outside the store",
                        image.rootfs.display()
                    ));
                }
            }
        }
        _ => {
            // An image's config beside its root.
            let images = dir.join("images");
            write(
                &images.join("refs.json"),
                format!("{{\"fuzz:1\": \"sha256:{HEX}\"}}").as_bytes(),
            )?;
            std::fs::create_dir_all(images.join("rootfs").join(HEX))
                .map_err(|e| format!("setup: {e}"))?;
            write(&images.join("rootfs").join(format!("{HEX}.json")), content)?;
            if let Ok(image) = ImageStore::new(&images).resolve("fuzz:1") {
                round_trip("an image config", &image.config)?;
            }
        }
    }
    Ok(())
}

/// `nodelet_state`: one state file, named on the input's first line.
pub fn nodelet_state() -> Box<dyn Harness> {
    Box::new(|input: &[u8]| -> Result<(), String> {
        let (file, content) = match input.iter().position(|b| *b == b'\n') {
            Some(end) => (
                String::from_utf8_lossy(&input[..end]).trim().to_owned(),
                &input[end + 1..],
            ),
            None => ("exit.json".to_owned(), input),
        };
        let dir = super::image::temp_dir("loom-fuzz-state")?;
        state_file(dir.path(), &file, content)
    })
}
