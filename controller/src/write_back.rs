//! Persisting a rollback in the ConfigMap, so every replica and every restart agrees.
//!
//! The patch is a JSON merge patch that sets `data.canary-weight: "0"`, the rollback
//! annotations (which name the canary and the revision judged, see [`crate::persisted`]), and
//! `metadata.resourceVersion`: the API server treats that last field as a precondition and
//! answers 409 Conflict if the object changed since the proxy read it. A conflict is never
//! pushed through: the ConfigMap is re-read only to say why ([`WriteBackOutcome`]), and the
//! caller decides again on the newer revision once its watch has applied it. So a write that
//! lands late cannot undo an operator's resume, which is itself a newer revision; and the
//! whole write has a deadline ([`WRITE_BACK_DEADLINE`]), after which the caller retries on its
//! own terms (when the API server is back) instead of kube's or ours.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use crate::{
    ANNOTATION_PREFIX, Canary, ConfigMapRef, Error, ROLLBACK_ANNOTATIONS,
    ROLLBACK_REASON_ANNOTATION, ROLLED_BACK_AT_ANNOTATION, ROLLED_BACK_CANARY_ANNOTATION,
    ROLLED_BACK_REVISION_ANNOTATION, ROLLED_BACK_UPSTREAM_ANNOTATION, RollbackState,
};

/// The deadline the proxy gives one write-back (or one clean-up), retries included: past it
/// the request is dropped rather than left to land minutes later.
pub const WRITE_BACK_DEADLINE: Duration = Duration::from_secs(45);

/// First delay after a transient failure; it doubles per attempt up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Longest delay between two attempts within the deadline.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The field manager recorded by the API server for our writes (GitOps tools tell our fields
/// from theirs by it).
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
    /// The revision whose evidence was judged, stored in `canary-proxy/rolled-back-revision`.
    pub judged_revision: String,
    /// The resourceVersion the caller last saw, still configuring this canary: the patch's
    /// precondition.
    pub seen_resource_version: String,
}

/// How a write-back ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBackOutcome {
    /// The ConfigMap now records the rollback, at this resourceVersion.
    Written {
        /// The resourceVersion the patch produced.
        resource_version: String,
    },
    /// The ConfigMap already records a rollback of this canary (another replica wrote it).
    AlreadyRolledBack,
    /// The ConfigMap now configures a different canary (other stable color or upstream): the
    /// rollback concerned the old one, so nothing is written.
    CanaryChanged,
    /// The ConfigMap changed since `seen_resource_version` and records no rollback of this
    /// canary (an edit, or a resume): nothing is written. The caller decides again: at once on
    /// this content if only other metadata moved (its configuration is the one it judged),
    /// otherwise once its watch has applied the new revision. `None` if it could not be read.
    Superseded(Option<Current>),
    /// The ConfigMap no longer exists; there is nothing to write to.
    Deleted,
}

/// A ConfigMap's content, re-read after a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Its resourceVersion, the precondition of a write on top of it.
    pub resource_version: String,
    /// `data`.
    pub data: BTreeMap<String, String>,
    /// The `canary-proxy/` annotations (the others, like kubectl's last-applied record, are
    /// not configuration).
    pub annotations: BTreeMap<String, String>,
}

/// Writes a rollback to the ConfigMap, with `seen_resource_version` as precondition.
///
/// Transient failures (unreachable, 429, 5xx) are retried with backoff until `deadline`
/// ([`WRITE_BACK_DEADLINE`] in the proxy); a conflict is not retried (see the module docs). An `Err` means
/// nothing was written: the caller keeps its in-memory rollback and tries again later.
/// Run it in its own task, off the data path.
pub async fn write_back(
    client: &Client,
    cm: &ConfigMapRef,
    rollback: &RollbackRecord,
    deadline: Duration,
) -> Result<WriteBackOutcome, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
    let body = patch_body(rollback);
    let resource_version = match patch_within_deadline(&api, cm, body, deadline).await? {
        Patched::Done(resource_version) => resource_version,
        Patched::Conflict => return explain_conflict(&api, cm, rollback, deadline).await,
        Patched::NotFound => return Ok(WriteBackOutcome::Deleted),
    };
    tracing::info!(configmap = %cm, %resource_version, canary = %rollback.canary_color, "rollback written to the ConfigMap");
    Ok(WriteBackOutcome::Written { resource_version })
}

