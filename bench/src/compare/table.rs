//! Medians, spreads and ratios of the rounds, and the printed comparison.

use std::fmt::Write;

use super::systems::Kind;
use super::{PlanResult, Round};

/// The median and range of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, or `None` if there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    /// `median ±half-range%`.
    fn with_percent(&self, decimals: usize) -> String {
        let half = if self.median == 0.0 {
            0.0
        } else {
            50.0 * (self.max - self.min) / self.median
        };
        format!("{:.decimals$} ±{half:.0}%", self.median)
    }

    /// `median (min-max)`.
    fn with_range(&self) -> String {
        format!("{:.2} ({:.2}-{:.2})", self.median, self.min, self.max)
    }
}

fn rounds_of(result: &PlanResult, kind: Kind) -> Vec<&Round> {
    result.rounds.iter().filter(|r| r.kind == kind).collect()
}

/// The spread over rounds of `metric(system) / metric(baseline)`, pairing rounds by number.
pub fn ratio(
    result: &PlanResult,
    kind: Kind,
    baseline: Kind,
    metric: fn(&Round) -> Option<f64>,
) -> Option<Spread> {
    let base = rounds_of(result, baseline);
    Spread::of(rounds_of(result, kind).into_iter().filter_map(|round| {
        let b = base.iter().find(|b| b.round == round.round)?;
        let (value, base_value) = (metric(round)?, metric(b)?);
        (base_value > 0.0).then(|| value / base_value)
    }))
}

fn spread(result: &PlanResult, kind: Kind, metric: fn(&Round) -> Option<f64>) -> Option<Spread> {
    Spread::of(rounds_of(result, kind).into_iter().filter_map(metric))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_string(), |b| {
        format!("{:.1}", b as f64 / (1024.0 * 1024.0))
    })
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

/// The closed-loop throughput.
pub fn closed_rps(r: &Round) -> Option<f64> {
    Some(r.closed_rps)
}
/// The proxy's CPU per request at the fixed rate.
pub fn cpu(r: &Round) -> Option<f64> {
    r.cpu_us_per_request
}
/// p99 at the fixed rate.
pub fn fixed_p99(r: &Round) -> Option<f64> {
    Some(r.fixed_p99_ms)
}
fn fixed_p50(r: &Round) -> Option<f64> {
    Some(r.fixed_p50_ms)
}
fn load_rss(r: &Round) -> Option<f64> {
    r.load_rss.map(|b| b as f64)
}

/// The comparison of one plan as a text table, with the targets' verdicts under it.
pub fn render(result: &PlanResult, rate: f64, connections: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== {}; {}", result.plan.describe(), result.load);
    for line in &result.skipped {
        let _ = writeln!(out, "   {line}");
    }
    let _ = writeln!(
        out,
        "{:<13} {:>15} {:>6} {:>18} {:>18} {:>13} {:>18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>5}",
        "system",
        "req/s closed",
        "busy",
        "× direct",
        "× nginx",
        "CPU µs/req",
        "× nginx",
        "user µs",
        "p50 ms",
        "p99 ms",
        "RSS idle",
        "RSS load",
        "green",
        "fail"
    );
    let kinds: Vec<Kind> = [Kind::Direct, Kind::CanaryProxy, Kind::Nginx, Kind::Haproxy]
        .into_iter()
        .filter(|kind| !rounds_of(result, *kind).is_empty())
        .collect();
    let has_nginx = kinds.contains(&Kind::Nginx);
    for kind in &kinds {
        let kind = *kind;
        let rounds = rounds_of(result, kind);
        let idle = result
            .idle_rss
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, rss)| *rss);
        let peak = spread(result, kind, load_rss).map(|s| s.max as u64);
        let vs_nginx = |metric| {
            if has_nginx {
                ratio(result, kind, Kind::Nginx, metric).map(|s| s.with_range())
            } else {
                None
            }
        };
        let _ = writeln!(
            out,
            "{:<13} {:>15} {:>6} {:>18} {:>18} {:>13} {:>18} {:>8} {:>9.3} {:>9.3} {:>9} {:>9} {:>5.1}% {:>5}",
            kind.name(),
            or_dash(spread(result, kind, closed_rps).map(|s| s.with_percent(0))),
            or_dash(
                spread(result, kind, |r| r.closed_busy_percent)
                    .map(|s| format!("{:.0}%", s.median))
            ),
            or_dash(ratio(result, kind, Kind::Direct, closed_rps).map(|s| s.with_range())),
            or_dash(vs_nginx(closed_rps)),
            or_dash(spread(result, kind, cpu).map(|s| s.with_percent(2))),
            or_dash(vs_nginx(cpu)),
            or_dash(
                spread(result, kind, |r| r.user_us_per_request).map(|s| format!("{:.2}", s.median))
            ),
            spread(result, kind, fixed_p50).map_or(0.0, |s| s.median),
            spread(result, kind, fixed_p99).map_or(0.0, |s| s.median),
            mib(idle),
            mib(peak),
            Spread::of(rounds.iter().map(|r| r.green_percent)).map_or(0.0, |s| s.median),
            rounds.iter().map(|r| r.failures).sum::<u64>(),
        );
    }
    let _ = writeln!(
        out,
        "   closed loop: {connections} connections; CPU, p50 and p99 at a fixed {rate:.0} requests/s (open loop); \
         busy = the proxy's CPU time during the closed loop, % of one core; \
         user = the median CPU µs/req spent in user space (the rest is the kernel's); RSS in MiB; \
         × = median ratio per round (min-max); ± = half the range over rounds"
    );
    out.push_str(&idle_connections(result));
    out.push_str(&verdicts(result));
    out
}

