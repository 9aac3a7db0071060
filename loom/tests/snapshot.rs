//! `loom snapshot` as an operator runs it against `loom up --api-only`: save
//! through the API server with the administrator's kubeconfig, check the
//! file, restore it into a new data dir that `loom up --check` opens at the
//! same revision; a restore over an existing store and a file that is no
//! snapshot are refused, naming the file.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `loom up`, stopped (and waited for) on drop, whatever the test's outcome.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loom(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .env("LOOMCONFIG", config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run loom")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn save_check_and_restore_a_running_clusters_store() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let config = temp.path().join("config");
    let up = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["up", "--api-only", "--listen", "127.0.0.1:0"])
        .args(["--snapshot-interval-seconds", "1", "--snapshot-keep", "2"])
        .arg("--data-dir")
        .arg(&data)
        .env("LOOMCONFIG", &config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loom up");
    let _up = Up(up);
    let file = temp.path().join("cluster.snapshot");
    let path = file.to_str().expect("a UTF-8 path");
    // The kubeconfig is written once the server listens; the bootstrap roles
    // a moment later: retry until a save goes through.
    let deadline = Instant::now() + Duration::from_secs(60);
    let saved = loop {
        let saved = loom(&["snapshot", "save", path], &config);
        if saved.status.success() {
            break saved;
        }
        assert!(Instant::now() < deadline, "no snapshot: {}", text(&saved));
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = text(&saved);
    assert!(said.contains("snapshot saved to"), "{said}");
    assert!(
        said.contains("embedded store snapshot (format 1)"),
        "{said}"
    );
    assert!(!temp.path().join("cluster.snapshot.part").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .expect("the snapshot")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "a snapshot holds every Secret");
    let revision = said
        .split("at revision ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the revision in the summary")
        .to_owned();

    // Scheduled snapshots: one a second, the newest two kept, each sound.
    let scheduled = data.join("snapshots");
    let list = || -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(&scheduled)
            .map(|dir| dir.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|e| e == "snapshot"));
        files.sort();
        files
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while list().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no scheduled snapshots: {:?}",
            list()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // More were taken since; the older ones went (a new one is written
    // before the oldest goes: poll past that moment).
    std::thread::sleep(Duration::from_millis(2_500));
    let deadline = Instant::now() + Duration::from_secs(5);
    let files = loop {
        let files = list();
        if files.len() == 2 {
            break files;
        }
        assert!(Instant::now() < deadline, "not pruned to 2: {files:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for file in &files {
        let status = loom(
            &["snapshot", "status", file.to_str().expect("UTF-8")],
            &config,
        );
        assert!(status.status.success(), "{}", text(&status));
    }

    let status = loom(&["snapshot", "status", path], &config);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains(&format!("at revision {revision},")),
        "{}",
        text(&status)
    );

    let restored_dir = temp.path().join("restored");
    let dir = restored_dir.to_str().expect("a UTF-8 path");
    let restored = loom(&["snapshot", "restore", path, "--data-dir", dir], &config);
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(
        text(&restored).contains(&format!("at revision {revision};")),
        "{}",
        text(&restored)
    );
    assert!(text(&restored).contains("pki/"), "{}", text(&restored));
    let check = loom(&["up", "--check", "--data-dir", dir], &config);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains(&format!(
            "revision {}",
            revision.parse::<i64>().expect("a number") + 1_000_000_000
        )),
        "{}",
        text(&check)
    );

    // A store a newer Loom wrote (its format, SQLite's user_version, is the
    // big-endian word at byte 60 of the header) is refused, untouched.
    let store = restored_dir.join("loom.db");
    let newer = temp.path().join("newer");
    std::fs::create_dir_all(&newer).expect("a dir");
    let mut bytes = std::fs::read(&store).expect("the restored store");
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(newer.join("loom.db"), &bytes).expect("written");
    let refused = loom(
        &[
            "up",
            "--check",
            "--data-dir",
            newer.to_str().expect("UTF-8"),
        ],
        &config,
    );
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&format!(
            "{}/loom.db is in format 99, newer than format 1",
            newer.display()
        )),
        "{said}"
    );
    assert_eq!(
        std::fs::read(newer.join("loom.db")).expect("still there")[60..64],
        99u32.to_be_bytes()
    );

    // Never over a store, and never from something that is no snapshot.
    let again = loom(&["snapshot", "restore", path, "--data-dir", dir], &config);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let config_path = config.to_str().expect("a UTF-8 path");
    let other = loom(
        &["snapshot", "restore", config_path, "--data-dir", dir],
        &config,
    );
    assert!(!other.status.success());
    assert!(
        text(&other).contains("is not a Loom snapshot"),
        "{}",
        text(&other)
    );
}

/// `loom snapshot save --etcd-endpoints` over TLS with a client certificate,
/// straight from etcd: etcd's own snapshot, checked, holding the keys; its
/// restore is etcd's tool's, which `loom snapshot restore` explains.
#[tokio::test]
async fn save_straight_from_etcd_over_tls() {
    let etcd = loom_testing::EtcdServer::start_tls()
        .await
        .expect("an etcd");
    let store = etcd.store("/loom/").await.expect("its store");
    apiserver::store::Store::create(&store, "loom.dev/tasks/default/kept", "{}".into())
        .await
        .expect("a key");
    let temp = tempfile::tempdir().expect("temp dir");
    let tls = etcd.tls().expect("etcd serves TLS");
    let write = |name: &str, pem: &str| {
        let path = temp.path().join(name);
        std::fs::write(&path, pem).expect("a PEM file");
        path.to_str().expect("UTF-8").to_owned()
    };
    let (ca, cert, key) = (
        write("ca.crt", &tls.ca_pem),
        write("client.crt", &tls.cert_pem),
        write("client.key", &tls.key_pem),
    );
    let file = temp.path().join("etcd.snapshot");
    let path = file.to_str().expect("UTF-8");
    let config = temp.path().join("config");
    let endpoint = etcd.endpoint().trim_start_matches("https://").to_owned();
    let saved = loom(
        &[
            "snapshot",
            "save",
            path,
            "--etcd-endpoints",
            &endpoint,
            "--etcd-cafile",
            &ca,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
        ],
        &config,
    );
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(text(&saved).contains("etcd snapshot"), "{}", text(&saved));
    let bytes = std::fs::read(&file).expect("the snapshot");
    let wanted = b"/loom/loom.dev/tasks/default/kept";
    assert!(bytes.windows(wanted.len()).any(|w| w == wanted));
    // Without the client certificate etcd refuses it, and no file is left.
    let refused = loom(
        &["snapshot", "save", path, "--etcd-endpoints", &endpoint],
        &config,
    );
    assert!(!refused.status.success());
    assert!(!temp.path().join("etcd.snapshot.part").exists());
    let dir = temp.path().join("restored");
    let restore = loom(
        &[
            "snapshot",
            "restore",
            path,
            "--data-dir",
            dir.to_str().expect("UTF-8"),
        ],
        &config,
    );
    assert!(!restore.status.success());
    assert!(
        text(&restore).contains("etcdutl snapshot restore"),
        "{}",
        text(&restore)
    );
    assert!(!dir.join("loom.db").exists());
}
