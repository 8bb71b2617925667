//! One exchange on the lean path: route, pick an endpoint, send the head on a pooled or new
//! connection, read the response head, stream the body back, account at its end. The rules
//! are those of the hyper path ([`proxy`](crate::proxy), [`upstream`](crate::upstream),
//! [`body`](crate::body)): connect failover across endpoints, one replay of an idempotent
//! request whose pooled connection closed under it, a canary connect failure retried on
//! stable, 502 for a broken or ambiguous response, 504 past `timeout.request`, a body cut off
//! counted against its color, and a connection pooled again only after a clean end.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::chunked::Chunked;
use super::request::{Span, write_number};
use super::response::{self, Framing, HeadError, Response};
use super::{ClientIo, Work, pool};
use crate::body::{ClientFault, End, Judged};
use crate::config::Timeouts;
use crate::listener::{ClientConn, Phase};
use crate::metrics::ErrorKind;
use crate::proxy;
use crate::route::{Choice, RouteTable};
use crate::upstream::endpoints::{CONNECT_ATTEMPTS, Endpoints, Served};

/// The first read from an upstream takes this much room; bodies stream through it.
pub(super) const UPSTREAM_ROOM: usize = 16 * 1024;
/// The largest response head accepted (hyper's client reads larger ones, but a head this
/// size is already an attack or a bug).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response head from an endpoint, with the connection it came on.
pub(super) struct Answer {
    pub stream: TcpStream,
    pub served: Served,
    pub response: Response,
}

/// A request that got no usable response head.
pub struct Missed {
    /// What went wrong, as metered.
    pub kind: ErrorKind,
    /// The endpoint of the last attempt; `None` when the color had none.
    pub served: Option<Served>,
    /// Nothing reached any upstream: the request may go to another color.
    pub unsent: bool,
    /// The upstream answered 101 to a request that did not ask to switch.
    pub switched: bool,
    /// The client broke its own request body: nothing to hold against the upstream.
    pub client: Option<ClientFault>,
}

impl Missed {
    fn at(kind: ErrorKind, served: Served) -> Missed {
        Missed {
            kind,
            served: Some(served),
            unsent: false,
            switched: false,
            client: None,
        }
    }
}

/// Why sending a request failed.
enum SendFailure {
    /// The connection closed (or was reset) under the request.
    ClosedEarly,
    /// The upstream took no more of it for `timeout.request`.
    Timeout,
    /// The client's body stalled or broke.
    Client(ClientFault),
}

/// Why reading a response head failed.
enum HeadFailure {
    /// The connection closed (or was reset) before any byte of a response.
    ClosedEarly,
    /// A 101 nobody asked for.
    Switched,
    /// Broken mid-head, or a head refused.
    Broken,
}

/// Runs the exchange of the request in `work` and answers the client; whether the client
/// connection may carry another request.
pub(super) async fn run<T: ClientIo>(
    client: &mut T,
    conn: &ClientConn,
    table: &Arc<RouteTable>,
    work: &mut Work,
) -> bool {
    let Work {
        client: request,
        head,
        out,
        upstream: buf,
        fields,
    } = work;
    let config = &table.config;
    let runtime = &conn.runtime;
    let mut choice = table.choose(&head.lookup(request));
    head.write_upstream(request, conn.client_value.as_bytes(), out);
    let body_in_buf = (request.len() - head.len).min(head.body as usize);
    let body = Body {
        read: &request[head.len..head.len + body_in_buf],
        left: head.body - body_in_buf as u64,
        timeout: config.client.body_timeout,
    };
    loop {
        let color = choice.color;
        let started = Instant::now();
        let endpoints = &table.upstreams[color.index()];
        let sent = send(
            client,
            endpoints,
            out,
            &body,
            (buf, fields),
            Replay {
                idempotent: head.idempotent,
                head_method: head.head_method,
            },
            config.timeouts,
        )
        .await;
        let missed = match sent {
            Ok(answer) => {
                let latency = started.elapsed();
                let exchanged = Exchanged {
                    answer,
                    latency,
                    client_close: head.close,
                };
                return respond(client, conn, table, choice, exchanged, out, buf, fields).await;
            }
            Err(missed) => missed,
        };
        if let Some(fault) = missed.client {
            return client_fault(client, out, fault).await;
        }
        let (served, kind) = (missed.served.as_ref(), missed.kind);
        proxy::missed_upstream(runtime, table, choice, served, kind, started, &kind);
        if missed.unsent && proxy::to_stable(runtime, config, &mut choice) {
            continue;
        }
        let (status, text) = if missed.switched {
            (StatusCode::BAD_GATEWAY, proxy::SWITCHED_UNASKED.to_owned())
        } else {
            proxy::upstream_error(kind, color)
        };
        let close = head.close || conn.drain.phase() != Phase::Serving;
        return write_local(client, out, status, &text, close).await;
    }
}

