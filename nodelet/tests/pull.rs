//! Registry pulls against Debian's `docker-registry` on loopback, holding a
//! busybox image built from the host's busybox and pushed with `skopeo`. The
//! registry's access log tells what was fetched. Skipped without the two tools;
//! the tests that run containers also need root.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loom_testing::nodelet::{Harness, is_root, phase};
use nodelet::image::ImageStore;
use nodelet::pull::{RegistryAuth, pull};
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

/// A `docker-registry` on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one, or says why not and returns None.
    fn start() -> Option<Registry> {
        Registry::start_with(None)
    }

    /// Starts one; with `htpasswd` (a `user:bcrypt` line) it wants basic auth.
    fn start_with(htpasswd: Option<&str>) -> Option<Registry> {
        for tool in ["/usr/bin/docker-registry", "/usr/bin/skopeo"] {
            if !Path::new(tool).exists() {
                eprintln!("skipped: no {tool} (apt install docker-registry skopeo)");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(line) = htpasswd {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{line}\n")).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: loom-test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !registry.ready() {
            assert!(
                Instant::now() < deadline,
                "the registry did not answer: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    fn ready(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        // 200, or 401 when it wants credentials.
        reply.starts_with("HTTP/") && matches!(reply.split(' ').nth(1), Some("200" | "401"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Access-log lines of GETs of `path` (e.g. `/v2/busybox/manifests/1`).
    fn gets(&self, path: &str) -> usize {
        let needle = format!("\"GET {path} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Builds the busybox layout and pushes it as `busybox:TAG`.
    fn push_busybox(&self, tag: &str) {
        self.push_busybox_as(tag, None);
    }

    /// Pushes it with `user:password` credentials.
    fn push_busybox_as(&self, tag: &str, creds: Option<&str>) {
        let layout = self.dir.path().join(format!("layout-{tag}"));
        nodelet::image::busybox_layout(&layout, Path::new("/bin/busybox"), "latest").unwrap();
        let output = Command::new("/usr/bin/skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .args(creds.map(|c| format!("--dest-creds={c}")))
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/busybox:{tag}", self.addr))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo push failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The blob files the registry serves, largest first.
    fn stored_blobs(&self) -> Vec<PathBuf> {
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        let mut blobs: Vec<PathBuf> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .flat_map(|prefix| std::fs::read_dir(prefix.path()).unwrap().flatten())
            .map(|d| d.path().join("data"))
            .collect();
        blobs.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
        blobs
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The layer digests of the image `name` in `store`.
fn layers(store_root: &Path, name: &str) -> Vec<String> {
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store_root.join("refs.json")).unwrap()).unwrap();
    let digest = refs[name].as_str().unwrap().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            store_root
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_a_pulled_image_and_a_second_pull_fetches_only_the_manifest() {
    if !is_root() {
        eprintln!("skipped: running containers needs root");
        return;
    }
    let Some(registry) = Registry::start() else {
        return;
    };
    registry.push_busybox("1");
    let image = format!("{}/busybox:1", registry.addr);
    let h = Harness::new("pull").await;
    let nodelet = h.start(h.config(), None);
    let started = Instant::now();
    h.create(json!({"metadata": {"name": "pulled"}, "spec": {
        "image": image, "command": ["sh", "-c", "echo from the registry; ls /bin/busybox"]
    }}))
    .await;
    let task = h
        .wait_for("pulled", LONG, |t| phase(t) == "Completed")
        .await;
    eprintln!(
        "task created -> Completed with the pull: {:?}",
        started.elapsed()
    );
    assert_eq!(task.status.unwrap().exit_code, Some(0));
    nodelet.stop().await;

    let images = h.state.join("images");
    let layer = layers(&images, &image).pop().unwrap();
    let layer_path = format!("/v2/busybox/blobs/{layer}");
    assert_eq!(registry.gets(&layer_path), 1);
    assert_eq!(registry.gets("/v2/busybox/manifests/1"), 1);

    // Pulled again: only the manifest crosses the wire.
    let store = ImageStore::new(&images);
    let again = pull(&store, &image, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    assert_eq!((again.fetched, again.cached, again.bytes), (0, 2, 0));
    assert_eq!(
        registry.gets(&layer_path),
        1,
        "the layer is not fetched again"
    );
    assert_eq!(registry.gets("/v2/busybox/manifests/1"), 2);
    assert!(registry.log().matches("\"GET /v2/busybox/blobs/").count() == 2);

    // Into an empty store: everything is fetched, and timed.
    let fresh = tempfile::tempdir().unwrap();
    let store = ImageStore::new(fresh.path());
    let started = Instant::now();
    let first = pull(&store, &image, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    eprintln!(
        "first pull of {image}: {:?}, {} blobs, {} bytes",
        started.elapsed(),
        first.fetched,
        first.bytes
    );
    assert_eq!(first.fetched, 2);
    assert!(first.image.rootfs.join("bin/busybox").is_file());
    assert_eq!(first.image.config.cmd, vec!["sh"]);
    assert_eq!(
        store.resolve(&image).unwrap().config.digest,
        first.image.config.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tasks_needing_one_image_pull_it_once_and_a_missing_image_fails_its_task() {
    if !is_root() {
        eprintln!("skipped: running containers needs root");
        return;
    }
    let Some(registry) = Registry::start() else {
        return;
    };
    registry.push_busybox("1");
    let image = format!("{}/busybox:1", registry.addr);
    let h = Harness::new("pull5").await;
    let nodelet = h.start(h.config(), None);
    for i in 0..5 {
        h.create(json!({"metadata": {"name": format!("t{i}")}, "spec": {
            "image": image, "command": ["true"]
        }}))
        .await;
    }
    h.create(json!({"metadata": {"name": "missing"}, "spec": {
        "image": format!("{}/nope:1", registry.addr), "command": ["true"]
    }}))
    .await;
    for i in 0..5 {
        h.wait_for(&format!("t{i}"), LONG, |t| phase(t) == "Completed")
            .await;
    }
    let missing = h.wait_for("missing", LONG, |t| phase(t) == "Failed").await;
    let status = missing.status.unwrap();
    assert_eq!(status.reason, "ImagePullFailed");
    assert!(status.message.contains("nope:1"), "{}", status.message);
    nodelet.stop().await;

    let layer = layers(&h.state.join("images"), &image).pop().unwrap();
    assert_eq!(registry.gets("/v2/busybox/manifests/1"), 1, "one pull");
    assert_eq!(registry.gets(&format!("/v2/busybox/blobs/{layer}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_layers_and_manifests_are_refused() {
    let Some(registry) = Registry::start() else {
        return;
    };
    registry.push_busybox("1");
    let image = format!("{}/busybox:1", registry.addr);
    let blobs = registry.stored_blobs();

    // A layer whose bytes are not those of its digest.
    let layer = &blobs[0];
    let mut bytes = std::fs::read(layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(layer, &bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let error = pull(&store, &image, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("digest") && error.contains("busybox:1"),
        "{error}"
    );
    let layer_digest = format!(
        "sha256:{}",
        layer
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert!(error.contains(&layer_digest), "{error}");
    let stored: Vec<String> = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !stored
            .iter()
            .any(|n| layer_digest.ends_with(n.split('.').next().unwrap())),
        "nothing of the layer is kept: {stored:?}"
    );
    assert!(store.list().is_empty());
    assert!(store.resolve(&image).is_err());

    // A manifest whose bytes are not those of its digest (still valid JSON).
    let manifest = blobs
        .iter()
        .find(|p| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap())
                .is_ok_and(|v| v["layers"].is_array())
        })
        .unwrap();
    let mut text = std::fs::read(manifest).unwrap();
    text.push(b'\n');
    std::fs::write(manifest, text).unwrap();
    let error = pull(&store, &image, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("igest"), "{error}");
    assert!(store.list().is_empty());

    // A digest the registry does not have.
    let unknown = format!("{}/busybox@sha256:{}", registry.addr, "0".repeat(64));
    let error = pull(&store, &unknown, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot pull"), "{error}");
}

/// `loom` with password `loom-test-password`, bcrypt cost 4.
const HTPASSWD: &str = "loom:$2b$04$fKapqBK9K2xBNhkurjMKzOGQP//iIy9wNHfuW12rcO5q01jfdfzxK";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_anonymous_pulls_refused() {
    let Some(registry) = Registry::start_with(Some(HTPASSWD)) else {
        return;
    };
    registry.push_busybox_as("1", Some("loom:loom-test-password"));
    let image = format!("{}/busybox:1", registry.addr);

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(&dir.path().join("anonymous"));
    let error = pull(&store, &image, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot pull"), "{error}");
    assert!(store.list().is_empty());
    let basic = RegistryAuth::Basic("loom".into(), "loom-test-password".into());
    let pulled = pull(&store, &image, &basic, &[]).await.unwrap();
    assert_eq!(pulled.fetched, 2);

    // The node's puller reads them from auth.json beside its store.
    let root = dir.path().join("node");
    let puller = nodelet::pull::Puller::new(ImageStore::new(&root), Vec::new());
    assert!(puller.ensure(&image).await.is_err(), "no credentials yet");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("auth.json"),
        json!({"auths": {registry.addr.clone(): {"auth": "bG9vbTpsb29tLXRlc3QtcGFzc3dvcmQ="}}})
            .to_string(),
    )
    .unwrap();
    let image_here = puller.ensure(&image).await.unwrap();
    assert!(image_here.rootfs.join("bin/busybox").is_file());
    assert_eq!(puller.pulls(), 2);
    puller.ensure(&image).await.unwrap();
    assert_eq!(
        puller.pulls(),
        2,
        "an image on the node is not pulled again"
    );
}

/// Writes blob `value` (JSON) into `layout`; returns its digest and size.
fn put_json(layout: &Path, value: &serde_json::Value) -> (String, usize) {
    use sha2::Digest as _;
    let bytes = serde_json::to_vec(value).unwrap();
    let hex = format!("{:x}", sha2::Sha256::digest(&bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_resolved_to_this_nodes_platform() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other = if arch == "s390x" { "riscv64" } else { "s390x" };
    // The busybox image, and a twin whose config says another architecture,
    // listed first in an index.
    let layout = registry.dir.path().join("multi");
    nodelet::image::busybox_layout(&layout, Path::new("/bin/busybox"), "multi").unwrap();
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let entry = read_json(&layout.join("index.json"))["manifests"][0].clone();
    let manifest = read_json(&blob(entry["digest"].as_str().unwrap()));
    let mut config = read_json(&blob(manifest["config"]["digest"].as_str().unwrap()));
    config["architecture"] = other.into();
    let (config_digest, config_size) = put_json(&layout, &config);
    let mut twin = manifest.clone();
    twin["config"]["digest"] = config_digest.into();
    twin["config"]["size"] = config_size.into();
    let (twin_digest, twin_size) = put_json(&layout, &twin);
    let media = "application/vnd.oci.image.manifest.v1+json";
    let (index_digest, index_size) = put_json(
        &layout,
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"mediaType": media, "digest": twin_digest, "size": twin_size, "platform": {"os": "linux", "architecture": other}},
            {"mediaType": media, "digest": entry["digest"], "size": entry["size"], "platform": {"os": "linux", "architecture": arch}},
        ]}),
    );
    std::fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }]})
        .to_string(),
    )
    .unwrap();
    let output = Command::new("/usr/bin/skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{}/busybox:multi", registry.addr))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo push failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path());
    let image = format!("{}/busybox:multi", registry.addr);
    let pulled = pull(&store, &image, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    assert!(pulled.image.rootfs.join("bin/busybox").is_file());
    // The manifest recorded is this platform's, not the index's first entry.
    let stored = |digest: &str| {
        read_json(
            &dir.path()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
    };
    let manifest = stored(&pulled.image.config.digest);
    let config = stored(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], arch);
    assert_eq!(
        store.resolve(&image).unwrap().config.digest,
        pulled.image.config.digest
    );
    // Only that platform's config was fetched.
    assert_eq!(pulled.fetched, 2);
}
