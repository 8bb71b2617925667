//! `--fleet NAMESPACE/SERVICE`: the members from that headless Service's EndpointSlices and the
//! judge's Lease (both the `canary-controller` crate's) combined into the one [`Standing`] the
//! judging loop follows.

use std::sync::Arc;

use anyhow::Context;
use canary_controller::fleet::{Members, follow_members};
use canary_controller::judge::{Leadership, campaign};
use canary_controller::{Client, ConfigMapRef};
use canary_proxy::fleet::gather::keep_judging;
use canary_proxy::fleet::{Fleet, Standing};
use canary_proxy::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Joins `runtime` to the fleet behind `target` and starts following it; the Lease is named
/// after the Service and released at `shutdown`, so a rolling update hands over at once.
pub fn start(
    runtime: Arc<Runtime>,
    client: Client,
    target: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    // NAMESPACE/NAME, the same form as --configmap.
    let service: ConfigMapRef = target
        .parse()
        .with_context(|| format!("--fleet {target:?}"))?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "canary-proxy".to_owned());
    // The process id keeps two processes on one host (or a restart) distinct in the Lease.
    let identity = format!("{host}-{}", runtime.process);
    runtime.join_fleet(Fleet::new(service.to_string(), identity.clone()));

    let (members_tx, mut members) = watch::channel(Members::default());
    let (leadership_tx, mut leadership) = watch::channel(Leadership::default());
    let (standing_tx, standing) = watch::channel(Standing::default());
    let (namespace, name) = (service.namespace.clone(), service.name.clone());
    let watch_client = client.clone();
    tokio::spawn(async move {
        follow_members(watch_client, &namespace, &name, members_tx).await;
    });
    let (namespace, name) = (service.namespace, service.name);
    let campaign_stop = super::stopped(stop.clone());
    tokio::spawn(async move {
        campaign(
            client,
            &namespace,
            &name,
            &identity,
            leadership_tx,
            campaign_stop,
        )
        .await;
    });
    tokio::spawn(async move {
        loop {
            let (m, l) = (
                members.borrow_and_update().clone(),
                *leadership.borrow_and_update(),
            );
            standing_tx.send_replace(Standing {
                members: m.addrs,
                leading: l.leading,
                api_connected: m.connected && l.connected,
            });
            tokio::select! {
                changed = members.changed() => if changed.is_err() { return },
                changed = leadership.changed() => if changed.is_err() { return },
            }
        }
    });
    Ok(tokio::spawn(keep_judging(
        runtime,
        standing,
        super::stopped(stop),
    )))
}
