//! One canary's judge: feeds the [`Tally`]'s new weighted outcomes to the sequential
//! [`Test`] and keeps its latest [`Verdict`]. It looks at every canary failure (from the
//! request that failed) and on the runtime's timer.
//!
//! A look takes a `Mutex`, but only with `try_lock` from the request path: a failure that finds
//! another look under way leaves its outcome to the next look, which reads the same counters.
//! Successes never look.
//!
//! The latency trigger ([`slowdown`](crate::rollback::slowdown)) looks on the timer only,
//! under a lock of its own: a slow response is no reason to hurry.

use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::config::Color;
use crate::rollback::latency::BINS;
use crate::rollback::sequential::{self, Counts, Plan, Test, Verdict};
use crate::rollback::slowdown::{LatencyPlan, SlowEvidence, SlowTest};
use crate::rollback::tally::{Tally, bins_since};

/// The state of one canary's test.
pub struct Judge {
    state: Mutex<State>,
    /// The latency trigger's state, apart: it is looked at on the timer only.
    slow: Mutex<Slow>,
}

/// A weighted latency histogram per color.
type PerColor = [[u64; BINS]; 2];

/// The latency trigger's state.
#[derive(Default)]
struct Slow {
    /// The test.
    test: SlowTest,
    /// Each color's weighted latency histograms at the trigger's first look (stable's
    /// requests since then set the thresholds) and at the last look (the next batch starts
    /// there); none before the first look.
    seen: Option<(PerColor, PerColor)>,
}

struct State {
    /// The statistics.
    test: Test,
    /// Each color's weighted counts at the last look: the next batch starts there.
    seen: [Counts; 2],
    /// The verdict of the last look.
    verdict: Verdict,
}

/// What a look needs besides the judge.
#[derive(Clone, Copy)]
pub struct Look<'a> {
    /// Where the outcomes are.
    pub tally: &'a Tally,
    /// The test's constants.
    pub plan: &'a Plan,
    /// Which color is the canary.
    pub canary: Color,
    /// The canary's configured share of weighted traffic, 0 to 1.
    pub share: f64,
    /// Whether only the streak rule may roll back here: in a fleet the rate test is the
    /// fleet judge's, on everyone's evidence.
    pub streak_only: bool,
}

impl Judge {
    /// A judge whose test starts from `tally`'s counts as they are now.
    pub fn starting_now(tally: &Tally) -> Judge {
        Judge::starting_at(Color::ALL.map(|c| tally.weighted(c)))
    }

    /// A judge whose test starts from `seen` (per color).
    pub fn starting_at(seen: [Counts; 2]) -> Judge {
        Judge {
            state: Mutex::new(State {
                test: Test::default(),
                seen,
                verdict: Verdict::Healthy,
            }),
            slow: Mutex::default(),
        }
    }

    /// A look right after a canary failure was counted, from the request path; `None` when
    /// another look is under way (it, or the next, takes this failure in).
    pub fn after_failure(&self, look: Look<'_>) -> Option<Verdict> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        Some(state.look(look, true))
    }

    /// A look from the timer: takes in the successes (and stable's failures) since the last.
    pub fn tick(&self, look: Look<'_>) -> Verdict {
        self.lock().look(look, false)
    }

