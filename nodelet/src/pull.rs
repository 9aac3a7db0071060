//! Pulling images from OCI registries into the node's image store.
//!
//! A pull fetches the manifest (an index or manifest list resolved to this
//! node's platform), then the config and layers, each checked against its digest
//! before it enters `blobs/sha256/` under that digest. Blobs already there are
//! not fetched again, so pulling an image whose layers this node has costs one
//! manifest request. The layers are unpacked by the same code as `import`, and
//! the name is recorded in `refs.json`.
//!
//! On a node, [`Puller`] makes the tasks needing an image share one pull.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::{Client, Reference};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::OnceCell;
use tracing::{debug, info};

pub use oci_client::secrets::RegistryAuth;

use crate::image::{Image, ImageError, ImageStore, MAX_JSON_BYTES, platform_arch, validate_digest};

const MANIFEST_TYPES: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// A manifest larger than this is refused (real ones are a few KiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The unpacked image.
    pub image: Image,
    /// Blobs (config and layers) downloaded.
    pub fetched: usize,
    /// Blobs already in the store.
    pub cached: usize,
    /// Bytes of the blobs downloaded.
    pub bytes: u64,
}

/// Whether `image` names a registry: a first path component that is a host (with
/// a dot or a port, or `localhost`), as in `127.0.0.1:5000/busybox:1` or
/// `docker.io/library/busybox`. Other names are only looked up on the node.
pub fn is_registry_reference(image: &str) -> bool {
    match image.trim().split_once('/') {
        Some((host, rest)) => {
            !rest.is_empty() && (host.contains('.') || host.contains(':') || host == "localhost")
        }
        None => false,
    }
}

