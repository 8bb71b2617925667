//! Progressive delivery: the canary's weight climbs `progressive.steps` by itself, each step
//! left as soon as the evidence is enough, and a bad step is stopped by the rollback tests as
//! before.
//!
//! - [`gate`]: the pure promotion gate, likelihood ratios against a bad canary.
//! - [`plan`]: the pure rule, stay or move on, and the rule for a canary worse than stable
//!   but under the threshold.
//! - [`Stepper`]: one canary's plan as it runs, fed from the tally on the runtime's timer and
//!   carried across reloads; [`apply`] moves the routing table's weight.
//! - [`status`]: the plan on `/status`; [`metrics`]: on `/metrics`.
//!
//! `canary-weight` reads as the current step: a weight that is one of the steps runs the plan
//! from there, 0 waits for a release, any other weight holds. With `--config`, the steps move
//! in memory; an edit of the file's `canary-weight` while the plan runs pauses it (the file's
//! weight is then used), and an edit of `progressive.paused` that leaves it not true resumes it.
//! With `--fleet`, the judge runs the plan on the fleet's summed counts ([`Seat`]) and the
//! others follow the ConfigMap's weight.

pub mod apply;
pub mod gate;
pub mod metrics;
pub mod plan;
pub mod status;

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::config::{Color, Config, Progressive};
use crate::progressive::gate::{Batch, GatePlan};
use crate::progressive::plan::{Decision, Step};
use crate::rollback::latency::BINS;
use crate::rollback::sequential::Counts;
use crate::rollback::tally::{Tally, bins_since};

/// One canary's step plan as it runs.
pub struct Stepper {
    state: Mutex<State>,
}

/// The plan's state.
#[derive(Clone, Debug, Default)]
struct State {
    /// The step the canary is at, from the first look at its weight.
    step: Option<Step>,
    /// Each color's weighted counts and latency histograms at the last look (none before the
    /// first): the next batch starts there.
    seen: Option<([Counts; 2], [[u64; BINS]; 2])>,
    /// Stable's weighted latency histogram when the step began: the gate's thresholds come
    /// from stable's requests at this step.
    stable_base: Option<[u64; BINS]>,
    /// The steps left so far, in order.
    done: Vec<Done>,
    /// The configuration source's own `canary-weight`, to tell its edits from the plan's.
    source_weight: u32,
    /// The source's `progressive.paused` as written (`None` when absent), to see it change.
    source_paused: Option<bool>,
    /// Why the plan was paused by an edit of the weight, until the source resumes it.
    manual: Option<String>,
    /// How the plan ended, once it has.
    finished: Option<String>,
    /// The pause last announced, so each pause is announced once.
    announced_pause: Option<String>,
}

/// A move of the plan, for whoever records it (the Kubernetes write-back and its Events).
#[derive(Clone, Debug)]
pub enum StepEvent {
    /// The canary moved to the next step.
    Advanced {
        /// The step left.
        from: u32,
        /// The step entered.
        to: u32,
        /// The revision the move was decided on.
        revision: Arc<str>,
        /// The evidence at the step left, in a sentence.
        evidence: String,
    },
    /// The canary became stable, with all the traffic.
    Promoted {
        /// The color that is stable now.
        stable: Color,
        /// The revision the move was decided on.
        revision: Arc<str>,
        /// The evidence at the last step, in a sentence.
        evidence: String,
    },
    /// The plan was paused.
    Paused {
        /// Why.
        reason: String,
    },
}

/// A step that was left.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Done {
    /// The step's canary weight.
    pub weight: u32,
    /// Seconds spent at it.
    pub seconds: f64,
    /// The canary's weighted requests at it.
    pub canary: Counts,
    /// Stable's.
    pub stable: Counts,
    /// When it was left, RFC 3339.
    pub at: String,
    /// Where to: the next step's weight, or `promoted`.
    pub to: String,
}

impl Done {
    /// `step`, left at `now_ms` (`at` in RFC 3339) for `to`.
    fn of(step: &Step, now_ms: u64, at: String, to: String) -> Done {
        Done {
            weight: step.weight,
            seconds: now_ms.saturating_sub(step.since_ms) as f64 / 1000.0,
            canary: step.gate.canary,
            stable: step.gate.stable,
            at,
            to,
        }
    }
}