    /// The test's state and the last verdict, for `/status`.
    pub fn state(&self) -> (Test, Verdict) {
        let state = self.lock();
        (state.test, state.verdict)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A look of the latency trigger, from the timer: the evidence for a rollback, if the
    /// canary is slower than stable beyond the margin and beyond chance.
    pub fn tick_latency(&self, look: Look<'_>, plan: &LatencyPlan) -> Option<SlowEvidence> {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        let now = Color::ALL.map(|c| look.tally.weighted_latency(c));
        let (base, seen) = slow.seen.unwrap_or((now, now));
        slow.seen = Some((base, now));
        let (c, s) = (look.canary.index(), look.canary.other().index());
        let canary = bins_since(&now[c], &seen[c]);
        let stable = bins_since(&now[s], &seen[s]);
        let stable_so_far = bins_since(&now[s], &base[s]);
        slow.test
            .observe(plan, &canary, &stable, &stable_so_far, look.share);
        slow.test.decide(plan)
    }

    /// The latency trigger's state, for `/status`.
    pub fn latency_state(&self) -> SlowTest {
        self.slow.lock().unwrap_or_else(|p| p.into_inner()).test
    }
}

impl State {
    fn look(&mut self, look: Look<'_>, after_failure: bool) -> Verdict {
        let stable = look.canary.other();
        let now = Color::ALL.map(|c| look.tally.weighted(c));
        let mut canary = now[look.canary.index()].since(self.seen[look.canary.index()]);
        let stable_batch = now[stable.index()].since(self.seen[stable.index()]);
        self.seen = now;
        if after_failure && canary.failures > 0 {
            // What came before the failure that called, then the failure itself, in that order.
            canary = Counts {
                requests: canary.requests - 1,
                failures: canary.failures - 1,
            };
            self.test
                .observe(look.plan, canary, stable_batch, look.share);
            self.test
                .observe(look.plan, Counts::new(0, 1), Counts::default(), look.share);
        } else {
            self.test
                .observe(look.plan, canary, stable_batch, look.share);
        }
        let verdict = sequential::decide(
            look.plan,
            &self.test,
            look.tally.streaks(look.canary),
            look.share,
        );
        self.verdict = match verdict {
            Verdict::RollBack(e) if look.streak_only && !e.streak => Verdict::Healthy,
            Verdict::SharedFault | Verdict::Comparing if look.streak_only => Verdict::Healthy,
            verdict => verdict,
        };
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollback::tally::Evidence;

    /// The default plan (5 %, 99 %, 20).
    fn plan() -> Plan {
        Plan::new(0.05, 0.99, 20)
    }

    /// A look at green as the canary with `share` of the weighted traffic.
    fn look<'a>(tally: &'a Tally, plan: &'a Plan, share: f64) -> Look<'a> {
        Look {
            tally,
            plan,
            canary: Color::Green,
            share,
            streak_only: false,
        }
    }

    #[test]
    fn a_failure_after_successes_counts_in_order() {
        let tally = Tally::new();
        let judge = Judge::starting_now(&tally);
        let plan = plan();
        let look = look(&tally, &plan, 0.5);
        for _ in 0..50 {
            tally.record(Color::Green, Evidence::Weighted, false, None);
        }
        tally.record(Color::Green, Evidence::Weighted, true, None);
        judge.after_failure(look).unwrap();
        // The successes took the statistic to 0, then the failure added ln 2.
        let (test, verdict) = judge.state();
        assert!((test.absolute - 2f64.ln()).abs() < 1e-9, "{test:?}");
        assert_eq!(test.judged, Counts::new(50, 1));
        assert_eq!(verdict, Verdict::Healthy);
    }

    #[test]
    fn a_dead_canary_is_judged_at_its_twentieth_failure() {
        let tally = Tally::new();
        for _ in 0..100 {
            tally.record(Color::Blue, Evidence::Weighted, false, None);
        }
        let judge = Judge::starting_now(&tally);
        let plan = plan();
        let look = look(&tally, &plan, 0.05);
        for i in 1..=20 {
            tally.record(Color::Green, Evidence::Weighted, true, None);
            let v = judge.after_failure(look).unwrap();
            assert_eq!(
                matches!(v, Verdict::RollBack(e) if e.streak),
                i == 20,
                "{i}: {v:?}"
            );
        }
    }

    #[test]
    fn forced_failures_are_not_evidence() {
        let tally = Tally::new();
        let judge = Judge::starting_now(&tally);
        let plan = plan();
        let look = look(&tally, &plan, 0.0);
        for _ in 0..1000 {
            tally.record(Color::Green, Evidence::Forced, true, None);
            judge.tick(look);
        }
        assert_eq!(judge.state(), (Test::default(), Verdict::Healthy));
    }

    #[test]
    fn in_a_fleet_only_the_streak_rolls_back_locally() {
        let tally = Tally::new();
        let judge = Judge::starting_now(&tally);
        let plan = Plan::new(0.05, 0.99, 20);
        let look = Look {
            tally: &tally,
            plan: &plan,
            canary: Color::Green,
            share: 0.5,
            streak_only: true,
        };
        // 30 % failing, far past the rate test's boundary, but never 20 in a row.
        for i in 0..2000 {
            tally.record(Color::Blue, Evidence::Weighted, false, None);
            tally.record(Color::Green, Evidence::Weighted, i % 10 < 3, None);
            assert_eq!(judge.tick(look), Verdict::Healthy, "{i}");
        }
        assert!(judge.state().0.absolute > plan.boundary);
        for _ in 0..20 {
            tally.record(Color::Green, Evidence::Weighted, true, None);
        }
        assert!(matches!(judge.tick(look), Verdict::RollBack(e) if e.streak));
    }
}
