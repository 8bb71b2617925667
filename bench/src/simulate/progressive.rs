//! `canary-bench simulate --progressive`: the step plan, its promotion gate and the latency
//! trigger, run over their pure decision code on a simulated 100 ms clock (the data path's
//! tick), as the proxy runs them with `--config`: steps `5,25,50,100`, the default
//! `progressive.step-min-duration` (1m) and `progressive.step-min-requests` (100), a 5 %
//! threshold, `rollback.max-latency-increase` 20 % at the 0.99 quantile, confidence 99 %.
//!
//! Each release is simulated per seed at a total request rate; latencies are log-normal with a
//! median of 10 ms and a log-spread given per case (5 %: a tight service such as the demo's
//! upstreams; 40 %: a wide one). The streak rule is left out: no case here fails in runs.

use std::time::Duration;

use canary_proxy::config::Progressive;
use canary_proxy::progressive::gate::{Batch, Gate, GatePlan};
use canary_proxy::progressive::plan::{self, Decision, Step};
use canary_proxy::rollback::latency::{self, BINS};
use canary_proxy::rollback::sequential::{self, Counts, Plan, Streaks, Test, Verdict};
use canary_proxy::rollback::slowdown::{LatencyPlan, SlowTest};
use canary_proxy::rollback::tally::bins_since;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::per_seed;

/// The simulated tick.
const TICK_S: f64 = 0.1;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct ProgressiveOptions {
    /// Seeds per case.
    pub seeds: u64,
    /// Total request rates (both colors) a second.
    pub rates: Vec<f64>,
    /// A release not decided after this many simulated seconds counts as undecided.
    pub limit_s: f64,
    /// Weighted requests per seed of the latency trigger's false-alarm runs.
    pub alarm_requests: u64,
    /// Threads to run seeds on.
    pub threads: usize,
}

impl ProgressiveOptions {
    /// The full table: 100 seeds at 10 and 1,000 requests a second, up to 2 h a release.
    pub fn full() -> ProgressiveOptions {
        ProgressiveOptions {
            seeds: 100,
            rates: vec![10.0, 1_000.0],
            limit_s: 7_200.0,
            alarm_requests: 10_000_000,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// A run of seconds: 10 seeds.
    pub fn quick() -> ProgressiveOptions {
        ProgressiveOptions {
            seeds: 10,
            alarm_requests: 1_000_000,
            ..ProgressiveOptions::full()
        }
    }
}

/// A release: how the canary behaves, and from which step it turns bad.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Release {
    /// In words.
    pub case: &'static str,
    /// The canary's failure probability once bad.
    pub canary_failing: f64,
    /// Stable's failure probability.
    pub stable_failing: f64,
    /// The canary's latency over stable's, once bad.
    pub slower: f64,
    /// The latencies' log-spread.
    pub spread: f64,
    /// The step index from which the canary is bad (0: from the start).
    pub bad_from: usize,
    /// Whether the latency trigger (and the gate's latency part) is on.
    pub latency_trigger: bool,
}

/// The cases of the table.
pub const RELEASES: [Release; 8] = [
    Release {
        case: "healthy, without the latency trigger",
        canary_failing: 0.0,
        stable_failing: 0.0,
        slower: 1.0,
        spread: 0.05,
        bad_from: 0,
        latency_trigger: false,
    },
    Release {
        case: "healthy",
        canary_failing: 0.0,
        stable_failing: 0.0,
        slower: 1.0,
        spread: 0.05,
        bad_from: 0,
        latency_trigger: true,
    },
    Release {
        case: "3% failing, stable 0% (under the 5% threshold)",
        canary_failing: 0.03,
        stable_failing: 0.0,
        slower: 1.0,
        spread: 0.05,
        bad_from: 0,
        latency_trigger: true,
    },
    Release {
        case: "5% failing (at the threshold)",
        canary_failing: 0.05,
        stable_failing: 0.0,
        slower: 1.0,
        spread: 0.05,
        bad_from: 0,
        latency_trigger: true,
    },
    Release {
        case: "15% failing (3 x threshold)",
        canary_failing: 0.15,
        stable_failing: 0.0,
        slower: 1.0,
        spread: 0.05,
        bad_from: 0,
        latency_trigger: true,
    },
    Release {
        case: "10% slower (within the 20% margin), wide latency",
        canary_failing: 0.0,
        stable_failing: 0.0,
        slower: 1.1,
        spread: 0.4,
        bad_from: 0,
        latency_trigger: true,
    },
    Release {
        case: "30% slower from the 25% step, tight latency",
        canary_failing: 0.0,
        stable_failing: 0.0,
        slower: 1.3,
        spread: 0.05,
        bad_from: 1,
        latency_trigger: true,
    },
    Release {
        case: "30% slower from the 25% step, wide latency",
        canary_failing: 0.0,
        stable_failing: 0.0,
        slower: 1.3,
        spread: 0.4,
        bad_from: 1,
        latency_trigger: true,
    },
];

/// How one release ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub enum End {
    /// Promoted after this many seconds.
    Promoted(f64),
    /// Rolled back: seconds after the canary turned bad, canary requests served since then
    /// (bad ones: failed or slowed), and whether the latency trigger decided.
    RolledBack(f64, u64, bool),
    /// Neither within the limit.
    #[default]
    Undecided,
}