/// A request's body: what has been read of it, and what is still to come from the client.
pub(super) struct Body<'a> {
    pub read: &'a [u8],
    pub left: u64,
    /// `timeout.client-body`.
    pub timeout: Duration,
}

/// What of the request decides how its response is read and whether it may be sent again.
#[derive(Clone, Copy)]
pub(super) struct Replay {
    /// Safe to send again when a pooled connection closed under it.
    pub idempotent: bool,
    /// A `HEAD`: its response has no body whatever its head says.
    pub head_method: bool,
}

/// Sends the request head `request` and its `body` (the rest of it read from `client`) to an
/// endpoint of `endpoints` and reads its response head into the first of `into` (its fields
/// into the second).
pub(super) async fn send<R: AsyncRead + Unpin>(
    client: &mut R,
    endpoints: &Endpoints,
    request: &[u8],
    body: &Body<'_>,
    (buf, fields): (&mut Vec<u8>, &mut Vec<(Span, Span)>),
    replay: Replay,
    timeouts: Timeouts,
) -> Result<Answer, Missed> {
    let mut tried = 0;
    let mut attempt = 0;
    'endpoints: loop {
        attempt += 1;
        let Some((served, n)) = endpoints.start(&mut tried) else {
            return Err(Missed {
                kind: ErrorKind::Connect,
                served: None,
                unsent: true,
                switched: false,
                client: None,
            });
        };
        let upstream = &served.endpoint().upstream;
        let mut replayed = false;
        loop {
            // After a replay, a fresh connection: the pooled ones may be closing together.
            let pooled = if replayed { None } else { pool::take(upstream) };
            let (mut stream, was_pooled) = match pooled {
                Some(stream) => (stream, true),
                None => match upstream.connect_raw(timeouts.connect).await {
                    Ok(stream) => (stream, false),
                    Err((kind, error)) => {
                        if attempt < CONNECT_ATTEMPTS.min(n) {
                            debug!(endpoint = %upstream.addr, %error, ?kind, "could not connect, trying another endpoint");
                            endpoints.connect_failed(&served);
                            continue 'endpoints;
                        }
                        return Err(Missed {
                            kind,
                            served: Some(served),
                            unsent: true,
                            switched: false,
                            client: None,
                        });
                    }
                },
            };
            let sent = send_request(client, &mut stream, request, body, buf, timeouts.request);
            match sent.await {
                Ok(()) => {}
                Err(SendFailure::ClosedEarly) if was_pooled && replay.idempotent => {
                    debug!(upstream = %upstream.addr, "pooled connection was closed, sending again");
                    replayed = true;
                    continue;
                }
                Err(SendFailure::ClosedEarly) => return Err(Missed::at(ErrorKind::Reset, served)),
                Err(SendFailure::Timeout) => return Err(Missed::at(ErrorKind::Timeout, served)),
                Err(SendFailure::Client(fault)) => {
                    let mut missed = Missed::at(ErrorKind::Reset, served);
                    missed.client = Some(fault);
                    return Err(missed);
                }
            }
            let exchange = read_head(&mut stream, buf, fields, replay.head_method);
            match tokio::time::timeout(timeouts.request, exchange).await {
                Ok(Ok(response)) => {
                    return Ok(Answer {
                        stream,
                        served,
                        response,
                    });
                }
                Ok(Err(HeadFailure::ClosedEarly)) if was_pooled && replay.idempotent => {
                    debug!(upstream = %upstream.addr, "pooled connection closed under an idempotent request, sending it again");
                    replayed = true;
                }
                Ok(Err(HeadFailure::Switched)) => {
                    let mut missed = Missed::at(ErrorKind::Reset, served);
                    missed.switched = true;
                    return Err(missed);
                }
                Ok(Err(_)) => return Err(Missed::at(ErrorKind::Reset, served)),
                Err(_) => return Err(Missed::at(ErrorKind::Timeout, served)),
            }
        }
    }
}

