//! Unpacking a layer tar into a root that nothing in the archive can leave.
//!
//! Every path (an entry's, a whiteout's, a hard link's target) is resolved by
//! the kernel inside the root, as in a chroot: `openat2` with
//! `RESOLVE_IN_ROOT` on a descriptor of the root, so `/etc/x`, a parent that is
//! a link to `/` or a chain of links to `..` all stay in it. The last component
//! is then created, replaced or removed relative to its parent's descriptor
//! without ever being followed (`O_NOFOLLOW`, `unlinkat`, `symlinkat`,
//! `linkat` without `AT_SYMLINK_FOLLOW`). Entries with `..` are refused
//! outright (no image needs them), as are device nodes, hard links to what is
//! not in the root, and layers whose entries add up to more than the bound.
//! Symlink targets are stored verbatim: they are resolved later, inside the
//! container. setuid and setgid bits are dropped: the store is on the host, and
//! a setuid-root program from an image must not be one there.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, futimens, linkat,
    mkdirat, mkfifoat, openat, openat2, statat, symlinkat, unlinkat,
};
use rustix::io::Errno;

use super::ImageError;

/// Most entries one layer may hold (real layers hold up to a few hundred
/// thousand files).
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;

/// The bounds a layer is unpacked within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes its entries may add up to (sizes as the headers say,
    /// sparse files at their full size), checked before any data is written.
    pub max_bytes: u64,
    /// The most entries it may hold.
    pub max_entries: u64,
}

impl Limits {
    /// The most bytes of tar read for a layer, and the largest blob: its
    /// entries' bound plus an eighth for headers, padding and extension
    /// records (which the tar reader keeps in memory, so they are bounded by
    /// this too).
    pub fn max_stream_bytes(&self) -> u64 {
        self.max_bytes.saturating_add(self.max_bytes / 8)
    }
}

/// A reader that fails once more than `left` bytes came through it.
struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "the uncompressed archive is larger than {} bytes",
                self.cap
            ))
        })?;
        Ok(n)
    }
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Opens directory `rel` resolved inside `root` (an empty path is the root).
fn open_dir(root: &OwnedFd, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = flags | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // openat2 asks the caller to retry when a rename raced the resolution.
    let mut tries = 0;
    loop {
        match openat2(root, path, flags, Mode::empty(), RESOLVE) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Opens directory `rel` inside `root`, creating what is missing of it.
fn ensure_dir(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    match open_dir(root, rel, OFlags::PATH) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    // Walk down from the root, each step resolved inside it again, so a link
    // met on the way is followed within the root only.
    let mut dir = open_dir(root, Path::new(""), OFlags::PATH)?;
    let mut prefix = PathBuf::new();
    for name in rel.iter() {
        prefix.push(name);
        dir = match open_dir(root, &prefix, OFlags::PATH) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => open_dir(root, &prefix, OFlags::PATH)?,
                    // A link to what is not there (or a race): a link may
                    // lead only where the image has put a directory.
                    Err(Errno::EXIST) => open_dir(root, &prefix, OFlags::PATH).map_err(|e| {
                        if e.kind() == io::ErrorKind::NotFound {
                            io::Error::other(format!(
                                "a parent is a link to a directory that is not in the image \
                                 (/{})",
                                prefix.display()
                            ))
                        } else {
                            e
                        }
                    })?,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        };
    }
    Ok(dir)
}

/// What `name` in `dir` is, not following a link; None when nothing is there.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_subdir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Unlinks everything in `dir` but its subdirectories, and returns their names.
fn unlink_all_but_dirs(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    let mut subdirs = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => kind_at(dir, name)?,
            kind => Some(kind),
        };
        match kind {
            Some(FileType::Directory) => subdirs.push(name.to_owned()),
            Some(_) => names.push(name.to_owned()),
            None => {}
        }
    }
    for name in names {
        match unlinkat(dir, &name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(subdirs)
}

/// Removes `name` in `dir` whatever it is, never following a link; a directory
/// with all it holds. Iterative, with one directory open at a time: an image's
/// tree may be deeper than a thread's stack or the open-files limit.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => return Ok(()),
        Some(FileType::Directory) => {}
        Some(_) => return Ok(unlinkat(dir, name, AtFlags::empty())?),
    }
    let mut current = open_subdir(dir, name)?;
    // Each level: the directory's name in its parent and the subdirectories
    // of it still to remove.
    let mut stack = vec![(name.to_owned(), unlink_all_but_dirs(&current)?)];
    while let Some((_, pending)) = stack.last_mut() {
        if let Some(sub) = pending.pop() {
            current = open_subdir(&current, &sub)?;
            let subdirs = unlink_all_but_dirs(&current)?;
            stack.push((sub, subdirs));
            continue;
        }
        let Some((done, _)) = stack.pop() else { break };
        if stack.is_empty() {
            unlinkat(dir, &done, AtFlags::REMOVEDIR)?;
            break;
        }
        // `..` of a directory reached through real directories only (never a
        // link) is the one it was reached from.
        let parent = openat(
            &current,
            "..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        unlinkat(&parent, &done, AtFlags::REMOVEDIR)?;
        current = parent;
    }
    Ok(())
}

