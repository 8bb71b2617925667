//! `--configmap NAMESPACE/NAME`: the ConfigMap, followed through the Kubernetes API, feeds the
//! same validation and hot swap as a file; a rollback decided here is written back to it so
//! that every replica and every restart agrees. (The API code itself is the
//! `canary-controller` crate's; this is the wiring.)

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use canary_controller::{
    Client, ConfigMapRef, EventKind, ROLLBACK_REASON_ANNOTATION, ROLLED_BACK_AT_ANNOTATION,
    RollbackRecord, SourceEvent,
};
use canary_proxy::config::Color;
use canary_proxy::route::RolledBack;
use canary_proxy::runtime::{RollbackEvent, Runtime};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Write-back attempts per rollback before giving up (the controller retries within each).
const WRITE_BACK_ATTEMPTS: u32 = 5;

/// Connects to the API server and starts following `target`; the runtime is not ready until
/// the ConfigMap's first good content has been applied.
pub async fn start(
    runtime: Arc<Runtime>,
    target: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<()>> {
    let cm: ConfigMapRef = target
        .parse()
        .with_context(|| format!("--configmap {target:?}"))?;
    let client = canary_controller::connect()
        .await
        .context("cannot load the Kubernetes client configuration")?;
    runtime.set_source_state(false, format!("waiting for ConfigMap {cm}"));
    Ok(tokio::spawn(follow(runtime, client, cm, shutdown)))
}

async fn follow(
    runtime: Arc<Runtime>,
    client: Client,
    cm: ConfigMapRef,
    shutdown: impl Future<Output = ()>,
) {
    // The data last applied, for the write-back's check that the canary is unchanged.
    let (applied_tx, applied) = watch::channel(BTreeMap::new());
    let writer = tokio::spawn(write_backs(
        client.clone(),
        cm.clone(),
        runtime.subscribe_rollbacks(),
        applied,
    ));
    let events = canary_controller::watch(client.clone(), cm.clone());
    tokio::pin!(events, shutdown);
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
            () = &mut shutdown => break,
        };
        match event {
            SourceEvent::Applied {
                data,
                annotations,
                resource_version,
            } => {
                let persisted = persisted_rollback(&data, &annotations);
                match runtime.apply(&data, &resource_version, persisted) {
                    Ok(()) => {
                        runtime.set_source_state(true, format!("watching ConfigMap {cm}"));
                        applied_tx.send_replace(data);
                    }
                    Err(e) => {
                        let (client, cm) = (client.clone(), cm.clone());
                        let message = format!("revision {resource_version} rejected: {e}");
                        tokio::spawn(async move {
                            canary_controller::record_event(
                                &client,
                                &cm,
                                EventKind::ConfigRejected,
                                &message,
                            )
                            .await;
                        });
                    }
                }
            }
            SourceEvent::Missing => runtime.set_source_state(
                true,
                format!("ConfigMap {cm} does not exist yet; waiting for it"),
            ),
            SourceEvent::Deleted => runtime.set_source_state(
                true,
                format!("ConfigMap {cm} was deleted; serving the last good configuration"),
            ),
            SourceEvent::Disconnected { error } => runtime.set_source_state(
                false,
                format!(
                    "Kubernetes API unreachable ({error}); serving the last good configuration"
                ),
            ),
            SourceEvent::Reconnected => {
                runtime.set_source_state(true, format!("watching ConfigMap {cm}"));
            }
        }
    }
    writer.abort();
}

/// A rollback the ConfigMap records: its annotation is there and the weight is still 0. A
/// user resumes by setting a weight (and removing the annotations).
fn persisted_rollback(
    data: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<RolledBack> {
    let at = annotations.get(ROLLED_BACK_AT_ANNOTATION)?;
    let weight = data.get("canary-weight").map_or("0", |w| w.trim());
    if weight != "0" {
        return None;
    }
    let stable = match data.get("stable").map(|s| s.trim()) {
        Some("green") => Color::Green,
        _ => Color::Blue,
    };
    Some(RolledBack {
        color: stable.other(),
        reason: annotations
            .get(ROLLBACK_REASON_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        at: at.clone(),
    })
}

/// Writes each rollback of this replica to the ConfigMap and records an Event for it.
async fn write_backs(
    client: Client,
    cm: ConfigMapRef,
    mut rollbacks: broadcast::Receiver<RollbackEvent>,
    applied: watch::Receiver<BTreeMap<String, String>>,
) {
    loop {
        let event = match rollbacks.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let upstream_key = format!("{}.upstream", event.canary);
        let record = RollbackRecord {
            canary_color: event.canary.as_str().to_owned(),
            // The value as written in the ConfigMap, which is what the write-back compares.
            canary_upstream: applied
                .borrow()
                .get(&upstream_key)
                .cloned()
                .unwrap_or_else(|| event.canary_upstream.clone()),
            reason: event.reason.clone(),
            at: event.at.clone(),
            seen_resource_version: event.revision.to_string(),
        };
        for attempt in 1..=WRITE_BACK_ATTEMPTS {
            match canary_controller::write_back(&client, &cm, &record).await {
                Ok(outcome) => {
                    info!(configmap = %cm, ?outcome, "rollback write-back finished");
                    break;
                }
                Err(e) if attempt < WRITE_BACK_ATTEMPTS => {
                    warn!(configmap = %cm, error = %e, attempt, "rollback not written back yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                }
                Err(e) => {
                    warn!(configmap = %cm, error = %e, "rollback not written back; giving up")
                }
            }
        }
        let message = format!("{} rolled back: {}", event.canary, event.reason);
        canary_controller::record_event(&client, &cm, EventKind::RolledBack, &message).await;
    }
}
