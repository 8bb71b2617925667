//! The plan on `/status` (the `progressive` object): steps done, the current step, time and
//! requests at it, the gate's evidence against its boundaries, and the next step's earliest
//! time.

use std::time::Duration;

use serde::Serialize;

use crate::progressive::apply::gate_plan;
use crate::progressive::plan::{self, Step};
use crate::progressive::{Done, Seat, Stepper};
use crate::rollback::sequential::Counts;
use crate::route::RouteTable;

/// The `progressive` object of `/status`.
#[derive(Serialize)]
pub struct PlanStatus {
    /// `progressive.steps`.
    pub steps: Vec<u32>,
    /// `waiting_for_release` (weight 0), `stepping`, `paused`, `off_plan` (a weight that is
    /// not a step), `complete` (the last step, not promoting), `promoted`, `rolled_back`, or
    /// `following` (with `--fleet`, on a replica that is not the judge: the judge runs the plan
    /// and this replica routes by the ConfigMap's weight).
    pub state: &'static str,
    /// The state in a sentence.
    pub message: String,
    /// The current step's weight.
    pub current_step: Option<u32>,
    /// Seconds at the current step.
    pub seconds_at_step: Option<f64>,
    /// The canary's weighted requests at the current step.
    pub canary_at_step: Option<Counts>,
    /// Stable's.
    pub stable_at_step: Option<Counts>,
    /// `progressive.step-min-duration`, in seconds.
    pub min_seconds: f64,
    /// `progressive.step-min-requests`.
    pub min_requests: u64,
    /// The gate's evidence at the current step.
    pub gate: Option<GateStatus>,
    /// What the step still waits for: `time`, `requests`, `failure_evidence`,
    /// `latency_evidence`.
    pub waiting_for: Vec<&'static str>,
    /// The next step's weight, or `promote`.
    pub next_step: Option<String>,
    /// Seconds until the next step can come at the earliest (its least time).
    pub next_step_earliest_in_seconds: Option<f64>,
    /// The steps left so far.
    pub steps_done: Vec<Done>,
}

/// The gate against its boundaries.
#[derive(Serialize)]
pub struct GateStatus {
    /// The failure statistic (ln of the likelihood ratio against a canary at the threshold).
    pub failure_statistic: f64,
    /// The latency statistic, when the latency trigger is on.
    pub latency_statistic: Option<f64>,
    /// Both pass at this boundary, `ln(1/α)`.
    pub boundary: f64,
    /// The canary's and stable's failure rates at this step, in percent.
    pub canary_failure_rate: f64,
    /// Stable's.
    pub stable_failure_rate: f64,
    /// Said when the canary fails more often than stable yet under the threshold: it is
    /// promoted all the same (see the rule in the plan's documentation).
    pub note: Option<String>,
    /// The slow thresholds in use, stable's and the canary's, in milliseconds.
    pub slow_ms: Option<[f64; 2]>,
    /// Slow requests at this step, each color's.
    pub slow_canary: Option<Counts>,
    /// Stable's.
    pub slow_stable: Option<Counts>,
}

impl Stepper {
    /// The plan of `table` as `/status` shows it, at `now_ms`, on a replica in `seat`.
    pub fn status(&self, table: &RouteTable, now_ms: u64, seat: Seat) -> Option<PlanStatus> {
        let policy = table.config.progressive.as_ref()?;
        let state = self.lock().clone();
        let gate_plan = gate_plan(table, seat);
        let weight = table.config.weight;
        let share = table.canary_share();
        let step = state.step.filter(|s| s.weight == weight);
        let index = plan::index(policy, weight);
        let (name, message) = if let Some(finished) = &state.finished {
            ("promoted", finished.clone())
        } else if let Some(r) = &table.rolled_back {
            (
                "rolled_back",
                format!("rolled back at {}: {}", r.at, r.reason),
            )
        } else if seat == Seat::Following {
            (
                "following",
                format!(
                    "the fleet's judge runs the plan; this replica routes by the ConfigMap's \
                     weight ({weight})"
                ),
            )
        } else if weight == 0 {
            (
                "waiting_for_release",
                format!(
                    "canary-weight is 0: set it to the first step ({}) to start",
                    policy.steps[0]
                ),
            )
        } else if let Some(why) = &state.manual {
            ("paused", why.clone())
        } else if index.is_none() {
            (
                "off_plan",
                format!("canary-weight {weight} is not one of the steps; holding"),
            )
        } else if policy.paused {
            ("paused", "progressive.paused is true".into())
        } else if index == Some(policy.steps.len() - 1) && !policy.promote {
            (
                "complete",
                format!("at the last step ({weight}); progressive.promote is false"),
            )
        } else {
            ("stepping", format!("at step {weight}"))
        };
        let stepping = name == "stepping" || name == "paused";
        let waiting = step
            .filter(|_| stepping)
            .map(|s| plan::waiting(policy, &gate_plan, &s, now_ms, share));
        let next_step = index
            .filter(|_| stepping)
            .and_then(|i| match policy.steps.get(i + 1) {
                Some(next) => Some(next.to_string()),
                None => policy.promote.then(|| "promote".to_owned()),
            });
        let earliest = step.filter(|_| next_step.is_some()).map(|s| {
            let elapsed = Duration::from_millis(now_ms.saturating_sub(s.since_ms));
            policy.min_duration.saturating_sub(elapsed).as_secs_f64()
        });
        Some(PlanStatus {
            steps: policy.steps.clone(),
            state: name,
            message,
            current_step: (weight > 0).then_some(weight),
            seconds_at_step: step.map(|s| now_ms.saturating_sub(s.since_ms) as f64 / 1000.0),
            canary_at_step: step.map(|s| s.gate.canary),
            stable_at_step: step.map(|s| s.gate.stable),
            min_seconds: policy.min_duration.as_secs_f64(),
            min_requests: policy.min_requests,
            gate: step.map(|s| gate_status(&s, &gate_plan)),
            waiting_for: waiting.map_or_else(Vec::new, |w| {
                [
                    (w.time, "time"),
                    (w.requests, "requests"),
                    (w.failures, "failure_evidence"),
                    (w.latency, "latency_evidence"),
                ]
                .into_iter()
                .filter_map(|(waits, name)| waits.then_some(name))
                .collect()
            }),
            next_step,
            next_step_earliest_in_seconds: earliest,
            steps_done: state.done,
        })
    }
}

fn gate_status(step: &Step, plan: &crate::progressive::gate::GatePlan) -> GateStatus {
    let g = &step.gate;
    let pct = |c: Counts| round(100.0 * c.failure_rate());
    let (canary, stable) = (g.canary.failure_rate(), g.stable.failure_rate());
    let note = (canary > stable && g.canary.failures > 0).then(|| {
        format!(
            "the canary fails more often than stable ({:.2}% against {:.2}%); under the {}% \
             threshold it is promoted all the same",
            100.0 * canary,
            100.0 * stable,
            round(100.0 * plan.threshold)
        )
    });
    let latency = plan.latency.is_some();
    GateStatus {
        failure_statistic: round(g.failures),
        latency_statistic: latency.then(|| round(g.latency)),
        boundary: round(plan.boundary),
        canary_failure_rate: pct(g.canary),
        stable_failure_rate: pct(g.stable),
        note,
        slow_ms: g.thresholds.map(|t| [t.stable_ms(), t.canary_ms()]),
        slow_canary: latency.then_some(g.slow),
        slow_stable: latency.then_some(g.slow_stable),
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
