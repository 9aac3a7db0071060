//! Images built to escape the root they are unpacked into: whiteouts of host
//! paths, `..` and absolute entries, entries, whiteouts and hard links through
//! symlinked parents, device nodes, a 10 GiB entry, digests that are paths.
//! Each is imported from an OCI layout built here, beside a canary tree that
//! must come out of it exactly as it went in, and must be refused with an error
//! naming the layer, the entry and the rule, or land inside the image's root.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nodelet::image::{ImageError, ImageStore};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One entry of a hand-made layer, its path and link target written into the
/// header as they are (the `tar` builder refuses `..` and absolute paths).
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Mode(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
    Fifo(&'a str),
    /// A regular file whose header says `size` bytes, with no data after it.
    Claims(&'a str, u64),
}

fn header(kind: tar::EntryType, path: &str, link: &str, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    let gnu = header.as_gnu_mut().unwrap();
    assert!(path.len() < 100 && link.len() < 100, "{path} / {link}");
    gnu.name[..path.len()].copy_from_slice(path.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    if kind == tar::EntryType::Char {
        // /dev/mem.
        header.set_device_major(1).unwrap();
        header.set_device_minor(1).unwrap();
    }
    header.set_cksum();
    header
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (h, data): (tar::Header, &[u8]) = match entry {
            E::Dir(p) => (header(T::Directory, p, "", 0, 0o755), b""),
            E::File(p, data) => (header(T::Regular, p, "", data.len() as u64, 0o644), data),
            E::Mode(p, data, mode) => (header(T::Regular, p, "", data.len() as u64, *mode), data),
            E::Symlink(p, target) => (header(T::Symlink, p, target, 0, 0o777), b""),
            E::Hard(p, target) => (header(T::Link, p, target, 0, 0o644), b""),
            E::Char(p) => (header(T::Char, p, "", 0, 0o600), b""),
            E::Fifo(p) => (header(T::Fifo, p, "", 0, 0o600), b""),
            E::Claims(p, size) => {
                // The header alone: the reader must stop at the bound before
                // it looks for the data.
                let mut bytes = builder.into_inner().unwrap();
                // Without the end-of-archive blocks `into_inner` wrote.
                bytes.truncate(bytes.len() - 1024);
                bytes.extend_from_slice(header(T::Regular, p, "", *size, 0o644).as_bytes());
                return bytes;
            }
        };
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Writes an OCI layout of one image made of `layers` under `dir/layout`, and
/// returns its path and the layers' digests. `index` edits the index.
fn write_oci(
    dir: &Path,
    layers: &[Vec<u8>],
    edit: impl FnOnce(&mut Value),
) -> (PathBuf, Vec<String>) {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        (digest, bytes.len())
    };
    let digests: Vec<String> = layers.iter().map(|l| put(l).0).collect();
    let config = json!({
        "architecture": nodelet::image::platform_arch(),
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": digests},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers.iter().zip(&digests).map(|(l, d)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len(),
        })).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let mut index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
        }],
    });
    edit(&mut index);
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    (layout, digests)
}

