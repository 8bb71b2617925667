//! The data-plane, rollback and hostile HTTP/1.1 suites again, with plain-TCP clients served
//! by hyper (`--http1 hyper`) instead of the lean path, so that routing, metrics, rollback and
//! the hostile cases are shown to behave alike on both. The test kit starts the proxy on the
//! hyper path for this binary (see `canary_testkit::proxy`).

#[path = "data_plane.rs"]
mod data_plane;
#[path = "hostile_http1.rs"]
mod hostile_http1;
#[path = "rollback.rs"]
mod rollback;
