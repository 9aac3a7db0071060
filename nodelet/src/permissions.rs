//! What the node's operator allows tasks beyond their sandbox: host-path mounts
//! under given prefixes and the unconfined `raw` driver. The node advertises each
//! permission with a label for the scheduler and checks every task again itself.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use api_types::node::{LABEL_ALLOW_HOST_PATHS, LABEL_ALLOW_RAW_EXEC};

use crate::Config;

/// A task asked for something its node does not allow: a one-word reason and
/// a message for the task's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `HostPathNotAllowed`, `RawExecNotAllowed`, `MountNotFound`, `MountFailed`.
    pub reason: &'static str,
    /// What was refused and why.
    pub message: String,
}

impl Refused {
    fn new(reason: &'static str, message: String) -> Refused {
        Refused { reason, message }
    }
}

/// The permission labels of the node: `true` for what it allows, `None` (removed
/// by a merge patch) for what it does not, so a node restarted with fewer
/// permissions stops advertising them.
pub fn labels(config: &Config) -> BTreeMap<String, Option<String>> {
    let flag = |on: bool| on.then(|| "true".to_owned());
    BTreeMap::from([
        (LABEL_ALLOW_RAW_EXEC.to_owned(), flag(config.allow_raw_exec)),
        (
            LABEL_ALLOW_HOST_PATHS.to_owned(),
            flag(!config.allow_host_paths.is_empty()),
        ),
    ])
}

/// Checks that the node allows the `raw` driver.
pub fn check_raw_exec(config: &Config) -> Result<(), Refused> {
    if config.allow_raw_exec {
        return Ok(());
    }
    Err(Refused::new(
        "RawExecNotAllowed",
        format!(
            "node {} does not allow the raw driver (its operator starts it with --allow-raw-exec to allow it)",
            config.name
        ),
    ))
}

/// Resolves a mount's host path `source` and checks it lies under one of the
/// node's allowed prefixes once every symbolic link in it is followed, and
/// neither inside the node's state directory nor above it. A missing read-write
/// source is created (as directories); a missing read-only one is an error.
/// Returns the resolved path, which is what gets mounted.
pub fn resolve_mount(config: &Config, source: &str, read_only: bool) -> Result<PathBuf, Refused> {
    let refuse = |why: String| {
        Refused::new(
            "HostPathNotAllowed",
            format!("mount source {source:?}: {why}"),
        )
    };
    if config.allow_host_paths.is_empty() {
        return Err(refuse(format!(
            "node {} allows no host paths (its operator lists the allowed prefixes with --allow-host-paths)",
            config.name
        )));
    }
    let path = Path::new(source);
    if !path.is_absolute() {
        return Err(refuse("must be an absolute path".into()));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(refuse("must not contain `.` or `..`".into()));
    }
    // Resolve the longest existing part; what is missing is plain names below it.
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(resolved) => break resolved,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_owned()) else {
                    return Err(refuse(format!("cannot resolve: {e}")));
                };
                missing.push(name);
                existing.pop();
            }
            Err(e) => return Err(refuse(format!("cannot resolve: {e}"))),
        }
    };
    let mut target = resolved;
    for name in missing.iter().rev() {
        target.push(name);
    }
    let allowed = config
        .allow_host_paths
        .iter()
        .filter_map(|prefix| prefix.canonicalize().ok())
        .any(|prefix| target.starts_with(&prefix));
    if !allowed {
        let prefixes: Vec<String> = config
            .allow_host_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(refuse(format!(
            "resolves to {}, which is not under a prefix node {} allows ({})",
            target.display(),
            config.name,
            prefixes.join(", ")
        )));
    }
    let state = config
        .state_dir
        .canonicalize()
        .unwrap_or_else(|_| config.state_dir.clone());
    if target.starts_with(&state) || state.starts_with(&target) {
        return Err(refuse(format!(
            "resolves to {}, which holds or is inside the node's own state",
            target.display()
        )));
    }
    if !missing.is_empty() {
        if read_only {
            return Err(Refused::new(
                "MountNotFound",
                format!(
                    "mount source {source} does not exist on node {}",
                    config.name
                ),
            ));
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| Refused::new("MountFailed", format!("cannot create {source}: {e}")))?;
        // What was just created must still resolve to itself (no link raced in).
        if target.canonicalize().ok().as_ref() != Some(&target) {
            return Err(refuse("changed while it was created".into()));
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(dir: &Path, allowed: &[&Path]) -> Config {
        let mut config = Config::new("n1", dir.join("state"));
        std::fs::create_dir_all(&config.state_dir).unwrap();
        config.allow_host_paths = allowed.iter().map(|p| p.to_path_buf()).collect();
        config
    }

    #[test]
    fn nothing_is_mountable_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &[]);
        let err = resolve_mount(&config, "/etc", true).unwrap_err();
        assert_eq!(err.reason, "HostPathNotAllowed");
        assert!(
            err.message.contains("--allow-host-paths"),
            "{}",
            err.message
        );
        assert_eq!(
            check_raw_exec(&config).unwrap_err().reason,
            "RawExecNotAllowed"
        );
        assert_eq!(labels(&config)[LABEL_ALLOW_RAW_EXEC], None);
        assert_eq!(labels(&config)[LABEL_ALLOW_HOST_PATHS], None);
    }

    #[test]
    fn paths_resolve_under_the_allowed_prefixes_only() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("data");
        std::fs::create_dir_all(allowed.join("in")).unwrap();
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
        std::os::unix::fs::symlink("../secret", allowed.join("rel")).unwrap();
        let config = config(dir.path(), &[&allowed]);
        let a = allowed.display();

        assert_eq!(
            resolve_mount(&config, &format!("{a}/in"), true).unwrap(),
            allowed.join("in").canonicalize().unwrap()
        );
        // `..`, symbolic links out, prefixes that only share a string start.
        for bad in [
            format!("{a}/../secret"),
            format!("{a}/in/../../secret"),
            format!("{a}/link"),
            format!("{a}/rel"),
            format!("{a}/link/new/dir"),
            format!("{a}-other"),
            "/etc".to_owned(),
            "relative/path".to_owned(),
        ] {
            let err = resolve_mount(&config, &bad, false).unwrap_err();
            assert_eq!(err.reason, "HostPathNotAllowed", "{bad}: {err:?}");
        }
        // Nothing was created outside through the link.
        assert!(!outside.join("new").exists());
        assert!(!dir.path().join("data-other").exists());

        // A missing read-write source is created under the prefix; a read-only one is not.
        let made = resolve_mount(&config, &format!("{a}/out/0"), false).unwrap();
        assert!(made.is_dir());
        let err = resolve_mount(&config, &format!("{a}/absent"), true).unwrap_err();
        assert_eq!(err.reason, "MountNotFound");
    }

    #[test]
    fn the_node_state_is_never_mountable() {
        let dir = tempfile::tempdir().unwrap();
        // The operator allowed the whole directory that holds the node's state.
        let config = config(dir.path(), &[dir.path()]);
        let d = dir.path().display();
        for bad in [
            format!("{d}/state"),
            format!("{d}/state/tasks"),
            format!("{d}"),
        ] {
            let err = resolve_mount(&config, &bad, false).unwrap_err();
            assert_eq!(err.reason, "HostPathNotAllowed", "{bad}: {err:?}");
        }
        assert!(resolve_mount(&config, &format!("{d}/volumes/a"), false).is_ok());
    }
}
