//! Kubernetes API side of canary-proxy, in the order a proxy uses it:
//!
//! - [`cm_ref`]: [`ConfigMapRef`], the `NAMESPACE/NAME` given to `--configmap`.
//! - [`client`]: [`connect`], kubeconfig or in-cluster service account.
//! - [`mod@watch`]: [`watch()`], the ConfigMap as a stream of [`SourceEvent`]s, resilient to a
//!   missing object, deletion, 410 Gone and an unreachable API server.
//! - [`persisted`]: which canary a ConfigMap configures, and whether its rollback annotations
//!   still apply to it.
//! - [`mod@write_back`]: [`write_back()`], a rollback persisted in the ConfigMap under a
//!   resourceVersion precondition, so every replica converges and restarts agree;
//!   [`clear_stale_rollback`] removes a record that no longer applies.
//! - [`events`]: [`record_event`], Kubernetes Events for rollbacks, rejected configs and the
//!   step plan.
//! - [`plugin`]: what `kubectl canary` does: `/status` through the service proxy, and each
//!   command a ConfigMap patch under a resourceVersion precondition.
//! - [`progressive`]: [`write_step`], a step of the plan written into the ConfigMap under a
//!   resourceVersion precondition, so `kubectl get` shows the step and a restart resumes there.
//! - [`fleet`]: with `--fleet`, the members (the peers' admin addresses) from the
//!   EndpointSlices of a headless Service.
//! - [`judge`]: with `--fleet`, the one judge, elected with a `coordination.k8s.io` Lease.
//! - [`endpoints`]: for a color whose upstream is a Service, its ready endpoints from its
//!   EndpointSlices.
//!
//! This crate knows nothing of the proxy's config types: it hands over the ConfigMap's `data`
//! as strings and takes rollbacks as plain records.

pub mod client;
pub mod cm_ref;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod fleet;
pub mod judge;
pub mod persisted;
pub mod plugin;
pub mod progressive;
mod slices;
pub mod watch;
pub mod write_back;

pub use client::{connect, connect_for_command};
pub use cm_ref::{ConfigMapRef, ParseConfigMapRefError};
pub use error::Error;
pub use events::{EventKind, record_event};
/// The Kubernetes client that [`connect`] makes, for callers that do not depend on kube.
pub use kube::Client;
pub use persisted::{Canary, PersistedRollback, RollbackState};
pub use progressive::{StepOutcome, StepWrite, write_step};
pub use watch::{SourceEvent, watch};
pub use write_back::{
    Current, RollbackRecord, WRITE_BACK_DEADLINE, WriteBackOutcome, clear_stale_rollback,
    write_back,
};

/// Prefix of the annotations this project writes on the ConfigMap.
pub const ANNOTATION_PREFIX: &str = "canary-proxy/";

/// Annotation holding the RFC 3339 time of the last rollback written back.
pub const ROLLED_BACK_AT_ANNOTATION: &str = "canary-proxy/rolled-back-at";

/// Annotation holding the reason (with figures) of the last rollback written back.
pub const ROLLBACK_REASON_ANNOTATION: &str = "canary-proxy/rollback-reason";

/// Annotation naming the canary color the last rollback concerned (`blue` or `green`).
pub const ROLLED_BACK_CANARY_ANNOTATION: &str = "canary-proxy/rolled-back-canary";

/// Annotation holding that canary's `<color>.upstream` as the ConfigMap had it: another
/// upstream is a new release, which the rollback does not concern.
pub const ROLLED_BACK_UPSTREAM_ANNOTATION: &str = "canary-proxy/rolled-back-upstream";

/// Annotation holding the configuration revision (resourceVersion) whose evidence was judged.
pub const ROLLED_BACK_REVISION_ANNOTATION: &str = "canary-proxy/rolled-back-revision";

/// Every annotation of a rollback record: written together, cleared together.
pub const ROLLBACK_ANNOTATIONS: [&str; 5] = [
    ROLLED_BACK_AT_ANNOTATION,
    ROLLBACK_REASON_ANNOTATION,
    ROLLED_BACK_CANARY_ANNOTATION,
    ROLLED_BACK_UPSTREAM_ANNOTATION,
    ROLLED_BACK_REVISION_ANNOTATION,
];
