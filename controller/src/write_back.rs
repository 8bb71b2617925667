//! Persisting a rollback in the ConfigMap, so every replica and every restart agrees.
//!
//! The patch is a JSON merge patch that sets `data.canary-weight: "0"`, the two
//! `canary-proxy/` annotations, and `metadata.resourceVersion`: the API server treats that last
//! field as a precondition and answers 409 Conflict if the object changed since the proxy read
//! it. A conflict is not an error to push through: someone changed the ConfigMap, so it is
//! re-read, and the rollback is retried only if that ConfigMap still configures the canary the
//! proxy is rolling back. A new canary, or one already at weight 0, is left alone.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::{ConfigMapRef, Error, ROLLBACK_REASON_ANNOTATION, ROLLED_BACK_AT_ANNOTATION};

/// How many patches are tried, conflicts and transient failures together.
const MAX_ATTEMPTS: u32 = 6;

/// First delay after a transient failure; it doubles per attempt (0.2, 0.4, .. 3.2 s).
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Pause before re-reading after a conflict, times the number of conflicts so far (as
/// client-go's `RetryOnConflict` waits 10 ms): replicas that tripped together spread out.
const CONFLICT_DELAY: Duration = Duration::from_millis(10);

/// The field manager recorded by the API server for our writes.
const FIELD_MANAGER: &str = "canary-proxy";

/// A rollback decided by the data path, to be written to the ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRecord {
    /// The canary color rolled back (`blue` or `green`).
    pub canary_color: String,
    /// The canary's `<color>.upstream` value as the ConfigMap had it; a different upstream
    /// means a new canary that must not inherit this rollback.
    pub canary_upstream: String,
    /// A sentence with the figures, stored in `canary-proxy/rollback-reason`.
    pub reason: String,
    /// When the rollback happened, RFC 3339, stored in `canary-proxy/rolled-back-at`.
    pub at: String,
    /// The resourceVersion of the config the data path was running; the patch's precondition.
    pub seen_resource_version: String,
}

/// How a write-back ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBackOutcome {
    /// The ConfigMap now says weight 0 with our annotations, at this resourceVersion.
    Written {
        /// The resourceVersion the patch produced.
        resource_version: String,
    },
    /// Another writer (another replica, or a person) already set this canary's weight to 0.
    AlreadyRolledBack,
    /// The ConfigMap now configures a different canary (other stable color or upstream): the
    /// rollback concerned the old one, so nothing is written.
    CanaryChanged,
    /// The ConfigMap no longer exists; there is nothing to write to.
    Deleted,
}

/// Writes a rollback to the ConfigMap, with the resourceVersion the proxy saw as precondition.
///
/// Conflicts are re-read and retried while the same canary is configured; transient failures
/// (unreachable, 429, 5xx) are retried with backoff, at most six patches in all.
/// An `Err` means nothing was written: the caller keeps its in-memory rollback and may call
/// again later (a stale `seen_resource_version` is fine: it becomes a conflict and a re-read).
/// It takes seconds when the API server struggles, so run it in its own task, off the data path.
pub async fn write_back(
    client: &Client,
    cm: &ConfigMapRef,
    rollback: &RollbackRecord,
) -> Result<WriteBackOutcome, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
    let mut precondition = Some(rollback.seen_resource_version.clone()).filter(|rv| !rv.is_empty());
    let mut conflicts = 0;
    let mut delay = FIRST_RETRY_DELAY;
    for attempt in 1..=MAX_ATTEMPTS {
        let resource_version = match precondition.take() {
            Some(rv) => rv,
            // No version to build on: read the current one and check it is still our canary.
            None => match reread(&api, cm, rollback).await {
                Ok(Reread::Retry(rv)) => rv,
                Ok(Reread::Done(outcome)) => return Ok(outcome),
                Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(configmap = %cm, %error, "re-reading for the rollback failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    continue;
                }
                Err(error) => return Err(api_error("reading", cm, error)),
            },
        };
        match api
            .patch(
                &cm.name,
                &patch_params(),
                &Patch::Merge(patch_body(rollback, &resource_version)),
            )
            .await
        {
            Ok(written) => {
                let resource_version = written.metadata.resource_version.unwrap_or_default();
                tracing::info!(configmap = %cm, %resource_version, canary = %rollback.canary_color, "rollback written to the ConfigMap");
                return Ok(WriteBackOutcome::Written { resource_version });
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                conflicts += 1;
                tokio::time::sleep(CONFLICT_DELAY * conflicts).await;
                tracing::info!(configmap = %cm, %resource_version, "ConfigMap changed since the rollback was decided; re-reading");
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                return Ok(WriteBackOutcome::Deleted);
            }
            Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(configmap = %cm, %error, "writing the rollback failed; retrying");
                precondition = Some(resource_version);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => return Err(api_error("patching", cm, error)),
        }
    }
    Err(Error::ConflictsExhausted {
        cm: cm.clone(),
        attempts: conflicts,
    })
}

/// What a re-read after a conflict decided.
enum Reread {
    /// Same canary, not yet rolled back: patch again on top of this resourceVersion.
    Retry(String),
    /// Nothing more to write.
    Done(WriteBackOutcome),
}

