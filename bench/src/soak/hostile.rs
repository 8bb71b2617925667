//! The hostile clients of a soak, each kind at its own steady rate beside the good load:
//!
//! - malformed requests over raw TCP, a new connection each, from a small corpus; each must get
//!   a 4xx answer or a closed connection;
//! - request bodies aborted midway: a `POST` announcing 1 MiB, 16 KiB of it, then the socket
//!   closed (a FIN or, every other time, a RST);
//! - HTTP/2 streams reset by the client (a `POST` whose body never ends: half of them reset
//!   in the same write as their head, before the answer; half 10 ms later, after it), each on
//!   a fresh h2c connection that then serves one ordinary request, which must succeed.
//!
//! Every event runs in its own task under a deadline, so a slow answer never delays the next
//! event's schedule; stopping waits for the events in flight.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

/// How long one hostile event may take, connect to close.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a malformed request's connection is watched for an answer or a close.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The body length an aborted request announces.
const ANNOUNCED_BODY: usize = 1024 * 1024;
/// The part of it that is sent before the abort.
const SENT_BODY: usize = 16 * 1024;
/// Pause between the part of the body and the abort, so the proxy has begun forwarding it.
const ABORT_AFTER: Duration = Duration::from_millis(10);
/// Pause between an h2 request head and the reset of a stream reset late: long enough for the
/// upstream, which does not read bodies, to have answered while the request body is open.
const RESET_AFTER: Duration = Duration::from_millis(10);
/// The part of an h2 request body sent with the head and the reset of a rapid reset; within the
/// initial stream window, so it leaves without waiting for a window update.
const H2_BODY_PART: usize = 8 * 1024;
/// How long an h2 connection may take to close after its client handle is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One malformed request of the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Malformed {
    /// `Content-Length: 12abc`.
    BadContentLength,
    /// Both `Content-Length` and `Transfer-Encoding: chunked`, a smuggled request after the
    /// chunked body (RELIABILITY.md SMUG-CLTE): answered by chunked framing, then closed.
    ContentLengthAndChunked,
    /// Binary garbage where the request line belongs.
    GarbageRequestLine,
    /// A 40 KiB header, past the proxy's header size limit.
    HugeHeader,
    /// A bare LF splitting a header line in two. (A request whose every line ends in a bare
    /// LF is not in the corpus: RFC 9112 section 2.2 lets a server accept it.)
    BareLf,
}

impl Malformed {
    /// The corpus, sent round-robin.
    const ALL: [Malformed; 5] = [
        Malformed::BadContentLength,
        Malformed::ContentLengthAndChunked,
        Malformed::GarbageRequestLine,
        Malformed::HugeHeader,
        Malformed::BareLf,
    ];

    fn name(self) -> &'static str {
        match self {
            Malformed::BadContentLength => "bad Content-Length",
            Malformed::ContentLengthAndChunked => "CL + TE",
            Malformed::GarbageRequestLine => "garbage request line",
            Malformed::HugeHeader => "40 KiB header",
            Malformed::BareLf => "bare LF",
        }
    }

    fn bytes(self) -> Cow<'static, [u8]> {
        match self {
            Malformed::BadContentLength => Cow::Borrowed(
                b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 12abc\r\n\r\nhello, world",
            ),
            Malformed::ContentLengthAndChunked => Cow::Borrowed(
                b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: soak\r\n\r\n",
            ),
            Malformed::GarbageRequestLine => {
                Cow::Borrowed(b"\xff\xfe GARBAGE \x01\x02 ???\r\nHost: soak\r\n\r\n")
            }
            Malformed::HugeHeader => {
                let mut request = b"GET / HTTP/1.1\r\nHost: soak\r\nX-Huge: ".to_vec();
                request.resize(request.len() + 40 * 1024, b'a');
                request.extend_from_slice(b"\r\n\r\n");
                Cow::Owned(request)
            }
            Malformed::BareLf => {
                Cow::Borrowed(b"GET / HTTP/1.1\r\nHost: soak\r\nX-Split: a\nb\r\n\r\n")
            }
        }
    }
}

