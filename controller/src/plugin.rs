//! What the `kubectl canary` plugin does to the cluster: read the fleet's `/status` through
//! the API server's service proxy, and change the ConfigMap, each change one merge patch under
//! the resourceVersion it was computed from (a concurrent edit makes it fail, never lose the
//! other edit).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use crate::write_back::{Patched, patch_within_deadline};
use crate::{
    Canary, ConfigMapRef, ROLLBACK_REASON_ANNOTATION, ROLLED_BACK_AT_ANNOTATION,
    ROLLED_BACK_CANARY_ANNOTATION, ROLLED_BACK_REVISION_ANNOTATION,
    ROLLED_BACK_UPSTREAM_ANNOTATION,
};

/// How long one command may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// A change to the ConfigMap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Set `canary-weight` (while steps run, this pauses them).
    SetWeight(u32),
    /// Move to the next step, or with `full` (or after the last step) make the canary stable.
    Promote {
        /// Skip the remaining steps.
        full: bool,
    },
    /// Hold the current step.
    Pause,
    /// Resume the steps.
    Resume,
    /// Roll the canary back now, as the proxy's own rollback would be recorded.
    Abort,
}

/// Why a command failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The ConfigMap does not exist.
    #[error(
        "ConfigMap {0} not found: is canary-proxy installed in this namespace? \
         (choose with -n NAMESPACE and --configmap NAME)"
    )]
    ConfigMapMissing(ConfigMapRef),
    /// The proxy's `/status` could not be read through the Service.
    #[error(
        "cannot read canary-proxy's /status through Service {service} port {port}: {detail} \
         (is the proxy running? choose with --service NAME and --port PORT)"
    )]
    ProxyUnreachable {
        /// `NAMESPACE/NAME` of the Service.
        service: String,
        /// Its port, by name or number.
        port: String,
        /// What the API server said.
        detail: String,
    },
    /// The change does not fit the ConfigMap as it is.
    #[error("{0}")]
    Refused(String),
    /// The ConfigMap changed between reading it and writing the change.
    #[error(
        "ConfigMap {0} changed meanwhile (someone else edited it); nothing written, run the command again"
    )]
    Conflict(ConfigMapRef),
    /// Another API failure.
    #[error("{action} ConfigMap {cm}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The ConfigMap.
        cm: ConfigMapRef,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A patch failed for good (see the controller's error).
    #[error(transparent)]
    Write(#[from] crate::Error),
}

/// `GET /status` of the Service `namespace/service` at `port` (name or number), through the API
/// server's service proxy, as JSON.
pub async fn status(
    client: &Client,
    namespace: &str,
    service: &str,
    port: &str,
) -> Result<Value, PluginError> {
    let unreachable = |detail: String| PluginError::ProxyUnreachable {
        service: format!("{namespace}/{service}"),
        port: port.to_owned(),
        detail,
    };
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/status"
    ))
    .body(Vec::new())
    .map_err(|e| unreachable(e.to_string()))?;
    let text = tokio::time::timeout(DEADLINE, client.request_text(request))
        .await
        .map_err(|_| unreachable(format!("no answer within {DEADLINE:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| unreachable(format!("not the proxy's JSON: {e}")))
}

/// Reads the ConfigMap, computes `change` against it and writes it under its resourceVersion;
/// the sentence to print.
pub async fn apply(
    client: &Client,
    cm: &ConfigMapRef,
    change: Change,
) -> Result<String, PluginError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
    let current = tokio::time::timeout(DEADLINE, api.get_opt(&cm.name))
        .await
        .map_err(|_| {
            PluginError::Refused(format!(
                "reading ConfigMap {cm}: no answer within {DEADLINE:?}"
            ))
        })?
        .map_err(|source| PluginError::Api {
            action: "reading",
            cm: cm.clone(),
            source,
        })?
        .ok_or_else(|| PluginError::ConfigMapMissing(cm.clone()))?;
    let data = current.data.unwrap_or_default();
    let rv = current.metadata.resource_version.unwrap_or_default();
    let (mut body, said) =
        patch_for(change, &data, &rv, SystemTime::now()).map_err(PluginError::Refused)?;
    body["metadata"]["resourceVersion"] = json!(rv);
    match patch_within_deadline(&api, cm, body, DEADLINE).await? {
        Patched::Done(_) => Ok(said),
        Patched::Conflict => Err(PluginError::Conflict(cm.clone())),
        Patched::NotFound => Err(PluginError::ConfigMapMissing(cm.clone())),
    }
}

/// The merge patch (without its precondition) for `change` on `data` at revision `rv`, and what
/// it does in a sentence; `Err` when it does not apply.
pub fn patch_for(
    change: Change,
    data: &BTreeMap<String, String>,
    rv: &str,
    now: SystemTime,
) -> Result<(Value, String), String> {
    let weight: u32 = data
        .get("canary-weight")
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0);
    let total: u32 = data
        .get("canary-weight-total")
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(100);
    let canary = Canary::configured(data)
        .ok_or("the ConfigMap names no canary (blue.upstream, green.upstream and stable)")?;
    // A full promotion makes the canary's color stable.
    let stable_after = canary.color;
    let data_patch = |pairs: Vec<(&str, Value)>| {
        let data: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        json!({ "data": data })
    };
    Ok(match change {
        Change::SetWeight(n) if n > total => {
            return Err(format!("weight {n} is above canary-weight-total ({total})"));
        }
        Change::SetWeight(n) => (
            data_patch(vec![("canary-weight", json!(n.to_string()))]),
            format!("canary {} weight {weight} -> {n}", canary.color),
        ),
        Change::Promote { full } => {
            let steps: Vec<u32> = data
                .get("progressive.steps")
                .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_default();
            match steps.iter().find(|&&s| s > weight) {
                Some(&next) if !full => (
                    data_patch(vec![("canary-weight", json!(next.to_string()))]),
                    format!(
                        "canary {} promoted to the next step: weight {weight} -> {next}",
                        canary.color
                    ),
                ),
                _ => (
                    data_patch(vec![
                        ("stable", json!(stable_after)),
                        ("canary-weight", json!("0")),
                    ]),
                    format!(
                        "{} promoted: stable is {stable_after}, with all the traffic",
                        canary.color
                    ),
                ),
            }
        }
        Change::Pause => (
            data_patch(vec![("progressive.paused", json!("true"))]),
            "steps paused (progressive.paused: \"true\")".to_owned(),
        ),
        // Any edit that leaves the key not true resumes, a pause by a hand edit included.
        Change::Resume => match data.get("progressive.paused").map(String::as_str) {
            Some("false") => (
                data_patch(vec![("progressive.paused", Value::Null)]),
                "steps resumed (progressive.paused removed)".to_owned(),
            ),
            _ => (
                data_patch(vec![("progressive.paused", json!("false"))]),
                "steps resumed (progressive.paused: \"false\")".to_owned(),
            ),
        },
        Change::Abort => {
            let at = Timestamp::try_from(now)
                .map(|t| t.to_string())
                .unwrap_or_default();
            let mut patch = data_patch(vec![("canary-weight", json!("0"))]);
            patch["metadata"] = json!({ "annotations": {
                ROLLED_BACK_AT_ANNOTATION: at,
                ROLLBACK_REASON_ANNOTATION: "aborted by hand (kubectl canary abort)",
                ROLLED_BACK_CANARY_ANNOTATION: canary.color,
                ROLLED_BACK_UPSTREAM_ANNOTATION: canary.upstream,
                ROLLED_BACK_REVISION_ANNOTATION: rv,
            }});
            (
                patch,
                format!(
                    "canary {} aborted: all traffic to stable, recorded as a rollback",
                    canary.color
                ),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        [("blue.upstream", "blue:80"), ("green.upstream", "green:80")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn patch(change: Change, pairs: &[(&str, &str)]) -> Result<Value, String> {
        patch_for(change, &data(pairs), "7", SystemTime::UNIX_EPOCH).map(|(p, _)| p)
    }

    #[test]
    fn promote_moves_to_the_next_step_then_makes_the_canary_stable() {
        let steps = [
            ("progressive.steps", "5,25,50,100"),
            ("canary-weight", "25"),
        ];
        assert_eq!(
            patch(Change::Promote { full: false }, &steps).unwrap(),
            json!({ "data": { "canary-weight": "50" } })
        );
        assert_eq!(
            patch(Change::Promote { full: true }, &steps).unwrap(),
            json!({ "data": { "canary-weight": "0", "stable": "green" } })
        );
        let last = [
            ("progressive.steps", "5,25"),
            ("canary-weight", "25"),
            ("stable", "green"),
        ];
        assert_eq!(
            patch(Change::Promote { full: false }, &last).unwrap()["data"]["stable"],
            "blue"
        );
    }

    #[test]
    fn set_weight_pause_resume_and_abort() {
        assert!(
            patch(Change::SetWeight(101), &[])
                .unwrap_err()
                .contains("above")
        );
        assert_eq!(
            patch(Change::SetWeight(30), &[]).unwrap(),
            json!({ "data": { "canary-weight": "30" } })
        );
        assert_eq!(
            patch(Change::Pause, &[]).unwrap()["data"]["progressive.paused"],
            "true"
        );
        assert_eq!(
            patch(Change::Resume, &[("progressive.paused", "true")]).unwrap()["data"]["progressive.paused"],
            "false"
        );
        assert_eq!(
            patch(Change::Resume, &[("progressive.paused", "false")]).unwrap()["data"]["progressive.paused"],
            Value::Null
        );
        let abort = patch(Change::Abort, &[("canary-weight", "25")]).unwrap();
        assert_eq!(abort["data"]["canary-weight"], "0");
        let annotations = &abort["metadata"]["annotations"];
        assert_eq!(annotations[ROLLED_BACK_CANARY_ANNOTATION], "green");
        assert_eq!(annotations[ROLLED_BACK_UPSTREAM_ANNOTATION], "green:80");
        assert_eq!(annotations[ROLLED_BACK_REVISION_ANNOTATION], "7");
        assert_eq!(
            annotations[ROLLED_BACK_AT_ANNOTATION],
            "1970-01-01T00:00:00Z"
        );
    }
}
