//! The fleet's judge, pure: it takes the evidence gathered from the peers, turns each peer's
//! cumulative counts into what is new since the last gather, sums the fleet's batch and feeds
//! it to the same sequential [`Test`] one replica runs alone. The test's bound holds for any
//! batching (see [`sequential`]), so one test on the fleet's sum keeps the single-replica
//! guarantee however many replicas share the traffic, where N replicas each judging alone
//! would each spend the whole false-rollback budget.
//!
//! Which counts are new:
//!
//! - a process seen at the judge's first gather is a baseline: what it counted before may be
//!   about an earlier canary, and the judge has no way to tell;
//! - a process first seen later (a restart or a scale-up) started after the judge did, while
//!   this canary was configured, so all its counts are new;
//! - a peer reporting another canary (color or upstream) is left out, and a new canary here
//!   starts a new test with a clean record.
//!
//! The streak rule is not the judge's: it stays in each replica, where it is fastest, and its
//! bound is per canary request fleet-wide, so it does not grow with the number of replicas.

use std::collections::HashMap;

use crate::config::Color;
use crate::fleet::evidence::Evidence;
use crate::progressive::Cumulative;
use crate::rollback::sequential::{self, Counts, Plan, Streaks, Test, Verdict};

/// The canary a judge is judging, as the configuration names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    /// Its color.
    pub color: Color,
    /// Its upstream.
    pub upstream: String,
}

/// The fleet test's state across gathers.
#[derive(Debug, Default)]
pub struct FleetJudge {
    /// The canary the test is about; `None` before the first gather.
    canary: Option<Canary>,
    /// Each process's cumulative weighted counts (canary, stable) at the last gather. Kept
    /// for as long as the canary is the same, so a peer that comes back after missing gathers
    /// adds only what is new; bounded by the processes that served this canary.
    seen: HashMap<String, [Counts; 2]>,
    /// The statistics on the fleet's summed batches.
    test: Test,
    /// The summed batches (canary, stable) since the first gather about this canary: the
    /// cumulative evidence the step plan takes differences of.
    summed: [Counts; 2],
}

/// What one gather concluded, for `/status` and the rollback's reason.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judgement {
    /// The verdict on the fleet's evidence.
    pub verdict: Verdict,
    /// The test's state after the gather.
    pub test: Test,
    /// Peers whose evidence counted.
    pub reporting: usize,
}

impl FleetJudge {
    /// A judge that has gathered nothing yet.
    pub fn new() -> FleetJudge {
        FleetJudge::default()
    }

    /// Takes one gather's evidence (this replica's included) about `canary`, whose configured
    /// share of weighted traffic is `share`, and decides.
    pub fn gather(
        &mut self,
        plan: &Plan,
        canary: &Canary,
        share: f64,
        reports: &[Evidence],
    ) -> Judgement {
        let first = self.canary.as_ref() != Some(canary);
        if first {
            *self = FleetJudge {
                canary: Some(canary.clone()),
                ..FleetJudge::default()
            };
        }
        let stable = canary.color.other();
        let (mut canary_batch, mut stable_batch) = (Counts::default(), Counts::default());
        let mut reporting = 0;
        let mut seen = HashMap::with_capacity(reports.len());
        for report in reports {
            if report.canary != canary.color.as_str() || report.canary_upstream != canary.upstream {
                continue;
            }
            reporting += 1;
            let now = [report.weighted.of(canary.color), report.weighted.of(stable)];
            let before = match self.seen.get(&report.process) {
                Some(before) => *before,
                None if first => now,
                None => [Counts::default(); 2],
            };
            canary_batch += now[0].since(before[0]);
            stable_batch += now[1].since(before[1]);
            seen.insert(report.process.clone(), now);
        }
        // A peer missing from this gather keeps its baseline, so its next report adds only
        // what is new.
        for (process, counts) in seen {
            self.seen.insert(process, counts);
        }
        self.test.observe(plan, canary_batch, stable_batch, share);
        self.summed[0] += canary_batch;
        self.summed[1] += stable_batch;
        let verdict = sequential::decide(plan, &self.test, Streaks::default(), share);
        Judgement {
            verdict,
            test: self.test,
            reporting,
        }
    }