/// Empties `dir`.
fn clear_dir(dir: &OwnedFd) -> io::Result<()> {
    for sub in unlink_all_but_dirs(dir)? {
        remove_at(dir, &sub)?;
    }
    Ok(())
}

/// An entry's path relative to the root: `/` and `.` dropped, `..` refused.
fn in_root(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                return Err(
                    "a path with `..` is refused (entries must stay in the image's root)"
                        .to_owned(),
                );
            }
            Component::Prefix(_) => return Err("not a Unix path".to_owned()),
        }
    }
    Ok(out)
}

/// Unpacks the tar read from `archive` (already gunzipped) into `root`,
/// honouring whiteouts. `layer` names the archive in errors.
pub fn apply(
    root: &Path,
    archive: impl Read,
    layer: &str,
    limits: &Limits,
) -> Result<(), ImageError> {
    let fail = |entry: &str, rule: String| ImageError::Layer {
        layer: layer.to_owned(),
        entry: entry.to_owned(),
        rule,
    };
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("", format!("cannot open the root {}: {e}", root.display())))?;
    let reader = Capped {
        inner: archive,
        left: limits.max_stream_bytes(),
        cap: limits.max_stream_bytes(),
    };
    let mut archive = tar::Archive::new(reader);
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    // Directory modes and times are set once the layer is in: a read-only
    // directory must still take the entries after it.
    let mut directories: Vec<(PathBuf, u32, u64)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| fail("", format!("not a tar archive: {e}")))?;
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            let after = if last.is_empty() {
                "at its start".to_owned()
            } else {
                format!("after {last:?}")
            };
            fail("", format!("unreadable archive {after}: {e}"))
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        count += 1;
        if count > limits.max_entries {
            return Err(fail(
                &name,
                format!("the layer has more than {} entries", limits.max_entries),
            ));
        }
        total = total.saturating_add(entry.size());
        if total > limits.max_bytes {
            return Err(fail(
                &name,
                format!(
                    "its entries add up to more than the node's maximum layer size of {} bytes \
                     (this one says {} bytes)",
                    limits.max_bytes,
                    entry.size()
                ),
            ));
        }
        apply_entry(&root_fd, &mut entry, &mut directories).map_err(|rule| fail(&name, rule))?;
        last = name;
    }
    for (rel, mode, mtime) in directories {
        // Replaced by something else since (or by a link): nothing to set.
        let Ok(dir) = open_dir(&root_fd, &rel, OFlags::RDONLY | OFlags::NOFOLLOW) else {
            continue;
        };
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(|e| {
            fail(
                &rel.display().to_string(),
                format!("cannot set its mode: {e}"),
            )
        })?;
        let _ = futimens(&dir, &times(mtime));
    }
    Ok(())
}

