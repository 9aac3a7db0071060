//! The nodelet's image import (`ImageStore::import`, what `loom image import`
//! and a pull's unpacking run): a hostile layer tar inside a valid OCI
//! layout, and a hostile layout tar. Each input is imported into a fresh
//! temp dir; afterwards nothing exists outside the store, the canary file
//! beside it is untouched and not hard-linked, no device node or setuid file
//! was made, and no staging or import directory is left behind.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use nodelet::image::ImageStore;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{Harness, Rng};

/// Files an escaping entry would write, outside any temp dir.
const ESCAPES: &[&str] = &[
    "/tmp/loom-fuzz-escaped",
    "/var/tmp/loom-fuzz-escaped",
    "/dev/shm/loom-fuzz-escaped",
    "/loom-fuzz-escaped",
    "/etc/loom-fuzz-escaped",
];

const CANARY: &[u8] = b"canary\n";

/// The largest layer the store takes here: small, so "huge" is cheap to reach.
const MAX_LAYER_BYTES: u64 = 64 << 10;

/// A temp dir for one input (tmpfs when there is one: fsyncs are free).
pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix(prefix);
        b
    };
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder
        .tempdir()
        .map_err(|e| format!("cannot make a temp dir: {e}"))
}

/// Writes blob `bytes` into `layout`; returns its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> Result<String, String> {
    let hex = format!("{:x}", Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes)
        .map_err(|e| format!("cannot write a blob: {e}"))?;
    Ok(format!("sha256:{hex}"))
}

/// An OCI layout directory holding one image whose one layer is `layer`.
fn layout_with_layer(layout: &Path, layer: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))
        .map_err(|e| format!("cannot make the layout: {e}"))?;
    let layer_digest = put_blob(layout, layer)?;
    let config = json!({"architecture": nodelet::image::platform_arch(), "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}});
    let config_bytes = config.to_string().into_bytes();
    let config_digest = put_blob(layout, &config_bytes)?;
    let manifest = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer.len()}]});
    let manifest_bytes = manifest.to_string().into_bytes();
    let manifest_digest = put_blob(layout, &manifest_bytes)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    std::fs::write(layout.join("index.json"), index.to_string())
        .map_err(|e| format!("cannot write index.json: {e}"))?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| format!("cannot write oci-layout: {e}"))
}

/// Checks what an import left in `root` (the temp dir: `outside/`, `store/`
/// and the layout) and on the host.
fn check_contained(root: &Path) -> Result<(), String> {
    for escape in ESCAPES {
        if Path::new(escape).symlink_metadata().is_ok() {
            let _ = std::fs::remove_file(escape);
            return Err(format!("an entry escaped to {escape}"));
        }
    }
    let listing = |dir: &Path| -> Result<Vec<String>, String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    };
    for name in listing(root)? {
        if !matches!(name.as_str(), "outside" | "store" | "layout" | "layout.tar") {
            return Err(format!("an entry escaped the store: {name:?} beside it"));
        }
    }
    let outside = root.join("outside");
    if listing(&outside)? != ["canary"] {
        return Err(format!(
            "the directory beside the store was changed: {:?}",
            listing(&outside)?
        ));
    }
    let canary = outside.join("canary");
    let meta = canary
        .symlink_metadata()
        .map_err(|e| format!("the canary is gone: {e}"))?;
    if !meta.file_type().is_file()
        || meta.nlink() != 1
        || std::fs::read(&canary).ok().as_deref() != Some(CANARY)
    {
        return Err(format!(
            "the canary beside the store was changed or linked (links: {})",
            meta.nlink()
        ));
    }
    let store = root.join("store");
    if let Ok(tmp) = listing(&store.join("tmp"))
        && !tmp.is_empty()
    {
        return Err(format!("the import left {tmp:?} in the store's tmp/"));
    }
    if let Ok(rootfs) = listing(&store.join("rootfs"))
        && let Some(staging) = rootfs.iter().find(|n| n.contains(".unpacking"))
    {
        return Err(format!("the import left the staging directory {staging}"));
    }
    // Every hard link in the store is to a file in the store.
    let mut inodes: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut stack = vec![store];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_block_device() || kind.is_char_device() || kind.is_socket() {
                return Err(format!("a device or socket was made: {}", path.display()));
            }
            if kind.is_file() && meta.permissions().mode() & 0o6000 != 0 {
                return Err(format!(
                    "a setuid or setgid file was made: {} ({:o})",
                    path.display(),
                    meta.permissions().mode()
                ));
            }
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let seen = inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert((0, meta.nlink()));
                seen.0 += 1;
            }
        }
    }
    for (seen, links) in inodes.values() {
        if seen != links {
            return Err(format!(
                "a file in the store has {links} links but only {seen} are in the store"
            ));
        }
    }
    Ok(())
}

