//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status`, `/evidence` (with
//! `--fleet`, for the fleet's judge) and the `/` page.
//!
//! Its clients are few (the kubelet's probes, Prometheus, an operator's port-forward), so it
//! holds at most [`MAX_CONNECTIONS`] at once and drops a connection that sends no request
//! headers within [`HEADER_READ_TIMEOUT`] or lives past [`CONNECTION_LIFETIME`]: idle or slow
//! clients cannot pile up and starve the probes. Who may connect at all is the
//! NetworkPolicy's business (`k8s/networkpolicy.yaml`).

mod status;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::fleet::gather::JUDGE_HEADER;
use crate::runtime::Runtime;

const INDEX_HTML: &str = include_str!("index.html");

/// Admin connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// Time for a client to send a request's headers, the first and each keep-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest life of one admin connection; a scraper that keeps its connection reconnects.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Logged once per episode of a full listener, not per refused connection.
    let mut full = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !full {
                warn!(
                    limit = MAX_CONNECTIONS,
                    "admin listener full; closing new connections until one ends"
                );
            }
            full = true;
            continue;
        };
        full = false;
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = route(&runtime, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(e)) => debug!(error = %e, "admin connection ended with an error"),
                Err(_) => debug!("admin connection closed at the end of its lifetime"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn route(runtime: &Runtime, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            runtime.metrics.endpoints.sync(runtime.routes().as_deref());
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                runtime.metrics.render(&runtime.tally),
            )
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if runtime.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if runtime.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" if runtime.routes().is_some() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the stable color has no ready endpoint yet\n",
        ),
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("no configuration loaded yet: {}\n", runtime.source_state()),
        ),
        "/status" => respond(StatusCode::OK, "application/json", status::render(runtime)),
        "/evidence" => evidence(runtime, req),
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /evidence`: this replica's evidence for the fleet's judge, who names itself in a
/// header so that every replica can show who judges it.
fn evidence(runtime: &Runtime, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(fleet) = runtime.fleet() else {
        return text(StatusCode::NOT_FOUND, "not in a fleet (no --fleet)\n");
    };
    let Some(evidence) = runtime.evidence() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet\n",
        );
    };
    let judge = req
        .headers()
        .get(JUDGE_HEADER)
        .and_then(|v| v.to_str().ok());
    fleet.asked(judge, runtime.now_ms());
    let body = serde_json::to_vec(&evidence).expect("evidence serialises");
    respond(StatusCode::OK, "application/json", body)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
