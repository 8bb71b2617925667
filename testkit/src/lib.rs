//! Test-only helpers shared by the workspace's end-to-end tests.
//!
//! - [`upstream`]: test upstreams that say their color and can fail or stall on demand.
//! - [`client`]: a small HTTP/1.1 and HTTP/2 client.
//! - [`proxy`]: the real `canary-proxy` binary run as a child process.

pub mod client;
pub mod fake_apiserver;
pub mod proxy;
pub mod upstream;
