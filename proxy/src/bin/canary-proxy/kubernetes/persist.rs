//! Keeping the ConfigMap's rollback record and this replica's routing in step.
//!
//! Two pure decisions, made on every ConfigMap content the watch delivers:
//!
//! - [`rollback_to_apply`]: the rollback the runtime applies with the new content: the
//!   record in the annotations when it names the configured canary; otherwise this replica's
//!   own rollback, not yet recorded, while the canary is the same (an unrelated edit or a
//!   GitOps re-apply must not resurrect it). A rollback whose record disappears was resumed.
//! - [`work_for`]: what the ConfigMap still needs: the record of a rollback this replica holds
//!   and the ConfigMap lacks (after an outage, or a write that lost a race with an edit), or
//!   the removal of a record that applies to no configured canary (the canary was replaced).
//!
//! Each write is made against the resourceVersion just seen, so it cannot land on a newer
//! revision (an operator's resume); [`Persister`] runs one at a time, with a deadline, and
//! tries again when the ConfigMap changes, when the API server is back, or after a backoff.

use std::collections::BTreeMap;
use std::time::Duration;

use canary_controller::{
    Canary, Client, ConfigMapRef, Current, EventKind, RollbackRecord, RollbackState,
    WRITE_BACK_DEADLINE, WriteBackOutcome,
};
use canary_proxy::config::Color;
use canary_proxy::route::{RolledBack, RouteTable};
use canary_proxy::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// First pause after a failed write; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Longest pause between failed writes while nothing else (a change, a reconnection) prompts
/// another try.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// A ConfigMap content as the watch delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// `data`.
    pub data: BTreeMap<String, String>,
    /// The `canary-proxy/` annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its resourceVersion: the revision, and the precondition of our writes.
    pub resource_version: String,
}

impl Content {
    fn rollback_state(&self) -> RollbackState {
        RollbackState::read(&self.data, &self.annotations)
    }

    /// Whether the annotations record a rollback of `color`, the configured canary.
    fn records(&self, color: Color) -> bool {
        matches!(self.rollback_state(), RollbackState::Applies(p) if p.color == color.as_str())
    }
}

/// The rollback to apply with `next`, given the `accepted` content the runtime runs (with its
/// `table`): see the module docs.
pub fn rollback_to_apply(
    next: &Content,
    accepted: Option<&Content>,
    table: Option<&RouteTable>,
) -> Option<RolledBack> {
    if let RollbackState::Applies(record) = next.rollback_state() {
        return Some(RolledBack {
            color: if record.color == "blue" {
                Color::Blue
            } else {
                Color::Green
            },
            reason: record.reason,
            at: record.at,
            revision: record.revision.into(),
        });
    }
    let rolled = table?.rolled_back.as_deref()?;
    let accepted = accepted?;
    if accepted.records(rolled.color) {
        // Recorded before and not now: a person resumed it.
        return None;
    }
    let before = Canary::configured(&accepted.data)?;
    let same_canary = before.color == rolled.color.as_str()
        && Canary::configured(&next.data).is_some_and(|now| now.is(before.color, &before.upstream));
    same_canary.then(|| rolled.clone())
}

/// A write the ConfigMap needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Record this replica's rollback.
    Record(RollbackRecord),
    /// Remove a record that applies to no configured canary, at this resourceVersion.
    Clear(String),
}

/// What `seen` (the latest content, accepted or not) still needs, given the `accepted` content
/// and the runtime's `table`: see the module docs.
pub fn work_for(
    seen: &Content,
    accepted: Option<&Content>,
    table: Option<&RouteTable>,
) -> Option<Work> {
    let state = seen.rollback_state();
    let unrecorded = table
        .and_then(|t| t.rolled_back.as_deref())
        .zip(accepted)
        .filter(|(rolled, accepted)| {
            !matches!(state, RollbackState::Applies(_)) && !accepted.records(rolled.color)
        });
    if let Some((rolled, accepted)) = unrecorded
        && let Some(canary) = Canary::configured(&accepted.data)
        && canary.color == rolled.color.as_str()
        && Canary::configured(&seen.data).is_some_and(|c| c.is(canary.color, &canary.upstream))
    {
        return Some(Work::Record(RollbackRecord {
            canary_color: canary.color.to_owned(),
            canary_upstream: canary.upstream,
            reason: rolled.reason.clone(),
            at: rolled.at.clone(),
            judged_revision: rolled.revision.to_string(),
            seen_resource_version: seen.resource_version.clone(),
        }));
    }
    (state == RollbackState::Stale).then(|| Work::Clear(seen.resource_version.clone()))
}

