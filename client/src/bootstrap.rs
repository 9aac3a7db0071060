//! What a node that joins knows nothing of yet: the cluster CA, fetched over
//! a TLS connection whose server certificate is not checked (there is no CA
//! to check it with), to be trusted only once the caller has checked it
//! against a hash it got out of band (kubeadm's `--discovery-token-ca-cert-hash`).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// Accepts any server certificate; the handshake's signatures are still
/// checked (the server holds the key of what it showed).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The text at `url`, over HTTPS without checking who answered. Use it only
/// for what is then checked by other means (the cluster CA against a pinned
/// hash); never send a credential this way.
pub async fn fetch_unverified(url: &str) -> Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = http.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::Config(format!(
            "{url}: the server answered {status}"
        )));
    }
    Ok(response.text().await?)
}

/// The cluster CA (PEM) the server at `server` publishes at
/// [`CLUSTER_CA_PATH`](api_types::certificates::CLUSTER_CA_PATH), once one of
/// its certificates' public key hashes to `ca_cert_hash`
/// (`sha256:<hex>`, as `loom token create` prints it); an error otherwise.
pub async fn fetch_cluster_ca(server: &str, ca_cert_hash: &str) -> Result<String> {
    let wanted = ca_cert_hash.trim().to_ascii_lowercase();
    let hex = wanted.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Config(format!(
            "the CA certificate hash {ca_cert_hash:?} is not sha256:<64 hex digits>"
        )));
    }
    let base = server.trim().trim_end_matches('/');
    let url = format!("{base}{}", api_types::certificates::CLUSTER_CA_PATH);
    let pem = fetch_unverified(&url).await?;
    let info = pki::CertInfo::from_pem(&pem)
        .map_err(|why| Error::Config(format!("{url} holds no CA certificate: {why}")))?;
    let got = pki::public_key_hash(&info.public_key_info);
    if got != wanted || !info.is_ca {
        return Err(Error::Config(format!(
            "the CA {url} sent is not the one --ca-cert-hash names (its hash is {got}): not trusting it"
        )));
    }
    Ok(pem)
}

/// Asks the cluster CA for `node`'s client certificate (`CN=system:node:NODE`,
/// `O=system:nodes`) with a new key: creates a CertificateSigningRequest
/// and waits up to `timeout` for it to be signed. The PEM certificate and key.
pub async fn request_node_certificate(
    client: &crate::Client,
    node: &str,
    timeout: Duration,
) -> Result<(String, String)> {
    use api_types::certificates::{KUBELET_CLIENT_SIGNER, NODE_USER_PREFIX, NODES_GROUP};
    let profile = pki::Profile::client(&format!("{NODE_USER_PREFIX}{node}"), Some(NODES_GROUP));
    request_certificate(
        client,
        &profile,
        KUBELET_CLIENT_SIGNER,
        &["digital signature", "client auth"],
        &format!("node-csr-{node}-"),
        timeout,
    )
    .await
}

/// Asks the cluster CA, as node `node` (`client` holds its client
/// certificate), for the serving certificate of its endpoint
/// (`CN=system:node:NODE`, `O=system:nodes`, `DNS:NODE` alone: the name the
/// API server checks) with a new key, and waits up to `timeout` for it to
/// be signed. The PEM certificate and key.
pub async fn request_node_serving_certificate(
    client: &crate::Client,
    node: &str,
    timeout: Duration,
) -> Result<(String, String)> {
    use api_types::certificates::{KUBELET_SERVING_SIGNER, NODE_SERVING_USAGES};
    request_certificate(
        client,
        &pki::Profile::node_serving(node, &[]),
        KUBELET_SERVING_SIGNER,
        &NODE_SERVING_USAGES,
        &format!("node-serving-{node}-"),
        timeout,
    )
    .await
}

/// How often a pending request is read again.
const POLL: Duration = Duration::from_secs(1);

/// Request `name` once it is signed, denied or failed, read by name every
/// [`POLL`] for up to `timeout`: a node or a bootstrap token may read only
/// its own requests, one by name (no list, no watch). A transient error, a
/// 404 or a 403 is tried again: the request is the caller's own, just
/// created, so either means the API server has not seen it yet (it checks
/// whose a request is by its cache of them).
async fn await_answer(
    api: &crate::Api<api_types::CertificateSigningRequest>,
    name: &str,
    timeout: Duration,
) -> Result<api_types::CertificateSigningRequest> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match api.get(name).await {
            Ok(csr)
                if csr.certificate().is_some()
                    || csr.has_condition("Denied")
                    || csr.has_condition("Failed") =>
            {
                return Ok(csr);
            }
            Ok(_) => "pending".to_owned(),
            Err(error) if error.is_transient() || matches!(error.code(), Some(403 | 404)) => {
                error.to_string()
            }
            Err(error) => return Err(error),
        };
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(Error::Config(format!(
                "the certificate signing request {name} was not answered within {timeout:?} ({last})"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Creates a CertificateSigningRequest for `profile` with a new key, from
/// `signer` for `usages`, named `generate_name` and a suffix, and waits up
/// to `timeout` for it to be signed, denied or failed.
async fn request_certificate(
    client: &crate::Client,
    profile: &pki::Profile,
    signer: &str,
    usages: &[&str],
    generate_name: &str,
    timeout: Duration,
) -> Result<(String, String)> {
    use api_types::{CertificateSigningRequest, CertificateSigningRequestSpec};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    let (request, key) =
        pki::request(profile).map_err(|e| Error::Config(format!("cannot make a key: {e}")))?;
    let mut object = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: STANDARD.encode(request),
            signer_name: signer.to_owned(),
            usages: usages.iter().map(|u| (*u).to_owned()).collect(),
            ..CertificateSigningRequestSpec::default()
        },
        ..CertificateSigningRequest::default()
    };
    object.metadata.generate_name = generate_name.to_owned();
    let api = crate::Api::<CertificateSigningRequest>::all(client.clone());
    let created = api.create(&crate::PostParams::default(), &object).await?;
    let name = created.metadata.name.clone();
    let signed = if created.certificate().is_some()
        || created.has_condition("Denied")
        || created.has_condition("Failed")
    {
        created
    } else {
        await_answer(&api, &name, timeout).await?
    };
    let Some(encoded) = signed.certificate() else {
        let why: Vec<String> = signed
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .map(|c| format!("{}: {}", c.type_, c.message))
            .collect();
        return Err(Error::Config(format!(
            "the certificate signing request {name} was not signed ({})",
            why.join("; ")
        )));
    };
    let certificate = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Error::Config(format!("the certificate of {name} is not base64 PEM")))?;
    Ok((certificate, key))
}
