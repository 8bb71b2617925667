//! The data listener: accepts connections (cleartext, or TLS with ALPN), serves HTTP/1.1 and
//! HTTP/2 on each with the protocol limits set, passes upgrades through, and drains them on
//! shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::headers::Scheme;
use crate::proxy;
use crate::runtime::Runtime;

/// Limits on what a client may send before the proxy gives up on it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time allowed to send a request's headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Bytes of request line and headers (HTTP/1.1 read buffer; beyond it, 431).
    pub max_header_bytes: usize,
    /// Number of request headers (beyond it, 431).
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            // nginx's large_client_header_buffers default: 4 × 8 KiB.
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_streams: 100,
        }
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
    let builder = Arc::new(builder(limits));
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
        let runtime = runtime.clone();
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let Some(tls) = tls.clone() else {
            let service =
                service_fn(move |req| proxy::handle(runtime.clone(), peer, Scheme::Http, req));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::spawn(finish(watcher.watch(conn.into_owned()), peer));
            continue;
        };
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let service =
                service_fn(move |req| proxy::handle(runtime.clone(), peer, Scheme::Https, req));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            finish(watcher.watch(conn.into_owned()), peer).await;
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

async fn finish<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    peer: std::net::SocketAddr,
) {
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "client connection ended with an error");
    }
}

fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
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
