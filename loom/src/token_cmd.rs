//! `loom token create|list|delete`: bootstrap tokens through the API, as
//! `kubeadm token`. A token is `<id>.<secret>`; the API server stores the id
//! (the BootstrapToken's name) and only the secret's SHA-256, so the token is
//! shown once, with the command that joins a node with it.

use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use api_types::{BootstrapToken, BootstrapTokenValue};

use crate::node_cmd::ApiArgs;

/// `loom token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token, and print it with the command that joins a
    /// node with it.
    Create {
        /// How the administrator reaches the API server.
        #[command(flatten)]
        api: ApiArgs,
        /// How long it is accepted: `90s`, `30m`, `24h`, `7d`; `0` for ever.
        #[arg(long, default_value = "24h", value_parser = ttl)]
        ttl: Duration,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the bootstrap tokens (their ids; secrets are never kept).
    List {
        /// How the administrator reaches the API server.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a bootstrap token, by its id or the whole token.
    Delete {
        /// How the administrator reaches the API server.
        #[command(flatten)]
        api: ApiArgs,
        /// `<id>` or `<id>.<secret>`.
        token: String,
    },
}

/// A duration flag: a number and one of s, m, h, d; `0` alone.
fn ttl(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{value:?}: needs a unit (s, m, h or d), e.g. 24h"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?}: not a number and a unit, e.g. 24h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{value:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// `n` random characters of `[a-z0-9]`.
fn random_part(n: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut random = std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    let mut out = String::with_capacity(n);
    let mut byte = [0u8; 1];
    while out.len() < n {
        random
            .read_exact(&mut byte)
            .context("cannot read /dev/urandom")?;
        // 252 = 7 × 36: no character more likely than another.
        if byte[0] < 252 {
            out.push(char::from(ALPHABET[usize::from(byte[0] % 36)]));
        }
    }
    Ok(out)
}

/// The `sha256:` hash of the CA a client configuration trusts.
fn ca_hash(config: &client::Config) -> Option<String> {
    let ca = &config.tls.as_ref()?.ca_pem;
    let info = pki::CertInfo::from_pem(ca).ok()?;
    Some(pki::public_key_hash(&info.public_key_info))
}

/// Runs `loom token …`.
pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            api,
            ttl,
            description,
        } => {
            let config = api.config()?;
            let client = client::Client::new(config.clone())?;
            let token = BootstrapTokenValue {
                id: random_part(6)?,
                secret: random_part(16)?,
            };
            let object = BootstrapToken::new(
                &token.id,
                pki::sha256(token.secret.as_bytes()),
                (!ttl.is_zero()).then(|| std::time::SystemTime::now() + ttl),
                &description,
            );
            client::Api::<BootstrapToken>::all(client)
                .create(&client::PostParams::default(), &object)
                .await
                .context("cannot create the bootstrap token")?;
            let server = config.server.split(',').next().unwrap_or_default().trim();
            println!("{}", token.reveal());
            match ca_hash(&config) {
                Some(hash) => println!(
                    "join a node with:\n  loom nodelet --server {server} --token {} --ca-cert-hash {hash} --name NAME",
                    token.reveal()
                ),
                None => eprintln!(
                    "loom: the client trusts no CA (is {server} plain HTTP?): no --ca-cert-hash to print"
                ),
            }
        }
        TokenCommand::List { api } => {
            let tokens = client::Api::<BootstrapToken>::all(api.client()?)
                .list(&client::ListParams::default())
                .await
                .context("cannot list the bootstrap tokens")?;
            println!("{:<8} {:<30} DESCRIPTION", "ID", "EXPIRES");
            for token in tokens.items {
                let expires = token
                    .spec
                    .expiration
                    .map(|t| {
                        let mut when = t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
                        if std::time::SystemTime::from(t) <= std::time::SystemTime::now() {
                            when.push_str(" (expired)");
                        }
                        when
                    })
                    .unwrap_or_else(|| "<forever>".to_owned());
                println!(
                    "{:<8} {:<30} {}",
                    token.metadata.name, expires, token.spec.description
                );
            }
        }
        TokenCommand::Delete { api, token } => {
            let id = token.split('.').next().unwrap_or_default().to_owned();
            client::Api::<BootstrapToken>::all(api.client()?)
                .delete(&id, &client::DeleteParams::default())
                .await
                .with_context(|| format!("cannot delete the bootstrap token {id}"))?;
            println!("bootstrap token {id} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ttls_are_a_number_and_a_unit() {
        assert_eq!(ttl("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(ttl("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(ttl("0").unwrap(), Duration::ZERO);
        for bad in ["", "h", "24", "24x", "-1h", "1.5h"] {
            assert!(ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_token_has_the_bootstrap_shape() {
        let token = format!("{}.{}", random_part(6).unwrap(), random_part(16).unwrap());
        assert!(BootstrapTokenValue::parse(&token).is_some(), "{token}");
    }
}