/// How the proxy dealt with one malformed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// A 4xx answer.
    Refused,
    /// The connection was closed (after an answer that was not 4xx, or none).
    Closed,
    /// Neither: a non-4xx answer on a connection kept open, or silence.
    Accepted,
}

/// Counters of one corpus entry, as [`MalformedCount`] reports them.
#[derive(Debug, Default)]
struct CaseCounters {
    /// Requests written to an accepted connection.
    sent: AtomicU64,
    /// Answered 4xx.
    refused: AtomicU64,
    /// Closed without a 4xx.
    closed: AtomicU64,
    /// Neither.
    accepted: AtomicU64,
}

/// Counters every hostile task writes (relaxed atomics: they are only summed for reports).
#[derive(Debug, Default)]
struct Counters {
    /// One block per corpus entry, in [`Malformed::ALL`]'s order.
    malformed: [CaseCounters; 5],
    /// Request bodies aborted midway.
    aborted: AtomicU64,
    /// HTTP/2 streams reset.
    resets: AtomicU64,
    /// Of those, the ones whose answer's head had arrived first.
    resets_after_answer: AtomicU64,
    /// Follow-up requests after a reset that got a 2xx: good traffic.
    follow_up_ok: AtomicU64,
    /// Follow-up requests (or their connection's handshake) that failed: good traffic lost.
    follow_up_failed: AtomicU64,
    /// Hostile connections the proxy did not accept.
    connect_errors: AtomicU64,
}

/// Adds one to a counter that many tasks write.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What one corpus entry got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MalformedCount {
    /// The entry.
    pub case: &'static str,
    /// Requests sent.
    pub sent: u64,
    /// Answered 4xx.
    pub refused: u64,
    /// Connection closed without a 4xx.
    pub closed: u64,
    /// Neither refused nor closed.
    pub accepted: u64,
}

/// What the hostile clients did, and what the proxy made of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostileCounts {
    /// Per corpus entry.
    pub malformed: Vec<MalformedCount>,
    /// Request bodies aborted midway.
    pub aborted_bodies: u64,
    /// HTTP/2 streams reset by the client.
    pub h2_resets: u64,
    /// Of those, the ones whose answer's head had arrived when the reset left (the request's
    /// body still open).
    pub h2_resets_after_answer: u64,
    /// Ordinary requests on the connection of a reset stream that got a 2xx answer.
    pub h2_follow_ups_ok: u64,
    /// Those that did not.
    pub h2_follow_ups_failed: u64,
    /// Hostile connections the proxy did not accept.
    pub connect_errors: u64,
}

impl HostileCounts {
    /// Malformed requests sent.
    pub fn malformed_sent(&self) -> u64 {
        self.malformed.iter().map(|case| case.sent).sum()
    }

    /// Malformed requests answered 4xx.
    pub fn malformed_refused(&self) -> u64 {
        self.malformed.iter().map(|case| case.refused).sum()
    }

    /// Malformed requests whose connection was closed without a 4xx.
    pub fn malformed_closed(&self) -> u64 {
        self.malformed.iter().map(|case| case.closed).sum()
    }

    /// Malformed requests neither refused nor closed.
    pub fn malformed_accepted(&self) -> u64 {
        self.malformed.iter().map(|case| case.accepted).sum()
    }
}

/// The running hostile clients.
pub struct Hostile {
    /// Written by every event task, read for samples and the result.
    counters: Arc<Counters>,
    /// Tells the schedulers to stop starting events.
    stop: watch::Sender<bool>,
    /// One scheduler per kind; each waits for its own events in flight before ending.
    schedulers: Vec<JoinHandle<()>>,
}

