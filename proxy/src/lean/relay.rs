//! The lean path's upstream side for requests hyper's server has read (HTTP/2 clients): a
//! request without a body goes from its header map straight into a pooled raw connection, and
//! its response head is parsed and its body read as the lean path reads them, instead of
//! through hyper's HTTP/1.1 client (a task per upstream connection, woken through a channel for
//! every request: a third of such a request's instructions). The rules are the lean
//! exchange's: [`exchange::send`]'s endpoint failover, replay and timeouts, and
//! [`response::parse`]'s strict framing; the response is then handled as any other on the
//! hyper path.
//!
//! A request with a body or an expectation stays with hyper's client, which streams the body
//! and handles `100 Continue`.

use std::io;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::EXPECT;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use tokio::net::TcpStream;

use super::chunked::Chunked;
pub use super::exchange::Missed;
use super::exchange::{self, Answer, Replay, UPSTREAM_ROOM};
use super::response::Framing;
use super::{Work, give_back, pool, take_work};
use crate::body::RequestBody;
use crate::config::{Protocol, Timeouts};
use crate::headers;
use crate::upstream::endpoints::{Endpoints, Served};
use crate::upstream::{self, Upstream};

/// Whether `req` is sent here: from an HTTP/2 client, without a body or expectation, to a
/// color spoken to over HTTP/1.1.
pub fn takes(req: &Request<RequestBody>, protocol: Protocol) -> bool {
    protocol == Protocol::Http1
        && req.version() == Version::HTTP_2
        && req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(EXPECT)
}

