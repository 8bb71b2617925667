//! The two rules the simulation compares, each fed exactly what the data path would give it.
//!
//! - [`Sequential`]: canary-proxy's verdict, the pure code of `canary_proxy::rollback`, looked
//!   at on every canary failure as the judge does (what came before the failure, then the
//!   failure), with the streaks the tally would hold.
//! - [`Windowed`]: the rule it replaced, kept here only to measure against: a 99 % one-sided
//!   Wilson bound on a 30 s sliding window, re-checked at every canary failure from
//!   `min-requests` requests in the window, stable's Wilson upper bound as the alibi, and a
//!   streak of `min-requests` failures begun within the window while stable's latest request
//!   succeeded.

use std::collections::VecDeque;

use canary_proxy::rollback::sequential::{self, Counts, Plan, Streaks, Test, Verdict};

use super::world::Rule;

/// The sequential test, at a canary share of one half (both colors at the same rate).
pub struct Sequential {
    plan: Plan,
    test: Test,
    /// The canary's latest failure, and its failures in a row up to it.
    last_canary: u64,
    streak: u64,
    /// Stable's positions and failures taken in so far, and its latest failure.
    stable_seen: u64,
    stable_failures: u64,
    last_stable: Option<u64>,
}

impl Sequential {
    /// The rule at the threshold `max_error_rate` (a fraction), the default confidence (99 %)
    /// and `min-requests` (20).
    pub fn new(max_error_rate: f64) -> Sequential {
        Sequential {
            plan: Plan::new(max_error_rate, 0.99, 20),
            test: Test::default(),
            last_canary: 0,
            streak: 0,
            stable_seen: 0,
            stable_failures: 0,
            last_stable: None,
        }
    }
}

impl Rule for Sequential {
    fn stable_failed(&mut self, j: u64) {
        self.stable_failures += 1;
        self.last_stable = Some(j);
    }

    fn canary_failed(&mut self, i: u64) -> bool {
        let before = Counts::new(i - self.last_canary - 1, 0);
        self.streak = if i == self.last_canary + 1 {
            self.streak + 1
        } else {
            1
        };
        self.last_canary = i;
        // Stable's requests 0..i came before this one.
        let stable = Counts::new(
            i - self.stable_seen - self.stable_failures,
            self.stable_failures,
        );
        self.stable_seen = i;
        self.stable_failures = 0;
        self.test.observe(&self.plan, before, stable, 0.5);
        self.test
            .observe(&self.plan, Counts::new(0, 1), Counts::default(), 0.5);
        let streaks = Streaks {
            canary: self.streak,
            stable: match self.last_stable {
                Some(j) => i - 1 - j,
                None => i,
            },
        };
        matches!(
            sequential::decide(&self.plan, &self.test, streaks, 0.5),
            Verdict::RollBack(_)
        )
    }
}

/// The windowed rule this project used before the sequential test.
pub struct Windowed {
    rate: f64,
    window: f64,
    max_error_rate: f64,
    min_requests: u64,
    /// Failure positions within the window.
    canary: VecDeque<u64>,
    stable: VecDeque<u64>,
    /// The canary's failures in a row, and the position the streak began at.
    streak: (u64, u64),
    last_canary: u64,
    last_stable: Option<u64>,
}

impl Windowed {
    /// The rule at `max_error_rate`, `min-requests` 20 and a 30 s window, for colors at
    /// `rate` requests a second each.
    pub fn new(max_error_rate: f64, rate: f64) -> Windowed {
        Windowed {
            rate,
            window: 30.0,
            max_error_rate,
            min_requests: 20,
            canary: VecDeque::new(),
            stable: VecDeque::new(),
            streak: (0, 0),
            last_canary: 0,
            last_stable: None,
        }
    }
}

impl Rule for Windowed {
    fn stable_failed(&mut self, j: u64) {
        self.stable.push_back(j);
        self.last_stable = Some(j);
    }

    fn canary_failed(&mut self, i: u64) -> bool {
        let span = self.window * self.rate;
        // The window holds the canary's requests after position i - span, stable's after
        // i - span - 0.5.
        while self
            .canary
            .front()
            .is_some_and(|&k| (k as f64) <= i as f64 - span)
        {
            self.canary.pop_front();
        }
        while self
            .stable
            .front()
            .is_some_and(|&j| j as f64 + 0.5 <= i as f64 - span)
        {
            self.stable.pop_front();
        }
        self.canary.push_back(i);
        self.streak = if i == self.last_canary + 1 {
            (self.streak.0 + 1, self.streak.1)
        } else {
            (1, i)
        };
        self.last_canary = i;
        let canary = Counts {
            requests: i.min(span.ceil().max(1.0) as u64),
            failures: self.canary.len() as u64,
        };
        let stable_requests = if span < 0.5 {
            0
        } else {
            (span - 0.5).floor() as u64 + 1
        };
        let stable = Counts {
            requests: stable_requests.min(i),
            failures: self.stable.len() as u64,
        };
        let streak_fresh = ((i - self.streak.1) as f64) < span;
        let stable_ok = self.last_stable != Some(i - 1);
        let sudden = self.streak.0 >= self.min_requests && streak_fresh && stable_ok;
        sudden || decide(canary, stable, self.max_error_rate, self.min_requests)
    }
}

/// The windowed rule's rate verdict: roll back when the canary's Wilson lower bound is above
/// the threshold and stable's upper bound is below the canary's excess (or stable is too thin
/// to tell).
fn decide(canary: Counts, stable: Counts, t: f64, min_requests: u64) -> bool {
    if canary.requests < min_requests || wilson(canary).0 <= t {
        return false;
    }
    let excess = canary.failure_rate() - t;
    let threshold_only = wilson(Counts::new(stable.requests, 0)).1 >= excess;
    threshold_only || wilson(stable).1 < excess
}

/// The 99 % one-sided Wilson score interval of a failure rate.
fn wilson(c: Counts) -> (f64, f64) {
    const Z: f64 = 2.326;
    if c.requests == 0 {
        return (0.0, 1.0);
    }
    let n = c.requests as f64;
    let p = c.failure_rate();
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    (
        ((centre - spread) / scale).max(0.0),
        ((centre + spread) / scale).min(1.0),
    )
}
