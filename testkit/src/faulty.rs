//! Upstreams that misbehave on purpose, and a raw-wire client for requests no well-behaved
//! client would send.
//!
//! - [`RecordingUpstream`]: a correct HTTP/1.1 upstream that counts requests as they arrive and
//!   keeps a transcript of every byte it received, so a test can show that a smuggled request
//!   never reached it, not even as body bytes.
//! - [`ScriptedUpstream`]: a raw TCP upstream that reads one request head at a time and then
//!   does what its [`Script`] says: reply with given bytes, reset, stall, or close when idle.
//! - [`RawConn`]: a TCP client that writes bytes as given and reads what comes back.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A correct HTTP/1.1 upstream that records what reached it. Stops when dropped.
pub struct RecordingUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Recorded>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Recorded {
    /// Request heads received, counted on arrival (before the body is read).
    requests: AtomicU64,
    /// Requests whose body broke off before its end.
    aborted: AtomicU64,
    connections: AtomicU64,
    delay_ms: AtomicU64,
    paths: Mutex<Vec<String>>,
    last_headers: Mutex<Option<HeaderMap>>,
    /// Every byte read from every connection, in arrival order per read.
    transcript: Mutex<Vec<u8>>,
    /// Extra headers every response carries.
    response_headers: Mutex<Vec<(String, String)>>,
}

impl RecordingUpstream {
    /// Starts an upstream that answers every request 200 `ok` once it has read the body.
    pub async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Recorded::default());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    state.connections.fetch_add(1, SeqCst);
                    let state = state.clone();
                    tokio::spawn(async move {
                        let io = Transcribed {
                            inner: stream,
                            state: state.clone(),
                        };
                        let service = service_fn(move |req| record(state.clone(), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(io), service)
                            .await;
                    });
                }
            }
        });
        RecordingUpstream { addr, state, task }
    }

    /// `host:port` for a config value.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Request heads that reached the upstream.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(SeqCst)
    }

    /// Requests whose body was cut off before its end.
    pub fn aborted(&self) -> u64 {
        self.state.aborted.load(SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(SeqCst)
    }

    /// The request targets received, in order.
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().expect("lock").clone()
    }

    /// The last request's headers.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.state.last_headers.lock().expect("lock").clone()
    }

    /// Every byte received so far, all connections together.
    pub fn transcript(&self) -> Vec<u8> {
        self.state.transcript.lock().expect("lock").clone()
    }

    /// Delays every later answer by `delay` (after the request head has been counted).
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, SeqCst);
    }

    /// Adds these headers to every later response.
    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        *self.state.response_headers.lock().expect("lock") = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    state: Arc<Recorded>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, SeqCst);
    let (head, body) = req.into_parts();
    state.paths.lock().expect("lock").push(head.uri.to_string());
    *state.last_headers.lock().expect("lock") = Some(head.headers);
    if body.collect().await.is_err() {
        state.aborted.fetch_add(1, SeqCst);
    }
    let delay = state.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = Response::builder()
        .header("x-color", "blue")
        .header("content-type", "text/plain");
    for (k, v) in state.response_headers.lock().expect("lock").iter() {
        response = response.header(k, v);
    }
    Ok(response
        .body(Full::new(Bytes::from_static(b"ok")))
        .expect("response"))
}

/// A TCP stream that copies every byte it reads into the upstream's transcript.
struct Transcribed {
    inner: TcpStream,
    state: Arc<Recorded>,
}

impl AsyncRead for Transcribed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            self.state
                .transcript
                .lock()
                .expect("lock")
                .extend_from_slice(read);
        }
        polled
    }
}

impl AsyncWrite for Transcribed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a [`ScriptedUpstream`] does after reading each request head.
#[derive(Clone, Debug)]
pub enum Script {
    /// Writes these bytes, then waits for the next request on the same connection.
    Reply(Vec<u8>),
    /// Writes these bytes, then resets the connection (RST, not FIN).
    ResetAfter(Vec<u8>),
    /// Never answers; holds the connection open.
    Stall,
    /// Writes these bytes (a head and part of a body, say), then falls silent with the
    /// connection open.
    StallAfter(Vec<u8>),
    /// Writes each piece with this pause before each one after the first (a long stream),
    /// then waits for the next request.
    Trickle(Vec<Vec<u8>>, Duration),
    /// Answers a correct keep-alive `200 ok`, and closes the connection once it has been
    /// idle this long, as servers with a short keep-alive timeout do.
    CloseWhenIdle(Duration),
    /// Answers a connection's first request with a keep-alive `200 ok`, and closes it without
    /// an answer when a second request arrives: a server closing an idle connection at the
    /// instant a request is written to it.
    CloseOnReuse,
}

/// A raw TCP upstream that follows a [`Script`]. Stops when dropped.
pub struct ScriptedUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Scripted>,
    task: JoinHandle<()>,
}

struct Scripted {
    script: Mutex<Script>,
    connections: AtomicU64,
    requests: AtomicU64,
    /// Requests that came on a connection that had already carried one.
    reused: AtomicU64,
}