/// Whether a registry (`host[:port]`) is on this machine: such registries are
/// reached over plain HTTP, as no one else can see that traffic.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn client_for(registry: &str, insecure: &[String]) -> Client {
    let mut plain: Vec<String> = insecure.to_vec();
    if is_loopback(registry) {
        plain.push(registry.to_owned());
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        // The store resolves indexes itself, by the same rule as `import`.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Picks this node's image (linux and its architecture) from an index's entries.
fn choose_platform(manifests: &[Value]) -> Option<String> {
    let arch = platform_arch();
    manifests
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
        .and_then(|m| m["digest"].as_str())
        .map(str::to_owned)
}

/// Pulls `reference` (`host[:port]/repo[:tag|@digest]`) into `store`, with
/// `auth` for its registry. Registries in `insecure` (`host:port`) and those
/// on loopback are reached over plain HTTP.
pub async fn pull(
    store: &ImageStore,
    reference: &str,
    auth: &RegistryAuth,
    insecure: &[String],
) -> Result<Pulled, ImageError> {
    let parsed = parse(reference)?;
    let client = client_for(parsed.resolve_registry(), insecure);
    pull_with(&client, store, reference, &parsed, auth).await
}

fn parse(reference: &str) -> Result<Reference, ImageError> {
    let parsed: Reference = reference
        .trim()
        .parse()
        .map_err(|e| ImageError::Pull(format!("{reference:?} is not an image reference: {e}")))?;
    if let Some(digest) = parsed.digest() {
        validate_digest(&format!("image reference {reference:?}: digest"), digest)?;
    }
    Ok(parsed)
}

/// [`pull`] with a client made for the reference's registry.
async fn pull_with(
    client: &Client,
    store: &ImageStore,
    reference: &str,
    parsed: &Reference,
    auth: &RegistryAuth,
) -> Result<Pulled, ImageError> {
    let fail = |what: String| ImageError::Pull(format!("cannot pull {reference}: {what}"));
    let started = std::time::Instant::now();

    let (bytes, digest) = fetch_manifest(client, store, parsed, auth)
        .await
        .map_err(&fail)?;
    let mut manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("manifest {digest} is not JSON: {e}")))?;
    let mut manifest_digest = digest;
    if let Some(list) = manifest["manifests"].as_array() {
        let chosen = choose_platform(list).ok_or_else(|| {
            fail(format!(
                "index {manifest_digest} has no image for linux/{}",
                platform_arch()
            ))
        })?;
        validate_digest(&format!("index {manifest_digest}: manifest"), &chosen)
            .map_err(|e| fail(e.to_string()))?;
        debug!(%reference, index = %manifest_digest, manifest = %chosen, "index resolved to this platform");
        let inner = parsed.clone_with_digest(chosen.clone());
        let (bytes, digest) = fetch_manifest(client, store, &inner, auth)
            .await
            .map_err(&fail)?;
        manifest = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("manifest {digest} is not JSON: {e}")))?;
        if manifest["manifests"].is_array() {
            return Err(fail(format!("{digest} is an index inside an index")));
        }
        manifest_digest = digest;
    }

    // Every blob's digest checked and its size bounded before any request:
    // the config by what a config may be, each layer by the node's layer bound
    // (a layer's content bound and room for its tar headers).
    let descriptor = |d: &Value, what: &str, max: u64| -> Result<Blob, ImageError> {
        let digest = d["digest"].as_str().ok_or_else(|| {
            fail(format!(
                "manifest {manifest_digest} lists a blob without a digest"
            ))
        })?;
        validate_digest(&format!("manifest {manifest_digest}: {what}"), digest)
            .map_err(|e| fail(e.to_string()))?;
        let size = d["size"].as_u64();
        if size.is_some_and(|size| size > max) {
            return Err(fail(format!(
                "{what} {digest} is {} bytes, more than the node's maximum of {max}",
                size.unwrap_or_default()
            )));
        }
        Ok(Blob {
            digest: digest.to_owned(),
            size,
            max,
        })
    };
    let config = descriptor(&manifest["config"], "config", MAX_JSON_BYTES)?;
    let mut layers = Vec::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        if media_type.contains("zstd") || media_type.ends_with("+encrypted") {
            return Err(fail(format!(
                "layer {} is {media_type}, which this node cannot unpack (tar and tar+gzip only)",
                layer["digest"].as_str().unwrap_or_default()
            )));
        }
        layers.push(descriptor(layer, "layer", store.max_blob_bytes())?);
    }

    let (config_path, config_fetched) = fetch_blob(client, store, parsed, &config)
        .await
        .map_err(&fail)?;
    let fetched_layers = futures::future::try_join_all(
        layers
            .iter()
            .map(|layer| fetch_blob(client, store, parsed, layer)),
    )
    .await
    .map_err(&fail)?;
    let mut pulled_bytes = config_fetched.unwrap_or(0);
    let mut fetched = usize::from(config_fetched.is_some());
    for (_, got) in &fetched_layers {
        pulled_bytes += got.unwrap_or(0);
        fetched += usize::from(got.is_some());
    }
    let cached = 1 + layers.len() - fetched;
    let layer_paths: Vec<PathBuf> = fetched_layers.into_iter().map(|(p, _)| p).collect();

    // Unpacking is disk and CPU work: off the async workers, one at a time
    // (two names of one image must not unpack into the same staging directory).
    static UNPACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _unpacking = UNPACK.lock().await;
    let store_owned = store.clone();
    let name = reference.trim().to_owned();
    let digest = manifest_digest.clone();
    let image = tokio::task::spawn_blocking(move || -> Result<Image, ImageError> {
        let config: Value = serde_json::from_slice(&std::fs::read(&config_path)?)
            .map_err(|e| ImageError::Invalid(format!("image config is not JSON: {e}")))?;
        store_owned.unpack(&digest, &config, &layer_paths)?;
        store_owned.set_ref(&name, &digest)?;
        store_owned.resolve(&name)
    })
    .await
    .map_err(|e| fail(format!("unpacking stopped: {e}")))?
    .map_err(|e| fail(e.to_string()))?;
    info!(%reference, digest = %manifest_digest, fetched, cached, bytes = pulled_bytes, took_ms = started.elapsed().as_millis() as u64, "image pulled");
    Ok(Pulled {
        image,
        fetched,
        cached,
        bytes: pulled_bytes,
    })
}

/// A blob a manifest lists: its digest, its size if given, the most bytes
/// taken of it.
struct Blob {
    digest: String,
    size: Option<u64>,
    max: u64,
}

