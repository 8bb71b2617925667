//! Rollback decision: per-color sliding windows ([`window`]) fed by response accounting, and
//! the pure rule ([`decision`]) that says when the canary must go.

pub mod decision;
pub mod window;

#[cfg(test)]
mod tests {
    //! The windows and the rule together, on a clock the test controls.

    use std::time::Duration;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::decision::{Streaks, Verdict, decide_with_streaks};
    use super::window::Window;

    struct Colors {
        canary: Window,
        stable: Window,
    }

    impl Colors {
        fn new() -> Colors {
            let w = Duration::from_secs(30);
            Colors {
                canary: Window::new(w),
                stable: Window::new(w),
            }
        }

        /// What the runtime decides.
        fn verdict(&self, now: u64) -> Verdict {
            let (canary, stable) = (self.canary.counts(now), self.stable.counts(now));
            let streaks = Streaks {
                canary: self.canary.streak(now),
                stable: self.stable.streak(now),
            };
            decide_with_streaks(canary, stable, streaks, 0.05, 20)
        }
    }

    #[test]
    fn all_failing_canary_rolls_back_at_exactly_min_requests() {
        let c = Colors::new();
        for i in 1..=20u64 {
            c.canary.record(i * 10, true, None);
            let v = c.verdict(i * 10);
            assert_eq!(
                matches!(v, Verdict::RollBack(_)),
                i == 20,
                "request {i}: {v:?}"
            );
        }
    }

    #[test]
    fn two_percent_failures_never_roll_back_over_100k_requests() {
        // At 1,000 canary requests a second, and at 20.
        for ms_apart in [1, 50] {
            for seed in 0..20 {
                two_percent_failures(seed, ms_apart);
            }
        }
    }

    fn two_percent_failures(seed: u64, ms_apart: u64) {
        let c = Colors::new();
        let mut rng = SmallRng::seed_from_u64(seed);
        for i in 0..100_000u64 {
            let now = i * ms_apart;
            let failed = rng.random_bool(0.02);
            c.canary.record(now, failed, None);
            if failed {
                let v = c.verdict(now);
                assert!(
                    !matches!(v, Verdict::RollBack(_)),
                    "seed {seed}, {ms_apart} ms apart, request {i}: {v:?}"
                );
            }
        }
    }

    #[test]
    fn old_failures_age_out() {
        let c = Colors::new();
        for i in 0..19 {
            c.canary.record(i, true, None);
        }
        assert_eq!(c.verdict(100), Verdict::Insufficient);
        // 19 failures, then one more 31 s later: the first 19 have left the window.
        c.canary.record(31_000, true, None);
        assert_eq!(c.canary.counts(31_000).requests, 1);
        assert_eq!(c.verdict(31_000), Verdict::Insufficient);
    }

    #[test]
    fn a_total_failure_after_a_healthy_stretch_rolls_back_at_min_requests() {
        // 30 s of healthy traffic at 1,000 requests a second, half of it to the canary.
        let c = Colors::new();
        for ms in 0..30_000u64 {
            let w = if ms % 2 == 0 { &c.canary } else { &c.stable };
            w.record(ms, false, None);
        }
        // Then the canary fails every request.
        for failures in 1..=20u64 {
            let ms = 30_000 + 2 * failures;
            c.stable.record(ms - 1, false, None);
            c.canary.record(ms, true, None);
            let v = c.verdict(ms);
            assert_eq!(
                matches!(v, Verdict::RollBack(e) if e.streak),
                failures == 20,
                "failure {failures}: {v:?}"
            );
        }
    }

    #[test]
    fn a_sudden_shared_failure_after_a_healthy_stretch_is_held() {
        for seed in 0..20 {
            let c = Colors::new();
            for ms in 0..30_000u64 {
                let w = if ms % 2 == 0 { &c.canary } else { &c.stable };
                w.record(ms, false, None);
            }
            // Both colors fail every request from now on, at weight 50.
            let mut rng = SmallRng::seed_from_u64(seed);
            for i in 0..20_000u64 {
                let ms = 30_000 + i;
                let w = if rng.random_bool(0.5) {
                    &c.canary
                } else {
                    &c.stable
                };
                w.record(ms, true, None);
                let v = c.verdict(ms);
                assert!(
                    !matches!(v, Verdict::RollBack(_)),
                    "seed {seed}, request {i}: {v:?}"
                );
            }
        }
    }

    #[test]
    fn a_shared_fault_at_weight_50_never_rolls_back() {
        for seed in 0..20 {
            let c = Colors::new();
            let mut rng = SmallRng::seed_from_u64(seed);
            for i in 0..2_000u64 {
                let window = if rng.random_bool(0.5) {
                    &c.canary
                } else {
                    &c.stable
                };
                window.record(i, true, None);
                let v = c.verdict(i);
                assert!(
                    !matches!(v, Verdict::RollBack(_)),
                    "seed {seed}, request {i}: {v:?}"
                );
            }
        }
    }
}
