//! A node joining as an operator does it, with the real binaries: `loom
//! certs`, `loom apiserver` signing with the cluster CA, `loom token create`
//! printing the join command, and that command run: the node fetches and
//! pins the CA, gets its own certificate (kept in node.conf, owner-only) and
//! registers its Node with it, then gets its serving certificate with that
//! (DNS:NAME, key owner-only) and serves its endpoint over HTTPS, which the API
//! server reaches and believes. A wrong CA hash or a deleted token stops it
//! with a line saying why, nothing written.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{Child, curl, is_root, loom, path};

/// Waits up to `seconds` for `check`.
fn eventually(what: &str, seconds: u64, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_joins_with_the_command_loom_token_create_prints() {
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
    let made = loom(&[
        "certs",
        "--dir",
        &pki.display().to_string(),
        "--server",
        &base,
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
        // It calls nodelets over HTTPS as itself (task logs).
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
    let admin = path(&pki, "admin.conf");

    let created = loom(&["token", "create", "--kubeconfig", &admin, "--ttl", "1h"]);
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8_lossy(&created.stdout).into_owned();
    let token = stdout.lines().next().unwrap_or_default().trim().to_owned();
    assert_eq!(token.len(), 23, "{stdout}");
    let command = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("loom nodelet "))
        .unwrap_or_else(|| panic!("no join command in {stdout}"))
        .to_owned();
    let ca_info =
        pki::CertInfo::from_pem(&std::fs::read_to_string(&ca).expect("ca.crt")).expect("the CA");
    let hash = pki::public_key_hash(&ca_info.public_key_info);
    assert!(
        command.contains(&format!("--server {base}"))
            && command.contains(&format!("--token {token}"))
            && command.contains(&format!("--ca-cert-hash {hash}")),
        "{command}"
    );
    let listed = loom(&["token", "list", "--kubeconfig", &admin]);
    let id = &token[..6];
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(id),
        "{listed:?}"
    );

    // The join command, as printed, with a name and a state dir of the test's.
    let state = temp.path().join("node");
    let mut args: Vec<String> = command
        .split_whitespace()
        .filter(|word| *word != "--name" && *word != "NAME")
        .map(str::to_owned)
        .collect();
    args.extend(
        [
            "--name",
            "joined-1",
            "--state-dir",
            &state.display().to_string(),
            "--cgroup-parent",
            "loom-test-join",
        ]
        .map(str::to_owned),
    );
    let nodelet = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("nodelet")
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loom nodelet");
    let mut nodelet = Child(nodelet);
    let conf = state.join("node.conf");
    let admin_curl = [
        "--cacert",
        ca.as_str(),
        "--cert",
        &path(&pki, "admin.crt"),
        "--key",
        &path(&pki, "admin.key"),
    ];
    let node_url = format!("{base}/apis/loom.dev/v1/nodes/joined-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if curl(&[&admin_curl[..], &[node_url.as_str()]].concat()).1 == "200" {
            break;
        }
        if let Ok(Some(status)) = nodelet.0.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = nodelet.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the nodelet exited ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "the node did not register");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mode = std::fs::metadata(&conf)
        .expect("node.conf")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let kubeconfig = client::Kubeconfig::read(&conf).expect("node.conf is a kubeconfig");
    let config = kubeconfig.config(&conf, None).expect("a usable kubeconfig");
    let (cert, _) = config
        .tls
        .as_ref()
        .and_then(|tls| tls.identity.clone())
        .expect("a client certificate in node.conf");
    let info = pki::CertInfo::from_pem(&cert).expect("the node's certificate");
    assert_eq!(info.common_name, "system:node:joined-1");
    assert_eq!(info.organizations, ["system:nodes"]);
    let life = info
        .not_after
        .duration_since(info.not_before)
        .expect("a life");
    assert!(life >= Duration::from_secs(30 * 24 * 3600), "{life:?}");
    // The CSR is on record, requested by the token.
    let (body, code) = curl(
        &[
            &admin_curl[..],
            &[format!("{base}/apis/certificates.k8s.io/v1/certificatesigningrequests").as_str()],
        ]
        .concat(),
    );
    assert_eq!(code, "200", "{body}");
    assert!(body.contains(&format!("system:bootstrap:{id}")), "{body}");

    // And its serving certificate, asked for with its own: DNS:joined-1,
    // signed at once, the key owner-only; its endpoint serves HTTPS with it.
    let serving = std::fs::read_to_string(state.join("serving.crt")).expect("serving.crt");
    let info = pki::CertInfo::from_pem(&serving).expect("the serving certificate");
    assert_eq!(info.common_name, "system:node:joined-1");
    assert_eq!(info.dns_names, ["joined-1"]);
    assert!(info.ip_addresses.is_empty());
    assert!(info.server_auth && !info.client_auth);
    let mode = std::fs::metadata(state.join("serving.key"))
        .expect("serving.key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        body.contains("\"signerName\":\"kubernetes.io/kubelet-serving\"")
            && body.contains("\"username\":\"system:node:joined-1\""),
        "{body}"
    );
    let (node, _) = curl(&[&admin_curl[..], &[node_url.as_str()]].concat());
    assert!(
        node.contains("\"nodeletEndpoint\":\"https://127.0.0.1:"),
        "{node}"
    );
    // The API server reaches it and believes it: a task bound to the node
    // has its log asked of the node (which has none yet), not refused.
    let tasks = format!("{base}/apis/loom.dev/v1/namespaces/default/tasks");
    let task = r#"{"apiVersion":"loom.dev/v1","kind":"Task","metadata":{"name":"probe"},"spec":{"image":"no-such-image","nodeName":"joined-1"}}"#;
    let (body, code) = curl(
        &[
            &admin_curl[..],
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
    let (body, code) = curl(&[&admin_curl[..], &[format!("{tasks}/probe/log").as_str()]].concat());
    assert!(
        (code == "200" || code == "404") && !body.contains("cannot reach"),
        "the node's endpoint refused: {code} {body}"
    );
    drop(nodelet);

    // A certificate past 80 % of its life is renewed with itself at start,
    // with no token: node.conf gets a new 30-day certificate, asked for by
    // the node. (Certificates are backdated 5 minutes: 30 s more of life
    // puts this one at 89 %.)
    let ca_key = std::fs::read_to_string(path(&pki, "ca.key")).expect("ca.key");
    let cluster_ca =
        pki::Ca::from_pem(&std::fs::read_to_string(&ca).expect("ca.crt"), &ca_key).expect("the CA");
    let aging = cluster_ca
        .issue(
            &pki::Profile::client("system:node:joined-1", Some("system:nodes"))
                .valid_for(Duration::from_secs(30)),
        )
        .expect("an aging certificate");
    client::Kubeconfig::single(
        "loom",
        &base,
        Some(cluster_ca.cert_pem()),
        Some(client::Credential::ClientCert {
            cert_pem: aging.cert_pem.clone(),
            key_pem: aging.key_pem,
        }),
        "",
    )
    .write(&conf)
    .expect("write node.conf");
    // And a serving certificate due for renewal about 20 s after the start
    // (100 s of life, backdated 5 minutes: 80 % is 20 s from now), renewed
    // by the running nodelet and served without a restart.
    let mut profile = pki::Profile::node_serving("joined-1", &[]);
    profile.validity = Duration::from_secs(100);
    let short = cluster_ca
        .issue(&profile)
        .expect("a short serving certificate");
    std::fs::write(state.join("serving.crt"), &short.cert_pem).expect("write serving.crt");
    std::fs::write(state.join("serving.key"), &short.key_pem).expect("write serving.key");
    let short_info = pki::CertInfo::from_pem(&short.cert_pem).expect("the short certificate");
    let restarted = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args([
            "nodelet",
            "--name",
            "joined-1",
            "--cgroup-parent",
            "loom-test-join",
        ])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "warn")
        .env_remove("LOOM_TOKEN")
        .env_remove("LOOM_KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loom nodelet again");
    let restarted = Child(restarted);
    let renewed = || -> Option<pki::CertInfo> {
        let config = client::Kubeconfig::read(&conf)
            .ok()?
            .config(&conf, None)
            .ok()?;
        let (cert, _) = config.tls?.identity?;
        (cert != aging.cert_pem).then(|| pki::CertInfo::from_pem(&cert).ok())?
    };
    eventually("the aging certificate renewed", 60, || renewed().is_some());
    let info = renewed().expect("the renewed certificate");
    assert_eq!(info.common_name, "system:node:joined-1");
    let life = info
        .not_after
        .duration_since(info.not_before)
        .expect("a life");
    assert!(life >= Duration::from_secs(30 * 24 * 3600), "{life:?}");
    let mode = std::fs::metadata(&conf)
        .expect("node.conf")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (body, _) = curl(
        &[
            &admin_curl[..],
            &[format!("{base}/apis/certificates.k8s.io/v1/certificatesigningrequests").as_str()],
        ]
        .concat(),
    );
    assert!(
        body.contains("\"username\":\"system:node:joined-1\""),
        "{body}"
    );
    // The endpoint serves the short certificate, then the renewed one.
    let (node, _) = curl(&[&admin_curl[..], &[node_url.as_str()]].concat());
    let address = node
        .split("\"nodeletEndpoint\":\"https://")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no https endpoint in {node}"))
        .to_owned();
    let served_until = || -> Option<std::time::SystemTime> {
        let mut shown = Command::new("openssl")
            .args(["s_client", "-connect", &address, "-servername", "joined-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(shown.stdout.as_mut()?, &mut text).ok()?;
        let _ = shown.wait();
        let start = text.find("-----BEGIN CERTIFICATE-----")?;
        let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
        let info = pki::CertInfo::from_pem(&text[start..end]).ok()?;
        (info.common_name == "system:node:joined-1").then_some(info.not_after)
    };
    eventually("the short serving certificate served", 30, || {
        served_until() == Some(short_info.not_after)
    });
    eventually("the serving certificate renewed and served", 60, || {
        served_until().is_some_and(|until| until > short_info.not_after + Duration::from_secs(3600))
    });
    let renewed_serving = std::fs::read_to_string(state.join("serving.crt")).expect("serving.crt");
    let info = pki::CertInfo::from_pem(&renewed_serving).expect("the renewed serving certificate");
    assert_eq!(info.dns_names, ["joined-1"]);
    assert!(info.not_after > short_info.not_after);
    drop(restarted);

    // A CA hash that is not this cluster's: nothing is trusted or written.
    let other = temp.path().join("other");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let refused = loom(&[
        "nodelet",
        "--server",
        &base,
        "--token",
        &token,
        "--ca-cert-hash",
        &wrong,
        "--name",
        "joined-2",
        "--state-dir",
        &other.display().to_string(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--ca-cert-hash"), "{stderr}");
    assert!(!other.join("node.conf").exists());

    // A deleted token is refused.
    let deleted = loom(&["token", "delete", "--kubeconfig", &admin, &token]);
    assert!(deleted.status.success(), "{deleted:?}");
    let refused = loom(&[
        "nodelet",
        "--server",
        &base,
        "--token",
        &token,
        "--ca-cert-hash",
        &hash,
        "--name",
        "joined-2",
        "--state-dir",
        &other.display().to_string(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("bootstrap token") && stderr.contains("not known"),
        "{stderr}"
    );
    assert!(!other.join("node.conf").exists());
}
