//! Service-account tokens: ES256 JWTs with Kubernetes' claims, minted by
//! TokenRequest with the signing key and verified with the public keys every
//! API server of the cluster shares (`--service-account-signing-key-file`,
//! `--service-account-key-file`).

use std::path::{Path, PathBuf};

use api_types::ServiceAccount;
use api_types::service_account::{BoundObjectReference, SERVICE_ACCOUNTS_GROUP};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Kubernetes' default issuer (`--service-account-issuer`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc";
/// The shortest token a TokenRequest may ask for (Kubernetes' 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The lifetime of a token when a TokenRequest names none.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The longest token minted; a longer request is cut to this.
pub const MAX_EXPIRATION_SECONDS: i64 = 48 * 3600;
/// Clock skew allowed between API servers when checking `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// Why the service-account keys cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("{}: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No public key to verify with.
    #[error("service-account tokens need at least one public key (--service-account-key-file)")]
    NoPublicKey,
}

/// The claims of a service-account token, named as Kubernetes names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued it.
    pub iss: String,
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub sub: String,
    /// Who may accept it.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// The token's id.
    #[serde(default)]
    pub jti: String,
    /// The account (and bound object).
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The `kubernetes.io` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The account's namespace.
    pub namespace: String,
    /// The account.
    pub serviceaccount: ObjectClaim,
    /// The object the token is bound to, if any, as `{kind, name, uid}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<BoundClaim>,
}

/// A name and uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectClaim {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// The object a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundClaim {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    #[serde(default)]
    pub uid: String,
}

/// The keys, issuer and audiences of service-account tokens.
#[derive(Clone)]
pub struct ServiceAccountTokens {
    /// The `iss` of minted tokens, and the only one accepted.
    pub issuer: String,
    /// Audiences the API server accepts (a token must name one); also the
    /// audience of a TokenRequest that names none. Default: the issuer.
    pub audiences: Vec<String>,
    verifying: Vec<DecodingKey>,
    signing: Option<EncodingKey>,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("public_keys", &self.verifying.len())
            .field("signs", &self.signing.is_some())
            .finish()
    }
}

