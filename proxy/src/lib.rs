//! canary-proxy
