//! The promotion gate: the evidence that lets a step be left. Where the rollback tests ask
//! "is the canary bad?", the gate asks the opposite, "is it shown good?", and each of its two
//! statistics is a likelihood ratio *against* a bad canary, started when the step begins:
//!
//! - **Failures**: the canary's failure rate `p` against the threshold `p0`. Per weighted canary
//!   request, `ln(pg/p0)` for a failure and `ln((1−pg)/(1−p0))` for a success, with
//!   `pg = p0/2`. For any `p ≥ p0` the ratio's expected step factor,
//!   `p·pg/p0 + (1−p)(1−pg)/(1−p0)`, is at most 1, so the product is a supermartingale for a
//!   canary at or above the threshold and, by Ville's inequality, ever reaches `1/α` with
//!   probability at most `α`. A canary at 0 % passes after `ln(1/α)/ln((1−pg)/(1−p0))`
//!   requests (177 at 5 % and `α` = 1 %); one at 3 % under a 5 % threshold after about 1,050.
//! - **Latency** (with the latency trigger on): the attribution of slow requests (see
//!   [`crate::rollback::slowdown`]) against a canary that is slow twice as often as stable
//!   beyond the margin: `ln(w/q)` per slow canary request and `ln((1−w)/(1−q))` per slow
//!   stable one, `q = 2w/(2w + 1 − w)`. The same argument bounds passing such a canary by `α`.
//!   With no weighted stable traffic (a step at 100 %) there is nothing to compare with and
//!   the latency part is not asked.
//!
//! A step is therefore promoted past a bad canary with probability at most `α` per statistic,
//! however often the gate is looked at; the rollback tests keep running alongside, and a
//! rollback verdict ends the release whatever the gate says.

use crate::rollback::latency::{self, BINS};
use crate::rollback::sequential::Counts;
use crate::rollback::slowdown::{LatencyPlan, Thresholds};

/// The gate's constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatePlan {
    /// `p0`, a fraction.
    pub threshold: f64,
    /// Added per canary failure (negative).
    fail_step: f64,
    /// Added per canary success.
    pass_step: f64,
    /// `ln(1/α)`: both statistics pass at it.
    pub boundary: f64,
    /// The latency trigger, when it is on.
    pub latency: Option<LatencyPlan>,
}

impl GatePlan {
    /// The gate for a threshold (a fraction), a confidence (0.99) and the latency trigger.
    pub fn new(threshold: f64, confidence: f64, latency: Option<LatencyPlan>) -> GatePlan {
        let alpha = (1.0 - confidence).clamp(1e-12, 0.5);
        let p0 = threshold.clamp(1e-6, 1.0 - 1e-6);
        let pg = p0 / 2.0;
        GatePlan {
            threshold: p0,
            fail_step: (pg / p0).ln(),
            pass_step: ((1.0 - pg) / (1.0 - p0)).ln(),
            boundary: (1.0 / alpha).ln(),
            latency,
        }
    }
}

/// The gate's state over one step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Gate {
    /// The failure statistic.
    pub failures: f64,
    /// The latency statistic.
    pub latency: f64,
    /// The canary's weighted requests at this step.
    pub canary: Counts,
    /// Stable's weighted requests at this step.
    pub stable: Counts,
    /// Slow requests at this step, as `failures` of each color's requests.
    pub slow: Counts,
    /// Stable's.
    pub slow_stable: Counts,
    /// The slow thresholds for the next batch.
    pub thresholds: Option<Thresholds>,
}

/// One look's new evidence.
pub struct Batch<'a> {
    /// The canary's weighted outcomes.
    pub canary: Counts,
    /// Stable's.
    pub stable: Counts,
    /// The canary's weighted latency histogram.
    pub canary_latency: &'a [u64; BINS],
    /// Stable's.
    pub stable_latency: &'a [u64; BINS],
    /// Stable's weighted histogram so far, for the next thresholds.
    pub stable_so_far: &'a [u64; BINS],
    /// The canary's share of weighted traffic.
    pub share: f64,
}

impl Gate {
    /// Adds a batch.
    pub fn observe(&mut self, plan: &GatePlan, batch: &Batch<'_>) {
        let c = batch.canary;
        self.failures += c.failures as f64 * plan.fail_step + c.successes() as f64 * plan.pass_step;
        self.canary += c;
        self.stable += batch.stable;
        let Some(latency_plan) = plan.latency else {
            return;
        };
        let w = batch.share;
        if let Some(t) = self.thresholds
            && w > 0.0
            && w < 1.0
        {
            let slow = latency::at_least(batch.canary_latency, t.canary);
            let slow_stable = latency::at_least(batch.stable_latency, t.stable);
            self.slow += Counts {
                requests: batch.canary_latency.iter().sum(),
                failures: slow,
            };
            self.slow_stable += Counts {
                requests: batch.stable_latency.iter().sum(),
                failures: slow_stable,
            };
            let q = 2.0 * w / (2.0 * w + 1.0 - w);
            self.latency +=
                slow as f64 * (w / q).ln() + slow_stable as f64 * ((1.0 - w) / (1.0 - q)).ln();
        }
        self.thresholds = latency_plan.thresholds(batch.stable_so_far);
    }

    /// Whether the failures are shown under the threshold.
    pub fn failures_pass(&self, plan: &GatePlan) -> bool {
        self.failures >= plan.boundary
    }

    /// Whether the latency is shown within the margin, or not asked (trigger off, or no stable
    /// traffic to compare with at share `w`).
    pub fn latency_pass(&self, plan: &GatePlan, w: f64) -> bool {
        plan.latency.is_none() || w >= 1.0 || self.latency >= plan.boundary
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn plan() -> GatePlan {
        GatePlan::new(0.05, 0.99, None)
    }

    /// Canary requests failing at `rate` until the gate passes; the requests it took.
    fn until_pass(rate: f64, seed: u64, limit: u64) -> Option<u64> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let p = plan();
        let mut gate = Gate::default();
        let empty = [0; BINS];
        for i in 1..=limit {
            let failed = rng.random_bool(rate);
            gate.observe(
                &p,
                &Batch {
                    canary: Counts::new(u64::from(!failed), u64::from(failed)),
                    stable: Counts::default(),
                    canary_latency: &empty,
                    stable_latency: &empty,
                    stable_so_far: &empty,
                    share: 0.25,
                },
            );
            if gate.failures_pass(&p) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn a_spotless_canary_passes_at_a_known_count() {
        assert_eq!(until_pass(0.0, 0, 10_000), Some(178));
        assert!(plan().boundary > 4.6 && plan().boundary < 4.61);
    }

    #[test]
    fn a_canary_under_the_threshold_passes_and_one_above_rarely_does() {
        for seed in 0..20 {
            let at = until_pass(0.03, seed, 100_000);
            assert!(at.is_some_and(|n| n < 10_000), "seed {seed}: {at:?}");
        }
        // At the threshold itself, at most α of runs may ever pass.
        let passed = (0..200)
            .filter(|&s| until_pass(0.05, s, 20_000).is_some())
            .count();
        assert!(passed <= 6, "{passed} of 200");
    }

    #[test]
    fn latency_is_not_asked_without_the_trigger_or_without_stable() {
        let p = plan();
        assert!(Gate::default().latency_pass(&p, 0.25));
        let with = GatePlan::new(0.05, 0.99, Some(LatencyPlan::new(0.2, 0.99, 0.99)));
        assert!(!Gate::default().latency_pass(&with, 0.25));
        assert!(Gate::default().latency_pass(&with, 1.0));
    }
}
