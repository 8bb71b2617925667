//! The merged result of a load run, printed as text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadConfig;
use super::conn::ConnOutcome;
use super::live::PerColor;

/// Requests that got no response, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// The connection could not be opened.
    pub connect: u64,
    /// No whole answer within the timeout.
    pub timeout: u64,
    /// The connection broke during the exchange.
    pub io: u64,
}

impl ErrorCounts {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Responses the figures are over.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The slowest response.
    pub max: f64,
    /// The arithmetic mean.
    pub mean: f64,
}

impl LatencySummary {
    /// The summary of a histogram recorded in microseconds.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// Everything a load run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The URL.
    pub target: String,
    /// `http/1.1` or `h2c`.
    pub protocol: &'static str,
    /// `closed` (as fast as answers come) or `open` (at a fixed rate).
    pub mode: &'static str,
    /// Connections used.
    pub connections: usize,
    /// The requested rate of an open-loop run.
    pub rate: Option<f64>,
    /// From the start to the last answer, in seconds.
    pub elapsed_s: f64,
    /// Responses read, whatever their status.
    pub responses: u64,
    /// `responses / elapsed_s`.
    pub requests_per_s: f64,
    /// Requests that got no response.
    pub errors: ErrorCounts,
    /// Responses per status code.
    pub status: BTreeMap<u16, u64>,
    /// Responses per `x-color`.
    pub colors: PerColor<u64>,
    /// Latency over the whole run; in open loop, measured from each request's intended send time.
    pub latency_ms: LatencySummary,
    /// Latency per segment (see `LoadHandle::set_segment`), when there was more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<LatencySummary>,
    /// The merged histogram in microseconds, for callers that merge runs further.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl LoadReport {
    pub(crate) fn merge(
        config: &LoadConfig,
        started: Instant,
        outcomes: Vec<ConnOutcome>,
    ) -> LoadReport {
        let mut statuses = [0u64; 1000];
        let mut errors = ErrorCounts::default();
        let mut segments: Vec<Histogram<u64>> = Vec::new();
        let mut finished = started;
        for outcome in &outcomes {
            for (total, n) in statuses.iter_mut().zip(outcome.statuses.iter()) {
                *total += n;
            }
            errors.connect += outcome.errors.connect;
            errors.timeout += outcome.errors.timeout;
            errors.io += outcome.errors.io;
            for (i, histogram) in outcome.latencies.iter().enumerate() {
                if segments.len() <= i {
                    segments.push(histogram.clone());
                } else {
                    // Both resize themselves, so adding cannot fail on range.
                    let _ = segments[i].add(histogram);
                }
            }
            finished = finished.max(outcome.finished);
        }
        let mut histogram = Histogram::new(3).expect("3 significant figures are supported");
        for segment in &segments {
            let _ = histogram.add(segment);
        }
        let status: BTreeMap<u16, u64> = statuses
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (code as u16, *n))
            .collect();
        let responses: u64 = status.values().sum();
        let elapsed_s = finished.duration_since(started).as_secs_f64();
        let colors = outcomes_colors(&outcomes);
        LoadReport {
            target: config.target.url.clone(),
            protocol: if config.http2 { "h2c" } else { "http/1.1" },
            mode: if config.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            connections: config.connections,
            rate: config.rate,
            elapsed_s,
            responses,
            requests_per_s: if elapsed_s > 0.0 {
                responses as f64 / elapsed_s
            } else {
                0.0
            },
            errors,
            status,
            colors,
            latency_ms: LatencySummary::of(&histogram),
            segments: if segments.len() > 1 {
                segments.iter().map(LatencySummary::of).collect()
            } else {
                Vec::new()
            },
            histogram,
        }
    }
}

fn outcomes_colors(outcomes: &[ConnOutcome]) -> PerColor<u64> {
    let mut colors = PerColor::default();
    for outcome in outcomes {
        colors.blue += outcome.colors.blue;
        colors.green += outcome.colors.green;
        colors.none += outcome.colors.none;
    }
    colors
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate:.0}/s"),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "target    {} ({}, {} connections, {mode})",
            self.target, self.protocol, self.connections
        )?;
        writeln!(
            f,
            "requests  {} in {:.2} s = {:.1}/s",
            self.responses, self.elapsed_s, self.requests_per_s
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        writeln!(
            f,
            "status    {}",
            if statuses.is_empty() {
                "none".to_string()
            } else {
                statuses.join("  ")
            }
        )?;
        let share = |n: u64| {
            if self.responses == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.responses as f64
            }
        };
        writeln!(
            f,
            "x-color   blue {} ({:.2} %)  green {} ({:.2} %)  none {} ({:.2} %)",
            self.colors.blue,
            share(self.colors.blue),
            self.colors.green,
            share(self.colors.green),
            self.colors.none,
            share(self.colors.none)
        )?;
        write!(
            f,
            "errors    {} (connect {}, timeout {}, io {})",
            self.errors.total(),
            self.errors.connect,
            self.errors.timeout,
            self.errors.io
        )
    }
}
