//! A custom controller in one file: the `Backup` kind, defined with
//! `#[derive(Resource)]`, and a controller that "runs" each backup on its
//! schedule, reports it in the status, records Events, and cleans up through a
//! finalizer when a Backup is deleted.
//!
//! ```sh
//! loom up &                                                  # or scripts/up
//! cargo run -p loom-client --example backup_controller -- --print-definition > manifests/backup/definition.yaml
//! kubectl --server http://127.0.0.1:7443 apply -f manifests/backup/definition.yaml
//! kubectl --server http://127.0.0.1:7443 apply -f manifests/backup/nightly.yaml
//! cargo run -p loom-client --example backup_controller            # LOOMCONFIG or ~/.loom/config, else 127.0.0.1:7443
//! kubectl --server http://127.0.0.1:7443 get backups.example.com nightly -o yaml
//! ```

use std::sync::Arc;
use std::time::Duration;

use api_types::ObjectReference;
use api_types::event::EventType;
use chrono::Utc;
use client::controller::{self, Action, Controller};
use client::finalizer::{FinalizerEvent, finalizer};
use client::{Api, Client, Informer, Patch, PatchParams, Recorder, watcher};
use loom_derive::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A backup of a directory, taken every `intervalSeconds`.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[resource(
    group = "example.com",
    version = "v1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "bk"
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// What to back up.
    pub source: String,
    /// Seconds between backups.
    pub interval_seconds: u64,
}

/// What the controller did last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last backup ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// How many backups have run.
    pub runs: u64,
}

/// What every reconcile shares.
struct Context {
    api: Api<Backup>,
    recorder: Recorder,
}

const FINALIZER: &str = "example.com/backup-cleanup";

async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, client::Error> {
    let api = ctx.api.in_namespace(&backup.metadata.namespace);
    let reference = ObjectReference {
        api_version: "example.com/v1".into(),
        kind: "Backup".into(),
        namespace: backup.metadata.namespace.clone(),
        name: backup.metadata.name.clone(),
        uid: backup.metadata.uid.clone(),
        ..Default::default()
    };
    finalizer(&api, FINALIZER, backup, async |event| match event {
        FinalizerEvent::Apply(backup) => {
            let interval = Duration::from_secs(backup.spec.interval_seconds.max(1));
            // Level-triggered: any change brings us here; only run when a backup is due.
            // (Writing the status is itself a change, so an unconditional write would loop.)
            let last = backup.status.as_ref().and_then(|s| s.last_run.as_deref());
            let since = last
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .and_then(|t| (Utc::now() - t.with_timezone(&Utc)).to_std().ok());
            if let Some(since) = since
                && since < interval
            {
                return Ok(Action::requeue(interval - since));
            }
            let runs = backup.status.as_ref().map_or(0, |s| s.runs) + 1;
            // A real controller would copy `spec.source` somewhere here.
            let status = json!({"status": {"lastRun": Utc::now().to_rfc3339(), "runs": runs}});
            api.patch_status(
                &backup.metadata.name,
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
            let message = format!("backed up {}", backup.spec.source);
            ctx.recorder
                .publish(&reference, EventType::Normal, "BackedUp", &message)
                .await?;
            Ok(Action::requeue(interval))
        }
        FinalizerEvent::Cleanup(backup) => {
            ctx.recorder
                .publish(
                    &reference,
                    EventType::Normal,
                    "CleanedUp",
                    &format!("stopped backing up {}", backup.spec.source),
                )
                .await?;
            Ok(Action::await_change())
        }
    })
    .await
    .map_err(|error| match error {
        client::finalizer::FinalizerError::Apply(e)
        | client::finalizer::FinalizerError::Cleanup(e)
        | client::finalizer::FinalizerError::Client(e) => e,
    })
}

fn error_policy(_backup: Arc<Backup>, error: &client::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "backup reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[tokio::main]
async fn main() -> anyhow_free::Result {
    if std::env::args().any(|a| a == "--print-definition") {
        print!(
            "{}",
            serde_saphyr::to_string(&Backup::resource_definition())?
        );
        return Ok(());
    }
    tracing_subscriber::fmt().with_env_filter("info").init();
    let client = Client::infer()?;
    let api: Api<Backup> = Api::all(client.clone());
    let informer = Informer::start(api.clone(), watcher::Config::default());
    let ctx = Arc::new(Context {
        api,
        recorder: Recorder::new(client, "backup-controller", "example"),
    });
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    Controller::new(&informer, controller::Config::default())
        .run(reconcile, error_policy, ctx, shutdown)
        .await;
    Ok(())
}

/// The example needs no error crate: any error prints and exits non-zero.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
