//! The data listener: accepts connections (cleartext, or TLS with ALPN), serves HTTP/1.1 and
//! HTTP/2 on each with the protocol limits set, passes upgrades through, closes (with GOAWAY)
//! connections whose clients cancel streams faster than they let them finish, and drains on
//! shutdown: connections finish their requests, upgraded tunnels live on until the drain
//! timeout and are then closed cleanly.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use http::HeaderValue;

use crate::headers::{self, Scheme};
use crate::lean::{self, Http1};
use crate::proxy;
use crate::runtime::Runtime;

/// Limits on what a client may send before the proxy gives up on it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time allowed to send a request's headers once their first byte has arrived, and to
    /// finish a TLS handshake (slowloris).
    pub header_read_timeout: Duration,
    /// Bytes of request line and headers (HTTP/1.1 read buffer, HTTP/2 header list; beyond
    /// it, 431).
    pub max_header_bytes: usize,
    /// Number of request headers (beyond it, 431).
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection; more are refused with `REFUSED_STREAM`.
    pub max_streams: u32,
    /// Which server takes plain-TCP HTTP/1.1 connections (`--http1`).
    pub http1: Http1,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            // NGINX's large_client_header_buffers default: 4 × 8 KiB.
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_streams: 100,
            http1: Http1::Lean,
        }
    }
}

/// Streams a connection may cancel before the cancel rate is judged.
const CANCEL_GRACE: u32 = 100;
/// Only a stream cancelled this soon after it opened counts towards the premature-reset rule
/// (Envoy's): a client whose deadline runs out on a slow upstream is not an attacker.
const PREMATURE: Duration = Duration::from_secs(1);
/// How long a connection closed for abuse may take to finish its other streams after GOAWAY.
const ABUSE_GRACE: Duration = Duration::from_secs(10);
/// How long tunnels get to close cleanly once the drain timeout has passed.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// When nothing else is known, how long an idle kept-alive client connection stays open
/// (`timeout.client-idle`'s default).
const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(75);

/// Where shutdown stands; connections and tunnels follow it through a [`Drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Serving,
    /// Stopped accepting: connections finish their requests and close; tunnels carry on.
    Draining,
    /// The drain timeout has passed: everything still open closes now.
    Closing,
}

/// A connection's or tunnel's view of shutdown. The listener waits, up to the drain timeout,
/// until every `Drain` is dropped.
#[derive(Clone, Debug)]
pub struct Drain {
    phase: watch::Receiver<Phase>,
    /// Notified at every move of the phase, for waits that must be small (see
    /// [`Drain::moved`]).
    moved: Arc<Notify>,
    /// Upgraded tunnels open now, for `limit.tunnels`.
    tunnels: Arc<AtomicUsize>,
}

/// The listener's side of shutdown: moves every [`Drain`] through the phases.
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    moved: Arc<Notify>,
}

/// A new shutdown controller and the first handle to it, counting open tunnels in `tunnels`.
pub fn shutdown_pair(tunnels: Arc<AtomicUsize>) -> (Shutdown, Drain) {
    let (phase, rx) = watch::channel(Phase::Serving);
    let moved = Arc::new(Notify::new());
    let drain = Drain {
        phase: rx,
        moved: Arc::clone(&moved),
        tunnels,
    };
    (Shutdown { phase, moved }, drain)
}

impl Shutdown {
    fn enter(&self, phase: Phase) {
        self.phase.send_replace(phase);
        self.moved.notify_waiters();
    }

    /// Tells connections to finish and waits for them and for tunnels up to `timeout`; then
    /// tells whatever is left to close and gives it a moment to do so cleanly.
    pub async fn drain(self, timeout: Duration) {
        self.enter(Phase::Draining);
        info!(
            open = self.phase.receiver_count(),
            "stopped accepting, draining"
        );
        tokio::select! {
            () = self.phase.closed() => info!("all connections drained"),
            () = tokio::time::sleep(timeout) => {
                warn!(?timeout, open = self.phase.receiver_count(), "drain timeout reached, closing the remaining connections and tunnels");
                self.enter(Phase::Closing);
                let _ = tokio::time::timeout(CLOSE_GRACE, self.phase.closed()).await;
            }
        }
    }
}

