//! An API server on a free loopback port over an embedded store, a private
//! etcd, or a store given, in the test's own runtime: over HTTPS with the
//! test PKI ([`crate::tls`]), its clients the administrator unless they ask
//! to be someone else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::Config;
use apiserver::store::{EmbeddedOptions, EmbeddedStore, Store};
use tokio_util::sync::CancellationToken;

use crate::etcd::{EtcdServer, temp_dir};
use crate::tls::{PkiFiles, TestPki};
use crate::{Error, Result};

/// An API server on a free loopback port over a store, stopped on drop.
#[derive(Debug)]
pub struct TestServer {
    /// `https://127.0.0.1:PORT` (`http://` for [`TestServer::plain`]).
    pub url: String,
    /// The store it serves (to check it directly).
    pub store: Arc<dyn Store>,
    /// The CA, the serving certificate and the administrator's credential.
    pub pki: Arc<TestPki>,
    /// Where the PKI's files are (for kubectl and other programs).
    pub files: PkiFiles,
    shutdown: CancellationToken,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
    _pki_dir: tempfile::TempDir,
}

impl TestServer {
    /// Over a fresh embedded store in a temp dir.
    pub async fn embedded(config: Config) -> Result<Self> {
        let (dir, path) = temp_dir()?;
        let store = EmbeddedStore::open(EmbeddedOptions::new(path))?;
        Self::start(Arc::new(store), config, None, Some(dir)).await
    }

    /// Over a private etcd.
    pub async fn etcd(config: Config) -> Result<Self> {
        let etcd = EtcdServer::start().await?;
        let store = etcd.store("/loom/").await?;
        Self::start(Arc::new(store), config, Some(etcd), None).await
    }

    /// Over a given store (e.g. a second server sharing one etcd).
    pub async fn over(store: Arc<dyn Store>, config: Config) -> Result<Self> {
        Self::start(store, config, None, None).await
    }

    /// Over a fresh embedded store, serving plain HTTP (Loom's
    /// `--insecure-listen`): for tests of the HTTP layer beneath TLS, such as
    /// the header read timeout a raw socket exercises.
    pub async fn plain(mut config: Config) -> Result<Self> {
        config.tls = None;
        let (dir, path) = temp_dir()?;
        let store = EmbeddedStore::open(EmbeddedOptions::new(path))?;
        Self::start_with(Arc::new(store), config, None, Some(dir), false).await
    }

    async fn start(
        store: Arc<dyn Store>,
        config: Config,
        etcd: Option<EtcdServer>,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        Self::start_with(store, config, etcd, dir, true).await
    }

