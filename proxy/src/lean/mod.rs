//! The lean HTTP/1.1 path for plain-TCP clients: one task per connection reads a request
//! head into a buffer, parses it once with `httparse` into spans, routes on those spans,
//! forwards the head by copying them, and streams the response back with its framing checked;
//! then the next request (keep-alive, pipelining). No `http::Request`, no `HeaderMap`, no
//! allocation per request: the buffers are the connection's while it has a request, and go
//! back to a per-thread free list while it is idle, so an idle connection holds no buffer.
//!
//! Only the common case is served here (see [`request::Head::parse`]): an HTTP/1.1 request
//! in origin form, without a body or with one `Content-Length`, with no upgrade, expectation,
//! chunked body or unusual hop-by-hop field, to colors spoken to over HTTP/1.1. Anything else is handed to hyper, with the bytes read so
//! far, for the rest of the connection: nothing has been written for that request yet, so
//! hyper answers it exactly as the hyper path always does.
//!
//! Requests from HTTP/2 clients, which hyper's server reads, use the same upstream side when
//! they have no body ([`relay`]).
//!
//! Routing ([`RouteTable::choose`](crate::route::RouteTable::choose)), the endpoint
//! choice and outlier ejection ([`Endpoints`](crate::upstream::endpoints::Endpoints)) and the
//! accounting ([`Runtime::account`](crate::runtime::Runtime)) are the hyper path's own.

mod chunked;
mod exchange;
pub mod park;
mod pool;
pub mod relay;
mod request;
mod response;
mod rewind;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::body::ClientFault;
use crate::listener::{ClientConn, Drain, Limits, Phase, serve_hyper};
pub use chunked::{ChunkError, Chunked};
pub use park::{Park, ParkError};
use request::{Head, Parsed};
pub use rewind::Rewind;

/// Which HTTP/1.1 server serves plain-TCP client connections (`--http1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Http1 {
    /// The lean path, falling back to hyper per connection for anything unusual.
    #[default]
    Lean,
    /// hyper for every connection.
    Hyper,
}

/// An `--http1` value that is neither `lean` nor `hyper`.
#[derive(Debug, thiserror::Error)]
#[error("expected `lean` or `hyper`, got `{0}`")]
pub struct UnknownHttp1(String);

impl FromStr for Http1 {
    type Err = UnknownHttp1;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lean" => Ok(Http1::Lean),
            "hyper" => Ok(Http1::Hyper),
            other => Err(UnknownHttp1(other.to_owned())),
        }
    }
}

/// A client transport the lean path can serve.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// Ready once the client has sent something (or closed), without a buffer held
    /// meanwhile; the waker is kept by the transport, not by a future of the caller's.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether an idle connection over this transport can be parked ([`park`]).
    const PARKS: bool = false;

    /// The bare socket, out of the runtime's reactor, for the park; only called when
    /// [`ClientIo::PARKS`].
    fn into_socket(self) -> io::Result<std::net::TcpStream>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl ClientIo for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    const PARKS: bool = true;

    fn into_socket(self) -> io::Result<std::net::TcpStream> {
        self.into_std()
    }
}

