//! `canary-bench simulate --fleet`: the verdict with the traffic spread over N replicas (2,
//! 10, 50, 500), the fleet judge against every replica judging alone.
//!
//! The canary's requests arrive at a fixed fleet-wide rate, each at a replica drawn at random
//! (as a Service spreads them), each failing independently; stable runs at the same rate,
//! healthy, so the canary's share is one half. Both rules keep the streak rule in every
//! replica, looked at on each failure. Then:
//!
//! - **alone**: every replica also runs the sequential test on its own traffic, looked at on
//!   each of its failures (as the data path does without `--fleet`); the first replica to
//!   decide rolls the fleet back;
//! - **fleet**: one judge runs the test on the fleet's summed counts, gathered once a second
//!   (as `--fleet` does).
//!
//! Both use the pure decision code of `canary_proxy::rollback::sequential`.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::fmt::Write as _;

use canary_proxy::rollback::sequential::{self, Counts, Plan, Streaks, Test, Verdict};

use super::{THRESHOLD, per_seed, quantiles};

/// Fleet sizes in the table.
pub const SIZES: [usize; 4] = [2, 10, 50, 500];

/// The canary's failure probability before the change in the detection runs.
const HEALTHY: f64 = 0.01;

/// Healthy seconds before the change in the detection runs.
const HEALTHY_SECONDS: u64 = 600;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Seeds per cell.
    pub seeds: u64,
    /// Canary requests a second, fleet-wide.
    pub rate: u64,
    /// Simulated hours of each false-rollback run, and the longest a detection run waits.
    pub hours: f64,
    /// Threads to run seeds on.
    pub threads: usize,
}

impl FleetOptions {
    /// The full table: 100 seeds, 100 canary requests a second, 24 hours.
    pub fn full() -> FleetOptions {
        FleetOptions {
            seeds: 100,
            rate: 100,
            hours: 24.0,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// A run of seconds: 4 seeds, one hour.
    pub fn quick() -> FleetOptions {
        FleetOptions {
            seeds: 4,
            hours: 1.0,
            ..FleetOptions::full()
        }
    }
}

/// Who runs the sequential test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judging {
    /// One judge on the fleet's sum.
    Fleet,
    /// Every replica on its own share.
    Alone,
}

/// One cell: a fleet size, a rule, a case.
#[derive(Clone, Debug, Serialize)]
pub struct FleetCell {
    /// Replicas.
    pub replicas: usize,
    /// Who judged.
    pub judging: Judging,
    /// The canary's failure probability (after the healthy stretch, in detection runs).
    pub failing: f64,
    /// Seeds rolled back (false rollbacks when `failing` is at most the threshold).
    pub rolled_back: u64,
    /// Seeds run.
    pub seeds: u64,
    /// Seconds from the change to the rollback over the seeds that rolled back: median and
    /// 99th percentile (detection runs only).
    pub seconds: Option<(u64, u64)>,
}

/// The table.
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// Every cell.
    pub cells: Vec<FleetCell>,
}

/// One replica's state.
#[derive(Clone, Default)]
struct Replica {
    /// Its own test (alone only).
    test: Test,
    /// Canary and stable counts not yet observed by its own test.
    canary: Counts,
    stable: Counts,
    /// The canary's failures in a row here.
    streak: u64,
    /// Stable requests here (stable never fails, so this is its run of successes).
    stable_run: u64,
}

/// Runs every cell.
pub fn simulate_fleet(options: &FleetOptions) -> FleetReport {
    let mut cells = Vec::new();
    // (failing, healthy stretch first)
    let cases = [
        (0.8 * THRESHOLD, false),
        (THRESHOLD, false),
        (2.0 * THRESHOLD, true),
        (1.0, true),
    ];
    for (failing, detection) in cases {
        for replicas in SIZES {
            for judging in [Judging::Fleet, Judging::Alone] {
                let runs = per_seed(options.seeds, options.threads, |seed| {
                    one(options, replicas, judging, failing, detection, seed)
                });
                let mut seconds: Vec<u64> = runs.iter().flatten().copied().collect();
                seconds.sort_unstable();
                cells.push(FleetCell {
                    replicas,
                    judging,
                    failing,
                    rolled_back: seconds.len() as u64,
                    seeds: options.seeds,
                    seconds: detection.then(|| quantiles(&seconds)).flatten(),
                });
            }
        }
    }
    FleetReport { cells }
}

