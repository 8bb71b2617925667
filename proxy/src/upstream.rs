//! Upstream: connections to one color, pooled per thread. HTTP/1.1 keep-alive connections are
//! lent to one exchange at a time; an HTTP/2 (h2c) connection is shared by many streams.
//!
//! The pools are thread-local: taking and returning a connection is a `Vec` pop and push on
//! the current thread, with no lock and no atomic contention between workers. An HTTP/1.1
//! connection goes back to the pool only when its response body has been read to the end, so
//! an idle connection is always ready for the next request. A worker opens another h2c
//! connection when the upstream's stream limit is reached on the ones it has.
//!
//! A color has one or more endpoints ([`endpoints`]); an [`Upstream`] here is one of them.
//! [`balance`] chooses the endpoint of each request and [`outlier`] ejects a failing one;
//! [`dns`] re-resolves the names of a static list on a period.

mod balance;
pub mod dns;
pub mod endpoints;
pub mod outlier;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::{ClientFault, ClientWait, RequestBody};
use crate::config::{Protocol, Timeouts, UpstreamAddr};
use crate::headers;
use crate::metrics::ErrorKind;

/// Idle HTTP/1.1 connections kept per upstream per thread.
const MAX_IDLE: usize = 256;
/// Attempts when a pooled connection turns out to be closed before the request left.
const ATTEMPTS: usize = 3;
/// h2c connections per upstream per thread, at most; past it requests wait for a stream.
const MAX_H2_CONNECTIONS: usize = 8;
/// How often a connection's task looks whether it is idle past its time or its endpoint is
/// retired. A flag read on a tick, rather than a channel in the task's `select!`, because the
/// task is woken several times per request and a channel would be polled at every wake.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Streams the proxy opens on an h2c connection before the upstream's SETTINGS has said how
/// many it allows (hyper's own initial limit).
const INITIAL_STREAMS: usize = 100;

/// One endpoint's address, how to talk to it, and the key of its pools.
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
    /// Turned true when the endpoint leaves its color (a pod going away): its connections
    /// close as soon as they are idle.
    retired: Arc<AtomicBool>,
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

/// What an exchange holds until its response is complete: an HTTP/1.1 connection, returned
/// to the pool then, or a stream of a shared h2c connection, given back then.
#[derive(Default)]
pub struct Lease {
    conn: Option<(Pooled, u64)>,
    _stream: Option<StreamSlot>,
}

impl Lease {
    /// Puts the connection back into this thread's pool.
    pub fn release(self) {
        if let Some((conn, key)) = self.conn
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
    /// task, which closes the connection once it has been idle for `idle`: a pool entry is
    /// otherwise only looked at when the pool is used, and an idle proxy would keep its
    /// upstream connections open for ever.
    idle_since: Arc<AtomicU64>,
    /// `timeout.upstream-idle` when it was opened, in milliseconds.
    idle: u64,
}

impl Pooled {
    /// Whether it has been idle too long to be trusted at `now`.
    fn expired(&self, now: u64) -> bool {
        now.saturating_sub(self.idle_since.load(Relaxed)) >= self.idle
    }
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
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Closes its connections as soon as each is idle; it gets no new request.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    /// Opens a TCP connection to it for a transport of its own (the lean HTTP/1.1 path); a
    /// failure comes with its kind as metered and its text.
    pub(crate) async fn connect_raw(
        &self,
        timeout: Duration,
    ) -> Result<TcpStream, (ErrorKind, String)> {
        self.dial(timeout)
            .await
            .map_err(|ConnectError(kind, text)| (kind, text))
    }

    /// The key its pooled connections are kept under: the same upstream across reloads.
    pub(crate) fn pool_key(&self) -> u64 {
        self.key
    }

