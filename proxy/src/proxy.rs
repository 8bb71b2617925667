//! One request's way through the proxy, in order: admission, route choice, header rewrite,
//! the upstream exchange, response accounting (which may trip the rollback), and the failover
//! of a request that never reached the canary. Upgraded connections (WebSocket) become a byte tunnel to the
//! color that accepted them, closed when idle or when the drain timeout has passed. A request
//! that expects `100-continue` sends its body only once the upstream has asked for it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, CONTENT_TYPE, EXPECT, HeaderValue, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::accounting::Outcome;
use crate::admission;
use crate::body::{ClientFault, Judged, Pending, RequestBody, ResponseBody, Source};
use crate::config::{Color, Config, Protocol};
use crate::headers;
use crate::lean::relay;
use crate::listener::{ClientConn, TunnelSlot};
use crate::metrics::ErrorKind;
use crate::route::{Choice, RouteTable};
use crate::runtime::{Current, Runtime};
use crate::upstream::endpoints::Served;
use crate::upstream::{Fault, Lease};

/// Handles one client request on `conn`.
pub async fn handle(
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let in_flight = conn.start();
    // On the heap: the exchange's state is kilobytes, and hyper moves the service's future
    // several times (into an HTTP/2 stream's task, for one) before it first runs.
    let response = Box::pin(respond(&conn, req)).await;
    in_flight.finish();
    Ok(response)
}

async fn respond(conn: &ClientConn, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let Some(current) = conn.runtime.current() else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet\n",
        );
    };
    let table = &current.table;
    let upgrade = upgrade_of(&mut req);
    let (mut head, body) = req.into_parts();
    let policy = &table.config.client;
    if let Err((status, text)) = admission::admit(&mut head, policy) {
        let mut refused = local(status, text);
        if head.method == Method::CONNECT {
            // Whatever the client sends next would be tunnel bytes, not a request.
            refused
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        return refused;
    }
    let tunnel = match upgrade {
        Some((protocol, client)) => match conn.drain.open_tunnel(policy.max_tunnels) {
            Some(slot) => Some((protocol, client, slot)),
            None => return local(StatusCode::SERVICE_UNAVAILABLE, "too many open tunnels\n"),
        },
        None => None,
    };
    let choice = table.choose(&head.headers);
    let color = choice.color;
    let mut body = RequestBody::new(body, policy);
    if head.version == Version::HTTP_11 && expects_continue(&head.headers) {
        // Reading the body would answer 100 before any upstream was asked. An HTTP/1.1
        // upstream is sent the expectation and the body waits for its 100; over h2c the
        // client gets its 100 once the stream to the upstream is open.
        if table.config.protocol(color) == Protocol::Http1 {
            body.hold_until_continue();
        }
    } else if head.version != Version::HTTP_2
        && let Err(fault) = body.read_first().await
    {
        // Broken framing or a stalled client, seen before anything went upstream.
        return client_fault(fault);
    }
    headers::to_upstream(
        &mut head,
        &conn.client_value,
        conn.scheme,
        policy.trusts(conn.peer.ip()),
    );
    let tunnel = tunnel.map(|(protocol, client, slot)| {
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(UPGRADE, protocol);
        Tunnel {
            client,
            slot,
            idle: policy.tunnel_idle,
        }
    });
    let req = Request::from_parts(head, body);
    forward(current, choice, req, tunnel).await
}

/// The client side of a tunnel the request asks for, and what it may use.
struct Tunnel {
    /// The client's connection, once it is handed over.
    client: OnUpgrade,
    /// Its place under `limit.tunnels` and in the drain.
    slot: TunnelSlot,
    /// `timeout.tunnel-idle`.
    idle: Duration,
}

