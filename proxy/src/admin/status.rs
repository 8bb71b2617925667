//! `GET /status`: the live state as JSON (field names are part of the contract).

use std::time::Duration;

use serde::Serialize;

use crate::config::Color;
use crate::progressive::apply::latency_plan;
use crate::progressive::status::PlanStatus;
use crate::rfc3339;
use crate::rollback::history::Summary;
use crate::rollback::sequential::{self, Counts, Verdict};
use crate::route::RouteTable;
use crate::runtime::Runtime;
use crate::upstream::endpoints::EndpointStatus;

#[derive(Serialize)]
struct Status<'a> {
    revision: Option<&'a str>,
    source: &'a str,
    source_state: &'a str,
    ready: bool,
    draining: bool,
    stable: Option<&'static str>,
    canary: Option<&'static str>,
    configured_weight: Option<ConfiguredWeight>,
    effective_weight: Option<PerColor<f64>>,
    window_seconds: Option<f64>,
    colors: Option<PerColor<ColorStatus>>,
    rollback: Option<Rollback>,
    last_config_error: Option<ConfigError>,
    fleet: Option<FleetStatus>,
    progressive: Option<PlanStatus>,
}

/// With `--fleet`: the fleet as this replica sees it.
#[derive(Serialize)]
struct FleetStatus {
    /// The headless Service the members come from.
    service: String,
    /// This replica's identity in the Lease.
    identity: String,
    /// The members' admin addresses.
    members: Vec<String>,
    /// The judge's identity, once known.
    judge: Option<String>,
    /// Whether this replica is the judge.
    is_judge: bool,
    /// `connected`, `cut off from the API server` or `cut off from its peers`.
    state: &'static str,
    /// On the judge: members that answered the last gather, and those whose evidence was
    /// about the configured canary.
    answered: Option<usize>,
    reporting: Option<usize>,
    /// On the judge: the fleet's weighted counts since the fleet test began, and the test
    /// against its boundaries.
    canary: Option<CountsStatus>,
    stable: Option<CountsStatus>,
    statistic: Option<f64>,
    boundary: Option<f64>,
    relative_statistic: Option<f64>,
    relative_boundary: Option<f64>,
    verdict: Option<&'static str>,
}

#[derive(Serialize)]
struct ConfiguredWeight {
    weight: u32,
    total: u32,
    percent: f64,
}

#[derive(Serialize)]
struct PerColor<T> {
    blue: T,
    green: T,
}