/// `progressive.paused` as written in `config`: `None` when absent.
fn paused_key(config: &Config) -> Option<bool> {
    config
        .progressive
        .as_ref()
        .and_then(|p| p.paused_written.then_some(p.paused))
}

/// Who runs the plan on this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seat {
    /// A replica alone (no `--fleet`): on its own evidence.
    Alone,
    /// The fleet's judge: on the fleet's summed evidence, failures only (`/evidence` carries
    /// no latency histograms).
    Judge,
    /// A `--fleet` replica that is not the judge: it routes by the ConfigMap's weight.
    Following,
}

/// The evidence a look of the plan reads: each color's weighted counts and latency histograms,
/// cumulative, in [`Color::ALL`] order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cumulative {
    /// Weighted outcomes.
    pub counts: [Counts; 2],
    /// Weighted latency histograms (zero where latency is not judged).
    pub latency: [[u64; BINS]; 2],
}

impl Default for Cumulative {
    fn default() -> Cumulative {
        Cumulative {
            counts: [Counts::default(); 2],
            latency: [[0; BINS]; 2],
        }
    }
}

impl Cumulative {
    /// The evidence in `tally`.
    pub fn of(tally: &Tally) -> Cumulative {
        Cumulative {
            counts: Color::ALL.map(|c| tally.weighted(c)),
            latency: Color::ALL.map(|c| tally.weighted_latency(c)),
        }
    }
}

/// What a look of the plan needs.
#[derive(Clone, Copy)]
pub struct StepLook<'a> {
    /// The outcomes so far.
    pub evidence: &'a Cumulative,
    /// The plan's settings.
    pub policy: &'a Progressive,
    /// The gate's constants.
    pub gate: &'a GatePlan,
    /// The canary color.
    pub canary: Color,
    /// The canary's weight in the routing table.
    pub weight: u32,
    /// The canary's share of weighted traffic, 0 to 1.
    pub share: f64,
    /// Now, on the runtime's millisecond clock.
    pub now_ms: u64,
}

impl Stepper {
    /// A new plan for `config`'s canary.
    pub fn new(config: &Config) -> Stepper {
        Stepper::from_state(State {
            source_weight: config.weight,
            source_paused: paused_key(config),
            ..State::default()
        })
    }

