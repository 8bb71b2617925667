//! `GET /status`: the live state as JSON (field names are part of the contract).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Color;
use crate::rollback::decision::Verdict;
use crate::route::RouteTable;
use crate::runtime::Runtime;

#[derive(Serialize)]
struct Status<'a> {
    revision: Option<&'a str>,
    source: &'a str,
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
    let status = Status {
        revision: table.map(|t| &*t.revision),
        source: &runtime.source,
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
            at: rfc3339(e.at),
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
        at: rolled.map(|r| rfc3339(r.at)),
        verdict,
    }
}

/// Formats `t` as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_651_200 + 3_723);
        assert_eq!(rfc3339(t), "2026-11-26T01:02:03Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
