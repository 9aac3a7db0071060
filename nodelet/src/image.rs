//! The node's image store, content-addressed:
//!
//! ```text
//! IMAGES/blobs/sha256/HEX        every blob (manifests, configs, layers), verified
//! IMAGES/rootfs/HEX/             the unpacked root of the manifest HEX (read-only base)
//! IMAGES/rootfs/HEX.json         its runtime config (entrypoint, cmd, env, workdir)
//! IMAGES/refs.json               image names (`busybox:latest`) to manifest digests
//! ```
//!
//! `import` reads an OCI image layout (a directory or a tar of one), checks every
//! blob against its digest, and unpacks the layers in order, honouring whiteouts
//! (`.wh.NAME` removes NAME, `.wh..wh..opq` empties a directory). Pulling from a
//! registry fills the same blob store.

use std::collections::BTreeMap;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::run::write_atomic;

/// What the image says to run when the task does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
}

/// An unpacked image ready to run.
#[derive(Debug, Clone)]
pub struct Image {
    /// The read-only root.
    pub rootfs: PathBuf,
    /// Its config.
    pub config: ImageConfig,
}

/// Why an image could not be imported or found.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image by that name.
    #[error("image {0:?} is not in this node's image store (import it with `loom image import`)")]
    NotFound(String),
    /// The layout is not a valid OCI image layout.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Pulling from a registry failed.
    #[error("{0}")]
    Pull(String),
}

