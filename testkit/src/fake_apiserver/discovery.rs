//! Discovery documents, enough for `kubectl` to find `configmaps` and `events` in core/v1,
//! and `ingresses` in networking.k8s.io/v1.
//!
//! `kubectl` asks for aggregated discovery first; answering with plain `application/json`
//! makes it fall back to the legacy documents served here.

use serde_json::{Value, json};

/// The document served at a discovery path, if `path` is one.
pub(crate) fn document(path: &str) -> Option<Value> {
    match path.trim_end_matches('/') {
        "/version" => Some(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fake",
            "platform": "linux/amd64",
        })),
        "/api" => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        })),
        "/api/v1" => Some(json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                resource("configmaps", "configmap", "ConfigMap", &["cm"]),
                resource("events", "event", "Event", &["ev"]),
            ],
        })),
        path => super::ingress::discovery(path),
    }
}

fn resource(name: &str, singular: &str, kind: &str, short_names: &[&str]) -> Value {
    json!({
        "name": name,
        "singularName": singular,
        "namespaced": true,
        "kind": kind,
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        "shortNames": short_names,
    })
}
