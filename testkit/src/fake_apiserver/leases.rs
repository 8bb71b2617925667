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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_held_lease_cannot_be_applied_away_from_its_holder() {
        let key = Key {
            resource: RESOURCE.into(),
            namespace: "ns".into(),
            name: "judge".into(),
        };
        let take = |who: &str| json!({"spec": {"holderIdentity": who, "leaseDurationSeconds": 15}});
        let mut lease = json!({"metadata": {"name": "judge"}, "spec": {}});
        apply(&key, &mut lease, &take("a")).unwrap();
        // The holder renews; another is refused while it holds.
        apply(&key, &mut lease, &take("a")).unwrap();
        assert_eq!(apply(&key, &mut lease, &take("b")).unwrap_err().code, 409);
        // Released (a strategic patch of nulls), it can be taken.
        merge(&mut lease, &json!({"spec": {"holderIdentity": null}}));
        apply(&key, &mut lease, &take("b")).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "b");
    }
}
