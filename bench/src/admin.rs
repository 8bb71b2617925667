//! A minimal HTTP/1.1 client for admin endpoints (`/status`, `/metrics`, `/fault`, `/stats`):
//! one fresh connection per call, a deadline on the whole exchange.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one admin call may take; admin endpoints answer in microseconds.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Could not connect, or the exchange broke.
    #[error("{method} http://{addr}{path}: {reason}")]
    Http {
        /// The method of the call.
        method: Method,
        /// Where it went.
        addr: SocketAddr,
        /// What it asked for.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Sends `method path` with `body` to `addr` and returns the status code and the whole body.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
) -> Result<(u16, Bytes), AdminError> {
    let fail = |reason: String| AdminError::Http {
        method: method.clone(),
        addr,
        path: path.to_string(),
        reason,
    };
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, exchange).await {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(fail(format!("no answer within {ADMIN_TIMEOUT:?}"))),
    }
}

/// `GET path`, expecting `200`; returns the body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Bytes, AdminError> {
    let (status, body) = call(addr, Method::GET, path, "").await?;
    if status != 200 {
        return Err(AdminError::Http {
            method: Method::GET,
            addr,
            path: path.to_string(),
            reason: format!("status {status}: {}", String::from_utf8_lossy(&body)),
        });
    }
    Ok(body)
}
