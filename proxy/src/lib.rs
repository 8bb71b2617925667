//! canary-proxy: a reverse proxy that splits traffic between a `blue` and a `green` upstream
//! with NGINX canary semantics, and rolls the canary back in the data path.
//!
//! The modules, in the order a request meets them:
//!
//! - [`listener`]: accepts connections and serves HTTP/1.1 and HTTP/2 on them, with limits;
//!   [`tls`] terminates TLS with a certificate that follows its files.
//! - [`lean`]: the lean HTTP/1.1 path for plain-TCP clients, which hands anything unusual to
//!   hyper.
//! - [`proxy`]: one request's path through the phases below.
//! - [`admission`]: what a request must satisfy before it goes anywhere.
//! - [`route`]: route choice, from the [`RouteTable`](route::RouteTable) snapshot.
//! - [`headers`]: hop-by-hop removal, `X-Forwarded-*` and `Via`.
//! - [`upstream`]: each color's endpoints, one chosen per request by power of two choices,
//!   failing ones ejected; pooled connections per endpoint.
//! - [`body`]: the request body under its limits, and the response body streamed back,
//!   returning its connection to the pool.
//! - [`accounting`]: counts each outcome per color and asks for a rollback decision.
//! - [`rollback`]: the sliding windows and the pure rule that decides.
//! - [`progressive`]: the step plan that moves the canary's weight on evidence.
//!
//! Around them:
//!
//! - [`config`]: the keys parsed and validated into an immutable snapshot; file sources.
//! - [`runtime`]: the shared state; the one `ArcSwap` the request path reads.
//! - [`metrics`]: Prometheus handles resolved once; [`shard`] spreads the per-response
//!   counters over per-thread shards.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/status`, `/evidence` and the `/` page.
//! - [`fleet`]: with `--fleet`, the evidence a replica serves and the fleet judge's verdict.
//! - [`workers`]: the data plane's worker threads, one current-thread runtime each.

#![warn(missing_docs)]

pub mod accounting;
pub mod admin;
pub mod admission;
pub mod body;
pub mod config;
pub mod fleet;
pub mod headers;
pub mod lean;
pub mod listener;
pub mod metrics;
pub mod progressive;
pub mod proxy;
pub mod rfc3339;
pub mod rollback;
pub mod route;
pub mod runtime;
pub mod shard;
pub mod tls;
pub mod upstream;
pub mod workers;
