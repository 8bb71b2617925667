//! Outlier ejection per endpoint, and the rule that tells a pod's fault from its version's.
//!
//! - An endpoint that fails [`EJECT_AFTER`] times in a row is ejected: it gets no requests
//!   for a backoff that starts at [`BASE_EJECTION`] and doubles with each ejection in a row, up
//!   to [`MAX_EJECTION`]. Then it is probed: one request at a time, until one succeeds (it is
//!   back) or fails (ejected again, for longer). At most half of a color's endpoints are
//!   ejected at once: past that the fault is not the pods'.
//! - A failure is the pod's fault, not the version's, when its endpoint has failed at least
//!   [`EXCUSE_AFTER`] times in a row and at least half of the color's endpoints answered their
//!   latest request well (an endpoint that has had no request yet does not count as well).
//!   Such a failure is held: if its pod is ejected it is settled as the pod's (counted, not
//!   rollback evidence); if meanwhile another pod's failure is not excused, the fault is wider
//!   than one pod and every held failure is settled as the version's evidence. A fault on more
//!   than half of the pods, or on the only one, stays the version's.
//!
//! Failures count as failures do for the rollback verdict (`rollback.failure-statuses`, no
//! response, a broken body). Times are nanoseconds on a clock the caller passes in.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Failures in a row that eject an endpoint (Envoy's `consecutive_5xx` default).
pub const EJECT_AFTER: u32 = 5;
/// Failures in a row from which an endpoint's failures are its own, if its peers are well.
pub const EXCUSE_AFTER: u32 = 3;
/// The first ejection's length.
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// One endpoint's health as its outcomes tell it. Shared by every worker, and written only when
/// it changes: a healthy endpoint's outcomes only read it.
#[derive(Debug, Default)]
pub struct Outlier {
    /// Failures in a row; 0 after a success.
    streak: AtomicU32,
    /// Whether it has had an outcome yet.
    answered: AtomicBool,
    /// Until when it is ejected; 0 while it is not, and once a probe has succeeded.
    ejected_until: AtomicU64,
    /// Ejections since its last success: the backoff doubles with each.
    ejections: AtomicU32,
    /// Ejections ever, for `/status` and the metrics.
    ejected_total: AtomicU64,
}

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Takes requests.
    Ready,
    /// Ejected: takes none until its backoff is over.
    Ejected,
    /// Its backoff is over: takes one request at a time until one succeeds.
    Probing,
}

impl Outlier {
    /// Its state at `now`.
    pub fn state(&self, now: u64) -> State {
        match self.ejected_until.load(Relaxed) {
            0 => State::Ready,
            until if now < until => State::Ejected,
            _ => State::Probing,
        }
    }

    /// Whether a request may go to it at `now`, with `in_flight` requests already there (asked
    /// only while it is probed: summing every thread's count is not for every request).
    pub fn available(&self, now: u64, in_flight: impl FnOnce() -> u64) -> bool {
        match self.state(now) {
            State::Ready => true,
            State::Ejected => false,
            State::Probing => in_flight() == 0,
        }
    }

    /// Failures in a row.
    pub fn streak(&self) -> u32 {
        self.streak.load(Relaxed)
    }

    /// Whether its latest request was answered well (it has had one, and no failure since).
    pub fn well(&self) -> bool {
        self.streak() == 0 && self.answered.load(Relaxed)
    }

    /// Ejections ever.
    pub fn ejected_total(&self) -> u64 {
        self.ejected_total.load(Relaxed)
    }

    /// Takes in one outcome; returns the failures in a row after it.
    pub fn record(&self, failed: bool) -> u32 {
        if !self.answered.load(Relaxed) {
            self.answered.store(true, Relaxed);
        }
        if failed {
            return self.streak.fetch_add(1, Relaxed) + 1;
        }
        // Checked first, so that a healthy endpoint's outcomes write nothing shared.
        if self.streak.load(Relaxed) != 0 {
            self.streak.store(0, Relaxed);
        }
        if self.ejected_until.load(Relaxed) != 0 {
            self.ejected_until.store(0, Relaxed);
            self.ejections.store(0, Relaxed);
        }
        0
    }

    /// Whether it is due an ejection at `now`: enough failures in a row while it takes
    /// requests (ready, or a probe that failed).
    pub fn due(&self, now: u64) -> bool {
        self.streak() >= EJECT_AFTER && self.state(now) != State::Ejected
    }

