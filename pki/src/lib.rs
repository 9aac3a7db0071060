//! Loom's certificates: the cluster's certificate authority, the API server's
//! serving certificate, client certificates (a user is the subject's CN, a group
//! its O, as Kubernetes reads them), certificate requests for nodes joining, and
//! the key pair that signs service-account tokens.
//!
//! Keys are ECDSA P-256. Private keys are written `0600`, atomically; a file that
//! cannot be read or parsed is an error naming it. [`ClusterPki`] keeps the
//! files of one cluster in one directory, as kubeadm's `/etc/kubernetes/pki`.

mod cluster;
mod files;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

pub use cluster::{ClusterPki, Credential};
pub use files::{read_file, write_private, write_public};

/// What went wrong, naming the file or the certificate concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A certificate, key or request given as text is not usable.
    #[error("{0}")]
    Bad(String),
    /// Making a key or certificate failed.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// How long a cluster's CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long serving and user certificates are valid by default.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a node's certificate is valid by default.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The user-name prefix of a node (`system:node:NAME`), as
/// `api_types::certificates` names it (this crate depends on no other).
const NODE_USER_PREFIX: &str = "system:node:";
/// The group of every node.
const NODES_GROUP: &str = "system:nodes";
/// Certificates are backdated this much, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server.
    Server,
    /// A TLS client.
    Client,
}

/// A certificate to issue: its subject, names, use and lifetime.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The subject's CN: a server's name, a client's user name.
    pub common_name: String,
    /// The subject's O: a client's group (one; rcgen writes one value a type).
    pub organization: Option<String>,
    /// DNS names it is valid for (servers).
    pub dns_names: Vec<String>,
    /// Addresses it is valid for (servers).
    pub ip_addresses: Vec<IpAddr>,
    /// What it may be used for.
    pub usage: Usage,
    /// How long it is valid from now.
    pub validity: Duration,
}

impl Profile {
    /// A serving certificate named `common_name`, valid for `names` (each an IP
    /// address or a DNS name).
    pub fn server(common_name: &str, names: &[String]) -> Self {
        let mut profile = Profile {
            common_name: common_name.to_owned(),
            organization: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Server,
            validity: CERT_VALIDITY,
        };
        for name in names {
            match name.parse::<IpAddr>() {
                Ok(ip) if !profile.ip_addresses.contains(&ip) => profile.ip_addresses.push(ip),
                Ok(_) => {}
                Err(_) if !profile.dns_names.contains(name) => profile.dns_names.push(name.clone()),
                Err(_) => {}
            }
        }
        profile
    }

    /// The serving certificate of node `node` (its endpoint's HTTPS):
    /// `CN=system:node:NODE, O=system:nodes`, valid for the DNS name `NODE`
    /// (what the API server checks when it calls the node) and `addresses`.
    pub fn node_serving(node: &str, addresses: &[IpAddr]) -> Self {
        let mut names = vec![node.to_owned()];
        names.extend(addresses.iter().map(IpAddr::to_string));
        let mut profile = Profile::server(&format!("{NODE_USER_PREFIX}{node}"), &names);
        profile.organization = Some(NODES_GROUP.to_owned());
        profile
    }

    /// A client certificate for `user`, in `group` if given.
    pub fn client(user: &str, group: Option<&str>) -> Self {
        Profile {
            common_name: user.to_owned(),
            organization: group.map(str::to_owned),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
            validity: CERT_VALIDITY,
        }
    }

