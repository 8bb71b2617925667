//! One connection's loop: connect, send, read, record, and reconnect after a failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Response;
use http::header::{CONNECTION, HeaderName};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::lean::{Answer, Lean, LeanError};
use super::live::{PerColor, Slot};
use super::report::ErrorCounts;
use super::{LoadConfig, Shared, Stop};

/// Pause after a failed connect, so that a dead target is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// The header naming the color that answered, parsed once.
static X_COLOR: HeaderName = HeaderName::from_static("x-color");
/// Significant figures of the latency histograms (0.1 % resolution).
const SIGNIFICANT_FIGURES: u8 = 3;

/// What one connection is asked to do.
pub(crate) struct ConnPlan {
    /// Its position among the connections, for its counters.
    index: usize,
    /// How many requests it sends in `Stop::Requests` mode.
    budget: Option<u64>,
    /// Open loop: the time between two intended sends on this connection.
    interval: Option<Duration>,
    /// Open loop: when the first request is due; staggered so connections do not fire together.
    first_due: Instant,
    /// When to stop sending in `Stop::After` mode.
    deadline: Option<Instant>,
}

impl ConnPlan {
    pub(crate) fn new(config: &LoadConfig, index: usize, started: Instant) -> ConnPlan {
        let n = config.connections as u64;
        let budget = match config.stop {
            // Spread the total so the shares differ by at most one.
            Stop::Requests(total) => Some(total / n + u64::from((index as u64) < total % n)),
            Stop::After(_) | Stop::Manual => None,
        };
        let interval = config
            .rate
            .map(|rate| Duration::from_secs_f64(config.connections as f64 / rate));
        let stagger = interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / n as f64));
        let deadline = match config.stop {
            Stop::After(duration) => Some(started + duration),
            Stop::Requests(_) | Stop::Manual => None,
        };
        ConnPlan {
            index,
            budget,
            interval,
            first_due: started + stagger,
            deadline,
        }
    }
}

/// What a connection hands back when it is done.
pub(crate) struct ConnOutcome {
    /// Latency histograms in microseconds, one per segment.
    pub(crate) latencies: Vec<Histogram<u64>>,
    /// Responses per status code (index = code).
    pub(crate) statuses: Box<[u64; 1000]>,
    /// Responses per answering color.
    pub(crate) colors: PerColor<u64>,
    /// Requests that got no response, by cause.
    pub(crate) errors: ErrorCounts,
    /// When its last request finished.
    pub(crate) finished: Instant,
}

/// A client for either protocol: the lean one for HTTP/1.1, hyper's for HTTP/2.
enum Sender {
    H1(Lean),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// The future that drives a connection's I/O. It is polled in the connection's own task,
/// beside the request in flight, rather than spawned: a request then wakes one task instead of
/// two, which nearly halves the client's CPU cost per request.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why one request got no response.
enum Failure {
    /// The TCP connect or the HTTP handshake failed.
    Connect,
    /// No whole answer within the configured timeout.
    Timeout,
    /// The connection failed during the exchange.
    Io,
    /// The connection was found closed before the request was sent (the server closed it
    /// while idle): the request is resent on a new connection, not counted as failed.
    Closed,
}

/// How a session over one connection ended.
enum SessionEnd {
    /// The run is over for this connection.
    Done,
    /// The connection failed or the server closed it after an answer: connect anew.
    Reconnect,
    /// The connection was closed before this request, started at the given time, left:
    /// connect anew and send it.
    Resend(Instant),
}

/// Whether a hyper error means the request never left (the connection was already closed).
fn unsent(err: &hyper::Error) -> Failure {
    if err.is_canceled() || err.is_closed() {
        Failure::Closed
    } else {
        Failure::Io
    }
}

impl Sender {
    async fn connect(config: &LoadConfig) -> Result<(Sender, Driver), Failure> {
        let stream = TcpStream::connect(config.target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if config.http2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Failure::Connect)?;
            Ok((
                Sender::H2(sender),
                Box::pin(async move { drop(connection.await) }),
            ))
        } else {
            // The lean client does its I/O in the exchange itself: nothing else to drive.
            Ok((
                Sender::H1(Lean::new(io.into_inner(), &config.target)),
                Box::pin(std::future::pending()),
            ))
        }
    }