/// One run: the seconds from the change (or the start) to the rollback, if any.
fn one(
    options: &FleetOptions,
    replicas: usize,
    judging: Judging,
    failing: f64,
    detection: bool,
    seed: u64,
) -> Option<u64> {
    let plan = Plan::new(THRESHOLD, 0.99, 20);
    let mut rng = SmallRng::seed_from_u64(seed ^ ((replicas as u64) << 32));
    let mut fleet = vec![Replica::default(); replicas];
    let mut judge = Test::default();
    let (mut gathered_canary, mut gathered_stable) = (Counts::default(), Counts::default());
    let change = if detection { HEALTHY_SECONDS } else { 0 };
    let end = change + (options.hours * 3600.0) as u64;
    for second in 0..end {
        let p = if second < change { HEALTHY } else { failing };
        for _ in 0..options.rate {
            let replica = &mut fleet[rng.random_range(0..replicas)];
            let failed = rng.random_bool(p);
            replica.stable_run += 1;
            gathered_stable += Counts::new(1, 0);
            gathered_canary += Counts::new(u64::from(!failed), u64::from(failed));
            if !failed {
                replica.streak = 0;
                replica.canary += Counts::new(1, 0);
                replica.stable += Counts::new(1, 0);
                continue;
            }
            replica.streak += 1;
            let streaks = Streaks {
                canary: replica.streak,
                stable: replica.stable_run,
            };
            let decided = match judging {
                Judging::Fleet => {
                    replica.streak >= plan.streak && replica.stable_run >= plan.stable_run
                }
                Judging::Alone => {
                    // What came before the failure, then the failure, as the judge looks.
                    let stable = replica.stable + Counts::new(1, 0);
                    replica.test.observe(&plan, replica.canary, stable, 0.5);
                    replica
                        .test
                        .observe(&plan, Counts::new(0, 1), Counts::default(), 0.5);
                    replica.canary = Counts::default();
                    replica.stable = Counts::default();
                    matches!(
                        sequential::decide(&plan, &replica.test, streaks, 0.5),
                        Verdict::RollBack(_)
                    )
                }
            };
            if decided {
                return Some(second.saturating_sub(change));
            }
        }
        if judging == Judging::Fleet {
            judge.observe(&plan, gathered_canary, gathered_stable, 0.5);
            if matches!(
                sequential::decide(&plan, &judge, Streaks::default(), 0.5),
                Verdict::RollBack(_)
            ) {
                return Some(second.saturating_sub(change));
            }
        }
        (gathered_canary, gathered_stable) = (Counts::default(), Counts::default());
    }
    None
}

impl FleetReport {
    /// The table in Markdown.
    pub fn markdown(&self, options: &FleetOptions) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Fleet: {} canary requests a second fleet-wide (stable alike, healthy), spread at \
             random over the replicas; {} seeds; runs of {} h (detection: after {} s at {} %). \
             Each cell: seeds rolled back, then the seconds to the rollback (median / 99th \
             percentile); fleet judge (gathering once a second) / every replica alone.\n",
            options.rate,
            options.seeds,
            options.hours,
            HEALTHY_SECONDS,
            100.0 * HEALTHY
        );
        let _ = write!(out, "| canary fails |");
        for n in SIZES {
            let _ = write!(out, " {n} replicas |");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "|---|{}", "---:|".repeat(SIZES.len()));
        let mut failing: Vec<f64> = self.cells.iter().map(|c| c.failing).collect();
        failing.dedup();
        for f in failing {
            let _ = write!(out, "| {:.0} % |", 100.0 * f);
            for n in SIZES {
                let cell = |judging| {
                    self.cells
                        .iter()
                        .find(|c| c.failing == f && c.replicas == n && c.judging == judging)
                };
                let (Some(fleet), Some(alone)) = (cell(Judging::Fleet), cell(Judging::Alone))
                else {
                    continue;
                };
                let _ = write!(out, " {} / {} |", fmt_cell(fleet), fmt_cell(alone));
            }
            let _ = writeln!(out);
        }
        out
    }
}

fn fmt_cell(cell: &FleetCell) -> String {
    match cell.seconds {
        Some((median, p99)) => format!("{} ({median} s, {p99} s)", cell.rolled_back),
        None => cell.rolled_back.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a quick run: neither rule rolls back a canary at 0.8 times the threshold, a total
    /// failure is caught by the streak at any size, and at 50 replicas a canary failing twice
    /// the threshold is caught by the fleet judge several times sooner than by the replicas
    /// alone.
    #[test]
    fn the_fleet_judge_keeps_the_bound_and_catches_sooner() {
        let options = FleetOptions {
            seeds: 3,
            ..FleetOptions::quick()
        };
        let report = simulate_fleet(&options);
        let cell = |failing: f64, n: usize, judging| {
            report
                .cells
                .iter()
                .find(|c| c.failing == failing && c.replicas == n && c.judging == judging)
                .unwrap()
                .clone()
        };
        for n in SIZES {
            assert_eq!(cell(0.8 * THRESHOLD, n, Judging::Fleet).rolled_back, 0);
            assert_eq!(cell(1.0, n, Judging::Fleet).rolled_back, 3);
        }
        let fleet = cell(2.0 * THRESHOLD, 50, Judging::Fleet);
        let alone = cell(2.0 * THRESHOLD, 50, Judging::Alone);
        assert_eq!(fleet.rolled_back, 3, "{fleet:?}");
        let fleet_median = fleet.seconds.unwrap().0;
        let alone_median = alone.seconds.map_or(u64::MAX, |s| s.0);
        assert!(
            alone_median > 3 * fleet_median,
            "{fleet:?} against {alone:?}"
        );
        assert!(report.markdown(&options).contains("| 10 % |"));
    }
}
