//! The nftables rules sending connections to the service range to the
//! proxy's listener: from the node's tasks (coming in on the task bridge) and
//! from the node itself. Replaced whole in one transaction, so a restarted
//! proxy takes over without a moment without rules; removed when it stops.

use std::io::{self, Write as _};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

/// The default table (family `ip`).
pub const DEFAULT_TABLE: &str = "loom_proxy";

/// nft: `/usr/sbin/nft`, or whatever `PATH` finds.
fn nft_program() -> &'static str {
    if std::path::Path::new("/usr/sbin/nft").is_file() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}

/// Checks a name used in the rules (a table or an interface): 1 to 31 bytes
/// of letters, digits, `-` and `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=31).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: must be 1 to 31 characters of letters, digits, '-' and '_'"
        ))
    }
}

/// The rules: TCP to `service_cidr` coming in on one of `bridges`, or made on
/// the node, goes to local port `port`.
pub fn rules(table: &str, service_cidr: Ipv4Net, port: u16, bridges: &[String]) -> String {
    let mut out = format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr {service_cidr} meta l4proto tcp redirect to :{port}\n\
         \t}}\n"
    );
    if !bridges.is_empty() {
        let names: Vec<String> = bridges.iter().map(|b| format!("\"{b}\"")).collect();
        out.push_str(&format!(
            "\tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname {{ {} }} ip daddr {service_cidr} meta l4proto tcp redirect to :{port}\n\
             \t}}\n",
            names.join(", ")
        ));
    }
    out.push_str("}\n");
    out
}

fn nft(input: &str) -> io::Result<()> {
    let mut child = Command::new(nft_program())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Installs (or replaces) the rules.
pub fn install(
    table: &str,
    service_cidr: Ipv4Net,
    port: u16,
    bridges: &[String],
) -> io::Result<()> {
    check_name(table).map_err(io::Error::other)?;
    for bridge in bridges {
        check_name(bridge).map_err(io::Error::other)?;
    }
    nft(&rules(table, service_cidr, port, bridges))
}

/// Removes the rules; nothing if there are none.
pub fn remove(table: &str) -> io::Result<()> {
    check_name(table).map_err(io::Error::other)?;
    nft(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules_redirect_the_range_from_tasks_and_the_node_only() {
        let rules = rules(
            "loom_proxy",
            "10.96.0.0/16".parse().unwrap(),
            15001,
            &["loom0".to_owned()],
        );
        assert!(rules.starts_with("table ip loom_proxy {}\ndelete table ip loom_proxy\n"));
        assert!(rules.contains("ip daddr 10.96.0.0/16 meta l4proto tcp redirect to :15001"));
        assert!(
            rules.contains("iifname { \"loom0\" } ip daddr 10.96.0.0/16"),
            "{rules}"
        );
        let node_only = super::rules("t", "10.96.0.0/16".parse().unwrap(), 1, &[]);
        assert!(!node_only.contains("prerouting"), "{node_only}");
    }

    #[test]
    fn names_that_could_inject_rules_are_refused() {
        for bad in ["", "a b", "a\"b", "a;b", "a}b", &"x".repeat(32)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name("loom_proxy-1").is_ok());
    }
}