    fn from_state(state: State) -> Stepper {
        Stepper {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look: takes in the evidence since the last and says whether to move on.
    pub fn tick(&self, look: StepLook<'_>) -> Decision {
        let mut state = self.lock();
        let stable = look.canary.other();
        let Cumulative { counts, latency } = *look.evidence;
        let Some((seen_counts, seen_latency)) = state.seen.replace((counts, latency)) else {
            return Decision::Hold;
        };
        if state.finished.is_some() {
            return Decision::Hold;
        }
        let (c, s) = (look.canary.index(), stable.index());
        let mut step = match state.step {
            Some(step) if step.weight == look.weight => step,
            _ => {
                // A new step (or the first look): its evidence starts now.
                state.stable_base = Some(latency[s]);
                state.step = Some(Step {
                    weight: look.weight,
                    since_ms: look.now_ms,
                    gate: Default::default(),
                });
                return Decision::Hold;
            }
        };
        step.gate.observe(
            look.gate,
            &Batch {
                canary: counts[c].since(seen_counts[c]),
                stable: counts[s].since(seen_counts[s]),
                canary_latency: &bins_since(&latency[c], &seen_latency[c]),
                stable_latency: &bins_since(&latency[s], &seen_latency[s]),
                stable_so_far: &bins_since(&latency[s], &state.stable_base.unwrap_or(latency[s])),
                share: look.share,
            },
        );
        state.step = Some(step);
        let paused = look.policy.paused || state.manual.is_some();
        plan::decide(
            look.policy,
            look.gate,
            &step,
            look.now_ms,
            look.share,
            paused,
        )
    }

    /// Forgets the step as it ran here (not the steps done): another replica runs the plan now,
    /// so the ConfigMap's weight is not this replica's to call a hand edit, and a later turn
    /// as judge begins at the ConfigMap's step with fresh evidence.
    pub fn follow(&self) {
        let mut state = self.lock();
        state.step = None;
        state.seen = None;
        state.stable_base = None;
        state.announced_pause = None;
    }

    /// The current step's evidence at `now_ms`, in a sentence, for logs and Events.
    pub fn describe(&self, gate: &GatePlan, now_ms: u64) -> String {
        let Some(step) = self.lock().step else {
            return "no step yet".into();
        };
        let g = &step.gate;
        let mut text = format!(
            "step {} passed after {:.0} s: the canary failed {} of {} requests, stable {} of {}; \
             failure evidence {:.1} of {:.1}",
            step.weight,
            now_ms.saturating_sub(step.since_ms) as f64 / 1000.0,
            g.canary.failures,
            g.canary.requests,
            g.stable.failures,
            g.stable.requests,
            g.failures,
            gate.boundary,
        );
        if gate.latency.is_some() {
            text.push_str(&format!(
                ", latency evidence {:.1}; slow requests: canary {} of {}, stable {} of {}",
                g.latency,
                g.slow.failures,
                g.slow.requests,
                g.slow_stable.failures,
                g.slow_stable.requests
            ));
        }
        text
    }

    /// A pause not announced yet (by a hand edit, or `progressive.paused`), once.
    pub fn pause_news(&self, policy_paused: bool) -> Option<String> {
        let mut state = self.lock();
        if state.step.is_none() || state.finished.is_some() {
            return None;
        }
        let now = state
            .manual
            .clone()
            .or_else(|| policy_paused.then(|| "progressive.paused is true".to_owned()));
        if now == state.announced_pause {
            return None;
        }
        state.announced_pause.clone_from(&now);
        now
    }

    /// Records that the routing table left the current step for `to` at `now_ms` (`at` in
    /// RFC 3339).
    pub fn left(&self, to: String, now_ms: u64, at: String) {
        let mut state = self.lock();
        if let Some(step) = state.step {
            state.done.push(Done::of(&step, now_ms, at, to));
        }
    }

    /// The plan of the table that follows a full promotion at `now_ms` (`at` in RFC 3339):
    /// the steps done, the last one included, and the ending.
    pub fn promoted(&self, config: &Config, now_ms: u64, at: &str) -> Stepper {
        let state = self.lock();
        let mut done = state.done.clone();
        if let Some(step) = state.step {
            done.push(Done::of(
                &step,
                now_ms,
                at.to_owned(),
                "promoted".to_owned(),
            ));
        }
        Stepper::from_state(State {
            done,
            source_weight: state.source_weight,
            source_paused: state.source_paused,
            finished: Some(format!(
                "promoted at {at}: {} is stable, with all the traffic",
                config.stable
            )),
            ..State::default()
        })
    }

    /// Follows a reload of the same canary to `fresh` while the table routed by `effective`;
    /// returns the weight the new table should route by. The source's own weight unchanged,
    /// the plan's weight stays; an edit of it while the plan runs pauses the plan; an edit of
    /// `progressive.paused` that leaves it not true (written `"false"`, or removed) lifts that
    /// pause.
    pub fn reload(&self, fresh: &Config, effective: u32) -> u32 {
        let mut state = self.lock();
        let paused = paused_key(fresh);
        let running = state.step.is_some() && state.finished.is_none();
        let weight = if fresh.weight == state.source_weight {
            effective
        } else {
            if running && fresh.weight != effective {
                state.manual = Some(format!(
                    "canary-weight was set to {} by hand while the plan was at {effective}; \
                     edit progressive.paused (to \"false\") to resume from there",
                    fresh.weight
                ));
            }
            fresh.weight
        };
        if paused != state.source_paused && paused != Some(true) {
            state.manual = None;
        }
        state.source_weight = fresh.weight;
        state.source_paused = paused;
        weight
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rollback::tally::Evidence;

    fn config(weight: u32) -> Config {
        let data: BTreeMap<String, String> = [
            ("blue.upstream", "127.0.0.1:1"),
            ("green.upstream", "127.0.0.1:2"),
            ("progressive.steps", "5,25,50,100"),
            ("progressive.step-min-duration", "1s"),
            ("progressive.step-min-requests", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("canary-weight".to_owned(), weight.to_string())])
        .collect();
        Config::from_map(&data).unwrap()
    }

    fn look<'a>(
        evidence: &'a Cumulative,
        policy: &'a Progressive,
        gate: &'a GatePlan,
        weight: u32,
        now_ms: u64,
    ) -> StepLook<'a> {
        StepLook {
            evidence,
            policy,
            gate,
            canary: Color::Green,
            weight,
            share: f64::from(weight) / 100.0,
            now_ms,
        }
    }

    #[test]
    fn a_healthy_canary_climbs_after_its_evidence_and_time() {
        let config = config(5);
        let policy = config.progressive.clone().unwrap();
        let gate = GatePlan::new(0.05, 0.99, None);
        let tally = Tally::new();
        let stepper = Stepper::new(&config);
        // The first looks set the baselines and begin the step.
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 0)),
            Decision::Hold
        );
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 0)),
            Decision::Hold
        );
        for _ in 0..200 {
            tally.record(Color::Green, Evidence::Weighted, false, None);
        }
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 500)),
            Decision::Hold,
            "before its least time"
        );
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 1_000)),
            Decision::Advance { from: 5, to: 25 }
        );
        stepper.left("25".into(), 1_000, "now".into());
        // At the next step the evidence starts again.
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 25, 1_100)),
            Decision::Hold
        );
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 25, 5_000)),
            Decision::Hold
        );
        let state = stepper.lock();
        assert_eq!(state.done.len(), 1);
        assert_eq!(state.done[0].canary, Counts::new(200, 0));
    }

    #[test]
    fn an_edit_of_the_weight_pauses_and_the_paused_key_resumes() {
        let stepper = Stepper::new(&config(5));
        let tally = Tally::new();
        let policy = config(5).progressive.unwrap();
        let gate = GatePlan::new(0.05, 0.99, None);
        stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 0));
        stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 0));
        // The plan moved to 25; the file still says 5: the plan's weight stays.
        assert_eq!(stepper.reload(&config(5), 25), 25);
        assert!(stepper.lock().manual.is_none());
        // The file says 50: a hand edit, paused.
        assert_eq!(stepper.reload(&config(50), 25), 50);
        assert!(
            stepper
                .lock()
                .manual
                .as_deref()
                .unwrap()
                .contains("set to 50 by hand")
        );
        for _ in 0..200 {
            tally.record(Color::Green, Evidence::Weighted, false, None);
        }
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 50, 10)),
            Decision::Hold
        );
        assert_eq!(
            stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 50, 5_000)),
            Decision::Hold
        );
        // Paused in the file, then resumed: the hand pause is lifted.
        let written = |paused| {
            let mut c = config(50);
            let p = c.progressive.as_mut().unwrap();
            (p.paused, p.paused_written) = (paused, true);
            c
        };
        assert_eq!(stepper.reload(&written(true), 50), 50);
        assert!(stepper.lock().manual.is_some());
        assert_eq!(stepper.reload(&config(50), 50), 50);
        assert!(stepper.lock().manual.is_none());
        // Written "false" where it was absent resumes too.
        stepper.reload(&config(100), 50);
        assert!(stepper.lock().manual.is_some());
        stepper.reload(&written(false), 100);
        assert!(stepper.lock().manual.is_none());
    }

    #[test]
    fn a_follower_takes_the_configmaps_weight_and_a_new_judge_begins_there() {
        let stepper = Stepper::new(&config(5));
        let tally = Tally::new();
        let policy = config(5).progressive.unwrap();
        let gate = GatePlan::new(0.05, 0.99, None);
        stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 0));
        stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 5, 0));
        // Another replica judges now and moved the ConfigMap to 25: followed, not a hand edit.
        stepper.follow();
        assert_eq!(stepper.reload(&config(25), 5), 25);
        assert!(stepper.lock().manual.is_none());
        // Judge again: the step begins at the ConfigMap's weight, its evidence from then on.
        for _ in 0..200 {
            tally.record(Color::Green, Evidence::Weighted, false, None);
        }
        stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 25, 10));
        stepper.tick(look(&Cumulative::of(&tally), &policy, &gate, 25, 20));
        let step = stepper.lock().step.unwrap();
        assert_eq!((step.weight, step.since_ms), (25, 20));
        assert_eq!(step.gate.canary, Counts::default());
    }
}
