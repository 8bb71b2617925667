//! Kubernetes API side of canary-proxy.
