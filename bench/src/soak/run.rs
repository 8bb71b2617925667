//! The soak from start to verdict: upstreams and proxy up, the traffic and the reloads for the
//! whole length with a sample on schedule, everything stopped, a wait for the descriptors,
//! then the proxy's end state and the checks.

use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use super::hostile::{Hostile, HostileCounts};
use super::process::{self, Descriptors, Ports};
use super::reload::{ConfigFile, Reloader, WEIGHTS};
use super::{GoodCounts, GoodSummary, Phase, ProxyEnd, Sample, SoakOptions, SoakResult, report};
use crate::admin;
use crate::load::{self, LoadConfig, LoadError, LoadHandle, Stop, Target};
use crate::proxy::{self, ProxyError, ProxyProcess};
use crate::upstream::{Color, LocalUpstream};

/// How long the descriptors may take to come back after the load stops (LIFE-SOAK).
const FD_PATIENCE: Duration = Duration::from_secs(30);
/// Time between two counts of the descriptors while waiting for them.
const FD_POLL: Duration = Duration::from_millis(250);
/// A good request without its whole answer after this long has failed.
const GOOD_TIMEOUT: Duration = Duration::from_secs(5);
/// Good requests per second per load connection (each has one request in flight at a time).
const RATE_PER_CONNECTION: f64 = 50.0;
/// How long the proxy may take to drain and exit at the end.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Why a soak could not be run to its end (a failed check is not an error: it is a result).
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// The options contradict each other.
    #[error("{0}")]
    Options(String),
    /// The proxy could not be started or read.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The load could not start.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A socket or the temporary directory could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
}

async fn start_upstream(color: Color) -> Result<LocalUpstream, SoakError> {
    LocalUpstream::start(color)
        .await
        .map_err(|source| SoakError::Io {
            what: "cannot start an upstream on 127.0.0.1",
            source,
        })
}

/// The traffic counts a sample shows (see [`Sample`]'s fields of the same names).
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    good: GoodCounts,
    malformed: u64,
    aborted: u64,
    h2_resets: u64,
    reloads: u64,
}

impl Traffic {
    fn new(good: GoodCounts, hostile: &HostileCounts, reloads: u64) -> Traffic {
        Traffic {
            good: good.plus(follow_ups(hostile)),
            malformed: hostile.malformed_sent(),
            aborted: hostile.aborted_bodies,
            h2_resets: hostile.h2_resets,
            reloads,
        }
    }
}

/// The ordinary h2 requests sent after each reset, as good requests.
fn follow_ups(hostile: &HostileCounts) -> GoodCounts {
    GoodCounts {
        sent: hostile.h2_follow_ups_ok + hostile.h2_follow_ups_failed,
        ok: hostile.h2_follow_ups_ok,
        failed: hostile.h2_follow_ups_failed,
    }
}

/// Looks at the proxy process now.
fn sample(pid: u32, ports: &Ports, at: Duration, phase: Phase, traffic: Traffic) -> Sample {
    Sample {
        at_s: at.as_secs_f64(),
        phase,
        rss_mib: process::rss_mib(pid),
        fds: process::descriptors(pid, ports),
        good: traffic.good,
        malformed: traffic.malformed,
        aborted: traffic.aborted,
        h2_resets: traffic.h2_resets,
        reloads: traffic.reloads,
    }
}

/// The samples so far, printed as they come when the run is live.
struct Samples {
    /// Print each sample as it is pushed.
    live: bool,
    /// Every sample, in order.
    all: Vec<Sample>,
}

impl Samples {
    fn push(&mut self, sample: Sample) -> Sample {
        if self.live {
            report::print_sample(&sample);
        }
        self.all.push(sample);
        sample
    }
}

/// Connections for an open-loop load of `rate`, at least `least`.
fn connections(rate: f64, least: usize) -> usize {
    ((rate / RATE_PER_CONNECTION).ceil() as usize).clamp(least, 64)
}

fn good_load(proxy: &ProxyProcess, rate: f64, http2: bool) -> Result<LoadHandle, LoadError> {
    load::start(LoadConfig {
        target: Target::from_addr(proxy.data),
        connections: connections(rate, if http2 { 1 } else { 4 }),
        stop: Stop::Manual,
        rate: Some(rate),
        http2,
        timeout: GOOD_TIMEOUT,
    })
}

