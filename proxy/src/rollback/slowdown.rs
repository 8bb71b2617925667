//! The latency trigger: rolls the canary back when its latency is worse than stable's by more
//! than `rollback.max-latency-increase` (`δ`) at the tail `rollback.latency-quantile` (`q`)
//! sets, beyond chance, with the same kind of bound as the failure test.
//!
//! ## The test
//!
//! The null hypothesis is that the canary is no slower than stable by more than the margin:
//! for every latency `t`, `P(canary ≥ (1+δ)·t) ≤ P(stable ≥ t)`. Pick a stable threshold `t`
//! (a histogram bin edge near stable's `q` quantile, from the requests seen *before* the
//! batch it is used on, so the choice is predictable) and a canary threshold `c ≥ (1+δ)·t`
//! (the next bin edge). Call a canary request at least `c` long, or a stable one at least `t`
//! long, *slow*. Given a weighted request is slow, it is the canary's with probability
//! `w·P(canary ≥ c) / (w·P(canary ≥ c) + (1−w)·P(stable ≥ t))`, at most `w` under the null,
//! whatever stable's distribution is and however it drifts. That is the failure test's
//! relative question with "slow" for "failed" (Lindon and Malek's counting-process tests,
//! which Netflix ran on play delay, are the rigorous version of the same idea), so the same
//! two CUSUMs ([`RATIOS`]) on the attribution of slow requests apply, and Ville's inequality
//! bounds a false alarm within `T` slow requests by `2·T·e^−h` for each. The boundary is
//! `h = ln(16T/α)` (30.4 at the defaults), a quarter of `α` for the latency trigger, so a
//! canary good on both counts is falsely rolled back with probability at most
//! `α/2 + α/4` (failures, streak) `+ α/4` (latency) `= α`.
//!
//! Measured on the upstream exchange (time from the request sent to the response headers), so
//! a slow client does not count; only weighted requests are evidence.
//!
//! ## Bins
//!
//! `t` is the upper edge of the bin holding stable's `q` quantile (stable is at least `t` long
//! at most `1 − q` of the time), and `c` the first bin edge at or above `(1+δ)·t`. Bins are
//! at most 4.4 % wide, so the margin tested, `c/t − 1`, is the one asked or up to a bin more;
//! never less, so the bound holds.

use std::fmt;

use crate::rollback::latency::{self, BINS};
use crate::rollback::sequential::{Counts, HORIZON, RATIOS, relative_steps};

/// Stable's weighted requests needed per unit of `1 − q` before a quantile is trusted as a
/// threshold: ten requests beyond it.
const TAIL_SAMPLES: f64 = 10.0;

/// The trigger's constants, derived once from the rollback policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyPlan {
    /// `δ`: `rollback.max-latency-increase`, a fraction.
    pub margin: f64,
    /// `q`: `rollback.latency-quantile`.
    pub quantile: f64,
    /// `h`: the CUSUMs' boundary.
    pub boundary: f64,
}

impl LatencyPlan {
    /// The plan for a margin (0.2 for 20 %), a quantile and a confidence (0.99).
    pub fn new(margin: f64, quantile: f64, confidence: f64) -> LatencyPlan {
        let alpha = (1.0 - confidence).clamp(1e-12, 0.5);
        LatencyPlan {
            margin,
            quantile,
            boundary: (16.0 * HORIZON / alpha).ln(),
        }
    }

    /// The slow thresholds for the next batch, from stable's weighted histogram so far; `None`
    /// until stable has enough requests beyond the quantile.
    pub fn thresholds(&self, stable: &[u64; BINS]) -> Option<Thresholds> {
        let total: u64 = stable.iter().sum();
        if (total as f64) < TAIL_SAMPLES / (1.0 - self.quantile) {
            return None;
        }
        let s = latency::quantile_bin(stable, self.quantile)? + 1;
        let wanted = (1.0 + self.margin) * latency::floor_us(s);
        let c = (s + 1..BINS).find(|&c| latency::floor_us(c) >= wanted - 1e-9)?;
        Some(Thresholds {
            stable: s,
            canary: c,
        })
    }
}

/// Where a weighted request counts as slow: at or beyond these bins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Stable's bin.
    pub stable: usize,
    /// The canary's bin: its edge is at least `1 + δ` times stable's.
    pub canary: usize,
}

impl Thresholds {
    /// The margin actually tested: the canary's edge over stable's.
    pub fn ratio(&self) -> f64 {
        latency::floor_us(self.canary) / latency::floor_us(self.stable)
    }

