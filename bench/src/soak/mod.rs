//! `soak`: the real proxy under minutes of steady good load mixed with hostile clients and
//! configuration reloads, watched for memory and descriptor leaks (RELIABILITY.md LIFE-SOAK).
//!
//! Blue and green upstreams run in this process and the real `canary-proxy` as a child on a
//! flat YAML file at canary weight 10, as in the demo. For the whole run: an open-loop HTTP/1.1
//! load and a smaller h2c one (the good traffic, which must never fail); about 1 % as many
//! malformed requests, aborted request bodies and client-reset HTTP/2 streams; and a reload
//! every `reload_every` that alternates the weight between 10 and 20. The proxy's resident
//! memory and open descriptors are sampled at the start, every `sample_every`, at the end of
//! the warm-up, at the end of the load, and once its descriptors are back after the load.
//!
//! - [`hostile`]: the malformed requests, aborted bodies and h2 resets.
//! - [`reload`]: the configuration file and its periodic rewrite.
//! - [`process`]: memory and descriptors of the proxy from `/proc`.
//! - [`report`]: the checks, the table of samples and the summary.

pub mod hostile;
pub mod process;
pub mod reload;
pub mod report;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::demo::checks::Check;
use crate::load::{LatencySummary, Live, LoadReport};
use hostile::HostileCounts;
use process::Descriptors;
use reload::Reloads;

pub use run::{SoakError, run};

/// How a soak runs.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// The `canary-proxy` binary.
    pub proxy_bin: PathBuf,
    /// How long the load runs.
    pub duration: Duration,
    /// Memory growth is measured from the end of this first part of the load.
    pub warmup: Duration,
    /// Good requests per second, HTTP/1.1 and h2c together (open loop).
    pub rate: f64,
    /// Time between two configuration reloads.
    pub reload_every: Duration,
    /// Time between two samples of the proxy's memory and descriptors.
    pub sample_every: Duration,
    /// Print each sample as it is taken (the text output; off for JSON).
    pub live: bool,
}

impl SoakOptions {
    /// The defaults: 10 minutes with a 1-minute warm-up, 500 requests/s, a reload every 30 s
    /// and a sample every 10 s; or, `quick`, about 20 s for a test.
    pub fn new(proxy_bin: PathBuf, quick: bool) -> SoakOptions {
        let seconds = Duration::from_secs;
        let (duration, warmup, reload_every, sample_every) = if quick {
            (seconds(20), seconds(5), seconds(4), seconds(2))
        } else {
            (seconds(600), seconds(60), seconds(30), seconds(10))
        };
        SoakOptions {
            proxy_bin,
            duration,
            warmup,
            rate: 500.0,
            reload_every,
            sample_every,
            live: true,
        }
    }

    /// The rates of each kind of traffic that [`SoakOptions::rate`] makes.
    pub fn rates(&self) -> Rates {
        Rates {
            http1: self.rate * (1.0 - HTTP2_SHARE),
            http2: self.rate * HTTP2_SHARE,
            hostile: self.rate * HOSTILE_SHARE,
        }
    }
}

/// The share of the good requests sent over h2c.
const HTTP2_SHARE: f64 = 0.2;
/// Malformed requests, aborted bodies and h2 resets per good request, each.
const HOSTILE_SHARE: f64 = 0.01;

/// Requests per second of each kind of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rates {
    /// Good HTTP/1.1 requests.
    pub http1: f64,
    /// Good h2c requests.
    pub http2: f64,
    /// Malformed requests, aborted bodies and h2 resets, each.
    pub hostile: f64,
}

/// Where in the run a sample was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The proxy is ready and nothing has been sent yet.
    Start,
    /// During the warm-up.
    WarmUp,
    /// The end of the warm-up: the reference for memory growth.
    WarmUpEnd,
    /// After the warm-up.
    Load,
    /// The last moment of the load.
    EndOfLoad,
    /// After the load stopped, once the descriptors were back or the wait was over.
    AfterStop,
}

impl Phase {
    /// The phase as the table prints it.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::WarmUp => "warm-up",
            Phase::WarmUpEnd => "warm-up end",
            Phase::Load => "load",
            Phase::EndOfLoad => "end of load",
            Phase::AfterStop => "after stop",
        }
    }
}