impl ScriptedUpstream {
    /// Starts an upstream that follows `script` on every connection.
    pub async fn start(script: Script) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Scripted {
            script: Mutex::new(script),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        });
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    state.connections.fetch_add(1, SeqCst);
                    tokio::spawn(follow(stream, state.clone()));
                }
            }
        });
        ScriptedUpstream { addr, state, task }
    }

    /// `host:port` for a config value.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Changes what later requests get.
    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().expect("lock") = script;
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(SeqCst)
    }

    /// Request heads read.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(SeqCst)
    }

    /// Requests that came on a connection that had already carried one (a pooled one).
    pub fn reused(&self) -> u64 {
        self.state.reused.load(SeqCst)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const OK_KEEP_ALIVE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-color: blue\r\n\r\nok";

async fn follow(mut stream: TcpStream, state: Arc<Scripted>) {
    let mut buf = Vec::with_capacity(4096);
    let mut served = 0;
    loop {
        let idle = match &*state.script.lock().expect("lock") {
            Script::CloseWhenIdle(idle) => Some(*idle),
            _ => None,
        };
        let head = read_head(&mut stream, &mut buf);
        let read = match idle {
            Some(idle) => match tokio::time::timeout(idle, head).await {
                Ok(read) => read,
                Err(_) => return,
            },
            None => head.await,
        };
        if !read {
            return;
        }
        state.requests.fetch_add(1, SeqCst);
        if served > 0 {
            state.reused.fetch_add(1, SeqCst);
        }
        served += 1;
        let script = state.script.lock().expect("lock").clone();
        match script {
            Script::Reply(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Script::ResetAfter(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                let _ = stream.set_zero_linger();
                return;
            }
            Script::Stall => {
                drain(&mut stream).await;
                return;
            }
            Script::StallAfter(bytes) => {
                let _ = stream.write_all(&bytes).await;
                drain(&mut stream).await;
                return;
            }
            Script::Trickle(pieces, pause) => {
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    if stream.write_all(piece).await.is_err() {
                        return;
                    }
                }
            }
            Script::CloseWhenIdle(_) => {
                if stream.write_all(OK_KEEP_ALIVE).await.is_err() {
                    return;
                }
            }
            Script::CloseOnReuse if served > 1 => return,
            Script::CloseOnReuse => {
                if stream.write_all(OK_KEEP_ALIVE).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads and drops whatever comes until the peer closes.
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Reads up to the end of one request head; `false` at end of stream. Whatever follows the
/// head in `buf` is dropped: the scripts are for bodiless requests.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let mut chunk = [0; 4096];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A client connection that writes exactly the bytes it is given.
pub struct RawConn {
    stream: TcpStream,
}

/// What came back on a [`RawConn`].
#[derive(Debug)]
pub struct RawReply {
    /// Every byte read.
    pub bytes: Vec<u8>,
    /// Whether the server closed (or reset) the connection before the deadline.
    pub closed: bool,
}

impl RawReply {
    /// The status codes of the responses in `bytes`, in order (each framed by its
    /// `content-length`, the last one possibly incomplete).
    pub fn statuses(&self) -> Vec<u16> {
        let mut statuses = Vec::new();
        let mut rest = &self.bytes[..];
        while let Some((status, length)) = response_head(rest) {
            statuses.push(status);
            rest = &rest[length.min(rest.len())..];
        }
        statuses
    }

    /// The response bytes as text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        Ok(RawConn {
            stream: TcpStream::connect(addr).await?,
        })
    }

    /// Connects to `addr` from the local address `from` (any of 127.0.0.0/8 on loopback).
    pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> io::Result<RawConn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        Ok(RawConn {
            stream: socket.connect(addr).await?,
        })
    }

    /// Writes `bytes` as one write.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads until the server closes the connection or `wait` has passed.
    pub async fn read_until_closed(&mut self, wait: Duration) -> RawReply {
        self.read_while(wait, |_| true).await
    }

    /// Reads until the bytes hold `responses` complete responses (each with a
    /// `content-length`), the server closes, or `wait` has passed.
    pub async fn read_responses(&mut self, responses: usize, wait: Duration) -> RawReply {
        self.read_while(wait, |bytes| complete_responses(bytes) < responses)
            .await
    }

    async fn read_while(&mut self, wait: Duration, more: impl Fn(&[u8]) -> bool) -> RawReply {
        let deadline = Instant::now() + wait;
        let mut bytes = Vec::new();
        let mut chunk = [0; 16 * 1024];
        while more(&bytes) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return RawReply {
                        bytes,
                        closed: true,
                    };
                }
                Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        RawReply {
            bytes,
            closed: false,
        }
    }

    /// Sends `bytes` on a new connection and reads until it closes or `wait` has passed.
    pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawReply {
        let mut conn = RawConn::connect(addr).await.expect("connect");
        conn.send(bytes).await.expect("send");
        conn.read_until_closed(wait).await
    }
}

/// How many complete `content-length`-framed responses `bytes` holds.
fn complete_responses(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    while let Some((_, length)) = response_head(bytes) {
        if bytes.len() < length {
            break;
        }
        count += 1;
        bytes = &bytes[length..];
    }
    count
}

/// The status of the response `bytes` start with, and its length with the body its
/// `content-length` declares (0 if none); `None` if no complete head is there.
fn response_head(bytes: &[u8]) -> Option<(u16, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let status = head.strip_prefix("http/1.1 ")?.get(..3)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some((status, end + 4 + length))
}
