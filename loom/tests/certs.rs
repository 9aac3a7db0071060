//! `loom certs` as an operator runs it: files made once with owner-only keys,
//! kept on a second run, widened when a name is added, a bad name refused with
//! the flag named, and a serving certificate OpenSSL verifies against the CA.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn loom_certs(dir: &Path, sans: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--tls-san", sans])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run loom certs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn certs_are_made_once_kept_widened_and_verified() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("pki");
    let first = loom_certs(&dir, "10.1.2.3");
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("ca public key hash:       sha256:"),
        "{stdout}"
    );
    let mode = |p: &str| {
        std::fs::metadata(dir.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for key in ["ca.key", "apiserver.key", "admin.key", "sa.key"] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    for public in ["ca.crt", "apiserver.crt", "admin.crt", "sa.pub"] {
        assert_eq!(mode(public), 0o644, "{public}");
    }

    // Kept as they are on a second run with the same names.
    let ca = read(&dir.join("ca.crt"));
    let serving = read(&dir.join("apiserver.crt"));
    let again = loom_certs(&dir, "10.1.2.3");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(read(&dir.join("ca.crt")), ca);
    assert_eq!(read(&dir.join("apiserver.crt")), serving);

    // A new name: the serving certificate is issued again by the same CA.
    let widened = loom_certs(&dir, "10.1.2.3,api.loom.internal");
    assert!(widened.status.success(), "{widened:?}");
    assert_eq!(read(&dir.join("ca.crt")), ca);
    assert_ne!(read(&dir.join("apiserver.crt")), serving);

    // OpenSSL agrees: signed by the CA, for a server, with the names asked for.
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg(dir.join("apiserver.crt"))
        .output()
        .expect("run openssl");
    assert!(verify.status.success(), "{verify:?}");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.join("apiserver.crt"))
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&text.stdout);
    for name in [
        "IP Address:10.1.2.3",
        "DNS:api.loom.internal",
        "IP Address:127.0.0.1",
        "DNS:localhost",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
    let admin = Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg(dir.join("admin.crt"))
        .output()
        .expect("run openssl");
    assert!(admin.status.success(), "{admin:?}");
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(dir.join("admin.crt"))
        .output()
        .expect("run openssl");
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("CN = loom-admin") && subject.contains("O = system:masters"),
        "{subject}"
    );
}

#[test]
fn a_bad_name_is_refused_naming_the_flag_and_a_lost_ca_key_stops_it() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("pki");
    let bad = loom_certs(&dir, "not a name");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--tls-san") && stderr.contains("not a name"),
        "{stderr}"
    );

    assert!(loom_certs(&dir, "10.0.0.1").status.success());
    std::fs::remove_file(dir.join("ca.key")).expect("remove the CA key");
    let lost = loom_certs(&dir, "10.0.0.1");
    assert!(!lost.status.success());
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(stderr.contains("ca.key"), "{stderr}");
}

/// `loom apiserver` killed on drop.
struct Apiserver(std::process::Child);

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("run curl")
}

#[test]
fn the_api_server_serves_https_with_the_certificates_of_loom_certs() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("pki");
    assert!(loom_certs(&dir, "127.0.0.1").status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let path = |name: &str| dir.join(name).display().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["apiserver", "--listen", &format!("127.0.0.1:{port}")])
        .arg(format!(
            "--store=sqlite:{}",
            temp.path().join("loom.db").display()
        ))
        .args(["--tls-cert-file", &path("apiserver.crt")])
        .args(["--tls-private-key-file", &path("apiserver.key")])
        .args(["--client-ca-file", &path("ca.crt")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start loom apiserver");
    let _server = Apiserver(child);
    let url = format!("https://127.0.0.1:{port}/version");
    let admin = [
        "--cacert",
        &path("ca.crt"),
        "--cert",
        &path("admin.crt"),
        "--key",
        &path("admin.key"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let out = curl(&[&admin[..], &[url.as_str()]].concat());
        if out.status.success() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS answer within 30 s: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        String::from_utf8_lossy(&served.stdout).contains("gitVersion"),
        "{served:?}"
    );
    // The CA verifies the server; plain HTTP on the port gets no API answer.
    let plain = curl(&[&format!("http://127.0.0.1:{port}/version")]);
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("gitVersion"),
        "{plain:?}"
    );
    // A client certificate of another CA is refused at the handshake.
    let other = temp.path().join("other");
    assert!(loom_certs(&other, "127.0.0.1").status.success());
    let foreign = curl(&[
        "--cacert",
        &path("ca.crt"),
        "--cert",
        &other.join("admin.crt").display().to_string(),
        "--key",
        &other.join("admin.key").display().to_string(),
        &url,
    ]);
    assert!(!foreign.status.success(), "{foreign:?}");
}