/// Writes the request head and the body read so far in one system call, then the rest of
/// the body as the client sends it (through `scratch`). Each write to the upstream may take
/// `timeout.request`; time spent waiting for the client is the client's, under its own
/// timeout.
async fn send_request<R: AsyncRead + Unpin>(
    client: &mut R,
    stream: &mut TcpStream,
    request: &[u8],
    body: &Body<'_>,
    scratch: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), SendFailure> {
    let first = write_two(stream, request, body.read);
    match tokio::time::timeout(limit, first).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(SendFailure::ClosedEarly),
        Err(_) => return Err(SendFailure::Timeout),
    }
    let mut left = body.left;
    while left > 0 {
        scratch.clear();
        if scratch.capacity() < UPSTREAM_ROOM {
            scratch.reserve(UPSTREAM_ROOM);
        }
        // Never past the body: what follows is the client's next request.
        let mut limited = (&mut *client).take(left);
        match tokio::time::timeout(body.timeout, limited.read_buf(scratch)).await {
            Ok(Ok(n)) if n > 0 => left -= n as u64,
            Ok(_) => return Err(SendFailure::Client(ClientFault::Malformed)),
            Err(_) => return Err(SendFailure::Client(ClientFault::Idle)),
        }
        match tokio::time::timeout(limit, stream.write_all(scratch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SendFailure::ClosedEarly),
            Err(_) => return Err(SendFailure::Timeout),
        }
    }
    Ok(())
}

/// Reads the response head into `buf` (interim 1xx responses skipped).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    fields: &mut Vec<(Span, Span)>,
    head_method: bool,
) -> Result<Response, HeadFailure> {
    buf.clear();
    let mut answered = false;
    loop {
        if buf.capacity() - buf.len() < UPSTREAM_ROOM / 4 {
            buf.reserve(UPSTREAM_ROOM);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) if buf.is_empty() && !answered => return Err(HeadFailure::ClosedEarly),
            Ok(0) | Err(_) => return Err(HeadFailure::Broken),
            Ok(_) => {}
        }
        loop {
            match response::parse(buf, head_method, fields) {
                Ok(response::Parsed::Head(r)) if r.status == 101 => {
                    return Err(HeadFailure::Switched);
                }
                Ok(response::Parsed::Head(r)) if (100..200).contains(&r.status) => {
                    answered = true;
                    buf.drain(..r.len);
                }
                Ok(response::Parsed::Head(r)) => return Ok(r),
                Ok(response::Parsed::Partial) if buf.len() <= MAX_RESPONSE_HEAD => break,
                Ok(response::Parsed::Partial) | Err(HeadError::Malformed) => {
                    return Err(HeadFailure::Broken);
                }
                Err(HeadError::Ambiguous | HeadError::Length) => {
                    return Err(HeadFailure::Broken);
                }
            }
        }
    }
}

/// A response head in hand, and what its exchange took to get it.
struct Exchanged {
    answer: Answer,
    /// Time to the response head.
    latency: Duration,
    /// The client asked to close after this exchange.
    client_close: bool,
}