/// What a tree holds: per path its kind, mode, link target or content hash.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let mode = meta.permissions().mode();
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                format!("dir {mode:o}")
            } else {
                let content = std::fs::read(&path).unwrap();
                format!("file {mode:o} {} ino {}", sha256(&content), meta.ino())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A temporary directory holding a canary tree, and later the layout and the
/// image store, whose canary and top-level listing are checked at the end.
struct Scene {
    dir: tempfile::TempDir,
    canary: PathBuf,
    canary_before: BTreeMap<PathBuf, String>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        for sub in ["sub", "etc", "bin"] {
            std::fs::create_dir_all(canary.join(sub)).unwrap();
        }
        std::fs::write(canary.join("file"), b"the host's file").unwrap();
        std::fs::write(canary.join("sub/x"), b"x").unwrap();
        std::fs::write(canary.join("etc/shadow"), b"root:$6$secret:19000::::::").unwrap();
        std::fs::write(canary.join("bin/sh"), b"#!host").unwrap();
        std::os::unix::fs::symlink("file", canary.join("link")).unwrap();
        let canary_before = snapshot(&canary);
        Scene {
            dir,
            canary,
            canary_before,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The canary's absolute path plus `rel`, as an archive would write it.
    fn abs(&self, rel: &str) -> String {
        format!("{}/{rel}", self.canary.display())
    }

    /// The canary's path from the root being unpacked
    /// (`DIR/images/rootfs/STAGING`): `../../../canary`.
    fn up(&self, rel: &str) -> String {
        format!("../../../canary/{rel}")
    }

    fn store(&self) -> ImageStore {
        ImageStore::new(&self.path().join("images"))
    }

    /// Imports `layers` as image `evil`.
    fn import(&self, layers: &[Vec<u8>]) -> (Result<Vec<String>, ImageError>, Vec<String>) {
        let (layout, digests) = write_oci(self.path(), layers, |_| {});
        (self.store().import(&layout, Some("evil")), digests)
    }

    /// Asserts the host is untouched: the canary as it was, nothing new beside
    /// it, no staging or temporary directory left in the store.
    fn check(&self) {
        assert_eq!(
            snapshot(&self.canary),
            self.canary_before,
            "the canary tree changed"
        );
        let mut top: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        top.retain(|n| n != "layout" && n != "images");
        assert_eq!(
            top,
            vec!["canary".to_owned()],
            "files appeared beside the canary"
        );
        let rootfs = self.path().join("images/rootfs");
        if rootfs.exists() {
            for entry in std::fs::read_dir(&rootfs).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                let hex = name.trim_end_matches(".json");
                assert!(
                    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "left in the store: {name}"
                );
            }
        }
    }

    /// The root of image `evil`.
    fn rootfs(&self) -> PathBuf {
        self.store().resolve("evil").unwrap().rootfs
    }
}

/// Asserts `result` is a refusal naming `layer`, `entry` and `rule`.
fn refused(result: Result<Vec<String>, ImageError>, layer: &str, entry: &str, rule: &str) {
    let error = result.expect_err("the image was imported").to_string();
    for part in [layer, entry, rule] {
        assert!(error.contains(part), "{error:?} does not say {part:?}");
    }
}

#[test]
fn whiteouts_of_absolute_host_paths_stay_in_the_root() {
    let scene = Scene::new();
    let (result, _) = scene.import(&[
        layer(&[E::Dir("etc"), E::File("etc/shadow", b"image")]),
        layer(&[
            E::File(&scene.abs(".wh.file"), b""),
            E::File(&scene.abs("sub/.wh..wh..opq"), b""),
            E::File(&scene.abs("etc/.wh.shadow"), b""),
            E::File(&scene.abs(".wh.bin"), b""),
        ]),
    ]);
    result.unwrap();
    assert_eq!(
        std::fs::read(scene.rootfs().join("etc/shadow")).unwrap(),
        b"image"
    );
    scene.check();
}

#[test]
fn a_root_opaque_whiteout_empties_only_the_image() {
    let scene = Scene::new();
    let (result, _) = scene.import(&[
        layer(&[E::Dir("etc"), E::File("etc/a", b"a"), E::File("b", b"b")]),
        layer(&[E::File("/.wh..wh..opq", b""), E::File("/c", b"c")]),
        layer(&[E::File("/.wh.c", b""), E::File("/d", b"d")]),
    ]);
    result.unwrap();
    let rootfs = scene.rootfs();
    let names: Vec<String> = std::fs::read_dir(&rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["d".to_owned()]);
    scene.check();
}

#[test]
fn whiteouts_through_symlinked_parents_stay_in_the_root() {
    let scene = Scene::new();
    let (result, _) = scene.import(&[
        layer(&[
            E::Symlink("etc", &scene.up("etc")),
            E::Symlink("up", "../../.."),
            E::Symlink("abs", &scene.abs("")),
            E::Symlink("chain", "up/.."),
        ]),
        layer(&[
            E::File("etc/.wh.shadow", b""),
            E::File("up/canary/.wh.file", b""),
            E::File("up/.wh.canary", b""),
            E::File("abs/.wh..wh..opq", b""),
            E::File("chain/canary/sub/.wh.x", b""),
        ]),
    ]);
    result.unwrap();
    // The links themselves are kept as written.
    let rootfs = scene.rootfs();
    assert_eq!(
        std::fs::read_link(rootfs.join("etc")).unwrap(),
        Path::new(&scene.up("etc"))
    );
    scene.check();
}

#[test]
fn a_whiteout_of_dot_dot_is_refused() {
    let scene = Scene::new();
    let (result, digests) = scene.import(&[layer(&[E::Dir("a"), E::File("a/.wh...", b"")])]);
    refused(
        result,
        &digests[0],
        "a/.wh...",
        "a whiteout must name an entry of its directory",
    );
    scene.check();
}

#[test]
fn dot_dot_entries_are_refused() {
    let scene = Scene::new();
    for (i, entry) in [
        E::File("../../../canary/x", b"pwned"),
        E::File("a/../../../../canary/file", b"pwned"),
        E::Symlink("../../../canary/new", "/"),
    ]
    .into_iter()
    .enumerate()
    {
        let (layout, digests) = write_oci(
            &scene.path().join(format!("l{i}")),
            &[layer(&[entry])],
            |_| {},
        );
        let result = scene.store().import(&layout, Some("evil"));
        refused(result, &digests[0], "canary", "a path with `..` is refused");
        std::fs::remove_dir_all(scene.path().join(format!("l{i}"))).unwrap();
    }
    scene.check();
}

#[test]
fn absolute_entries_land_inside_the_root() {
    let scene = Scene::new();
    let (result, _) = scene.import(&[layer(&[
        // A file where the host has a directory: the old code removed the
        // host's directory to make room.
        E::File(&scene.abs("sub"), b"pwned"),
        E::File(&scene.abs("file"), b"pwned"),
        E::File("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    ])]);
    result.unwrap();
    let rootfs = scene.rootfs();
    let inside = rootfs.join(scene.abs("sub").trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"pwned");
    assert!(rootfs.join("etc/passwd").is_file());
    scene.check();
}

#[test]
fn entries_through_a_symlinked_parent_stay_in_the_root() {
    let scene = Scene::new();
    // `lib -> /`: `lib/etc/shadow` is the image's /etc/shadow.
    let (result, _) = scene.import(&[
        layer(&[E::Symlink("lib", "/"), E::Symlink("up", "../../..")]),
        layer(&[
            E::File("lib/etc/shadow", b"image"),
            E::File("up/canary/etc/shadow", b"image2"),
        ]),
    ]);
    result.unwrap();
    let rootfs = scene.rootfs();
    assert_eq!(std::fs::read(rootfs.join("etc/shadow")).unwrap(), b"image");
    assert_eq!(
        std::fs::read(rootfs.join("canary/etc/shadow")).unwrap(),
        b"image2"
    );
    scene.check();
}

#[test]
fn an_entry_through_a_link_to_a_host_directory_is_refused() {
    let scene = Scene::new();
    // The host's canary is not in the image: the link dangles in the root.
    let (result, digests) = scene.import(&[
        layer(&[E::Symlink("esc", &scene.abs(""))]),
        layer(&[E::File("esc/sub", b"pwned"), E::File("esc/file", b"pwned")]),
    ]);
    refused(
        result,
        &digests[1],
        "esc/sub",
        "a parent is a link to a directory that is not in the image",
    );
    scene.check();
}

#[test]
fn hard_links_to_outside_the_root_are_refused() {
    let scene = Scene::new();
    let cases = [
        (scene.abs("file"), "is not in the image's root"),
        (scene.up("file"), "a path with `..` is refused"),
        ("up/canary/file".to_owned(), "is not in the image's root"),
    ];
    for (i, (target, rule)) in cases.iter().enumerate() {
        let (layout, digests) = write_oci(
            &scene.path().join(format!("l{i}")),
            &[layer(&[
                E::Symlink("up", "../../.."),
                E::Hard("stolen", target),
            ])],
            |_| {},
        );
        let result = scene.store().import(&layout, Some("evil"));
        refused(result, &digests[0], "stolen", rule);
        std::fs::remove_dir_all(scene.path().join(format!("l{i}"))).unwrap();
    }
    scene.check();
}

#[test]
fn device_nodes_are_refused() {
    let scene = Scene::new();
    let (result, digests) = scene.import(&[layer(&[E::Dir("dev"), E::Char("dev/mem")])]);
    refused(result, &digests[0], "dev/mem", "device nodes are refused");
    scene.check();
}

#[test]
fn a_10_gib_entry_is_refused_before_its_data() {
    let scene = Scene::new();
    // 512 bytes on disk: a header saying 10 GiB, and no data.
    let huge = layer(&[E::File("small", b"ok"), E::Claims("huge", 10 << 30)]);
    assert!(huge.len() < 4096);
    let (result, digests) = scene.import(&[huge]);
    refused(
        result,
        &digests[0],
        "huge",
        "more than the node's maximum layer size of 8589934592 bytes",
    );
    scene.check();
}

#[test]
fn entries_adding_up_past_the_bound_are_refused() {
    let scene = Scene::new();
    let chunk = vec![7u8; 360 << 10];
    let (layout, digests) = write_oci(
        scene.path(),
        &[layer(&[
            E::File("a", &chunk),
            E::File("b", &chunk),
            E::File("c", &chunk),
        ])],
        |_| {},
    );
    // The blob (1,082 KiB) is within the blob bound (1,152 KiB), its entries
    // (1,080 KiB) are not within the layer's.
    let store = scene.store().with_max_layer_bytes(1 << 20);
    refused(
        store.import(&layout, Some("evil")),
        &digests[0],
        "\"c\"",
        "more than the node's maximum layer size of 1048576 bytes",
    );
    // A blob larger than the bound is not even copied.
    let store = ImageStore::new(&scene.path().join("images/second")).with_max_layer_bytes(1 << 19);
    let error = store.import(&layout, Some("evil")).unwrap_err().to_string();
    assert!(
        error.contains("larger than the node's maximum of 589824 bytes"),
        "{error}"
    );
    scene.check();
}

#[test]
fn digests_that_are_paths_are_refused() {
    let scene = Scene::new();
    // What the old code would have taken for an unpacked image.
    std::fs::create_dir_all(scene.path().join("canary-image")).unwrap();
    std::fs::write(
        scene.path().join("canary-image.json"),
        br#"{"digest":"sha256:x","entrypoint":[],"cmd":["sh"],"env":[],"workingDir":""}"#,
    )
    .unwrap();
    // With an image in the store, `images/rootfs/../../canary-image` exists.
    let (result, _) = scene.import(&[layer(&[E::File("a", b"a")])]);
    result.unwrap();
    std::fs::remove_dir_all(scene.path().join("layout")).unwrap();
    let store = scene.store();
    let error = store
        .resolve("evil@sha256:../../canary-image")
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not a valid digest"), "{error}");
    let upper = format!("evil@sha256:{}", "A".repeat(64));
    let error = store.resolve(&upper).unwrap_err().to_string();
    assert!(error.contains("is not a valid digest"), "{error}");
    std::fs::remove_dir(scene.path().join("canary-image")).unwrap();
    std::fs::remove_file(scene.path().join("canary-image.json")).unwrap();

    // In an index, a manifest, a config and a layer descriptor.
    let bad = "sha256:../../../canary/file";
    let dir = scene.path().join("l");
    let (layout, _) = write_oci(&dir, &[layer(&[E::File("a", b"a")])], |index| {
        index["manifests"][0]["digest"] = json!(bad);
    });
    let error = store.import(&layout, Some("evil")).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "index.json: manifest \"{bad}\" is not a valid digest"
        )),
        "{error}"
    );
    // An index blob choosing a manifest by a bad digest.
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": bad, "size": 10,
            "platform": {"os": "linux", "architecture": nodelet::image::platform_arch()},
        }],
    })
    .to_string();
    let nested_digest = sha256(nested.as_bytes());
    std::fs::write(
        layout.join("blobs/sha256").join(&nested_digest[7..]),
        &nested,
    )
    .unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest, "size": nested.len(),
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let error = store.import(&layout, Some("evil")).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "index {nested_digest}: manifest \"{bad}\" is not a valid digest"
        )),
        "{error}"
    );
    std::fs::remove_dir_all(dir).unwrap();
    for part in ["config", "layer"] {
        let dir = scene.path().join("l");
        let (layout, _) = write_oci(&dir, &[layer(&[E::File("a", b"a")])], |_| {});
        rewrite_manifest(&layout, |manifest| match part {
            "config" => manifest["config"]["digest"] = json!(bad),
            _ => manifest["layers"][0]["digest"] = json!(bad),
        });
        let error = store.import(&layout, Some("evil")).unwrap_err().to_string();
        assert!(
            error.contains(&format!(": {part} \"{bad}\" is not a valid digest")),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
    scene.check();
}

/// Replaces the layout's (only) manifest by `edit` of it, and the index entry.
fn rewrite_manifest(layout: &Path, edit: impl FnOnce(&mut Value)) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let old = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blobs = layout.join("blobs/sha256");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&old[7..])).unwrap()).unwrap();
    edit(&mut manifest);
    let bytes = manifest.to_string().into_bytes();
    let digest = sha256(&bytes);
    std::fs::write(blobs.join(&digest[7..]), &bytes).unwrap();
    index["manifests"][0]["digest"] = json!(digest);
    index["manifests"][0]["size"] = json!(bytes.len());
    std::fs::write(index_path, index.to_string()).unwrap();
}

