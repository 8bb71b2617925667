//! `GET /status`: the live state as JSON (field names are part of the contract).

use std::time::Duration;

use serde::Serialize;

use crate::config::Color;
use crate::rfc3339;
use crate::rollback::decision::Verdict;
use crate::route::RouteTable;
use crate::runtime::Runtime;

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
    requests: u64,
    failures: u64,
    failure_rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    requests_total: u64,
}

#[derive(Serialize)]
struct Rollback {
    enabled: bool,
    max_error_rate: f64,
    min_requests: u64,
    rolled_back: bool,
    color: Option<&'static str>,
    reason: Option<String>,
    at: Option<String>,
    verdict: &'static str,
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
        window_seconds: table.map(|t| t.windows[0].length().as_secs_f64()),
        colors: table.map(|t| PerColor {
            blue: color_status(runtime, t, Color::Blue, now),
            green: color_status(runtime, t, Color::Green, now),
        }),
        rollback: table.map(|t| rollback(runtime, t, now)),
        last_config_error: runtime.last_error().map(|e| ConfigError {
            message: e.message.clone(),
            at: rfc3339::format(e.at),
        }),
    };
    serde_json::to_vec_pretty(&status).expect("status serialises")
}

/// Sets `canary_proxy_shared_fault` from the windows as they are now, so a scrape sees the
/// current state even when no canary failure has arrived lately.
pub fn refresh_shared_fault(runtime: &Runtime) {
    let table = runtime.routes().clone();
    for color in Color::ALL {
        let shared = table.as_deref().is_some_and(|t| {
            t.config.canary() == color
                && t.rolled_back.is_none()
                && t.config.rollback.enabled
                && runtime.verdict(t, runtime.now_ms()) == Verdict::SharedFault
        });
        runtime
            .metrics
            .color(color)
            .shared_fault
            .set(i64::from(shared));
    }
}

fn color_status(runtime: &Runtime, table: &RouteTable, color: Color, now: u64) -> ColorStatus {
    let summary = table.windows[color.index()].summary(now);
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    ColorStatus {
        upstream: table.config.upstream(color).to_string(),
        requests: summary.counts.requests,
        failures: summary.counts.failures,
        failure_rate: summary.counts.failure_rate(),
        p50_ms: summary.p50.map(ms),
        p99_ms: summary.p99.map(ms),
        requests_total: runtime.metrics.color(color).requests_total(),
    }
}

fn rollback(runtime: &Runtime, table: &RouteTable, now: u64) -> Rollback {
    let policy = &table.config.rollback;
    let verdict = if table.rolled_back.is_some() {
        "rolled_back"
    } else if !policy.enabled {
        "disabled"
    } else if !table.config.canary_reachable() {
        "no_canary"
    } else {
        match runtime.verdict(table, now) {
            Verdict::Insufficient => "insufficient",
            Verdict::Healthy => "healthy",
            Verdict::SharedFault => "shared_fault",
            // Due but not yet acted on: the next canary failure trips it.
            Verdict::RollBack(_) => "rolling_back",
        }
    };
    let rolled = table.rolled_back.as_deref();
    Rollback {
        enabled: policy.enabled,
        max_error_rate: 100.0 * policy.max_error_rate,
        min_requests: policy.min_requests,
        rolled_back: rolled.is_some(),
        color: rolled.map(|r| r.color.as_str()),
        reason: rolled.map(|r| r.reason.clone()),
        at: rolled.map(|r| r.at.clone()),
        verdict,
    }
}
