//! Upstream: connections to one color, pooled per thread. HTTP/1.1 keep-alive connections are
//! lent to one exchange at a time; an HTTP/2 (h2c) connection is shared by many streams.
//!
//! The pools are thread-local: taking and returning a connection is a `Vec` pop and push on
//! the current thread, with no lock and no atomic contention between workers. An HTTP/1.1
//! connection goes back to the pool only when its response body has been read to the end, so
//! an idle connection is always ready for the next request.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::{ClientFault, ClientWait, RequestBody};
use crate::config::{Protocol, Timeouts, UpstreamAddr};
use crate::headers;
use crate::metrics::ErrorKind;

/// How long an idle pooled connection is kept. Shorter than the keep-alive timeout of common
/// upstream servers (Node.js closes after 5 s), so the proxy rarely writes a request to a
/// connection that the upstream is closing at that moment.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle HTTP/1.1 connections kept per upstream per thread.
const MAX_IDLE: usize = 256;
/// Attempts when a pooled connection turns out to be closed before the request left.
const ATTEMPTS: usize = 3;

/// One color's upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Where it is.
    pub addr: UpstreamAddr,
    /// How to talk to it.
    pub protocol: Protocol,
    /// The address, if the host is an IP literal (no DNS lookup per connection).
    literal: Option<SocketAddr>,
    /// Pool key: the same upstream shares idle connections across config reloads.
    key: u64,
}

/// Why a request got no response from the upstream.
pub struct Failure {
    /// Who is to blame.
    pub fault: Fault,
    /// The error, for logs.
    pub error: String,
    /// The request, when it never reached the upstream and may be sent elsewhere.
    pub request: Option<Request<RequestBody>>,
}

/// Who caused a failed exchange: only upstream faults count against an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The upstream, as metered.
    Upstream(ErrorKind),
    /// The client's request body.
    Client(ClientFault),
}

/// An HTTP/1.1 connection lent to one exchange, returned to the pool when the response is
/// complete. HTTP/2 exchanges need none: their connection is shared.
#[derive(Default)]
pub struct Lease(Option<(Pooled, u64)>);

impl Lease {
    /// Puts the connection back into this thread's pool.
    pub fn release(self) {
        if let Some((conn, key)) = self.0
            && !conn.sender.is_closed()
        {
            put(key, conn);
        }
    }
}

/// An HTTP/1.1 connection as the pool holds it.
struct Pooled {
    sender: http1::SendRequest<RequestBody>,
    /// When it went idle (see [`idle_now`]), or 0 while lent out. Shared with the connection's
    /// task, which closes the connection once it has been idle for [`IDLE_TIMEOUT`]: a pool
    /// entry is otherwise only looked at when the pool is used, and an idle proxy would keep
    /// its upstream connections open for ever.
    idle_since: Arc<AtomicU64>,
}