/// Why a token was refused (said in the 401; never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl ServiceAccountTokens {
    /// From PEM texts: SubjectPublicKeyInfo public keys to verify with, and
    /// the PKCS #8 private key to sign with (`None`: this server verifies only).
    /// `source` names where they came from in errors.
    pub fn from_pem(
        issuer: &str,
        public_keys: &[(PathBuf, String)],
        signing_key: Option<(PathBuf, String)>,
    ) -> Result<Self, KeyError> {
        let mut verifying = Vec::new();
        for (path, pem) in public_keys {
            if pem.contains("PRIVATE KEY") {
                return Err(KeyError::Key {
                    path: path.clone(),
                    message: "a private key where the public key (PUBLIC KEY PEM) was expected"
                        .to_owned(),
                });
            }
            let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| KeyError::Key {
                path: path.clone(),
                message: format!("not an ECDSA P-256 public key in PEM: {e}"),
            })?;
            verifying.push(key);
        }
        if verifying.is_empty() {
            return Err(KeyError::NoPublicKey);
        }
        let signing =
            match signing_key {
                None => None,
                Some((path, pem)) => Some(EncodingKey::from_ec_pem(pem.as_bytes()).map_err(
                    |e| KeyError::Key {
                        path,
                        message: format!("not an ECDSA P-256 private key in PKCS #8 PEM: {e}"),
                    },
                )?),
            };
        Ok(ServiceAccountTokens {
            issuer: issuer.to_owned(),
            audiences: vec![issuer.to_owned()],
            verifying,
            signing,
        })
    }

    /// From files (`--service-account-key-file`, repeated, and
    /// `--service-account-signing-key-file`).
    pub fn from_files(
        issuer: &str,
        public_keys: &[PathBuf],
        signing_key: Option<&Path>,
    ) -> Result<Self, KeyError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|text| (path.to_owned(), text))
                .map_err(|source| KeyError::Read {
                    path: path.to_owned(),
                    source,
                })
        };
        let public = public_keys
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let signing = signing_key.map(read).transpose()?;
        let tokens = Self::from_pem(issuer, &public, signing)?;
        // A signing key whose tokens no key verifies is a configuration error
        // found now rather than by every client later.
        if let Some(path) = signing_key
            && tokens.signing.is_some()
        {
            let claims = tokens.claims("kube-system", "check", "check", &[], 600, None, Utc::now());
            let verified = tokens
                .sign(&claims)
                .map_err(|message| KeyError::Key {
                    path: path.to_owned(),
                    message,
                })
                .and_then(|token| {
                    tokens
                        .verify_signature(&token, &tokens.audiences)
                        .map_err(|_| KeyError::Key {
                            path: path.to_owned(),
                            message:
                                "no --service-account-key-file verifies the tokens this key signs"
                                    .to_owned(),
                        })
                });
            verified?;
        }
        Ok(tokens)
    }

    /// Whether this server can mint tokens.
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    /// The claims of a token for the account `name` (uid `uid`) in
    /// `namespace`, valid from `now` for `seconds`, for `audiences` (none:
    /// the API server's).
    #[allow(clippy::too_many_arguments)]
    pub fn claims(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        bound: Option<&BoundObjectReference>,
        now: DateTime<Utc>,
    ) -> Claims {
        let issued = now.timestamp();
        Claims {
            iss: self.issuer.clone(),
            sub: ServiceAccount::user_name(namespace, name),
            aud: if audiences.is_empty() {
                self.audiences.clone()
            } else {
                audiences.to_vec()
            },
            exp: issued + seconds,
            iat: issued,
            nbf: issued,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaims {
                namespace: namespace.to_owned(),
                serviceaccount: ObjectClaim {
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                },
                bound: bound.map(|b| BoundClaim {
                    kind: b.kind.clone(),
                    name: b.name.clone(),
                    uid: b.uid.clone(),
                }),
            },
        }
    }

    /// Signs claims into a token.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let Some(key) = &self.signing else {
            return Err(
                "this API server has no service-account signing key (--service-account-signing-key-file)"
                    .to_owned(),
            );
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, key)
            .map_err(|e| format!("cannot sign the token: {e}"))
    }

    /// Checks a token's signature, issuer, audience (one of `audiences`),
    /// expiry and not-before, and the shape of its claims. Whether its
    /// account still exists is the caller's to check.
    pub fn verify_signature(&self, token: &str, audiences: &[String]) -> Result<Claims, Refused> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let mut last = None;
        for key in &self.verifying {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return check_subject(data.claims),
                Err(error) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let why = match error.kind() {
                        // Another key may have signed it.
                        ErrorKind::InvalidSignature => {
                            last = Some("the token's signature is not valid".to_owned());
                            continue;
                        }
                        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                        ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
                        ErrorKind::InvalidAudience => {
                            "the token is not for this audience".to_owned()
                        }
                        ErrorKind::InvalidIssuer => "the token has another issuer".to_owned(),
                        ErrorKind::InvalidAlgorithm => {
                            "the token is not signed with ES256".to_owned()
                        }
                        ErrorKind::MissingRequiredClaim(claim) => {
                            format!("the token has no {claim} claim")
                        }
                        _ => "the token is malformed".to_owned(),
                    };
                    return Err(Refused(why));
                }
            }
        }
        Err(Refused(last.unwrap_or_else(|| {
            "the token's signature is not valid".to_owned()
        })))
    }
}

/// Whether verified claims are still in their time at `now` (with the same
/// leeway the verification allows).
pub fn in_time(claims: &Claims, now: DateTime<Utc>) -> bool {
    let now = now.timestamp();
    let leeway = LEEWAY_SECONDS as i64;
    claims.exp > now - leeway && claims.nbf <= now + leeway
}

/// The subject must be the account the `kubernetes.io` claim names.
fn check_subject(claims: Claims) -> Result<Claims, Refused> {
    let k = &claims.kubernetes;
    if claims.sub != ServiceAccount::user_name(&k.namespace, &k.serviceaccount.name)
        || k.serviceaccount.uid.is_empty()
    {
        return Err(Refused(
            "the token's subject does not match its service account".to_owned(),
        ));
    }
    Ok(claims)
}