/// Runs an import in a fresh temp dir: `prepare` writes the layout (a
/// directory `layout` or a tar `layout.tar`) and returns its path.
fn import_checked(
    prepare: impl FnOnce(&Path) -> Result<std::path::PathBuf, String>,
) -> Result<(), String> {
    let dir = temp_dir("loom-fuzz-image")?;
    let root = dir.path();
    std::fs::create_dir(root.join("outside")).map_err(|e| format!("setup: {e}"))?;
    std::fs::write(root.join("outside/canary"), CANARY).map_err(|e| format!("setup: {e}"))?;
    let layout = prepare(root)?;
    let store = ImageStore::new(&root.join("store")).with_max_layer_bytes(MAX_LAYER_BYTES);
    let imported = store.import(&layout, Some("fuzz:1"));
    check_contained(root)?;
    if let Ok(names) = imported {
        for name in names {
            let image = store
                .resolve(&name)
                .map_err(|e| format!("{name} was imported but does not resolve: {e}"))?;
            if !image.rootfs.starts_with(root.join("store")) {
                return Err(format!("{name}'s rootfs is {}", image.rootfs.display()));
            }
        }
    }
    Ok(())
}

/// `image_layer`: the input is a layer (tar, or gzip of one) of an otherwise
/// valid image.
pub fn image_layer() -> Box<dyn Harness> {
    Box::new(|input: &[u8]| -> Result<(), String> {
        import_checked(|root| {
            let layout = root.join("layout");
            layout_with_layer(&layout, input)?;
            Ok(layout)
        })
    })
}

/// `image_layout`: the input is the tar of an OCI layout, as `loom image
/// import FILE` reads it (its own tar is unpacked by a layer's rules).
pub fn image_layout() -> Box<dyn Harness> {
    Box::new(|input: &[u8]| -> Result<(), String> {
        import_checked(|root| {
            let path = root.join("layout.tar");
            std::fs::write(&path, input).map_err(|e| format!("setup: {e}"))?;
            Ok(path)
        })
    })
}

/// One tar entry, written byte by byte (the `tar` crate's builder refuses
/// `..` and absolute paths, which is exactly what must be tried).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its path.
    pub path: Vec<u8>,
    /// Its type flag (`0` file, `1` hard link, `2` symlink, `3` char device,
    /// `4` block device, `5` directory, `6` fifo).
    pub kind: u8,
    /// A link's target.
    pub link: Vec<u8>,
    /// Its mode.
    pub mode: u32,
    /// Its contents.
    pub data: Vec<u8>,
    /// The size its header claims, if not the contents' length.
    pub claimed_size: Option<u64>,
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    if text.len() <= width {
        field[..width].copy_from_slice(text.as_bytes());
        field[width] = 0;
    } else {
        // GNU base-256 for what octal cannot hold.
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

/// A ustar header block.
fn header(path: &[u8], kind: u8, link: &[u8], mode: u32, size: u64) -> [u8; 512] {
    let mut block = [0u8; 512];
    let n = path.len().min(100);
    block[..n].copy_from_slice(&path[..n]);
    octal(&mut block[100..108], u64::from(mode));
    octal(&mut block[108..116], 0);
    octal(&mut block[116..124], 0);
    octal(&mut block[124..136], size);
    octal(&mut block[136..148], 1_700_000_000);
    block[156] = kind;
    let n = link.len().min(100);
    block[157..157 + n].copy_from_slice(&link[..n]);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    set_checksum(&mut block);
    block
}

fn set_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(&text.as_bytes()[..8]);
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A tar of `entries` (PAX records for long paths and link targets).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if e.path.len() > 100 || e.link.len() > 100 {
            let mut records = Vec::new();
            for (key, value) in [("path", &e.path), ("linkpath", &e.link)] {
                if value.len() > 100 {
                    let body_len = key.len() + value.len() + 3;
                    let mut len = body_len + body_len.to_string().len();
                    if len.to_string().len() != body_len.to_string().len() {
                        len += 1;
                    }
                    records.extend_from_slice(format!("{len} {key}=").as_bytes());
                    records.extend_from_slice(value);
                    records.push(b'\n');
                }
            }
            out.extend_from_slice(&header(b"pax", b'x', b"", 0o644, records.len() as u64));
            out.extend_from_slice(&records);
            pad(&mut out);
        }
        let size = e.claimed_size.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(&e.path, e.kind, &e.link, e.mode, size));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Recomputes the checksum of every header a mutation may have touched.
pub fn fix_tar(input: &mut [u8]) {
    let mut at = 0;
    while at + 512 <= input.len() {
        let block = &mut input[at..at + 512];
        if block.iter().all(|b| *b == 0) {
            at += 512;
            continue;
        }
        set_checksum(block);
        let field = &block[124..136];
        let size = if field[0] & 0x80 != 0 {
            field[4..]
                .iter()
                .fold(0u64, |n, b| n.wrapping_shl(8) | u64::from(*b))
        } else {
            let text: String = field
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            u64::from_str_radix(&text, 8).unwrap_or(0)
        };
        let blocks = size.div_ceil(512);
        let Some(next) = blocks
            .checked_mul(512)
            .and_then(|n| n.checked_add(at as u64 + 512))
        else {
            return;
        };
        at = usize::try_from(next).unwrap_or(usize::MAX);
    }
}