impl ClientIo for tokio::io::DuplexStream {
    /// An in-memory pipe (the fuzz target's): read at once, holding the buffer.
    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Buffers of a connection while it has a request in hand.
#[derive(Default)]
struct Work {
    /// Bytes from the client: the request head, then whatever follows it.
    client: Vec<u8>,
    /// The parsed request head.
    head: Head,
    /// A head being written: the request's for the upstream, then the response's.
    out: Vec<u8>,
    /// Bytes from the upstream.
    upstream: Vec<u8>,
    /// The response head's fields, as spans of `upstream`.
    fields: Vec<(request::Span, request::Span)>,
}

/// Free buffers kept per thread, at most.
const MAX_FREE: usize = 64;
/// The first read of a request head takes this much room.
const HEAD_ROOM: usize = 4 * 1024;

thread_local! {
    /// Buffers of connections gone idle, for the next that gets a request.
    #[allow(clippy::vec_box, reason = "a connection holds its buffers by this box")]
    static FREE: RefCell<Vec<Box<Work>>> = const { RefCell::new(Vec::new()) };
}

/// Boxed so that a connection's task, idle or not, holds a pointer to its buffers rather
/// than their handles.
fn take_work() -> Box<Work> {
    FREE.with_borrow_mut(Vec::pop).unwrap_or_default()
}

fn give_back(mut work: Box<Work>) {
    work.client.clear();
    FREE.with_borrow_mut(|free| {
        if free.len() < MAX_FREE {
            free.push(work);
        }
    });
}

/// Serves one plain client connection on the lean path until it closes, hands it to hyper
/// (`base` with `limits`, idle connections kept for `idle`), goes into `park` for a long
/// wait between requests, or shutdown closes it.
#[allow(clippy::manual_async_fn, reason = "see the block's comment")]
pub fn serve<T: ClientIo>(
    mut io: T,
    conn: Arc<ClientConn>,
    base: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    idle: Duration,
    park: Option<Arc<Park>>,
) -> impl Future<Output = ()> + Send {
    // A block rather than an `async fn`: its arguments stay where they were captured, where
    // an `async fn` would hold a second copy of each for the whole connection.
    async move {
        let mut drain = conn.drain.clone();
        let runtime = Arc::clone(&conn.runtime);
        let mut routes = runtime.route_cache();
        let mut work: Option<Box<Work>> = None;
        // Until the first request, a connection gets the header timeout, as on the hyper path.
        let mut wait = limits.header_read_timeout;
        loop {
            if conn.drain.phase() != Phase::Serving {
                break;
            }
            if work.as_ref().is_none_or(|w| w.client.is_empty()) {
                if let Some(done) = work.take() {
                    give_back(done);
                }
                // Only between requests: a connection that has sent nothing yet keeps the
                // header timeout, as on the hyper path.
                let parks = T::PARKS && park.is_some() && wait == idle;
                let since = Instant::now();
                match next_request(&io, &conn.drain, wait, parks).await {
                    Next::Request => {}
                    Next::Close => break,
                    Next::Park => {
                        if let Some(park) = &park {
                            to_park(io, park, conn.peer, since + wait);
                        }
                        return;
                    }
                }
            }
            let w = work.get_or_insert_with(take_work);
            let Some(table) = routes.load() else {
                // No configuration yet: hyper's path answers 503.
                return Box::pin(fallback(io, w, conn, base, limits, idle)).await;
            };
            let policy = &table.config.client;
            let trusted = policy.trusts(conn.peer.ip());
            let h2c = table
                .config
                .protocols
                .contains(&crate::config::Protocol::H2c);
            // The head must be whole within the header timeout of its first byte. Readiness can be
            // reported before any byte is there, so until one is, the connection's wait applies.
            let header_time = || Instant::now() + limits.header_read_timeout;
            let mut head_deadline = (!w.client.is_empty()).then(header_time);
            loop {
                let parsed = if h2c {
                    Parsed::Fallback
                } else {
                    w.head.parse(&w.client, trusted, policy.max_body)
                };
                match parsed {
                    Parsed::Lean if w.head.len <= limits.max_header_bytes => break,
                    Parsed::Partial if w.client.len() < limits.max_header_bytes => {}
                    // Boxed: hyper's connection state is large, and only the connections that
                    // fall back need it.
                    _ => return Box::pin(fallback(io, w, conn, base, limits, idle)).await,
                }
                if w.client.capacity() - w.client.len() < HEAD_ROOM / 2 {
                    w.client.reserve(HEAD_ROOM);
                }
                let deadline = head_deadline.unwrap_or_else(|| Instant::now() + wait);
                match tokio::time::timeout_at(deadline, io.read_buf(&mut w.client)).await {
                    Ok(Ok(n)) if n > 0 => {
                        head_deadline.get_or_insert_with(header_time);
                    }
                    // Closed or broken mid-head, or too slow (slowloris): closed unanswered, as
                    // hyper does.
                    _ => return,
                }
            }
            wait = idle;
            if w.head.body > 0 && w.client.len() == w.head.len {
                // The body's first bytes before anything goes upstream, as on the hyper path: a
                // client that stalls costs no upstream anything.
                let mut limited = (&mut io).take(w.head.body);
                match tokio::time::timeout(policy.body_timeout, limited.read_buf(&mut w.client))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => break,
                    Err(_) => {
                        exchange::client_fault(&mut io, &mut w.out, ClientFault::Idle).await;
                        break;
                    }
                }
            }
            // Boxed: the exchange's state (about 1 KiB) exists only while a request is in flight,
            // so an idle connection's task stays small.
            let exchange = Box::pin(exchange::run(&mut io, &conn, table, w));
            let keep = tokio::select! {
                keep = exchange => keep,
                () = drain.closing() => false,
            };
            if !keep {
                break;
            }
            let body_read = (w.client.len() - w.head.len).min(w.head.body as usize);
            w.client.drain(..w.head.len + body_read);
        }
        if let Some(done) = work {
            give_back(done);
        }
    }
}

