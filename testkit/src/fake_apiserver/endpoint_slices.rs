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

/// One slice of `service` holding `endpoints` (address and readiness) on the port named
/// `port_name`; every endpoint must share one port, as a Service's target port does.
pub(crate) fn slice(service: &str, port_name: &str, endpoints: &[(SocketAddr, bool)]) -> Value {
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
            .map(|(addr, ready)| json!({
                "addresses": [addr.ip().to_string()],
                "conditions": { "ready": ready },
            }))
            .collect::<Vec<_>>(),
    })
}
