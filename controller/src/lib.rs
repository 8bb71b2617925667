//! Kubernetes API side of canary-proxy, in the order a proxy uses it:
//!
//! - [`cm_ref`]: [`ConfigMapRef`], the `NAMESPACE/NAME` given to `--configmap`.
//! - [`client`]: [`connect`], kubeconfig or in-cluster service account.
//! - [`mod@watch`]: [`watch()`], the ConfigMap as a stream of [`SourceEvent`]s, resilient to a
//!   missing object, deletion, 410 Gone and an unreachable API server.
//! - [`mod@write_back`]: [`write_back()`], a rollback persisted in the ConfigMap under a
//!   resourceVersion precondition, so every replica converges and restarts agree.
//! - [`events`]: [`record_event`], Kubernetes Events for rollbacks and rejected configs.
//!
//! This crate knows nothing of the proxy's config types: it hands over the ConfigMap's `data`
//! as strings and takes rollbacks as plain records.

pub mod client;
pub mod cm_ref;
pub mod error;
pub mod events;
pub mod watch;
pub mod write_back;

pub use client::connect;
pub use cm_ref::{ConfigMapRef, ParseConfigMapRefError};
pub use error::Error;
pub use events::{EventKind, record_event};
/// The Kubernetes client that [`connect`] makes, for callers that do not depend on kube.
pub use kube::Client;
pub use watch::{SourceEvent, watch};
pub use write_back::{RollbackRecord, WriteBackOutcome, write_back};

/// Prefix of the annotations this project writes on the ConfigMap.
pub const ANNOTATION_PREFIX: &str = "canary-proxy/";

/// Annotation holding the RFC 3339 time of the last rollback written back.
pub const ROLLED_BACK_AT_ANNOTATION: &str = "canary-proxy/rolled-back-at";

/// Annotation holding the reason (with figures) of the last rollback written back.
pub const ROLLBACK_REASON_ANNOTATION: &str = "canary-proxy/rollback-reason";