/// Sends `req` (with its forwarding headers, see [`takes`]) to an endpoint of `endpoints`;
/// the response, its body to read from the connection, and the endpoint that answered.
pub async fn send(
    endpoints: &Endpoints,
    req: &mut Request<RequestBody>,
    timeouts: Timeouts,
) -> Result<(Response<Relayed>, Served), Missed> {
    headers::for_http1(req);
    let mut work = take_work();
    write_head(req, &mut work.out);
    let replay = Replay {
        idempotent: upstream::idempotent(req),
        head_method: req.method() == Method::HEAD,
    };
    let no_body = exchange::Body {
        read: &[],
        left: 0,
        timeout: Duration::ZERO,
    };
    let Work {
        out,
        upstream: buf,
        fields,
        ..
    } = &mut *work;
    let sent = exchange::send(
        &mut tokio::io::empty(),
        endpoints,
        out,
        &no_body,
        (buf, fields),
        replay,
        timeouts,
    )
    .await;
    let Answer {
        stream,
        served,
        response,
    } = match sent {
        Ok(answer) => answer,
        Err(missed) => {
            give_back(work);
            return Err(missed);
        }
    };
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let map = head.headers_mut();
    map.reserve(fields.len());
    for &(name, value) in fields.iter() {
        let name = HeaderName::from_bytes(name.in_buf(buf));
        let value = HeaderValue::from_bytes(value.in_buf(buf));
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    let mut body = Relayed {
        at: response.len,
        work: Some(work),
        stream: Some(stream),
        framing: response.framing,
        left: match response.framing {
            Framing::Length(n) => n,
            _ => 0,
        },
        chunked: Chunked::default(),
        trailers: Vec::new(),
        reusable: response.reusable,
        idle: timeouts.upstream_idle,
    };
    if matches!(response.framing, Framing::Empty | Framing::Length(0)) {
        body.end(Some(&served.endpoint().upstream));
    }
    Ok((head.map(|()| body), served))
}

/// Writes `req`'s head in HTTP/1.1 form into `out`.
fn write_head(req: &Request<RequestBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Not `request::write_field`: a `HeaderName` is lowercase already, and lowercasing it
    // again byte by byte cost about 400 instructions per request.
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a relayed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The connection closed or failed before the body's end.
    #[error("the upstream closed the connection mid-body")]
    Closed,
    /// The chunked framing was refused.
    #[error("the upstream broke the chunked framing: {0}")]
    Chunked(#[from] super::ChunkError),
    /// The trailer section is not header fields.
    #[error("the upstream sent malformed trailers")]
    Trailers,
}

/// Trailer fields at most (what the response head allows).
const MAX_TRAILER_FIELDS: usize = 100;

/// The fields of a chunked body's trailer `section` (its lines and the final empty line, as
/// [`Chunked`] checked them); `None` when there are none.
fn parse_trailers(section: &[u8]) -> Result<Option<HeaderMap>, RelayError> {
    if section == b"\r\n" {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields)
    else {
        return Err(RelayError::Trailers);
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(RelayError::Trailers);
        };
        map.append(name, value);
    }
    Ok(Some(map))
}

/// A response body read from the upstream connection it came on; the connection goes back to
/// the lean pool once the body has been read to its end, if it can carry another request.
pub struct Relayed {
    /// The buffers; the body's bytes read so far are in `upstream` from `at`. `None` once the
    /// body has ended or broken off.
    work: Option<Box<Work>>,
    at: usize,
    /// `None` once the body has ended.
    stream: Option<TcpStream>,
    framing: Framing,
    /// Bytes still to come of a `Content-Length` body.
    left: u64,
    chunked: Chunked,
    /// The trailer section of a chunked body, as it arrives.
    trailers: Vec<u8>,
    reusable: bool,
    /// `timeout.upstream-idle`, for the pool.
    idle: Duration,
}

impl Relayed {
    /// Whether the body has been read to its end, or broken off.
    pub fn ended(&self) -> bool {
        self.work.is_none()
    }

    /// The next frame of the body (data, then the trailers of a chunked body that has any); at
    /// its end the connection goes back to `upstream`'s pool if it can be reused. `None` once
    /// ended.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        upstream: Option<&Upstream>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let polled = self.poll_body(cx, upstream);
        if let Poll::Ready(Some(Err(_))) = polled {
            // Broken off: the connection is closed, the buffers go back, nothing more is read.
            self.stream = None;
            if let Some(work) = self.work.take() {
                give_back(work);
            }
        }
        polled
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        upstream: Option<&Upstream>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        loop {
            let Some(work) = &mut self.work else {
                return Poll::Ready(None);
            };
            let buf = &mut work.upstream;
            let avail = &buf[self.at..];
            if self.framing == Framing::Chunked && self.chunked.in_trailers() {
                let taken = self.chunked.feed(avail)?;
                self.trailers.extend_from_slice(&avail[..taken]);
                self.at += taken;
                if self.chunked.done() {
                    let trailers = parse_trailers(&self.trailers)?;
                    self.end(upstream);
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
            } else {
                let data = match self.framing {
                    Framing::Empty => 0..0,
                    Framing::Length(_) => {
                        let take = self.left.min(avail.len() as u64) as usize;
                        self.left -= take as u64;
                        self.at..self.at + take
                    }
                    Framing::Chunked => {
                        let (framing, n) = self.chunked.next_data(avail)?;
                        let start = self.at + framing;
                        start..start + n
                    }
                    Framing::Close => self.at..buf.len(),
                };
                self.at = data.end.max(self.at);
                let done = match self.framing {
                    Framing::Empty => true,
                    Framing::Length(_) => self.left == 0,
                    Framing::Chunked | Framing::Close => false,
                };
                if !data.is_empty() {
                    let bytes = Bytes::copy_from_slice(&buf[data]);
                    if done {
                        self.end(upstream);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if done {
                    self.end(upstream);
                    return Poll::Ready(None);
                }
                if self.chunked.in_trailers() {
                    // The last chunk: what follows is the trailer section, taken in above.
                    continue;
                }
            }
            if self.at < buf.len() {
                continue;
            }
            // Everything read so far is taken in: read more, into the same buffer.
            buf.clear();
            self.at = 0;
            if buf.capacity() < UPSTREAM_ROOM {
                buf.reserve(UPSTREAM_ROOM);
            }
            let stream = self
                .stream
                .as_ref()
                .expect("a body not ended has its stream");
            match ready!(poll_read(stream, buf, cx)) {
                Ok(0) if self.framing == Framing::Close => {
                    self.end(upstream);
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => return Poll::Ready(Some(Err(RelayError::Closed))),
                Ok(_) => {}
            }
        }
    }

    /// Ends the body: the connection back into `upstream`'s pool if the response said it can
    /// carry another request and nothing came after the body, the buffers back to the thread.
    fn end(&mut self, upstream: Option<&Upstream>) {
        let extra = self
            .work
            .as_ref()
            .is_some_and(|w| self.at < w.upstream.len());
        if let (Some(stream), Some(upstream)) = (self.stream.take(), upstream)
            && self.reusable
            && !extra
        {
            pool::put(upstream, stream, self.idle);
        }
        if let Some(work) = self.work.take() {
            give_back(work);
        }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // Left before its end: the connection is mid-response and cannot be pooled.
        if let Some(work) = self.work.take() {
            give_back(work);
        }
    }
}

/// Reads what `stream` has into `buf`'s spare room.
fn poll_read(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(stream.poll_read_ready(cx))?,
            read => return Poll::Ready(read),
        }
    }
}