#[derive(Serialize)]
struct ColorStatus {
    upstream: String,
    /// Weighted requests in the window: the ones the rollback test judges.
    requests: u64,
    failures: u64,
    failure_rate: f64,
    /// Requests forced to this color by a header or cookie in the window: counted, not judged.
    forced_requests: u64,
    forced_failures: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    requests_total: u64,
    /// Each endpoint with its state and its counts since it was configured.
    endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
struct Rollback {
    enabled: bool,
    max_error_rate: f64,
    min_requests: u64,
    confidence: f64,
    rolled_back: bool,
    color: Option<&'static str>,
    reason: Option<String>,
    at: Option<String>,
    verdict: &'static str,
    test: Option<TestStatus>,
    latency: Option<LatencyStatus>,
}

/// The latency trigger against its boundary.
#[derive(Serialize)]
struct LatencyStatus {
    /// `rollback.max-latency-increase`, in percent, and `rollback.latency-quantile`.
    max_increase: f64,
    quantile: f64,
    /// The larger CUSUM on the attribution of slow requests, and its boundary.
    statistic: f64,
    boundary: f64,
    /// The thresholds in use: a stable request at least `stable_slow_ms` long, or a canary one
    /// at least `canary_slow_ms`, is slow.
    stable_slow_ms: Option<f64>,
    canary_slow_ms: Option<f64>,
    /// Each color's requests and slow requests (as failures) since the statistic last left 0.
    run: CountsStatus,
    run_stable: CountsStatus,
}

/// The sequential test against its boundaries.
#[derive(Serialize)]
struct TestStatus {
    /// The absolute statistic (is the canary above the threshold?) and its boundary.
    statistic: f64,
    boundary: f64,
    /// The relative statistic (is it worse than stable?) and its boundary.
    relative_statistic: f64,
    relative_boundary: f64,
    /// Weighted requests of each color since the test began (the canary's current upstream).
    canary: CountsStatus,
    stable: CountsStatus,
    /// The canary's requests since its statistic last left 0, and stable's meanwhile.
    run: CountsStatus,
    run_stable: CountsStatus,
    /// The canary's failures in a row against the streak that rolls back at once, and the
    /// successes in a row that rule asks of stable.
    canary_failures_in_row: u64,
    streak_boundary: u64,
    stable_successes_in_row: u64,
    stable_successes_needed: u64,
    /// Canary requests over which the false-rollback bound holds.
    horizon_requests: f64,
}

#[derive(Serialize)]
struct CountsStatus {
    requests: u64,
    failures: u64,
}

impl From<Counts> for CountsStatus {
    fn from(c: Counts) -> Self {
        CountsStatus {
            requests: c.requests,
            failures: c.failures,
        }
    }
}

#[derive(Serialize)]
struct ConfigError {
    message: String,
    at: String,
}

/// Renders `/status`.
pub fn render(runtime: &Runtime) -> Vec<u8> {
    let table = runtime.routes().clone();
    let table = table.as_deref();
    let now = runtime.now_ms();
    let totals = Color::ALL.map(|c| runtime.tally.totals(c));
    let (window, summaries) = {
        let history = runtime.history();
        (history.window(), history.summary(now, &totals))
    };
    let source_state = runtime.source_state();
    let status = Status {
        revision: table.map(|t| &*t.revision),
        source: &runtime.source,
        source_state: &source_state,
        ready: runtime.is_ready(),
        draining: runtime.is_draining(),
        stable: table.map(|t| t.config.stable.as_str()),
        canary: table.map(|t| t.config.canary().as_str()),
        configured_weight: table.map(|t| ConfiguredWeight {
            weight: t.config.weight,
            total: t.config.weight_total,
            percent: 100.0 * f64::from(t.config.weight) / f64::from(t.config.weight_total),
        }),
        effective_weight: table.map(|t| PerColor {
            blue: t.weight_percent(Color::Blue),
            green: t.weight_percent(Color::Green),
        }),
        window_seconds: table.map(|_| window.as_secs_f64()),
        colors: table.map(|t| PerColor {
            blue: color_status(runtime, t, Color::Blue, &summaries[0]),
            green: color_status(runtime, t, Color::Green, &summaries[1]),
        }),
        rollback: table.map(|t| rollback(runtime, t)),
        last_config_error: runtime.last_error().map(|e| ConfigError {
            message: e.message.clone(),
            at: rfc3339::format(e.at),
        }),
        fleet: fleet(runtime, table),
        progressive: table.and_then(|t| t.progress.status(t, now, runtime.seat())),
    };
    serde_json::to_vec_pretty(&status).expect("status serialises")
}

fn color_status(
    runtime: &Runtime,
    table: &RouteTable,
    color: Color,
    window: &Summary,
) -> ColorStatus {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    ColorStatus {
        upstream: table.config.upstream(color).to_string(),
        requests: window.weighted.requests,
        failures: window.weighted.failures,
        failure_rate: window.weighted.failure_rate(),
        forced_requests: window.forced.requests,
        forced_failures: window.forced.failures,
        p50_ms: window.p50.map(ms),
        p99_ms: window.p99.map(ms),
        requests_total: runtime.metrics.color(color).requests_total(),
        endpoints: table.upstreams[color.index()].status(),
    }
}

fn rollback(runtime: &Runtime, table: &RouteTable) -> Rollback {
    let policy = &table.config.rollback;
    let (test, last) = table.judge.state();
    let verdict = if table.rolled_back.is_some() {
        "rolled_back"
    } else if !policy.enabled || !table.plan.can_roll_back() {
        "disabled"
    } else if !table.config.canary_reachable() {
        "no_canary"
    } else {
        // A due rollback not yet acted on shows as `rolling_back`: the next look trips it.
        verdict_name(last)
    };
    let plan = &table.plan;
    let streaks = runtime.tally.streaks(table.config.canary());
    let rolled = table.rolled_back.as_deref();
    Rollback {
        enabled: policy.enabled,
        max_error_rate: 100.0 * policy.max_error_rate,
        min_requests: policy.min_requests,
        confidence: 100.0 * policy.confidence,
        rolled_back: rolled.is_some(),
        color: rolled.map(|r| r.color.as_str()),
        reason: rolled.map(|r| r.reason.clone()),
        at: rolled.map(|r| r.at.clone()),
        verdict,
        test: plan.can_roll_back().then(|| TestStatus {
            statistic: round(test.absolute),
            boundary: round(plan.boundary),
            relative_statistic: round(test.relative()),
            relative_boundary: round(plan.relative_boundary),
            canary: test.judged.into(),
            stable: test.stable.into(),
            run: test.run.into(),
            run_stable: test.run_stable.into(),
            canary_failures_in_row: streaks.canary,
            streak_boundary: plan.streak,
            stable_successes_in_row: streaks.stable,
            stable_successes_needed: plan.stable_run,
            horizon_requests: sequential::HORIZON,
        }),
        latency: latency_plan(table).map(|plan| {
            let test = table.judge.latency_state();
            LatencyStatus {
                max_increase: round(100.0 * plan.margin),
                quantile: plan.quantile,
                statistic: round(test.relative()),
                boundary: round(plan.boundary),
                stable_slow_ms: test.thresholds.map(|t| t.stable_ms()),
                canary_slow_ms: test.thresholds.map(|t| t.canary_ms()),
                run: test.run.into(),
                run_stable: test.run_stable.into(),
            }
        }),
    }
}

fn fleet(runtime: &Runtime, table: Option<&RouteTable>) -> Option<FleetStatus> {
    let fleet = runtime.fleet()?;
    let state = fleet.isolated(runtime.now_ms()).unwrap_or("connected");
    let view = fleet.view().clone();
    let judgement = view.judgement;
    let plan = table.map(|t| t.plan);
    Some(FleetStatus {
        service: fleet.service.clone(),
        identity: fleet.identity.clone(),
        members: view.members.iter().map(ToString::to_string).collect(),
        judge: view.judge,
        is_judge: view.is_judge,
        state,
        answered: judgement.map(|_| view.answered),
        reporting: judgement.map(|j| j.reporting),
        canary: judgement.map(|j| j.test.judged.into()),
        stable: judgement.map(|j| j.test.stable.into()),
        statistic: judgement.map(|j| round(j.test.absolute)),
        boundary: judgement.and(plan).map(|p| round(p.boundary)),
        relative_statistic: judgement.map(|j| round(j.test.relative())),
        relative_boundary: judgement.and(plan).map(|p| round(p.relative_boundary)),
        verdict: judgement.map(|j| verdict_name(j.verdict)),
    })
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Healthy => "healthy",
        Verdict::SharedFault => "shared_fault",
        Verdict::Comparing => "comparing",
        Verdict::RollBack(_) => "rolling_back",
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