/// Fetches a manifest, checks it against the digest it was asked by (or the
/// registry's), and stores it as a blob. Returns its bytes and digest.
async fn fetch_manifest(
    client: &Client,
    store: &ImageStore,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<(Vec<u8>, String), String> {
    let (bytes, reported) = client
        .pull_manifest_raw(reference, auth, &MANIFEST_TYPES)
        .await
        .map_err(|e| format!("manifest: {e}"))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(format!("its manifest is {} bytes, too large", bytes.len()));
    }
    let actual = sha256(&bytes);
    let expected = reference.digest().unwrap_or(&reported);
    if actual != expected {
        return Err(format!(
            "manifest {expected} does not match its digest (it is {actual})"
        ));
    }
    let path = store.blob(&actual).map_err(|e| e.to_string())?;
    if !path.exists() {
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let partial = crate::image::partial_path(&path)?;
            let written = (|| {
                let mut file = std::fs::File::create(&partial)?;
                std::io::Write::write_all(&mut file, &bytes)?;
                file.sync_all()?;
                std::fs::rename(&partial, &path)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            written
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot store manifest {actual}: {e}"))?;
    }
    Ok((bytes.to_vec(), actual))
}

/// Makes sure blob `digest` is in the store, downloading it if not. Returns its
/// path and, when it was downloaded, its size.
async fn fetch_blob(
    client: &Client,
    store: &ImageStore,
    reference: &Reference,
    Blob { digest, size, max }: &Blob,
) -> Result<(PathBuf, Option<u64>), String> {
    let target = store.blob(digest).map_err(|e| e.to_string())?;
    if target.exists() {
        return Ok((target, None));
    }
    let partial = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || crate::image::partial_path(&target))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot store blob {digest}: {e}"))?
    };
    let result = download(client, reference, digest, *size, *max, &partial).await;
    match result {
        Ok(len) => {
            tokio::fs::rename(&partial, &target)
                .await
                .map_err(|e| format!("cannot store blob {digest}: {e}"))?;
            debug!(%digest, bytes = len, "blob pulled");
            Ok((target, Some(len)))
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(error)
        }
    }
}

async fn download(
    client: &Client,
    reference: &Reference,
    digest: &str,
    size: Option<u64>,
    max: u64,
    path: &std::path::Path,
) -> Result<u64, String> {
    let mut stream = client
        .pull_blob_stream(reference, digest)
        .await
        .map_err(|e| format!("blob {digest}: {e}"))?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("blob {digest}: {e}"))?;
        len += chunk.len() as u64;
        if size.is_some_and(|size| len > size) {
            return Err(format!(
                "blob {digest} is larger than the {} bytes its manifest says",
                size.unwrap_or_default()
            ));
        }
        if len > max {
            return Err(format!(
                "blob {digest} is larger than the node's maximum of {max} bytes"
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != digest {
        return Err(format!(
            "blob {digest} does not match its digest (it is {actual})"
        ));
    }
    if size.is_some_and(|size| size != len) {
        return Err(format!(
            "blob {digest} is {len} bytes, not the {} its manifest says",
            size.unwrap_or_default()
        ));
    }
    Ok(len)
}

type Flight = Arc<OnceCell<Result<Image, String>>>;

/// The credentials for `registry` in a containers `auth.json` (the `auths` map
/// of a Docker `config.json`): `{"auths": {"HOST[:PORT]": {"auth":
/// "base64(user:password)"}}}` or `{"username": ..., "password": ...}`. None
/// when the file or the entry is missing: the pull is anonymous.
pub fn credentials(file: &std::path::Path, registry: &str) -> Result<Option<RegistryAuth>, String> {
    use base64::Engine as _;
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let config: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let hub = matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    let entry = [registry, "https://index.docker.io/v1/", "docker.io"]
        .iter()
        .take(if hub { 3 } else { 1 })
        .find_map(|key| config["auths"].get(*key));
    let Some(entry) = entry else {
        return Ok(None);
    };
    if let (Some(user), Some(password)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(Some(RegistryAuth::Basic(
            user.to_owned(),
            password.to_owned(),
        )));
    }
    let bad = || {
        format!(
            "{}: the auth of {registry} is not base64 of user:password",
            file.display()
        )
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str().unwrap_or_default())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(RegistryAuth::Basic(
        user.to_owned(),
        password.to_owned(),
    )))
}

/// A node's puller: the tasks needing an image that is not here share one pull.
/// Credentials come from `auth.json` in the image store's directory, read at
/// each pull (see [`credentials`]).
pub struct Puller {
    store: ImageStore,
    insecure: Vec<String>,
    inflight: Mutex<HashMap<String, Flight>>,
    /// Clients by registry and credentials: making one loads the system's CA
    /// certificates, which takes a good part of a second.
    clients: Mutex<HashMap<(String, String), Client>>,
    pulls: AtomicU64,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store)
            .field("insecure", &self.insecure)
            .field("pulls", &self.pulls)
            .finish_non_exhaustive()
    }
}

impl Puller {
    /// A puller into `store`, reaching the registries in `insecure` (`host:port`)
    /// over plain HTTP.
    pub fn new(store: ImageStore, insecure: Vec<String>) -> Puller {
        Puller {
            store,
            insecure,
            inflight: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            pulls: AtomicU64::new(0),
        }
    }

