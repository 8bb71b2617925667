//! Moving the routing table along the plan: each step is a new table with the next weight,
//! swapped in by compare-and-swap, so a reload or a rollback that came first wins and the
//! step is tried again on the next look.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use crate::progressive::gate::GatePlan;
use crate::progressive::plan::Decision;
use crate::progressive::{Cumulative, Seat, StepEvent, StepLook};
use crate::rfc3339;
use crate::rollback::judge::Judge;
use crate::rollback::slowdown::LatencyPlan;
use crate::route::RouteTable;
use crate::runtime::Runtime;

impl Runtime {
    /// One look of `table`'s step plan on `evidence`, by a replica in `seat` (alone, from the
    /// timer; the fleet's judge, from its gather): moves the canary's weight to the next step,
    /// or promotes it, when the plan says so.
    pub fn step_plan(&self, table: &Arc<RouteTable>, seat: Seat, evidence: &Cumulative) {
        let config = &table.config;
        let Some(policy) = &config.progressive else {
            return;
        };
        let gate = gate_plan(table, seat);
        let now_ms = self.now_ms();
        let decision = table.progress.tick(StepLook {
            evidence,
            policy,
            gate: &gate,
            canary: config.canary(),
            weight: config.weight,
            share: table.canary_share(),
            now_ms,
        });
        self.publish_plan(table, &gate, now_ms, seat);
        let at = || rfc3339::format(SystemTime::now());
        match decision {
            Decision::Hold => {
                if let Some(reason) = table.progress.pause_news(policy.paused) {
                    warn!(canary = %config.canary(), %reason, "step plan paused");
                    self.announce_step(StepEvent::Paused { reason });
                }
            }
            Decision::Advance { from, to } => {
                let evidence = table.progress.describe(&gate, now_ms);
                let mut next = RouteTable::clone(table);
                Arc::make_mut(&mut next.config).weight = to;
                if self.replace(table, Arc::new(next)) {
                    table.progress.left(to.to_string(), now_ms, at());
                    info!(canary = %config.canary(), from, to, %evidence, "canary step promoted");
                    self.announce_step(StepEvent::Advanced {
                        from,
                        to,
                        revision: table.revision.clone(),
                        evidence,
                    });
                }
            }
            Decision::Promote { from } => {
                let evidence = table.progress.describe(&gate, now_ms);
                let canary = config.canary();
                let mut next = RouteTable::clone(table);
                let promoted = Arc::make_mut(&mut next.config);
                promoted.stable = canary;
                promoted.weight = 0;
                let at = at();
                next.progress = Arc::new(table.progress.promoted(promoted, now_ms, &at));
                // The old stable is now the canary, with no traffic and a clean record.
                next.judge = Arc::new(Judge::starting_now(&self.tally));
                if self.replace(table, Arc::new(next)) {
                    self.tally.reset_streak(canary.other());
                    info!(%canary, from, %evidence, "canary promoted: it is stable now");
                    self.announce_step(StepEvent::Promoted {
                        stable: canary,
                        revision: table.revision.clone(),
                        evidence,
                    });
                }
            }
        }
    }
}

impl Runtime {
    /// Sets the `canary_proxy_progressive_*` gauges from `table`'s plan.
    fn publish_plan(&self, table: &RouteTable, gate: &GatePlan, now_ms: u64, seat: Seat) {
        let m = &self.metrics.progressive;
        let Some(status) = table.progress.status(table, now_ms, seat) else {
            return;
        };
        let total = f64::from(table.config.weight_total);
        m.step_percent.set(
            status
                .current_step
                .map_or(0.0, |w| 100.0 * f64::from(w) / total),
        );
        m.step_seconds.set(status.seconds_at_step.unwrap_or(0.0));
        m.steps_done.set(status.steps_done.len() as i64);
        m.paused.set(i64::from(status.state == "paused"));
        let evidence = status.gate.as_ref();
        m.failures
            .set(evidence.map_or(0.0, |g| g.failure_statistic));
        m.latency
            .set(evidence.and_then(|g| g.latency_statistic).unwrap_or(0.0));
        m.boundary.set(gate.boundary);
    }
}

/// The gate's constants for `table`'s rollback policy, for a replica in `seat`: the fleet's
/// judge gates on failures only, as the fleet's evidence carries no latency histograms.
pub fn gate_plan(table: &RouteTable, seat: Seat) -> GatePlan {
    let policy = &table.config.rollback;
    GatePlan::new(
        policy.max_error_rate,
        policy.confidence,
        latency_plan(table).filter(|_| seat == Seat::Alone),
    )
}

/// The latency trigger's constants for `table`, when it is on.
pub fn latency_plan(table: &RouteTable) -> Option<LatencyPlan> {
    let policy = &table.config.rollback;
    policy
        .latency
        .map(|l| LatencyPlan::new(l.max_increase, l.quantile, policy.confidence))
}

/// Carries the plan of `previous` (the same canary, not rolled back) into `table`, a reload's
/// new table: the steps done, and the plan's weight unless the source's own weight changed.
pub fn carry(table: &mut RouteTable, previous: &RouteTable) {
    if table.config.progressive.is_none() || previous.config.progressive.is_none() {
        return;
    }
    let weight = previous
        .progress
        .reload(&table.config, previous.config.weight);
    if weight != table.config.weight && weight <= table.config.weight_total {
        Arc::make_mut(&mut table.config).weight = weight;
    }
    table.progress = previous.progress.clone();
}
