//! The rollback verdict: a sequential test on the canary's weighted requests, with a stated
//! bound on false rollbacks however often it looks, plus a streak rule for total failures.
//!
//! Notation: `p0` = `rollback.max-error-rate`, `α` = 1 − `rollback.confidence`, `T` =
//! [`HORIZON`] (10^10 canary requests: over 11 days at 10,000 canary requests a second), `w` =
//! the canary's configured share of weighted traffic, `n` = `rollback.min-requests`.
//!
//! ## Three statistics
//!
//! 1. **Absolute** (is the canary above the threshold?): a Bernoulli CUSUM of the canary's
//!    outcomes, `S ← max(0, S + llr)`, testing `p0` against `p1 = min(2·p0, (1 + p0)/2)`:
//!    `+ln(p1/p0)` per failure (0.693 at 5 %), `ln((1−p1)/(1−p0))` per success (−0.054).
//!    Boundary `h = ln(2T/α)` (28.3 at the defaults).
//! 2. **Relative** (is it the canary's own fault, or one stable shares?): only failures, and
//!    which color each came from. If both colors fail alike, a failure is the canary's with
//!    probability `w`, whatever the common rate; a canary failing `r` times as often as stable
//!    makes it `q = r·w / (r·w + 1 − w)`. Two CUSUMs on that attribution, for `r` = 2 and 10
//!    ([`RATIOS`]), each with boundary `ln(4T/α)` (29.0).
//! 3. **Streak** (a total failure, at any traffic level): the canary's latest `n'` weighted
//!    requests all failed while stable's latest `m` succeeded. `n' = max(n, ⌈ln(α/4T)/ln p0⌉)`
//!    (20 at the defaults: it only grows for thresholds above about 25 %), and `m` is the least
//!    run with `max_p p^n' (1−p)^m ≤ α/4T` (22 at the defaults).
//!
//! Roll back when the streak rule holds, or when the absolute statistic is past its boundary,
//! the canary has had at least `n` requests in the test, and a relative one is past its
//! boundary too. With `w = 1` (no weighted stable traffic, so no alibi to ask for) the absolute
//! test and the streak alone decide, the latter without stable's run.
//!
//! ## Why the bounds hold
//!
//! A CUSUM alarms within `T` observations only if one of the `T` one-sided likelihood-ratio
//! tests started at each of them crosses `e^h`. Under the null each ratio is a non-negative
//! supermartingale of mean at most 1 (for a failure rate `p ≤ p0` the expected ratio per request,
//! `p·p1/p0 + (1−p)(1−p1)/(1−p0)`, is at most 1), so by Ville's inequality each crosses with
//! probability at most `e^−h`, and the CUSUM with at most `T·e^−h`. Hence:
//!
//! - **A canary failing at most `p0`** (independent failures) is rolled back within `T` weighted
//!   requests with probability at most `α/2` (absolute) `+ T·p0^n' ≤ α/4` (streak) `< α`,
//!   whatever stable does. At 0.8·`p0` the absolute bound is `T·e^−1.55h`, about 10^−9.
//! - **A canary failing no more often than stable** (a shared fault, at any level) is rolled
//!   back within `T` failures with probability at most `α/2` (relative; a ratio of `q` to `w` has
//!   mean 1 given the failure, since `w` is the chance of routing there) `+ α/4` (streak with
//!   stable's run: `p^n'(1−p)^m` per position at a common rate `p`) `< α`.
//!
//! The statistics see requests in batches (the data path looks at each canary failure and on a
//! timer; the fleet in buckets): a batch adds its summed log-likelihood ratio, which is the
//! CUSUM restricted to batch boundaries, never above the CUSUM of any order of the same
//! requests, so the bounds hold for every order. The data path puts a failure that triggers a
//! look after the requests that came before it, as they happened.
//!
//! ## Why not a window
//!
//! A CUSUM sits near 0 while the canary is healthy and climbs from there when it turns bad, so
//! a healthy day before a regression does not dilute it (a test that sums all evidence since
//! the start would have to climb back from far below 0). Expected requests to detect from 0 are
//! about `h / (p·ln(p1/p0) + (1−p)·ln((1−p1)/(1−p0)))`: 490 at 3 × a 5 % threshold, 1,370 at
//! 2 ×; a total failure takes `n'` requests through the streak rule.