    /// How many pulls this puller has made.
    pub fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::Relaxed)
    }

    /// The image `reference`, from the store or else pulled. Calls
    /// for one reference while its pull runs wait for that pull and share its
    /// result; a failed pull is tried again by the next call after it.
    pub async fn ensure(&self, reference: &str) -> Result<Image, ImageError> {
        let key = crate::image::normalize(reference);
        let flight: Flight = self
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let result = flight
            .get_or_init(|| async {
                if let Ok(image) = self.store.resolve(&key) {
                    return Ok(image);
                }
                self.pulls.fetch_add(1, Ordering::Relaxed);
                let parsed = parse(&key).map_err(|e| e.to_string())?;
                let registry = parsed.resolve_registry().to_owned();
                let file = self.store.root().join("auth.json");
                let auth = credentials(&file, &registry)?.unwrap_or(RegistryAuth::Anonymous);
                let client = self.client(&registry, &auth).await?;
                pull_with(&client, &self.store, &key, &parsed, &auth)
                    .await
                    .map(|p| p.image)
                    .map_err(|e| e.to_string())
            })
            .await
            .clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&key);
            }
        }
        result.map_err(ImageError::Pull)
    }

    /// The client for `registry` with `auth`, made once.
    async fn client(&self, registry: &str, auth: &RegistryAuth) -> Result<Client, String> {
        let who = match auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Basic(user, password) => sha256(format!("{user}:{password}").as_bytes()),
            RegistryAuth::Bearer(token) => sha256(token.as_bytes()),
        };
        let key = (registry.to_owned(), who);
        if let Some(client) = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(client.clone());
        }
        let (registry, insecure) = (registry.to_owned(), self.insecure.clone());
        let client = tokio::task::spawn_blocking(move || client_for(&registry, &insecure))
            .await
            .map_err(|e| format!("cannot make a registry client: {e}"))?;
        Ok(self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(client)
            .clone())
    }

    /// Pulls the image of a container task when it names a registry and is not
    /// on this node yet; other images are only looked up locally, later.
    pub async fn pull_missing(&self, task: &api_types::Task) -> Result<(), ImageError> {
        let image = &task.spec.image;
        if task.spec.driver.unwrap_or_default() != api_types::Driver::Container
            || !is_registry_reference(image)
            || self.store.resolve(image).is_ok()
        {
            return Ok(());
        }
        self.ensure(image).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn registry_references_name_a_host() {
        for yes in [
            "127.0.0.1:5000/busybox:1",
            "localhost/busybox",
            "docker.io/library/busybox",
            "ghcr.io/a/b@sha256:00",
        ] {
            assert!(is_registry_reference(yes), "{yes}");
        }
        for no in ["busybox", "busybox:1", "library/busybox", "nope:1", "a:b/"] {
            assert!(!is_registry_reference(no), "{no}");
        }
    }

    #[test]
    fn loopback_registries_are_recognized() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn credentials_come_from_auth_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        assert!(credentials(&file, "r.example:5000").unwrap().is_none());
        std::fs::write(
            &file,
            serde_json::json!({"auths": {
                "r.example:5000": {"username": "u", "password": "p"},
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "bad.example": {"auth": "!!"},
            }})
            .to_string(),
        )
        .unwrap();
        let basic = |auth: Option<RegistryAuth>| match auth {
            Some(RegistryAuth::Basic(user, password)) => Some((user, password)),
            _ => None,
        };
        assert_eq!(
            basic(credentials(&file, "r.example:5000").unwrap()),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(
            basic(credentials(&file, "index.docker.io").unwrap()),
            Some(("hub".into(), "secret".into()))
        );
        assert!(credentials(&file, "other.example").unwrap().is_none());
        let error = credentials(&file, "bad.example").unwrap_err();
        assert!(error.contains("not base64"), "{error}");
    }

    #[test]
    fn an_index_resolves_to_this_platform() {
        let arch = platform_arch();
        let list: Vec<Value> = serde_json::from_value(serde_json::json!([
            {"digest": "sha256:aa", "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:bb", "platform": {"os": "windows", "architecture": arch}},
            {"digest": "sha256:cc", "platform": {"os": "linux", "architecture": arch}},
            {"digest": "sha256:dd", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]))
        .unwrap();
        assert_eq!(choose_platform(&list).as_deref(), Some("sha256:cc"));
        assert_eq!(choose_platform(&list[..2]), None);
    }
}