/// One row: a release at a rate over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The release.
    pub release: Release,
    /// Total requests a second.
    pub rate: f64,
    /// Seeds promoted.
    pub promoted: u64,
    /// The median and largest seconds to promotion.
    pub to_promotion_s: Option<(f64, f64)>,
    /// Seeds rolled back.
    pub rolled_back: u64,
    /// Of them, by the latency trigger.
    pub by_latency: u64,
    /// The median and largest seconds from the canary turning bad to its rollback.
    pub after_bad_s: Option<(f64, f64)>,
    /// The median and largest bad requests served meanwhile.
    pub bad_served: Option<(u64, u64)>,
    /// Seeds undecided at the limit.
    pub undecided: u64,
    /// Seeds run.
    pub seeds: u64,
}

/// Runs every release at every rate.
pub fn simulate_progressive(options: &ProgressiveOptions) -> Vec<Row> {
    let mut rows = Vec::new();
    for release in RELEASES {
        for &rate in &options.rates {
            let ends = per_seed(options.seeds, options.threads, |seed| {
                run(&release, rate, seed, options.limit_s)
            });
            rows.push(row(release, rate, &ends));
        }
    }
    rows
}

fn row(release: Release, rate: f64, ends: &[End]) -> Row {
    let mut promoted = Vec::new();
    let (mut rolled, mut by_latency, mut bad, mut undecided) = (Vec::new(), 0, Vec::new(), 0);
    for end in ends {
        match *end {
            End::Promoted(s) => promoted.push(s),
            End::RolledBack(s, n, latency) => {
                rolled.push(s);
                bad.push(n);
                by_latency += u64::from(latency);
            }
            End::Undecided => undecided += 1,
        }
    }
    let spread_f = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| (v[v.len() / 2], v[v.len() - 1]))
    };
    bad.sort_unstable();
    let bad = (!bad.is_empty()).then(|| (bad[bad.len() / 2], bad[bad.len() - 1]));
    Row {
        release,
        rate,
        promoted: promoted.len() as u64,
        to_promotion_s: spread_f(promoted),
        rolled_back: rolled.len() as u64,
        by_latency,
        after_bad_s: spread_f(rolled),
        bad_served: bad,
        undecided,
        seeds: ends.len() as u64,
    }
}

/// The plan every release runs.
fn policy() -> Progressive {
    Progressive {
        steps: vec![5, 25, 50, 100],
        min_duration: Duration::from_secs(60),
        min_requests: 100,
        promote: true,
        paused: false,
        paused_written: false,
    }
}

/// A log-normal latency of median 10 ms, log-spread `spread`, times `scale`: its bin.
fn latency_bin(rng: &mut SmallRng, spread: f64, scale: f64) -> usize {
    // Box-Muller.
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
    let ms = 10.0 * (spread * z).exp() * scale;
    latency::bin(Duration::from_secs_f64(ms / 1000.0))
}

