//! Prometheus metrics, with every label combination resolved once at startup so that the
//! request path only touches atomics (no label lookup, no hashing, no allocation). Those written
//! on every response are sharded per thread ([`responses`]).

pub mod responses;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod endpoints;

pub use endpoints::EndpointMetrics;

use self::responses::{CODE_ERROR, ResponseMetrics, Responses};

use crate::config::Color;
use crate::progressive::metrics::ProgressiveMetrics;
use crate::rollback::sequential::Counts;
use crate::rollback::tally::Tally;

/// Which upstream fault a request met (`canary_proxy_upstream_errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection could not be established.
    Connect,
    /// No response headers within `timeout.request` (or no connection within `timeout.connect`).
    Timeout,
    /// The connection broke: reset, closed early, or an unparseable response.
    Reset,
    /// A response whose status is in `rollback.failure-statuses`.
    Status,
}

impl ErrorKind {
    /// Every kind, in the order of their discriminants.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Status,
    ];

    /// The `kind` label value.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Status => "status",
        }
    }
}

/// One color's handles.
pub struct ColorMetrics {
    /// `canary_proxy_requests_total{color, code}`, `canary_proxy_request_duration_seconds{color}`
    /// and `canary_proxy_upstream_errors_total{color, kind}`, sharded per thread.
    responses: Arc<Responses>,
    /// `canary_proxy_weight_percent{color}`.
    pub weight_percent: Gauge,
    /// `canary_proxy_rollbacks_total{color}`.
    pub rollbacks: IntCounter,
    /// `canary_proxy_shared_fault{color}`: 1 while this color, as canary, fails like stable.
    pub shared_fault: IntGauge,
    /// `canary_proxy_retries_total{from = this color, to = the other}`.
    pub retries_to_other: IntCounter,
    /// `canary_proxy_outcomes_total{color, evidence, result}`: weighted then forced, each
    /// success then failure. Brought up to the tally when scraped.
    outcomes: [[IntCounter; 2]; 2],
}

impl ColorMetrics {
    /// Counts a response with `status`.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses.code(class);
    }

    /// Observes the time from sending to an upstream to its response headers.
    pub fn latency(&self, latency: Duration) {
        self.responses.latency(latency);
    }

    /// Counts a request that got no response, and its cause.
    pub fn no_response(&self, kind: ErrorKind) {
        self.responses.code(CODE_ERROR);
        self.error(kind);
    }

    /// Counts an upstream fault.
    pub fn error(&self, kind: ErrorKind) {
        self.responses.error(kind);
    }

    /// Brings `canary_proxy_outcomes_total` up to the tally's weighted and forced counts.
    fn sync_outcomes(&self, weighted: Counts, forced: Counts) {
        for (handles, counts) in self.outcomes.iter().zip([weighted, forced]) {
            for (handle, value) in handles.iter().zip([counts.successes(), counts.failures]) {
                handle.inc_by(value.saturating_sub(handle.get()));
            }
        }
    }

    /// The current value of `canary_proxy_requests_total{color}` summed over codes.
    pub fn requests_total(&self) -> u64 {
        self.responses.total()
    }
}

