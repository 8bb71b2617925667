//! networking.k8s.io/v1 `ingresses`: discovery, and ingress-nginx's admission rule that a
//! host and path belong to one Ingress (canary Ingresses excepted), checked on create, so a
//! migration that adds a second Ingress for the same host and path fails here as it does on a
//! default ingress-nginx.

use serde_json::Value;

use super::status::ApiError;
use super::store::{Key, Selector, Store};

/// The API group and version served.
pub(crate) const GROUP_VERSION: &str = "networking.k8s.io/v1";

/// The plural resource name.
pub(crate) const RESOURCE: &str = "ingresses";

/// The annotation that makes an Ingress a canary, which may share its host and path.
const CANARY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary";

/// ingress-nginx's validating webhook, reduced to its best-known refusal.
pub(crate) fn admit(store: &Store, key: &Key, object: &Value) -> Result<(), ApiError> {
    if is_canary(object) {
        return Ok(());
    }
    let others = store.list(RESOURCE, None, &Selector::default());
    for (host, path) in hosts_and_paths(object) {
        let taken = others.iter().find(|other| {
            let same = other.pointer("/metadata/name").and_then(Value::as_str)
                == Some(key.name.as_str())
                && other.pointer("/metadata/namespace").and_then(Value::as_str)
                    == Some(key.namespace.as_str());
            !same
                && !is_canary(other)
                && hosts_and_paths(other).contains(&(host.clone(), path.clone()))
        });
        if let Some(other) = taken {
            let text = |p: &str| other.pointer(p).and_then(Value::as_str).unwrap_or_default();
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "admission webhook \"validate.nginx.ingress.kubernetes.io\" denied the request: \
                     host \"{host}\" and path \"{path}\" is already defined in ingress {}/{}",
                    text("/metadata/namespace"),
                    text("/metadata/name")
                ),
            ));
        }
    }
    Ok(())
}

fn is_canary(ingress: &Value) -> bool {
    ingress
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CANARY_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// Every (host, path) an Ingress claims; an absent host is every host, written `*`.
fn hosts_and_paths(ingress: &Value) -> Vec<(String, String)> {
    let rules = ingress.pointer("/spec/rules").and_then(Value::as_array);
    rules
        .into_iter()
        .flatten()
        .flat_map(|rule| {
            let host = rule.get("host").and_then(Value::as_str).unwrap_or("*");
            let paths = rule.pointer("/http/paths").and_then(Value::as_array);
            paths.into_iter().flatten().map(move |p| {
                let path = p.get("path").and_then(Value::as_str).unwrap_or("/");
                (host.to_owned(), path.to_owned())
            })
        })
        .collect()
}