#[test]
fn a_hostile_layout_tar_is_unpacked_inside_its_directory() {
    let scene = Scene::new();
    // The layout's own tar: links to the canary where the blobs would be.
    let mut builder = tar::Builder::new(Vec::new());
    for (path, target) in [
        ("index.json", scene.abs("file")),
        ("blobs", scene.abs("")),
        ("up", "../../..".to_owned()),
    ] {
        builder
            .append(
                &header(tar::EntryType::Symlink, path, &target, 0, 0o777),
                &b""[..],
            )
            .unwrap();
    }
    builder
        .append(
            &header(tar::EntryType::Regular, "up/canary/.wh.file", "", 0, 0o644),
            &b""[..],
        )
        .unwrap();
    let tarball = scene.path().join("layout");
    std::fs::write(&tarball, builder.into_inner().unwrap()).unwrap();
    let error = scene
        .store()
        .import(&tarball, Some("evil"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("index.json"), "{error}");
    assert!(
        !scene
            .path()
            .join("images/tmp")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
    scene.check();
}

#[test]
fn absolute_symlinks_and_hard_links_inside_the_root_unpack() {
    let scene = Scene::new();
    let (result, _) = scene.import(&[
        layer(&[
            E::Dir("usr"),
            E::Dir("usr/share"),
            E::Dir("usr/share/zoneinfo"),
            E::File("usr/share/zoneinfo/UTC", b"TZif2"),
            E::Dir("etc"),
            E::Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
            E::Dir("bin"),
            E::Mode("bin/busybox", b"\x7fELF", 0o4755),
            E::Hard("bin/sh", "bin/busybox"),
            E::Hard("bin/ls", "/bin/busybox"),
            E::Hard("./bin/cat", "./bin/busybox"),
            E::Symlink("lib", "/"),
            E::Fifo("run.fifo"),
        ]),
        layer(&[
            E::File("lib/etc/hosts", b"127.0.0.1 localhost\n"),
            // Replaced whole: the link is gone, not followed.
            E::File("etc/localtime", b"replaced"),
            E::Hard("bin/localtime", "etc/localtime"),
        ]),
    ]);
    result.unwrap();
    let rootfs = scene.rootfs();
    assert_eq!(
        std::fs::read(rootfs.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert_eq!(
        std::fs::read(rootfs.join("etc/localtime")).unwrap(),
        b"replaced"
    );
    assert_eq!(
        std::fs::read(rootfs.join("usr/share/zoneinfo/UTC")).unwrap(),
        b"TZif2"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("lib")).unwrap(),
        Path::new("/")
    );
    let busybox = std::fs::metadata(rootfs.join("bin/busybox")).unwrap();
    // setuid dropped, the rest kept.
    assert_eq!(busybox.permissions().mode() & 0o7777, 0o755);
    for link in ["sh", "ls", "cat"] {
        let meta = std::fs::symlink_metadata(rootfs.join("bin").join(link)).unwrap();
        assert_eq!(meta.ino(), busybox.ino(), "bin/{link}");
    }
    assert_eq!(busybox.nlink(), 4);
    assert_eq!(
        std::fs::metadata(rootfs.join("bin/localtime"))
            .unwrap()
            .ino(),
        std::fs::metadata(rootfs.join("etc/localtime"))
            .unwrap()
            .ino()
    );
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(rootfs.join("run.fifo"))
            .unwrap()
            .file_type()
    ));
    scene.check();
}

/// A registry on loopback serving `manifests` (by tag or digest) and no blob,
/// recording the paths asked for.
struct FakeRegistry {
    addr: String,
    asked: Arc<Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    async fn start(manifests: BTreeMap<String, Value>) -> FakeRegistry {
        use axum::http::{HeaderMap, StatusCode, Uri, header};
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let manifests = Arc::new(manifests);
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let seen = seen.clone();
            let manifests = manifests.clone();
            async move {
                let path = uri.path().to_owned();
                seen.lock().unwrap().push(path.clone());
                if path == "/v2/" {
                    return (StatusCode::OK, HeaderMap::new(), Vec::new());
                }
                let Some(reference) = path.strip_prefix("/v2/evil/manifests/") else {
                    return (StatusCode::NOT_FOUND, HeaderMap::new(), Vec::new());
                };
                let Some(manifest) = manifests.get(reference) else {
                    return (StatusCode::NOT_FOUND, HeaderMap::new(), Vec::new());
                };
                let body = manifest.to_string().into_bytes();
                let mut headers = HeaderMap::new();
                let media = manifest["mediaType"].as_str().unwrap().to_owned();
                headers.insert(header::CONTENT_TYPE, media.parse().unwrap());
                headers.insert("docker-content-digest", sha256(&body).parse().unwrap());
                (StatusCode::OK, headers, body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeRegistry {
            addr,
            asked,
            _server: server,
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_pulled_index_or_manifest_with_a_bad_digest_is_refused_before_any_request() {
    let scene = Scene::new();
    let bad = "sha256:../../../canary/file";
    let layer_manifest = |digest: &str, size: u64| {
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}],
        })
    };
    let manifests = BTreeMap::from([
        (
            "index".to_owned(),
            json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": bad, "size": 10,
                    "platform": {"os": "linux", "architecture": nodelet::image::platform_arch()},
                }],
            }),
        ),
        ("layer".to_owned(), layer_manifest(bad, 10)),
        (
            "huge".to_owned(),
            layer_manifest(&sha256(b"huge"), 64 << 30),
        ),
    ]);
    let registry = FakeRegistry::start(manifests).await;
    let store = scene.store();
    let auth = nodelet::pull::RegistryAuth::Anonymous;
    for (tag, says) in [
        ("index", "index sha256:"),
        (
            "layer",
            "layer \"sha256:../../../canary/file\" is not a valid digest",
        ),
        (
            "huge",
            "is 68719476736 bytes, more than the node's maximum of 9663676416",
        ),
    ] {
        let reference = format!("{}/evil:{tag}", registry.addr);
        let error = nodelet::pull::pull(&store, &reference, &auth, &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(says), "{tag}: {error}");
        if tag == "index" {
            assert!(error.contains("is not a valid digest"), "{error}");
        }
    }
    let asked = registry.asked();
    assert!(
        asked.iter().all(|p| p == "/v2/" || (p.starts_with("/v2/evil/manifests/") && !p.contains("sha256"))),
        "asked for {asked:?}"
    );
    // A digest reference that is a path is refused before the registry is asked.
    let before = registry.asked().len();
    let reference = format!("{}/evil@sha256:{}", registry.addr, "A".repeat(64));
    let error = nodelet::pull::pull(&store, &reference, &auth, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not a valid digest"), "{error}");
    assert_eq!(registry.asked().len(), before);
    scene.check();
}
