//! Building the Kubernetes client: kubeconfig first, in-cluster service account second.

use crate::Error;

/// Connects to the Kubernetes API the way `kubectl` would.
///
/// The kubeconfig named by `KUBECONFIG` (or `~/.kube/config`) wins; without one, the pod's
/// service account (`KUBERNETES_SERVICE_HOST` and the mounted token) is used. No request is
/// made here: an unreachable API server shows up later, in the watch.
pub async fn connect() -> Result<kube::Client, Error> {
    let config = kube::Config::infer().await.map_err(Error::Config)?;
    kube::Client::try_from(config).map_err(Error::Client)
}

/// Like [`connect`], for a command a person runs (the `kubectl canary` plugin): an answer such
/// as 503 (no proxy behind the Service) is reported at once instead of retried for minutes.
pub async fn connect_for_command() -> Result<kube::Client, Error> {
    let mut config = kube::Config::infer().await.map_err(Error::Config)?;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(Error::Client)
}
