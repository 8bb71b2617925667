//! Response accounting: the one place where an exchange's outcome is counted, per color, in
//! the metrics and in the rollback evidence, and where a weighted canary failure asks the judge
//! for a verdict. Only upstream outcomes arrive here; a client's own faults never count against
//! an upstream. An exchange is accounted when it ends: a long stream in the moment it
//! finishes, a body the upstream breaks as the failure it is.
//!
//! The timer ([`Runtime::keep_judging`]) looks at the evidence between failures too, so that
//! successes and stable's outcomes are taken in, and keeps the window's readings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Color;
use crate::metrics::ErrorKind;
use crate::progressive::apply::latency_plan;
use crate::progressive::{Cumulative, Seat};
use crate::rollback::judge::Look;
use crate::rollback::sequential::Verdict;
use crate::rollback::tally::Evidence;
use crate::route::{Choice, RouteTable};
use crate::runtime::Runtime;
use crate::upstream::endpoints::Served;

/// How often the timer looks at the evidence.
const TICK: Duration = Duration::from_millis(100);

/// How one exchange with an upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status, read to its end (or left early by the client).
    Response(u16),
    /// A gRPC response (HTTP 200) that ended with this `grpc-status`.
    Grpc(u32),
    /// A response with this status whose body the upstream broke off, for the reason given.
    Cut(u16, ErrorKind),
    /// No response: the kind says why.
    NoResponse(ErrorKind),
}

impl Runtime {
    /// Counts `outcome` for the color `choice` sent the request to, at the endpoint `served`
    /// (none when the color had none),
    /// whose response headers came `latency` after it was sent, and on a weighted canary
    /// failure asks for a verdict. A failure that is the endpoint's own fault (see
    /// [`outlier`](crate::upstream::outlier)) is held, then counted as forced (not evidence);
    /// one that turns out to be the version's is counted as weighted, late. A request to a
    /// color without any endpoint is counted, never judged.
    pub fn account(
        &self,
        table: &Arc<RouteTable>,
        choice: Choice,
        served: Option<&Served>,
        outcome: Outcome,
        latency: Duration,
    ) {
        let color = choice.color;
        let metrics = self.metrics.color(color);
        let policy = &table.config.rollback;
        let failed = match outcome {
            Outcome::Response(status) => {
                metrics.response(status);
                metrics.latency(latency);
                let failed = policy.failure_statuses.contains(status);
                if failed {
                    metrics.error(ErrorKind::Status);
                }
                failed
            }
            Outcome::Grpc(code) => {
                metrics.response(200);
                metrics.latency(latency);
                let failed = policy.grpc_failure_codes.contains(code);
                if failed {
                    metrics.error(ErrorKind::Status);
                }
                failed
            }
            Outcome::Cut(status, kind) => {
                metrics.response(status);
                metrics.latency(latency);
                metrics.error(kind);
                true
            }
            Outcome::NoResponse(kind) => {
                metrics.no_response(kind);
                true
            }
        };
        let latency = (!matches!(outcome, Outcome::NoResponse(_))).then_some(latency);
        let weighted = choice.evidence == Evidence::Weighted;
        let settled =
            served.map(|s| table.upstreams[color.index()].outcome(s, failed, latency, weighted));
        let against_version = match settled {
            // A weighted failure at an endpoint: recorded as the endpoints' rule settles it.
            Some(settled) if failed && weighted => {
                let mut latency = latency;
                for (evidence, count) in [
                    (Evidence::Forced, settled.pod),
                    (Evidence::Weighted, settled.version),
                ] {
                    for _ in 0..count {
                        self.tally.record(color, evidence, true, latency.take());
                    }
                }
                settled.version > 0
            }
            // No endpoint at all (a Service whose pods have not arrived or are none ready): a
            // matter of the rollout, not of what the version answers; counted, never judged.
            None => {
                self.tally.record(color, Evidence::Forced, failed, latency);
                false
            }
            Some(_) => {
                self.tally.record(color, choice.evidence, failed, latency);
                false
            }
        };

        // Successes cannot make a rollback due, so the healthy path stops here.
        if against_version
            && color == table.config.canary()
            && judging(table)
            && let Some(verdict) = table.judge.after_failure(self.look(table))
        {
            self.act(table, verdict);
        }
    }

    /// Looks at the evidence every [`TICK`] and keeps the window's readings, until `stop`.
    pub async fn keep_judging(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => self.tick(),
            }
        }
    }

    /// One look of the timer.
    pub fn tick(&self) {
        let now = self.now_ms();
        {
            let mut history = self.history();
            if history.due(now) {
                history.record(now, Color::ALL.map(|c| self.tally.totals(c)));
            }
        }
        let table = self.routes().clone();
        match table {
            Some(table) if judging(&table) => {
                let verdict = table.judge.tick(self.look(&table));
                self.act(&table, verdict);
                // In a fleet it is the fleet judge's; a replica alone would multiply false
                // alarms by the replicas.
                if self.fleet().is_none() {
                    self.judge_latency(&table);
                }
            }
            _ => {
                for color in Color::ALL {
                    self.metrics.color(color).shared_fault.set(0);
                }
            }
        }
        // The plan runs after the verdict, on the table it left, unless that rolled back; with
        // `rollback.enabled: "false"` it still moves on the gate's evidence. In a fleet no
        // replica moves the weight on its own share: the judge runs it on the fleet's.
        if self.fleet().is_none()
            && let Some(table) = self.routes().clone()
            && table.rolled_back.is_none()
        {
            self.step_plan(&table, Seat::Alone, &Cumulative::of(&self.tally));
        }
    }

    fn look<'a>(&'a self, table: &'a RouteTable) -> Look<'a> {
        Look {
            tally: &self.tally,
            plan: &table.plan,
            canary: table.config.canary(),
            share: table.canary_share(),
            streak_only: self.fleet().is_some(),
        }
    }

    /// One look of the latency trigger, when it is on; rolls back on its verdict.
    fn judge_latency(&self, table: &Arc<RouteTable>) {
        let Some(plan) = latency_plan(table) else {
            return;
        };
        if let Some(evidence) = table.judge.tick_latency(self.look(table), &plan) {
            self.roll_back(table, evidence.to_string());
        }
    }

    fn act(&self, table: &Arc<RouteTable>, verdict: Verdict) {
        // In a fleet, whether the fault is shared is the fleet judge's to say.
        if self.fleet().is_none() {
            self.set_shared_fault(table.config.canary(), verdict == Verdict::SharedFault);
        }
        if let Verdict::RollBack(evidence) = verdict {
            self.roll_back(table, evidence.reason());
        }
    }
}

impl Runtime {
    /// Sets `canary_proxy_shared_fault`: 1 for `canary` while it fails like stable.
    pub fn set_shared_fault(&self, canary: Color, shared: bool) {
        let metric = |c: Color| &self.metrics.color(c).shared_fault;
        metric(canary).set(i64::from(shared));
        metric(canary.other()).set(0);
    }
}

/// Whether `table`'s canary is being judged: rollback on, not rolled back, and a threshold a
/// canary can exceed.
fn judging(table: &RouteTable) -> bool {
    table.config.rollback.enabled && table.rolled_back.is_none() && table.plan.can_roll_back()
}
