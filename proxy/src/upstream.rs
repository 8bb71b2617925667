//! Upstream: HTTP/1.1 keep-alive connections to one color, pooled per thread.
//!
//! The pool is thread-local: taking and returning a connection is a `Vec` pop and push on the
//! current thread, with no lock and no atomic contention between workers. A connection goes
//! back to the pool only when its response body has been read to the end, so an idle
//! connection is always ready for the next request.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::{Timeouts, UpstreamAddr};
use crate::metrics::ErrorKind;

/// How long an idle pooled connection is kept. Shorter than the keep-alive timeout of common
/// upstream servers (Node.js closes after 5 s), so the proxy rarely writes a request to a
/// connection that the upstream is closing at that moment.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per upstream per thread.
const MAX_IDLE: usize = 256;
/// Fresh attempts after a pooled connection turned out to be closed before the request left.
const STALE_RETRIES: usize = 3;

/// One color's upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Where it is.
    pub addr: UpstreamAddr,
    /// The address, if the host is an IP literal (no DNS lookup per connection).
    literal: Option<SocketAddr>,
    /// Pool key: the same upstream address shares idle connections across config reloads.
    key: u64,
}

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, as metered.
    pub kind: ErrorKind,
    /// The error, for logs.
    pub error: String,
    /// The request, when it never reached the upstream and may be sent elsewhere.
    pub request: Option<Request<Incoming>>,
}

/// A connection lent to one exchange; returned to the pool when the response is complete.
pub struct Lease {
    sender: SendRequest<Incoming>,
    key: u64,
}

impl Lease {
    /// Puts the connection back into this thread's pool.
    pub fn release(self) {
        if !self.sender.is_closed() {
            put(self.key, self.sender);
        }
    }
}

impl Upstream {
    /// An upstream at `addr`.
    pub fn new(addr: UpstreamAddr) -> Upstream {
        let literal = addr
            .host()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, addr.port()));
        let key = crate::route::stable_hash(addr.authority.as_str().as_bytes());
        Upstream { addr, literal, key }
    }

    /// Sends `req` and waits for the response headers.
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
        timeouts: Timeouts,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        for _ in 0..STALE_RETRIES {
            let (mut sender, pooled) = match take(self.key) {
                Some(sender) => (sender, true),
                None => match self.connect(timeouts.connect).await {
                    Ok(sender) => (sender, false),
                    Err((kind, error)) => {
                        return Err(Failure {
                            kind,
                            error,
                            request: Some(req),
                        });
                    }
                },
            };
            let sent = tokio::time::timeout(timeouts.request, sender.try_send_request(req)).await;
            match sent {
                Ok(Ok(response)) => {
                    let lease = Lease {
                        sender,
                        key: self.key,
                    };
                    return Ok((response, lease));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // The connection closed before the request was written: try another.
                    Some(unsent) if pooled => {
                        debug!(upstream = %self.addr, "pooled connection was closed, retrying");
                        req = unsent;
                    }
                    unsent => {
                        return Err(Failure {
                            kind: ErrorKind::Reset,
                            error: e.into_error().to_string(),
                            request: unsent,
                        });
                    }
                },
                Err(_) => {
                    return Err(Failure {
                        kind: ErrorKind::Timeout,
                        error: format!("no response within {:?}", timeouts.request),
                        request: None,
                    });
                }
            }
        }
        Err(Failure {
            kind: ErrorKind::Reset,
            error: "every pooled connection was closed".into(),
            request: Some(req),
        })
    }

    async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<SendRequest<Incoming>, (ErrorKind, String)> {
        let stream = tokio::time::timeout(timeout, self.dial())
            .await
            .map_err(|_| {
                (
                    ErrorKind::Timeout,
                    format!("connect timed out after {timeout:?}"),
                )
            })?
            .map_err(|e| (ErrorKind::Connect, e.to_string()))?;
        // Responses are small and latency matters more than segment count.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| (ErrorKind::Connect, e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn dial(&self) -> io::Result<TcpStream> {
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

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections, per pool key. Few keys (one per color), so a Vec.
    static POOL: RefCell<Vec<(u64, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

fn take(key: u64) -> Option<SendRequest<Incoming>> {
    POOL.with_borrow_mut(|pool| {
        let idle = &mut pool.iter_mut().find(|(k, _)| *k == key)?.1;
        // Most recently used first: it is the one least likely to have been closed.
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < IDLE_TIMEOUT && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    })
}

fn put(key: u64, sender: SendRequest<Incoming>) {
    POOL.with_borrow_mut(|pool| {
        let idle = match pool.iter().position(|(k, _)| *k == key) {
            Some(i) => &mut pool[i].1,
            None => {
                pool.push((key, Vec::new()));
                &mut pool.last_mut().expect("just pushed").1
            }
        };
        // The oldest entry sits at the front; drop it once it has expired or the pool is full.
        if idle
            .first()
            .is_some_and(|c| idle.len() >= MAX_IDLE || c.since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    });
}
