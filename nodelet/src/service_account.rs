//! A task's service-account credentials, as the kubelet projects them: a
//! token bound to the task (TokenRequest, made by this node), the cluster's
//! CA and the namespace, in a directory of the task's that every run mounts
//! read-only at `/var/run/secrets/kubernetes.io/serviceaccount`; the token is
//! requested again at 80 % of its life while the task runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::{
    BoundObjectReference, Resource as _, ServiceAccount, Task, TokenRequest, TokenRequestSpec,
};
use chrono::{DateTime, Utc};
use client::{Api, Client, PostParams};

use crate::run::write_replace;

/// Where the files are mounted in a task.
pub const MOUNT_PATH: &str = client::config::SERVICE_ACCOUNT_DIR;
/// How long a task's token is asked to last.
pub const TOKEN_SECONDS: i64 = 3600;
/// The account of a task that names none.
pub const DEFAULT_ACCOUNT: &str = "default";

/// The account `task` runs as, if its token is to be mounted.
pub fn account_of(task: &Task) -> Option<&str> {
    if task.spec.automount_service_account_token == Some(false) {
        return None;
    }
    Some(match task.spec.service_account_name.as_str() {
        "" => DEFAULT_ACCOUNT,
        name => name,
    })
}

/// The directory holding `task_dir`'s credentials.
pub fn dir_of(task_dir: &Path) -> PathBuf {
    task_dir.join("serviceaccount")
}

/// Why the credentials could not be had: the task fails with this reason.
#[derive(Debug)]
pub struct Failure {
    /// `ServiceAccountNotFound` or `ServiceAccountTokenFailed`.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

/// Requests a token for `task` and writes `token`, `ca.crt`, `namespace` and
/// the token's expiry (`expires`, RFC 3339) into [`dir_of`] `task_dir`.
pub async fn project(client: &Client, task: &Task, task_dir: &Path) -> Result<PathBuf, Failure> {
    let Some(account) = account_of(task) else {
        return Err(Failure {
            reason: "ServiceAccountTokenFailed",
            message: "the task mounts no service-account token".to_owned(),
        });
    };
    let dir = dir_of(task_dir);
    let failed = |message: String| Failure {
        reason: "ServiceAccountTokenFailed",
        message,
    };
    std::fs::create_dir_all(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    let (token, expires) = request_token(client, task, account).await?;
    let ca = client
        .config()
        .tls
        .as_ref()
        .map(|tls| tls.ca_pem.clone())
        .unwrap_or_default();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        write_replace(&path, bytes).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        set_readable(&path).map_err(|e| failed(format!("{}: {e}", path.display())))
    };
    write("ca.crt", ca.as_bytes())?;
    write("namespace", task.metadata.namespace.as_bytes())?;
    write("token", token.as_bytes())?;
    write("expires", expires.to_rfc3339().as_bytes())?;
    Ok(dir)
}

/// Files readable by the task's user (the exec driver runs tasks unprivileged),
/// in a directory only its own runs mount.
fn set_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

async fn request_token(
    client: &Client,
    task: &Task,
    account: &str,
) -> Result<(String, DateTime<Utc>), Failure> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &task.metadata.namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                kind: Task::KIND.to_owned(),
                api_version: api_types::API_VERSION.to_owned(),
                name: task.metadata.name.clone(),
                uid: task.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    // A token request is a POST, which the client does not retry: an API
    // server restarting or failing over must not fail the task, so transient
    // failures are retried here (about 20 s in all) before it does.
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0;
    let answered = loop {
        match accounts
            .create_subresource::<_, TokenRequest>(
                "token",
                account,
                &PostParams::default(),
                &request,
            )
            .await
        {
            Err(error) if error.is_transient() && attempts < TOKEN_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            answered => break answered,
        }
    };
    let answer: TokenRequest = answered.map_err(|error| Failure {
        reason: if error.is_not_found()
            && error
                .status()
                .and_then(|s| s.details.as_ref())
                .is_some_and(|d| d.kind == "serviceaccounts")
        {
            "ServiceAccountNotFound"
        } else {
            "ServiceAccountTokenFailed"
        },
        message: format!(
            "cannot get a token of service account {}/{account}: {error}",
            task.metadata.namespace
        ),
    })?;
    let status = answer.status.ok_or_else(|| Failure {
        reason: "ServiceAccountTokenFailed",
        message: "the TokenRequest was answered without a token".to_owned(),
    })?;
    Ok((status.token, status.expiration_timestamp))
}

/// Whether the token in `dir` is past 80 % of its life (or unreadable).
pub fn due(dir: &Path, now: DateTime<Utc>) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("expires")) else {
        return true;
    };
    let Ok(expires) = DateTime::parse_from_rfc3339(text.trim()) else {
        return true;
    };
    let left = expires.with_timezone(&Utc) - now;
    left < chrono::Duration::seconds(TOKEN_SECONDS / 5)
}

/// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` for a task: the
/// first API server the node itself uses.
pub fn service_env(client: &Client) -> Option<(String, String)> {
    host_and_port(client.config().server.split(',').next()?.trim())
}

/// The host (without an IPv6 address's brackets) and port of an `https://`
/// or `http://` URL (443 and 80 when it names none).
fn host_and_port(url: &str) -> Option<(String, String)> {
    let (default_port, rest) = if let Some(rest) = url.strip_prefix("https://") {
        ("443", rest)
    } else {
        ("80", url.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':').unwrap_or(default_port))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, default_port),
        }
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host.to_owned(), port.to_owned()))
}

/// Transient failures of a token request retried before the task fails.
const TOKEN_ATTEMPTS: u32 = 8;

/// How often running tasks' tokens are checked.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_account_defaults_and_can_be_turned_off() {
        let mut task = Task::default();
        assert_eq!(account_of(&task), Some("default"));
        task.spec.service_account_name = "ci".to_owned();
        assert_eq!(account_of(&task), Some("ci"));
        task.spec.automount_service_account_token = Some(false);
        assert_eq!(account_of(&task), None);
    }

    #[test]
    fn the_api_server_is_named_by_host_and_port() {
        let pair = |h: &str, p: &str| Some((h.to_owned(), p.to_owned()));
        assert_eq!(
            host_and_port("https://10.0.0.1:7443"),
            pair("10.0.0.1", "7443")
        );
        assert_eq!(host_and_port("https://[::1]:7443/"), pair("::1", "7443"));
        assert_eq!(
            host_and_port("https://api.example"),
            pair("api.example", "443")
        );
        assert_eq!(host_and_port("http://h"), pair("h", "80"));
        assert_eq!(host_and_port("ftp://h:1"), None);
        assert_eq!(host_and_port("https://h:x"), None);
    }

    #[test]
    fn a_token_is_due_at_four_fifths_of_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        assert!(due(dir.path(), now), "no expiry file: due");
        let write = |at: DateTime<Utc>| {
            std::fs::write(dir.path().join("expires"), at.to_rfc3339()).unwrap();
        };
        write(now + chrono::Duration::seconds(TOKEN_SECONDS));
        assert!(!due(dir.path(), now));
        write(now + chrono::Duration::seconds(TOKEN_SECONDS / 5 - 1));
        assert!(due(dir.path(), now));
        std::fs::write(dir.path().join("expires"), "not a time").unwrap();
        assert!(due(dir.path(), now));
    }
}
