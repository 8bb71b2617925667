//! The test upstream: answers every request `200` with its color, with faults injectable at run time.
//!
//! It is built to never be the bottleneck of a benchmark: one hyper connection task per client
//! (HTTP/1.1 with keep-alive and pipelining, h2c by prior knowledge), a response body and header
//! value that are `'static` so that no request allocates in this code, and counters that are
//! plain relaxed atomics.
//!
//! Two admin paths live beside the data path and are not counted as served:
//! `GET /stats` answers `{"served":N,"errors":M}` and `POST /fault` takes
//! `{"error_rate":0.5,"latency_ms":0}` (either field optional).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The largest `POST /fault` body read; the real ones are a few dozen bytes.
const FAULT_BODY_LIMIT: usize = 4096;
/// Error rates are kept in parts per million so that they fit an atomic integer.
const PPM: u32 = 1_000_000;

/// One of the two colors a canary split chooses between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The color that is stable in the demo.
    Blue,
    /// The color that is the canary in the demo.
    Green,
}

impl Color {
    /// The color's name as it appears in headers, metrics and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// The body every successful answer carries, made once so no request formats it.
    fn body(self) -> &'static str {
        match self {
            Color::Blue => r#"{"color":"blue"}"#,
            Color::Green => r#"{"color":"green"}"#,
        }
    }
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of the injected faults, as posted to `/fault`; a missing field keeps its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    /// Fraction of answers, 0.0 to 1.0, that are `500` instead of `200`.
    pub error_rate: Option<f64>,
    /// Delay added before each answer, in milliseconds.
    pub latency_ms: Option<f64>,
}

/// The upstream's own count of what it answered, served at `GET /stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests answered on the data path, failures included.
    pub served: u64,
    /// Of those, the ones answered `500` by fault injection.
    pub errors: u64,
}

/// The shared state of one upstream: its color, its faults and its counters.
#[derive(Debug)]
pub struct Upstream {
    /// Named in every answer so that clients can tell which color served them.
    color: Color,
    /// The body of every successful answer: the color's JSON, or a size asked for.
    body: Bytes,
    /// Error rate in parts per million; an atomic so `/fault` changes it under load.
    error_ppm: AtomicU32,
    /// Added latency in microseconds; an atomic for the same reason.
    latency_us: AtomicU64,
    /// Data-path requests answered, for the load generator's count check.
    served: AtomicU64,
    /// Data-path requests answered `500`.
    errors: AtomicU64,
}

impl Upstream {
    /// An upstream of `color` with the given starting faults.
    pub fn new(color: Color, faults: FaultUpdate) -> Arc<Self> {
        Upstream::with_body(color, faults, None)
    }

    /// The same, answering with a body of `body_bytes` bytes instead of the color's JSON.
    pub fn with_body(color: Color, faults: FaultUpdate, body_bytes: Option<usize>) -> Arc<Self> {
        let body = match body_bytes {
            Some(n) => Bytes::from(vec![b'x'; n]),
            None => Bytes::from_static(color.body().as_bytes()),
        };
        let upstream = Arc::new(Upstream {
            color,
            body,
            error_ppm: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        upstream.set_faults(faults);
        upstream
    }

    /// The color this upstream answers with.
    pub fn color(&self) -> Color {
        self.color
    }

    /// Applies a fault change; rates are clamped to 0..=1 and latencies to at least 0.
    pub fn set_faults(&self, update: FaultUpdate) {
        if let Some(rate) = update.error_rate {
            let ppm = (rate.clamp(0.0, 1.0) * f64::from(PPM)).round() as u32;
            self.error_ppm.store(ppm, Ordering::Relaxed);
        }
        if let Some(ms) = update.latency_ms {
            let us = (ms.max(0.0) * 1000.0).round() as u64;
            self.latency_us.store(us, Ordering::Relaxed);
        }
    }

    /// The current faults, as `/fault` would accept them.
    pub fn faults(&self) -> FaultUpdate {
        FaultUpdate {
            error_rate: Some(f64::from(self.error_ppm.load(Ordering::Relaxed)) / f64::from(PPM)),
            latency_ms: Some(self.latency_us.load(Ordering::Relaxed) as f64 / 1000.0),
        }
    }

    /// What this upstream has answered so far.
    pub fn stats(&self) -> Stats {
        Stats {
            served: self.served.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Answers one data-path request; `fails` was drawn by the caller's random source.
    async fn answer(&self, fails: bool) -> Response<Full<Bytes>> {
        let latency = self.latency_us.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        let status = if fails {
            self.errors.fetch_add(1, Ordering::Relaxed);
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert("x-color", HeaderValue::from_static(self.color.as_str()));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// Routes one request: the two admin paths, or the data path.
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        fails: bool,
    ) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/stats") => json_response(StatusCode::OK, &self.stats()),
            (&Method::POST, "/fault") => self.post_fault(request).await,
            _ => self.answer(fails).await,
        }
    }

    /// `POST /fault`: parses the change, applies it, and answers the faults now in force.
    async fn post_fault(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = match Limited::new(request.into_body(), FAULT_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read body: {err}\n"),
                );
            }
        };
        match serde_json::from_slice::<FaultUpdate>(&body) {
            Ok(update) => {
                self.set_faults(update);
                json_response(StatusCode::OK, &self.faults())
            }
            Err(err) => text_response(StatusCode::BAD_REQUEST, format!("bad fault: {err}\n")),
        }
    }

    /// Whether the next request fails, drawn from the connection's own random source so that
    /// connections share nothing but the atomic rate.
    fn draw_failure(&self, rng: &RefCell<SmallRng>) -> bool {
        match self.error_ppm.load(Ordering::Relaxed) {
            0 => false,
            ppm if ppm >= PPM => true,
            ppm => rng.borrow_mut().random_range(0..PPM) < ppm,
        }
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    // Serializing these plain structs cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

/// Serves `upstream` on `listener` until `shutdown` completes; connections already open are
/// left to finish on the runtime.
pub async fn serve(
    listener: TcpListener,
    upstream: Arc<Upstream>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).pipeline_flush(true);
    builder.http2().max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors or a connection reset before accept: keep serving the rest.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        // Small answers must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let rng = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
            let service = service_fn(move |request| {
                let fails = upstream.draw_failure(&rng);
                let upstream = upstream.clone();
                async move { Ok::<_, Infallible>(upstream.handle(request, fails).await) }
            });
            // A client that goes away mid-request is not the upstream's concern.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An upstream served by this process on a free loopback port, stopped when dropped: the demo's
/// and the soak's blue and green.
pub struct LocalUpstream {
    /// Where the proxy reaches it.
    pub addr: SocketAddr,
    /// Dropping it stops the accept loop.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl LocalUpstream {
    /// Starts a fault-free upstream of `color` on 127.0.0.1.
    pub async fn start(color: Color) -> std::io::Result<LocalUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = Upstream::new(color, FaultUpdate::default());
        tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(LocalUpstream { addr, _stop: stop })
    }
}