/// Milliseconds on a process-wide monotonic clock, never 0 (0 marks a connection in use).
fn idle_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Upstream {
    /// An upstream at `addr` spoken to with `protocol`.
    pub fn new(addr: UpstreamAddr, protocol: Protocol) -> Upstream {
        let literal = addr
            .host()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, addr.port()));
        let mut key = crate::route::stable_hash(addr.authority.as_str().as_bytes());
        if protocol == Protocol::H2c {
            key = !key;
        }
        Upstream {
            addr,
            protocol,
            literal,
            key,
        }
    }

    /// Sends `req` and waits for the response headers.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        timeouts: Timeouts,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        match self.protocol {
            Protocol::Http1 => self.send_http1(req, timeouts).await,
            Protocol::H2c => self.send_h2(req, timeouts).await,
        }
    }

    async fn send_http1(
        &self,
        mut req: Request<RequestBody>,
        timeouts: Timeouts,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        headers::for_http1(&mut req);
        for _ in 0..ATTEMPTS {
            let (mut conn, pooled) = match take(self.key) {
                Some(conn) => (conn, true),
                None => match self.connect_http1(timeouts.connect).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(e.with_request(req)),
                },
            };
            let wait = req.body().client_wait();
            let sent =
                upstream_time(timeouts.request, wait, conn.sender.try_send_request(req)).await;
            match sent {
                Ok(Ok(response)) if ambiguous_length(&response) => {
                    // The connection is dropped with the sender: its framing cannot be trusted.
                    return Err(Failure {
                        fault: Fault::Upstream(ErrorKind::Reset),
                        error: "the response has both Transfer-Encoding and Content-Length".into(),
                        request: None,
                    });
                }
                Ok(Ok(response)) => return Ok((response, Lease(Some((conn, self.key))))),
                Ok(Err(mut e)) => match e.take_message() {
                    // The connection closed before the request was written: try another.
                    Some(unsent) if pooled => {
                        debug!(upstream = %self.addr, "pooled connection was closed, retrying");
                        req = unsent;
                    }
                    unsent => return Err(exchange_failure(e.into_error(), unsent)),
                },
                Err(_) => return Err(timeout(timeouts.request)),
            }
        }
        Err(Failure {
            fault: Fault::Upstream(ErrorKind::Reset),
            error: "every pooled connection was closed".into(),
            request: Some(req),
        })
    }

    async fn send_h2(
        &self,
        mut req: Request<RequestBody>,
        timeouts: Timeouts,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        headers::for_h2(&mut req, &self.addr);
        for _ in 0..ATTEMPTS {
            let mut sender = match take_h2(self.key) {
                Some(sender) => sender,
                None => match self.connect_h2(timeouts.connect).await {
                    Ok(sender) => {
                        put_h2(self.key, sender.clone());
                        sender
                    }
                    Err(e) => return Err(e.with_request(req)),
                },
            };
            let wait = req.body().client_wait();
            let exchange = async {
                // Waits for a free stream when the upstream's concurrency limit is reached.
                if let Err(e) = sender.ready().await {
                    return Err((e, Some(req)));
                }
                sender.try_send_request(req).await.map_err(|mut e| {
                    let unsent = e.take_message();
                    (e.into_error(), unsent)
                })
            };
            match upstream_time(timeouts.request, wait, exchange).await {
                Ok(Ok(response)) => return Ok((response, Lease::default())),
                Ok(Err((_, Some(unsent)))) => {
                    drop_h2(self.key);
                    req = unsent;
                }
                Ok(Err((e, None))) => return Err(exchange_failure(e, None)),
                Err(_) => return Err(timeout(timeouts.request)),
            }
        }
        Err(Failure {
            fault: Fault::Upstream(ErrorKind::Reset),
            error: "the HTTP/2 connection kept closing".into(),
            request: Some(req),
        })
    }

    async fn connect_http1(&self, timeout: Duration) -> Result<Pooled, ConnectError> {
        let stream = self.dial(timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError(ErrorKind::Connect, e.to_string()))?;
        let idle_since = Arc::new(AtomicU64::new(0));
        let idle = idle_since.clone();
        tokio::spawn(async move {
            // Upgrades (WebSocket) take the connection over after a 101.
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    ended = &mut conn => {
                        if let Err(e) = ended {
                            debug!(error = %e, "upstream connection ended");
                        }
                        return;
                    }
                    () = tokio::time::sleep(IDLE_TIMEOUT) => {
                        let since = idle.load(Relaxed);
                        if since != 0 && idle_now().saturating_sub(since) >= IDLE_TIMEOUT.as_millis() as u64 {
                            // Dropping the connection closes it; its pool entry reads closed.
                            return;
                        }
                    }
                }
            }
        });
        Ok(Pooled { sender, idle_since })
    }

    async fn connect_h2(
        &self,
        timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
        let stream = self.dial(timeout).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError(ErrorKind::Connect, e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream h2 connection ended");
            }
        });
        Ok(sender)
    }

    async fn dial(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(timeout, self.resolve_and_connect())
            .await
            .map_err(|_| {
                ConnectError(
                    ErrorKind::Timeout,
                    format!("connect timed out after {timeout:?}"),
                )
            })?
            .map_err(|e| ConnectError(ErrorKind::Connect, e.to_string()))?;
        // Responses are small and latency matters more than segment count.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn resolve_and_connect(&self) -> io::Result<TcpStream> {
        if let Some(addr) = self.literal {
            return TcpStream::connect(addr).await;
        }
        let mut last = None;
        for addr in tokio::net::lookup_host((self.addr.host(), self.addr.port())).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the name resolved to no address")))
    }
}