/// The image store under a directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// Normalizes an image name: `busybox` → `busybox:latest`; digests stay.
pub fn normalize(name: &str) -> String {
    let name = name.trim();
    if name.contains('@') {
        return name.to_owned();
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

impl ImageStore {
    /// The store at `root` (created on first import).
    pub fn new(root: &Path) -> ImageStore {
        ImageStore {
            root: root.to_owned(),
        }
    }

    /// The store's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::Invalid(format!("unsupported digest {digest:?}")))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    fn refs(&self) -> BTreeMap<String, String> {
        std::fs::read(self.root.join("refs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The names in the store and their manifest digests.
    pub fn list(&self) -> BTreeMap<String, String> {
        self.refs()
    }

    /// Finds an image by name (`busybox`, `busybox:1.36`) or digest.
    pub fn resolve(&self, name: &str) -> Result<Image, ImageError> {
        let name = normalize(name);
        // A name pulled by the digest of an index is recorded with the digest of
        // the manifest chosen for this platform.
        let digest = match (self.refs().get(&name), name.split_once('@')) {
            (Some(digest), _) => digest.clone(),
            (None, Some((_, digest))) => digest.to_owned(),
            (None, None) => return Err(ImageError::NotFound(name.clone())),
        };
        let hex = digest.trim_start_matches("sha256:");
        let rootfs = self.root.join("rootfs").join(hex);
        let config: ImageConfig =
            std::fs::read(self.root.join("rootfs").join(format!("{hex}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ImageError::NotFound(name.clone()))?;
        if !rootfs.is_dir() {
            return Err(ImageError::NotFound(name));
        }
        Ok(Image { rootfs, config })
    }

    /// Imports an OCI image layout (directory or tar). Each image of its index is
    /// stored under its `org.opencontainers.image.ref.name` annotation (a bare tag
    /// is prefixed with `name`, or the layout's file name); `name` also names the
    /// first image. Returns the names imported.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<String>, ImageError> {
        let layout = if path.is_dir() {
            path.to_owned()
        } else {
            let dir = self
                .root
                .join("tmp")
                .join(format!("import-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let file = std::fs::File::open(path)?;
            let mut archive = tar::Archive::new(maybe_gzip(file)?);
            archive.unpack(&dir)?;
            dir
        };
        let result = self.import_dir(&layout, path, name);
        if layout != path {
            let _ = std::fs::remove_dir_all(&layout);
        }
        result
    }

    fn import_dir(
        &self,
        layout: &Path,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Vec<String>, ImageError> {
        let index: serde_json::Value = read_json(&layout.join("index.json"))?;
        let manifests = index["manifests"].as_array().ok_or_else(|| {
            ImageError::Invalid(format!("{}: index.json has no manifests", path.display()))
        })?;
        let base = name
            .map(|n| {
                n.rsplit_once(':')
                    .filter(|(_, t)| !t.contains('/'))
                    .map_or(n, |(r, _)| r)
                    .to_owned()
            })
            .unwrap_or_else(|| {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                stem.trim_end_matches(".tar").to_owned()
            });
        let mut refs = self.refs();
        let mut imported = Vec::new();
        for (i, descriptor) in manifests.iter().enumerate() {
            let digest = descriptor["digest"].as_str().unwrap_or_default().to_owned();
            let manifest_digest = self.import_manifest(layout, &digest)?;
            let annotated = descriptor["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .map(str::to_owned);
            let image_name = match (i, name, annotated) {
                (0, Some(name), _) => normalize(name),
                (_, _, Some(tag)) if !tag.contains(':') && !tag.contains('/') => {
                    format!("{base}:{tag}")
                }
                (_, _, Some(full)) => normalize(&full),
                (_, _, None) => format!("{base}@{manifest_digest}"),
            };
            refs.insert(image_name.clone(), manifest_digest);
            imported.push(image_name);
        }
        std::fs::create_dir_all(&self.root)?;
        let bytes = serde_json::to_vec_pretty(&refs).map_err(io::Error::other)?;
        write_atomic(&self.root.join("refs.json"), &bytes)?;
        Ok(imported)
    }

    /// Records `name` (normalized) as the manifest `digest`.
    pub(crate) fn set_ref(&self, name: &str, digest: &str) -> Result<(), ImageError> {
        // Concurrent pulls of different names must not lose each other's entry.
        static REFS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = REFS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut refs = self.refs();
        refs.insert(normalize(name), digest.to_owned());
        std::fs::create_dir_all(&self.root)?;
        let bytes = serde_json::to_vec_pretty(&refs).map_err(io::Error::other)?;
        write_atomic(&self.root.join("refs.json"), &bytes)?;
        Ok(())
    }

    /// Copies a blob from the layout into the store, verifying its digest.
    fn copy_blob(&self, layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
        let target = self.blob(digest)?;
        if target.exists() {
            return Ok(target);
        }
        let source = layout.join("blobs").join(digest.replacen(':', "/", 1));
        let bytes = std::fs::read(&source).map_err(|e| {
            ImageError::Invalid(format!("blob {digest} missing from the layout: {e}"))
        })?;
        let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
        if actual != digest {
            return Err(ImageError::Invalid(format!(
                "blob {digest} does not match its digest (it is {actual})"
            )));
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(&target, &bytes)?;
        Ok(target)
    }

    /// Imports a manifest (following an index to this platform's manifest) and
    /// unpacks it. Returns the digest of the image manifest.
    fn import_manifest(&self, layout: &Path, digest: &str) -> Result<String, ImageError> {
        let path = self.copy_blob(layout, digest)?;
        let manifest: serde_json::Value = read_json(&path)?;
        if let Some(list) = manifest["manifests"].as_array() {
            // An index: pick this machine's platform.
            let arch = platform_arch();
            let chosen = list
                .iter()
                .find(|m| m["platform"]["architecture"] == arch && m["platform"]["os"] == "linux")
                .ok_or_else(|| {
                    ImageError::Invalid(format!("no linux/{arch} image in index {digest}"))
                })?;
            let inner = chosen["digest"].as_str().unwrap_or_default().to_owned();
            return self.import_manifest(layout, &inner);
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid(format!("manifest {digest} has no config")))?;
        let config_path = self.copy_blob(layout, config_digest)?;
        let config: serde_json::Value = read_json(&config_path)?;
        let mut layers = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let layer_digest = layer["digest"].as_str().unwrap_or_default();
            layers.push(self.copy_blob(layout, layer_digest)?);
        }
        self.unpack(digest, &config, &layers)?;
        Ok(digest.to_owned())
    }

    /// Unpacks the layers of manifest `digest` into `rootfs/HEX` (once).
    pub(crate) fn unpack(
        &self,
        digest: &str,
        config: &serde_json::Value,
        layers: &[PathBuf],
    ) -> Result<(), ImageError> {
        let hex = digest.trim_start_matches("sha256:");
        let rootfs_dir = self.root.join("rootfs");
        let target = rootfs_dir.join(hex);
        let config_file = rootfs_dir.join(format!("{hex}.json"));
        if target.is_dir() && config_file.exists() {
            return Ok(());
        }
        let staging = rootfs_dir.join(format!("{hex}.unpacking"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        for layer in layers {
            apply_layer(&staging, layer)?;
        }
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let image_config = ImageConfig {
            digest: digest.to_owned(),
            entrypoint: strings(&config["config"]["Entrypoint"]),
            cmd: strings(&config["config"]["Cmd"]),
            env: strings(&config["config"]["Env"]),
            working_dir: config["config"]["WorkingDir"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&staging, &target)?;
        let bytes = serde_json::to_vec_pretty(&image_config).map_err(io::Error::other)?;
        write_atomic(&config_file, &bytes)?;
        Ok(())
    }
}

pub(crate) fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, ImageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ImageError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Invalid(format!("{} is not JSON: {e}", path.display())))
}

/// A reader that transparently gunzips gzip data.
fn maybe_gzip(mut file: std::fs::File) -> io::Result<Box<dyn io::Read>> {
    use std::io::Seek as _;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    file.seek(io::SeekFrom::Start(0))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(file)))
    } else {
        Ok(Box::new(file))
    }
}

/// Applies one layer tar to `root`, honouring whiteouts.
fn apply_layer(root: &Path, layer: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(maybe_gzip(std::fs::File::open(layer)?)?);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            entry.unpack_in(root)?;
            continue;
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ImageError::Invalid(format!(
                "layer entry {} escapes the root",
                path.display()
            )));
        }
        if file_name == ".wh..wh..opq" {
            // Opaque directory: drop what lower layers put in it.
            let dir = root.join(parent);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for child in entries.flatten() {
                    remove_any(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            remove_any(&root.join(parent).join(hidden))?;
            continue;
        }
        // A file replacing a directory (or the reverse) replaces it whole.
        let target = root.join(&path);
        if let Ok(meta) = std::fs::symlink_metadata(&target)
            && (meta.is_dir() != entry.header().entry_type().is_dir())
        {
            remove_any(&target)?;
        }
        entry.unpack_in(root)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes an OCI image layout of one single-layer image holding `files`
/// (`(path in image, host file)`), with `symlinks` (`(link, target)`), tagged
/// `tag`. Used by tests and benchmarks to build a busybox image from
/// `busybox-static` without a registry.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    files: &[(&str, &Path)],
    symlinks: &[(&str, &str)],
    config: &ImageConfig,
) -> io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> io::Result<(String, usize)> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut layer = tar::Builder::new(Vec::new());
    for (target, source) in files {
        layer.append_path_with_name(source, target)?;
    }
    for (link, target) in symlinks {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        layer.append_link(&mut header, link, target)?;
    }
    let layer = layer.into_inner()?;
    let (layer_digest, layer_size) = put(&layer)?;
    let config_json = serde_json::json!({
        "architecture": platform_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": config.env,
            "WorkingDir": config.working_dir,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) =
        put(&serde_json::to_vec(&config_json).map_err(io::Error::other)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) =
        put(&serde_json::to_vec(&manifest).map_err(io::Error::other)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).map_err(io::Error::other)?,
    )?;
    Ok(())
}

/// The busybox commands test images link to `/bin/busybox`.
pub const BUSYBOX_APPLETS: [&str; 24] = [
    "sh", "true", "false", "echo", "sleep", "cat", "ls", "env", "pwd", "id", "ip", "head", "tail",
    "yes", "dd", "hostname", "seq", "tr", "test", "[", "mount", "grep", "httpd", "wget",
];

/// Writes an OCI layout of a busybox image (`/bin/busybox` and its applets, from
/// the host's static busybox at `busybox`; `PATH=/bin`, default command `sh`).
pub fn busybox_layout(dir: &Path, busybox: &Path, tag: &str) -> io::Result<()> {
    let links: Vec<(String, &str)> = BUSYBOX_APPLETS
        .iter()
        .map(|applet| (format!("bin/{applet}"), "busybox"))
        .collect();
    let links: Vec<(&str, &str)> = links.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    let config = ImageConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        ..ImageConfig::default()
    };
    write_layout(dir, tag, &[("bin/busybox", busybox)], &links, &config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "busybox:1.36");
        assert_eq!(
            normalize("localhost:5000/busybox"),
            "localhost:5000/busybox:latest"
        );
        assert_eq!(normalize("b@sha256:ab"), "b@sha256:ab");
    }

    fn layer(dir: &Path, name: &str, entries: &[(&str, Option<&[u8]>)]) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            match content {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, path, *bytes).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        let file = dir.join(name);
        std::fs::write(&file, builder.into_inner().unwrap()).unwrap();
        file
    }

    #[test]
    fn whiteouts_remove_files_and_empty_opaque_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let lower = layer(
            dir.path(),
            "l1",
            &[
                ("etc", None),
                ("etc/a", Some(b"a")),
                ("etc/b", Some(b"b")),
                ("var", None),
                ("var/x", Some(b"x")),
            ],
        );
        let upper = layer(
            dir.path(),
            "l2",
            &[
                ("etc/.wh.a", Some(b"")),
                ("var/.wh..wh..opq", Some(b"")),
                ("var/y", Some(b"y")),
            ],
        );
        apply_layer(&root, &lower).unwrap();
        apply_layer(&root, &upper).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
        assert!(!root.join("var/x").exists());
        assert_eq!(std::fs::read(root.join("var/y")).unwrap(), b"y");
        assert!(!root.join("etc/.wh.a").exists());
    }

    #[test]
    fn a_layout_imports_resolves_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let file = dir.path().join("hello");
        std::fs::write(&file, b"hi").unwrap();
        let config = ImageConfig {
            cmd: vec!["cat".into(), "/hello".into()],
            env: vec!["PATH=/bin".into()],
            ..ImageConfig::default()
        };
        write_layout(
            &layout,
            "1.0",
            &[("hello", &file)],
            &[("bin/cat", "/bin/busybox")],
            &config,
        )
        .unwrap();
        let store = ImageStore::new(&dir.path().join("images"));
        let names = store.import(&layout, Some("demo")).unwrap();
        assert_eq!(names, vec!["demo:latest".to_owned()]);
        let image = store.resolve("demo").unwrap();
        assert_eq!(std::fs::read(image.rootfs.join("hello")).unwrap(), b"hi");
        assert_eq!(image.config.cmd, vec!["cat", "/hello"]);
        assert!(matches!(
            store.resolve("other"),
            Err(ImageError::NotFound(_))
        ));
        // A tar of the layout imports the same image.
        let tarball = dir.path().join("layout.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
        builder.append_dir_all(".", &layout).unwrap();
        builder.finish().unwrap();
        let from_tar = ImageStore::new(&dir.path().join("images-tar"));
        assert_eq!(
            from_tar.import(&tarball, Some("demo:tar")).unwrap(),
            vec!["demo:tar".to_owned()]
        );
        assert_eq!(
            from_tar.resolve("demo:tar").unwrap().config.digest,
            image.config.digest
        );
        // Without a name the tag annotation names it after the layout.
        let names = store.import(&layout, None).unwrap();
        assert_eq!(names, vec!["layout:1.0".to_owned()]);

        // A corrupted blob is refused.
        let broken = dir.path().join("broken");
        write_layout(&broken, "1.0", &[("hello", &file)], &[], &config).unwrap();
        for entry in std::fs::read_dir(broken.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.len() > 1000 {
                bytes[600] ^= 1;
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let store = ImageStore::new(&dir.path().join("images2"));
        let error = store
            .import(&broken, Some("broken"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not match its digest"), "{error}");
    }
}
