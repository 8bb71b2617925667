//! Response accounting: the one place where an exchange's outcome is counted, per color, in
//! the metrics and in the sliding windows, and where a canary failure asks for a rollback
//! decision. Only upstream outcomes arrive here; a client's own faults never count against
//! an upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Color;
use crate::metrics::ErrorKind;
use crate::rollback::decision::{self, Evidence, Streaks, Verdict};
use crate::route::RouteTable;
use crate::runtime::Runtime;

/// How one exchange with an upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status.
    Response(u16),
    /// A gRPC response (HTTP 200) ended with this `grpc-status`.
    Grpc(u32),
    /// No response: the kind says why.
    NoResponse(ErrorKind),
}

impl Runtime {
    /// Counts `outcome` for `color` of an exchange that began at `started` and got its
    /// answer `latency` later, and, on a canary failure, applies the rollback rule.
    pub fn account(
        &self,
        table: &Arc<RouteTable>,
        color: Color,
        outcome: Outcome,
        started: Instant,
        latency: Duration,
    ) {
        let metrics = self.metrics.color(color);
        let policy = &table.config.rollback;
        let failed = match outcome {
            Outcome::Response(status) => {
                metrics.response(status);
                metrics.duration.observe(latency.as_secs_f64());
                let failed = policy.failure_statuses.contains(status);
                if failed {
                    metrics.error(ErrorKind::Status);
                }
                failed
            }
            Outcome::Grpc(code) => {
                metrics.response(200);
                metrics.duration.observe(latency.as_secs_f64());
                let failed = policy.grpc_failure_codes.contains(code);
                if failed {
                    metrics.error(ErrorKind::Status);
                }
                failed
            }
            Outcome::NoResponse(kind) => {
                metrics.no_response(kind);
                true
            }
        };
        // The window's clock, without reading the system clock again.
        let now = self.ms_at(started + latency);
        let latency = (!matches!(outcome, Outcome::NoResponse(_))).then_some(latency);
        table.windows[color.index()].record(now, failed, latency);

        // Successes cannot make a rollback due, so the healthy path stops here.
        if failed && policy.enabled && color == table.config.canary() && table.rolled_back.is_none()
        {
            match self.verdict(table, now) {
                Verdict::RollBack(evidence) => {
                    self.roll_back(table, reason(&evidence, policy.max_error_rate))
                }
                verdict => metrics
                    .shared_fault
                    .set(i64::from(verdict == Verdict::SharedFault)),
            }
        }
    }

    /// The rollback rule applied to `table`'s windows at `now_ms`, the canary's failure
    /// streak included.
    pub fn verdict(&self, table: &RouteTable, now_ms: u64) -> Verdict {
        let config = &table.config;
        let canary = &table.windows[config.canary().index()];
        let stable = &table.windows[config.stable.index()];
        decision::decide_with_streaks(
            canary.counts(now_ms),
            stable.counts(now_ms),
            Streaks {
                canary: canary.streak(now_ms),
                stable: stable.streak(now_ms),
            },
            config.rollback.max_error_rate,
            config.rollback.min_requests,
        )
    }
}

fn reason(e: &Evidence, max_error_rate: f64) -> String {
    let pct = |c: crate::rollback::window::Counts| 100.0 * c.failure_rate();
    let mut reason = if e.streak {
        format!(
            "canary failed its last {} requests in a row, above the {}% threshold",
            e.canary.requests,
            100.0 * max_error_rate
        )
    } else {
        format!(
            "canary failed {} of {} requests ({:.1}%) in the window, above the {}% threshold",
            e.canary.failures,
            e.canary.requests,
            pct(e.canary),
            100.0 * max_error_rate
        )
    };
    if e.threshold_only {
        reason.push_str(&format!(
            "; stable had {} requests, too few to tell whether it shares the fault",
            e.stable.requests
        ));
    } else {
        reason.push_str(&format!(
            "; stable failed {} of {} ({:.1}%)",
            e.stable.failures,
            e.stable.requests,
            pct(e.stable)
        ));
    }
    reason
}
