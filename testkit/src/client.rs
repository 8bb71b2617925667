//! A small HTTP client for tests: HTTP/1.1 keep-alive or HTTP/2 prior knowledge.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Trailers, if the response had any.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// The `x-color` header the test upstreams set, or "" if absent.
    pub fn color(&self) -> &str {
        self.headers
            .get("x-color")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A pooled client to one address.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    /// HTTP/1.1 with keep-alive.
    pub fn http1(addr: SocketAddr) -> HttpClient {
        Self::build(addr, false)
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn http2(addr: SocketAddr) -> HttpClient {
        Self::build(addr, true)
    }

    fn build(addr: SocketAddr, http2: bool) -> HttpClient {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http();
        HttpClient {
            client,
            base: format!("http://{addr}"),
        }
    }

    /// GET `path` with extra headers; `Err` for a transport error or a 10 s stall.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut req = Request::get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::default()).map_err(|e| e.to_string())?)
            .await
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let exchange = async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (head, body) = response.into_parts();
            let collected = body.collect().await.map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned();
            Ok(Reply {
                status: head.status,
                headers: head.headers,
                body: collected.to_bytes(),
                trailers,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no response within 10 s".to_string())?
    }
}