/// Each proxy's resident memory per idle kept-alive connection, and canary-proxy's against
/// NGINX's, when they were measured.
fn idle_connections(result: &PlanResult) -> String {
    let per = |kind| {
        result
            .rss_per_idle_connection
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, bytes)| *bytes)
    };
    let mut out = String::new();
    if result.rss_per_idle_connection.is_empty() {
        return out;
    }
    let figures: Vec<String> = result
        .rss_per_idle_connection
        .iter()
        .map(|(kind, bytes)| {
            let kib = bytes.map_or("-".to_string(), |b| format!("{:.1} KiB", b / 1024.0));
            format!("{} {kib}", kind.name())
        })
        .collect();
    let _ = writeln!(out, "   RSS per idle connection: {}", figures.join(", "));
    if let (Some(ours), Some(nginx)) = (per(Kind::CanaryProxy), per(Kind::Nginx)) {
        let ratio = ours / nginx.max(1.0);
        let mark = if ours <= nginx { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "   target RSS per idle connection <= nginx ({ratio:.2}): {mark}"
        );
    }
    out
}

/// The targets for canary-proxy, checked against this plan's figures.
fn verdicts(result: &PlanResult) -> String {
    let mut out = String::new();
    if rounds_of(result, Kind::CanaryProxy).is_empty() {
        return out;
    }
    let mut line = |text: String, ok: Option<bool>| {
        let mark = match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "n/a",
        };
        let _ = writeln!(out, "   target {text}: {mark}");
    };
    for reference in [Kind::Nginx, Kind::Haproxy] {
        if rounds_of(result, reference).is_empty() {
            continue;
        }
        let name = reference.name();
        let cpu_ratio = ratio(result, Kind::CanaryProxy, reference, cpu);
        if reference == Kind::Nginx {
            line(
                format!(
                    "CPU per request <= 0.8 × {name} ({})",
                    or_dash(cpu_ratio.map(|s| format!("{:.2}", s.median)))
                ),
                cpu_ratio.map(|s| s.median <= 0.8),
            );
        }
        let rps = ratio(result, Kind::CanaryProxy, reference, closed_rps);
        line(
            format!(
                "closed-loop req/s >= {name} ({})",
                or_dash(rps.map(|s| format!("{:.2}", s.median)))
            ),
            rps.map(|s| s.median >= 1.0),
        );
        let p99 = ratio(result, Kind::CanaryProxy, reference, fixed_p99);
        line(
            format!(
                "p99 at the fixed rate <= {name} ({})",
                or_dash(p99.map(|s| format!("{:.2}", s.median)))
            ),
            p99.map(|s| s.median <= 1.0),
        );
    }
    let idle = result
        .idle_rss
        .iter()
        .find(|(k, _)| *k == Kind::CanaryProxy)
        .and_then(|(_, rss)| *rss);
    line(
        format!("idle RSS < 20 MiB ({} MiB)", mib(idle)),
        idle.map(|b| b < 20 * 1024 * 1024),
    );
    let peak = spread(result, Kind::CanaryProxy, load_rss).map(|s| s.max);
    line(
        format!(
            "RSS under load < 50 MiB ({} MiB)",
            mib(peak.map(|b| b as u64))
        ),
        peak.map(|b| b < 50.0 * 1024.0 * 1024.0),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Spread::of([3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(
            Spread::of([1.0, 2.0, 3.0, 10.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(Spread::of(std::iter::empty()), None);
        assert_eq!(s.with_percent(1), "2.0 ±50%");
    }
}