/// One release at `rate` requests a second, as the runtime's timer sees it.
pub fn run(release: &Release, rate: f64, seed: u64, limit_s: f64) -> End {
    let mut rng = SmallRng::seed_from_u64(seed);
    let policy = policy();
    let (p0, confidence) = (0.05, 0.99);
    let plan = Plan::new(p0, confidence, 20);
    let latency_plan = LatencyPlan::new(0.2, 0.99, confidence);
    let gate_plan = GatePlan::new(
        p0,
        confidence,
        release.latency_trigger.then_some(latency_plan),
    );
    let (mut test, mut slow) = (Test::default(), SlowTest::default());
    let mut stable_so_far = [0u64; BINS];
    let mut step = Step {
        weight: policy.steps[0],
        since_ms: 0,
        gate: Gate::default(),
    };
    let mut step_stable = [0u64; BINS];
    let mut index = 0;
    let (mut bad_since, mut bad_served) = (None, 0u64);
    let ticks = (limit_s / TICK_S) as u64;
    let per_tick = rate * TICK_S;
    for tick in 1..=ticks {
        let now_s = tick as f64 * TICK_S;
        let w = f64::from(step.weight) / 100.0;
        let bad = index >= release.bad_from;
        if bad && bad_since.is_none() {
            bad_since = Some(now_s - TICK_S);
        }
        let mut counts = [Counts::default(); 2];
        let mut bins = [[0u64; BINS]; 2];
        let n = per_tick.floor() as u64 + u64::from(rng.random_bool(per_tick.fract()));
        for _ in 0..n {
            let canary = rng.random_bool(w);
            let (failing, scale) = match (canary, bad) {
                (true, true) => (release.canary_failing, release.slower),
                (true, false) => (release.stable_failing, 1.0),
                (false, _) => (release.stable_failing, 1.0),
            };
            let failed = rng.random_bool(failing);
            let c = usize::from(canary);
            counts[c] += Counts::new(u64::from(!failed), u64::from(failed));
            bins[c][latency_bin(&mut rng, release.spread, scale)] += 1;
            if canary && bad && (failed || release.slower > 1.0) {
                bad_served += 1;
            }
        }
        let (stable, canary) = (counts[0], counts[1]);
        for (s, b) in stable_so_far.iter_mut().zip(&bins[0]) {
            *s += b;
        }
        let since_bad = || now_s - bad_since.unwrap_or(now_s);
        test.observe(&plan, canary, stable, w);
        if let Verdict::RollBack(_) = sequential::decide(&plan, &test, Streaks::default(), w) {
            return End::RolledBack(since_bad(), bad_served, false);
        }
        slow.observe(&latency_plan, &bins[1], &bins[0], &stable_so_far, w);
        if release.latency_trigger && slow.decide(&latency_plan).is_some() {
            return End::RolledBack(since_bad(), bad_served, true);
        }
        let step_so_far = bins_since(&stable_so_far, &step_stable);
        step.gate.observe(
            &gate_plan,
            &Batch {
                canary,
                stable,
                canary_latency: &bins[1],
                stable_latency: &bins[0],
                stable_so_far: &step_so_far,
                share: w,
            },
        );
        let now_ms = (now_s * 1000.0) as u64;
        match plan::decide(&policy, &gate_plan, &step, now_ms, w, false) {
            Decision::Hold => {}
            Decision::Advance { to, .. } => {
                index += 1;
                step = Step {
                    weight: to,
                    since_ms: now_ms,
                    gate: Gate::default(),
                };
                step_stable = stable_so_far;
            }
            Decision::Promote { .. } => return End::Promoted(now_s),
        }
    }
    End::Undecided
}

/// The latency trigger's false alarms: a canary no slower than the margin allows, at a fixed
/// share, for many requests.
#[derive(Clone, Debug, Serialize)]
pub struct Alarms {
    /// In words.
    pub case: &'static str,
    /// The latencies' log-spread.
    pub spread: f64,
    /// The canary's latency over stable's.
    pub slower: f64,
    /// Weighted requests per seed.
    pub requests: u64,
    /// Seeds rolled back.
    pub rolled_back: u64,
    /// Seeds run.
    pub seeds: u64,
    /// The largest statistic any seed reached, against the boundary.
    pub max_statistic: f64,
    /// The boundary.
    pub boundary: f64,
}