fn times(mtime: u64) -> Timestamps {
    let at = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

/// Says what failed doing `what`.
fn io(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("cannot {what}: {e}")
}

/// Applies one entry; the error is the rule it broke or what failed.
fn apply_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    directories: &mut Vec<(PathBuf, u32, u64)>,
) -> Result<(), String> {
    let header = entry.header();
    let kind = header.entry_type();
    // setuid and setgid dropped, the sticky bit kept (`/tmp`).
    let mode = header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o1777;
    let mtime = header.mtime().unwrap_or(0);
    let path = entry
        .path()
        .map_err(|e| format!("bad path: {e}"))?
        .into_owned();
    let rel = in_root(&path)?;
    let (Some(name), parent) = (rel.file_name(), rel.parent().unwrap_or(Path::new(""))) else {
        // The root itself.
        if kind.is_dir() {
            directories.push((rel, mode, mtime));
            return Ok(());
        }
        return Err("only a directory may stand for the root".to_owned());
    };
    let name = name.to_owned();

    if name == ".wh..wh..opq" {
        // Opaque directory: drop what lower layers put in it.
        return match open_dir(root, parent, OFlags::RDONLY) {
            Ok(dir) => clear_dir(&dir).map_err(io("empty the opaque directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot open the opaque directory: {e}")),
        };
    }
    if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
        if hidden.starts_with(b".wh.") {
            // Other AUFS metadata (`.wh..wh.plnk`, …): nothing to unpack.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err("a whiteout must name an entry of its directory".to_owned());
        }
        return match open_dir(root, parent, OFlags::PATH) {
            Ok(dir) => remove_at(&dir, OsStr::from_bytes(hidden)).map_err(io("remove")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot open the whiteout's directory: {e}")),
        };
    }

    let dir = ensure_dir(root, parent).map_err(io("make its directory"))?;
    let existing = kind_at(&dir, &name).map_err(io("inspect it"))?;
    match kind {
        tar::EntryType::Directory => {
            if existing.is_some_and(|k| k != FileType::Directory) {
                remove_at(&dir, &name).map_err(io("replace it"))?;
            }
            if existing != Some(FileType::Directory) {
                match mkdirat(&dir, &name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(format!("cannot make it: {e}")),
                }
            }
            directories.push((rel, mode, mtime));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            if existing.is_some() {
                remove_at(&dir, &name).map_err(io("replace it"))?;
            }
            let fd = openat(
                &dir,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| format!("cannot create it: {e}"))?;
            let mut file = std::fs::File::from(fd);
            io::copy(entry, &mut file).map_err(io("write it"))?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                .map_err(|e| format!("cannot set its mode: {e}"))?;
            let _ = futimens(&file, &times(mtime));
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .filter(|t| !t.is_empty())
                .ok_or("a symlink without a target")?
                .into_owned();
            if existing.is_some() {
                remove_at(&dir, &name).map_err(io("replace it"))?;
            }
            // Stored as written: it is resolved inside the container.
            symlinkat(OsStr::from_bytes(&target), &dir, &name)
                .map_err(|e| format!("cannot make the link: {e}"))?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(|e| format!("bad hard link target: {e}"))?
                .ok_or("a hard link without a target")?
                .into_owned();
            let target = in_root(&target).map_err(|rule| format!("hard link target: {rule}"))?;
            let (Some(target_name), target_parent) =
                (target.file_name(), target.parent().unwrap_or(Path::new("")))
            else {
                return Err("a hard link to the root".to_owned());
            };
            let missing = || {
                format!(
                    "hard link target /{} is not in the image's root",
                    target.display()
                )
            };
            let target_dir = match open_dir(root, target_parent, OFlags::PATH) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                Err(e) => return Err(format!("hard link target: {e}")),
            };
            match kind_at(&target_dir, target_name).map_err(io("inspect the link target"))? {
                None => return Err(missing()),
                Some(FileType::Directory) => {
                    return Err("a hard link to a directory is refused".to_owned());
                }
                Some(_) => {}
            }
            if existing.is_some() {
                remove_at(&dir, &name).map_err(io("replace it"))?;
            }
            // Without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
            linkat(&target_dir, target_name, &dir, &name, AtFlags::empty())
                .map_err(|e| format!("cannot make the hard link: {e}"))?;
        }
        tar::EntryType::Fifo => {
            if existing.is_some() {
                remove_at(&dir, &name).map_err(io("replace it"))?;
            }
            mkfifoat(&dir, &name, Mode::from_raw_mode(mode))
                .map_err(|e| format!("cannot make the fifo: {e}"))?;
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            return Err(
                "device nodes are refused (a container gets its devices from the runtime)"
                    .to_owned(),
            );
        }
        // Global extension records say nothing this unpacker uses.
        tar::EntryType::XGlobalHeader => {}
        other => return Err(format!("entry type {other:?} is not supported")),
    }
    Ok(())
}

/// Opens the regular file `rel` resolved inside `root`, never through a link
/// as its last component, never a device or fifo.
pub fn open_file(root: &Path, rel: &str) -> io::Result<std::fs::File> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = openat2(
        &root_fd,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )?;
    let file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!("{rel} is not a regular file")));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_entries: 3,
        }
    }

    fn tar_of(files: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for path in files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(1);
            header.set_mode(0o644);
            builder.append_data(&mut header, path, &b"x"[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_layer_with_too_many_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        apply(dir.path(), &tar_of(&["a", "b", "c"])[..], "l", &limits()).unwrap();
        let error = apply(
            dir.path(),
            &tar_of(&["a", "b", "c", "d"])[..],
            "l",
            &limits(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("entry \"d\": the layer has more than 3 entries"),
            "{error}"
        );
    }

    #[test]
    fn the_archive_stream_is_capped() {
        let limits = Limits {
            max_bytes: 8 << 10,
            max_entries: 100,
        };
        // 8 KiB of data in 16 files of 512 bytes: the entries are within the
        // bound, the tar (17 KiB of headers, data and end) is not.
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..16 {
            let mut header = tar::Header::new_gnu();
            header.set_size(512);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, format!("f{i}"), &[0u8; 512][..])
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let error = apply(dir.path(), &builder.into_inner().unwrap()[..], "l", &limits)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the uncompressed archive is larger than 9216 bytes"),
            "{error}"
        );
    }

    #[test]
    fn removal_never_follows_links_and_survives_deep_trees() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root_fd = rustix::fs::open(&root, dir_flags, Mode::empty()).unwrap();
        // 3,000 levels (deeper than PATH_MAX allows to name), with links to
        // the outside on the way.
        mkdirat(&root_fd, "t", Mode::from_raw_mode(0o755)).unwrap();
        let mut fd = openat(&root_fd, "t", dir_flags, Mode::empty()).unwrap();
        for level in 0..3000 {
            mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            if level % 500 == 0 {
                symlinkat(&outside, &fd, "out").unwrap();
                std::fs::write(outside.join(format!("f{level}")), b"k").unwrap();
                symlinkat(outside.join(format!("f{level}")), &fd, "file").unwrap();
            }
            fd = openat(&fd, "d", dir_flags, Mode::empty()).unwrap();
        }
        drop(fd);
        let before = std::fs::read_dir(&outside).unwrap().count();
        // On a stack where a recursive removal of 3,000 levels would overflow.
        std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || remove_at(&root_fd, OsStr::new("t")))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!root.join("t").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), before);
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
    }
}