use std::fmt::Write as _;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Canary requests over which the false-rollback bound is stated.
pub const HORIZON: f64 = 1e10;

/// The failure ratios (canary over stable) the relative test is tuned to: 2 catches a canary
/// failing about 1.4 times as often as stable or more; 10 is quicker for a fault of the canary
/// alone.
pub const RATIOS: [f64; 2] = [2.0, 10.0];

/// Requests and failures (also the form a replica's evidence takes on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests that got a response or definitely failed.
    pub requests: u64,
    /// Those of them that failed.
    pub failures: u64,
}

impl Counts {
    /// `successes` successes and `failures` failures.
    pub fn new(successes: u64, failures: u64) -> Counts {
        Counts {
            requests: successes + failures,
            failures,
        }
    }

    /// Failures over requests; 0 when there were none.
    pub fn failure_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }

    /// Requests that succeeded.
    pub fn successes(&self) -> u64 {
        self.requests - self.failures
    }

    /// What was added since `earlier` (counts only grow).
    pub fn since(&self, earlier: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            failures: self.failures.saturating_sub(earlier.failures),
        }
    }
}

impl Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            failures: self.failures + other.failures,
        }
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        *self = *self + other;
    }
}

/// The test's constants, derived once from the rollback policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// `p0`: `rollback.max-error-rate`.
    pub threshold: f64,
    /// `p1`: the failure rate the absolute test is tuned to detect.
    pub alternative: f64,
    /// Added to the absolute statistic per failure.
    fail_step: f64,
    /// Added per success (negative).
    pass_step: f64,
    /// `h`: the absolute statistic's boundary.
    pub boundary: f64,
    /// The relative statistics' boundary.
    pub relative_boundary: f64,
    /// `rollback.min-requests`: canary requests in the test before it may decide.
    pub min_requests: u64,
    /// `n'`: canary failures in a row that roll back at once.
    pub streak: u64,
    /// `m`: stable successes in a row that the streak rule asks of stable.
    pub stable_run: u64,
}

impl Plan {
    /// The plan for a threshold (a fraction), a confidence (a fraction, e.g. 0.99) and
    /// `rollback.min-requests`.
    pub fn new(max_error_rate: f64, confidence: f64, min_requests: u64) -> Plan {
        let alpha = (1.0 - confidence).clamp(1e-12, 0.5);
        let min_requests = min_requests.max(1);
        if max_error_rate >= 1.0 {
            // Nothing fails more than every request: a 100 % threshold never rolls back.
            return Plan {
                threshold: 1.0,
                alternative: 1.0,
                fail_step: 0.0,
                pass_step: 0.0,
                boundary: f64::INFINITY,
                relative_boundary: f64::INFINITY,
                min_requests,
                streak: u64::MAX,
                stable_run: u64::MAX,
            };
        }
        // A 0 % threshold is read as "any failure rate at all", i.e. a tiny one.
        let p0 = max_error_rate.max(1e-6);
        let p1 = (2.0 * p0).min((1.0 + p0) / 2.0);
        // The streak's share of the budget, on the log scale: ln(α / 4T).
        let budget = (alpha / (4.0 * HORIZON)).ln();
        let streak = min_requests.max((budget / p0.ln()).ceil() as u64);
        Plan {
            threshold: p0,
            alternative: p1,
            fail_step: (p1 / p0).ln(),
            pass_step: ((1.0 - p1) / (1.0 - p0)).ln(),
            boundary: (2.0 * HORIZON / alpha).ln(),
            relative_boundary: (2.0 * RATIOS.len() as f64 * HORIZON / alpha).ln(),
            min_requests,
            streak,
            stable_run: stable_run(streak, budget),
        }
    }

    /// Whether this plan can ever roll back.
    pub fn can_roll_back(&self) -> bool {
        self.boundary.is_finite()
    }
}

/// The least `m` with `max_p p^n (1−p)^m ≤ e^budget`: the maximum is at `p = n/(n+m)`.
fn stable_run(n: u64, budget: f64) -> u64 {
    let n = n as f64;
    (1..1_000_000u64)
        .find(|&m| {
            let m = m as f64;
            n * (n / (n + m)).ln() + m * (m / (n + m)).ln() <= budget
        })
        .unwrap_or(1_000_000)
}

