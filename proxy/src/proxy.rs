//! One request's way through the proxy, in order: admission, route choice, header rewrite,
//! the upstream exchange, response accounting (which may trip the rollback), and the failover
//! of a request that never reached the canary. Upgraded connections (WebSocket) become a byte tunnel to the
//! color that accepted them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::accounting::Outcome;
use crate::admission;
use crate::body::{ClientFault, Judged, Pending, RequestBody, ResponseBody};
use crate::config::Color;
use crate::headers;
use crate::listener::ClientConn;
use crate::metrics::ErrorKind;
use crate::route::{Choice, RouteTable};
use crate::runtime::Runtime;
use crate::upstream::Fault;

/// Handles one client request on `conn`.
pub async fn handle(
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let in_flight = conn.start();
    let response = respond(&conn, req).await;
    in_flight.finish();
    Ok(response)
}

async fn respond(conn: &ClientConn, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let runtime = &conn.runtime;
    let Some(table) = (*runtime.routes()).clone() else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet\n",
        );
    };
    let upgrade = upgrade_of(&mut req);
    let (mut head, body) = req.into_parts();
    let policy = &table.config.client;
    if let Err((status, text)) = admission::admit(&mut head, policy) {
        return local(status, text);
    }
    let mut body = RequestBody::new(body, policy);
    if head.version != Version::HTTP_2
        && let Err(fault) = body.read_first().await
    {
        // Broken framing or a stalled client, seen before anything went upstream.
        return client_fault(fault);
    }
    let choice = table.choose(&head.headers);
    headers::to_upstream(
        &mut head,
        &conn.client_value,
        conn.scheme,
        policy.trusted_hops,
    );
    if let Some((protocol, _)) = &upgrade {
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(UPGRADE, protocol.clone());
    }
    let req = Request::from_parts(head, body);
    let runtime = runtime.clone();
    forward(runtime, &table, choice, req, upgrade.map(|(_, on)| on)).await
}

/// Sends `req` to the chosen color, and to stable instead if it could not reach the canary.
async fn forward(
    runtime: Arc<Runtime>,
    table: &Arc<RouteTable>,
    mut choice: Choice,
    mut req: Request<RequestBody>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let config = &table.config;
    loop {
        let color = choice.color;
        let started = Instant::now();
        let upstream = &table.upstreams[color.index()];
        let failure = match upstream.send(req, config.timeouts).await {
            Ok((mut response, lease)) => {
                let latency = started.elapsed();
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(client) = client_upgrade else {
                        runtime.account(
                            table,
                            choice,
                            Outcome::NoResponse(ErrorKind::Reset),
                            latency,
                        );
                        return local(
                            StatusCode::BAD_GATEWAY,
                            "the upstream switched protocols unasked\n",
                        );
                    };
                    runtime.account(table, choice, Outcome::Response(101), latency);
                    tokio::spawn(tunnel(client, hyper::upgrade::on(&mut response)));
                    return switching_protocols(response);
                }
                let pending = Pending {
                    table: table.clone(),
                    choice,
                    status: response.status().as_u16(),
                    latency,
                    judged: match grpc_outcome(&response) {
                        Some(GrpcOutcome::Trailers) => Judged::GrpcTrailers,
                        Some(GrpcOutcome::Status(code)) => Judged::Grpc(code),
                        None => Judged::Status,
                    },
                };
                let (mut head, body) = response.into_parts();
                headers::to_client(&mut head);
                if let Some(name) = &config.response_color_header {
                    head.headers
                        .insert(name.clone(), HeaderValue::from_static(color.as_str()));
                }
                let body = ResponseBody::upstream(body, lease, runtime, pending);
                return Response::from_parts(head, body);
            }
            Err(failure) => failure,
        };
        let kind = match failure.fault {
            Fault::Upstream(kind) => kind,
            // The client broke its own request: nothing to hold against the upstream.
            Fault::Client(fault) => return client_fault(fault),
        };
        runtime.account(table, choice, Outcome::NoResponse(kind), started.elapsed());
        debug!(color = %color, upstream = %upstream.addr, error = %failure.error, "upstream failed");
        match failure.request {
            // Never reached the canary: stable can take it without any risk of doing it twice.
            Some(unsent) if color == config.canary() && config.retry_canary_connect_failure => {
                runtime.metrics.color(color).retries_to_other.inc();
                choice.color = config.stable;
                req = unsent;
            }
            _ => return error_response(kind, color),
        }
    }
}

/// An HTTP/1.1 request asking to switch protocols: the protocol, and the client side of the
/// connection once it is handed over.
fn upgrade_of(req: &mut Request<Incoming>) -> Option<(HeaderValue, OnUpgrade)> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let protocol = req.headers().get(UPGRADE)?.clone();
    let asks = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| (protocol, hyper::upgrade::on(req)))
}

/// The 101 for the client, carrying the upstream's choice of protocol.
fn switching_protocols(response: Response<Incoming>) -> Response<ResponseBody> {
    let (mut head, _) = response.into_parts();
    let protocol = head.headers.get(UPGRADE).cloned();
    headers::to_client(&mut head);
    head.headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        head.headers.insert(UPGRADE, protocol);
    }
    Response::from_parts(head, ResponseBody::Local(None))
}

/// Copies bytes both ways between the upgraded client and upstream connections until either
/// side closes.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        debug!("upgrade did not complete");
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(error = %e, "tunnel ended");
    }
}

enum GrpcOutcome {
    /// The status will come in the trailers.
    Trailers,
    /// A trailers-only response: the status is in the headers.
    Status(u32),
}

fn grpc_outcome(response: &Response<Incoming>) -> Option<GrpcOutcome> {
    let grpc = response.status() == StatusCode::OK
        && response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return None;
    }
    Some(if response.headers().contains_key("grpc-status") {
        GrpcOutcome::Status(grpc_status(response.headers()))
    } else {
        GrpcOutcome::Trailers
    })
}

/// The `grpc-status` in `headers`; a missing or unreadable one is UNKNOWN (2), as gRPC says.
pub fn grpc_status(headers: &HeaderMap) -> u32 {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn client_fault(fault: ClientFault) -> Response<ResponseBody> {
    let (status, text) = match fault {
        ClientFault::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        ClientFault::Idle => (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        ),
        ClientFault::Malformed => (StatusCode::BAD_REQUEST, "malformed request body\n"),
    };
    let mut response = local(status, text);
    // The rest of a broken or refused body would be read as the next request: close instead.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
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
