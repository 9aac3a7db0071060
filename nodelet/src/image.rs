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
//! (`.wh.NAME` removes NAME, `.wh..wh..opq` empties a directory), each path
//! resolved inside the root being built (see [`unpack`]). Pulling from a
//! registry fills the same blob store. A digest is checked to be `sha256:` and
//! 64 lowercase hex digits before it is ever part of a path.

mod unpack;

use std::collections::BTreeMap;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::run::write_atomic;

pub use unpack::MAX_LAYER_ENTRIES;

/// The default bound on a layer's unpacked size.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 8 << 30;

/// The largest index, manifest or image config read (real ones are a few KiB).
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// Checks that `digest` is `sha256:` and 64 lowercase hex digits (the only
/// digests this store keeps) and returns the hex part. `what` names it in the
/// error.
pub fn validate_digest<'a>(what: &str, digest: &'a str) -> Result<&'a str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| ImageError::Digest {
            what: what.to_owned(),
            digest: digest.to_owned(),
        })
}

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
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error(
        "{what} {digest:?} is not a valid digest (it must be sha256: and 64 lowercase hex digits)"
    )]
    Digest {
        /// What carried it (`image reference`, `layer`, …).
        what: String,
        /// The digest as given.
        digest: String,
    },
    /// A layer entry broke an unpacking rule.
    #[error("layer {layer}: entry {entry:?}: {rule}")]
    Layer {
        /// The layer's digest.
        layer: String,
        /// The entry's path as the archive says it.
        entry: String,
        /// The rule it broke, or what failed.
        rule: String,
    },
}

