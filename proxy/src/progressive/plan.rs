//! The step plan's pure rule: given the step the canary is at, the time and the evidence
//! gathered there, stay or move on.
//!
//! A step is left only when all of these hold: its `progressive.step-min-duration` has
//! passed, it has seen `progressive.step-min-requests` weighted canary requests, and the
//! [gate](super::gate) shows the canary's failures under `rollback.max-error-rate` and (with
//! the latency trigger on) its latency within the margin. Passing the last step promotes
//! (with `progressive.promote`) or stays there.
//!
//! The rule for a canary worse than stable but under the threshold (3 % against 0 % with a
//! 5 % threshold): it is promoted. `rollback.max-error-rate` is the operator's statement of
//! what is acceptable, the rollback test keeps the same contract (it rolls back only above
//! it), and a gate stricter than the rollback would hold such a release at a step forever,
//! neither promoted nor rolled back. `/status` says when the canary fails more than stable
//! so the operator sees it; whoever wants it stopped lowers the threshold.

use std::time::Duration;

use crate::config::Progressive;
use crate::progressive::gate::{Gate, GatePlan};

/// The current step and its evidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The canary weight of this step.
    pub weight: u32,
    /// When it began, on the runtime's millisecond clock.
    pub since_ms: u64,
    /// The gate's evidence at this step.
    pub gate: Gate,
}

/// What to do after a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Stay at this step.
    Hold,
    /// Move the canary's weight to the next step.
    Advance {
        /// The step left.
        from: u32,
        /// The step entered.
        to: u32,
    },
    /// The last step is passed: make the canary stable.
    Promote {
        /// The step left.
        from: u32,
    },
}

/// Why a step is not left yet, each unmet condition once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// The step's least time has not passed.
    pub time: bool,
    /// Not enough canary requests at this step.
    pub requests: bool,
    /// The failure evidence is not yet enough.
    pub failures: bool,
    /// The latency evidence is not yet enough.
    pub latency: bool,
}

impl Waiting {
    /// Whether nothing is waited for.
    pub fn none(&self) -> bool {
        *self == Waiting::default()
    }
}

/// The index of `weight` among the steps; `None` when the weight is not a step.
pub fn index(policy: &Progressive, weight: u32) -> Option<usize> {
    policy.steps.iter().position(|&s| s == weight)
}

/// What `step` still waits for at `now_ms`, at canary share `share`.
pub fn waiting(
    policy: &Progressive,
    gate_plan: &GatePlan,
    step: &Step,
    now_ms: u64,
    share: f64,
) -> Waiting {
    let elapsed = Duration::from_millis(now_ms.saturating_sub(step.since_ms));
    Waiting {
        time: elapsed < policy.min_duration,
        requests: step.gate.canary.requests < policy.min_requests,
        failures: !step.gate.failures_pass(gate_plan),
        latency: !step.gate.latency_pass(gate_plan, share),
    }
}

/// The rule: move on from `step` when nothing is waited for; `paused` holds it.
pub fn decide(
    policy: &Progressive,
    gate_plan: &GatePlan,
    step: &Step,
    now_ms: u64,
    share: f64,
    paused: bool,
) -> Decision {
    let Some(i) = index(policy, step.weight) else {
        return Decision::Hold;
    };
    if paused || !waiting(policy, gate_plan, step, now_ms, share).none() {
        return Decision::Hold;
    }
    match policy.steps.get(i + 1) {
        Some(&to) => Decision::Advance {
            from: step.weight,
            to,
        },
        None if policy.promote => Decision::Promote { from: step.weight },
        None => Decision::Hold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progressive::gate::Batch;
    use crate::rollback::latency::BINS;
    use crate::rollback::sequential::Counts;

    fn policy(promote: bool) -> Progressive {
        Progressive {
            steps: vec![5, 25, 50, 100],
            min_duration: Duration::from_secs(60),
            min_requests: 100,
            promote,
            paused: false,
            paused_written: false,
        }
    }

    /// A step at `weight` that began at 0 and saw `successes` canary successes.
    fn step(weight: u32, successes: u64) -> Step {
        let mut gate = Gate::default();
        let empty = [0; BINS];
        gate.observe(
            &GatePlan::new(0.05, 0.99, None),
            &Batch {
                canary: Counts::new(successes, 0),
                stable: Counts::default(),
                canary_latency: &empty,
                stable_latency: &empty,
                stable_so_far: &empty,
                share: 0.5,
            },
        );
        Step {
            weight,
            since_ms: 0,
            gate,
        }
    }

    #[test]
    fn a_step_waits_for_time_requests_and_evidence() {
        let (p, g) = (policy(true), GatePlan::new(0.05, 0.99, None));
        let w = waiting(&p, &g, &step(5, 150), 30_000, 0.05);
        assert!(w.time && !w.requests && w.failures && !w.latency, "{w:?}");
        assert_eq!(
            decide(&p, &g, &step(5, 150), 90_000, 0.05, false),
            Decision::Hold
        );
        assert_eq!(
            decide(&p, &g, &step(5, 200), 90_000, 0.05, false),
            Decision::Advance { from: 5, to: 25 }
        );
        assert_eq!(
            decide(&p, &g, &step(5, 200), 59_999, 0.05, false),
            Decision::Hold
        );
        assert_eq!(
            decide(&p, &g, &step(5, 200), 90_000, 0.05, true),
            Decision::Hold
        );
    }

    #[test]
    fn the_last_step_promotes_or_stays() {
        let g = GatePlan::new(0.05, 0.99, None);
        assert_eq!(
            decide(&policy(true), &g, &step(100, 500), 90_000, 1.0, false),
            Decision::Promote { from: 100 }
        );
        assert_eq!(
            decide(&policy(false), &g, &step(100, 500), 90_000, 1.0, false),
            Decision::Hold
        );
        // A weight that is not a step holds.
        assert_eq!(
            decide(&policy(true), &g, &step(30, 500), 90_000, 0.3, false),
            Decision::Hold
        );
    }
}
