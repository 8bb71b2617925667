//! A gRPC-shaped test upstream over h2c: answers every call with one message and a
//! `grpc-status` trailer that the test can change.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running gRPC test upstream. Stops when dropped.
pub struct GrpcUpstream {
    /// Where it listens (h2c, prior knowledge).
    pub addr: SocketAddr,
    status: Arc<AtomicU32>,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    /// Starts an upstream whose replies carry the message `color` and `grpc-status: 0`.
    pub async fn start(color: &'static str) -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU32::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (status, served) = (status.clone(), served.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (status, served) = (status.clone(), served.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (status, served) = (status.clone(), served.clone());
                            async move {
                                // Read the request message before answering, as a unary call does.
                                let _ = req.into_body().collect().await;
                                served.fetch_add(1, SeqCst);
                                Ok::<_, Infallible>(reply(color, status.load(SeqCst)))
                            }
                        });
                        let _ = http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        GrpcUpstream {
            addr,
            status,
            served,
            task,
        }
    }

    /// Makes every later reply end with `grpc-status: code`.
    pub fn set_status(&self, code: u32) {
        self.status.store(code, SeqCst);
    }

    /// Calls answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(SeqCst)
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A length-prefixed gRPC message frame.
pub fn message(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
}

fn reply(color: &str, code: u32) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    Response::builder()
        .header("content-type", "application/grpc")
        .header("x-color", color)
        .body(GrpcBody {
            data: Some(message(color.as_bytes())),
            trailers: Some(trailers),
        })
        .expect("response")
}

/// One message, then the trailers.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }
}
