//! A node given its credential by `--kubeconfig` (`node-NAME.conf` of `loom
//! certs --node NAME`, not joined with a token) serves its endpoint over
//! HTTPS as a joined node does: it asks the cluster for its serving
//! certificate (DNS:NAME, kubelet-serving, signed at once), keeps it in its
//! state dir and serves it; callers without a credential are refused and
//! the API server reaches it by name. No node serves plain HTTP unless told
//! to with `--insecure-endpoint`, which is refused off loopback; a
//! credential that is not the node's own cannot ask for a certificate and
//! is refused at start with a line saying what to do.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{Child, curl, is_root, loom, path};

/// Waits up to `seconds` for `check`.
fn eventually(what: &str, seconds: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `loom nodelet ARGS` for node `name` with a state dir in `dir`.
fn nodelet(dir: &Path, name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loom"));
    command
        .args([
            "nodelet",
            "--name",
            name,
            "--cgroup-parent",
            "loom-test-node-serving",
        ])
        .arg("--state-dir")
        .arg(dir.join(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("LOOM_TOKEN")
        .env_remove("LOOM_KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Waits until node `name` is registered (the admin's `curl` arguments),
/// or says why the nodelet exited; its Node.
fn registered(admin: &[&str], base: &str, name: &str, child: &mut Child) -> String {
    let url = format!("{base}/apis/loom.dev/v1/nodes/{name}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (body, code) = curl(&[admin, &[url.as_str()]].concat());
        if code == "200" {
            return body;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the nodelet of {name} exited ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "node {name} did not register");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_given_its_kubeconfig_serves_https_with_a_certificate_it_asked_for() {
    if !is_root() {
        eprintln!("skipped: the nodelet must run as root");
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let pki = temp.path().join("pki");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("https://127.0.0.1:{port}");
    let pki_dir = pki.display().to_string();
    let made = loom(&[
        "certs",
        "--dir",
        &pki_dir,
        "--server",
        &base,
        "--node",
        "serving-1",
        "--node",
        "serving-2",
    ]);
    assert!(made.status.success(), "{made:?}");
    let server = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["apiserver", "--listen", &format!("127.0.0.1:{port}")])
        .arg(format!(
            "--store=sqlite:{}",
            temp.path().join("loom.db").display()
        ))
        .args(["--tls-cert-file", &path(&pki, "apiserver.crt")])
        .args(["--tls-private-key-file", &path(&pki, "apiserver.key")])
        .args(["--client-ca-file", &path(&pki, "ca.crt")])
        .args(["--cluster-signing-cert-file", &path(&pki, "ca.crt")])
        .args(["--cluster-signing-key-file", &path(&pki, "ca.key")])
        .args([
            "--nodelet-client-certificate",
            &path(&pki, "apiserver-nodelet-client.crt"),
        ])
        .args([
            "--nodelet-client-key",
            &path(&pki, "apiserver-nodelet-client.key"),
        ])
        .args(["--nodelet-certificate-authority", &path(&pki, "ca.crt")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loom apiserver");
    let _server = Child(server);
    let ca = path(&pki, "ca.crt");
    eventually("the API server ready", 30, || {
        curl(&["--cacert", &ca, &format!("{base}/readyz")]).1 == "200"
    });
    let admin_crt = path(&pki, "admin.crt");
    let admin_key = path(&pki, "admin.key");
    let admin = [
        "--cacert",
        ca.as_str(),
        "--cert",
        admin_crt.as_str(),
        "--key",
        admin_key.as_str(),
    ];

    // The node's own kubeconfig, no token, no --tls-cert-file.
    let conf = path(&pki, "node-serving-1.conf");
    let mut child = Child(
        nodelet(temp.path(), "serving-1", &["--kubeconfig", &conf])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loom nodelet"),
    );
    let node = registered(&admin, &base, "serving-1", &mut child);
    let state = temp.path().join("serving-1");
    let serving = std::fs::read_to_string(state.join("serving.crt")).expect("serving.crt");
    let info = pki::CertInfo::from_pem(&serving).expect("the serving certificate");
    assert_eq!(info.common_name, "system:node:serving-1");
    assert_eq!(info.dns_names, ["serving-1"]);
    assert!(info.ip_addresses.is_empty());
    assert!(info.server_auth && !info.client_auth);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("serving.key"))
            .expect("serving.key")
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    // Asked for by the node itself, of the kubelet-serving signer.
    let (csrs, code) = curl(
        &[
            &admin[..],
            &[format!("{base}/apis/certificates.k8s.io/v1/certificatesigningrequests").as_str()],
        ]
        .concat(),
    );
    assert_eq!(code, "200", "{csrs}");
    assert!(
        csrs.contains("\"signerName\":\"kubernetes.io/kubelet-serving\"")
            && csrs.contains("\"username\":\"system:node:serving-1\""),
        "{csrs}"
    );
    let address = node
        .split("\"nodeletEndpoint\":\"https://")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no https endpoint in {node}"))
        .to_owned();
    let (host, endpoint_port) = address.rsplit_once(':').expect("host:port");
    assert_eq!(host, "127.0.0.1");
    // Its endpoint: HTTPS with that certificate, by the node's name; no
    // answer over plain HTTP, and a caller without a credential is a 401.
    let resolve = format!("serving-1:{endpoint_port}:127.0.0.1");
    let (body, code) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &format!("https://serving-1:{endpoint_port}/logs/default/none"),
    ]);
    assert_eq!(code, "401", "{body}");
    let (body, code) = curl(&[&format!("http://{address}/logs/default/none")]);
    assert_ne!(code, "200", "{body}");
    // The API server reaches it by name and believes it.
    let tasks = format!("{base}/apis/loom.dev/v1/namespaces/default/tasks");
    let task = r#"{"apiVersion":"loom.dev/v1","kind":"Task","metadata":{"name":"probe"},"spec":{"image":"no-such-image","nodeName":"serving-1"}}"#;
    let (body, code) = curl(
        &[
            &admin[..],
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                task,
                tasks.as_str(),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, "201", "{body}");
    let (body, code) = curl(&[&admin[..], &[format!("{tasks}/probe/log").as_str()]].concat());
    assert!(
        (code == "200" || code == "404") && !body.contains("cannot reach"),
        "the node's endpoint refused: {code} {body}"
    );
    drop(child);

    // Started again, it serves the certificate it kept: no new request.
    let before = csrs
        .matches("\"username\":\"system:node:serving-1\"")
        .count();
    let mut child = Child(
        nodelet(temp.path(), "serving-1", &["--kubeconfig", &conf])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loom nodelet again"),
    );
    let served = || -> bool {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &address, "-servername", "serving-1"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        out.is_ok_and(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            let start = text.find("-----BEGIN CERTIFICATE-----");
            let end = text.find("-----END CERTIFICATE-----");
            match (start, end) {
                (Some(start), Some(end)) => {
                    let pem = &text[start..end + "-----END CERTIFICATE-----".len()];
                    pki::CertInfo::from_pem(pem).is_ok_and(|i| i.not_after == info.not_after)
                }
                _ => false,
            }
        })
    };
    eventually("the kept serving certificate served", 30, || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the restarted nodelet exited ({status})");
        }
        served()
    });
    let (csrs, _) = curl(
        &[
            &admin[..],
            &[format!("{base}/apis/certificates.k8s.io/v1/certificatesigningrequests").as_str()],
        ]
        .concat(),
    );
    assert_eq!(
        csrs.matches("\"username\":\"system:node:serving-1\"")
            .count(),
        before,
        "{csrs}"
    );
    drop(child);

    // Another node's credential is refused at start, before anything is asked.
    let other = loom(&[
        "nodelet",
        "--kubeconfig",
        &conf,
        "--name",
        "serving-3",
        "--state-dir",
        &path(temp.path(), "serving-3"),
    ]);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("system:node:serving-1") && stderr.contains("serving-3"),
        "{stderr}"
    );
    assert!(!temp.path().join("serving-3").join("serving.crt").exists());
    // A credential that is not a node's cannot ask for a serving
    // certificate: the nodelet says what to do instead of serving HTTP.
    let refused = loom(&[
        "nodelet",
        "--kubeconfig",
        &path(&pki, "admin.conf"),
        "--name",
        "serving-3",
        "--state-dir",
        &path(temp.path(), "serving-3"),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("serving certificate")
            && stderr.contains("--tls-cert-file")
            && stderr.contains("--insecure-endpoint"),
        "{stderr}"
    );
    assert!(!temp.path().join("serving-3").join("serving.crt").exists());

    // Plain HTTP only when asked for, on loopback: no certificate asked for.
    let conf2 = path(&pki, "node-serving-2.conf");
    let mut child = Child(
        nodelet(
            temp.path(),
            "serving-2",
            &["--kubeconfig", &conf2, "--insecure-endpoint"],
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loom nodelet --insecure-endpoint"),
    );
    let node = registered(&admin, &base, "serving-2", &mut child);
    assert!(
        node.contains("\"nodeletEndpoint\":\"http://127.0.0.1:"),
        "{node}"
    );
    assert!(!temp.path().join("serving-2").join("serving.crt").exists());
    drop(child);
}

#[test]
fn an_insecure_endpoint_is_refused_off_loopback() {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state").display().to_string();
    for listen in ["0.0.0.0:0", "10.1.2.3:7444", "[::]:0"] {
        let refused = loom(&[
            "nodelet",
            "--insecure-endpoint",
            "--listen",
            listen,
            "--name",
            "insecure-1",
            "--state-dir",
            &state,
        ]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("--insecure-endpoint") && stderr.contains("loopback"),
            "{listen}: {stderr}"
        );
    }
    // Not with a serving certificate either: one or the other.
    let refused = loom(&[
        "nodelet",
        "--insecure-endpoint",
        "--tls-cert-file",
        "a.crt",
        "--tls-private-key-file",
        "a.key",
        "--client-ca-file",
        "ca.crt",
        "--state-dir",
        &state,
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--insecure-endpoint"), "{stderr}");
    assert!(!temp.path().join("state").exists());
}