/// A hostile layer: entries with `..`, absolute paths, links out of the root
/// and writes through them, hard links, devices, whiteouts, huge sizes.
pub fn generate_layer(rng: &mut Rng) -> Vec<u8> {
    const PARTS: &[&str] = &[
        "",
        "/",
        "./",
        "../",
        "..",
        "a",
        "a/",
        "b",
        "etc",
        "tmp",
        "link",
        "link/",
        "up",
        "up/",
        "root/",
        "loom-fuzz-escaped",
        ".wh.a",
        ".wh..wh..opq",
        "a/.wh.b",
        "dir/",
        "x/../",
        "//",
        "canary",
        "outside/",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "..",
        "../..",
        "../../..",
        "../../../../..",
        "../../../../../outside",
        "/tmp",
        "/dev/shm",
        "/etc",
        "a",
        "link",
        "up",
        "/proc/self/root",
        ".",
    ];
    const HARD: &[&str] = &[
        "a",
        "b",
        "link",
        "link/canary",
        "up/outside/canary",
        "../outside/canary",
        "/etc/passwd",
        "/proc/self/exe",
        "dir/a",
        "",
    ];
    let count = 1 + rng.below(8);
    let mut entries = Vec::new();
    for _ in 0..count {
        let mut path = String::new();
        for _ in 0..1 + rng.below(4) {
            let part = PARTS[rng.below(PARTS.len())];
            path.push_str(part);
        }
        if rng.one_in(20) {
            path = "p/".repeat(60) + "deep";
        }
        let kind = *rng.pick(b"00000122223456");
        let link = match kind {
            b'2' => (*rng.pick(TARGETS)).to_owned(),
            b'1' => (*rng.pick(HARD)).to_owned(),
            _ => String::new(),
        };
        let mode = *rng.pick(&[0o644, 0o755, 0o4755, 0o2755, 0o777, 0o000, 0o555, 0o1777]);
        let data = if kind == b'0' {
            vec![b'x'; rng.below(700)]
        } else {
            Vec::new()
        };
        let claimed_size = match rng.below(12) {
            0 => Some(u64::MAX / 2),
            1 => Some(MAX_LAYER_BYTES + 1),
            2 => Some(0o77_777_777_777),
            _ => None,
        };
        entries.push(Entry {
            path: path.into_bytes(),
            kind,
            link: link.into_bytes(),
            mode,
            data,
            claimed_size,
        });
    }
    tar(&entries)
}

/// A hostile layout tar: the files of a layout, some replaced by links out
/// of it, with a hostile layer inside.
pub fn generate_layout(rng: &mut Rng) -> Vec<u8> {
    let layer = generate_layer(rng);
    let hex = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
    let layer_hex = hex(&layer);
    let config = br#"{"architecture":"amd64","os":"linux","config":{}}"#.to_vec();
    let config_hex = hex(&config);
    let manifest = json!({"schemaVersion": 2,
        "config": {"digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": [{"digest": format!("sha256:{layer_hex}"), "size": layer.len()}]})
    .to_string()
    .into_bytes();
    let manifest_hex = hex(&manifest);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "digest": format!("sha256:{manifest_hex}"), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]})
    .to_string()
    .into_bytes();
    let file = |path: String, data: Vec<u8>| Entry {
        path: path.into_bytes(),
        kind: b'0',
        link: Vec::new(),
        mode: 0o644,
        data,
        claimed_size: None,
    };
    let mut entries = vec![
        file(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        file("index.json".into(), index),
        file(format!("blobs/sha256/{manifest_hex}"), manifest),
        file(format!("blobs/sha256/{config_hex}"), config),
        file(format!("blobs/sha256/{layer_hex}"), layer),
    ];
    let n = entries.len();
    match rng.below(4) {
        0 => {
            // index.json a link to a host file.
            entries[1] = Entry {
                kind: b'2',
                link: rng
                    .pick(&[
                        &b"/etc/passwd"[..],
                        b"../../outside/canary",
                        b"/proc/self/environ",
                    ])
                    .to_vec(),
                data: Vec::new(),
                ..entries[1].clone()
            };
        }
        1 => {
            // blobs a link out of the layout.
            entries.insert(
                0,
                Entry {
                    path: b"blobs".to_vec(),
                    kind: b'2',
                    link: rng.pick(&[&b"/"[..], b"..", b"../../outside"]).to_vec(),
                    mode: 0o777,
                    data: Vec::new(),
                    claimed_size: None,
                },
            );
        }
        2 => {
            let i = rng.below(n);
            entries[i].path = [b"../".as_slice(), &entries[i].path].concat();
        }
        _ => {}
    }
    tar(&entries)
}
