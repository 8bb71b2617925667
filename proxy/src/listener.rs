//! The data listener: accepts connections (cleartext, or TLS with ALPN), serves HTTP/1.1 and
//! HTTP/2 on each with the protocol limits set, passes upgrades through, closes connections
//! whose clients cancel streams faster than they let them finish, and drains on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use http::HeaderValue;

use crate::headers::{self, Scheme};
use crate::proxy;
use crate::runtime::Runtime;

/// Limits on what a client may send before the proxy gives up on it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time allowed to send a request's headers, and to finish a TLS handshake (slowloris).
    pub header_read_timeout: Duration,
    /// Bytes of request line and headers (HTTP/1.1 read buffer, HTTP/2 header list; beyond
    /// it, 431).
    pub max_header_bytes: usize,
    /// Number of request headers (beyond it, 431).
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection; more are refused with `REFUSED_STREAM`.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            // NGINX's large_client_header_buffers default: 4 × 8 KiB.
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_streams: 100,
        }
    }
}

/// Streams a connection may cancel before the cancel rate is judged.
const CANCEL_GRACE: u32 = 100;

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
    /// Requests (HTTP/2 streams) started on this connection.
    started: AtomicU32,
    /// Those the client cancelled before their response was ready (HTTP/2 rapid reset).
    cancelled: AtomicU32,
    /// Set, and notified, when the connection must be closed.
    closing: AtomicBool,
    close: Notify,
}

impl ClientConn {
    /// State for a new connection from `peer`.
    pub fn new(runtime: Arc<Runtime>, peer: SocketAddr, scheme: Scheme) -> Arc<ClientConn> {
        Arc::new(ClientConn {
            runtime,
            peer,
            scheme,
            client_value: headers::client_value(peer.ip()),
            started: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        })
    }

    /// Counts a request; the guard counts it as cancelled unless it is dropped after
    /// [`InFlight`]'s request produced a response.
    pub fn start(&self) -> InFlight<'_> {
        self.started.fetch_add(1, Relaxed);
        InFlight { conn: self }
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

/// A request in progress; dropped before completion means the client cancelled it.
pub struct InFlight<'a> {
    conn: &'a ClientConn,
}

impl InFlight<'_> {
    /// The request produced its response: not a cancellation.
    pub fn finish(self) {
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.conn.cancelled_one();
    }
}

/// Serves `listener` (over TLS when `tls` is set) until `shutdown` resolves, then lets open
/// connections finish for up to `drain_timeout`: idle HTTP/1.1 connections are closed,
/// HTTP/2 ones get GOAWAY.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    runtime: Arc<Runtime>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let builder = Arc::new(http_builder(limits));
    let graceful = GracefulShutdown::new();
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
        let (builder, watcher, runtime) = (builder.clone(), graceful.watcher(), runtime.clone());
        let Some(tls) = tls.clone() else {
            let conn = ClientConn::new(runtime, peer, Scheme::Http);
            let stream = Detecting::new(stream, limits.header_read_timeout);
            tokio::spawn(serve_connection(
                TokioIo::new(stream),
                conn,
                builder,
                watcher,
            ));
            continue;
        };
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    let conn = ClientConn::new(runtime, peer, Scheme::Https);
                    let stream = Detecting::new(stream, limits.header_read_timeout);
                    serve_connection(TokioIo::new(stream), conn, builder, watcher).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    info!(
        connections = graceful.count(),
        "stopped accepting, draining"
    );
    tokio::select! {
        () = graceful.shutdown() => info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => warn!(?drain_timeout, "drain timeout reached, closing the remaining connections"),
    }
}

/// Serves one client connection over any transport until it ends, the shutdown watcher
/// drains it, or its client is found abusing it.
pub async fn serve_connection<I>(
    io: I,
    conn: Arc<ClientConn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let service = service_fn({
        let conn = conn.clone();
        move |req| proxy::handle(conn.clone(), req)
    });
    let serving = watcher.watch(
        builder
            .serve_connection_with_upgrades(io, service)
            .into_owned(),
    );
    tokio::select! {
        served = serving => if let Err(e) = served {
            debug!(peer = %conn.peer, error = %e, "client connection ended with an error");
        },
        () = conn.closed() => {}
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

/// The HTTP/2 client preface: hyper-util reads up to this much to tell HTTP/2 from HTTP/1.1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client transport while its protocol is not known yet. hyper-util's protocol detection
/// waits for bytes without a deadline, and hyper's header timeout starts only after it, so
/// a client that connects and sends nothing, or sends the HTTP/2 preface a byte at a time,
/// would hold its connection forever. Until the bytes tell the protocol apart, a read that
/// waits past the header timeout fails; from then on this is a plain pass-through.
pub struct Detecting<T> {
    inner: T,
    /// Preface bytes matched so far; `None` once the protocol is known.
    matched: Option<usize>,
    deadline: Instant,
    /// Armed the first time a read waits before the protocol is known.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Detecting<T> {
    /// Wraps a new connection that must show its protocol within `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Detecting<T> {
        Detecting {
            inner,
            matched: Some(0),
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }

    /// Follows the preface as hyper-util does: the protocol is known at the first byte that
    /// differs from it, at the end of the stream, or once all of it has arrived.
    fn saw(&mut self, read: &[u8]) {
        let Some(matched) = self.matched else { return };
        let n = read.len().min(H2_PREFACE.len() - matched);
        let known = read.is_empty()
            || read[..n] != H2_PREFACE[matched..matched + n]
            || matched + n == H2_PREFACE.len();
        if known {
            self.matched = None;
            self.timer = None;
        } else {
            self.matched = Some(matched + n);
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
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) => this.saw(&buf.filled()[before..]),
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
        // HTTP/1.1 from the first byte; HTTP/2 once the whole preface is in.
        assert!(read_after(b"G").await.is_ok());
        assert!(read_after(b"PRX").await.is_ok());
        assert!(read_after(H2_PREFACE).await.is_ok());
    }
}