/// The user a verified token's account is, with its groups.
pub fn user(claims: &Claims) -> crate::http::User {
    let k = &claims.kubernetes;
    let mut groups = vec![
        SERVICE_ACCOUNTS_GROUP.to_owned(),
        format!("{SERVICE_ACCOUNTS_GROUP}:{}", k.namespace),
    ];
    super::add_authenticated(&mut groups);
    let mut extra = std::collections::BTreeMap::new();
    if !claims.jti.is_empty() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_owned(),
            vec![format!("JTI={}", claims.jti)],
        );
    }
    if let Some(bound) = &k.bound {
        let kind = bound.kind.to_ascii_lowercase();
        extra.insert(
            format!("authentication.kubernetes.io/{kind}-name"),
            vec![bound.name.clone()],
        );
        if !bound.uid.is_empty() {
            extra.insert(
                format!("authentication.kubernetes.io/{kind}-uid"),
                vec![bound.uid.clone()],
            );
        }
    }
    crate::http::User {
        name: claims.sub.clone(),
        uid: k.serviceaccount.uid.clone(),
        groups,
        extra,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tokens() -> ServiceAccountTokens {
        let (private, public) = pki::signing_key_pair().unwrap();
        ServiceAccountTokens::from_pem(
            DEFAULT_ISSUER,
            &[("sa.pub".into(), public)],
            Some(("sa.key".into(), private)),
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_and_names_its_account() {
        let tokens = tokens();
        let claims = tokens.claims("ns", "builder", "u-1", &[], 3600, None, Utc::now());
        let token = tokens.sign(&claims).unwrap();
        let verified = tokens.verify_signature(&token, &tokens.audiences).unwrap();
        assert_eq!(verified, claims);
        let user = user(&verified);
        assert_eq!(user.name, "system:serviceaccount:ns:builder");
        assert_eq!(user.uid, "u-1");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        let raw: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(raw["kubernetes.io"]["serviceaccount"]["name"], "builder");
        assert_eq!(raw["aud"][0], DEFAULT_ISSUER);
    }

    #[test]
    fn expired_foreign_wrong_audience_and_malformed_tokens_are_refused() {
        let tokens = tokens();
        let old = Utc::now() - chrono::Duration::hours(3);
        let expired = tokens
            .sign(&tokens.claims("ns", "a", "u", &[], 3600, None, old))
            .unwrap();
        let refused = |token: &str| {
            tokens
                .verify_signature(token, &tokens.audiences)
                .unwrap_err()
                .0
        };
        assert_eq!(refused(&expired), "the token has expired");
        let future = Utc::now() + chrono::Duration::hours(1);
        let early = tokens
            .sign(&tokens.claims("ns", "a", "u", &[], 3600, None, future))
            .unwrap();
        assert_eq!(refused(&early), "the token is not valid yet");
        let other = self::tokens();
        let foreign = other
            .sign(&other.claims("ns", "a", "u", &[], 3600, None, Utc::now()))
            .unwrap();
        assert_eq!(refused(&foreign), "the token's signature is not valid");
        let elsewhere = tokens
            .sign(&tokens.claims(
                "ns",
                "a",
                "u",
                &["vault".to_owned()],
                3600,
                None,
                Utc::now(),
            ))
            .unwrap();
        assert_eq!(refused(&elsewhere), "the token is not for this audience");
        for junk in ["", "a.b.c", "not-a-jwt", "....", "eyJhbGciOiJub25lIn0.e30."] {
            assert!(!refused(junk).is_empty());
        }
        let mut lying = tokens.claims("ns", "a", "u", &[], 3600, None, Utc::now());
        lying.sub = "system:serviceaccount:kube-system:admin".to_owned();
        let lying = tokens.sign(&lying).unwrap();
        assert!(refused(&lying).contains("subject"));
    }

    #[test]
    fn a_token_of_another_algorithm_is_refused_even_keyed_with_the_public_key() {
        let (private, public) = pki::signing_key_pair().unwrap();
        let tokens = ServiceAccountTokens::from_pem(
            DEFAULT_ISSUER,
            &[("sa.pub".into(), public.clone())],
            Some(("sa.key".into(), private)),
        )
        .unwrap();
        let claims = tokens.claims("ns", "a", "u", &[], 3600, None, Utc::now());
        // The classic confusion: HMAC keyed with the (public) verification key.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        let refused = tokens
            .verify_signature(&forged, &tokens.audiences)
            .unwrap_err();
        assert_eq!(refused.0, "the token is not signed with ES256");
    }

    #[test]
    fn remembered_claims_are_in_time_only_between_nbf_and_exp() {
        let tokens = tokens();
        let now = Utc::now();
        let claims = tokens.claims("ns", "a", "u", &[], 600, None, now);
        assert!(in_time(&claims, now));
        assert!(in_time(&claims, now + chrono::Duration::seconds(599)));
        assert!(!in_time(&claims, now + chrono::Duration::seconds(610)));
        assert!(!in_time(&claims, now - chrono::Duration::seconds(60)));
    }

    #[test]
    fn a_private_key_given_as_the_public_one_is_refused_naming_the_file() {
        let (private, _) = pki::signing_key_pair().unwrap();
        let error =
            ServiceAccountTokens::from_pem(DEFAULT_ISSUER, &[("sa.pub".into(), private)], None)
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("sa.pub: a private key"), "{error}");
        let error = ServiceAccountTokens::from_pem(
            DEFAULT_ISSUER,
            &[("sa.pub".into(), "junk".to_owned())],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("sa.pub: not an ECDSA"), "{error}");
    }
}