    /// Stable's threshold, in milliseconds.
    pub fn stable_ms(&self) -> f64 {
        latency::floor_us(self.stable) / 1000.0
    }

    /// The canary's threshold, in milliseconds.
    pub fn canary_ms(&self) -> f64 {
        latency::floor_us(self.canary) / 1000.0
    }
}

/// The trigger's state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlowTest {
    /// The CUSUMs on the attribution of slow requests, one per [`RATIOS`] entry.
    pub relative: [f64; 2],
    /// The thresholds the next batch is judged by.
    pub thresholds: Option<Thresholds>,
    /// The canary's requests (and, as `failures`, the slow ones) since the statistic last
    /// left 0.
    pub run: Counts,
    /// Stable's over the same stretch.
    pub run_stable: Counts,
    /// The steps per canary and per stable slow request, at the share they were computed for.
    steps: (f64, [(f64, f64); 2]),
}

impl SlowTest {
    /// Adds a batch: each color's weighted latency histogram since the last look, and stable's
    /// whole weighted histogram so far (for the next batch's thresholds), at canary share `w`.
    pub fn observe(
        &mut self,
        plan: &LatencyPlan,
        canary: &[u64; BINS],
        stable: &[u64; BINS],
        stable_so_far: &[u64; BINS],
        w: f64,
    ) {
        if let Some(t) = self.thresholds
            && w > 0.0
            && w < 1.0
        {
            let slow = Counts {
                requests: canary.iter().sum(),
                failures: latency::at_least(canary, t.canary),
            };
            let slow_stable = Counts {
                requests: stable.iter().sum(),
                failures: latency::at_least(stable, t.stable),
            };
            if self.relative() == 0.0 {
                self.run = Counts::default();
                self.run_stable = Counts::default();
            }
            self.run += slow;
            self.run_stable += slow_stable;
            if slow.failures + slow_stable.failures > 0 {
                if self.steps.0 != w {
                    self.steps = (w, RATIOS.map(|r| relative_steps(r, w)));
                }
                for (statistic, (c, s)) in self.relative.iter_mut().zip(self.steps.1) {
                    let step = slow.failures as f64 * c + slow_stable.failures as f64 * s;
                    *statistic = (*statistic + step).max(0.0);
                }
            }
        }
        self.thresholds = plan.thresholds(stable_so_far);
    }

    /// The larger statistic.
    pub fn relative(&self) -> f64 {
        self.relative[0].max(self.relative[1])
    }

    /// The evidence for a rollback, when the test is past its boundary.
    pub fn decide(&self, plan: &LatencyPlan) -> Option<SlowEvidence> {
        (self.relative() >= plan.boundary).then(|| SlowEvidence {
            statistic: self.relative(),
            boundary: plan.boundary,
            margin: plan.margin,
            thresholds: self.thresholds,
            run: self.run,
            run_stable: self.run_stable,
        })
    }
}

/// The figures behind a latency rollback.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowEvidence {
    /// The statistic at the time.
    pub statistic: f64,
    /// Its boundary.
    pub boundary: f64,
    /// `δ`.
    pub margin: f64,
    /// The thresholds in use.
    pub thresholds: Option<Thresholds>,
    /// The canary's requests and slow requests since the statistic last left 0.
    pub run: Counts,
    /// Stable's over the same stretch.
    pub run_stable: Counts,
}

