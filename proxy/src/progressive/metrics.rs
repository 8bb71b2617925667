//! The plan's metrics, for the Grafana dashboard: the step, the time and evidence at it, the
//! steps done and whether it is paused. Set on the runtime's timer while a plan is configured.

use prometheus::{Gauge, GaugeVec, IntGauge, Opts, Registry};

/// The `canary_proxy_progressive_*` gauges.
pub struct ProgressiveMetrics {
    /// `canary_proxy_progressive_step_percent`: the current step, in percent of the total.
    pub step_percent: Gauge,
    /// `canary_proxy_progressive_step_seconds`: time at the current step.
    pub step_seconds: Gauge,
    /// `canary_proxy_progressive_steps_done`: steps left so far.
    pub steps_done: IntGauge,
    /// `canary_proxy_progressive_paused`: 1 while the plan is held.
    pub paused: IntGauge,
    /// `canary_proxy_progressive_evidence{kind="failures"}`: the gate's failure statistic.
    pub failures: Gauge,
    /// `canary_proxy_progressive_evidence{kind="latency"}`: the gate's latency statistic.
    pub latency: Gauge,
    /// `canary_proxy_progressive_evidence{kind="boundary"}`: where both pass.
    pub boundary: Gauge,
}

impl ProgressiveMetrics {
    /// Registers the gauges in `registry`.
    pub fn new(registry: &Registry) -> Result<ProgressiveMetrics, prometheus::Error> {
        let step_percent = Gauge::new(
            "canary_proxy_progressive_step_percent",
            "The step plan's current step, in percent of the weighted traffic (0 with no step)",
        )?;
        let step_seconds = Gauge::new(
            "canary_proxy_progressive_step_seconds",
            "Seconds at the current step",
        )?;
        let steps_done = IntGauge::new(
            "canary_proxy_progressive_steps_done",
            "Steps the plan has left so far, the promotion included",
        )?;
        let paused = IntGauge::new(
            "canary_proxy_progressive_paused",
            "1 while the step plan is paused (progressive.paused, or a hand edit of the weight)",
        )?;
        let evidence = GaugeVec::new(
            Opts::new(
                "canary_proxy_progressive_evidence",
                "The promotion gate at the current step: kind=failures and latency against \
                 kind=boundary, where each passes",
            ),
            &["kind"],
        )?;
        for c in [
            Box::new(step_percent.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(step_seconds.clone()),
            Box::new(steps_done.clone()),
            Box::new(paused.clone()),
            Box::new(evidence.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(ProgressiveMetrics {
            step_percent,
            step_seconds,
            steps_done,
            paused,
            failures: evidence.with_label_values(&["failures"]),
            latency: evidence.with_label_values(&["latency"]),
            boundary: evidence.with_label_values(&["boundary"]),
        })
    }

    /// Zeroes every gauge: on a `--fleet` replica that does not run the plan, the figures are
    /// the judge's to show, and a former judge's must not linger on a dashboard's max.
    pub fn clear(&self) {
        for gauge in [
            &self.step_percent,
            &self.step_seconds,
            &self.failures,
            &self.latency,
            &self.boundary,
        ] {
            gauge.set(0.0);
        }
        self.steps_done.set(0);
        self.paused.set(0);
    }
}
