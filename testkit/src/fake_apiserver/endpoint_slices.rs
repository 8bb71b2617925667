//! discovery.k8s.io/v1 `endpointslices`: stored and watched like any object (selected by their
//! `kubernetes.io/service-name` label), written by tests as the EndpointSlice controller would
//! ([`FakeApiServer::set_endpoints`](super::FakeApiServer::set_endpoints)).

use std::net::SocketAddr;

use serde_json::{Value, json};

/// The API group and version served.
pub(crate) const GROUP_VERSION: &str = "discovery.k8s.io/v1";

/// The plural resource name.
pub(crate) const RESOURCE: &str = "endpointslices";

/// The label that ties a slice to its Service.
pub(crate) const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Where a pod behind a Service stands, as its EndpointSlice conditions say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pod {
    /// Ready: takes new requests.
    Ready,
    /// Started but not ready yet.
    NotReady,
    /// Being deleted: not ready, still serving the requests it has.
    Terminating,
}

impl Pod {
    fn conditions(self) -> Value {
        match self {
            Pod::Ready => json!({ "ready": true, "serving": true, "terminating": false }),
            Pod::NotReady => json!({ "ready": false, "serving": false, "terminating": false }),
            Pod::Terminating => json!({ "ready": false, "serving": true, "terminating": true }),
        }
    }
}

/// One slice of `service` holding `endpoints` (address and readiness) on the port named
/// `port_name`; every endpoint must share one port, as a Service's target port does.
pub(crate) fn slice(service: &str, port_name: &str, endpoints: &[(SocketAddr, bool)]) -> Value {
    let pods: Vec<(SocketAddr, Pod)> = endpoints
        .iter()
        .map(|&(addr, ready)| (addr, if ready { Pod::Ready } else { Pod::NotReady }))
        .collect();
    pod_slice(service, port_name, &pods)
}

/// One slice of `service` holding `pods` (address and state) on the port named `port_name`;
/// every pod must share one port.
pub(crate) fn pod_slice(service: &str, port_name: &str, endpoints: &[(SocketAddr, Pod)]) -> Value {
    let port = endpoints.first().map_or(0, |(addr, _)| addr.port());
    let family = match endpoints.first() {
        Some((SocketAddr::V6(_), _)) => "IPv6",
        _ => "IPv4",
    };
    json!({
        "metadata": {
            "name": format!("{service}-fake"),
            "labels": { SERVICE_LABEL: service },
        },
        "addressType": family,
        "ports": [{ "name": port_name, "port": port, "protocol": "TCP" }],
        "endpoints": endpoints
            .iter()
            .map(|(addr, pod)| json!({
                "addresses": [addr.ip().to_string()],
                "conditions": pod.conditions(),
            }))
            .collect::<Vec<_>>(),
    })
}