/// Removes rollback annotations that no longer apply ([`RollbackState::Stale`]) from the
/// ConfigMap at `seen_resource_version`: `Written`, `Superseded` if it changed meanwhile (with
/// the current content, as for [`write_back`]), or `Deleted`. Same deadline as
/// [`write_back`].
pub async fn clear_stale_rollback(
    client: &Client,
    cm: &ConfigMapRef,
    seen_resource_version: &str,
    deadline: Duration,
) -> Result<WriteBackOutcome, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
    let annotations: Map<String, Value> = ROLLBACK_ANNOTATIONS
        .iter()
        .map(|key| ((*key).to_owned(), Value::Null))
        .collect();
    let body = json!({
        "metadata": { "resourceVersion": seen_resource_version, "annotations": annotations },
    });
    Ok(
        match patch_within_deadline(&api, cm, body, deadline).await? {
            Patched::Done(resource_version) => {
                tracing::info!(configmap = %cm, "stale rollback annotations cleared");
                WriteBackOutcome::Written { resource_version }
            }
            Patched::Conflict => {
                WriteBackOutcome::Superseded(read_current(&api, cm, deadline).await)
            }
            Patched::NotFound => WriteBackOutcome::Deleted,
        },
    )
}

/// How a patch under a precondition ended.
pub(crate) enum Patched {
    /// Applied; the resourceVersion it produced.
    Done(String),
    /// 409: the object changed since the precondition's version.
    Conflict,
    /// 404: the object is gone.
    NotFound,
}

/// Sends `body` as a merge patch, retrying transient failures until `deadline`.
pub(crate) async fn patch_within_deadline(
    api: &Api<ConfigMap>,
    cm: &ConfigMapRef,
    body: Value,
    deadline: Duration,
) -> Result<Patched, Error> {
    let attempts = async {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            match api
                .patch(&cm.name, &patch_params(), &Patch::Merge(&body))
                .await
            {
                Ok(written) => {
                    let rv = written.metadata.resource_version.unwrap_or_default();
                    return Ok(Patched::Done(rv));
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    return Ok(Patched::Conflict);
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    return Ok(Patched::NotFound);
                }
                Err(error) if is_transient(&error) => {
                    tracing::debug!(configmap = %cm, %error, "patching the ConfigMap failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(error) => return Err(api_error("patching", cm, error)),
            }
        }
    };
    match tokio::time::timeout(deadline, attempts).await {
        Ok(result) => result,
        Err(_) => Err(Error::DeadlineExceeded {
            cm: cm.clone(),
            deadline,
        }),
    }
}

/// After a 409: re-reads the ConfigMap to say why the write is not needed any more. Never
/// retries the write: that is for the caller, who knows which configuration it judged.
async fn explain_conflict(
    api: &Api<ConfigMap>,
    cm: &ConfigMapRef,
    rollback: &RollbackRecord,
    deadline: Duration,
) -> Result<WriteBackOutcome, Error> {
    let outcome = match api_get(api, cm, deadline).await {
        Ok(None) => WriteBackOutcome::Deleted,
        Ok(Some(current)) => judge(current, rollback),
        Err(()) => WriteBackOutcome::Superseded(None),
    };
    tracing::info!(configmap = %cm, ?outcome, "ConfigMap changed since the rollback was decided; not written");
    Ok(outcome)
}

/// The ConfigMap's current content, `None` if it is gone or cannot be read in time.
async fn read_current(
    api: &Api<ConfigMap>,
    cm: &ConfigMapRef,
    deadline: Duration,
) -> Option<Current> {
    api_get(api, cm, deadline).await.ok().flatten()
}

/// One read within `deadline`; `Err` when it fails (logged: the watch will bring the news).
async fn api_get(
    api: &Api<ConfigMap>,
    cm: &ConfigMapRef,
    deadline: Duration,
) -> Result<Option<Current>, ()> {
    let read = match tokio::time::timeout(deadline, api.get_opt(&cm.name)).await {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => {
            tracing::debug!(configmap = %cm, %error, "re-reading after a conflict failed");
            return Err(());
        }
        Err(_) => return Err(()),
    };
    Ok(read.map(|current| Current {
        resource_version: current.metadata.resource_version.unwrap_or_default(),
        data: current.data.unwrap_or_default(),
        annotations: current
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| key.starts_with(ANNOTATION_PREFIX))
            .collect(),
    }))
}