    /// The same, valid for `validity`.
    pub fn valid_for(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// Whether a certificate saying `info` was made for this profile: same
    /// subject and use, and every name asked for covered.
    pub fn is_met_by(&self, info: &CertInfo) -> bool {
        info.common_name == self.common_name
            && info.organizations.first() == self.organization.as_ref()
            && self.dns_names.iter().all(|n| info.dns_names.contains(n))
            && self
                .ip_addresses
                .iter()
                .all(|ip| info.ip_addresses.contains(ip))
            && match self.usage {
                Usage::Server => info.server_auth,
                Usage::Client => info.client_auth,
            }
    }

    /// Subject and names: all a certificate request carries.
    fn subject(&self) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, self.common_name.as_str());
        if let Some(group) = &self.organization {
            name.push(DnType::OrganizationName, group.as_str());
        }
        params.distinguished_name = name;
        for dns in &self.dns_names {
            if !is_dns_name(dns) {
                return Err(Error::Bad(format!(
                    "{dns:?} is neither an IP address nor a DNS name (RFC 1123 labels of \
                     letters, digits and '-', at most 253 characters)"
                )));
            }
            params.subject_alt_names.push(SanType::DnsName(
                dns.clone()
                    .try_into()
                    .map_err(|_| Error::Bad(format!("{dns:?} is not a DNS name")))?,
            ));
        }
        for ip in &self.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        Ok(params)
    }

    fn params(&self) -> Result<CertificateParams> {
        let mut params = self.subject()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match self.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        set_validity(&mut params, self.validity)?;
        Ok(params)
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<()> {
    let now = SystemTime::now();
    let from = now - BACKDATE;
    let until = now
        .checked_add(validity)
        .ok_or_else(|| Error::Bad(format!("a validity of {validity:?} is too long")))?;
    params.not_before = from.into();
    params.not_after = until.into();
    // A random positive 127-bit serial, as RFC 5280 asks (unique per CA).
    let mut serial = uuid::Uuid::new_v4().into_bytes();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    Ok(())
}

/// A private key and its certificate, PEM-encoded.
#[derive(Clone)]
pub struct KeyAndCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS #8).
    pub key_pem: String,
}