    /// Whether it has left its color: its connections close as soon as they are idle.
    pub(crate) fn retired_flag(&self) -> &Arc<AtomicBool> {
        &self.retired
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
        let expect = req.body().expectation().cloned();
        if let Some(expect) = &expect {
            let expect = expect.clone();
            hyper::ext::on_informational(&mut req, move |res| {
                if res.status() == StatusCode::CONTINUE {
                    expect.go();
                }
            });
        }
        let mut replayed = false;
        for _ in 0..ATTEMPTS {
            // After a replay, a fresh connection: the pooled ones may be closing together.
            let (mut conn, pooled) = match (!replayed).then(|| take(self.key)).flatten() {
                Some(conn) => (conn, true),
                None => match self.connect_http1(timeouts).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(e.with_request(req)),
                },
            };
            let wait = req.body().client_wait();
            // A pooled connection the upstream closes as the request arrives loses it; a
            // request that is safe to repeat is kept to be sent again, once.
            let replay = (pooled && !replayed && idempotent(&req)).then(|| {
                let mut again = Request::new(RequestBody::empty());
                *again.method_mut() = req.method().clone();
                *again.uri_mut() = req.uri().clone();
                *again.headers_mut() = req.headers().clone();
                again
            });
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
                Ok(Ok(response)) => {
                    // Refused before its body was asked for: the connection is mid-request.
                    let reusable = !expect.as_ref().is_some_and(|e| e.refuse());
                    let lease = Lease {
                        conn: reusable.then_some((conn, self.key)),
                        _stream: None,
                    };
                    return Ok((response, lease));
                }
                Ok(Err(mut e)) => match (e.take_message(), replay) {
                    // The connection closed before the request was written: try another.
                    (Some(unsent), _) if pooled => {
                        debug!(upstream = %self.addr, "pooled connection was closed, retrying");
                        req = unsent;
                    }
                    (None, Some(again)) if closed_under(e.error()) => {
                        debug!(upstream = %self.addr, "pooled connection closed under an idempotent request, sending it again");
                        replayed = true;
                        req = again;
                    }
                    (unsent, _) => return Err(exchange_failure(e.into_error(), unsent)),
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
            let (mut sender, streams) = match take_h2(self.key) {
                Some(conn) => conn,
                None => match self.connect_h2(timeouts.connect).await {
                    Ok(conn) => {
                        put_h2(self.key, conn.clone());
                        conn
                    }
                    Err(e) => return Err(e.with_request(req)),
                },
            };
            let wait = req.body().client_wait();
            let slot = StreamSlot::open(streams.clone());
            let exchange = async {
                if let Err(e) = sender.ready().await {
                    return Err((e, Some(req)));
                }
                sender.try_send_request(req).await.map_err(|mut e| {
                    let unsent = e.take_message();
                    (e.into_error(), unsent)
                })
            };
            match upstream_time(timeouts.request, wait, exchange).await {
                Ok(Ok(response)) => {
                    let lease = Lease {
                        conn: None,
                        _stream: Some(slot),
                    };
                    return Ok((response, lease));
                }
                Ok(Err((_, Some(unsent)))) => {
                    drop_h2(self.key, &streams);
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

    async fn connect_http1(&self, timeouts: Timeouts) -> Result<Pooled, ConnectError> {
        let stream = self.dial(timeouts.connect).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError(ErrorKind::Connect, e.to_string()))?;
        let idle_since = Arc::new(AtomicU64::new(0));
        let idle = idle_since.clone();
        let timeout = timeouts.upstream_idle;
        let retired = self.retired.clone();
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
                    () = tokio::time::sleep(IDLE_CHECK.min(timeout)) => {}
                }
                // An exchange under way is let finish, even on a retired endpoint.
                let since = idle.load(Relaxed);
                let expired = idle_now().saturating_sub(since) >= timeout.as_millis() as u64;
                if since != 0 && (expired || retired.load(Relaxed)) {
                    // Dropping the connection closes it; its pool entry reads closed.
                    return;
                }
            }
        });
        Ok(Pooled {
            sender,
            idle_since,
            idle: timeout.as_millis() as u64,
        })
    }

