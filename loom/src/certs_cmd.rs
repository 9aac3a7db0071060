//! `loom certs`: the cluster's certificates in one directory, made once and
//! kept (as `kubeadm init phase certs`): the CA, the API server's serving
//! certificate, an administrator's client certificate and the key pair that
//! signs service-account tokens.

use std::path::PathBuf;

use anyhow::Context as _;
use pki::{ClusterPki, Profile};

/// `loom certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The directory (made, owner only, if missing).
    #[arg(long, default_value = "/var/lib/loom/pki")]
    dir: PathBuf,
    /// More names the serving certificate is valid for (IP addresses or DNS
    /// names), besides loopback, `localhost` and this host's name.
    #[arg(long = "tls-san", value_delimiter = ',')]
    sans: Vec<String>,
}

/// The names a serving certificate of this host covers: loopback, this
/// host's name and `extra`.
fn serving_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["127.0.0.1", "::1", "localhost"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    // Repeats are dropped by `Profile::server`.
    names.extend(extra.iter().map(|n| n.trim().to_owned()));
    names.retain(|n| !n.is_empty());
    names
}

/// Makes what is missing, reissues what no longer fits, and prints where
/// everything is.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let pki = ClusterPki::ensure(&args.dir)?;
    let serving = pki
        .ensure_credential(
            "apiserver",
            &Profile::server("loom-apiserver", &serving_names(&args.sans)),
        )
        .context("--tls-san")?;
    let admin = pki.ensure_credential(
        "admin",
        &Profile::client("loom-admin", Some("system:masters")),
    )?;
    let (sa_key, sa_pub) = pki.service_account_keys();
    println!("ca certificate:           {}", pki.ca_cert().display());
    println!("ca public key hash:       {}", pki.ca().cert_hash());
    println!(
        "serving certificate:      {} (key {})",
        serving.cert.display(),
        serving.key.display()
    );
    println!(
        "admin client certificate: {} (key {})",
        admin.cert.display(),
        admin.key.display()
    );
    println!(
        "service-account keys:     {} (public {})",
        sa_key.display(),
        sa_pub.display()
    );
    Ok(())
}