impl std::fmt::Debug for KeyAndCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A certificate authority: its certificate and the key that signs with it.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `name`, valid for [`CA_VALIDITY`].
    pub fn generate(name: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a PEM certificate and its PEM private key, checked to belong
    /// together and to be a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> std::result::Result<Ca, String> {
        let info = CertInfo::from_pem(cert_pem)?;
        if !info.is_ca {
            return Err("the certificate is not a CA's".to_owned());
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("bad private key: {e}"))?;
        if key.subject_public_key_info() != info.public_key_info {
            return Err("the private key does not belong to the CA's certificate".to_owned());
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `sha256:` and the hex SHA-256 of the CA's public key (its DER
    /// SubjectPublicKeyInfo): what a joining node pins, as kubeadm's
    /// `--discovery-token-ca-cert-hash`.
    pub fn cert_hash(&self) -> String {
        public_key_hash(self.issuer.key().subject_public_key_info().as_slice())
    }

    /// Issues a new key and a certificate for it.
    pub fn issue(&self, profile: &Profile) -> Result<KeyAndCert> {
        let key = KeyPair::generate()?;
        let cert = profile.params()?.signed_by(&key, &self.issuer)?;
        Ok(KeyAndCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of a PEM certificate request with `profile`'s
    /// subject, names and use: what the request itself asks for beyond its key
    /// is not taken (whoever approved it decided what it gets).
    pub fn sign_request(&self, request_pem: &str, profile: &Profile) -> Result<String> {
        let request = CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|e| Error::Bad(format!("bad certificate request: {e}")))?;
        let request = CertificateSigningRequestParams {
            params: profile.params()?,
            public_key: request.public_key,
        };
        Ok(request.signed_by(&self.issuer)?.pem())
    }

    /// Whether `cert_pem` was signed by this CA (and is within its validity).
    pub fn signed(&self, cert_pem: &str) -> bool {
        let Ok((_, ca)) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()) else {
            return false;
        };
        let Ok((_, leaf)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
            return false;
        };
        let (Ok(ca), Ok(leaf)) = (ca.parse_x509(), leaf.parse_x509()) else {
            return false;
        };
        leaf.verify_signature(Some(ca.public_key())).is_ok() && leaf.validity().is_valid()
    }
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and `-`
/// (not first or last), each at most 63 characters, in all at most 253.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `sha256:` and the hex SHA-256 of a DER SubjectPublicKeyInfo.
pub fn public_key_hash(spki_der: &[u8]) -> String {
    sha256(spki_der)
}

/// `sha256:` and the hex SHA-256 of `bytes` (how a bootstrap token's secret
/// is stored: never in clear).
pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What a certificate request asks to be called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// The subject's CN.
    pub common_name: String,
    /// The subject's O values, in order.
    pub organizations: Vec<String>,
    /// How many subject alternative names it asks for, of any kind (a
    /// client's should have none).
    pub alt_names: usize,
    /// The DNS names among them.
    pub dns_names: Vec<String>,
    /// The IP addresses among them.
    pub ip_addresses: Vec<IpAddr>,
}

impl RequestInfo {
    /// Reads a PEM certificate request, its signature checked (the requester
    /// holds the key it asks a certificate for).
    pub fn from_pem(pem: &str) -> std::result::Result<RequestInfo, String> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("no PEM certificate request: {e}"))?;
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(format!(
                "a {:?} where a CERTIFICATE REQUEST was expected",
                block.label
            ));
        }
        // rcgen checks the request's self-signature as it parses it.
        let params = CertificateSigningRequestParams::from_pem(pem)
            .map_err(|e| format!("bad certificate request: {e}"))?;
        let (_, request) = <x509_parser::certification_request::X509CertificationRequest<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(&block.contents)
            .map_err(|e| format!("bad certificate request: {e}"))?;
        let strings = |attrs: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attrs.as_str().map(str::to_owned).ok()
        };
        let subject = &request.certification_request_info.subject;
        Ok(RequestInfo {
            common_name: subject
                .iter_common_name()
                .next()
                .and_then(strings)
                .unwrap_or_default(),
            organizations: subject.iter_organization().filter_map(strings).collect(),
            alt_names: params.params.subject_alt_names.len(),
            dns_names: params
                .params
                .subject_alt_names
                .iter()
                .filter_map(|name| match name {
                    SanType::DnsName(dns) => Some(dns.as_str().to_owned()),
                    _ => None,
                })
                .collect(),
            ip_addresses: params
                .params
                .subject_alt_names
                .iter()
                .filter_map(|name| match name {
                    SanType::IpAddress(ip) => Some(*ip),
                    _ => None,
                })
                .collect(),
        })
    }
}

/// A new key and a PEM certificate request for `profile`'s subject and names
/// (what a node sends to join).
pub fn request(profile: &Profile) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let request = profile.subject()?.serialize_request(&key)?;
    Ok((request.pem()?, key.serialize_pem()))
}

/// A new key pair for signing service-account tokens (ES256): the private key
/// (PKCS #8 PEM) and the public key (SubjectPublicKeyInfo PEM).
pub fn signing_key_pair() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// What a certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's CN (a user's name).
    pub common_name: String,
    /// The subject's O values (a user's groups), in order.
    pub organizations: Vec<String>,
    /// DNS names of its subject alternative names.
    pub dns_names: Vec<String>,
    /// Addresses of its subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
    /// A CA's certificate.
    pub is_ca: bool,
    /// May serve TLS.
    pub server_auth: bool,
    /// May authenticate TLS clients.
    pub client_auth: bool,
    /// The DER SubjectPublicKeyInfo.
    pub public_key_info: Vec<u8>,
}

