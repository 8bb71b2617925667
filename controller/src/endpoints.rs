//! A Service's endpoints for the data plane: the addresses of its ready pods on one port, from
//! its EndpointSlices (`kubernetes.io/service-name=NAME`), followed with kube's watcher. A pod
//! being terminated (`terminating`, or not `ready`) leaves the set at once, so it gets no new
//! request while it finishes those it has. A lost connection or a bad slice is logged once; the
//! last good set stays in force.

use std::net::SocketAddr;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::slices::{Slices, addresses_on, watch_slices};

/// A Service's endpoints as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// The ready, not terminating endpoints on the port, sorted.
    pub addrs: Vec<SocketAddr>,
    /// Whether the first listing has arrived: until then `addrs` means nothing yet.
    pub synced: bool,
}

/// Follows the endpoints of Service `name` in `namespace` on `port` (a port name of the
/// Service, or a number: that port on each pod) into `endpoints`, until every receiver is
/// gone.
pub async fn follow_service(
    client: Client,
    namespace: &str,
    name: &str,
    port: &str,
    endpoints: watch::Sender<ServiceEndpoints>,
) {
    let mut stream = watch_slices(client, namespace, name);
    let mut slices = Slices::default();
    let mut connected = false;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            () = endpoints.closed() => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(event) => {
                if !slices.apply(event, |slice| ready_addresses(slice, port)) {
                    continue;
                }
            }
            Err(e) => {
                if connected {
                    warn!(error = %e, %namespace, service = %name,
                        "endpoint watch lost; keeping the last known endpoints");
                }
                connected = false;
                continue;
            }
        }
        if !connected {
            info!(%namespace, service = %name, "endpoint watch connected");
        }
        connected = true;
        endpoints.send_replace(ServiceEndpoints {
            addrs: slices.addrs(),
            synced: true,
        });
    }
}

/// The addresses of a slice's endpoints that take new requests (ready and not terminating),
/// on `port`; addresses that do not parse are skipped, and a slice without the port has none.
fn ready_addresses(slice: &EndpointSlice, port: &str) -> Vec<SocketAddr> {
    let number = port.parse::<u16>().ok();
    let found = number.or_else(|| {
        slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(port))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
    });
    let Some(port) = found else {
        return Vec::new();
    };
    addresses_on(slice, port, |conditions| {
        conditions.and_then(|c| c.ready) != Some(false)
            && conditions.and_then(|c| c.terminating) != Some(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice() -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": {"name": "green-abc"},
            "ports": [{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn ready_endpoints_on_the_named_port() {
        let addrs: Vec<String> = ready_addresses(&slice(), "http")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.4:8080"]);
    }

    #[test]
    fn a_port_number_is_the_pods_port_and_an_unknown_name_gives_none() {
        let addrs: Vec<String> = ready_addresses(&slice(), "7000")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.0.0.1:7000", "10.0.0.4:7000"]);
        assert!(ready_addresses(&slice(), "grpc").is_empty());
    }
}