/// Runs `exchange` for at most `limit` of the upstream's time: the time spent waiting for the
/// client's request body (`wait`) is added to the deadline, so that a slow upload is left to
/// `timeout.client-body` (the client's fault) rather than counted against the upstream.
async fn upstream_time<T>(
    limit: Duration,
    wait: Option<Arc<ClientWait>>,
    exchange: impl Future<Output = T>,
) -> Result<T, ()> {
    let Some(wait) = wait else {
        return tokio::time::timeout(limit, exchange).await.map_err(|_| ());
    };
    let started = tokio::time::Instant::now();
    tokio::pin!(exchange);
    loop {
        let deadline = started + limit + wait.waited();
        tokio::select! {
            done = &mut exchange => return Ok(done),
            () = tokio::time::sleep_until(deadline) => {
                if tokio::time::Instant::now() >= started + limit + wait.waited() {
                    return Err(());
                }
            }
        }
    }
}

/// A connection that could not be established: the request never left.
struct ConnectError(ErrorKind, String);

impl ConnectError {
    fn with_request(self, request: Request<RequestBody>) -> Failure {
        Failure {
            fault: Fault::Upstream(self.0),
            error: self.1,
            request: Some(request),
        }
    }
}

fn exchange_failure(error: hyper::Error, unsent: Option<Request<RequestBody>>) -> Failure {
    // A request body that failed on the client's side surfaces as a "user" error.
    let client = std::error::Error::source(&error)
        .and_then(|cause| cause.downcast_ref::<ClientFault>())
        .copied();
    Failure {
        fault: client.map_or(Fault::Upstream(ErrorKind::Reset), Fault::Client),
        error: error.to_string(),
        request: unsent,
    }
}

/// A response framed by both `Transfer-Encoding` and `Content-Length`: hyper reads it by the
/// former, but the upstream and the proxy may disagree on where it ends (response
/// smuggling), so it is refused with a 502 as NGINX does (RFC 9112 §6.3).
fn ambiguous_length(response: &Response<Incoming>) -> bool {
    let headers = response.headers();
    headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH)
}

fn timeout(after: Duration) -> Failure {
    Failure {
        fault: Fault::Upstream(ErrorKind::Timeout),
        error: format!("no response within {after:?}"),
        request: None,
    }
}

thread_local! {
    /// This thread's idle HTTP/1.1 connections, per pool key. Few keys, so a Vec.
    static POOL: RefCell<Vec<(u64, Vec<Pooled>)>> = const { RefCell::new(Vec::new()) };
    /// This thread's shared HTTP/2 connection, per pool key.
    static H2: RefCell<Vec<(u64, http2::SendRequest<RequestBody>)>> = const { RefCell::new(Vec::new()) };
}

fn take(key: u64) -> Option<Pooled> {
    POOL.with_borrow_mut(|pool| {
        let idle = &mut pool.iter_mut().find(|(k, _)| *k == key)?.1;
        let now = idle_now();
        // Most recently used first: it is the one least likely to have been closed.
        while let Some(conn) = idle.pop() {
            let since = conn.idle_since.load(Relaxed);
            if now.saturating_sub(since) < IDLE_TIMEOUT.as_millis() as u64
                && !conn.sender.is_closed()
            {
                conn.idle_since.store(0, Relaxed);
                return Some(conn);
            }
        }
        None
    })
}

fn put(key: u64, conn: Pooled) {
    POOL.with_borrow_mut(|pool| {
        let idle = match pool.iter().position(|(k, _)| *k == key) {
            Some(i) => &mut pool[i].1,
            None => {
                pool.push((key, Vec::new()));
                &mut pool.last_mut().expect("just pushed").1
            }
        };
        let now = idle_now();
        // The oldest entry sits at the front; drop it once it is closed, expired, or the pool
        // is full.
        if idle.first().is_some_and(|c| {
            idle.len() >= MAX_IDLE
                || c.sender.is_closed()
                || now.saturating_sub(c.idle_since.load(Relaxed)) >= IDLE_TIMEOUT.as_millis() as u64
        }) {
            idle.remove(0);
        }
        conn.idle_since.store(now, Relaxed);
        idle.push(conn);
    });
}

fn take_h2(key: u64) -> Option<http2::SendRequest<RequestBody>> {
    H2.with_borrow_mut(|conns| {
        let i = conns.iter().position(|(k, _)| *k == key)?;
        if conns[i].1.is_closed() {
            conns.swap_remove(i);
            return None;
        }
        Some(conns[i].1.clone())
    })
}

fn put_h2(key: u64, sender: http2::SendRequest<RequestBody>) {
    H2.with_borrow_mut(|conns| {
        conns.retain(|(k, _)| *k != key);
        conns.push((key, sender));
    });
}

fn drop_h2(key: u64) {
    H2.with_borrow_mut(|conns| conns.retain(|(k, _)| *k != key));
}
