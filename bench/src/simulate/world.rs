//! The simulated world: two colors at the same request rate, each request failing
//! independently with its color's probability (the canary's may change at a given time), and
//! the failures fed, in time order, to a rule.
//!
//! Requests are evenly spaced: the canary's `i`-th (from 1) at `i / rate` seconds, stable's
//! `j`-th (from 0) at `(j + 0.5) / rate`. Only failures are events: the successes between two
//! failures are counted, not simulated one by one (the gap before a failure is a geometric
//! draw), so a 7-day run at 10,000 requests a second costs one step per failure. A rule can only
//! become due at a canary failure (successes lower the statistics), so looking there is exact.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One run's setting.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Requests a second to each color.
    pub rate: f64,
    /// The canary's failure probability before `change_at`.
    pub canary_before: f64,
    /// After it.
    pub canary_after: f64,
    /// When the canary's failure probability changes, in seconds.
    pub change_at: f64,
    /// Stable's failure probability.
    pub stable: f64,
    /// Simulated time, in seconds.
    pub duration: f64,
    /// At most this many canary requests, whatever `duration` says (bounds a run's cost).
    pub max_requests: u64,
}

/// What a rule is told at each event.
pub trait Rule {
    /// Stable's request at position `j` (from 0) failed.
    fn stable_failed(&mut self, j: u64);
    /// The canary's request at position `i` (from 1) failed; `true` rolls back.
    fn canary_failed(&mut self, i: u64) -> bool;
}

/// When a run rolled back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rollback {
    /// Seconds after the change (negative: before it).
    pub seconds: f64,
    /// Canary requests after the change (0 if before it).
    pub requests: u64,
}

/// Failure positions of one color, drawn as geometric gaps.
struct Draws {
    rng: SmallRng,
    /// (position from which it holds, ln(1 − p), p), before and after the change.
    phases: [(u64, f64, f64); 2],
    /// The next failure's position.
    next: u64,
}

impl Draws {
    fn new(seed: u64, first: u64, before: f64, change: u64, after: f64) -> Draws {
        let phase = |from, p: f64| (from, (1.0 - p).ln(), p);
        let mut d = Draws {
            rng: SmallRng::seed_from_u64(seed),
            phases: [phase(first, before), phase(change.max(first), after)],
            next: first,
        };
        d.next = d.draw(first);
        d
    }

    /// The first failure at or after `from`.
    fn draw(&mut self, from: u64) -> u64 {
        let [(_, ln_before, p_before), (change, ln_after, p_after)] = self.phases;
        if from < change {
            let at = from.saturating_add(self.gap(ln_before, p_before));
            if at < change {
                return at;
            }
            // Memoryless: start over from the change with the new probability.
            return change.saturating_add(self.gap(ln_after, p_after));
        }
        from.saturating_add(self.gap(ln_after, p_after))
    }

    /// Successes before the next failure.
    fn gap(&mut self, ln_q: f64, p: f64) -> u64 {
        if p <= 0.0 {
            return u64::MAX / 2;
        }
        if p >= 1.0 {
            return 0;
        }
        let u: f64 = 1.0 - self.rng.random::<f64>();
        (u.ln() / ln_q) as u64
    }

    fn advance(&mut self) -> u64 {
        let at = self.next;
        self.next = self.draw(at + 1);
        at
    }
}

/// Runs `scenario` with seed `seed` against `rule`; the rollback, if there was one.
pub fn run(scenario: &Scenario, seed: u64, rule: &mut impl Rule) -> Option<Rollback> {
    let rate = scenario.rate;
    let change = (scenario.change_at * rate).ceil().max(1.0) as u64;
    let last = ((scenario.duration * rate).floor() as u64).min(scenario.max_requests);
    let mut canary = Draws::new(
        seed.wrapping_mul(2),
        1,
        scenario.canary_before,
        change,
        scenario.canary_after,
    );
    let mut stable = Draws::new(
        seed.wrapping_mul(2) + 1,
        0,
        scenario.stable,
        0,
        scenario.stable,
    );
    loop {
        let i = canary.next;
        if i > last {
            return None;
        }
        // Stable's request j comes at (j + 0.5) / rate: before the canary's i when j < i.
        while stable.next < i {
            rule.stable_failed(stable.advance());
        }
        canary.advance();
        if rule.canary_failed(i) {
            return Some(Rollback {
                seconds: (i as f64 - scenario.change_at * rate) / rate,
                requests: (i + 1).saturating_sub(change),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what it is told.
    #[derive(Default)]
    struct Count {
        canary: u64,
        stable: u64,
        canary_after: u64,
    }

    impl Rule for Count {
        fn stable_failed(&mut self, _: u64) {
            self.stable += 1;
        }
        fn canary_failed(&mut self, i: u64) -> bool {
            self.canary += 1;
            self.canary_after += u64::from(i >= 50_000);
            false
        }
    }

    #[test]
    fn failures_come_at_their_rates() {
        let scenario = Scenario {
            rate: 10.0,
            canary_before: 0.01,
            canary_after: 0.2,
            change_at: 5_000.0,
            stable: 0.05,
            duration: 10_000.0,
            max_requests: u64::MAX,
        };
        let mut count = Count::default();
        assert_eq!(run(&scenario, 7, &mut count), None);
        let sd = |n: f64, p: f64| (n * p * (1.0 - p)).sqrt();
        // 50,000 canary requests at 1 %, then 50,000 at 20 %; 100,000 stable at 5 %.
        let before = (count.canary - count.canary_after) as f64;
        assert!((before - 500.0).abs() < 5.0 * sd(5e4, 0.01), "{before}");
        let after = count.canary_after as f64;
        assert!((after - 10_000.0).abs() < 5.0 * sd(5e4, 0.2), "{after}");
        let stable = count.stable as f64;
        assert!((stable - 5_000.0).abs() < 5.0 * sd(1e5, 0.05), "{stable}");
    }
}