    async fn connect_h2(&self, timeout: Duration) -> Result<H2Conn, ConnectError> {
        let stream = self.dial(timeout).await?;
        let streams = Arc::new(Streams {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(INITIAL_STREAMS),
        });
        let stream = Sniffing {
            inner: stream,
            streams: streams.clone(),
            settings: FirstSettings::default(),
        };
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError(ErrorKind::Connect, e.to_string()))?;
        let retired = self.retired.clone();
        let open = streams.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    ended = &mut conn => {
                        if let Err(e) = ended {
                            debug!(error = %e, "upstream h2 connection ended");
                        }
                        return;
                    }
                    // Retired: closed once its streams are over.
                    () = tokio::time::sleep(IDLE_CHECK) => {
                        if retired.load(Relaxed) && open.open.load(Relaxed) == 0 {
                            return;
                        }
                    }
                }
            }
        });
        Ok((sender, streams))
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

impl Drop for Upstream {
    /// An endpoint no configuration uses any more closes its connections as they go idle.
    fn drop(&mut self) {
        self.retire();
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
    match wait {
        None => tokio::time::timeout(limit, exchange).await.map_err(|_| ()),
        // Boxed: only requests with a body take this path, and the common one stays small.
        Some(wait) => Box::pin(after_client_waits(limit, wait, exchange)).await,
    }
}

/// [`upstream_time`] for a request with a body: the deadline moves by the time the body has
/// waited for the client.
async fn after_client_waits<T>(
    limit: Duration,
    wait: Arc<ClientWait>,
    exchange: impl Future<Output = T>,
) -> Result<T, ()> {
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

/// Whether an exchange failed because the upstream closed the connection under the request,
/// before any response: the race of reusing a connection the upstream was closing.
fn closed_under(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || std::error::Error::source(error)
            .and_then(|cause| cause.downcast_ref::<io::Error>())
            .is_some_and(|e| {
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionAborted
                )
            })
}

/// Whether `req` may be sent twice: a bodiless GET, HEAD or OPTIONS, or one the client marked
/// with an `Idempotency-Key` (what NGINX's `proxy_next_upstream` repeats).
pub(crate) fn idempotent(req: &Request<RequestBody>) -> bool {
    req.body().is_end_stream()
        && (matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
            || req.headers().contains_key(&IDEMPOTENCY_KEY))
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

fn timeout(after: Duration) -> Failure {
    Failure {
        fault: Fault::Upstream(ErrorKind::Timeout),
        error: format!("no response within {after:?}"),
        request: None,
    }
}

/// An h2c connection: its sender, and its streams.
type H2Conn = (http2::SendRequest<RequestBody>, Arc<Streams>);

/// The streams of one h2c connection: how many are open, and how many the upstream allows.
#[derive(Debug)]
struct Streams {
    open: AtomicUsize,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` from the upstream's first SETTINGS.
    max: AtomicUsize,
}

impl Streams {
    fn free(&self) -> bool {
        self.open.load(Relaxed) < self.max.load(Relaxed)
    }
}

/// One stream counted open on an h2c connection until the exchange ends.
struct StreamSlot(Arc<Streams>);

impl StreamSlot {
    fn open(streams: Arc<Streams>) -> StreamSlot {
        streams.open.fetch_add(1, Relaxed);
        StreamSlot(streams)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// An h2c upstream's transport, reading the stream limit from the first frame the upstream
/// sends (its SETTINGS, RFC 9113 §3.4): hyper keeps the limit to itself and queues requests
/// past it.
struct Sniffing {
    inner: TcpStream,
    streams: Arc<Streams>,
    settings: FirstSettings,
}

/// A parser for the first frame, fed as its bytes arrive.
struct FirstSettings {
    /// Bytes of the first frame seen so far; `None` once it is over.
    seen: Option<usize>,
    header: [u8; 9],
    entry: [u8; 6],
    /// Whether the frame named the limit.
    limited: bool,
}

impl Default for FirstSettings {
    fn default() -> Self {
        FirstSettings {
            seen: Some(0),
            header: [0; 9],
            entry: [0; 6],
            limited: false,
        }
    }
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: [u8; 2] = [0, 3];
/// The SETTINGS frame type.
const SETTINGS: u8 = 4;

impl FirstSettings {
    fn feed(&mut self, bytes: &[u8], streams: &Streams) {
        for &byte in bytes {
            let Some(seen) = self.seen else { return };
            if seen < 9 {
                self.header[seen] = byte;
            } else {
                self.entry[(seen - 9) % 6] = byte;
                if (seen - 9) % 6 == 5 && self.entry[..2] == MAX_CONCURRENT_STREAMS {
                    let max = u32::from_be_bytes(self.entry[2..].try_into().expect("4 bytes"));
                    streams.max.store((max as usize).max(1), Relaxed);
                    self.limited = true;
                }
            }
            let seen = seen + 1;
            let length = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
            let over = seen >= 9 && (self.header[3] != SETTINGS || seen == 9 + length as usize);
            self.seen = (!over).then_some(seen);
            if over && self.header[3] == SETTINGS && !self.limited {
                // No limit named: the upstream allows any number.
                streams.max.store(usize::MAX, Relaxed);
            }
        }
    }
}

impl AsyncRead for Sniffing {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.settings.seen.is_some() {
            this.settings.feed(&buf.filled()[before..], &this.streams);
        }
        polled
    }
}

impl AsyncWrite for Sniffing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

thread_local! {
    /// This thread's idle HTTP/1.1 connections, per pool key. Few keys, so a Vec.
    static POOL: RefCell<Vec<(u64, Vec<Pooled>)>> = const { RefCell::new(Vec::new()) };
    /// This thread's shared h2c connections, per pool key.
    static H2: RefCell<Vec<(u64, H2Conn)>> = const { RefCell::new(Vec::new()) };
}

fn take(key: u64) -> Option<Pooled> {
    POOL.with_borrow_mut(|pool| {
        let idle = &mut pool.iter_mut().find(|(k, _)| *k == key)?.1;
        let now = idle_now();
        // Most recently used first: it is the one least likely to have been closed.
        while let Some(conn) = idle.pop() {
            if !conn.expired(now) && !conn.sender.is_closed() {
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
                // A new endpoint: forget those whose connections have all closed (endpoints
                // gone), so that the pool does not grow with every pod ever seen.
                pool.retain(|(_, idle)| idle.iter().any(|c| !c.sender.is_closed()));
                pool.push((key, Vec::new()));
                &mut pool.last_mut().expect("just pushed").1
            }
        };
        let now = idle_now();
        // The oldest entry sits at the front; drop it once it is closed, expired, or the pool
        // is full.
        if idle
            .first()
            .is_some_and(|c| idle.len() >= MAX_IDLE || c.sender.is_closed() || c.expired(now))
        {
            idle.remove(0);
        }
        conn.idle_since.store(now, Relaxed);
        idle.push(conn);
    });
}

/// An open h2c connection to `key` with a free stream. When every one is full: `None` while
/// fewer than [`MAX_H2_CONNECTIONS`] are open, so that the caller opens another; at the cap,
/// the least busy one.
fn take_h2(key: u64) -> Option<H2Conn> {
    H2.with_borrow_mut(|conns| {
        // Every key's closed connections go, those of endpoints gone included.
        conns.retain(|(_, (sender, _))| !sender.is_closed());
        let mine = || conns.iter().filter(|(k, _)| *k == key).map(|(_, c)| c);
        if let Some(free) = mine().find(|(_, streams)| streams.free()) {
            return Some(free.clone());
        }
        if mine().count() < MAX_H2_CONNECTIONS {
            return None;
        }
        mine()
            .min_by_key(|(_, streams)| streams.open.load(Relaxed))
            .cloned()
    })
}

fn put_h2(key: u64, conn: H2Conn) {
    H2.with_borrow_mut(|conns| conns.push((key, conn)));
}

/// Forgets the h2c connection whose streams are `streams`: it handed a request back unsent.
fn drop_h2(key: u64, streams: &Arc<Streams>) {
    H2.with_borrow_mut(|conns| {
        conns.retain(|(k, (_, s))| *k != key || !Arc::ptr_eq(s, streams));
    });
}