impl CertInfo {
    /// Reads the first certificate of PEM text.
    pub fn from_pem(pem: &str) -> std::result::Result<CertInfo, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("no PEM certificate: {e}"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!(
                "a {:?} where a CERTIFICATE was expected",
                pem.label
            ));
        }
        CertInfo::from_der(&pem.contents)
    }

    /// Reads a DER certificate (as a TLS peer presents it).
    pub fn from_der(der: &[u8]) -> std::result::Result<CertInfo, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("bad certificate: {e}"))?;
        let strings = |attrs: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attrs.as_str().map(str::to_owned).ok()
        };
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(strings)
            .unwrap_or_default();
        let organizations = subject.iter_organization().filter_map(strings).collect();
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(names)) = cert.subject_alternative_name() {
            for name in &names.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let (server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(usage)) => (
                usage.value.server_auth || usage.value.any,
                usage.value.client_auth || usage.value.any,
            ),
            _ => (false, false),
        };
        let time = |t: x509_parser::time::ASN1Time| {
            let seconds = t.timestamp();
            if seconds >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(CertInfo {
            common_name,
            organizations,
            dns_names,
            ip_addresses,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            is_ca: cert.is_ca(),
            server_auth,
            client_auth,
            public_key_info: cert.public_key().raw.to_vec(),
        })
    }

    /// Whether it is in the last `fraction` of its life (or past it) at `now`:
    /// time to renew it.
    pub fn due_for_renewal(&self, now: SystemTime, fraction: f64) -> bool {
        let Ok(life) = self.not_after.duration_since(self.not_before) else {
            return true;
        };
        let renew_at = self.not_before + life.mul_f64((1.0 - fraction).clamp(0.0, 1.0));
        now >= renew_at
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_server_certificate_covers_its_names_and_is_signed_by_its_ca() {
        let ca = Ca::generate("loom-ca").unwrap();
        let names = [
            "127.0.0.1".to_owned(),
            "localhost".into(),
            "::1".into(),
            "node-a".into(),
        ];
        let profile = Profile::server("loom-apiserver", &names);
        let issued = ca.issue(&profile).unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.common_name, "loom-apiserver");
        assert_eq!(info.dns_names, ["localhost", "node-a"]);
        assert_eq!(
            info.ip_addresses,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(info.server_auth && !info.client_auth && !info.is_ca);
        assert!(profile.is_met_by(&info));
        assert!(!Profile::server("loom-apiserver", &["10.0.0.9".to_owned()]).is_met_by(&info));
        assert!(ca.signed(&issued.cert_pem));
        assert!(!Ca::generate("other").unwrap().signed(&issued.cert_pem));
    }

    #[test]
    fn a_client_certificate_names_its_user_and_group() {
        let ca = Ca::generate("loom-ca").unwrap();
        let issued = ca
            .issue(&Profile::client("alice", Some("system:masters")))
            .unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.common_name, "alice");
        assert_eq!(info.organizations, ["system:masters"]);
        assert!(info.client_auth && !info.server_auth);
    }

    #[test]
    fn a_ca_loads_back_from_pem_and_refuses_a_key_not_its_own() {
        let ca = Ca::generate("loom-ca").unwrap();
        let loaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_hash(), ca.cert_hash());
        let issued = loaded.issue(&Profile::client("bob", None)).unwrap();
        assert!(ca.signed(&issued.cert_pem));

        let other = Ca::generate("other").unwrap();
        let error = Ca::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(error.contains("does not belong"), "{error}");
        let leaf = ca.issue(&Profile::client("bob", None)).unwrap();
        let error = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(error.contains("not a CA"), "{error}");
        assert!(Ca::from_pem("garbage", ca.key_pem()).is_err());
        assert!(Ca::from_pem(ca.cert_pem(), "garbage").is_err());
    }

    #[test]
    fn the_ca_hash_is_the_sha256_of_its_public_key() {
        let ca = Ca::generate("loom-ca").unwrap();
        let info = CertInfo::from_pem(ca.cert_pem()).unwrap();
        let hash = ca.cert_hash();
        assert_eq!(hash, public_key_hash(&info.public_key_info));
        assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
    }

    #[test]
    fn a_signed_request_gets_the_approved_subject_not_the_asked_one() {
        let ca = Ca::generate("loom-ca").unwrap();
        // The request asks to be an administrator.
        let (request_pem, key_pem) =
            request(&Profile::client("system:node:a", Some("system:masters"))).unwrap();
        let approved = Profile::client("system:node:a", Some("system:nodes"));
        let cert = ca.sign_request(&request_pem, &approved).unwrap();
        let info = CertInfo::from_pem(&cert).unwrap();
        assert_eq!(info.organizations, ["system:nodes"]);
        // The certificate is for the requester's key.
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(info.public_key_info, key.subject_public_key_info());
        assert!(ca.signed(&cert));
        assert!(matches!(
            ca.sign_request("not a request", &approved),
            Err(Error::Bad(_))
        ));
    }

    #[test]
    fn a_request_names_its_subject_and_junk_is_refused() {
        let (csr, _key) = request(&Profile::client("system:node:a", Some("system:nodes"))).unwrap();
        let info = RequestInfo::from_pem(&csr).unwrap();
        assert_eq!(info.common_name, "system:node:a");
        assert_eq!(info.organizations, ["system:nodes"]);
        assert_eq!(info.alt_names, 0);
        assert!(RequestInfo::from_pem("junk").is_err());
        let ca = Ca::generate("test").unwrap();
        assert!(RequestInfo::from_pem(ca.cert_pem()).is_err());
        // A request whose body was changed after it was signed.
        let tampered = csr.replacen("A", "B", 1);
        assert!(RequestInfo::from_pem(&tampered).is_err());
        assert_eq!(sha256(b"abc").len(), "sha256:".len() + 64);
    }

    #[test]
    fn a_node_serving_request_names_the_node_and_its_addresses() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let profile = Profile::node_serving("node-a", &[ip]);
        let (csr, _key) = request(&profile).unwrap();
        let info = RequestInfo::from_pem(&csr).unwrap();
        assert_eq!(info.common_name, "system:node:node-a");
        assert_eq!(info.organizations, ["system:nodes"]);
        assert_eq!(info.dns_names, ["node-a"]);
        assert_eq!(info.ip_addresses, [ip]);
        assert_eq!(info.alt_names, 2);
        let ca = Ca::generate("loom-ca").unwrap();
        let issued = ca.issue(&profile).unwrap();
        let cert = CertInfo::from_pem(&issued.cert_pem).unwrap();
        assert!(profile.is_met_by(&cert) && cert.server_auth && !cert.client_auth);
        assert_eq!(cert.dns_names, ["node-a"]);
    }

    #[test]
    fn renewal_is_due_in_the_last_fraction_of_a_life() {
        let ca = Ca::generate("loom-ca").unwrap();
        let issued = ca
            .issue(&Profile::client("n", None).valid_for(Duration::from_secs(1000 * 3600)))
            .unwrap();
        let info = CertInfo::from_pem(&issued.cert_pem).unwrap();
        let now = SystemTime::now();
        assert!(!info.due_for_renewal(now, 0.2));
        assert!(info.due_for_renewal(now + Duration::from_secs(900 * 3600), 0.2));
        assert!(info.due_for_renewal(now + Duration::from_secs(2000 * 3600), 0.2));
    }

    #[test]
    fn a_service_account_key_pair_is_pkcs8_and_spki() {
        let (private, public) = signing_key_pair().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn bad_names_are_refused_not_panicked_on() {
        let ca = Ca::generate("loom-ca").unwrap();
        for bad in [
            "bad name\u{0}",
            "a..b",
            "-a",
            "a_b",
            &"x".repeat(64),
            "é.example",
        ] {
            let error = ca
                .issue(&Profile::server("x", &[bad.to_owned()]))
                .unwrap_err();
            assert!(
                error.to_string().contains("neither an IP"),
                "{bad}: {error}"
            );
        }
        ca.issue(&Profile::server("x", &["node-1.loom.local".to_owned()]))
            .unwrap();
    }
}