impl Drain {
    /// Where shutdown stands now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Waits for the next phase; once the listener is gone, that is [`Phase::Closing`].
    pub async fn changed(&mut self) -> Phase {
        match self.phase.changed().await {
            Ok(()) => *self.phase.borrow_and_update(),
            Err(_) => Phase::Closing,
        }
    }

    /// Resolves at the phase's next move. Smaller than [`Drain::changed`] (a bare `Notified`,
    /// which an idle connection holds for as long as it is idle); it sees every move after
    /// it was made, polled or not, so the caller makes it, then reads [`Drain::phase`], then
    /// waits.
    pub fn moved(&self) -> Notified<'_> {
        self.moved.notified()
    }

    /// Waits until the drain timeout says everything must close.
    pub async fn closing(&mut self) {
        let _ = self.phase.wait_for(|p| *p == Phase::Closing).await;
    }

    /// Counts a new tunnel, unless `max` are open already.
    pub fn open_tunnel(&self, max: Option<usize>) -> Option<TunnelSlot> {
        let open = self.tunnels.fetch_add(1, Relaxed);
        let slot = TunnelSlot {
            drain: self.clone(),
        };
        // Past the cap the slot is dropped at once, which takes the count back.
        max.is_none_or(|max| open < max).then_some(slot)
    }
}

/// One open tunnel: counted against `limit.tunnels`, and waited for by the drain.
pub struct TunnelSlot {
    drain: Drain,
}

impl TunnelSlot {
    /// The shutdown the tunnel follows.
    pub fn drain(&mut self) -> &mut Drain {
        &mut self.drain
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.drain.tunnels.fetch_sub(1, Relaxed);
    }
}

/// One client connection, shared by its requests.
pub struct ClientConn {
    /// The proxy's shared state.
    pub runtime: Arc<Runtime>,
    /// The client's address.
    pub peer: SocketAddr,
    /// How the client reached the proxy.
    pub scheme: Scheme,
    /// The client's address as `X-Forwarded-For` carries it, made once per connection.
    pub client_value: HeaderValue,
    /// The listener's shutdown, which this connection's tunnels follow too.
    pub drain: Drain,
    /// Requests (HTTP/2 streams) started on this connection.
    started: AtomicU32,
    /// Those the client cancelled soon after opening, before their response was ready
    /// (HTTP/2 rapid reset).
    cancelled: AtomicU32,
    /// Set, and notified, when the connection must be closed.
    closing: AtomicBool,
    close: Notify,
}

impl ClientConn {
    /// State for a new connection from `peer`.
    pub fn new(
        runtime: Arc<Runtime>,
        peer: SocketAddr,
        scheme: Scheme,
        drain: Drain,
    ) -> Arc<ClientConn> {
        Arc::new(ClientConn {
            runtime,
            peer,
            scheme,
            client_value: headers::client_value(peer.ip()),
            drain,
            started: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        })
    }

    /// Counts a request; the guard counts it as cancelled if it is dropped within
    /// [`PREMATURE`] and before [`InFlight`]'s request produced a response.
    pub fn start(&self) -> InFlight<'_> {
        self.started.fetch_add(1, Relaxed);
        InFlight {
            conn: self,
            opened: Instant::now(),
        }
    }

    /// Waits until the connection must be closed.
    async fn closed(&self) {
        let notified = self.close.notified();
        if !self.closing.load(Relaxed) {
            notified.await;
        }
    }

    fn cancelled_one(&self) {
        let cancelled = self.cancelled.fetch_add(1, Relaxed) + 1;
        let started = self.started.load(Relaxed);
        // Envoy's premature-reset rule: past a grace, more than half cancelled is an attack.
        if cancelled >= CANCEL_GRACE && cancelled * 2 > started && !self.closing.swap(true, Relaxed)
        {
            warn!(peer = %self.peer, cancelled, started, "client cancels most of its streams; closing the connection");
            self.close.notify_waiters();
        }
    }
}