/// Whether the request asks for `100-continue` (RFC 9110 §10.1.1).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Sends `req` to the chosen color, and to stable instead if it could not reach the canary.
async fn forward(
    current: Arc<Current>,
    mut choice: Choice,
    mut req: Request<RequestBody>,
    client_upgrade: Option<Tunnel>,
) -> Response<ResponseBody> {
    let Current { runtime, table } = &*current;
    let config = &table.config;
    loop {
        let color = choice.color;
        let started = Instant::now();
        let upstream = &table.upstreams[color.index()];
        if client_upgrade.is_none() && relay::takes(&req, config.protocol(color)) {
            let missed = match relay::send(upstream, &mut req, config.timeouts).await {
                Ok((response, served)) => {
                    let response = response.map(|body| Source::Relayed(Box::new(body)));
                    return answer(&current, choice, started.elapsed(), response, None, served);
                }
                Err(missed) => missed,
            };
            let kind = missed.kind;
            let served = missed.served.as_ref();
            missed_upstream(runtime, table, choice, served, kind, started, &kind);
            if missed.unsent && to_stable(runtime, config, &mut choice) {
                continue;
            }
            if missed.switched {
                return local(StatusCode::BAD_GATEWAY, SWITCHED_UNASKED);
            }
            return error_response(kind, color);
        }
        let missed = match upstream.send(req, config.timeouts).await {
            Ok((mut response, lease, served)) => {
                let latency = started.elapsed();
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(client) = client_upgrade else {
                        runtime.account(
                            table,
                            choice,
                            Some(&served),
                            Outcome::NoResponse(ErrorKind::Reset),
                            latency,
                        );
                        return local(StatusCode::BAD_GATEWAY, SWITCHED_UNASKED);
                    };
                    runtime.account(
                        table,
                        choice,
                        Some(&served),
                        Outcome::Response(101),
                        latency,
                    );
                    tokio::spawn(tunnel(client, hyper::upgrade::on(&mut response)));
                    return switching_protocols(response);
                }
                let response = response.map(Source::Hyper);
                return answer(&current, choice, latency, response, Some(lease), served);
            }
            Err(missed) => missed,
        };
        let failure = missed.failure;
        let kind = match failure.fault {
            Fault::Upstream(kind) => kind,
            // The client broke its own request body: nothing to hold against the upstream.
            Fault::Client(fault) => return client_fault(fault),
        };
        let served = missed.served.as_ref();
        missed_upstream(
            runtime,
            table,
            choice,
            served,
            kind,
            started,
            &failure.error,
        );
        match failure.request {
            Some(unsent) if to_stable(runtime, config, &mut choice) => req = unsent,
            _ => return error_response(kind, color),
        }
    }
}

/// The answer to a 101 the request did not ask for (on either HTTP/1.1 path).
pub(crate) const SWITCHED_UNASKED: &str = "the upstream switched protocols unasked\n";

/// Turns a request that never reached the canary to stable, which can take it without any
/// risk of doing it twice; whether it was (`retry-canary-connect-failure`).
pub(crate) fn to_stable(runtime: &Runtime, config: &Config, choice: &mut Choice) -> bool {
    if choice.color != config.canary() || !config.retry_canary_connect_failure {
        return false;
    }
    runtime.metrics.color(choice.color).retries_to_other.inc();
    choice.color = config.stable;
    true
}

/// The client's response to an upstream's `response`, `latency` after the request started;
/// accounted when its body ends.
fn answer(
    current: &Arc<Current>,
    choice: Choice,
    latency: Duration,
    response: Response<Source>,
    lease: Option<Lease>,
    served: Served,
) -> Response<ResponseBody> {
    let config = &current.table.config;
    let status = response.status().as_u16();
    let judged = match grpc_outcome(&response) {
        Some(GrpcOutcome::Trailers) => Judged::GrpcTrailers,
        Some(GrpcOutcome::Status(code)) => Judged::Grpc(code),
        None => Judged::Status,
    };
    let (mut head, body) = response.into_parts();
    headers::to_client(&mut head);
    if let Some(name) = &config.response_color_header {
        head.headers.insert(
            name.clone(),
            HeaderValue::from_static(choice.color.as_str()),
        );
    }
    // The request's own table goes with its body, to account it at its end.
    let pending = Pending {
        current: Arc::clone(current),
        choice,
        status,
        latency,
        judged,
        served,
    };
    Response::from_parts(head, ResponseBody::upstream(body, lease, pending))
}