/// The false-alarm cases: (words, spread, slower).
const ALARM_CASES: [(&str, f64, f64); 4] = [
    ("as fast as stable, tight", 0.05, 1.0),
    ("as fast as stable, wide", 0.4, 1.0),
    ("10% slower, tight", 0.05, 1.1),
    ("15% slower, wide", 0.4, 1.15),
];

/// Runs the false-alarm cases at canary share 0.5, in batches of 100 requests (a tick at
/// 1,000 requests a second).
pub fn simulate_alarms(options: &ProgressiveOptions) -> Vec<Alarms> {
    let plan = LatencyPlan::new(0.2, 0.99, 0.99);
    ALARM_CASES
        .iter()
        .map(|&(case, spread, slower)| {
            let runs = per_seed(options.seeds, options.threads, |seed| {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut test = SlowTest::default();
                let mut stable_so_far = [0u64; BINS];
                let mut max: f64 = 0.0;
                for _ in 0..options.alarm_requests / 100 {
                    let mut bins = [[0u64; BINS]; 2];
                    for _ in 0..100 {
                        let canary = rng.random_bool(0.5);
                        let scale = if canary { slower } else { 1.0 };
                        bins[usize::from(canary)][latency_bin(&mut rng, spread, scale)] += 1;
                    }
                    for (s, b) in stable_so_far.iter_mut().zip(&bins[0]) {
                        *s += b;
                    }
                    test.observe(&plan, &bins[1], &bins[0], &stable_so_far, 0.5);
                    max = max.max(test.relative());
                    if test.decide(&plan).is_some() {
                        return (true, max);
                    }
                }
                (false, max)
            });
            Alarms {
                case,
                spread,
                slower,
                requests: options.alarm_requests,
                rolled_back: runs.iter().filter(|r| r.0).count() as u64,
                seeds: options.seeds,
                max_statistic: runs.iter().map(|r| r.1).fold(0.0, f64::max),
                boundary: plan.boundary,
            }
        })
        .collect()
}

/// The false alarms as a Markdown table.
pub fn alarms_markdown(alarms: &[Alarms]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "\nThe latency trigger's false alarms (margin 20% at p99, canary share 50%):\n\n\
         | canary | requests per seed | rolled back | largest statistic (boundary) |\n\
         |---|---:|---:|---|\n",
    );
    for a in alarms {
        let _ = writeln!(
            out,
            "| {} | {} | {}/{} | {:.1} ({:.1}) |",
            a.case, a.requests, a.rolled_back, a.seeds, a.max_statistic, a.boundary
        );
    }
    out
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row], options: &ProgressiveOptions) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "Steps 5,25,50,100, at least 1m and 100 canary requests each, 5% threshold, latency \
         margin 20% at p99, confidence 99%; {} seeds, up to {:.0} s per release.\n\n\
         | release | requests/s | promoted | seconds to promotion (median, max) | rolled back \
         (by latency) | seconds after turning bad (median, max) | bad requests served \
         (median, max) | undecided |\n|---|---:|---:|---|---:|---|---|---:|\n",
        options.seeds, options.limit_s
    );
    let pair = |p: Option<(f64, f64)>| p.map_or("-".into(), |(a, b)| format!("{a:.0}, {b:.0}"));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {}/{} | {} | {}/{} ({}) | {} | {} | {} |",
            r.release.case,
            r.rate,
            r.promoted,
            r.seeds,
            pair(r.to_promotion_s),
            r.rolled_back,
            r.seeds,
            r.by_latency,
            pair(r.after_bad_s),
            r.bad_served
                .map_or("-".into(), |(a, b)| format!("{a}, {b}")),
            r.undecided,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_release_is_promoted_and_a_bad_one_rolled_back() {
        let healthy = run(&RELEASES[1], 1_000.0, 1, 3_600.0);
        assert!(
            matches!(healthy, End::Promoted(s) if (240.0..600.0).contains(&s)),
            "{healthy:?}"
        );
        let failing = run(&RELEASES[4], 1_000.0, 1, 3_600.0);
        assert!(
            matches!(failing, End::RolledBack(_, _, false)),
            "{failing:?}"
        );
        let slower = run(&RELEASES[6], 1_000.0, 1, 3_600.0);
        assert!(matches!(slower, End::RolledBack(_, _, true)), "{slower:?}");
    }
}
