//! The demo: the article's story on loopback, under steady load, with checks.
//!
//! Blue and green upstreams run in this process; the real `canary-proxy` runs as a child with
//! a flat YAML file that the demo rewrites atomically. An open-loop load runs throughout, so
//! the per-color rate shows each switch as a V and the rollback as a cliff. The steps: canary
//! 5 %, 50 %, 100 %, back to 5 %, then green answers 500 to everything (like the article's
//! `FORCE_ERROR=true`) and the proxy rolls back by itself.
//!
//! - `story`: the steps, played against the proxy ([`run`]).
//! - [`checks`]: the pure pass/fail rules.
//! - [`timeline`]: the printed timeline and rollback summary.
//! - [`html`]: the self-contained HTML report.
//! - [`progressive`]: `--progressive`, three releases decided by the step plan.

pub mod checks;
pub mod html;
pub mod progressive;
mod story;
pub mod timeline;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::load::LatencySummary;
use crate::load::Live;
use checks::Check;

pub use story::{DemoError, run};

/// How the demo is run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `canary-proxy` binary.
    pub proxy_bin: PathBuf,
    /// Where the HTML report goes.
    pub report: PathBuf,
    /// The short version for CI: the same story in about 15 s.
    pub quick: bool,
}

/// The pacing of the story; the quick mode shortens every step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Pacing {
    /// Open-loop rate of the load, requests per second.
    pub rate: f64,
    /// Connections of the load.
    pub connections: usize,
    /// How long each step is measured once the proxy has applied it.
    pub steady: Duration,
    /// Pause after a change is applied before measuring, so answers to requests sent under the
    /// old split are not counted under the new one.
    pub settle: Duration,
    /// How long the load runs on after the rollback.
    pub tail: Duration,
    /// The proxy's `rollback.window`.
    pub window: Duration,
    /// How often the rate chart samples the load.
    pub sample_every: Duration,
    /// How long the demo waits for a change to apply or for the rollback.
    pub patience: Duration,
}

impl Pacing {
    /// The pacing of the full demo (about 35 s) or of the quick one (about 15 s).
    pub fn new(quick: bool) -> Pacing {
        if quick {
            Pacing {
                rate: 1000.0,
                connections: 8,
                steady: Duration::from_millis(2000),
                settle: Duration::from_millis(300),
                tail: Duration::from_millis(1500),
                window: Duration::from_secs(2),
                sample_every: Duration::from_millis(200),
                patience: Duration::from_secs(10),
            }
        } else {
            Pacing {
                rate: 2000.0,
                connections: 16,
                steady: Duration::from_millis(5000),
                settle: Duration::from_millis(300),
                tail: Duration::from_millis(4000),
                window: Duration::from_secs(3),
                sample_every: Duration::from_millis(250),
                patience: Duration::from_secs(10),
            }
        }
    }
}

/// What a step did to the system.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The canary weight was set to this percentage.
    Weight(u32),
    /// Green was made to fail every request.
    Fault,
    /// The load after the proxy rolled back.
    RolledBack,
}

/// Counts of one step, from live counter deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Answers from blue.
    pub blue: u64,
    /// Answers from green.
    pub green: u64,
    /// Answers without a color.
    pub none: u64,
    /// Answers outside 2xx.
    pub not_ok: u64,
    /// Requests without an answer.
    pub errors: u64,
}

impl Counts {
    /// The difference between two snapshots of the load.
    pub fn between(before: &Live, after: &Live) -> Counts {
        Counts {
            blue: after.by_color.blue - before.by_color.blue,
            green: after.by_color.green - before.by_color.green,
            none: after.by_color.none - before.by_color.none,
            not_ok: after.not_ok - before.not_ok,
            errors: after.errors - before.errors,
        }
    }

    /// All answers.
    pub fn total(&self) -> u64 {
        self.blue + self.green + self.none
    }

    /// Failed requests as a client sees them: non-2xx answers and no answers.
    pub fn client_errors(&self) -> u64 {
        self.not_ok + self.errors
    }

    /// The share of answers from `n`, in percent.
    pub fn share(&self, n: u64) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.total() as f64
        }
    }
}

/// One row of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// What happened.
    pub label: String,
    /// What it changed.
    pub kind: StepKind,
    /// When the change was made, since the load started.
    pub at: Duration,
    /// How long the proxy took to show it on `/status`.
    pub applied_after: Duration,
    /// The canary weight in force during the step, in percent (0 after the rollback).
    pub weight: f64,
    /// What the clients saw during the measured part of the step.
    pub counts: Counts,
    /// Latency during the measured part of the step.
    pub latency: LatencySummary,
    /// The load's latency segment the step was measured under.
    #[serde(skip)]
    pub segment: usize,
}

/// The rate of answers per color over one sampling interval.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// End of the interval, seconds since the load started.
    pub t: f64,
    /// Blue answers per second.
    pub blue: f64,
    /// Green answers per second.
    pub green: f64,
    /// Failed requests (5xx or no answer) per second.
    pub failed: f64,
}

/// The rollback as the clients and the proxy saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RollbackSummary {
    /// `/status` said so.
    pub happened: bool,
    /// The canary color the proxy rolled back.
    pub color: Option<String>,
    /// The proxy's sentence.
    pub reason: Option<String>,
    /// When green was made to fail, since the load started.
    pub fault_at: Duration,
    /// From the fault to `/status` showing the rollback.
    pub detected_after: Option<Duration>,
    /// 5xx answers clients got during the fault.
    pub client_failures: u64,
    /// Requests without an answer during the fault.
    pub client_errors: u64,
    /// The first 5xx from green, since the load started.
    pub first_failure: Option<Duration>,
    /// The last answer from green, since the load started: after it, green gets nothing.
    pub last_green: Option<Duration>,
    /// From the first failing answer to the last green answer: the swap as clients saw it.
    pub swap_client: Option<Duration>,
    /// The proxy's `rollback.at` as given.
    pub proxy_at: Option<String>,
    /// From the first failing answer to `rollback.at`, in seconds (negative if `at` is
    /// truncated to a whole second that began before the failure).
    pub swap_proxy_s: Option<f64>,
    /// `canary_proxy_rollbacks_total{color="green"}`.
    pub metric: Option<f64>,
}

/// Everything the demo measured, for the timeline, the report and the exit code.
#[derive(Clone, Debug, Serialize)]
pub struct DemoResult {
    /// The pacing used.
    pub pacing: Pacing,
    /// The timeline's rows.
    pub steps: Vec<Step>,
    /// The per-color rate over time.
    pub samples: Vec<Sample>,
    /// The rollback.
    pub rollback: RollbackSummary,
    /// Latency over the whole run.
    pub latency: LatencySummary,
    /// Every check and its verdict.
    pub checks: Vec<Check>,
    /// Wall time of the whole demo.
    pub elapsed: Duration,
}

impl DemoResult {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }
}
