//! How the benchmarks reach the API server they start: over HTTPS as a user
//! RBAC really checks (`loom-bench`, bound to the `edit` ClusterRole by a
//! bearer token of `--token-auth-file`), the administrator only for what
//! `edit` does not cover (Nodes), and each component with its own
//! credential; or, against a `loom` from before the control plane was
//! secured (no `loom certs`), over plain HTTP without credentials, as that
//! build was run.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The benchmarks' user: not in `system:masters`, so every request goes
/// through RBAC.
pub const BENCH_USER: &str = "loom-bench";
/// Its group.
const BENCH_GROUP: &str = "loom-bench:users";
/// The ClusterRole it is bound to.
const BENCH_ROLE: &str = "edit";

/// Whether `loom` serves TLS and authenticates: it has `loom certs`.
pub fn is_secure(loom: &Path) -> bool {
    Command::new(loom)
        .args(["certs", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One line saying how the benchmarks reach an API server of `loom`.
pub fn describe(loom: &Path) -> String {
    if is_secure(loom) {
        format!(
            "API server: HTTPS, every request authenticated and authorized by RBAC; \
             clients as user {BENCH_USER} (ClusterRole {BENCH_ROLE}, bearer token)"
        )
    } else {
        format!(
            "API server: plain HTTP without authentication ({} has no `loom certs`: \
             a build from before the control plane was secured)",
            loom.display()
        )
    }
}

/// The files of a secured API server, made by `loom certs` in its temp dir.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The `loom certs` directory (`ca.crt`, `apiserver.crt`, `admin.conf`...).
    pub dir: PathBuf,
    /// The bench user's token file (`--token-auth-file`).
    pub tokens: PathBuf,
    /// A kubeconfig of the bench user.
    pub bench_conf: PathBuf,
    ca_pem: String,
    token: String,
    /// Whether `loom apiserver` signs nodes' certificate requests with the
    /// cluster CA (`--cluster-signing-cert-file`): a node given its
    /// credential by `--kubeconfig` asks for its serving certificate so.
    signs: bool,
}

impl Pki {
    /// Makes the cluster's credentials in `dir/pki` for `url`, and a token
    /// of the bench user.
    pub fn make(loom: &Path, dir: &Path, url: &str) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        run_certs(loom, &pki, url, &[])?;
        let ca = pki.join("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca)
            .with_context(|| format!("cannot read {}", ca.display()))?;
        let token = random_token()?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{token},{BENCH_USER},{BENCH_USER}-uid,\"{BENCH_GROUP}\"\n"),
        )
        .with_context(|| format!("cannot write {}", tokens.display()))?;
        let bench_conf = dir.join("bench.conf");
        client::Kubeconfig::single(
            "loom-bench",
            url,
            Some(&ca_pem),
            Some(client::kubeconfig::Credential::Token(token.clone())),
            "default",
        )
        .write(&bench_conf)
        .with_context(|| format!("cannot write {}", bench_conf.display()))?;
        Ok(Pki {
            dir: pki,
            tokens,
            bench_conf,
            ca_pem,
            token,
            signs: has_flag(loom, "apiserver", "--cluster-signing-cert-file"),
        })
    }

    /// `loom apiserver`'s flags for these files.
    pub fn server_args(&self) -> Vec<String> {
        let file = |name: &str| self.dir.join(name).display().to_string();
        let mut args: Vec<String> = vec![
            "--tls-cert-file".into(),
            file("apiserver.crt"),
            "--tls-private-key-file".into(),
            file("apiserver.key"),
            "--client-ca-file".into(),
            file("ca.crt"),
            "--token-auth-file".into(),
            self.tokens.display().to_string(),
            "--service-account-key-file".into(),
            file("sa.pub"),
            "--service-account-signing-key-file".into(),
            file("sa.key"),
        ];
        if self.signs {
            // Nodes get their serving certificates from the cluster CA.
            args.extend([
                "--cluster-signing-cert-file".into(),
                file("ca.crt"),
                "--cluster-signing-key-file".into(),
                file("ca.key"),
            ]);
        }
        args
    }
}

