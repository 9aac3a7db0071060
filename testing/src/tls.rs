//! A test cluster's PKI: one CA per test process, a serving certificate for
//! loopback, an administrator's client certificate (`loom-admin` in
//! `system:masters`) and client certificates for any other user a test
//! wants to act as, with the HTTP clients that present them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pki::{Ca, KeyAndCert, Profile};

use crate::{Error, Result};

/// The administrator every test client is, unless it asks for another user.
pub const ADMIN: &str = "loom-admin";
/// The administrator's group: allowed everything.
pub const MASTERS: &str = "system:masters";
/// Users every test server knows by bearer token ([`TestPki::token`]), in
/// [`TEST_USERS_GROUP`]; they may do nothing until a test binds them a role.
pub const TEST_USERS: [&str; 3] = ["alice", "bob", "carol"];
/// The group of [`TEST_USERS`].
pub const TEST_USERS_GROUP: &str = "loom-test:users";

/// The CA and the certificates issued by it, shared by every server of one
/// test process (issuing is cheap, making the CA once keeps it cheaper).
pub struct TestPki {
    ca: Ca,
    serving: KeyAndCert,
    admin: KeyAndCert,
    admin_token: String,
    /// The service-account signing key (PKCS #8 PEM) and its public key.
    service_account_keys: (String, String),
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// The process's test PKI.
    pub fn shared() -> Arc<TestPki> {
        static PKI: OnceLock<Arc<TestPki>> = OnceLock::new();
        PKI.get_or_init(|| {
            let make = || -> std::result::Result<TestPki, pki::Error> {
                let ca = Ca::generate("loom-test-ca")?;
                let names = ["127.0.0.1", "localhost", "::1"].map(str::to_owned);
                let serving = ca.issue(&Profile::server("loom-apiserver", &names))?;
                let admin = ca.issue(&Profile::client(ADMIN, Some(MASTERS)))?;
                // Random per process (std's hasher keys come from the OS).
                let random = || {
                    use std::hash::BuildHasher as _;
                    std::collections::hash_map::RandomState::new().hash_one(0u8)
                };
                let admin_token = format!("loom-test-{:016x}{:016x}", random(), random());
                Ok(TestPki {
                    ca,
                    serving,
                    admin,
                    admin_token,
                    service_account_keys: pki::signing_key_pair()?,
                })
            };
            match make() {
                Ok(pki) => Arc::new(pki),
                // Nothing a test can do without it; this is the harness failing.
                Err(error) => panic!("cannot make the test PKI: {error}"),
            }
        })
        .clone()
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The CA (to sign more certificates, e.g. a node's).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The administrator's certificate and key.
    pub fn admin(&self) -> &KeyAndCert {
        &self.admin
    }

    /// The administrator's bearer token (every test server's static token
    /// file has it): for clients that cannot present a certificate, such as
    /// raw requests to a plain-HTTP server.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Service-account tokens signed and verified with the process's key pair.
    pub fn service_account_tokens(&self) -> std::sync::Arc<apiserver::authn::ServiceAccountTokens> {
        let (private, public) = &self.service_account_keys;
        match apiserver::authn::ServiceAccountTokens::from_pem(
            apiserver::authn::service_account::DEFAULT_ISSUER,
            &[(PathBuf::from("sa.pub"), public.clone())],
            Some((PathBuf::from("sa.key"), private.clone())),
        ) {
            Ok(tokens) => std::sync::Arc::new(tokens),
            Err(error) => panic!("the test service-account keys: {error}"),
        }
    }

    /// The bearer token of `user`, one of [`TEST_USERS`].
    pub fn token(&self, user: &str) -> String {
        assert!(TEST_USERS.contains(&user), "{user} is not a test user");
        format!("{}-{user}", self.admin_token)
    }

    /// The static token file every test server reads: the administrator's
    /// token and those of [`TEST_USERS`].
    pub fn static_tokens(&self) -> std::sync::Arc<apiserver::authn::StaticTokens> {
        let mut lines = format!("{},{ADMIN},{ADMIN},{MASTERS}\n", self.admin_token);
        for user in TEST_USERS {
            lines.push_str(&format!(
                "{},{user},{user},{TEST_USERS_GROUP}\n",
                self.token(user)
            ));
        }
        match apiserver::authn::StaticTokens::parse(&lines, Path::new("test-tokens.csv")) {
            Ok(tokens) => std::sync::Arc::new(tokens),
            Err(error) => panic!("the test token file: {error}"),
        }
    }

    /// A client certificate for `user` in `group`.
    pub fn user(&self, user: &str, group: Option<&str>) -> KeyAndCert {
        match self.ca.issue(&Profile::client(user, group)) {
            Ok(credential) => credential,
            Err(error) => panic!("cannot issue a test certificate for {user}: {error}"),
        }
    }

    /// Writes `ca.crt`, `apiserver.crt`/`.key` and `admin.crt`/`.key` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PkiFiles> {
        let files = PkiFiles::in_dir(dir);
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(Error::io("write the test PKI"))
        };
        write(&files.ca, self.ca.cert_pem())?;
        write(&files.serving_cert, &self.serving.cert_pem)?;
        write(&files.serving_key, &self.serving.key_pem)?;
        write(&files.admin_cert, &self.admin.cert_pem)?;
        write(&files.admin_key, &self.admin.key_pem)?;
        Ok(files)
    }

    /// The rustls configuration of a client trusting this CA and presenting
    /// `identity` (none: only a bearer token, or nothing, authenticates it).
    pub fn rustls_client(&self, identity: Option<&KeyAndCert>) -> rustls::ClientConfig {
        let identity = identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str()));
        match loom_listener::tls::client_config(Some(self.ca.cert_pem()), identity) {
            Ok(config) => config,
            Err(error) => panic!("the test PKI's client TLS: {error}"),
        }
    }

    /// An HTTP client trusting this CA and presenting `identity`.
    pub fn http_client(&self, identity: Option<&KeyAndCert>) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.rustls_client(identity))
            .redirect(reqwest::redirect::Policy::none())
    }

    /// A loom client configuration for `server` presenting `identity`.
    pub fn client_config(&self, server: &str, identity: &KeyAndCert) -> client::Config {
        let mut config = client::Config::new(server);
        config.tls = Some(client::config::TlsConfig {
            ca_pem: self.ca.cert_pem().to_owned(),
            identity: Some((identity.cert_pem.clone(), identity.key_pem.clone())),
        });
        config
    }
}

/// Where [`TestPki::write`] put the files.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The API server's serving certificate.
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// The administrator's client certificate.
    pub admin_cert: PathBuf,
    /// Its key.
    pub admin_key: PathBuf,
}

impl PkiFiles {
    fn in_dir(dir: &Path) -> Self {
        PkiFiles {
            ca: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
        }
    }

    /// The API server's TLS configuration from these files.
    pub fn server_config(&self) -> Result<Arc<loom_listener::tls::ServerConfig>> {
        loom_listener::tls::server_config(&self.serving_cert, &self.serving_key, Some(&self.ca))
            .map_err(|error| Error::Tls(error.to_string()))
    }

    /// A kubeconfig for the administrator at `server`, as kubectl reads it.
    pub fn kubeconfig(&self, server: &str) -> String {
        let path = |p: &Path| p.display().to_string();
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n",
            path(&self.ca),
            path(&self.admin_cert),
            path(&self.admin_key)
        )
    }
}
