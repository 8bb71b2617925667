//! canary-bench: the test upstreams, load generator, demo and benchmark of canary-proxy.
//!
//! The modules in the order a benchmark's request meets them:
//!
//! - [`load`]: the load generator's engine (closed and open loop, HTTP/1.1 and h2c, HdrHistogram
//!   percentiles, the split by `x-color`), used in-process by every command.
//! - [`proxy`]: starts a real `canary-proxy` child process and reads its admin endpoints.
//! - [`upstream`]: the test upstream that names its color and injects faults on demand.
//! - [`demo`]: the article's story played on loopback, with its checks, timeline and HTML report.
//! - [`compare`]: the same load direct, through canary-proxy, NGINX and HAProxy.
//! - [`soak`]: minutes of load mixed with hostile clients and reloads, watched for leaks.
//! - [`spread`]: one color's pods under keep-alive: per-pod spread, one Service address against
//!   per-request balancing, and the balancer's cost.
//! - [`simulate`]: the rollback verdict's false rollbacks and detection delay, simulated.
//! - [`admin`]: the small HTTP client for admin endpoints.
//! - [`units`]: parsing of durations such as `10s` on the command line.

pub mod admin;
pub mod compare;
pub mod demo;
pub mod load;
pub mod proxy;
pub mod simulate;
pub mod soak;
pub mod spread;
pub mod units;
pub mod upstream;