/// A request in progress; dropped soon after it opened and before completion means the
/// client cancelled it prematurely.
pub struct InFlight<'a> {
    conn: &'a ClientConn,
    opened: Instant,
}

impl InFlight<'_> {
    /// The request produced its response: not a cancellation.
    pub fn finish(self) {
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.opened.elapsed() < PREMATURE {
            self.conn.cancelled_one();
        }
    }
}

/// Serves `listener` (over TLS when `tls` is set) until `shutdown` resolves, then lets open
/// connections finish for up to `drain_timeout`: idle HTTP/1.1 connections are closed,
/// HTTP/2 ones get GOAWAY, upgraded tunnels carry on until the timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    runtime: Arc<Runtime>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let base = http_builder(limits);
    let shared = Arc::new(base.clone());
    let (controller, drain) = shutdown_pair(runtime.tunnels());
    let park = (tls.is_none() && limits.http1 == Http1::Lean)
        .then(|| lean::Park::start(runtime.clone(), shared.clone(), limits, drain.clone()))
        .and_then(|started| {
            started
                .inspect_err(|e| warn!(error = %e, "idle connections will keep their tasks"))
                .ok()
        });
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_errors.recovered();
                    accepted
                }
                Err(e) => {
                    accept_errors.failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let idle = client_idle(&runtime);
        let (base, drain, runtime) = (base.clone(), drain.clone(), runtime.clone());
        let Some(tls) = tls.clone() else {
            let conn = ClientConn::new(runtime, peer, Scheme::Http, drain);
            match limits.http1 {
                Http1::Lean => {
                    let park = park.clone();
                    tokio::spawn(lean::serve(
                        stream,
                        conn,
                        shared.clone(),
                        limits,
                        idle,
                        park,
                    ));
                }
                Http1::Hyper => {
                    tokio::spawn(serve_hyper(stream, conn, base, limits, idle));
                }
            }
            continue;
        };
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    let conn = ClientConn::new(runtime, peer, Scheme::Https, drain);
                    serve_hyper(stream, conn, base, limits, idle).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop((listener, drain, park));
    controller.drain(drain_timeout).await;
}

/// How long an idle kept-alive client connection stays open under the current configuration.
pub fn client_idle(runtime: &Runtime) -> Duration {
    runtime
        .routes()
        .as_ref()
        .map_or(DEFAULT_CLIENT_IDLE, |t| t.config.client.idle_timeout)
}

/// Serves one client connection with hyper (`base` with `limits`; an idle kept-alive
/// connection waits up to `idle` for its next request), as [`serve`] does for TLS and
/// whenever the lean path hands a connection over.
pub async fn serve_hyper<T>(
    stream: T,
    conn: Arc<ClientConn>,
    base: auto::Builder<TokioExecutor>,
    limits: Limits,
    idle: Duration,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = Detecting::new(stream, limits.header_read_timeout);
    let builder = connection_builder(base, &stream, limits, idle);
    serve_connection(TokioIo::new(stream), conn, builder).await;
}