/// How a write ended, as the persister needs it.
enum Done {
    /// Finished without error at this resourceVersion: nothing more until the content changes.
    Settled,
    /// Not written: the ConfigMap changed (or could not be re-read). Tried again at once if
    /// this is still the configuration judged, only other metadata having moved (a
    /// `kubectl apply` that changed nothing but its own annotation).
    Superseded(Option<Current>),
    /// Failed (API server away, deadline passed): try again later.
    Failed,
}

/// Runs the writes [`work_for`] asks for, one at a time.
pub struct Persister {
    client: Client,
    cm: ConfigMapRef,
    /// The latest content the watch delivered; `None` before the first, or once deleted.
    pub seen: Option<Content>,
    /// The content the runtime accepted last.
    pub accepted: Option<Content>,
    /// The resourceVersion whose write finished without error: not tried again.
    settled: Option<String>,
    /// The write under way.
    in_flight: Option<JoinHandle<(String, Done)>>,
    /// After a failure: no new try before this, unless the content or the link changes.
    retry_at: Option<Instant>,
    /// The next pause after a failure.
    retry_delay: Duration,
}

impl Persister {
    /// A persister for `cm`, with nothing seen yet.
    pub fn new(client: Client, cm: ConfigMapRef) -> Self {
        Self {
            client,
            cm,
            seen: None,
            accepted: None,
            settled: None,
            in_flight: None,
            retry_at: None,
            retry_delay: FIRST_RETRY_DELAY,
        }
    }

    /// Something changed (new content, the API server back): retry at once if needed.
    pub fn prompt(&mut self) {
        self.retry_at = None;
    }

    /// Starts the write the ConfigMap needs, if any and if none is under way.
    pub fn reconcile(&mut self, runtime: &Runtime) {
        if self.in_flight.is_some() || self.retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        let Some(seen) = &self.seen else { return };
        if self.settled.as_ref() == Some(&seen.resource_version) {
            return;
        }
        let table = runtime.routes();
        let Some(work) = work_for(seen, self.accepted.as_ref(), table.as_deref()) else {
            return;
        };
        let (client, cm) = (self.client.clone(), self.cm.clone());
        let rv = seen.resource_version.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let done = run(&client, &cm, work).await;
            (rv, done)
        }));
    }

    /// Waits for the write under way, or for the retry time; pending for ever if neither.
    pub async fn next_wake(&mut self) {
        match (&mut self.in_flight, self.retry_at) {
            (Some(task), _) => {
                let (rv, done) = task.await.unwrap_or_else(|_| (String::new(), Done::Failed));
                self.in_flight = None;
                match done {
                    Done::Superseded(Some(current))
                        if self.seen.as_ref().is_some_and(|seen| {
                            seen.resource_version == rv
                                && seen.data == current.data
                                && seen.annotations == current.annotations
                        }) =>
                    {
                        if let Some(seen) = &mut self.seen {
                            seen.resource_version = current.resource_version;
                        }
                    }
                    Done::Settled | Done::Superseded(_) => {
                        self.settled = Some(rv);
                        self.retry_delay = FIRST_RETRY_DELAY;
                    }
                    Done::Failed => {
                        self.retry_at = Some(Instant::now() + self.retry_delay);
                        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
                    }
                }
            }
            (None, Some(at)) => {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            (None, None) => std::future::pending().await,
        }
    }

    /// Stops the write under way (shutdown).
    pub fn abort(&mut self) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
    }
}

