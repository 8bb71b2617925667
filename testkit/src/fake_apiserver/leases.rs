//! coordination.k8s.io/v1 `leases`: get, create, strategic-merge patches, and server-side
//! apply reduced to the one rule leader election rests on: applying a `spec.holderIdentity`
//! that differs from a held one, under another field manager, is a 409 Conflict.

use serde_json::Value;

use super::status::ApiError;
use super::store::{Key, merge};

/// The API group and version served.
pub(crate) const GROUP_VERSION: &str = "coordination.k8s.io/v1";

/// The plural resource name.
pub(crate) const RESOURCE: &str = "leases";

/// Server-side apply of `patch` to the Lease `current`: a conflict if it would take a held
/// Lease from its holder, otherwise merged in.
pub(crate) fn apply(key: &Key, current: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let held = current
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str);
    let wanted = patch
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str);
    if let (Some(held), Some(wanted)) = (held, wanted)
        && held != wanted
    {
        return Err(ApiError::conflict(key));
    }
    merge(current, patch);
    Ok(())
}