/// Serves one client connection over any transport until it ends, shutdown drains it, or its
/// client is found abusing it (then it gets GOAWAY and a short grace).
pub async fn serve_connection<I>(
    io: I,
    conn: Arc<ClientConn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let service = service_fn({
        let conn = conn.clone();
        move |req| proxy::handle(conn.clone(), req)
    });
    let serving = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(serving);
    let mut drain = conn.drain.clone();
    let mut stopping = false;
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(grace);
    let mut abused = false;
    loop {
        tokio::select! {
            served = serving.as_mut() => {
                if let Err(e) = served {
                    debug!(peer = %conn.peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            phase = drain.changed() => match phase {
                Phase::Closing => return,
                _ if !stopping => {
                    stopping = true;
                    serving.as_mut().graceful_shutdown();
                }
                _ => {}
            },
            () = conn.closed(), if !abused => {
                abused = true;
                grace.as_mut().reset(Instant::now() + ABUSE_GRACE);
                if !std::mem::replace(&mut stopping, true) {
                    serving.as_mut().graceful_shutdown();
                }
            }
            () = grace.as_mut(), if abused => return,
        }
    }
}

/// The HTTP/1.1 and HTTP/2 server settings for `limits`.
pub fn http_builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// `base` for one connection: an idle kept-alive HTTP/1.1 connection waits for its next
/// request up to `idle`, and once that request's first byte has arrived, its head must be
/// complete within the header timeout. (hyper's header timeout starts when it begins waiting
/// for a request, so alone it would close idle connections as early as slow ones.)
fn connection_builder<T>(
    mut base: auto::Builder<TokioExecutor>,
    stream: &Detecting<T>,
    limits: Limits,
    idle: Duration,
) -> Arc<auto::Builder<TokioExecutor>> {
    base.http1()
        .timer(HeadTimer {
            activity: stream.activity.clone(),
            header_timeout: limits.header_read_timeout,
        })
        .header_read_timeout(idle.max(limits.header_read_timeout));
    Arc::new(base)
}

/// When the bytes of a client's next request began to arrive: the first read after the
/// proxy last wrote.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    /// Milliseconds since `origin`, plus 1, of the first read since the last write; 0 if none.
    since: AtomicU64,
}

impl Activity {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    fn read(&self) {
        if self.since.load(Relaxed) == 0 {
            self.since.store(self.now(), Relaxed);
        }
    }

    fn wrote(&self) {
        self.since.store(0, Relaxed);
    }

    /// When the client began sending what the proxy has not answered yet, if it has.
    fn started(&self) -> Option<Instant> {
        match self.since.load(Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms - 1)),
        }
    }
}

/// hyper's HTTP/1.1 timer, which it uses only for the header timeout: it waits the whole
/// (idle) timeout while nothing has arrived, and the header timeout from the first byte.
struct HeadTimer {
    activity: Arc<Activity>,
    header_timeout: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let idle = Instant::from_std(deadline);
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until(idle),
            idle,
            armed: false,
            activity: self.activity.clone(),
            header_timeout: self.header_timeout,
        })
    }
}