/// How a wait for the next request ended.
enum Next {
    /// The client sent something (or closed: the read finds out).
    Request,
    /// The wait ran out, shutdown began, or the socket failed.
    Close,
    /// The connection has been idle for [`park::PARK_AFTER`], and its wait goes on in the park.
    Park,
}

/// Waits, holding no buffer, until the client sends its next request, for `wait`, until
/// shutdown begins, or (if it `parks` and `wait` is longer) for [`park::PARK_AFTER`]. Polled by
/// hand rather than through `select!` and the socket's `readable()` future: the wait is what
/// an idle connection's task holds, so its size is the memory each idle client costs until
/// it is parked.
async fn next_request<T: ClientIo>(io: &T, drain: &Drain, wait: Duration, parks: bool) -> Next {
    let mut shutdown = std::pin::pin!(drain.moved());
    if drain.phase() != Phase::Serving {
        return Next::Close;
    }
    let parks = parks && park::PARK_AFTER < wait;
    let first = if parks { park::PARK_AFTER } else { wait };
    let mut timeout = std::pin::pin!(tokio::time::sleep(first));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(ready) = io.poll_readable(cx) {
            return Poll::Ready(if ready.is_ok() {
                Next::Request
            } else {
                Next::Close
            });
        }
        if shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Next::Close);
        }
        if timeout.as_mut().poll(cx).is_ready() {
            return Poll::Ready(if parks { Next::Park } else { Next::Close });
        }
        Poll::Pending
    })
    .await
}

/// Moves an idle connection's socket into `park` until `deadline`; if it cannot go there, it is
/// closed, as an idle kept-alive connection may be.
fn to_park<T: ClientIo>(io: T, park: &Park, peer: std::net::SocketAddr, deadline: Instant) {
    let parked = io
        .into_socket()
        .map_err(ParkError::Watch)
        .and_then(|socket| park.put(socket, peer, deadline));
    if let Err(e) = parked {
        debug!(%peer, error = %e, "closed an idle connection that could not be parked");
    }
}

/// Hands the connection to hyper with what has been read of it.
async fn fallback<T: ClientIo>(
    io: T,
    work: &mut Work,
    conn: Arc<ClientConn>,
    base: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    idle: Duration,
) {
    let read = std::mem::take(&mut work.client);
    serve_hyper(Rewind::new(read, io), conn, (*base).clone(), limits, idle).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::Scheme;
    use crate::listener::{http_builder, shutdown_pair};
    use crate::metrics::Metrics;
    use crate::runtime::Runtime;

    /// An idle client connection costs what its task holds while it waits for the next
    /// request: the socket, a timer, the shutdown notification, handles. The figure is this
    /// build's (debug, 536 bytes); it was 976 with the buffers' handles inline, the arguments
    /// of an `async fn` held twice and the shutdown watch's `changed()` future.
    #[tokio::test]
    async fn an_idle_connections_task_stays_small() {
        let runtime = Runtime::new(Metrics::new().unwrap(), "test".into());
        let (_shutdown, drain) = shutdown_pair(Default::default());
        let conn = ClientConn::new(runtime, "127.0.0.1:9".parse().unwrap(), Scheme::Http, drain);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let limits = Limits::default();
        let base = Arc::new(http_builder(limits));
        let task = serve(stream, conn, base, limits, Duration::from_secs(1), None);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 640, "a connection's task holds {size} bytes");
    }
}
