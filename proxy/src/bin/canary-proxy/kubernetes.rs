//! `--configmap NAMESPACE/NAME`: the ConfigMap, followed through the Kubernetes API, feeds the
//! same validation and hot swap as a file; a rollback decided here is recorded in it so that
//! every replica and every restart agrees, until a person resumes it or a new canary comes
//! ([`persist`] decides which rollback applies and what the ConfigMap still needs); the step
//! plan's moves are written into it too ([`steps`]). (The API code itself is the
//! `canary-controller` crate's; this is the wiring.) With `--fleet`, the replicas judge as one
//! ([`fleet`]). A color whose upstream is a Service follows its endpoints ([`endpoints`]).

pub mod endpoints;
mod fleet;
mod persist;
mod steps;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use canary_controller::{Client, ConfigMapRef, EventKind, SourceEvent};
use canary_proxy::runtime::Runtime;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use persist::{Content, Persister, rollback_to_apply};

/// Connects to the API server and starts following `target` (and, with `fleet`, the fleet
/// behind that Service); the runtime is not ready until the ConfigMap's first good content has
/// been applied.
pub async fn start(
    runtime: Arc<Runtime>,
    target: &str,
    fleet: Option<&str>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let cm: ConfigMapRef = target
        .parse()
        .with_context(|| format!("--configmap {target:?}"))?;
    let client = canary_controller::connect()
        .await
        .context("cannot load the Kubernetes client configuration")?;
    runtime.set_source_state(false, format!("waiting for ConfigMap {cm}"));
    let fleet = match fleet {
        Some(service) => Some(fleet::start(
            runtime.clone(),
            client.clone(),
            service,
            stop.clone(),
        )?),
        None => None,
    };
    let services = endpoints::start(runtime.clone(), Some(client.clone()), stop.clone());
    let source = tokio::spawn(follow(runtime, client, cm, stopped(stop)));
    Ok(tokio::spawn(async move {
        let _ = source.await;
        let _ = services.await;
        if let Some(fleet) = fleet {
            let _ = fleet.await;
        }
    }))
}

async fn follow(
    runtime: Arc<Runtime>,
    client: Client,
    cm: ConfigMapRef,
    shutdown: impl Future<Output = ()>,
) {
    let mut persister = Persister::new(client.clone(), cm.clone());
    let mut rollbacks = runtime.subscribe_rollbacks();
    let mut moves = runtime.subscribe_steps();
    let events = canary_controller::watch(client.clone(), cm.clone());
    tokio::pin!(events, shutdown);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => on_source_event(&runtime, &client, &cm, &mut persister, event),
                None => break,
            },
            // A rollback here: the table already says so; the persister writes the record.
            rollback = rollbacks.recv() => {
                if let Err(broadcast::error::RecvError::Closed) = rollback {
                    break;
                }
            }
            step = moves.recv() => match step {
                Ok(step) => steps::record(&client, &cm, step),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = persister.next_wake() => {}
            () = &mut shutdown => break,
        }
        persister.reconcile(&runtime);
    }
    persister.abort();
}

fn on_source_event(
    runtime: &Runtime,
    client: &Client,
    cm: &ConfigMapRef,
    persister: &mut Persister,
    event: SourceEvent,
) {
    match event {
        SourceEvent::Applied {
            data,
            annotations,
            resource_version,
        } => {
            let content = Content {
                data,
                annotations,
                resource_version,
            };
            // Decided on the very table the new one replaces: a rollback after that moment is
            // carried by the runtime's compare-and-swap.
            let rollback =
                |table: Option<&_>| rollback_to_apply(&content, persister.accepted.as_ref(), table);
            let rv = &content.resource_version;
            match runtime.apply(&content.data, rv, rollback) {
                Ok(()) => {
                    runtime.set_source_state(true, format!("watching ConfigMap {cm}"));
                    persister.accepted = Some(content.clone());
                }
                Err(e) => {
                    let message = format!("revision {rv} rejected: {e}");
                    spawn_event(client, cm, EventKind::ConfigRejected, message);
                }
            }
            persister.seen = Some(content);
            persister.prompt();
        }
        SourceEvent::Missing => runtime.set_source_state(
            true,
            format!("ConfigMap {cm} does not exist yet; waiting for it"),
        ),
        SourceEvent::Deleted => {
            persister.seen = None;
            runtime.set_source_state(
                true,
                format!("ConfigMap {cm} was deleted; serving the last good configuration"),
            );
        }
        SourceEvent::Disconnected { error } => runtime.set_source_state(
            false,
            format!("Kubernetes API unreachable ({error}); serving the last good configuration"),
        ),
        SourceEvent::WatchFailing { error } => runtime.set_source_state(
            false,
            format!(
                "ConfigMap {cm} can be listed but not watched ({error}); relisting with backoff, \
                 so changes arrive up to 30 s late"
            ),
        ),
        SourceEvent::Reconnected => {
            runtime.set_source_state(true, format!("watching ConfigMap {cm}"));
            // A rollback that could not be written during the outage is written now.
            persister.prompt();
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone): shutdown has begun.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Records an Event in its own task: a courtesy to the operator that never holds anything up.
fn spawn_event(client: &Client, cm: &ConfigMapRef, kind: EventKind, message: String) {
    let (client, cm) = (client.clone(), cm.clone());
    tokio::spawn(async move {
        canary_controller::record_event(&client, &cm, kind, &message).await;
    });
}
