//! The demo's steps, played against the real proxy under steady load.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::checks::{self, Check};
use super::{
    Counts, DemoOptions, DemoResult, Pacing, RollbackSummary, Sample, Step, StepKind, timeline,
};
use crate::admin::{self, AdminError};
use crate::load::{
    self, LatencySummary, LiveReader, LoadConfig, LoadError, LoadHandle, Stop, Target,
};
use crate::proxy::{self, ProxyError, ProxyProcess, Status};
use crate::upstream::{Color, LocalUpstream};

/// Why the demo could not be played to its end (a failed check is not an error: it is a result).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The proxy could not be started or read.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// An upstream's admin path failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
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
    /// The proxy did not apply a configuration in time.
    #[error(
        "canary-proxy did not apply canary-weight {weight} within {patience:?}; its last log lines:\n{log}"
    )]
    NotApplied {
        /// The weight written.
        weight: u32,
        /// How long the demo waited.
        patience: Duration,
        /// The end of the proxy's log.
        log: String,
    },
}

pub(crate) async fn start_upstream(color: Color) -> Result<LocalUpstream, DemoError> {
    LocalUpstream::start(color)
        .await
        .map_err(|source| DemoError::Io {
            what: "cannot start an upstream on 127.0.0.1",
            source,
        })
}

/// The proxy's configuration at a given canary weight.
fn config(
    blue: SocketAddr,
    green: SocketAddr,
    weight: u32,
    pacing: &Pacing,
) -> Vec<(&'static str, String)> {
    vec![
        ("blue.upstream", blue.to_string()),
        ("green.upstream", green.to_string()),
        ("stable", "blue".to_string()),
        ("canary-weight", weight.to_string()),
        ("rollback.enabled", "true".to_string()),
        ("rollback.max-error-rate", "5".to_string()),
        ("rollback.min-requests", "20".to_string()),
        ("rollback.window", format!("{}s", pacing.window.as_secs())),
    ]
}

/// Polls `/status` until `done` holds; returns the status and how long it took, or `None`.
async fn wait_status(
    proxy: &ProxyProcess,
    patience: Duration,
    done: impl Fn(&Status) -> bool,
) -> Result<Option<(Status, Duration)>, DemoError> {
    let since = Instant::now();
    loop {
        let status = proxy.status().await?;
        if done(&status) {
            return Ok(Some((status, since.elapsed())));
        }
        if since.elapsed() > patience {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples the per-color answer rate until told to stop.
fn spawn_sampler(
    reader: LiveReader,
    every: Duration,
) -> (oneshot::Sender<()>, JoinHandle<Vec<Sample>>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut last = reader.live();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
            let now = reader.live();
            let dt = now.elapsed.saturating_sub(last.elapsed).as_secs_f64();
            if dt > 0.0 {
                let rate = |after: u64, before: u64| after.saturating_sub(before) as f64 / dt;
                samples.push(Sample {
                    t: now.elapsed.as_secs_f64(),
                    blue: rate(now.by_color.blue, last.by_color.blue),
                    green: rate(now.by_color.green, last.by_color.green),
                    failed: rate(now.not_ok + now.errors, last.not_ok + last.errors),
                });
            }
            last = now;
        }
        samples
    });
    (stop, task)
}

/// Measures one step: a settle pause under its own segment, then the steady part.
async fn measure(
    load: &LoadHandle,
    segment: &mut usize,
    pacing: &Pacing,
    length: Duration,
) -> (Counts, usize) {
    *segment += 1;
    load.set_segment(*segment);
    tokio::time::sleep(pacing.settle).await;
    *segment += 1;
    load.set_segment(*segment);
    let before = load.live();
    tokio::time::sleep(length).await;
    (Counts::between(&before, &load.live()), *segment)
}

