//! One request's way through the proxy, in order: route choice, header rewrite, the upstream
//! exchange, response accounting (which may trip the rollback), and the failover of a request
//! that never reached the canary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use crate::accounting::Outcome;
use crate::body::ResponseBody;
use crate::config::Color;
use crate::headers::{self, Scheme};
use crate::metrics::ErrorKind;
use crate::route::RouteTable;
use crate::runtime::Runtime;

/// Handles one client request.
pub async fn handle(
    runtime: Arc<Runtime>,
    peer: SocketAddr,
    scheme: Scheme,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let Some(table) = runtime.routes().clone() else {
        return Ok(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet\n",
        ));
    };
    let color = table.choose(req.headers());
    let (mut head, body) = req.into_parts();
    headers::to_upstream(&mut head, peer.ip(), scheme);
    Ok(forward(runtime, &table, color, Request::from_parts(head, body)).await)
}

/// Sends `req` to `color`, and to stable instead if it could not reach the canary.
async fn forward(
    runtime: Arc<Runtime>,
    table: &Arc<RouteTable>,
    mut color: Color,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let config = &table.config;
    loop {
        let started = Instant::now();
        let upstream = &table.upstreams[color.index()];
        let failure = match upstream.send(req, config.timeouts).await {
            Ok((response, lease)) => {
                let status = response.status();
                runtime.account(
                    table,
                    color,
                    Outcome::Response(status.as_u16()),
                    started.elapsed(),
                );
                let (mut head, body) = response.into_parts();
                headers::to_client(&mut head);
                if let Some(name) = &config.response_color_header {
                    head.headers
                        .insert(name.clone(), HeaderValue::from_static(color.as_str()));
                }
                let body = ResponseBody::upstream(body, lease, runtime, color);
                return Response::from_parts(head, body);
            }
            Err(failure) => failure,
        };
        runtime.account(
            table,
            color,
            Outcome::NoResponse(failure.kind),
            started.elapsed(),
        );
        debug!(color = %color, upstream = %upstream.addr, error = %failure.error, "upstream failed");
        match failure.request {
            // Never reached the canary: stable can take it without any risk of doing it twice.
            Some(unsent) if color == config.canary() && config.retry_canary_connect_failure => {
                runtime.metrics.color(color).retries_to_other.inc();
                color = config.stable;
                req = unsent;
            }
            _ => return error_response(failure.kind, color),
        }
    }
}

fn error_response(kind: ErrorKind, color: Color) -> Response<ResponseBody> {
    let (status, what) = match kind {
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "did not answer in time"),
        ErrorKind::Connect => (StatusCode::BAD_GATEWAY, "could not be reached"),
        ErrorKind::Reset | ErrorKind::Status => (StatusCode::BAD_GATEWAY, "broke the connection"),
    };
    local(status, format!("the {color} upstream {what}\n"))
}

/// A short plain-text response written by the proxy itself.
pub fn local(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