/// The test's state: the statistics and the counts behind them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Test {
    /// The absolute CUSUM.
    pub absolute: f64,
    /// The relative CUSUMs, one per [`RATIOS`] entry.
    pub relative: [f64; 2],
    /// The canary's weighted requests since the test began.
    pub judged: Counts,
    /// Stable's weighted requests since the test began.
    pub stable: Counts,
    /// The canary's requests since the absolute statistic last left 0: the stretch the
    /// statistic is about.
    pub run: Counts,
    /// Stable's requests over the same stretch.
    pub run_stable: Counts,
    /// The relative statistics' steps (per canary failure, per stable failure) for each ratio,
    /// at the canary share they were computed for: logarithms, so computed once per share.
    steps: (f64, [(f64, f64); 2]),
}

impl Test {
    /// Adds a batch: the canary's and stable's weighted outcomes since the last look, with the
    /// canary's configured share of weighted traffic `canary_share` (0 to 1).
    pub fn observe(&mut self, plan: &Plan, canary: Counts, stable: Counts, canary_share: f64) {
        if self.absolute == 0.0 {
            self.run = Counts::default();
            self.run_stable = Counts::default();
        }
        let step =
            canary.failures as f64 * plan.fail_step + canary.successes() as f64 * plan.pass_step;
        self.absolute = (self.absolute + step).max(0.0);
        self.run += canary;
        self.run_stable += stable;
        self.judged += canary;
        self.stable += stable;
        let w = canary_share;
        if w > 0.0 && w < 1.0 && canary.failures + stable.failures > 0 {
            if self.steps.0 != w {
                self.steps = (w, RATIOS.map(|r| relative_steps(r, w)));
            }
            for (statistic, (c, s)) in self.relative.iter_mut().zip(self.steps.1) {
                let step = canary.failures as f64 * c + stable.failures as f64 * s;
                *statistic = (*statistic + step).max(0.0);
            }
        }
    }

    /// The larger relative statistic.
    pub fn relative(&self) -> f64 {
        self.relative[0].max(self.relative[1])
    }
}

/// The relative test's log-likelihood ratio for a canary failure and for a stable failure,
/// for a canary failing `r` times as often as stable at canary share `w`: a failure is the
/// canary's with probability `w` under the null and `q = r·w / (r·w + 1 − w)` if it is worse.
pub(crate) fn relative_steps(r: f64, w: f64) -> (f64, f64) {
    let q = r * w / (r * w + 1.0 - w);
    ((q / w).ln(), ((1.0 - q) / (1.0 - w)).ln())
}

/// Failures and successes in a row, up to each color's latest weighted request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaks {
    /// The canary's failures in a row.
    pub canary: u64,
    /// Stable's successes in a row.
    pub stable: u64,
}

/// What the test concluded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Nothing shows the canary above the threshold.
    Healthy,
    /// The canary fails above the threshold, stable fails too, and the canary is not clearly
    /// worse: held as a fault they share.
    SharedFault,
    /// The canary fails above the threshold and stable has not yet shown it is clearly
    /// healthier: held while the comparison gathers evidence.
    Comparing,
    /// Roll back; the figures say why.
    RollBack(Evidence),
}

/// The figures behind a rollback, for its log line, `/status` and the ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    /// Whether the streak rule decided (otherwise the sequential test did).
    pub streak: bool,
    /// The streaks at the time.
    pub streaks: Streaks,
    /// The absolute statistic at the time.
    pub statistic: f64,
    /// The boundary.
    pub boundary: f64,
    /// The threshold, a fraction.
    pub threshold: f64,
    /// The canary's requests since its statistic last left 0.
    pub run: Counts,
    /// Stable's requests over the same stretch.
    pub run_stable: Counts,
    /// Whether stable had no weighted traffic to compare with (`w = 1`).
    pub threshold_only: bool,
}