async fn reread(
    api: &Api<ConfigMap>,
    cm: &ConfigMapRef,
    rollback: &RollbackRecord,
) -> Result<Reread, kube::Error> {
    let Some(current) = api.get_opt(&cm.name).await? else {
        return Ok(Reread::Done(WriteBackOutcome::Deleted));
    };
    let data = current.data.unwrap_or_default();
    let decision = match judge(&data, rollback) {
        Judgement::SameCanary => {
            return Ok(Reread::Retry(
                current.metadata.resource_version.unwrap_or_default(),
            ));
        }
        Judgement::AlreadyZero => WriteBackOutcome::AlreadyRolledBack,
        Judgement::Changed => WriteBackOutcome::CanaryChanged,
    };
    tracing::info!(configmap = %cm, outcome = ?decision, "rollback write-back not needed");
    Ok(Reread::Done(decision))
}

/// How the current ConfigMap data relates to the rollback being written.
#[derive(Debug, PartialEq, Eq)]
enum Judgement {
    /// Still the same canary, with traffic: the rollback must be written.
    SameCanary,
    /// Still the same canary, already at weight 0.
    AlreadyZero,
    /// Another canary (color or upstream), or data we cannot read: not ours to touch.
    Changed,
}

/// Compares the ConfigMap's canary with the one rolled back, using the DESIGN.md defaults
/// (`stable` = `blue`, `canary-weight` = `0`).
fn judge(data: &BTreeMap<String, String>, rollback: &RollbackRecord) -> Judgement {
    let canary = match data.get("stable").map(|s| s.trim()).unwrap_or("blue") {
        "blue" => "green",
        "green" => "blue",
        _ => return Judgement::Changed,
    };
    let upstream = data
        .get(&format!("{canary}.upstream"))
        .map(|u| normalize_upstream(u));
    if canary != rollback.canary_color
        || upstream != Some(normalize_upstream(&rollback.canary_upstream))
    {
        return Judgement::Changed;
    }
    let weight = data.get("canary-weight").map(|w| w.trim()).unwrap_or("0");
    match weight.parse::<f64>() {
        Ok(0.0) => Judgement::AlreadyZero,
        _ => Judgement::SameCanary,
    }
}

/// `http://host:port/` and `host:port` name the same upstream.
fn normalize_upstream(upstream: &str) -> &str {
    let upstream = upstream.trim();
    upstream
        .strip_prefix("http://")
        .unwrap_or(upstream)
        .trim_end_matches('/')
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn patch_body(rollback: &RollbackRecord, resource_version: &str) -> serde_json::Value {
    json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {
                ROLLED_BACK_AT_ANNOTATION: rollback.at,
                ROLLBACK_REASON_ANNOTATION: rollback.reason,
            },
        },
        "data": { "canary-weight": "0" },
    })
}

/// Failures worth another try: the API server unreachable, overloaded or failing.
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn api_error(action: &'static str, cm: &ConfigMapRef, source: kube::Error) -> Error {
    Error::Api {
        action,
        cm: cm.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RollbackRecord {
        RollbackRecord {
            canary_color: "green".into(),
            canary_upstream: "green.prod:8080".into(),
            reason: "green failed 12 of 40 requests (30.0%) over 30s, above 5%".into(),
            at: "2026-01-01T00:00:00Z".into(),
            seen_resource_version: "7".into(),
        }
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn judges_the_configured_canary() {
        let base = [
            ("blue.upstream", "blue.prod:8080"),
            ("green.upstream", "http://green.prod:8080/"),
        ];
        let mut d = data(&base);
        d.insert("canary-weight".into(), "20".into());
        assert_eq!(judge(&d, &record()), Judgement::SameCanary);
        d.insert("canary-weight".into(), "0".into());
        assert_eq!(judge(&d, &record()), Judgement::AlreadyZero);
        assert_eq!(
            judge(&data(&base), &record()),
            Judgement::AlreadyZero,
            "weight defaults to 0"
        );
        d.insert("canary-weight".into(), "20".into());
        d.insert("green.upstream".into(), "green-v2.prod:8080".into());
        assert_eq!(
            judge(&d, &record()),
            Judgement::Changed,
            "new upstream, new canary"
        );
        d.insert("green.upstream".into(), "green.prod:8080".into());
        d.insert("stable".into(), "green".into());
        assert_eq!(
            judge(&d, &record()),
            Judgement::Changed,
            "blue is the canary now"
        );
        d.insert("stable".into(), "purple".into());
        assert_eq!(judge(&d, &record()), Judgement::Changed);
    }

    #[test]
    fn patch_carries_the_precondition_and_annotations() {
        let body = patch_body(&record(), "42");
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["data"]["canary-weight"], "0");
        assert_eq!(
            body["metadata"]["annotations"][ROLLED_BACK_AT_ANNOTATION],
            "2026-01-01T00:00:00Z"
        );
        assert!(
            body["metadata"]["annotations"][ROLLBACK_REASON_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("30.0%")
        );
    }
}