/// Whether `loom SUBCOMMAND --help` names `flag` (an older build may not).
fn has_flag(loom: &Path, subcommand: &str, flag: &str) -> bool {
    Command::new(loom)
        .args([subcommand, "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// `loom certs --dir DIR --server URL [--node NAME]...`.
fn run_certs(loom: &Path, dir: &Path, url: &str, nodes: &[String]) -> anyhow::Result<()> {
    let mut command = Command::new(loom);
    command
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(["--server", url]);
    for node in nodes {
        command.args(["--node", node]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} certs", loom.display()))?;
    if !output.status.success() {
        bail!(
            "{} certs failed: {}",
            loom.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A component of Loom the benchmarks run beside the API server.
#[derive(Clone, Debug)]
pub enum Component {
    Scheduler,
    Controllers,
    /// The nodelet of this node.
    Node(String),
}

/// How to reach one API server, and as whom.
#[derive(Clone, Debug)]
pub struct Access {
    /// `https://…` or, for an old build, `http://…`.
    pub url: String,
    pki: Option<Pki>,
    loom: PathBuf,
}

impl Access {
    pub fn new(url: String, pki: Option<Pki>, loom: PathBuf) -> Self {
        Access { url, pki, loom }
    }

    /// The rustls configuration trusting the cluster CA (or nothing, for
    /// plain HTTP: reqwest is built without a process-wide TLS provider),
    /// presenting `identity` (a PEM certificate and key) if given.
    fn rustls(&self, identity: Option<(&str, &str)>) -> anyhow::Result<rustls::ClientConfig> {
        Ok(loom_listener::tls::client_config(
            self.pki.as_ref().map(|pki| pki.ca_pem.as_str()),
            identity,
        )?)
    }

    /// A raw HTTP client builder as the bench user.
    pub fn http_builder(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(self.rustls(None)?)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pki) = &self.pki {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", pki.token))
                    .context("the bench token")?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(builder)
    }

    /// A raw HTTP client as the bench user.
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        Ok(self.http_builder()?.build()?)
    }

    /// A typed client as the bench user.
    pub fn client(&self) -> anyhow::Result<client::Client> {
        Ok(client::Client::new(self.client_config()?)?)
    }

    fn client_config(&self) -> anyhow::Result<client::Config> {
        Ok(match &self.pki {
            Some(pki) => client::Config::from_kubeconfig(&pki.bench_conf, None)?,
            None => client::Config::new(&self.url),
        })
    }

    /// A typed client as the administrator, for what `edit` does not
    /// cover (Nodes).
    pub fn admin(&self) -> anyhow::Result<client::Client> {
        let config = match &self.pki {
            Some(pki) => client::Config::from_kubeconfig(&pki.dir.join("admin.conf"), None)?,
            None => client::Config::new(&self.url),
        };
        Ok(client::Client::new(config)?)
    }

    /// A typed client as `component` (the scheduler run in this process).
    pub fn client_as(&self, component: &Component) -> anyhow::Result<client::Client> {
        let config = match self.kubeconfig(component)? {
            Some(path) => client::Config::from_kubeconfig(&path, None)?,
            None => client::Config::new(&self.url),
        };
        Ok(client::Client::new(config)?)
    }

    /// `component`'s kubeconfig (made by `loom certs` for a node), or none
    /// for an old build.
    fn kubeconfig(&self, component: &Component) -> anyhow::Result<Option<PathBuf>> {
        let Some(pki) = &self.pki else {
            return Ok(None);
        };
        let file = match component {
            Component::Scheduler => "scheduler.conf".to_owned(),
            Component::Controllers => "controllers.conf".to_owned(),
            Component::Node(name) => {
                run_certs(&self.loom, &pki.dir, &self.url, std::slice::from_ref(name))?;
                format!("node-{}.conf", name.replace('.', "-"))
            }
        };
        Ok(Some(pki.dir.join(file)))
    }

    /// The flags telling `loom scheduler|controllers|nodelet` where the API
    /// server is and who it is there.
    pub fn component_args(&self, component: &Component) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        if let Some(path) = self.kubeconfig(component)? {
            args.push("--kubeconfig".to_owned());
            args.push(path.display().to_string());
        }
        args.push("--server".to_owned());
        args.push(self.url.clone());
        Ok(args)
    }

    /// The flags of `loom-bench touch-tasks` to reach the server as the
    /// bench user.
    pub fn touch_args(&self) -> Vec<String> {
        match &self.pki {
            Some(pki) => vec!["--kubeconfig".into(), pki.bench_conf.display().to_string()],
            None => vec!["--url".into(), self.url.clone()],
        }
    }

    /// Binds the bench user to its ClusterRole as the administrator, then
    /// waits until a SubjectAccessReview says it may create and watch
    /// tasks (the authorizer learns of bindings through a watch).
    pub async fn bind_bench_user(&self) -> anyhow::Result<()> {
        let Some(pki) = &self.pki else {
            return Ok(());
        };
        let admin = self.admin_http(pki)?;
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{BENCH_USER}-{BENCH_ROLE}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": BENCH_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": BENCH_USER}],
        });
        let response = admin
            .post(format!(
                "{}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                self.url
            ))
            .json(&binding)
            .send()
            .await
            .context("cannot bind the bench user")?;
        let code = response.status();
        if !code.is_success() {
            bail!(
                "binding {BENCH_ROLE} to {BENCH_USER} answered {code}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let reviews = format!(
            "{}/apis/authorization.k8s.io/v1/subjectaccessreviews",
            self.url
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for verb in ["create", "watch"] {
            let review = json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"user": BENCH_USER, "groups": [BENCH_GROUP], "resourceAttributes": {
                    "verb": verb, "group": "loom.dev", "resource": "tasks", "namespace": "default"}},
            });
            loop {
                let answer: Option<Value> = match admin.post(&reviews).json(&review).send().await {
                    Ok(response) => response.json().await.ok(),
                    Err(_) => None,
                };
                if answer.is_some_and(|a| a["status"]["allowed"] == true) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{BENCH_USER} was not allowed to {verb} tasks within 30 s of its binding"
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// A raw HTTP client presenting the administrator's certificate.
    fn admin_http(&self, pki: &Pki) -> anyhow::Result<reqwest::Client> {
        let config = client::Config::from_kubeconfig(&pki.dir.join("admin.conf"), None)?;
        let (cert, key) = config
            .tls
            .and_then(|tls| tls.identity)
            .context("admin.conf has no client certificate")?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(self.rustls(Some((&cert, &key)))?)
            .build()?)
    }
}

/// The client configuration of `loom-bench touch-tasks`: its kubeconfig, or
/// the URL of an old build's server.
pub fn touch_config(
    kubeconfig: Option<&Path>,
    url: Option<&str>,
) -> anyhow::Result<client::Config> {
    match (kubeconfig, url) {
        (Some(path), _) => Ok(client::Config::from_kubeconfig(path, None)?),
        (None, Some(url)) => Ok(client::Config::new(url)),
        (None, None) => bail!("touch-tasks needs --kubeconfig or --url"),
    }
}