/// Applies the rules to the test's state, the streaks, and the canary's share of weighted
/// traffic.
pub fn decide(plan: &Plan, test: &Test, streaks: Streaks, canary_share: f64) -> Verdict {
    let threshold_only = canary_share >= 1.0;
    let evidence = |streak| {
        Verdict::RollBack(Evidence {
            streak,
            streaks,
            statistic: test.absolute,
            boundary: plan.boundary,
            threshold: plan.threshold,
            run: test.run,
            run_stable: test.run_stable,
            threshold_only,
        })
    };
    if streaks.canary >= plan.streak && (threshold_only || streaks.stable >= plan.stable_run) {
        return evidence(true);
    }
    if test.absolute < plan.boundary || test.judged.requests < plan.min_requests {
        return Verdict::Healthy;
    }
    if threshold_only || test.relative() >= plan.relative_boundary {
        evidence(false)
    } else if test.run_stable.failures > 0 {
        Verdict::SharedFault
    } else {
        Verdict::Comparing
    }
}

impl Evidence {
    /// The rollback's reason, in a sentence with the figures.
    pub fn reason(&self) -> String {
        let pct = |c: Counts| 100.0 * c.failure_rate();
        let threshold = 100.0 * self.threshold;
        let mut reason = if self.streak {
            format!(
                "canary failed its last {} requests in a row, above the {threshold}% threshold",
                self.streaks.canary
            )
        } else {
            let run = self.run;
            format!(
                "canary failed {} of {} requests ({:.1}%) since its failures rose, above the \
                 {threshold}% threshold beyond chance (sequential test {:.1} of {:.1})",
                run.failures,
                run.requests,
                pct(run),
                self.statistic,
                self.boundary
            )
        };
        if self.threshold_only {
            reason.push_str("; stable had no weighted traffic to compare with");
        } else if self.streak {
            let _ = write!(
                reason,
                "; stable's last {} requests succeeded",
                self.streaks.stable
            );
        } else {
            let stable = self.run_stable;
            let _ = write!(
                reason,
                "; stable failed {} of {} ({:.1}%) meanwhile",
                stable.failures,
                stable.requests,
                pct(stable)
            );
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new(0.05, 0.99, 20)
    }

    #[test]
    fn the_default_plan() {
        let p = plan();
        assert!((p.boundary - 28.32).abs() < 0.01, "{p:?}");
        assert!((p.relative_boundary - 29.02).abs() < 0.01, "{p:?}");
        assert_eq!((p.streak, p.stable_run), (20, 22));
        assert!((p.alternative - 0.10).abs() < 1e-12);
        // A high threshold needs a longer streak to keep the bound.
        assert_eq!(Plan::new(0.5, 0.99, 20).streak, 42);
        assert!(!Plan::new(1.0, 0.99, 20).can_roll_back());
    }

    #[test]
    fn the_bound_at_the_threshold_is_exactly_one() {
        // E[exp(llr)] = 1 at p0, < 1 below it: the supermartingale the bound rests on.
        for p0 in [0.001, 0.01, 0.05, 0.2, 0.6] {
            let p = Plan::new(p0, 0.99, 20);
            let mean = |rate: f64| rate * p.fail_step.exp() + (1.0 - rate) * p.pass_step.exp();
            assert!((mean(p0) - 1.0).abs() < 1e-12, "{p0}");
            assert!(mean(0.8 * p0) < 1.0, "{p0}");
        }
    }

    #[test]
    fn a_total_failure_trips_the_streak_at_n() {
        let p = plan();
        let mut t = Test::default();
        for i in 1..=20u64 {
            t.observe(&p, Counts::new(0, 1), Counts::new(2, 0), 0.5);
            let v = decide(
                &p,
                &t,
                Streaks {
                    canary: i,
                    stable: 1000,
                },
                0.5,
            );
            assert_eq!(
                matches!(v, Verdict::RollBack(e) if e.streak),
                i == 20,
                "{i}: {v:?}"
            );
        }
        // Not while stable fails too.
        let v = decide(
            &p,
            &t,
            Streaks {
                canary: 20,
                stable: 3,
            },
            0.5,
        );
        assert!(!matches!(v, Verdict::RollBack(_)), "{v:?}");
        // At weight 100 there is no stable to ask.
        let v = decide(
            &p,
            &t,
            Streaks {
                canary: 20,
                stable: 0,
            },
            1.0,
        );
        assert!(
            matches!(v, Verdict::RollBack(e) if e.threshold_only),
            "{v:?}"
        );
    }

    #[test]
    fn a_bad_canary_against_a_healthy_stable_is_rolled_back_by_the_test() {
        let p = plan();
        let mut t = Test::default();
        let mut at = None;
        // 30 % failing, stable spotless, one look per 10 canary requests.
        for look in 1..=200u64 {
            t.observe(&p, Counts::new(7, 3), Counts::new(10, 0), 0.5);
            if matches!(
                decide(&p, &t, Streaks::default(), 0.5),
                Verdict::RollBack(_)
            ) {
                at = Some(look * 10);
                break;
            }
        }
        let at = at.expect("rolled back");
        assert!((100..=400).contains(&at), "{at}");
        let Verdict::RollBack(e) = decide(&p, &t, Streaks::default(), 0.5) else {
            unreachable!()
        };
        assert!(e.reason().starts_with("canary failed "), "{}", e.reason());
        assert!(e.reason().contains("stable failed 0 of"), "{}", e.reason());
    }

    #[test]
    fn a_fault_both_colors_share_is_held() {
        let p = plan();
        let mut t = Test::default();
        for _ in 0..10_000 {
            // Both at 20 %, in the ratio of their traffic.
            t.observe(&p, Counts::new(4, 1), Counts::new(4, 1), 0.5);
        }
        assert!(t.absolute > p.boundary);
        assert_eq!(
            decide(&p, &t, Streaks::default(), 0.5),
            Verdict::SharedFault
        );
    }

    /// Requests of both colors at weight 50 until a rollback, one look per canary failure;
    /// the canary requests it took.
    fn until_rolled_back(canary: f64, stable: f64, seed: u64, limit: u64) -> Option<u64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let p = plan();
        let mut t = Test::default();
        let (mut before, mut stable_batch) = (Counts::default(), Counts::default());
        for i in 1..=limit {
            stable_batch += Counts::new(1, 0);
            if rng.random_bool(stable) {
                stable_batch = Counts::new(stable_batch.successes() - 1, stable_batch.failures + 1);
            }
            if !rng.random_bool(canary) {
                before += Counts::new(1, 0);
                continue;
            }
            t.observe(&p, before, stable_batch, 0.5);
            t.observe(&p, Counts::new(0, 1), Counts::default(), 0.5);
            (before, stable_batch) = (Counts::default(), Counts::default());
            if matches!(
                decide(&p, &t, Streaks::default(), 0.5),
                Verdict::RollBack(_)
            ) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn a_canary_clearly_worse_than_a_failing_stable_is_rolled_back() {
        for seed in 0..5 {
            // 30 % against 20 %: 1.5 times as often, beyond the ratio-2 test's break-even.
            let at = until_rolled_back(0.30, 0.20, seed, 100_000);
            assert!(at.is_some(), "seed {seed}");
            // 20 % against 20 %: shared.
            assert_eq!(
                until_rolled_back(0.20, 0.20, seed, 100_000),
                None,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn a_healthy_stretch_does_not_dilute_a_later_failure() {
        let p = plan();
        let mut t = Test::default();
        t.observe(
            &p,
            Counts::new(10_000_000, 100_000),
            Counts::new(10_000_000, 0),
            0.5,
        );
        assert_eq!(t.absolute, 0.0);
        let mut requests = 0;
        while !matches!(
            decide(&p, &t, Streaks::default(), 0.5),
            Verdict::RollBack(_)
        ) {
            t.observe(&p, Counts::new(1, 1), Counts::new(2, 0), 0.5);
            requests += 2;
            assert!(requests < 1000);
        }
        // 50 % failing: about h / (0.5·0.693 − 0.5·0.054) = 89 requests.
        assert!((60..=120).contains(&requests), "{requests}");
    }

    #[test]
    fn no_rate_verdict_below_min_requests() {
        let p = Plan::new(0.05, 0.99, 500);
        let mut t = Test::default();
        t.observe(&p, Counts::new(0, 60), Counts::new(60, 0), 0.5);
        assert!(t.absolute > p.boundary);
        assert_eq!(decide(&p, &t, Streaks::default(), 0.5), Verdict::Healthy);
    }
}