impl Hostile {
    /// Starts malformed requests, aborted bodies and h2 resets at `rate` per second each,
    /// against the proxy's data listener `addr`.
    pub fn start(addr: SocketAddr, rate: f64) -> Hostile {
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next_case = 0;
        let malformed = schedule(every, stopped.clone(), {
            let counters = counters.clone();
            move || {
                let index = next_case % Malformed::ALL.len();
                next_case += 1;
                malformed(addr, index, counters.clone())
            }
        });
        let mut rst = false;
        let aborted = schedule(every, stopped.clone(), {
            let counters = counters.clone();
            move || {
                rst = !rst;
                aborted_body(addr, rst, counters.clone())
            }
        });
        let mut late = false;
        let resets = schedule(every, stopped, {
            let counters = counters.clone();
            move || {
                late = !late;
                h2_reset(addr, late, counters.clone())
            }
        });
        Hostile {
            counters,
            stop,
            schedulers: vec![malformed, aborted, resets],
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> HostileCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        HostileCounts {
            malformed: Malformed::ALL
                .iter()
                .zip(&c.malformed)
                .map(|(case, counts)| MalformedCount {
                    case: case.name(),
                    sent: load(&counts.sent),
                    refused: load(&counts.refused),
                    closed: load(&counts.closed),
                    accepted: load(&counts.accepted),
                })
                .collect(),
            aborted_bodies: load(&c.aborted),
            h2_resets: load(&c.resets),
            h2_resets_after_answer: load(&c.resets_after_answer),
            h2_follow_ups_ok: load(&c.follow_up_ok),
            h2_follow_ups_failed: load(&c.follow_up_failed),
            connect_errors: load(&c.connect_errors),
        }
    }

    /// Stops starting events, waits for those in flight, and returns the final counts.
    pub async fn stop(mut self) -> HostileCounts {
        let _ = self.stop.send(true);
        for scheduler in std::mem::take(&mut self.schedulers) {
            // A scheduler only ends by returning; its events are bounded by EVENT_DEADLINE.
            let _ = scheduler.await;
        }
        self.counts()
    }
}

/// Starts `event()` every `every` until `stopped`, each in its own task under
/// [`EVENT_DEADLINE`], then waits for those still running.
fn schedule<F, E>(
    every: Duration,
    mut stopped: watch::Receiver<bool>,
    mut event: E,
) -> JoinHandle<()>
where
    E: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|stop| *stop) => break,
            }
            // Reaps finished events so that the set stays as small as the events in flight.
            while running.try_join_next().is_some() {}
            let next = event();
            running.spawn(async move {
                let _ = tokio::time::timeout(EVENT_DEADLINE, next).await;
            });
        }
        while running.join_next().await.is_some() {}
    })
}

/// Sends corpus entry `index` on a new connection and records the proxy's verdict.
async fn malformed(addr: SocketAddr, index: usize, counters: Arc<Counters>) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        bump(&counters.connect_errors);
        return;
    };
    let case = &counters.malformed[index];
    bump(&case.sent);
    let verdict = match stream.write_all(&Malformed::ALL[index].bytes()).await {
        // The proxy may refuse and close before it has read the whole request.
        Err(_) => Verdict::Closed,
        Ok(()) => verdict(&mut stream).await,
    };
    bump(match verdict {
        Verdict::Refused => &case.refused,
        Verdict::Closed => &case.closed,
        Verdict::Accepted => &case.accepted,
    });
}

/// Reads the answer to a malformed request until it shows a 4xx status, the connection
/// closes, or [`ANSWER_WAIT`] passes.
async fn verdict(stream: &mut TcpStream) -> Verdict {
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return Verdict::Accepted,
            Ok(Ok(0) | Err(_)) => return Verdict::Closed,
            Ok(Ok(n)) => {
                // Only the status line matters; the rest of the answer is not kept.
                if answer.len() < 64 {
                    answer.extend_from_slice(&buffer[..n]);
                }
                if status(&answer).is_some_and(|code| (400..500).contains(&code)) {
                    return Verdict::Refused;
                }
            }
        }
    }
}