    /// The fleet's weighted counts since the first gather about the current canary, as the
    /// step plan reads them; no latency, which `/evidence` does not carry.
    pub fn evidence(&self) -> Cumulative {
        let mut evidence = Cumulative::default();
        if let Some(canary) = &self.canary {
            evidence.counts[canary.color.index()] = self.summed[0];
            evidence.counts[canary.color.other().index()] = self.summed[1];
        }
        evidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::evidence::Weighted;

    fn canary() -> Canary {
        Canary {
            color: Color::Green,
            upstream: "green:80".into(),
        }
    }

    fn report(process: &str, green: Counts, blue: Counts) -> Evidence {
        Evidence {
            process: process.into(),
            revision: "1".into(),
            canary: "green".into(),
            canary_upstream: "green:80".into(),
            stable: "blue".into(),
            rolled_back: false,
            weighted: Weighted { blue, green },
        }
    }

    #[test]
    fn failures_too_thin_for_any_replica_add_up_to_a_rollback() {
        let plan = Plan::new(0.05, 0.99, 20);
        let (mut fleet, mut alone) = (FleetJudge::new(), FleetJudge::new());
        let mut cumulative = vec![(Counts::default(), Counts::default()); 50];
        for gather in 0..100 {
            let reports: Vec<_> = cumulative
                .iter()
                .enumerate()
                .map(|(i, (g, b))| report(&format!("p{i}"), *g, *b))
                .collect();
            let lone = alone.gather(&plan, &canary(), 0.05, &reports[..1]);
            let judgement = fleet.gather(&plan, &canary(), 0.05, &reports);
            if let Verdict::RollBack(e) = judgement.verdict {
                assert_eq!(judgement.reporting, 50);
                // 100 canary requests a gather at 10 %: about h / 2.07 = 14 gathers.
                assert!(gather <= 20, "{gather}");
                assert!(e.run.requests >= 1000, "{e:?}");
                // One replica's 2 requests a gather were nowhere near a verdict.
                assert!(lone.test.absolute < plan.boundary / 4.0, "{lone:?}");
                return;
            }
            // Each replica sees 2 canary requests a gather and fails one of them every fifth
            // gather, in turns: the canary fails 10 %, every replica alike.
            for (i, (g, b)) in cumulative.iter_mut().enumerate() {
                let fails = u64::from((i + gather) % 5 == 0);
                *g += Counts::new(2 - fails, fails);
                *b += Counts::new(38, 0);
            }
        }
        panic!("the fleet never rolled back");
    }

    #[test]
    fn counts_before_the_first_gather_are_a_baseline_and_a_restart_counts_from_zero() {
        let plan = Plan::new(0.05, 0.99, 20);
        let mut judge = FleetJudge::new();
        // Old failures, perhaps of an earlier canary: not evidence.
        let old = report("a", Counts::new(0, 1000), Counts::new(1000, 0));
        let j = judge.gather(&plan, &canary(), 0.5, std::slice::from_ref(&old));
        assert_eq!(j.test.judged, Counts::default());
        // A process that appears later started under this canary: all of it counts.
        let restarted = report("b", Counts::new(9, 1), Counts::new(10, 0));
        let j = judge.gather(&plan, &canary(), 0.5, &[old.clone(), restarted]);
        assert_eq!(j.test.judged, Counts::new(9, 1));
        assert_eq!(j.test.stable, Counts::new(10, 0));
        // The next gather adds only what is new.
        let more = report("b", Counts::new(19, 1), Counts::new(20, 0));
        let j = judge.gather(&plan, &canary(), 0.5, &[old, more]);
        assert_eq!(j.test.judged, Counts::new(19, 1));
        // The step plan reads the same sums, by color.
        let evidence = judge.evidence();
        assert_eq!(evidence.counts[Color::Green.index()], Counts::new(19, 1));
        assert_eq!(evidence.counts[Color::Blue.index()], Counts::new(20, 0));
    }

    #[test]
    fn another_canary_is_not_summed_and_a_new_canary_starts_a_clean_test() {
        let plan = Plan::new(0.05, 0.99, 20);
        let mut judge = FleetJudge::new();
        let mut other = report("x", Counts::default(), Counts::default());
        other.canary_upstream = "green-old:80".into();
        judge.gather(&plan, &canary(), 0.5, &[other.clone()]);
        other.weighted.green = Counts::new(0, 500);
        let j = judge.gather(&plan, &canary(), 0.5, &[other]);
        assert_eq!((j.reporting, j.test.judged), (0, Counts::default()));

        let mine = report("y", Counts::default(), Counts::default());
        judge.gather(&plan, &canary(), 0.5, std::slice::from_ref(&mine));
        let failing = report("y", Counts::new(0, 100), Counts::new(100, 0));
        assert!(matches!(
            judge.gather(&plan, &canary(), 0.5, &[failing]).verdict,
            Verdict::RollBack(_)
        ));
        let next = Canary {
            upstream: "green-next:80".into(),
            ..canary()
        };
        let j = judge.gather(&plan, &next, 0.5, &[]);
        assert_eq!((j.test, j.verdict), (Test::default(), Verdict::Healthy));
    }
}
