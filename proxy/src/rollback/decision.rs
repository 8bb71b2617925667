//! The rollback rule: pure arithmetic on the two colors' window counts.
//!
//! A canary is rolled back when it has at least `min-requests` requests in the window, its
//! failure rate `p_c` exceeds `max-error-rate` (call it `t`) beyond chance, **and** the
//! failures are not a fault that stable shares.
//!
//! "Beyond chance": the lower bound of `p_c`'s 99 % one-sided Wilson interval must exceed `t`.
//! A canary failing 2 % of the time shows 2 failures in its first 20 requests one time in 17;
//! that is 10 %, but not evidence of anything above 5 %. With many requests the bound closes
//! on `p_c` itself (at 30,000 canary requests in the window a 6 % rate trips a 5 % threshold);
//! with few, only a clear excess trips it (20 failures of 20 do, at the 20th request).
//!
//! A canary that fails every request after a long healthy stretch would take long to show in
//! the window's rate (at 500 canary requests a second, about 900 failures to pass 5 % of a
//! full 30 s window). So failure streaks are watched too: when the canary's latest
//! `min-requests` requests (within the window) all failed while stable's latest request
//! succeeded, the canary is rolled back at once. A total failure is thereby rolled back at its
//! `min-requests`-th failure whatever came before; a fault that stable shares keeps stable's
//! own streak above 0 and is left to the rule below.
//!
//! Moving traffic away from a fault both colors have (a database they both use, say) helps no
//! user and kills a good release, so stable is asked for an alibi:
//!
//! - For stable to "share" the fault it would need a failure rate of at least `p_c - t`.
//! - From stable's own window (`f_s` failures in `n_s` requests) we take the upper bound `U` of
//!   its failure rate at 99 % one-sided confidence (Wilson score interval, z = 2.326).
//! - If `U < p_c - t`, stable is clearly healthier: **roll back**.
//! - If stable has so few requests that even a spotless record could not give that assurance
//!   (`U(0 failures, n_s) >= p_c - t`; at `canary-weight: "100"` stable has none at all), there
//!   is no evidence either way and the absolute threshold alone decides: **roll back**.
//! - Otherwise stable's own failures make a shared fault plausible: **hold**, and say so
//!   ([`Verdict::SharedFault`]) on `/status` and in `canary_proxy_shared_fault`.
//!
//! Examples at `t` = 5 %, `min-requests` = 20:
//! - canary 20/20 failed, stable 0/20: `U` = 0.21 < 0.95: roll back, at the 20th request.
//! - canary 20/20 failed, stable 20/20 failed: `U` = 1 >= 0.95: hold. With both colors failing
//!   every request this holds from the first stable request on; only if stable had no request
//!   at all in the window would the threshold alone decide.
//! - canary 10/20 failed (50 %), stable 2/20 (10 %): `U` = 0.35 < 0.45: roll back.
//! - canary 2 % failing: below `t`, healthy.

use super::window::Counts;

/// One-sided 99 % normal quantile.
const Z: f64 = 2.326;

/// What the rule concluded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Fewer than `min-requests` canary requests in the window: no decision yet.
    Insufficient,
    /// The canary's failure rate is within the threshold.
    Healthy,
    /// The canary fails, but stable fails alike: no rollback.
    SharedFault,
    /// Roll back; the figures say why.
    RollBack(Evidence),
}

/// The figures behind a rollback, for its log line and `/status`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    /// The canary's window.
    pub canary: Counts,
    /// Stable's window.
    pub stable: Counts,
    /// Whether stable had too few requests to compare, so the threshold alone decided.
    pub threshold_only: bool,
    /// Whether it was the canary's latest requests all failing that decided.
    pub streak: bool,
}

/// Applies the rule to the canary's and stable's window counts.
pub fn decide(canary: Counts, stable: Counts, max_error_rate: f64, min_requests: u64) -> Verdict {
    if canary.requests < min_requests {
        return Verdict::Insufficient;
    }
    // The canary's rate must be above the threshold beyond chance, not merely in the point
    // estimate: at 2 % true failures, 2 of the first 20 requests failing is 10 %.
    if wilson_lower(canary.failures, canary.requests) <= max_error_rate {
        return Verdict::Healthy;
    }
    let excess = canary.failure_rate() - max_error_rate;
    let threshold_only = wilson_upper(0, stable.requests) >= excess;
    if threshold_only || wilson_upper(stable.failures, stable.requests) < excess {
        Verdict::RollBack(Evidence {
            canary,
            stable,
            threshold_only,
            streak: false,
        })
    } else {
        Verdict::SharedFault
    }
}