    async fn start_with(
        store: Arc<dyn Store>,
        mut config: Config,
        etcd: Option<EtcdServer>,
        dir: Option<tempfile::TempDir>,
        tls: bool,
    ) -> Result<Self> {
        let pki = TestPki::shared();
        let pki_dir = tempfile::tempdir().map_err(Error::io("make the test PKI's dir"))?;
        let files = pki.write(pki_dir.path())?;
        if tls && config.tls.is_none() {
            config.tls = Some(files.server_config()?);
        }
        if config.authentication.tokens.is_none() {
            config.authentication.tokens = Some(pki.static_tokens());
        }
        if config.authentication.service_accounts.is_none() {
            config.authentication.service_accounts = Some(pki.service_account_tokens());
        }
        if config.nodelet_client.is_none() {
            // Nodelets serving TLS let in this user only (Loom's API server's).
            let identity = pki.user("system:loom-apiserver", None);
            config.nodelet_client = Some(apiserver::logs::NodeletClientTls {
                ca_pem: pki.ca_pem().to_owned(),
                cert_pem: identity.cert_pem,
                key_pem: identity.key_pem,
            });
        }
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("bind the API server"))?;
        let address = listener
            .local_addr()
            .map_err(Error::io("bind the API server"))?;
        let shutdown = serve(store.clone(), listener, config);
        let server = TestServer {
            url: format!("{scheme}://{address}"),
            store,
            pki,
            files,
            shutdown,
            _etcd: etcd,
            _dir: dir,
            _pki_dir: pki_dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// `HOST:PORT` of the server.
    pub fn address(&self) -> &str {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
    }

    /// The administrator's client configuration.
    pub fn client_config(&self) -> client::Config {
        self.pki.client_config(&self.url, self.pki.admin())
    }

    /// A typed client, as the administrator.
    pub fn client(&self) -> client::Client {
        client::Client::new(self.client_config()).expect("a client of the test API server")
    }

    /// A typed client, as `user` in `group` (a client certificate of the test CA).
    pub fn client_as(&self, user: &str, group: Option<&str>) -> client::Client {
        let identity = self.pki.user(user, group);
        client::Client::new(self.pki.client_config(&self.url, &identity))
            .expect("a client of the test API server")
    }

    /// A plain HTTP client, as the administrator (by certificate over HTTPS,
    /// by bearer token over plain HTTP).
    pub fn http(&self) -> reqwest::Client {
        self.http_builder().build().expect("an HTTP client")
    }

    /// What [`TestServer::http`] builds, to add to.
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        let builder = self.pki.http_client(Some(self.pki.admin()));
        if self.url.starts_with("https://") {
            return builder;
        }
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.pki.admin_token()))
                .expect("a header value");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder.default_headers(headers)
    }

    /// A plain HTTP client, as `user` in `group`.
    pub fn http_as(&self, user: &str, group: Option<&str>) -> reqwest::Client {
        let identity = self.pki.user(user, group);
        self.pki
            .http_client(Some(&identity))
            .build()
            .expect("an HTTP client")
    }

    /// Binds cluster role `role` (one that grants reading tasks: `view`,
    /// `edit`, `admin`, `cluster-admin`) to `kind` (`User` or `Group`) `name`
    /// cluster-wide, as the administrator, and waits until the authorizer
    /// lets the subject use it.
    pub async fn bind_cluster_role(&self, kind: &str, name: &str, role: &str) {
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"generateName": format!("test-{role}-")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}],
        });
        let response = self
            .http()
            .post(format!(
                "{}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                self.url
            ))
            .json(&binding)
            .send()
            .await
            .expect("the API server answers");
        let code = response.status();
        assert!(
            code.is_success(),
            "binding {role} to {kind} {name}: {code} {}",
            response.text().await.unwrap_or_default()
        );
        // The authorizer learns of the binding through its watch: wait until
        // it answers a review with it.
        let (user, groups) = match kind {
            "Group" => ("loom-test:probe".to_owned(), vec![name.to_owned()]),
            _ => (name.to_owned(), Vec::new()),
        };
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": {
                "verb": "get", "group": "loom.dev", "resource": "tasks", "namespace": "default"}},
        });
        let url = format!(
            "{}/apis/authorization.k8s.io/v1/subjectaccessreviews",
            self.url
        );
        crate::wait::eventually(&format!("{role} bound to {kind} {name}"), || async {
            let response = self.http().post(&url).json(&review).send().await.ok()?;
            let answer: serde_json::Value = response.json().await.ok()?;
            (answer["status"]["allowed"] == true).then_some(())
        })
        .await;
    }

    /// A plain HTTP client that trusts the server but presents no certificate.
    pub fn http_anonymous(&self) -> reqwest::Client {
        self.pki.http_client(None).build().expect("an HTTP client")
    }

    /// Writes a kubeconfig for the administrator and returns its path (in the
    /// server's own temp dir, removed with it).
    pub fn kubeconfig(&self) -> Result<std::path::PathBuf> {
        let path = self._pki_dir.path().join("kubeconfig");
        std::fs::write(&path, self.files.kubeconfig(&self.url))
            .map_err(Error::io("write the kubeconfig"))?;
        Ok(path)
    }

    /// Stops the server (cutting every watch) and starts a new one on the same
    /// address over the same store, as an API server restart.
    pub async fn restart(&mut self, config: Config) -> Result<()> {
        self.shutdown.cancel();
        let address = self.address().to_owned();
        let mut config = config;
        if self.url.starts_with("https://") && config.tls.is_none() {
            config.tls = Some(self.files.server_config()?);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(&address).await {
                Ok(listener) => break listener,
                Err(source) if Instant::now() > deadline => {
                    return Err(Error::Rebind { address, source });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.shutdown = serve(self.store.clone(), listener, config);
        self.wait_ready().await
    }

    /// [`TestServer::restart`] over another store (one restored from a
    /// snapshot, say): the same address, so its clients carry on against it.
    pub async fn restart_over(&mut self, store: Arc<dyn Store>, config: Config) -> Result<()> {
        self.store = store;
        self.restart(config).await
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = self
            .pki
            .http_client(Some(self.pki.admin()))
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| Error::Tls(error.to_string()))?;
        let url = format!("{}/readyz", self.url);
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn serve(
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    config: Config,
) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let server = apiserver::run(store, listener, config, shutdown.clone());
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "test API server failed");
        }
    });
    shutdown
}
