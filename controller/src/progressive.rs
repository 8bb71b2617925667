//! Writing the step plan's moves into the ConfigMap: `data.canary-weight` for a step, and
//! `data.stable` with `canary-weight: "0"` for a full promotion, so the ConfigMap always shows
//! the step the proxy routes by and a restart resumes at it.
//!
//! The patch carries the resourceVersion the step was decided on, as the rollback write-back
//! does: a ConfigMap edited since (a person moved the weight, paused, or resumed a rollback)
//! answers 409, and the step is not pushed through; the proxy's watch applies that edit, which
//! decides what the plan does next.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use serde_json::json;

use crate::write_back::{Patched, patch_within_deadline};
use crate::{ConfigMapRef, Error};

/// One move of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepWrite {
    /// The canary weight to write.
    pub weight: u32,
    /// With a full promotion, the color that becomes `stable`.
    pub stable: Option<String>,
    /// The resourceVersion the move was decided on: the patch's precondition.
    pub seen_resource_version: String,
}

/// How a step write ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Written, at this resourceVersion.
    Written {
        /// The resourceVersion the patch produced.
        resource_version: String,
    },
    /// The ConfigMap changed since the move was decided: nothing written.
    Superseded,
    /// The ConfigMap no longer exists.
    Deleted,
}

/// Writes `step` into the ConfigMap under its precondition, retrying transient failures until
/// `deadline`. Run it in its own task, off the data path.
pub async fn write_step(
    client: &Client,
    cm: &ConfigMapRef,
    step: &StepWrite,
    deadline: Duration,
) -> Result<StepOutcome, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
    let outcome = match patch_within_deadline(&api, cm, patch_body(step), deadline).await? {
        Patched::Done(resource_version) => StepOutcome::Written { resource_version },
        Patched::Conflict => StepOutcome::Superseded,
        Patched::NotFound => StepOutcome::Deleted,
    };
    tracing::info!(configmap = %cm, weight = step.weight, stable = ?step.stable, ?outcome, "step written to the ConfigMap");
    Ok(outcome)
}

fn patch_body(step: &StepWrite) -> serde_json::Value {
    let mut data = json!({ "canary-weight": step.weight.to_string() });
    if let Some(stable) = &step.stable {
        data["stable"] = json!(stable);
    }
    json!({
        "metadata": { "resourceVersion": step.seen_resource_version },
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_patches_the_weight_and_a_promotion_the_stable_color_too() {
        let step = StepWrite {
            weight: 25,
            stable: None,
            seen_resource_version: "7".into(),
        };
        assert_eq!(
            patch_body(&step),
            json!({ "metadata": { "resourceVersion": "7" }, "data": { "canary-weight": "25" } })
        );
        let promotion = StepWrite {
            weight: 0,
            stable: Some("green".into()),
            ..step
        };
        assert_eq!(
            patch_body(&promotion)["data"],
            json!({ "canary-weight": "0", "stable": "green" })
        );
    }
}
