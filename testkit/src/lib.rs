//! Test-only helpers shared by the workspace's end-to-end tests.
//!
//! - [`upstream`]: test upstreams that say their color and can fail or stall on demand.
//! - [`client`]: a small HTTP/1.1 and HTTP/2 client.
//! - [`grpc`]: an h2c upstream that answers like a gRPC server, with a chosen `grpc-status`.
//! - [`websocket`]: an upstream that accepts upgrades and echoes the tunnel's bytes.
//! - [`proxy`]: the real `canary-proxy` binary run as a child process.
//! - [`faulty`]: upstreams that misbehave on purpose, and a raw-wire client.
//! - [`load`]: steady background requests, tallied, for changes made under traffic.
//! - [`procfs`]: a process's memory, file descriptors and CPU time, for bounding attacks.

pub mod client;
pub mod fake_apiserver;
pub mod faulty;
pub mod grpc;
pub mod load;
pub mod procfs;
pub mod proxy;
pub mod upstream;
pub mod websocket;