    /// Sends one request and reads its whole body (which keeps the connection reusable).
    async fn exchange(&mut self, config: &LoadConfig) -> Result<Answer, Failure> {
        let sender = match self {
            Sender::H1(lean) => {
                return lean.exchange().await.map_err(|e| match e {
                    LeanError::Closed => Failure::Closed,
                    LeanError::Io => Failure::Io,
                });
            }
            Sender::H2(sender) => sender,
        };
        sender.ready().await.map_err(|_| Failure::Closed)?;
        let request = config.target.request(true, Empty::new());
        let response: Response<Incoming> =
            sender.send_request(request).await.map_err(|e| unsent(&e))?;
        let answer = Answer {
            status: response.status().as_u16(),
            color: Slot::of(response.headers().get(&X_COLOR).map(|v| v.as_bytes())),
            close: response
                .headers()
                .get(CONNECTION)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close")),
        };
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| Failure::Io)?;
        }
        Ok(answer)
    }
}

/// One connection's run: its plan, its schedule and what it has recorded.
struct Runner<'a> {
    shared: &'a Shared,
    plan: ConnPlan,
    stop: watch::Receiver<bool>,
    /// Requests started so far, against the plan's budget.
    sent: u64,
    /// Open loop: the intended send time of the next request.
    due: Instant,
    /// The last time the clock was read: when the last answer arrived, in closed loop also
    /// when the next request starts. Reused so that a request reads the clock only twice.
    clock: Instant,
    outcome: ConnOutcome,
}