/// The image store under a directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: unpack::Limits,
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
            limits: unpack::Limits {
                max_bytes: DEFAULT_MAX_LAYER_BYTES,
                max_entries: MAX_LAYER_ENTRIES,
            },
        }
    }

    /// This store, refusing layers whose entries add up to more than
    /// `max_layer_bytes` (and blobs larger than [`Self::max_blob_bytes`]).
    pub fn with_max_layer_bytes(mut self, max_layer_bytes: u64) -> ImageStore {
        self.limits.max_bytes = max_layer_bytes;
        self
    }

    /// The bound on a layer's unpacked size.
    pub fn max_layer_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// The bound on a layer blob's size: the layer's bound and an eighth for
    /// the tar's own headers and padding.
    pub fn max_blob_bytes(&self) -> u64 {
        self.limits.max_stream_bytes()
    }

    /// The store's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = validate_digest("blob", digest)?;
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
        let hex = validate_digest(&format!("image reference {name:?}: digest"), &digest)?;
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
            let dir = self.root.join("tmp").join(unique("import"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let file = std::fs::File::open(path)?;
            // The layout's own tar is unpacked by the rules of a layer: it may
            // be as hostile as one.
            let unpacked = unpack::apply(
                &dir,
                maybe_gzip(file)?,
                &path.display().to_string(),
                &self.layout_limits(),
            );
            if let Err(error) = unpacked {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
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
        let index: serde_json::Value = read_json(layout, "index.json")?;
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
            validate_digest("index.json: manifest", &digest)?;
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

    /// The bounds a layout's tar is unpacked within: every blob of it at most
    /// a layer's bound (with room for the manifests and configs).
    fn layout_limits(&self) -> unpack::Limits {
        unpack::Limits {
            max_bytes: self.limits.max_bytes.saturating_mul(4),
            max_entries: 100_000,
        }
    }

    /// Copies a blob from the layout into the store, verifying its digest, and
    /// refusing one larger than `max_bytes`.
    fn copy_blob(
        &self,
        layout: &Path,
        digest: &str,
        max_bytes: u64,
    ) -> Result<PathBuf, ImageError> {
        let target = self.blob(digest)?;
        if target.exists() {
            return Ok(target);
        }
        let hex = validate_digest("blob", digest)?;
        let mut source =
            unpack::open_file(layout, &format!("blobs/sha256/{hex}")).map_err(|e| {
                ImageError::Invalid(format!("blob {digest} missing from the layout: {e}"))
            })?;
        let partial = partial_path(&target)?;
        let copied = (|| -> Result<(), ImageError> {
            let mut out = std::fs::File::create(&partial)?;
            let mut hasher = Sha256::new();
            let mut len: u64 = 0;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = source.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                len += n as u64;
                if len > max_bytes {
                    return Err(ImageError::Invalid(format!(
                        "blob {digest} is larger than the node's maximum of {max_bytes} bytes"
                    )));
                }
                hasher.update(&buf[..n]);
                io::Write::write_all(&mut out, &buf[..n])?;
            }
            let actual = format!("sha256:{:x}", hasher.finalize());
            if actual != digest {
                return Err(ImageError::Invalid(format!(
                    "blob {digest} does not match its digest (it is {actual})"
                )));
            }
            out.sync_all()?;
            std::fs::rename(&partial, &target)?;
            Ok(())
        })();
        if copied.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        copied.map(|()| target)
    }

    /// Applies the layer blob at `layer` (its file name its hex digest) to `root`.
    fn apply_layer(&self, root: &Path, layer: &Path) -> Result<(), ImageError> {
        let name = format!(
            "sha256:{}",
            layer.file_name().unwrap_or_default().to_string_lossy()
        );
        let file = std::fs::File::open(layer)
            .map_err(|e| ImageError::Invalid(format!("cannot read layer {name}: {e}")))?;
        unpack::apply(root, maybe_gzip(file)?, &name, &self.limits)
    }

    /// Imports a manifest (following an index to this platform's manifest) and
    /// unpacks it. Returns the digest of the image manifest.
    fn import_manifest(&self, layout: &Path, digest: &str) -> Result<String, ImageError> {
        self.import_manifest_in(layout, digest, None)
    }

    /// [`Self::import_manifest`]; `index` is the index `digest` was chosen from.
    fn import_manifest_in(
        &self,
        layout: &Path,
        digest: &str,
        index: Option<&str>,
    ) -> Result<String, ImageError> {
        let path = self.copy_blob(layout, digest, MAX_JSON_BYTES)?;
        let manifest: serde_json::Value = read_blob_json(&path)?;
        if let Some(list) = manifest["manifests"].as_array() {
            if let Some(outer) = index {
                return Err(ImageError::Invalid(format!(
                    "{digest} is an index inside the index {outer}"
                )));
            }
            // An index: pick this machine's platform.
            let arch = platform_arch();
            let chosen = list
                .iter()
                .find(|m| m["platform"]["architecture"] == arch && m["platform"]["os"] == "linux")
                .ok_or_else(|| {
                    ImageError::Invalid(format!("no linux/{arch} image in index {digest}"))
                })?;
            let inner = chosen["digest"].as_str().unwrap_or_default().to_owned();
            validate_digest(&format!("index {digest}: manifest"), &inner)?;
            return self.import_manifest_in(layout, &inner, Some(digest));
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid(format!("manifest {digest} has no config")))?;
        validate_digest(&format!("manifest {digest}: config"), config_digest)?;
        let config_path = self.copy_blob(layout, config_digest, MAX_JSON_BYTES)?;
        let config: serde_json::Value = read_blob_json(&config_path)?;
        let mut layers = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let layer_digest = layer["digest"].as_str().unwrap_or_default();
            validate_digest(&format!("manifest {digest}: layer"), layer_digest)?;
            layers.push(self.copy_blob(layout, layer_digest, self.max_blob_bytes())?);
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
        let hex = validate_digest("manifest", digest)?;
        let rootfs_dir = self.root.join("rootfs");
        let target = rootfs_dir.join(hex);
        let config_file = rootfs_dir.join(format!("{hex}.json"));
        if target.is_dir() && config_file.exists() {
            return Ok(());
        }
        let staging = rootfs_dir.join(unique(&format!("{hex}.unpacking")));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        for layer in layers {
            if let Err(error) = self.apply_layer(&staging, layer) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(error);
            }
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

/// This machine's architecture as OCI names it (`amd64`, `arm64`, …).
pub fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A name unique to this process and call, after `prefix`.
/// A unique name beside `target` (its directory created) to write it under
/// before renaming it into place: a crash leaves no half blob under a digest,
/// and two writers of one blob (two names of an image, an import or a `loom
/// image pull` beside the nodelet) never write into the same file.
pub(crate) fn partial_path(target: &Path) -> io::Result<PathBuf> {
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other("a blob path without a directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    Ok(dir.join(unique(&format!("{name}.partial"))))
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads JSON of at most [`MAX_JSON_BYTES`] from `file`; `path` names it.
fn parse_json(file: std::fs::File, path: &Path) -> Result<serde_json::Value, ImageError> {
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(ImageError::Invalid(format!(
            "{} is larger than {MAX_JSON_BYTES} bytes",
            path.display()
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Invalid(format!("{} is not JSON: {e}", path.display())))
}

/// Reads the JSON file `rel` of a layout, resolved inside it.
fn read_json(layout: &Path, rel: &str) -> Result<serde_json::Value, ImageError> {
    let path = layout.join(rel);
    let file = unpack::open_file(layout, rel)
        .map_err(|e| ImageError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    parse_json(file, &path)
}

/// Reads a JSON blob of the store.
fn read_blob_json(path: &Path) -> Result<serde_json::Value, ImageError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ImageError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    parse_json(file, path)
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
        let store = ImageStore::new(&dir.path().join("images"));
        store.apply_layer(&root, &lower).unwrap();
        store.apply_layer(&root, &upper).unwrap();
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
