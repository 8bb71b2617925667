//! The controller's error type: which Kubernetes step failed, and why.

use crate::ConfigMapRef;

/// A failure talking to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a kubeconfig (`KUBECONFIG` or `~/.kube/config`) nor the in-cluster service
    /// account could be loaded.
    #[error("no Kubernetes client configuration: {0}")]
    Config(#[source] kube::config::InferConfigError),

    /// The configuration was loaded but a client could not be built from it (bad TLS data).
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),

    /// An API request failed in a way that retrying will not fix (for example 403 Forbidden:
    /// check the Role), or kept failing until the retry budget ran out.
    #[error("{action} ConfigMap {cm} failed: {source}")]
    Api {
        /// What was being done, e.g. "patching".
        action: &'static str,
        /// The ConfigMap concerned.
        cm: ConfigMapRef,
        /// The client's error, carrying the API server's Status when there is one.
        #[source]
        source: kube::Error,
    },

    /// A write to the ConfigMap did not finish within its deadline (the API server
    /// unreachable or failing); it was dropped, so it cannot land later.
    #[error("writing ConfigMap {cm} did not finish within {deadline:?}")]
    DeadlineExceeded {
        /// The ConfigMap concerned.
        cm: ConfigMapRef,
        /// The deadline that passed.
        deadline: std::time::Duration,
    },
}

impl Error {
    /// The HTTP status the API server answered with, if the failure was an API answer.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}
