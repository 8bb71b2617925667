//! The load generator's engine, used in-process by `load`, `demo` and `compare`.
//!
//! Each of the `connections` tasks owns one HTTP/1.1 or HTTP/2 connection, its own latency
//! histograms and its own cache line of live counters, so the tasks share no lock. Closed loop
//! sends the next request as soon as the last answer is read; open loop (`rate`) gives every
//! connection a schedule of intended send times, and a request that leaves late because an
//! earlier answer was slow has its latency measured from its intended time, so that a stalled
//! server shows up as latency instead of as requests never sent (coordinated omission).
//!
//! - [`target`]: the URL parsed into what a connection needs.
//! - `conn`: one connection's loop.
//! - `lean`: the HTTP/1.1 client, parsing answers in place (hyper's client speaks HTTP/2).
//! - [`live`]: the counters a running load exposes (progress line, demo timeline).
//! - [`report`]: the merged result, its text and JSON forms.
//! - [`Workers`]: single-threaded runtimes on their own threads, wrk's model, for the CLI.

mod conn;
pub(crate) mod lean;
pub mod live;
pub mod report;
pub mod target;
mod workers;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use live::{Live, PerColor};
pub use report::{LatencySummary, LoadReport};
pub use target::{Target, TargetError};
pub use workers::Workers;

use conn::{ConnOutcome, ConnPlan};
use live::LiveCounters;

/// When a load run stops sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Send for this long, then let the requests in flight finish.
    After(Duration),
    /// Send exactly this many requests in total.
    Requests(u64),
    /// Send until [`LoadHandle::stop`] is called.
    Manual,
}

/// What to send, where, and how hard.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The URL every request asks for.
    pub target: Target,
    /// Connections, each with at most one request in flight.
    pub connections: usize,
    /// When to stop.
    pub stop: Stop,
    /// Open loop at this many requests per second in total; closed loop if `None`.
    pub rate: Option<f64>,
    /// HTTP/2 by prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// A request without its whole answer after this long counts as a timeout.
    pub timeout: Duration,
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `connections` was zero, or no runtime was given to run them on.
    #[error("at least one connection and one runtime are needed")]
    NoConnections,
    /// The rate was zero, negative or not a number.
    #[error("the rate must be a positive number of requests per second, not {0}")]
    BadRate(f64),
}

/// State every connection task reads; written only through atomics and the stop channel.
pub(crate) struct Shared {
    /// The configuration the run was started with.
    pub(crate) config: LoadConfig,
    /// The origin of every timestamp in the run.
    pub(crate) started: Instant,
    /// The segment new latencies are recorded under (see [`LoadHandle::set_segment`]).
    pub(crate) segment: AtomicUsize,
    /// One block of counters per connection, each on its own cache line.
    pub(crate) live: Box<[LiveCounters]>,
}

/// A running load.
pub struct LoadHandle {
    /// Read by the tasks; kept here for live snapshots and segment switches.
    shared: Arc<Shared>,
    /// Tells the tasks to stop sending.
    stop: watch::Sender<bool>,
    /// The connection tasks, each returning its own counts and histograms.
    tasks: Vec<JoinHandle<ConnOutcome>>,
}

/// Reads a running load's counters from any task.
#[derive(Clone)]
pub struct LiveReader(Arc<Shared>);

impl LiveReader {
    /// The counters summed over all connections, as of now.
    pub fn live(&self) -> Live {
        Live::sum(&self.0.live, self.0.started.elapsed())
    }
}

/// Starts a load on the current tokio runtime.
pub fn start(config: LoadConfig) -> Result<LoadHandle, LoadError> {
    start_on(config, &[tokio::runtime::Handle::current()])
}

/// Starts a load with its connections spread round-robin over `runtimes` (see [`Workers`]).
pub fn start_on(
    config: LoadConfig,
    runtimes: &[tokio::runtime::Handle],
) -> Result<LoadHandle, LoadError> {
    if config.connections == 0 || runtimes.is_empty() {
        return Err(LoadError::NoConnections);
    }
    if let Some(rate) = config.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(LoadError::BadRate(rate));
    }
    let connections = config.connections;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        live: (0..connections).map(|_| LiveCounters::default()).collect(),
        segment: AtomicUsize::new(0),
        started,
        config,
    });
    let (stop, stop_rx) = watch::channel(false);
    let tasks = (0..connections)
        .map(|index| {
            let plan = ConnPlan::new(&shared.config, index, started);
            runtimes[index % runtimes.len()].spawn(conn::drive(
                shared.clone(),
                plan,
                stop_rx.clone(),
            ))
        })
        .collect();
    Ok(LoadHandle {
        shared,
        stop,
        tasks,
    })
}

/// Runs a load to its end and returns the merged result.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    Ok(start(config)?.finish().await)
}

impl LoadHandle {
    /// The counters summed over all connections, as of now.
    pub fn live(&self) -> Live {
        Live::sum(&self.shared.live, self.shared.started.elapsed())
    }

    /// A reader of the live counters that can move to another task.
    pub fn reader(&self) -> LiveReader {
        LiveReader(self.shared.clone())
    }

    /// The instant all of the run's timestamps count from.
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    /// Records the latencies of requests sent from now on under `segment`, so that one run can
    /// report percentiles per phase (the demo's steps). Segments start at 0.
    pub fn set_segment(&self, segment: usize) {
        self.shared.segment.store(segment, Ordering::Relaxed);
    }

    /// Stops sending; requests in flight still finish.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every connection to finish and merges their results.
    pub async fn finish(self) -> LoadReport {
        let mut outcomes = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            // A connection task only ends by returning; a panic there is a bug worth surfacing.
            outcomes.push(task.await.expect("load connection task panicked"));
        }
        LoadReport::merge(&self.shared.config, self.shared.started, outcomes)
    }

    /// Prints a progress line on stderr every second, if stderr is a terminal, until the
    /// returned task is aborted (see [`clear_progress`]).
    pub fn spawn_progress(&self) -> Option<JoinHandle<()>> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let shared = self.shared.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = Live::sum(&shared.live, shared.started.elapsed());
            loop {
                tick.tick().await;
                let now = Live::sum(&shared.live, shared.started.elapsed());
                eprint!(
                    "\r\x1b[2K{:>6.1}s {:>10} responses {:>9.0}/s  non-2xx {}  errors {}",
                    now.elapsed.as_secs_f64(),
                    now.responses,
                    now.rate_since(&last),
                    now.not_ok,
                    now.errors
                );
                last = now;
            }
        }))
    }
}

/// Stops a progress line started by [`LoadHandle::spawn_progress`] and erases it.
pub fn clear_progress(progress: Option<JoinHandle<()>>) {
    if let Some(task) = progress {
        task.abort();
        eprint!("\r\x1b[2K");
    }
}