/// Plays the story and returns what it measured. Prints the timeline as it goes.
pub async fn run(options: &DemoOptions) -> Result<DemoResult, DemoError> {
    let began = Instant::now();
    let pacing = Pacing::new(options.quick);
    let blue = start_upstream(Color::Blue).await?;
    let green = start_upstream(Color::Green).await?;
    let dir = tempfile::tempdir().map_err(|source| DemoError::Io {
        what: "cannot make a temporary directory",
        source,
    })?;
    let config_path = dir.path().join("canary.yaml");
    proxy::write_config(&config_path, &config(blue.addr, green.addr, 5, &pacing))?;
    let proxy = ProxyProcess::start(&options.proxy_bin, &config_path, &[], &[]).await?;
    timeline::print_intro(&pacing, &proxy, blue.addr, green.addr, &options.proxy_bin);

    let wall_anchor = (SystemTime::now(), Instant::now());
    let load = load::start(LoadConfig {
        target: Target::from_addr(proxy.data),
        connections: pacing.connections,
        stop: Stop::Manual,
        rate: Some(pacing.rate),
        http2: false,
        timeout: Duration::from_secs(5),
    })?;
    let (stop_sampler, sampler) = spawn_sampler(load.reader(), pacing.sample_every);
    timeline::print_header();

    let mut steps = Vec::new();
    let mut segment = 0;
    let weights = [
        ("canary 5 %", 5),
        ("canary 50 %", 50),
        ("canary 100 %", 100),
        ("back to 5 %", 5),
    ];
    for (i, (label, weight)) in weights.into_iter().enumerate() {
        let at = load.live().elapsed;
        if i > 0 {
            proxy::write_config(
                &config_path,
                &config(blue.addr, green.addr, weight, &pacing),
            )?;
        }
        let applied = wait_status(&proxy, pacing.patience, |s| {
            s.configured_weight.weight == weight
        })
        .await?;
        let Some((_, applied_after)) = applied else {
            return Err(DemoError::NotApplied {
                weight,
                patience: pacing.patience,
                log: proxy.log_tail(),
            });
        };
        let (counts, segment_id) = measure(&load, &mut segment, &pacing, pacing.steady).await;
        let step = Step {
            label: label.to_string(),
            kind: StepKind::Weight(weight),
            at,
            applied_after,
            weight: f64::from(weight),
            counts,
            latency: LatencySummary::default(),
            segment: segment_id,
        };
        timeline::print_step(&step);
        steps.push(step);
    }

    // The fault: green answers 500 to everything, as with the article's FORCE_ERROR=true.
    let before_fault = load.live();
    admin::call(green.addr, Method::POST, "/fault", r#"{"error_rate":1.0}"#).await?;
    segment += 1;
    load.set_segment(segment);
    let rolled = wait_status(&proxy, pacing.patience, |s| s.rollback.rolled_back).await?;
    tokio::time::sleep(pacing.settle).await;
    let after_fault = load.live();
    let fault_step = Step {
        label: "green fails every request".to_string(),
        kind: StepKind::Fault,
        at: before_fault.elapsed,
        applied_after: rolled.as_ref().map_or(pacing.patience, |(_, took)| *took),
        weight: 5.0,
        counts: Counts::between(&before_fault, &after_fault),
        latency: LatencySummary::default(),
        segment,
    };
    timeline::print_step(&fault_step);
    steps.push(fault_step);

    segment += 1;
    load.set_segment(segment);
    let tail_before = load.live();
    tokio::time::sleep(pacing.tail).await;
    let tail_after = load.live();
    let final_status = proxy.status().await?;
    let tail_step = Step {
        label: "rolled back to blue".to_string(),
        kind: StepKind::RolledBack,
        at: tail_before.elapsed,
        applied_after: Duration::ZERO,
        weight: final_status
            .effective_weight
            .get("green")
            .copied()
            .unwrap_or(0.0),
        counts: Counts::between(&tail_before, &tail_after),
        latency: LatencySummary::default(),
        segment,
    };
    timeline::print_step(&tail_step);
    steps.push(tail_step);

    load.stop();
    let started = load.started();
    let report = load.finish().await;
    let _ = stop_sampler.send(());
    let samples = sampler.await.unwrap_or_default();
    let metrics = proxy.metrics().await?;
    let _ = proxy.terminate(Duration::from_secs(10)).await;
    for step in &mut steps {
        step.latency = report
            .segments
            .get(step.segment)
            .copied()
            .unwrap_or_default();
    }

    let metric = proxy::metric_value(&metrics, "canary_proxy_rollbacks_total", "color=\"green\"");
    let end = tail_after;
    let first_failure = end.first_failure.green;
    let last_green = end.last_response.green;
    let fault_counts = Counts::between(&before_fault, &after_fault);
    let proxy_at = final_status.rollback.at.clone();
    let swap_proxy_s = match (&proxy_at, first_failure) {
        (Some(at), Some(first)) => at.parse::<jiff::Timestamp>().ok().map(|at| {
            let first_wall =
                wall_anchor.0 + (started + first).saturating_duration_since(wall_anchor.1);
            signed_seconds(SystemTime::from(at), first_wall)
        }),
        _ => None,
    };
    let rollback = RollbackSummary {
        happened: final_status.rollback.rolled_back,
        color: final_status.rollback.color.clone(),
        reason: final_status.rollback.reason.clone(),
        fault_at: before_fault.elapsed,
        detected_after: rolled.map(|(_, took)| took),
        client_failures: fault_counts.not_ok,
        client_errors: fault_counts.errors,
        first_failure,
        last_green,
        swap_client: first_failure
            .zip(last_green)
            .and_then(|(f, l)| l.checked_sub(f)),
        proxy_at,
        swap_proxy_s,
        metric,
    };

    let mut all_checks: Vec<Check> = steps
        .iter()
        .filter_map(|step| match step.kind {
            StepKind::Weight(w) => Some(checks::split(
                &step.label,
                f64::from(w),
                step.counts.blue,
                step.counts.green,
                step.counts.none,
            )),
            StepKind::Fault | StepKind::RolledBack => None,
        })
        .collect();
    let outside_fault = (before_fault.not_ok + before_fault.errors)
        + Counts::between(&after_fault, &tail_after).client_errors();
    all_checks.push(checks::no_client_errors(outside_fault));
    all_checks.push(checks::rolled_back(
        rollback.happened,
        rollback.color.as_deref(),
        rollback.metric,
    ));
    let tail_counts = Counts::between(&tail_before, &tail_after);
    all_checks.push(checks::green_drained(
        tail_counts.green,
        tail_counts.total(),
    ));

    Ok(DemoResult {
        pacing,
        steps,
        samples,
        rollback,
        latency: report.latency_ms,
        checks: all_checks,
        elapsed: began.elapsed(),
    })
}

/// `a - b` in seconds, negative when `a` is earlier.
fn signed_seconds(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
