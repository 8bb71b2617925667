//! The step plan's moves, recorded in the ConfigMap (the step itself, so `kubectl get` shows
//! it and a restart resumes there) and as Events (`CanaryStepPromoted`, `CanaryPromoted`,
//! `CanaryPaused`).

use canary_controller::{
    Client, ConfigMapRef, EventKind, StepOutcome, StepWrite, WRITE_BACK_DEADLINE,
};
use canary_proxy::progressive::StepEvent;
use tracing::warn;

/// Records `event` in its own task: the write under the precondition of the revision the move
/// was decided on, then its Event. A move that lost to an edit is not pushed through: the
/// watch brings the edit, and the plan follows it.
pub fn record(client: &Client, cm: &ConfigMapRef, event: StepEvent) {
    let (client, cm) = (client.clone(), cm.clone());
    tokio::spawn(async move {
        let (write, kind, message) = match event {
            StepEvent::Advanced {
                from,
                to,
                revision,
                evidence,
            } => (
                Some(StepWrite {
                    weight: to,
                    stable: None,
                    seen_resource_version: revision.to_string(),
                }),
                EventKind::StepPromoted,
                format!("canary weight {from} -> {to}: {evidence}"),
            ),
            StepEvent::Promoted {
                stable,
                revision,
                evidence,
            } => (
                Some(StepWrite {
                    weight: 0,
                    stable: Some(stable.as_str().to_owned()),
                    seen_resource_version: revision.to_string(),
                }),
                EventKind::Promoted,
                format!("{stable} promoted: it is stable, with all the traffic; {evidence}"),
            ),
            StepEvent::Paused { reason } => (None, EventKind::Paused, reason),
        };
        if let Some(write) = write {
            match canary_controller::write_step(&client, &cm, &write, WRITE_BACK_DEADLINE).await {
                Ok(StepOutcome::Written { .. }) => {}
                Ok(outcome) => {
                    warn!(configmap = %cm, ?outcome, "the step was not written: the ConfigMap changed meanwhile");
                    return;
                }
                Err(error) => {
                    warn!(configmap = %cm, %error, "the step could not be written; a restart resumes at the previous step");
                    return;
                }
            }
        }
        canary_controller::record_event(&client, &cm, kind, &message).await;
    });
}