/// One write, with its log line and, for a rollback that this write recorded, the Event.
async fn run(client: &Client, cm: &ConfigMapRef, work: Work) -> Done {
    match work {
        Work::Record(record) => {
            match canary_controller::write_back(client, cm, &record, WRITE_BACK_DEADLINE).await {
                Ok(WriteBackOutcome::Superseded(current)) => Done::Superseded(current),
                Ok(outcome) => {
                    info!(configmap = %cm, ?outcome, "rollback write-back finished");
                    if matches!(outcome, WriteBackOutcome::Written { .. }) {
                        // Only the write that took effect tells the operator, once; in its own
                        // task, so a slow Event never holds up the next write.
                        let message =
                            format!("{} rolled back: {}", record.canary_color, record.reason);
                        super::spawn_event(client, cm, EventKind::RolledBack, message);
                    }
                    Done::Settled
                }
                Err(error) => {
                    warn!(configmap = %cm, %error, "rollback not written back yet; it stays pending and is retried");
                    Done::Failed
                }
            }
        }
        Work::Clear(rv) => {
            match canary_controller::clear_stale_rollback(client, cm, &rv, WRITE_BACK_DEADLINE)
                .await
            {
                Ok(WriteBackOutcome::Superseded(current)) => Done::Superseded(current),
                Ok(_) => Done::Settled,
                Err(error) => {
                    warn!(configmap = %cm, %error, "stale rollback annotations not cleared yet");
                    Done::Failed
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use canary_controller::{
        ROLLBACK_REASON_ANNOTATION, ROLLED_BACK_AT_ANNOTATION, ROLLED_BACK_CANARY_ANNOTATION,
        ROLLED_BACK_REVISION_ANNOTATION, ROLLED_BACK_UPSTREAM_ANNOTATION,
    };
    use std::sync::Arc;

    use canary_proxy::config::Config;

    use super::*;

    fn content(rv: &str, data: &[(&str, &str)], annotations: &[(&str, &str)]) -> Content {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Content {
            data: map(data),
            annotations: map(annotations),
            resource_version: rv.into(),
        }
    }

    const CANARY: [(&str, &str); 3] = [
        ("blue.upstream", "blue:80"),
        ("green.upstream", "green:80"),
        ("canary-weight", "5"),
    ];

    const RECORD: [(&str, &str); 5] = [
        (ROLLED_BACK_AT_ANNOTATION, "2026-01-01T00:00:00.000Z"),
        (ROLLBACK_REASON_ANNOTATION, "canary failed 20 of 20"),
        (ROLLED_BACK_CANARY_ANNOTATION, "green"),
        (ROLLED_BACK_UPSTREAM_ANNOTATION, "green:80"),
        (ROLLED_BACK_REVISION_ANNOTATION, "1"),
    ];

    /// The table the runtime runs for `accepted`, rolled back in memory if `rolled`.
    fn table(accepted: &Content, rolled: bool) -> RouteTable {
        let config = Config::from_map(&accepted.data).unwrap();
        let mut table = RouteTable::new(config, &accepted.resource_version);
        table.rolled_back = rolled.then(|| {
            Arc::new(RolledBack {
                color: Color::Green,
                reason: "canary failed 20 of 20".into(),
                at: "2026-01-01T00:00:00.000Z".into(),
                revision: accepted.resource_version.as_str().into(),
            })
        });
        table
    }

    #[test]
    fn an_unrecorded_rollback_survives_edits_of_the_same_canary_only() {
        let first = content("1", &CANARY, &[]);
        let rolled = table(&first, true);
        let mut edit = first.clone();
        edit.resource_version = "2".into();
        edit.data.insert("timeout.request".into(), "30s".into());
        let kept = rollback_to_apply(&edit, Some(&first), Some(&rolled)).expect("kept");
        assert_eq!(&*kept.revision, "1", "still names the revision it judged");
        let Some(Work::Record(record)) = work_for(&edit, Some(&first), Some(&rolled)) else {
            panic!("the record is still owed");
        };
        assert_eq!(
            (
                record.seen_resource_version.as_str(),
                record.judged_revision.as_str()
            ),
            ("2", "1")
        );
        let mut release = edit.clone();
        release
            .data
            .insert("green.upstream".into(), "green-v2:80".into());
        assert!(rollback_to_apply(&release, Some(&first), Some(&rolled)).is_none());
        assert_eq!(work_for(&release, Some(&first), Some(&rolled)), None);
    }

    #[test]
    fn a_record_applies_at_any_weight_and_its_removal_resumes() {
        let recorded = content("3", &CANARY, &RECORD);
        let reapplied = recorded.clone();
        assert!(rollback_to_apply(&reapplied, None, None).is_some());
        let rolled = table(&recorded, true);
        assert_eq!(work_for(&recorded, Some(&recorded), Some(&rolled)), None);
        let resumed = content("4", &CANARY, &[]);
        assert!(rollback_to_apply(&resumed, Some(&recorded), Some(&rolled)).is_none());
        assert_eq!(
            work_for(&resumed, Some(&recorded), Some(&rolled)),
            None,
            "a resume is never written over"
        );
    }

    #[test]
    fn a_record_of_a_replaced_canary_is_cleared_not_applied() {
        let mut promoted = content("5", &CANARY, &RECORD);
        promoted.data.insert("stable".into(), "green".into());
        promoted.data.insert("canary-weight".into(), "0".into());
        assert!(rollback_to_apply(&promoted, None, None).is_none());
        let running = table(&promoted, false);
        assert_eq!(
            work_for(&promoted, Some(&promoted), Some(&running)),
            Some(Work::Clear("5".into()))
        );
    }
}