impl Runner<'_> {
    /// Waits for the next request's turn and returns the time its latency counts from, or
    /// `None` when the run is over for this connection.
    async fn next_start(&mut self) -> Option<Instant> {
        if *self.stop.borrow() || self.plan.budget.is_some_and(|budget| self.sent >= budget) {
            return None;
        }
        let start = match self.plan.interval {
            Some(interval) => {
                let intended = self.due;
                self.due += interval;
                if self
                    .plan
                    .deadline
                    .is_some_and(|deadline| intended >= deadline)
                {
                    return None;
                }
                if intended > Instant::now() {
                    tokio::select! {
                        () = tokio::time::sleep_until(intended.into()) => {}
                        _ = self.stop.changed() => return None,
                    }
                    // On schedule: the timer's lateness (up to its 1 ms tick) is the client's,
                    // not the server's, so the clock starts when the request really leaves.
                    Instant::now()
                } else {
                    // Behind schedule because an earlier answer was slow: the clock runs from
                    // the intended time, so the stall is counted, not omitted.
                    intended
                }
            }
            None => {
                if self
                    .plan
                    .deadline
                    .is_some_and(|deadline| self.clock >= deadline)
                {
                    return None;
                }
                self.clock
            }
        };
        self.sent += 1;
        Some(start)
    }

    /// Records one request's result, started at `start`.
    fn record(&mut self, start: Instant, result: Result<Answer, Failure>) {
        let done = Instant::now();
        self.clock = done;
        self.outcome.finished = done;
        let live = &self.shared.live[self.plan.index];
        let outcome = &mut self.outcome;
        match result {
            Ok(answer) => {
                let status = answer.status;
                let slot = answer.color;
                let at_ns = done.duration_since(self.shared.started).as_nanos() as u64;
                live.response(slot, status, at_ns);
                outcome.statuses[usize::from(status)] += 1;
                match slot {
                    Slot::Blue => outcome.colors.blue += 1,
                    Slot::Green => outcome.colors.green += 1,
                    Slot::None => outcome.colors.none += 1,
                }
                let segment = self.shared.segment.load(Ordering::Relaxed);
                while outcome.latencies.len() <= segment {
                    outcome.latencies.push(
                        Histogram::new(SIGNIFICANT_FIGURES)
                            .expect("3 significant figures are supported"),
                    );
                }
                let micros = done.saturating_duration_since(start).as_micros() as u64;
                // The histograms resize themselves, so recording cannot fail on range.
                let _ = outcome.latencies[segment].record(micros);
            }
            Err(failure) => {
                live.error();
                match failure {
                    Failure::Timeout => outcome.errors.timeout += 1,
                    Failure::Connect => outcome.errors.connect += 1,
                    Failure::Io | Failure::Closed => outcome.errors.io += 1,
                }
            }
        }
    }

    /// Sends requests over one open connection, starting with the one due at `first`, until
    /// the run ends or the connection does.
    async fn session(
        &mut self,
        first: Instant,
        mut sender: Sender,
        mut driver: Driver,
    ) -> SessionEnd {
        let timeout = self.shared.config.timeout;
        // One coarse watchdog per connection rather than a timer per request: arming and
        // cancelling a timer for each request costs more than the rest of the client's work.
        let mut watchdog = tokio::time::interval((timeout / 4).max(Duration::from_millis(1)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut start = first;
        let mut answered = false;
        // Set once the connection's I/O has ended; the exchange in flight may still finish
        // with what was read before the close, but nothing more is sent on it.
        let mut closed = false;
        loop {
            // When the request leaves, for its timeout: now, without reading the clock again.
            let sent = start.max(self.clock);
            let result = {
                let exchange = sender.exchange(&self.shared.config);
                tokio::pin!(exchange);
                let mut submitted = false;
                std::future::poll_fn(|cx| {
                    // The first poll hands the request to the connection, which then writes it
                    // in the same poll; afterwards the connection's I/O goes first, so that a
                    // response it reads reaches the exchange without another wake-up.
                    if !submitted {
                        submitted = true;
                        if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                            return Poll::Ready(result);
                        }
                    }
                    if !closed && driver.as_mut().poll(cx).is_ready() {
                        closed = true;
                    }
                    if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                        return Poll::Ready(result);
                    }
                    if watchdog.poll_tick(cx).is_ready() && sent.elapsed() >= timeout {
                        return Poll::Ready(Err(Failure::Timeout));
                    }
                    Poll::Pending
                })
                .await
            };
            let end = match &result {
                // A connection that has answered before and is now closed was closed by the
                // server between requests; one that never answered is broken.
                Err(Failure::Closed) if answered => return SessionEnd::Resend(start),
                Err(_) => Some(SessionEnd::Reconnect),
                // The server closed after answering (NGINX does after keepalive_requests).
                Ok(answer) if closed || answer.close => Some(SessionEnd::Reconnect),
                Ok(_) => None,
            };
            answered = true;
            self.record(start, result);
            if let Some(end) = end {
                return end;
            }
            match self.next_start().await {
                Some(next) => start = next,
                None => return SessionEnd::Done,
            }
        }
    }
}

/// Runs one connection until its plan or the stop signal ends it.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    plan: ConnPlan,
    stop: watch::Receiver<bool>,
) -> ConnOutcome {
    let due = plan.first_due;
    let mut runner = Runner {
        shared: &shared,
        plan,
        stop,
        sent: 0,
        due,
        clock: Instant::now(),
        outcome: ConnOutcome {
            latencies: Vec::new(),
            statuses: Box::new([0; 1000]),
            colors: PerColor::default(),
            errors: ErrorCounts::default(),
            finished: Instant::now(),
        },
    };
    let timeout = shared.config.timeout;
    let mut resend = None;
    loop {
        let start = match resend.take() {
            Some(start) => start,
            None => match runner.next_start().await {
                Some(start) => start,
                None => break,
            },
        };
        let connected = tokio::time::timeout(timeout, Sender::connect(&shared.config))
            .await
            .unwrap_or(Err(Failure::Connect));
        match connected {
            Ok((sender, driver)) => match runner.session(start, sender, driver).await {
                SessionEnd::Done => break,
                SessionEnd::Reconnect => {}
                SessionEnd::Resend(start) => resend = Some(start),
            },
            Err(failure) => {
                runner.record(start, Err(failure));
                // A dead target is not hammered in a tight loop.
                tokio::time::sleep(RECONNECT_PAUSE).await;
                runner.clock = Instant::now();
            }
        }
    }
    runner.outcome
}