    /// Ejects it from `now` for its backoff.
    pub fn eject(&self, now: u64) {
        let previous = self.ejections.fetch_add(1, Relaxed);
        let backoff = BASE_EJECTION
            .saturating_mul(1 << previous.min(16))
            .min(MAX_EJECTION);
        self.ejected_until.store(
            now.saturating_add(backoff.as_nanos() as u64).max(1),
            Relaxed,
        );
        self.ejected_total.fetch_add(1, Relaxed);
    }
}

/// Whether one more of `n` endpoints may be ejected while `ejected` are.
pub fn may_eject(n: usize, ejected: usize) -> bool {
    2 * (ejected + 1) <= n
}

/// Whether a failure of an endpoint now `streak` failures in a row is its own fault, among `n`
/// endpoints of which `well` answered their latest request well.
pub fn excused(streak: u32, n: usize, well: usize) -> bool {
    n >= 2 && streak >= EXCUSE_AFTER && 2 * well >= n
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn ejected_after_failures_in_a_row_then_probed_back() {
        let o = Outlier::default();
        for _ in 0..EJECT_AFTER - 1 {
            o.record(true);
        }
        assert!(!o.due(0));
        o.record(true);
        assert!(o.due(0));
        o.eject(0);
        assert_eq!(o.state(9 * S), State::Ejected);
        assert!(!o.available(9 * S, || 0));
        // Probing: one request at a time.
        assert_eq!(o.state(10 * S), State::Probing);
        assert!(o.available(10 * S, || 0));
        assert!(!o.available(10 * S, || 1));
        // The probe fails: ejected again for twice as long.
        o.record(true);
        assert!(o.due(10 * S));
        o.eject(10 * S);
        assert_eq!(o.state(29 * S), State::Ejected);
        assert_eq!(o.state(30 * S), State::Probing);
        // The probe succeeds: back, and the next ejection starts from the base again.
        o.record(false);
        assert_eq!(o.state(30 * S), State::Ready);
        assert_eq!(o.ejected_total(), 2);
        for _ in 0..EJECT_AFTER {
            o.record(true);
        }
        o.eject(40 * S);
        assert_eq!(o.state(50 * S), State::Probing);
    }

    #[test]
    fn a_success_breaks_the_streak() {
        let o = Outlier::default();
        for i in 0..20 {
            o.record(i % 4 != 0);
        }
        assert!(!o.due(0));
    }

    #[test]
    fn well_once_answered_and_until_a_failure() {
        let o = Outlier::default();
        assert!(!o.well(), "no request yet");
        o.record(false);
        assert!(o.well());
        o.record(true);
        assert!(!o.well());
        o.record(false);
        assert!(o.well());
    }

    #[test]
    fn the_streak_is_kept_across_threads_and_a_success_resets_it() {
        let o = Outlier::default();
        // Failures from several threads at once all count toward the streak.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        o.record(true);
                    }
                });
            }
        });
        assert_eq!(o.streak(), 4_000);
        assert!(o.due(0));
        // A success on another thread breaks it.
        std::thread::scope(|s| {
            s.spawn(|| o.record(false));
        });
        assert_eq!(o.streak(), 0);
        assert!(!o.due(0));
        assert_eq!(o.record(true), 1);
    }

    #[test]
    fn the_backoff_is_capped() {
        let o = Outlier::default();
        for _ in 0..40 {
            o.eject(0);
        }
        assert_eq!(o.state(MAX_EJECTION.as_nanos() as u64), State::Probing);
    }

    #[test]
    fn at_most_half_are_ejected() {
        assert!(!may_eject(1, 0));
        assert!(may_eject(2, 0));
        assert!(!may_eject(2, 1));
        assert!(may_eject(3, 0));
        assert!(!may_eject(3, 1));
        assert!(may_eject(5, 1));
        assert!(!may_eject(5, 2));
    }

    #[test]
    fn one_bad_pod_is_excused_a_bad_version_is_not() {
        // One of three pods failing, the two others well.
        assert!(!excused(EXCUSE_AFTER - 1, 3, 2));
        assert!(excused(EXCUSE_AFTER, 3, 2));
        // Two of three failing: the version's fault.
        assert!(!excused(10, 3, 1));
        // All failing.
        assert!(!excused(10, 3, 0));
        // The only pod.
        assert!(!excused(10, 1, 0));
        // One of two: half are well.
        assert!(excused(10, 2, 1));
    }
}
