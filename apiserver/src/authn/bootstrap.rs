//! Bootstrap tokens, as Kubernetes' bootstrap authenticator: a bearer token
//! `<id>.<secret>` whose BootstrapToken object `<id>` holds the SHA-256 of the
//! secret and has not expired is the user `system:bootstrap:<id>` in
//! `system:bootstrappers`. The one thing RBAC lets that group do is ask for a
//! node's certificate (a CertificateSigningRequest, see
//! [`crate::certificates`]).

use api_types::certificates::BOOTSTRAPPERS_GROUP;
use api_types::{BootstrapToken, BootstrapTokenValue};
use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::http::User;
use crate::store::Store;

/// Whether two strings are equal, in a time that does not depend on where
/// they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `token` is of a bootstrap token's shape (then no other
/// authenticator takes it).
pub fn is_bootstrap_token(token: &str) -> bool {
    BootstrapTokenValue::parse(token).is_some()
}

/// Checks a token against its stored object at `now`: the user, or why not.
pub fn check(
    token: &BootstrapTokenValue,
    stored: Option<&BootstrapToken>,
    now: DateTime<Utc>,
) -> Result<User, String> {
    let unknown = || format!("the bootstrap token {:?} is not known", token.id);
    let stored = stored.ok_or_else(unknown)?;
    if stored.metadata.deletion_timestamp.is_some() {
        return Err(unknown());
    }
    if !same(
        &stored.spec.secret_hash,
        &pki::sha256(token.secret.as_bytes()),
    ) {
        return Err(unknown());
    }
    if let Some(expiration) = stored.spec.expiration
        && expiration <= now
    {
        return Err(format!(
            "the bootstrap token {:?} expired at {}",
            token.id,
            expiration.to_rfc3339()
        ));
    }
    let mut groups = vec![BOOTSTRAPPERS_GROUP.to_owned()];
    super::add_authenticated(&mut groups);
    Ok(User {
        name: token.user_name(),
        uid: String::new(),
        groups,
        extra: Default::default(),
    })
}

/// Who a bootstrap token is, from the BootstrapToken cache (or the store,
/// while the cache has not seen it).
pub async fn authenticate(
    catalog: &Catalog,
    store: &dyn Store,
    token: &str,
) -> Result<User, String> {
    let token = BootstrapTokenValue::parse(token)
        .ok_or_else(|| "the bearer token is not a bootstrap token".to_owned())?;
    let tokens = catalog.builtin_resource::<BootstrapToken>();
    let key = tokens.key("", &token.id);
    let object = match tokens.cache.get(&key) {
        Some(cached) => Some(cached.value()),
        None => match store.get(&key).await {
            Ok(found) => found.and_then(|kv| serde_json::from_slice(&kv.value).ok()),
            Err(error) => {
                tracing::warn!(%error, "cannot read a bootstrap token to authenticate it");
                return Err("the bootstrap token cannot be read now".to_owned());
            }
        },
    };
    let stored: Option<BootstrapToken> = object.and_then(|o| serde_json::from_value(o).ok());
    check(&token, stored.as_ref(), Utc::now())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stored(secret: &str, expiration: Option<DateTime<Utc>>) -> BootstrapToken {
        let mut token = BootstrapToken::default();
        token.metadata.name = "abcdef".to_owned();
        token.spec.secret_hash = pki::sha256(secret.as_bytes());
        token.spec.expiration = expiration;
        token
    }

    #[test]
    fn a_known_unexpired_token_is_a_bootstrapper_and_nothing_else_is() {
        let now = Utc::now();
        let token = BootstrapTokenValue::parse("abcdef.0123456789abcdef").unwrap();
        let later = Some(now + chrono::Duration::hours(1));
        let user = check(&token, Some(&stored("0123456789abcdef", later)), now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            ["system:bootstrappers", "system:authenticated"]
        );
        assert!(check(&token, Some(&stored("0123456789abcdef", None)), now).is_ok());

        let wrong = check(&token, Some(&stored("fedcba9876543210", later)), now).unwrap_err();
        assert!(wrong.contains("not known"), "{wrong}");
        assert!(check(&token, None, now).is_err());
        let past = Some(now - chrono::Duration::seconds(1));
        let expired = check(&token, Some(&stored("0123456789abcdef", past)), now).unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        // Never the secret in a reason.
        assert!(!wrong.contains("0123456789abcdef") && !expired.contains("0123456789abcdef"));
    }

    #[test]
    fn equality_is_plain_equality() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
