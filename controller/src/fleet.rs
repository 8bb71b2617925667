//! Fleet membership: the replicas' admin addresses, from the EndpointSlices of a headless
//! Service (`kubernetes.io/service-name=SERVICE`), followed with kube's watcher. A lost
//! connection or a bad slice is logged once; the last good member set stays in force, so a
//! replica cut off from the API server keeps judging (or being judged) with the peers it knew.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// The EndpointSlice port that carries the admin listener; a slice without it offers its
/// first port.
pub const ADMIN_PORT_NAME: &str = "admin";

/// Server-side timeout of each watch request, as for the ConfigMap: a silently dead
/// connection is noticed within about a minute, at one watch request a minute.
const WATCH_TIMEOUT_SECS: u32 = 60;

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
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={service}"))
        .timeout(WATCH_TIMEOUT_SECS);
    let mut stream = watcher(api, config).default_backoff().boxed();
    // Slices by name; the listing in progress replaces them when it is complete.
    let mut slices: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut listing: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut connected = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(slice)) => {
                listing.insert(name(&slice), addresses(&slice));
            }
            Ok(watcher::Event::InitDone) => slices = std::mem::take(&mut listing),
            Ok(watcher::Event::Apply(slice)) => {
                slices.insert(name(&slice), addresses(&slice));
            }
            Ok(watcher::Event::Delete(slice)) => {
                slices.remove(&name(&slice));
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
        let mut addrs: Vec<SocketAddr> = slices.values().flatten().copied().collect();
        addrs.sort_unstable();
        addrs.dedup();
        if members.send(Members { addrs, connected }).is_err() {
            return;
        }
    }
}

fn name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
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
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
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
