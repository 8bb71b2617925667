//! Fleet membership: the replicas' admin addresses, from the EndpointSlices of a headless
//! Service (`kubernetes.io/service-name=SERVICE`), followed with kube's watcher. A lost
//! connection or a bad slice is logged once; the last good member set stays in force, so a
//! replica cut off from the API server keeps judging (or being judged) with the peers it knew.

use std::net::SocketAddr;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::slices::{Slices, addresses_on, watch_slices};

/// The EndpointSlice port that carries the admin listener; a slice without it offers its
/// first port.
pub const ADMIN_PORT_NAME: &str = "admin";

/// The fleet's members as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The ready members' admin addresses, sorted.
    pub addrs: Vec<SocketAddr>,
    /// Whether the watch is connected; while it is not, `addrs` is the last good set.
    pub connected: bool,
}

/// Follows the members of `service` in `namespace` into `members`, until every receiver is
/// gone.
pub async fn follow_members(
    client: Client,
    namespace: &str,
    service: &str,
    members: watch::Sender<Members>,
) {
    let mut stream = watch_slices(client, namespace, service);
    let mut slices = Slices::default();
    let mut connected = false;
    while let Some(event) = stream.next().await {
        match event {
            // Published even while a listing is under way: the watch is back.
            Ok(event) => {
                slices.apply(event, addresses);
            }
            Err(e) => {
                if connected {
                    warn!(error = %e, %namespace, %service,
                        "fleet membership watch lost; keeping the last known members");
                }
                connected = false;
                members.send_modify(|m| m.connected = false);
                if members.is_closed() {
                    return;
                }
                continue;
            }
        }
        if !connected {
            info!(%namespace, %service, "fleet membership watch connected");
        }
        connected = true;
        let addrs = slices.addrs();
        if members.send(Members { addrs, connected }).is_err() {
            return;
        }
    }
}

/// The admin addresses of a slice's ready endpoints; addresses that do not parse are skipped.
fn addresses(slice: &EndpointSlice) -> Vec<SocketAddr> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        .or(ports.first())
        .and_then(|p| p.port);
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
        return Vec::new();
    };
    addresses_on(slice, port, |conditions| {
        conditions.and_then(|c| c.ready) != Some(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_endpoints_on_the_admin_port() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": {"name": "peers-abc"},
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .unwrap();
        let addrs: Vec<String> = addresses(&slice).iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.0.0.1:9090", "10.0.0.3:9090"]);
    }
}
