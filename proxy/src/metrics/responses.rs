//! The metrics written on every response (`canary_proxy_requests_total`,
//! `canary_proxy_request_duration_seconds`, `canary_proxy_upstream_errors_total`), kept in
//! per-thread shards so that counting a response writes no cache line another worker writes.
//! A scrape sums the shards into the same families, names, help and labels as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::ErrorKind;
use crate::config::Color;
use crate::shard::{self, SHARDS};

/// `code` label values: the status class, or `error` when the upstream gave no response.
pub const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
/// Where `error` sits in [`CODES`].
pub const CODE_ERROR: usize = 5;

/// Upper bounds of the duration buckets, in seconds (the `le` labels).
const BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// [`BOUNDS`] in nanoseconds, so that a latency is placed without floating point.
const BOUNDS_NS: [u64; 16] = {
    let mut ns = [0; 16];
    let mut i = 0;
    while i < BOUNDS.len() {
        ns[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// One color's counters in one shard.
#[repr(align(128))]
struct Counts {
    /// Responses per [`CODES`] entry.
    codes: [AtomicU64; 6],
    /// Upstream faults, indexed like [`ErrorKind::ALL`].
    errors: [AtomicU64; 4],
    /// Latencies per bucket (not cumulative); the last slot holds those above every bound.
    buckets: [AtomicU64; 17],
    /// Latencies observed.
    observed: AtomicU64,
    /// Their sum, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            codes: Default::default(),
            errors: Default::default(),
            buckets: Default::default(),
            observed: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// One color's per-response counters, sharded.
pub struct Responses {
    shards: Box<[Counts]>,
}

impl Responses {
    fn new() -> Responses {
        Responses {
            shards: (0..SHARDS).map(|_| Counts::new()).collect(),
        }
    }

    fn local(&self) -> &Counts {
        &self.shards[shard::index()]
    }

    /// Counts one response in the [`CODES`] entry `code`.
    pub fn code(&self, code: usize) {
        self.local().codes[code].fetch_add(1, Relaxed);
    }

    /// Counts one upstream fault.
    pub fn error(&self, kind: ErrorKind) {
        self.local().errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Observes one latency to the response headers.
    pub fn latency(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BOUNDS.len());
        let counts = self.local();
        counts.buckets[bucket].fetch_add(1, Relaxed);
        counts.observed.fetch_add(1, Relaxed);
        counts.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Responses counted, every code summed.
    pub fn total(&self) -> u64 {
        self.sum(|c| c.codes.iter().map(|v| v.load(Relaxed)).sum())
    }

    fn sum(&self, read: impl Fn(&Counts) -> u64) -> u64 {
        self.shards.iter().map(read).sum()
    }
}

/// Both colors' [`Responses`], and the collector that serves them to the registry.
pub struct ResponseMetrics {
    colors: [Arc<Responses>; 2],
    requests: Desc,
    duration: Desc,
    errors: Desc,
}

impl ResponseMetrics {
    /// Empty counters for both colors; [`ResponseMetrics::color`] hands out the writers.
    pub fn new() -> Result<ResponseMetrics, prometheus::Error> {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
        };
        Ok(ResponseMetrics {
            colors: [(); 2].map(|()| Arc::new(Responses::new())),
            requests: desc(
                "canary_proxy_requests_total",
                "Responses per color and status class; code=error when the upstream gave none",
                &["color", "code"],
            )?,
            duration: desc(
                "canary_proxy_request_duration_seconds",
                "Time from sending to an upstream to its response headers, per color",
                &["color"],
            )?,
            errors: desc(
                "canary_proxy_upstream_errors_total",
                "Upstream faults per color: connect, timeout, reset, or a failure status",
                &["color", "kind"],
            )?,
        })
    }

    /// The counters of `color`.
    pub fn color(&self, color: Color) -> Arc<Responses> {
        self.colors[color.index()].clone()
    }
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// A metric with `labels`, which are given in the order of their names.
fn labelled(labels: &[(&str, &str)]) -> proto::Metric {
    let mut metric = proto::Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).into());
                pair.set_value((*value).into());
                pair
            })
            .collect(),
    );
    metric
}

fn counter(labels: &[(&str, &str)], value: u64) -> proto::Metric {
    let mut metric = labelled(labels);
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

impl Collector for ResponseMetrics {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.requests, &self.duration, &self.errors]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        let mut errors = Vec::new();
        for (color, counts) in Color::ALL.iter().zip(&self.colors) {
            let name = color.as_str();
            for (i, code) in CODES.iter().enumerate() {
                let value = counts.sum(|c| c.codes[i].load(Relaxed));
                requests.push(counter(&[("code", code), ("color", name)], value));
            }
            for (i, kind) in ErrorKind::ALL.iter().enumerate() {
                let value = counts.sum(|c| c.errors[i].load(Relaxed));
                errors.push(counter(&[("color", name), ("kind", kind.label())], value));
            }
            let mut histogram = proto::Histogram::default();
            let mut cumulative = 0;
            let buckets = BOUNDS
                .iter()
                .enumerate()
                .map(|(i, &bound)| {
                    cumulative += counts.sum(|c| c.buckets[i].load(Relaxed));
                    let mut bucket = proto::Bucket::default();
                    bucket.set_cumulative_count(cumulative);
                    bucket.set_upper_bound(bound);
                    bucket
                })
                .collect();
            histogram.set_bucket(buckets);
            // Read after the buckets: a response counted meanwhile shows in the count, never
            // in a bucket without it.
            histogram.set_sample_count(counts.sum(|c| c.observed.load(Relaxed)));
            histogram.set_sample_sum(counts.sum(|c| c.sum_ns.load(Relaxed)) as f64 / 1e9);
            let mut metric = labelled(&[("color", name)]);
            metric.set_histogram(histogram);
            durations.push(metric);
        }
        vec![
            family(&self.requests, MetricType::COUNTER, requests),
            family(&self.duration, MetricType::HISTOGRAM, durations),
            family(&self.errors, MetricType::COUNTER, errors),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_whose_bound_they_do_not_exceed() {
        let metrics = ResponseMetrics::new().unwrap();
        let blue = metrics.color(Color::Blue);
        blue.latency(Duration::from_micros(500));
        blue.latency(Duration::from_micros(501));
        blue.latency(Duration::from_secs(61));
        let families = metrics.collect();
        let histogram = families[1].get_metric()[0].get_histogram();
        let cumulative: Vec<u64> = histogram
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[1], 2);
        assert_eq!(cumulative[15], 2);
        assert_eq!(histogram.get_sample_count(), 3);
        assert!((histogram.get_sample_sum() - 61.001001).abs() < 1e-9);
    }

    #[test]
    fn counts_from_many_threads_are_summed() {
        let metrics = ResponseMetrics::new().unwrap();
        let green = metrics.color(Color::Green);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        green.code(1);
                        green.error(ErrorKind::Status);
                    }
                });
            }
        });
        assert_eq!(green.total(), 4000);
        assert_eq!(metrics.color(Color::Blue).total(), 0);
        let families = metrics.collect();
        let errors = &families[2];
        let status = errors
            .get_metric()
            .iter()
            .find(|m| {
                let labels = m.get_label();
                labels[0].value() == "green" && labels[1].value() == "status"
            })
            .unwrap();
        assert_eq!(status.get_counter().get_value(), 4000.0);
    }
}