/// Accounts a request of `choice` that got no response (`kind`) from `served`, if it reached
/// an endpoint, and logs why (on either HTTP/1.1 path).
pub(crate) fn missed_upstream(
    runtime: &Runtime,
    table: &Arc<RouteTable>,
    choice: Choice,
    served: Option<&Served>,
    kind: ErrorKind,
    started: Instant,
    error: &dyn std::fmt::Debug,
) {
    runtime.account(
        table,
        choice,
        served,
        Outcome::NoResponse(kind),
        started.elapsed(),
    );
    let color = choice.color;
    if let Some(served) = served {
        let endpoint = &served.endpoint().upstream.addr;
        debug!(color = %color, %endpoint, ?error, "upstream failed");
    } else {
        debug!(color = %color, ?error, "upstream failed");
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
/// side closes, no byte has crossed for the idle timeout (checked once per idle period, so an
/// idle tunnel closes within two of them), or the drain timeout has passed; then shuts both
/// sides down cleanly.
async fn tunnel(client: Tunnel, upstream: OnUpgrade) {
    let Tunnel {
        client,
        mut slot,
        idle,
    } = client;
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        debug!("upgrade did not complete");
        return;
    };
    let moved = AtomicU64::new(0);
    let mut client = Counted {
        inner: TokioIo::new(client),
        moved: &moved,
    };
    let mut upstream = Counted {
        inner: TokioIo::new(upstream),
        moved: &moved,
    };
    {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut seen = 0;
        loop {
            tokio::select! {
                copied = &mut copy => {
                    if let Err(e) = copied {
                        debug!(error = %e, "tunnel ended");
                    }
                    return;
                }
                () = tokio::time::sleep(idle) => {
                    let now = moved.load(Relaxed);
                    if now == seen {
                        debug!(?idle, "tunnel idle, closing it");
                        break;
                    }
                    seen = now;
                }
                () = slot.drain().closing() => break,
            }
        }
    }
    for side in [
        &mut client.inner as &mut (dyn AsyncWrite + Unpin + Send),
        &mut upstream.inner,
    ] {
        let _ = tokio::time::timeout(TUNNEL_CLOSE, side.shutdown()).await;
    }
}

/// How long each side of a tunnel gets to take its close.
const TUNNEL_CLOSE: Duration = Duration::from_secs(1);

/// One side of a tunnel, counting the bytes read from it.
struct Counted<'a, T> {
    inner: T,
    moved: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.moved.fetch_add(read as u64, Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum GrpcOutcome {
    /// The status will come in the trailers.
    Trailers,
    /// A trailers-only response: the status is in the headers.
    Status(u32),
}

fn grpc_outcome<B>(response: &Response<B>) -> Option<GrpcOutcome> {
    let grpc = response.status() == StatusCode::OK
        && response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| is_grpc(v.as_bytes()));
    if !grpc {
        return None;
    }
    Some(if response.headers().contains_key("grpc-status") {
        GrpcOutcome::Status(grpc_status(response.headers()))
    } else {
        GrpcOutcome::Trailers
    })
}

/// Whether `content_type` is gRPC's: `application/grpc`, alone or with `+format` or
/// parameters. gRPC-Web (`application/grpc-web…`) carries its status in the body, not in
/// trailers, so it is judged as plain HTTP.
fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
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
    let (status, text) = fault.answer();
    let mut response = local(status, text);
    // The rest of a broken or refused body would be read as the next request: close instead.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn error_response(kind: ErrorKind, color: Color) -> Response<ResponseBody> {
    let (status, text) = upstream_error(kind, color);
    local(status, text)
}

/// The status and text of the proxy's own answer when `color`'s upstream failed with `kind`.
pub fn upstream_error(kind: ErrorKind, color: Color) -> (StatusCode, String) {
    let (status, what) = match kind {
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "did not answer in time"),
        ErrorKind::Connect => (StatusCode::BAD_GATEWAY, "could not be reached"),
        ErrorKind::Reset | ErrorKind::Status => (StatusCode::BAD_GATEWAY, "broke the connection"),
    };
    (status, format!("the {color} upstream {what}\n"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_web_is_not_grpc() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(is_grpc(grpc.as_bytes()), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/json",
        ] {
            assert!(!is_grpc(other.as_bytes()), "{other}");
        }
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves the service's future before it runs (into an HTTP/2 stream's task, for one),
    /// and callgrind showed those copies at 2,700 instructions per h2c request while the
    /// exchange's state was inline (5,080 bytes in a debug build; 320 boxed, the request
    /// itself most of it).
    #[test]
    fn the_service_future_is_small_to_move() {
        let size = future_size(handle);
        assert!(size <= 512, "handle's future holds {size} bytes");
    }
}