/// All of the proxy's metrics and the registry they are served from.
pub struct Metrics {
    registry: Registry,
    colors: [ColorMetrics; 2],
    /// `canary_proxy_config_reloads_total{result="ok"}`.
    pub reloads_ok: IntCounter,
    /// `canary_proxy_config_reloads_total{result="error"}`.
    pub reloads_error: IntCounter,
    /// `canary_proxy_config_info{revision}`; one series, moved on each apply.
    config_info: IntGaugeVec,
    /// `canary_proxy_config_source_connected`: 0 while the configuration source is unreachable.
    pub source_connected: IntGauge,
    /// `canary_proxy_fleet_isolated`: 1 while a `--fleet` replica is cut off from its peers or
    /// the API server (it keeps serving on its local fast path).
    pub fleet_isolated: IntGauge,
    /// `canary_proxy_fleet_judge`: 1 on the replica that holds the judge's Lease.
    pub fleet_judge: IntGauge,
    /// The per-endpoint series, brought up to the endpoints when scraped.
    pub endpoints: EndpointMetrics,
    /// `canary_proxy_progressive_*`: the step plan.
    pub progressive: ProgressiveMetrics,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let responses = ResponseMetrics::new()?;
        let weight = prometheus::GaugeVec::new(
            Opts::new(
                "canary_proxy_weight_percent",
                "Effective share of weighted traffic per color, 0-100 (0 for a rolled-back canary)",
            ),
            &["color"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "canary_proxy_rollbacks_total",
                "Rollbacks, labelled with the canary color that was rolled back",
            ),
            &["color"],
        )?;
        let shared = IntGaugeVec::new(
            Opts::new(
                "canary_proxy_shared_fault",
                "1 while this canary fails beyond the threshold but stable fails alike, so no rollback",
            ),
            &["color"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "canary_proxy_retries_total",
                "Requests re-sent to another color because they could not reach the first",
            ),
            &["from", "to"],
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "canary_proxy_outcomes_total",
                "Outcomes as the rollback test counts them: result=success|failure; \
                 evidence=weighted (judged) or forced (by header or cookie: never judged)",
            ),
            &["color", "evidence", "result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "canary_proxy_config_reloads_total",
                "Configurations applied (ok) or rejected (error)",
            ),
            &["result"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "canary_proxy_config_info",
                "Always 1; the revision label names the applied configuration",
            ),
            &["revision"],
        )?;
        let source_connected = IntGauge::new(
            "canary_proxy_config_source_connected",
            "1 while the configuration source (file or Kubernetes API) is reachable",
        )?;
        let fleet_isolated = IntGauge::new(
            "canary_proxy_fleet_isolated",
            "1 while this replica is cut off from its fleet's peers or the Kubernetes API",
        )?;
        let fleet_judge = IntGauge::new(
            "canary_proxy_fleet_judge",
            "1 while this replica holds the Lease that makes it the fleet's judge",
        )?;
        for c in [
            Box::new(source_connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fleet_isolated.clone()),
            Box::new(fleet_judge.clone()),
            Box::new(weight.clone()),
            Box::new(rollbacks.clone()),
            Box::new(shared.clone()),
            Box::new(retries.clone()),
            Box::new(outcomes.clone()),
            Box::new(reloads.clone()),
            Box::new(config_info.clone()),
        ] {
            registry.register(c)?;
        }

        let colors = Color::ALL.map(|color| {
            let name = color.as_str();
            ColorMetrics {
                responses: responses.color(color),
                weight_percent: weight.with_label_values(&[name]),
                rollbacks: rollbacks.with_label_values(&[name]),
                shared_fault: shared.with_label_values(&[name]),
                retries_to_other: retries.with_label_values(&[name, color.other().as_str()]),
                outcomes: ["weighted", "forced"].map(|evidence| {
                    ["success", "failure"]
                        .map(|result| outcomes.with_label_values(&[name, evidence, result]))
                }),
            }
        });
        let endpoints = EndpointMetrics::register(&registry)?;
        registry.register(Box::new(responses))?;
        let progressive = ProgressiveMetrics::new(&registry)?;
        Ok(Metrics {
            endpoints,
            progressive,
            registry,
            colors,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_error: reloads.with_label_values(&["error"]),
            config_info,
            source_connected,
            fleet_isolated,
            fleet_judge,
        })
    }

    /// The handles of `color`.
    pub fn color(&self, color: Color) -> &ColorMetrics {
        &self.colors[color.index()]
    }

    /// Moves `canary_proxy_config_info` to `revision`.
    pub fn set_revision(&self, revision: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[revision]).set(1);
    }

    /// Renders every metric in the Prometheus text format, `canary_proxy_outcomes_total` as
    /// `tally` has it now.
    pub fn render(&self, tally: &Tally) -> Vec<u8> {
        for color in Color::ALL {
            let totals = tally.totals(color);
            self.color(color)
                .sync_outcomes(totals.weighted, totals.forced);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