pin_project_lite::pin_project! {
    /// One wait for a request head (see [`HeadTimer`]).
    struct HeadSleep {
        #[pin]
        sleep: Sleep,
        idle: Instant,
        armed: bool,
        activity: Arc<Activity>,
        header_timeout: Duration,
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !*this.armed
            && let Some(first) = this.activity.started()
        {
            *this.armed = true;
            let deadline = first + *this.header_timeout;
            if deadline < *this.idle {
                this.sleep.as_mut().reset(deadline);
            }
        }
        this.sleep.poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// The HTTP/2 client preface: hyper-util reads up to this much to tell HTTP/2 from HTTP/1.1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: after the preface the client must start its SETTINGS frame.
const FRAME_HEADER: usize = 9;

/// A client transport. While its protocol is not known yet: hyper-util's protocol detection
/// waits for bytes without a deadline, and the HTTP/2 handshake waits for the client's
/// SETTINGS without one, so a client that connects and sends nothing, sends the HTTP/2
/// preface a byte at a time, or sends the preface and no SETTINGS, would hold its connection
/// forever. Until the bytes tell the protocol apart (for HTTP/2, until the first frame has
/// begun), a read that waits past the header timeout fails. From then on it passes bytes
/// through, noting when a request's bytes begin to arrive (see [`HeadTimer`]).
pub struct Detecting<T> {
    inner: T,
    /// Bytes seen so far while they follow the preface; `None` once the protocol is known.
    matched: Option<usize>,
    /// The length of the HTTP/2 client's first frame, as far as its bytes have come.
    frame_length: u32,
    deadline: Instant,
    /// Armed the first time a read waits before the protocol is known.
    timer: Option<Pin<Box<Sleep>>>,
    /// Shared with the connection's [`HeadTimer`].
    activity: Arc<Activity>,
}

impl<T> Detecting<T> {
    /// Wraps a new connection that must show its protocol within `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Detecting<T> {
        let now = Instant::now();
        Detecting {
            inner,
            matched: Some(0),
            frame_length: 0,
            deadline: now + timeout,
            timer: None,
            activity: Arc::new(Activity {
                origin: now,
                since: AtomicU64::new(0),
            }),
        }
    }

    /// Follows the preface as hyper-util does: the protocol is known at the first byte that
    /// differs from it, or at the end of the stream; HTTP/2 once the whole first frame (the
    /// client's SETTINGS) has followed the preface.
    fn saw(&mut self, read: &[u8]) {
        let Some(seen) = self.matched else { return };
        let n = read.len().min(H2_PREFACE.len().saturating_sub(seen));
        // The first frame's length: the three bytes after the preface.
        let length_at = H2_PREFACE.len()..H2_PREFACE.len() + 3;
        for (_, &byte) in (seen..)
            .zip(read)
            .skip_while(|(at, _)| *at < length_at.start)
            .take_while(|(at, _)| length_at.contains(at))
        {
            self.frame_length = self.frame_length << 8 | u32::from(byte);
        }
        let seen_now = seen + read.len();
        let frame_end = H2_PREFACE.len() + FRAME_HEADER + self.frame_length as usize;
        let known = read.is_empty()
            || read[..n] != H2_PREFACE[seen..seen + n]
            || seen_now >= frame_end.max(H2_PREFACE.len() + FRAME_HEADER);
        if known {
            self.matched = None;
            self.timer = None;
        } else {
            self.matched = Some(seen_now);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Detecting<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.matched.is_none() {
            if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                this.activity.read();
            }
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) => {
                this.activity.read();
                this.saw(&buf.filled()[before..]);
            }
            Poll::Ready(Err(_)) => {}
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header timeout",
                    )));
                }
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Detecting<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        written
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

/// Backs off when `accept` fails (out of file descriptors, say) instead of spinning, and
/// logs once per episode rather than once per failure.
#[derive(Default)]
struct AcceptErrors {
    failing: bool,
}

impl AcceptErrors {
    async fn failed(&mut self, error: &io::Error) {
        if !self.failing {
            warn!(%error, "accept failed; backing off until it succeeds again");
            self.failing = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            info!("accepting connections again");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(50);

    async fn read_after(sent: &[u8]) -> io::Result<()> {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await?;
        let mut server = Detecting::new(server, TIMEOUT);
        let mut buf = [0; 64];
        let mut total = 0;
        while total < sent.len() {
            total += server.read(&mut buf).await?;
        }
        // Past the deadline: an error while the protocol is unknown, else still waiting.
        match tokio::time::timeout(TIMEOUT * 3, server.read(&mut buf)).await {
            Ok(read) => read.map(drop),
            Err(_) => Ok(()),
        }
    }

    #[tokio::test]
    async fn the_deadline_holds_until_the_protocol_is_known() {
        let timed_out = |r: io::Result<()>| r.is_err_and(|e| e.kind() == io::ErrorKind::TimedOut);
        assert!(timed_out(read_after(b"").await));
        assert!(timed_out(read_after(b"PRI * HTTP/2").await));
        // HTTP/1.1 from the first byte.
        assert!(read_after(b"G").await.is_ok());
        assert!(read_after(b"PRX").await.is_ok());
        // HTTP/2 once its first frame is in: the preface alone, or with half a SETTINGS frame,
        // is not enough.
        assert!(timed_out(read_after(H2_PREFACE).await));
        let header = [0, 0, 6, 4, 0, 0, 0, 0, 0];
        assert!(timed_out(read_after(&[H2_PREFACE, &header].concat()).await));
        let settings = [H2_PREFACE, &header, &[0, 3, 0, 0, 0, 100]].concat();
        assert!(read_after(&settings).await.is_ok());
        let empty = [H2_PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
        assert!(read_after(&empty).await.is_ok());
    }
}