/// The rule on the windows, then on the failure streaks: when the canary's latest
/// `min-requests` requests all failed while stable's latest request succeeded, the canary is
/// rolled back without waiting for its window's rate to catch up.
pub fn decide_with_streaks(
    canary: Counts,
    stable: Counts,
    streaks: Streaks,
    max_error_rate: f64,
    min_requests: u64,
) -> Verdict {
    let verdict = decide(canary, stable, max_error_rate, min_requests);
    let sudden = streaks.canary >= min_requests && streaks.stable == 0 && max_error_rate < 1.0;
    if matches!(verdict, Verdict::RollBack(_)) || !sudden {
        return verdict;
    }
    Verdict::RollBack(Evidence {
        canary: Counts {
            requests: streaks.canary,
            failures: streaks.canary,
        },
        stable,
        threshold_only: stable.requests == 0,
        streak: true,
    })
}

/// Failures in a row, up to each color's latest request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaks {
    /// The canary's.
    pub canary: u64,
    /// Stable's: while it is not 0, stable's latest request failed too and a sudden failure
    /// may be shared.
    pub stable: u64,
}

/// Upper bound of the Wilson score interval for `failures` out of `n`; 1 when `n` is 0.
fn wilson_upper(failures: u64, n: u64) -> f64 {
    wilson(failures, n).1
}

/// Lower bound of the Wilson score interval for `failures` out of `n`; 0 when `n` is 0.
fn wilson_lower(failures: u64, n: u64) -> f64 {
    wilson(failures, n).0
}

fn wilson(failures: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = failures as f64 / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    (
        ((centre - spread) / scale).max(0.0),
        ((centre + spread) / scale).min(1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(requests: u64, failures: u64) -> Counts {
        Counts { requests, failures }
    }

    fn rolls_back(v: Verdict) -> bool {
        matches!(v, Verdict::RollBack(_))
    }

    #[test]
    fn the_issue_cases() {
        // canary 100 % failing, stable 0 %.
        assert!(rolls_back(decide(c(20, 20), c(20, 0), 0.05, 20)));
        // both 100 % failing.
        assert_eq!(decide(c(20, 20), c(20, 20), 0.05, 20), Verdict::SharedFault);
        assert_eq!(
            decide(c(5000, 5000), c(5000, 5000), 0.05, 20),
            Verdict::SharedFault
        );
        // canary 2 % at a 5 % threshold.
        assert_eq!(decide(c(1000, 20), c(1000, 0), 0.05, 20), Verdict::Healthy);
        // canary 50 %, stable 10 %.
        assert!(rolls_back(decide(c(20, 10), c(20, 2), 0.05, 20)));
        assert!(rolls_back(decide(c(1000, 500), c(1000, 100), 0.05, 20)));
        // stable with no requests at all (canary-weight 100): the threshold alone.
        let v = decide(c(20, 20), c(0, 0), 0.05, 20);
        assert!(matches!(
            v,
            Verdict::RollBack(Evidence {
                threshold_only: true,
                ..
            })
        ));
        // below min-requests nothing is decided.
        assert_eq!(decide(c(19, 19), c(0, 0), 0.05, 20), Verdict::Insufficient);
    }

    #[test]
    fn both_colors_failing_never_roll_back_once_stable_has_one_request() {
        for canary in 20..200 {
            for stable in 1..200 {
                let v = decide(c(canary, canary), c(stable, stable), 0.05, 20);
                assert_eq!(v, Verdict::SharedFault, "canary {canary}, stable {stable}");
            }
        }
    }

    #[test]
    fn a_healthy_stable_is_an_alibi_only_when_it_has_requests() {
        // At weight 95 stable sees about 1 request per 19 canary requests: no evidence,
        // so a 50 % failing canary is rolled back on the threshold.
        let v = decide(c(20, 10), c(1, 0), 0.05, 20);
        assert!(matches!(
            v,
            Verdict::RollBack(Evidence {
                threshold_only: true,
                ..
            })
        ));
        // A stable with enough clean requests is compared and found healthier.
        let v = decide(c(20, 10), c(40, 0), 0.05, 20);
        assert!(matches!(
            v,
            Verdict::RollBack(Evidence {
                threshold_only: false,
                ..
            })
        ));
        // A stable failing about as often as the canary holds the rollback.
        assert_eq!(
            decide(c(100, 50), c(100, 45), 0.05, 20),
            Verdict::SharedFault
        );
    }

    #[test]
    fn wilson_bounds() {
        assert_eq!(wilson_upper(0, 0), 1.0);
        assert!((wilson_upper(0, 20) - 0.213).abs() < 0.01);
        assert!((wilson_upper(2, 20) - 0.348).abs() < 0.01);
        assert!(wilson_upper(20, 20) > 0.999_999);
    }
}
