//! The fleet's one judge, elected with a `coordination.k8s.io` Lease through the
//! `kube-lease-manager` crate. The holder renews every `LEASE_SECONDS − LEASE_GRACE_SECONDS`;
//! the others look again when the Lease would expire, so a judge that dies is replaced within
//! [`LEASE_SECONDS`] (plus the crate's up-to-1 s random pause).
//!
//! On an API error this replica stops judging at once (it cannot know whether it still holds
//! the Lease, and two judges would double the false-rollback budget) and starts a fresh
//! manager after a pause; a fresh manager under the same identity finds its own Lease again.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

/// How long a Lease holds without renewal: the longest a fleet goes without a judge.
pub const LEASE_SECONDS: u64 = 15;

/// How long before expiry the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Pause after an API error before campaigning again.
const RETRY: Duration = Duration::from_secs(2);

/// This replica's standing in the election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Whether it holds the Lease and is the fleet's judge.
    pub leading: bool,
    /// Whether the Lease's last request reached the API server.
    pub connected: bool,
}

/// Campaigns for the Lease `lease` in `namespace` as `identity`, reporting into `standing`,
/// until `stop`; then releases it, so the next judge need not wait for expiry.
pub async fn campaign(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
    standing: watch::Sender<Leadership>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let manager = LeaseManagerBuilder::new(client.clone(), lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build();
        let manager = tokio::select! {
            () = &mut stop => return,
            built = manager => built,
        };
        match manager {
            Ok(manager) => {
                standing.send_modify(|s| s.connected = true);
                if hold(&manager, identity, &standing, &mut stop).await {
                    if let Err(e) =
                        tokio::time::timeout(Duration::from_secs(2), manager.release()).await
                    {
                        warn!(error = %e, "could not release the judge's Lease in time");
                    }
                    return;
                }
            }
            Err(e) => warn!(error = %e, %namespace, %lease, "cannot reach the judge's Lease"),
        }
        standing.send_replace(Leadership::default());
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Follows `manager`'s changes into `standing`; true when `stop` came, false on an API error.
async fn hold(
    manager: &LeaseManager,
    identity: &str,
    standing: &watch::Sender<Leadership>,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    loop {
        let changed = tokio::select! {
            () = stop.as_mut() => return true,
            changed = manager.changed() => changed,
        };
        match changed {
            Ok(leading) => {
                info!(%identity, leading, "fleet judge's Lease changed hands");
                standing.send_replace(Leadership {
                    leading,
                    connected: true,
                });
            }
            Err(e) => {
                warn!(error = %e, "the judge's Lease failed; not judging until it is back");
                return false;
            }
        }
    }
}