impl fmt::Display for SlowEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |c: Counts| 100.0 * c.failure_rate();
        write!(
            f,
            "canary slower than stable by more than {:.0}% beyond chance: {} of {} canary \
             requests ({:.2}%)",
            100.0 * self.margin,
            self.run.failures,
            self.run.requests,
            pct(self.run),
        )?;
        if let Some(t) = self.thresholds {
            write!(f, " took {:.1} ms or more", t.canary_ms())?;
        }
        write!(
            f,
            " against {} of {} stable requests ({:.2}%)",
            self.run_stable.failures,
            self.run_stable.requests,
            pct(self.run_stable),
        )?;
        if let Some(t) = self.thresholds {
            write!(f, " taking {:.1} ms or more", t.stable_ms())?;
        }
        write!(
            f,
            " (latency test {:.1} of {:.1})",
            self.statistic, self.boundary
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{Rng, SeedableRng};

    use super::*;

    fn plan() -> LatencyPlan {
        LatencyPlan::new(0.2, 0.99, 0.99)
    }

    /// A histogram of `n` draws of a log-normal latency of median 10 ms and log-spread
    /// `sigma`, times `scale`.
    fn draws(rng: &mut impl Rng, n: u64, sigma: f64, scale: f64) -> [u64; BINS] {
        let mut bins = [0; BINS];
        for _ in 0..n {
            // Sum of uniforms: a rough normal, enough for a tail.
            let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            let ms = 10.0 * (sigma * z).exp() * scale;
            bins[latency::bin(Duration::from_secs_f64(ms / 1000.0))] += 1;
        }
        bins
    }

    /// Batches of 100 requests at share `w`, latencies of log-spread `sigma`, the canary's
    /// times `scale`; the requests until a rollback, if any.
    fn run(sigma: f64, scale: f64, w: f64, seed: u64, limit: u64) -> Option<u64> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let p = plan();
        let mut test = SlowTest::default();
        let mut stable_so_far = [0; BINS];
        let mut requests = 0;
        while requests < limit {
            let canary_n = (0..100).filter(|_| rng.random_bool(w)).count() as u64;
            let canary = draws(&mut rng, canary_n, sigma, scale);
            let stable = draws(&mut rng, 100 - canary_n, sigma, 1.0);
            for (s, b) in stable_so_far.iter_mut().zip(&stable) {
                *s += b;
            }
            test.observe(&p, &canary, &stable, &stable_so_far, w);
            requests += 100;
            if test.decide(&p).is_some() {
                return Some(requests);
            }
        }
        None
    }

    #[test]
    fn the_thresholds_sit_above_the_quantile_and_keep_the_margin() {
        let p = plan();
        let mut bins = [0; BINS];
        assert_eq!(p.thresholds(&bins), None);
        bins[latency::bin(Duration::from_millis(10))] = 5_000;
        let t = p.thresholds(&bins).unwrap();
        // Stable is never at or above its threshold here: all of it is in the bin below.
        assert_eq!(latency::at_least(&bins, t.stable), 0);
        assert!(t.stable_ms() > 10.0 && t.stable_ms() < 10.5, "{t:?}");
        // Never below the margin asked for, and at most a bin above it.
        for margin in [0.05, 0.1, 0.2, 0.3, 0.33, 0.7, 1.0] {
            let t = LatencyPlan::new(margin, 0.99, 0.99)
                .thresholds(&bins)
                .unwrap();
            assert!(t.ratio() >= 1.0 + margin - 1e-9, "{margin}: {t:?}");
            assert!(t.ratio() <= (1.0 + margin) * 1.07, "{margin}: {t:?}");
        }
    }

    #[test]
    fn a_canary_as_fast_as_stable_is_not_rolled_back() {
        for seed in 0..5 {
            assert_eq!(run(0.4, 1.0, 0.25, seed, 300_000), None, "seed {seed}");
            // Slower, but within the margin.
            assert_eq!(run(0.4, 1.1, 0.25, seed, 300_000), None, "seed {seed}");
            assert_eq!(run(0.05, 1.1, 0.25, seed, 300_000), None, "seed {seed}");
        }
    }

    #[test]
    fn a_canary_30_percent_slower_is_rolled_back() {
        for seed in 0..5 {
            // A tight latency (a spread of 5 %): every slower canary request shows, once
            // stable has the 1,000 requests its p99 needs.
            let at = run(0.05, 1.3, 0.25, seed, 100_000);
            assert!(at.is_some_and(|n| n < 5_000), "seed {seed}: {at:?}");
            // A wide one (40 %): 30 % slower moves the tail beyond the margin only a little,
            // and the test needs many more requests to tell.
            let at = run(0.4, 1.3, 0.25, seed, 1_000_000);
            assert!(at.is_some_and(|n| n < 500_000), "seed {seed}: {at:?}");
        }
        let at = run(0.4, 2.0, 0.25, 0, 100_000).unwrap();
        assert!(at < 10_000, "{at}");
    }

    #[test]
    fn the_reason_has_the_figures() {
        let e = SlowEvidence {
            statistic: 31.0,
            boundary: 30.4,
            margin: 0.2,
            thresholds: Some(Thresholds {
                stable: latency::bin(Duration::from_micros(10_240)),
                canary: latency::bin(Duration::from_micros(12_288)),
            }),
            run: Counts::new(900, 100),
            run_stable: Counts::new(2990, 10),
        };
        let reason = e.to_string();
        assert!(reason.starts_with("canary slower than stable by more than 20%"));
        assert!(reason.contains("100 of 1000 canary requests (10.00%) took 12.3 ms or more"));
        assert!(reason.contains("(latency test 31.0 of 30.4)"), "{reason}");
    }
}
