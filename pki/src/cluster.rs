//! The credential files of one cluster in one directory (as kubeadm's
//! `/etc/kubernetes/pki`): made once, kept, reissued only when they no longer
//! fit.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{KeyPair, PublicKeyData as _};

use crate::{
    Ca, CertInfo, Error, Profile, Result, read_file, signing_key_pair, write_private, write_public,
};

/// The CA's certificate.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The private key that signs service-account tokens.
pub const SERVICE_ACCOUNT_KEY: &str = "sa.key";
/// Its public key, which verifies them.
pub const SERVICE_ACCOUNT_PUB: &str = "sa.pub";
/// A certificate is issued again in the last fifth of its life.
const RENEW_FRACTION: f64 = 0.2;

/// A certificate and its private key, as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (`0600`).
    pub key: PathBuf,
}

/// The PKI of a cluster: its CA and the files issued by it, in one directory.
#[derive(Debug)]
pub struct ClusterPki {
    dir: PathBuf,
    ca: Ca,
}

impl ClusterPki {
    /// Opens the PKI in `dir`, making the directory (`0700`), the CA and the
    /// service-account key pair if they do not exist yet. A CA certificate
    /// whose key is gone, or files that do not parse, are errors naming the
    /// file: a cluster's CA is never replaced silently.
    pub fn ensure(dir: &Path) -> Result<ClusterPki> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| Error::Write {
                path: dir.to_owned(),
                source,
            },
        )?;
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let ca = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert = read_file(&cert_path)?;
                let key = read_file(&key_path)?;
                Ca::from_pem(&cert, &key).map_err(|message| Error::Invalid {
                    path: cert_path.clone(),
                    message,
                })?
            }
            (true, false) => {
                return Err(Error::Invalid {
                    path: key_path,
                    message: format!(
                        "the CA's private key is missing beside {}: restore it from a backup \
                         (a new CA would invalidate every credential of the cluster)",
                        cert_path.display()
                    ),
                });
            }
            // Nothing was issued by a CA whose certificate was never written: a
            // key alone is what a crash between the two writes leaves.
            (false, _) => {
                let ca = Ca::generate("loom-ca")?;
                write_private(&key_path, ca.key_pem())?;
                write_public(&cert_path, ca.cert_pem())?;
                ca
            }
        };
        let pki = ClusterPki {
            dir: dir.to_owned(),
            ca,
        };
        pki.ensure_service_account_keys()?;
        Ok(pki)
    }

    fn ensure_service_account_keys(&self) -> Result<()> {
        let (private_path, public_path) = self.service_account_keys();
        if !private_path.exists() {
            let (private, public) = signing_key_pair()?;
            write_private(&private_path, &private)?;
            return write_public(&public_path, &public);
        }
        let private = read_file(&private_path)?;
        let key = KeyPair::from_pem(&private).map_err(|e| Error::Invalid {
            path: private_path.clone(),
            message: format!("not a private key: {e}"),
        })?;
        let public = key.public_key_pem();
        match std::fs::read_to_string(&public_path) {
            Ok(stored) if stored == public => Ok(()),
            // Missing or not this key's: the private key is what signs.
            _ => write_public(&public_path, &public),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificate's file.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// The service-account signing key's file and its public key's.
    pub fn service_account_keys(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join(SERVICE_ACCOUNT_KEY),
            self.dir.join(SERVICE_ACCOUNT_PUB),
        )
    }

    /// `NAME.crt` and `NAME.key` for `profile`, issued again when missing,
    /// unreadable, not by this CA, not what `profile` asks (a name added to a
    /// serving certificate, say) or in the last fifth of their life. `name` is
    /// a file name: lowercase letters, digits and `-`.
    pub fn ensure_credential(&self, name: &str, profile: &Profile) -> Result<Credential> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Bad(format!(
                "credential name {name:?}: only lowercase letters, digits and '-'"
            )));
        }
        let credential = Credential {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        if !self.fits(&credential, profile) {
            let issued = self.ca.issue(profile)?;
            write_private(&credential.key, &issued.key_pem)?;
            write_public(&credential.cert, &issued.cert_pem)?;
        }
        Ok(credential)
    }

    fn fits(&self, credential: &Credential, profile: &Profile) -> bool {
        let (Ok(cert), Ok(key)) = (
            std::fs::read_to_string(&credential.cert),
            std::fs::read_to_string(&credential.key),
        ) else {
            return false;
        };
        let (Ok(info), Ok(key)) = (CertInfo::from_pem(&cert), KeyPair::from_pem(&key)) else {
            return false;
        };
        self.ca.signed(&cert)
            && key.subject_public_key_info() == info.public_key_info
            && profile.is_met_by(&info)
            && !info.due_for_renewal(SystemTime::now(), RENEW_FRACTION)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        let first = ClusterPki::ensure(&pki_dir).unwrap();
        let mode = std::fs::metadata(&pki_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let profile = Profile::server("loom-apiserver", &["127.0.0.1".to_owned()]);
        let serving = first.ensure_credential("apiserver", &profile).unwrap();
        let cert = std::fs::read_to_string(&serving.cert).unwrap();
        let sa = std::fs::read_to_string(first.service_account_keys().0).unwrap();

        let again = ClusterPki::ensure(&pki_dir).unwrap();
        assert_eq!(again.ca().cert_hash(), first.ca().cert_hash());
        again.ensure_credential("apiserver", &profile).unwrap();
        assert_eq!(std::fs::read_to_string(&serving.cert).unwrap(), cert);
        assert_eq!(
            std::fs::read_to_string(again.service_account_keys().0).unwrap(),
            sa
        );

        // A new name: issued again, still by the same CA.
        let wider = Profile::server("loom-apiserver", &["127.0.0.1".into(), "10.1.2.3".into()]);
        again.ensure_credential("apiserver", &wider).unwrap();
        let reissued = std::fs::read_to_string(&serving.cert).unwrap();
        assert_ne!(reissued, cert);
        assert!(again.ca().signed(&reissued));
    }

    #[test]
    fn a_lost_ca_key_is_an_error_naming_it_and_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::ensure(dir.path()).unwrap();
        let cert = std::fs::read_to_string(pki.ca_cert()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let error = ClusterPki::ensure(dir.path()).unwrap_err();
        assert!(error.to_string().contains("ca.key"), "{error}");
        assert_eq!(std::fs::read_to_string(pki.ca_cert()).unwrap(), cert);
    }

    #[test]
    fn corrupt_files_are_errors_naming_them_or_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::ensure(dir.path()).unwrap();
        let client = Profile::client("admin", Some("system:masters"));
        let admin = pki.ensure_credential("admin", &client).unwrap();
        // An issued credential that does not parse is issued again.
        std::fs::write(&admin.key, "garbage").unwrap();
        pki.ensure_credential("admin", &client).unwrap();
        let key = std::fs::read_to_string(&admin.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        // A corrupt CA is not.
        std::fs::write(dir.path().join(CA_CERT), "garbage").unwrap();
        let error = ClusterPki::ensure(dir.path()).unwrap_err();
        assert!(error.to_string().contains("ca.crt"), "{error}");
        std::fs::write(dir.path().join(SERVICE_ACCOUNT_KEY), "garbage").unwrap();
        let other = tempfile::tempdir().unwrap();
        ClusterPki::ensure(other.path()).unwrap();
        std::fs::write(other.path().join(SERVICE_ACCOUNT_KEY), "garbage").unwrap();
        let error = ClusterPki::ensure(other.path()).unwrap_err();
        assert!(error.to_string().contains("sa.key"), "{error}");
    }

    #[test]
    fn a_crash_between_the_ca_key_and_its_certificate_makes_a_new_ca() {
        // What a kill between the two writes leaves: the key alone (nothing was
        // issued by a CA whose certificate was never written).
        let dir = tempfile::tempdir().unwrap();
        let first = ClusterPki::ensure(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT)).unwrap();
        let again = ClusterPki::ensure(dir.path()).unwrap();
        assert_ne!(again.ca().cert_hash(), first.ca().cert_hash());
        assert!(
            again.ca().signed(
                &again
                    .ca()
                    .issue(&Profile::client("x", None))
                    .unwrap()
                    .cert_pem
            )
        );
        // A service-account key without its public half gets it back.
        let (private, public) = again.service_account_keys();
        let before = std::fs::read_to_string(&public).unwrap();
        std::fs::remove_file(&public).unwrap();
        ClusterPki::ensure(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&public).unwrap(), before);
        assert!(private.exists());
    }

    #[test]
    fn a_credential_of_another_ca_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::ensure(dir.path()).unwrap();
        let client = Profile::client("admin", Some("system:masters"));
        let admin = pki.ensure_credential("admin", &client).unwrap();
        let foreign = Ca::generate("other").unwrap().issue(&client).unwrap();
        std::fs::write(&admin.cert, &foreign.cert_pem).unwrap();
        std::fs::write(&admin.key, &foreign.key_pem).unwrap();
        pki.ensure_credential("admin", &client).unwrap();
        assert!(
            pki.ca()
                .signed(&std::fs::read_to_string(&admin.cert).unwrap())
        );
    }

    #[test]
    fn credential_names_are_file_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::ensure(dir.path()).unwrap();
        let client = Profile::client("x", None);
        for bad in ["../x", "a/b", "", "A", ".hidden"] {
            assert!(
                matches!(pki.ensure_credential(bad, &client), Err(Error::Bad(_))),
                "{bad}"
            );
        }
    }
}