/// Streams the response in `exchanged` (its head and first bytes in `buf`, the head's fields
/// in `fields`) to the client; whether the client connection may carry another request.
#[allow(clippy::too_many_arguments)]
async fn respond<T: ClientIo>(
    client: &mut T,
    conn: &ClientConn,
    table: &Arc<RouteTable>,
    choice: Choice,
    exchanged: Exchanged,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    fields: &[(Span, Span)],
) -> bool {
    let Exchanged {
        answer: Answer {
            mut stream,
            served,
            response,
        },
        latency,
        client_close,
    } = exchanged;
    let config = &table.config;
    let status = response.status;
    let judged = match (response.grpc, response.grpc_status) {
        (false, _) => Judged::Status,
        (true, Some(code)) => Judged::Grpc(code),
        (true, None) => Judged::GrpcTrailers,
    };
    let mut settled = false;
    let mut settle = |end: End| {
        if !std::mem::replace(&mut settled, true) {
            let outcome = end.outcome(status, judged);
            conn.runtime
                .account(table, choice, Some(&served), outcome, latency);
        }
    };
    let close =
        client_close || conn.drain.phase() != Phase::Serving || response.framing == Framing::Close;
    let color = config
        .response_color_header
        .as_ref()
        .map(|name| (name.as_str().as_bytes(), choice.color.as_str().as_bytes()));
    response::write_client(buf, &response, fields, color, close, out);
    let mut head = Some(());
    let mut at = response.len;
    let mut left = match response.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunked = (response.framing == Framing::Chunked).then(Chunked::default);
    let mut eof = false;
    let idle = config.timeouts.response_idle;
    loop {
        let avail = &buf[at..];
        let (take, ended) = match response.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = left.min(avail.len() as u64);
                left -= take;
                (take as usize, left == 0)
            }
            Framing::Chunked => {
                let checker = chunked.as_mut().expect("chunked framing");
                match checker.feed(avail) {
                    Ok(take) => (take, checker.done()),
                    Err(error) => {
                        debug!(%error, "upstream broke the chunked framing");
                        settle(End::Cut(ErrorKind::Reset));
                        if head.take().is_some() {
                            let _ = client.write_all(out).await;
                        }
                        return false;
                    }
                }
            }
            Framing::Close => (avail.len(), eof),
        };
        // More than the body: the connection's framing cannot be trusted for another.
        let extra = avail.len() > take;
        if ended {
            // Accounted before the client can have the end, so whoever got the response
            // also sees it counted.
            let end = match chunked.as_ref().and_then(Chunked::grpc_status) {
                Some(code) => End::Trailers(code),
                None => End::Clean,
            };
            settle(end);
        }
        let head_bytes: &[u8] = if head.take().is_some() { out } else { &[] };
        if write_two(client, head_bytes, &avail[..take]).await.is_err() {
            // The client left: nothing against the upstream, and its connection is dropped.
            settle(End::Abandoned);
            return false;
        }
        if ended {
            if response.reusable && !extra {
                pool::put(
                    &served.endpoint().upstream,
                    stream,
                    config.timeouts.upstream_idle,
                );
            }
            if close {
                let _ = client.shutdown().await;
            }
            return !close;
        }
        buf.clear();
        at = 0;
        if buf.capacity() < UPSTREAM_ROOM {
            buf.reserve(UPSTREAM_ROOM);
        }
        match tokio::time::timeout(idle, stream.read_buf(buf)).await {
            Ok(Ok(0)) if response.framing == Framing::Close => eof = true,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                settle(End::Cut(ErrorKind::Reset));
                return false;
            }
            Err(_) => {
                settle(End::Cut(ErrorKind::Timeout));
                return false;
            }
        }
    }
}

/// Answers a client whose request body broke or stalled, and closes: the rest of the body
/// would be read as the next request. Never counted against an upstream.
pub(super) async fn client_fault<T: AsyncWrite + Unpin>(
    client: &mut T,
    out: &mut Vec<u8>,
    fault: ClientFault,
) -> bool {
    let (status, text) = fault.answer();
    write_local(client, out, status, text, true).await
}

/// Writes a short plain-text answer of the proxy's own; whether the connection stays open.
async fn write_local<T: AsyncWrite + Unpin>(
    client: &mut T,
    out: &mut Vec<u8>,
    status: StatusCode,
    text: &str,
    close: bool,
) -> bool {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    write_number(out, u64::from(status.as_u16()));
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    write_number(out, text.len() as u64);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    write_two(client, out, text.as_bytes()).await.is_ok() && !close
}

/// Writes `a` then `b`, in one system call when the transport allows.
async fn write_two<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            io.write(b).await?
        } else if b.is_empty() {
            io.write(a).await?
        } else {
            io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}