/// What the current ConfigMap means for the rollback that could not be written.
fn judge(current: Current, rollback: &RollbackRecord) -> WriteBackOutcome {
    let same_canary = Canary::configured(&current.data)
        .is_some_and(|c| c.is(&rollback.canary_color, &rollback.canary_upstream));
    match RollbackState::read(&current.data, &current.annotations) {
        _ if !same_canary => WriteBackOutcome::CanaryChanged,
        RollbackState::Applies(_) => WriteBackOutcome::AlreadyRolledBack,
        RollbackState::None | RollbackState::Stale => WriteBackOutcome::Superseded(Some(current)),
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn patch_body(rollback: &RollbackRecord) -> Value {
    json!({
        "metadata": {
            "resourceVersion": rollback.seen_resource_version,
            "annotations": {
                ROLLED_BACK_AT_ANNOTATION: rollback.at,
                ROLLBACK_REASON_ANNOTATION: rollback.reason,
                ROLLED_BACK_CANARY_ANNOTATION: rollback.canary_color,
                ROLLED_BACK_UPSTREAM_ANNOTATION: rollback.canary_upstream,
                ROLLED_BACK_REVISION_ANNOTATION: rollback.judged_revision,
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
            judged_revision: "6".into(),
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
    fn a_conflict_is_explained_never_rejudged() {
        let base = [
            ("blue.upstream", "blue.prod:8080"),
            ("green.upstream", "http://green.prod:8080/"),
            ("canary-weight", "20"),
        ];
        let current =
            |d: BTreeMap<String, String>, annotations: &BTreeMap<String, String>| Current {
                resource_version: "8".into(),
                data: d,
                annotations: annotations.clone(),
            };
        let none = BTreeMap::new();
        let edited = current(data(&base), &none);
        assert_eq!(
            judge(edited.clone(), &record()),
            WriteBackOutcome::Superseded(Some(edited)),
            "same canary, no record: an edit or a resume, for the caller to judge"
        );
        let recorded = data(&[
            (ROLLED_BACK_AT_ANNOTATION, "2026-01-01T00:00:01Z"),
            (ROLLED_BACK_CANARY_ANNOTATION, "green"),
            (ROLLED_BACK_UPSTREAM_ANNOTATION, "green.prod:8080"),
        ]);
        assert_eq!(
            judge(current(data(&base), &recorded), &record()),
            WriteBackOutcome::AlreadyRolledBack
        );
        let mut d = data(&base);
        d.insert("green.upstream".into(), "green-v2.prod:8080".into());
        assert_eq!(
            judge(current(d, &none), &record()),
            WriteBackOutcome::CanaryChanged,
            "new upstream, new canary"
        );
        let mut d = data(&base);
        d.insert("stable".into(), "green".into());
        assert_eq!(
            judge(current(d, &recorded), &record()),
            WriteBackOutcome::CanaryChanged,
            "blue is the canary now"
        );
    }

    #[test]
    fn patch_carries_the_precondition_and_names_the_canary() {
        let body = patch_body(&record());
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["data"]["canary-weight"], "0");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(
            annotations[ROLLED_BACK_AT_ANNOTATION],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(annotations[ROLLED_BACK_CANARY_ANNOTATION], "green");
        assert_eq!(
            annotations[ROLLED_BACK_UPSTREAM_ANNOTATION],
            "green.prod:8080"
        );
        assert_eq!(annotations[ROLLED_BACK_REVISION_ANNOTATION], "6");
        assert!(
            annotations[ROLLBACK_REASON_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("30.0%")
        );
    }
}