/// Runs the soak and returns what it measured; prints the samples as it goes if
/// `options.live`.
pub async fn run(options: &SoakOptions) -> Result<SoakResult, SoakError> {
    if options.warmup >= options.duration {
        return Err(SoakError::Options(format!(
            "the warm-up ({:?}) must be shorter than the load ({:?})",
            options.warmup, options.duration
        )));
    }
    if options.reload_every.is_zero() || options.sample_every.is_zero() {
        return Err(SoakError::Options(
            "the reload and sample intervals must be longer than zero".to_string(),
        ));
    }
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return Err(SoakError::Options(format!(
            "the rate must be a positive number of requests per second, not {}",
            options.rate
        )));
    }
    let rates = options.rates();
    let blue = start_upstream(Color::Blue).await?;
    let green = start_upstream(Color::Green).await?;
    let dir = tempfile::tempdir().map_err(|source| SoakError::Io {
        what: "cannot make a temporary directory",
        source,
    })?;
    let config = ConfigFile {
        path: dir.path().join("canary.yaml"),
        blue: blue.addr,
        green: green.addr,
    };
    config.write(WEIGHTS[0])?;
    let proxy = ProxyProcess::start(&options.proxy_bin, &config.path, &[], &[]).await?;
    let pid = proxy.pid().ok_or_else(|| ProxyError::Start {
        what: "exited right after becoming ready".to_string(),
        log: proxy.log_tail(),
    })?;
    let ports = Ports {
        data: proxy.data.port(),
        upstreams: vec![blue.addr.port(), green.addr.port()],
    };
    let metrics_before = proxy.metrics().await?;
    if options.live {
        report::print_intro(options, pid, proxy.data, proxy.admin);
        report::print_header();
    }
    let mut samples = Samples {
        live: options.live,
        all: Vec::new(),
    };
    let start = samples.push(sample(
        pid,
        &ports,
        Duration::ZERO,
        Phase::Start,
        Traffic::default(),
    ));

    let http1 = good_load(&proxy, rates.http1, false)?;
    let http2 = good_load(&proxy, rates.http2, true)?;
    let hostile = Hostile::start(proxy.data, rates.hostile);
    let reloader = Reloader::start(config.clone(), proxy.admin, options.reload_every);
    let started = Instant::now();
    let traffic = || {
        let good = GoodCounts::of_live(&http1.live()).plus(GoodCounts::of_live(&http2.live()));
        Traffic::new(good, &hostile.counts(), reloader.applied())
    };

    let mut next_tick = options.sample_every;
    let mut warm = None;
    loop {
        let due = if warm.is_none() {
            next_tick.min(options.warmup)
        } else {
            next_tick
        };
        if due >= options.duration {
            break;
        }
        tokio::time::sleep_until(started + due).await;
        let phase = match warm {
            None if due >= options.warmup => Phase::WarmUpEnd,
            None => Phase::WarmUp,
            Some(_) => Phase::Load,
        };
        // A tick that falls on the end of the warm-up is that one sample.
        if due >= next_tick {
            next_tick += options.sample_every;
        }
        let taken = samples.push(sample(pid, &ports, due, phase, traffic()));
        if phase == Phase::WarmUpEnd {
            warm = Some(taken);
        }
    }
    tokio::time::sleep_until(started + options.duration).await;
    let end = samples.push(sample(
        pid,
        &ports,
        options.duration,
        Phase::EndOfLoad,
        traffic(),
    ));

    let verdict = proxy.status().await.ok().map(|s| s.rollback.verdict);
    http1.stop();
    http2.stop();
    let (http1_report, http2_report, hostile, mut reloads) = tokio::join!(
        http1.finish(),
        http2.finish(),
        hostile.stop(),
        reloader.stop()
    );
    let stopped = Instant::now();
    wait_for_descriptors(pid, &ports, start.fds).await;
    let after_s = stopped.elapsed().as_secs_f64();
    let good = GoodSummary {
        http1: GoodCounts::of_report(&http1_report),
        http2: GoodCounts::of_report(&http2_report),
        h2_follow_ups: follow_ups(&hostile),
        total: GoodCounts::of_report(&http1_report)
            .plus(GoodCounts::of_report(&http2_report))
            .plus(follow_ups(&hostile)),
        http1_latency_ms: http1_report.latency_ms,
        http2_latency_ms: http2_report.latency_ms,
    };
    let after = samples.push(sample(
        pid,
        &ports,
        started.elapsed(),
        Phase::AfterStop,
        Traffic::new(good.http1.plus(good.http2), &hostile, reloads.applied),
    ));

    let proxy_end = ProxyEnd {
        alive: process::alive(pid),
        ready: admin::call(proxy.admin, Method::GET, "/readyz", "")
            .await
            .is_ok_and(|(status, _)| status == 200),
        verdict,
    };
    if let Ok(metrics_after) = proxy.metrics().await {
        let increase = |result: &str| {
            let labels = format!("result=\"{result}\"");
            let name = "canary_proxy_config_reloads_total";
            Some(
                proxy::metric_value(&metrics_after, name, &labels)?
                    - proxy::metric_value(&metrics_before, name, &labels)?,
            )
        };
        reloads.metric_ok = increase("ok");
        reloads.metric_error = increase("error");
    }
    let _ = proxy.terminate(EXIT_GRACE).await;

    let rss_warm_mib = warm.and_then(|s| s.rss_mib);
    let checks = vec![
        report::good_requests(&good.total),
        report::rss_growth(rss_warm_mib, end.rss_mib),
        report::fds_back(start.fds, after.fds, after_s, FD_PATIENCE.as_secs_f64()),
        report::pool_back(start.fds, after.fds, after_s, FD_PATIENCE.as_secs_f64()),
        report::hostile_sent(&hostile),
        report::malformed_refused(&hostile),
        report::reloads_applied(&reloads),
        report::proxy_alive(&proxy_end),
    ];
    Ok(SoakResult {
        duration_s: options.duration.as_secs_f64(),
        warmup_s: options.warmup.as_secs_f64(),
        rates,
        reload_every_s: options.reload_every.as_secs_f64(),
        pid,
        rss_warm_mib,
        rss_end_mib: end.rss_mib,
        rss_peak_mib: samples
            .all
            .iter()
            .filter_map(|s| s.rss_mib)
            .reduce(f64::max),
        fds_start: start.fds,
        fds_end: end.fds,
        fds_after: after.fds,
        fds_after_s: after_s,
        samples: samples.all,
        good,
        hostile,
        reloads,
        proxy: proxy_end,
        passed: checks.iter().all(|check| check.passed),
        checks,
    })
}

/// Counts the proxy's descriptors until they and its pool are back at `start` or
/// [`FD_PATIENCE`] has passed.
async fn wait_for_descriptors(pid: u32, ports: &Ports, start: Option<Descriptors>) {
    let deadline = Instant::now() + FD_PATIENCE;
    loop {
        let now = process::descriptors(pid, ports);
        let back = match (start, now) {
            (Some(start), Some(now)) => {
                report::fds_are_back(&start, &now) && report::pool_is_back(&start, &now)
            }
            // The process is gone: nothing more to wait for.
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if back || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(FD_POLL).await;
    }
}
