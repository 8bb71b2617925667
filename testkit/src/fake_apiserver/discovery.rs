//! Discovery documents, enough for `kubectl` to find `configmaps` and `events` in core/v1,
//! `ingresses` in networking.k8s.io/v1, `endpointslices` in discovery.k8s.io/v1 and `leases`
//! in coordination.k8s.io/v1.
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
        path => group_document(path),
    }
}

/// The groups under `/apis`: name, version, and the one resource served (plural, singular,
/// kind, short names).
const GROUPS: [(&str, &str, [&str; 3], &[&str]); 3] = [
    (
        "networking.k8s.io",
        "v1",
        [super::ingress::RESOURCE, "ingress", "Ingress"],
        &["ing"],
    ),
    (
        "discovery.k8s.io",
        "v1",
        [
            super::endpoint_slices::RESOURCE,
            "endpointslice",
            "EndpointSlice",
        ],
        &[],
    ),
    (
        "coordination.k8s.io",
        "v1",
        [super::leases::RESOURCE, "lease", "Lease"],
        &[],
    ),
];

/// `/apis`, `/apis/GROUP` and `/apis/GROUP/VERSION`.
fn group_document(path: &str) -> Option<Value> {
    let group = |name: &str, version: &str| {
        let version = json!({ "groupVersion": format!("{name}/{version}"), "version": version });
        json!({ "name": name, "versions": [version], "preferredVersion": version })
    };
    if path == "/apis" {
        let groups: Vec<Value> = GROUPS.iter().map(|(n, v, ..)| group(n, v)).collect();
        return Some(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }));
    }
    GROUPS
        .iter()
        .find_map(|(name, version, [plural, singular, kind], short)| {
            let at = path.strip_prefix("/apis/")?.strip_prefix(name)?;
            match at {
                "" => {
                    let mut doc = group(name, version);
                    doc["kind"] = json!("APIGroup");
                    doc["apiVersion"] = json!("v1");
                    Some(doc)
                }
                _ if at.strip_prefix('/') == Some(version) => Some(json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": format!("{name}/{version}"),
                    "resources": [resource(plural, singular, kind, short)],
                })),
                _ => None,
            }
        })
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