/// Good requests: sent, answered 2xx, and the rest (other statuses and no answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GoodCounts {
    /// Requests that were answered or failed.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered otherwise, or not at all.
    pub failed: u64,
}

impl GoodCounts {
    /// The counts of a finished load.
    pub fn of_report(report: &LoadReport) -> GoodCounts {
        let ok = report
            .status
            .iter()
            .filter(|(code, _)| (200..300).contains(*code))
            .map(|(_, n)| n)
            .sum();
        let sent = report.responses + report.errors.total();
        GoodCounts {
            sent,
            ok,
            failed: sent - ok,
        }
    }

    /// The counts of a running load.
    pub fn of_live(live: &Live) -> GoodCounts {
        GoodCounts {
            sent: live.responses + live.errors,
            ok: live.responses - live.not_ok,
            failed: live.not_ok + live.errors,
        }
    }

    /// Both together.
    pub fn plus(self, other: GoodCounts) -> GoodCounts {
        GoodCounts {
            sent: self.sent + other.sent,
            ok: self.ok + other.ok,
            failed: self.failed + other.failed,
        }
    }
}

/// One look at the proxy and the traffic so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the load started (0 for the start sample, taken just before).
    pub at_s: f64,
    /// Where in the run.
    pub phase: Phase,
    /// The proxy's resident memory, MiB; `None` if the process was gone.
    pub rss_mib: Option<f64>,
    /// The proxy's open descriptors; `None` if the process was gone.
    pub fds: Option<Descriptors>,
    /// Good requests so far.
    pub good: GoodCounts,
    /// Malformed requests sent so far.
    pub malformed: u64,
    /// Request bodies aborted so far.
    pub aborted: u64,
    /// HTTP/2 streams reset so far.
    pub h2_resets: u64,
    /// Reloads the proxy applied so far.
    pub reloads: u64,
}

/// The good traffic of the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GoodSummary {
    /// The HTTP/1.1 load.
    pub http1: GoodCounts,
    /// The h2c load.
    pub http2: GoodCounts,
    /// The ordinary request sent on each h2 connection after its reset stream.
    pub h2_follow_ups: GoodCounts,
    /// All of them.
    pub total: GoodCounts,
    /// Latency of the HTTP/1.1 load, from each request's intended send time.
    pub http1_latency_ms: LatencySummary,
    /// Latency of the h2c load.
    pub http2_latency_ms: LatencySummary,
}

/// The proxy when the soak ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProxyEnd {
    /// The process was still running.
    pub alive: bool,
    /// `/readyz` answered 200.
    pub ready: bool,
    /// `/status` `rollback.verdict` at the end of the load (after it, the window empties),
    /// if it answered.
    pub verdict: Option<String>,
}

/// Everything a soak measured.
#[derive(Clone, Debug, Serialize)]
pub struct SoakResult {
    /// The load's length, seconds.
    pub duration_s: f64,
    /// The warm-up's length, seconds.
    pub warmup_s: f64,
    /// The rate of each kind of traffic.
    pub rates: Rates,
    /// Seconds between reloads.
    pub reload_every_s: f64,
    /// The proxy's process id.
    pub pid: u32,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Resident memory at the end of the warm-up, MiB.
    pub rss_warm_mib: Option<f64>,
    /// Resident memory at the end of the load, MiB.
    pub rss_end_mib: Option<f64>,
    /// The most resident memory sampled, MiB.
    pub rss_peak_mib: Option<f64>,
    /// Descriptors before the load.
    pub fds_start: Option<Descriptors>,
    /// Descriptors at the end of the load.
    pub fds_end: Option<Descriptors>,
    /// Descriptors after the load stopped.
    pub fds_after: Option<Descriptors>,
    /// How long after the load stopped `fds_after` was taken, seconds.
    pub fds_after_s: f64,
    /// The good traffic.
    pub good: GoodSummary,
    /// The hostile traffic.
    pub hostile: HostileCounts,
    /// The reloads.
    pub reloads: Reloads,
    /// The proxy at the end.
    pub proxy: ProxyEnd,
    /// Every check and its verdict.
    pub checks: Vec<Check>,
    /// Whether every check held.
    pub passed: bool,
}
