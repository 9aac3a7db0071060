//! `loom apiserver`'s authentication flags end to end: the certificates and
//! service-account keys of `loom certs`, a token file, curl as the client;
//! and a bad file stopping it with one line naming the file.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn loom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run loom")
}

/// `loom apiserver` killed on drop.
struct Apiserver(std::process::Child);

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl's body and HTTP code.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (body.to_owned(), code.to_owned())
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn loom_apiserver_authenticates_certificates_static_tokens_and_service_account_tokens() {
    let temp = tempfile::tempdir().expect("temp dir");
    let pki = temp.path().join("pki");
    let pki_dir = pki.display().to_string();
    assert!(loom(&["certs", "--dir", &pki_dir]).status.success());
    let tokens = temp.path().join("tokens.csv");
    std::fs::write(&tokens, "t0ken-of-alice,alice,1001,\"dev,ops\"\n").expect("token file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["apiserver", "--listen", &format!("127.0.0.1:{port}")])
        .arg(format!(
            "--store=sqlite:{}",
            temp.path().join("loom.db").display()
        ))
        .args(["--tls-cert-file", &path(&pki, "apiserver.crt")])
        .args(["--tls-private-key-file", &path(&pki, "apiserver.key")])
        .args(["--client-ca-file", &path(&pki, "ca.crt")])
        .args(["--token-auth-file", &tokens.display().to_string()])
        .args(["--service-account-key-file", &path(&pki, "sa.pub")])
        .args(["--service-account-signing-key-file", &path(&pki, "sa.key")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start loom apiserver");
    let _server = Apiserver(child);
    let base = format!("https://127.0.0.1:{port}");
    let ca = path(&pki, "ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, code) = curl(&["--cacert", &ca, &format!("{base}/readyz")]);
        if code == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s: {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // No credential: only the public paths answer.
    let (body, code) = curl(&["--cacert", &ca, &format!("{base}/api/v1/namespaces")]);
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    let (_, code) = curl(&["--cacert", &ca, &format!("{base}/version")]);
    assert_eq!(code, "200");

    let whoami = format!("{base}/apis/authentication.k8s.io/v1/selfsubjectreviews");
    let post = [
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
    ];
    let admin = [
        "--cacert",
        &ca,
        "--cert",
        &path(&pki, "admin.crt"),
        "--key",
        &path(&pki, "admin.key"),
    ];
    let (body, code) = curl(&[&admin[..], &post[..], &[whoami.as_str()]].concat());
    assert_eq!(code, "201", "{body}");
    assert!(body.contains("system:masters"), "{body}");

    let alice = [
        "--cacert",
        &ca,
        "-H",
        "Authorization: Bearer t0ken-of-alice",
    ];
    let (body, code) = curl(&[&alice[..], &post[..], &[whoami.as_str()]].concat());
    assert_eq!(code, "201", "{body}");
    assert!(body.contains("\"username\":\"alice\""), "{body}");

    // The default account's token, minted with sa.key and verified with sa.pub.
    let token_url = format!("{base}/api/v1/namespaces/default/serviceaccounts/default/token");
    let (body, code) = curl(&[&admin[..], &post[..], &[token_url.as_str()]].concat());
    assert_eq!(code, "201", "{body}");
    // A JWT is base64url and dots: it ends at the next quote.
    let token = body
        .split_once("\"token\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token)
        .expect("a token in the TokenRequest");
    assert_eq!(token.split('.').count(), 3, "{token}");
    let header = format!("Authorization: Bearer {token}");
    let account = ["--cacert", &ca, "-H", &header];
    let (body, code) = curl(&[&account[..], &post[..], &[whoami.as_str()]].concat());
    assert_eq!(code, "201", "{body}");
    assert!(
        body.contains("\"username\":\"system:serviceaccount:default:default\""),
        "{body}"
    );
    let forged = format!("Authorization: Bearer {token}x");
    let (body, code) = curl(&["--cacert", &ca, "-H", &forged, &format!("{base}/api")]);
    assert_eq!(code, "401", "{body}");
}

#[test]
fn a_bad_token_file_or_key_stops_loom_apiserver_naming_the_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let pki = temp.path().join("pki");
    assert!(
        loom(&["certs", "--dir", &pki.display().to_string()])
            .status
            .success()
    );
    let tokens = temp.path().join("tokens.csv");
    std::fs::write(&tokens, "ok,alice,1\nonly-two,fields\n").expect("token file");
    let store = format!("--store=sqlite:{}", temp.path().join("loom.db").display());
    let out = loom(&[
        "apiserver",
        "--listen",
        "127.0.0.1:0",
        &store,
        "--token-auth-file",
        &tokens.display().to_string(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: ", tokens.display())),
        "{stderr}"
    );
    // The private key where the public one belongs.
    let out = loom(&[
        "apiserver",
        "--listen",
        "127.0.0.1:0",
        &store,
        "--service-account-key-file",
        &path(&pki, "sa.key"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sa.key: a private key"), "{stderr}");
    // A signing key that no public key verifies.
    let other = temp.path().join("other");
    assert!(
        loom(&["certs", "--dir", &other.display().to_string()])
            .status
            .success()
    );
    let out = loom(&[
        "apiserver",
        "--listen",
        "127.0.0.1:0",
        &store,
        "--service-account-key-file",
        &path(&pki, "sa.pub"),
        "--service-account-signing-key-file",
        &path(&other, "sa.key"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("verifies the tokens this key signs"),
        "{stderr}"
    );
}