/// The status code of an HTTP/1.1 answer's first line, once it has arrived.
fn status(answer: &[u8]) -> Option<u16> {
    let line = answer.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// Announces a 1 MiB body, sends 16 KiB of it, then closes: with a RST if `rst`, else a FIN.
async fn aborted_body(addr: SocketAddr, rst: bool, counters: Arc<Counters>) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        bump(&counters.connect_errors);
        return;
    };
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {ANNOUNCED_BODY}\r\n\r\n"
    );
    let mut request = head.into_bytes();
    request.resize(request.len() + SENT_BODY, b'x');
    // A failed write is an abort too: the proxy closed first.
    let _ = stream.write_all(&request).await;
    tokio::time::sleep(ABORT_AFTER).await;
    if rst {
        let _ = stream.set_zero_linger();
    }
    drop(stream);
    bump(&counters.aborted);
}

/// Opens an h2c connection, resets one stream, then checks that the same connection still
/// serves an ordinary request. The reset stream is a `POST` whose body never ends: 8 KiB of it
/// and the reset follow the head in the same write (a rapid reset, before the answer); or, if
/// `late`, no body and the reset 10 ms later, by when the upstream has usually answered
/// while the request body is still open. Either way the stream is open on the client's side,
/// so the reset always goes out as a `RST_STREAM` frame.
async fn h2_reset(addr: SocketAddr, late: bool, counters: Arc<Counters>) {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        bump(&counters.connect_errors);
        return;
    };
    let Ok((client, connection)) = h2::client::handshake(tcp).await else {
        bump(&counters.follow_up_failed);
        return;
    };
    let mut connection = tokio::spawn(connection);
    let follow_up = reset_then_follow_up(client, late, &counters).await;
    bump(if follow_up {
        &counters.follow_up_ok
    } else {
        &counters.follow_up_failed
    });
    // With the client handle gone the connection closes itself; one that does not is dropped.
    let _ = tokio::time::timeout(CLOSE_WAIT, &mut connection).await;
    connection.abort();
}

/// The reset and the follow-up request of [`h2_reset`]; whether the follow-up got a 2xx.
async fn reset_then_follow_up(
    client: h2::client::SendRequest<Bytes>,
    late: bool,
    counters: &Counters,
) -> bool {
    let Ok(mut client) = client.ready().await else {
        return false;
    };
    let Ok((mut response, mut stream)) = client.send_request(request(http::Method::POST), false)
    else {
        return false;
    };
    if late {
        tokio::time::sleep(RESET_AFTER).await;
    } else if stream
        .send_data(Bytes::from_static(&[b'x'; H2_BODY_PART]), false)
        .is_err()
    {
        return false;
    }
    // Without a pause (rapid reset), the h2 client still sends the queued head and data of a
    // stream it has not opened yet, then the RST_STREAM.
    let answered =
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut response).poll(cx).is_ready())).await;
    stream.send_reset(h2::Reason::CANCEL);
    bump(&counters.resets);
    if answered {
        bump(&counters.resets_after_answer);
    }
    let Ok(mut client) = client.ready().await else {
        return false;
    };
    let Ok((response, _)) = client.send_request(request(http::Method::GET), true) else {
        return false;
    };
    let Ok(Ok(response)) = tokio::time::timeout(ANSWER_WAIT, response).await else {
        return false;
    };
    let ok = response.status().is_success();
    let mut body = response.into_body();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(ANSWER_WAIT, body.data()).await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    ok && body.is_end_stream()
}

/// A request for `/`, in the absolute form HTTP/2 needs; the authority is the one the raw
/// requests name, since the proxy routes by weight, not by host.
fn request(method: http::Method) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from_static("http://soak/");
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_line() {
        assert_eq!(status(b"HTTP/1.1 431 Request Header Fields"), Some(431));
        assert_eq!(status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status(b"HTTP/1.1 4"), None);
        assert_eq!(status(b"garbage"), None);
    }

    #[test]
    fn the_huge_header_is_over_40_kib() {
        let bytes = Malformed::HugeHeader.bytes();
        assert!(bytes.len() > 40 * 1024);
        assert!(bytes.ends_with(b"\r\n\r\n"));
    }
}
