//! A test upstream: an HTTP/1.1 and h2c server on loopback that says its color, counts what
//! it served, and can be told to fail or stall.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running test upstream. Stops when dropped.
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    color: &'static str,
    served: AtomicU64,
    connections: AtomicU64,
    status: AtomicU16,
    /// Fraction of answers that are 500 instead, in millionths.
    error_ppm: AtomicU64,
    delay_ms: AtomicU64,
    last_request: Mutex<Option<(String, HeaderMap, Bytes)>>,
}

impl TestUpstream {
    /// Starts an upstream that answers 200 with `x-color: <color>` and `{"color":"<color>"}`.
    pub async fn start(color: &'static str) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, color, None)
    }

    /// Starts an upstream whose HTTP/2 connections allow `streams` concurrent streams each.
    pub async fn start_with_stream_limit(color: &'static str, streams: u32) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, color, Some(streams))
    }

    /// Starts an upstream on a given address (to bring one back where it was).
    pub async fn start_at(addr: SocketAddr, color: &'static str) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind");
        Self::serve(listener, color, None)
    }

    fn serve(listener: TcpListener, color: &'static str, streams: Option<u32>) -> TestUpstream {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            color,
            served: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            status: AtomicU16::new(200),
            error_ppm: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            last_request: Mutex::new(None),
        });
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    state.connections.fetch_add(1, SeqCst);
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(state.clone(), req));
                        let mut builder = auto::Builder::new(TokioExecutor::new());
                        if let Some(streams) = streams {
                            builder.http2().max_concurrent_streams(streams);
                        }
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        TestUpstream { addr, state, task }
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(SeqCst)
    }

    /// Makes every later answer carry `status`.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, SeqCst);
    }

    /// Makes a fraction `rate` (0 to 1) of later answers 500, spread like independent draws
    /// (a fixed pseudo-random sequence, so a run can be repeated).
    pub fn set_error_rate(&self, rate: f64) {
        self.state
            .error_ppm
            .store((rate * 1e6).round() as u64, SeqCst);
    }

    /// Delays every later answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, SeqCst);
    }

    /// The last request's path, headers and body.
    pub fn last_request(&self) -> Option<(String, HeaderMap, Bytes)> {
        self.state.last_request.lock().expect("lock").clone()
    }

    /// `host:port` for a config value.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

/// How far, in binomial standard deviations, one pod's count may stray from an even share.
/// The balancer follows each pod's latency, and on a shared machine latency follows the
/// scheduler: with equal pods the counts spread about 1.1 binomial σ on a quiet machine and
/// 1.5 σ with the cores oversubscribed (144 counts, 3,000 requests per run, three busy loops
/// beside the test). 4 σ failed about one run in twenty-five there; 7 σ is 4.6 of the measured
/// spread, and is still a quarter of the share with 1,500 requests, far inside what a starved
/// pod (0) or a doubled one would show.
pub const SPREAD_SIGMAS: f64 = 7.0;

/// Asserts that the counts `served` by one color's pods are an even split of their sum within
/// [`SPREAD_SIGMAS`] binomial standard deviations.
pub fn assert_even_spread(color: &str, served: &[u64]) {
    let total: u64 = served.iter().sum();
    let p = 1.0 / served.len() as f64;
    let (mean, sigma) = (total as f64 * p, (total as f64 * p * (1.0 - p)).sqrt());
    eprintln!("{color}: {served:?} of {total}, mean {mean:.0}, σ {sigma:.1}");
    for &count in served {
        assert!(
            (count as f64 - mean).abs() <= SPREAD_SIGMAS * sigma,
            "{color}: {count} against {mean:.0} ± {SPREAD_SIGMAS} × {sigma:.1}"
        );
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = head
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *state.last_request.lock().expect("lock") = Some((path, head.headers, body));
    let delay = state.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let n = state.served.fetch_add(1, SeqCst);
    let status = if splitmix(n) % 1_000_000 < state.error_ppm.load(SeqCst) {
        500
    } else {
        state.status.load(SeqCst)
    };
    let response = Response::builder()
        .status(status)
        .header("x-color", state.color)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"color\":\"{}\"}}",
            state.color
        ))))
        .expect("response");
    Ok(response)
}

/// A well-mixed 64-bit hash of `n`: the draws behind the error rate.
fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
