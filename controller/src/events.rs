//! Kubernetes Events on the ConfigMap, so `kubectl describe configmap` tells what happened.
//!
//! An Event's name is derived from its reason and message, so the same news from several
//! replicas (every replica rejects the same bad revision) merges into one Event whose `count`
//! goes up, as client-go's correlator would do, instead of one Event per replica.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::ConfigMapRef;

/// The component named as the source of our Events.
const COMPONENT: &str = "canary-proxy";

/// Longest message we send; events.k8s.io caps notes at 1 kB, so stay within it.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Longest time one Event may take to record, duplicates' merge included: an Event is a
/// courtesy, never worth a task left hanging on an unresponsive API server.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// Why an Event is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The data path rolled the canary back (reason `CanaryRolledBack`).
    RolledBack,
    /// A new ConfigMap content was invalid and the last good config is kept (reason
    /// `ConfigRejected`).
    ConfigRejected,
    /// The step plan moved the canary to its next step (reason `CanaryStepPromoted`).
    StepPromoted,
    /// The step plan made the canary stable (reason `CanaryPromoted`).
    Promoted,
    /// The step plan was paused (reason `CanaryPaused`).
    Paused,
}

impl EventKind {
    /// The Event's `reason`, a CamelCase word as Kubernetes convention has it.
    pub fn reason(self) -> &'static str {
        match self {
            EventKind::RolledBack => "CanaryRolledBack",
            EventKind::ConfigRejected => "ConfigRejected",
            EventKind::StepPromoted => "CanaryStepPromoted",
            EventKind::Promoted => "CanaryPromoted",
            EventKind::Paused => "CanaryPaused",
        }
    }

    /// The Event's `type`: `Warning` when a person should look (a rollback, a rejected
    /// config, a paused plan), `Normal` for the plan's progress.
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::StepPromoted | EventKind::Promoted => "Normal",
            EventKind::RolledBack | EventKind::ConfigRejected | EventKind::Paused => "Warning",
        }
    }
}

/// Records an Event about the ConfigMap (core/v1, as `kubectl describe` lists them);
/// an Event with the same reason and message already there gets its `count` raised instead.
///
/// An Event is a courtesy to the operator: failing to write one is logged and otherwise
/// ignored, never allowed to disturb the proxy. It gives up after 10 s; still, run it in its
/// own task.
pub async fn record_event(client: &Client, cm: &ConfigMapRef, kind: EventKind, message: &str) {
    let outcome = tokio::time::timeout(EVENT_DEADLINE, post(client, cm, kind, message)).await;
    let error = match outcome {
        Ok(Ok(())) => {
            tracing::debug!(configmap = %cm, reason = kind.reason(), "event recorded");
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {EVENT_DEADLINE:?}"),
    };
    tracing::warn!(
        configmap = %cm,
        reason = kind.reason(),
        %error,
        "could not record a Kubernetes Event (is `create` on events allowed by the Role?)"
    );
}

async fn post(
    client: &Client,
    cm: &ConfigMapRef,
    kind: EventKind,
    message: &str,
) -> Result<(), kube::Error> {
    let event = build_event(client, cm, kind, message).await;
    let api: Api<Event> = Api::namespaced(client.clone(), &cm.namespace);
    match api.create(&PostParams::default(), &event).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        other => return other.map(drop),
    }
    // Already recorded, by this replica or another: count it, as the correlator does.
    let name = event.metadata.name.unwrap_or_default();
    let count = api.get(&name).await?.count.unwrap_or(1);
    let patch = serde_json::json!({
        "count": count + 1,
        "lastTimestamp": event.last_timestamp,
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

async fn build_event(client: &Client, cm: &ConfigMapRef, kind: EventKind, message: &str) -> Event {
    let message = truncate(message, MAX_MESSAGE_BYTES);
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| COMPONENT.to_owned());
    let timestamp = Timestamp::try_from(SystemTime::now()).ok().map(Time);
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(cm, kind, message)),
            namespace: Some(cm.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: involved_object(client, cm).await,
        reason: Some(kind.reason().to_owned()),
        message: Some(message.to_owned()),
        type_: Some(kind.event_type().to_owned()),
        count: Some(1),
        first_timestamp: timestamp.clone(),
        last_timestamp: timestamp,
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(instance),
        ..Event::default()
    }
}

/// `<configmap>.<reason>.<hash of the message>`: the same news gets the same name, whichever
/// replica sends it, and stays a valid (lowercase) object name.
fn event_name(cm: &ConfigMapRef, kind: EventKind, message: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = message.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "{}.{}.{hash:016x}",
        cm.name,
        kind.reason().to_ascii_lowercase()
    )
}

/// The reference `kubectl describe` matches on, UID included; without the UID (the ConfigMap
/// cannot be read) the Event is still written and listed by `kubectl get events`.
async fn involved_object(client: &Client, cm: &ConfigMapRef) -> ObjectReference {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
    let meta = match api.get_opt(&cm.name).await {
        Ok(Some(found)) => found.metadata,
        Ok(None) => ObjectMeta::default(),
        Err(error) => {
            tracing::debug!(configmap = %cm, %error, "reading the ConfigMap's UID for an Event failed");
            ObjectMeta::default()
        }
    };
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("ConfigMap".to_owned()),
        name: Some(cm.name.clone()),
        namespace: Some(cm.namespace.clone()),
        uid: meta.uid,
        resource_version: meta.resource_version,
        field_path: None,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("héllo", 3), "hé");
    }

    #[test]
    fn the_same_news_gets_the_same_name() {
        let cm = ConfigMapRef::new("shop", "canary-proxy").unwrap();
        let name = event_name(&cm, EventKind::ConfigRejected, "revision 7 rejected");
        assert_eq!(
            name,
            event_name(&cm, EventKind::ConfigRejected, "revision 7 rejected")
        );
        assert!(name.starts_with("canary-proxy.configrejected."), "{name}");
        assert_ne!(
            name,
            event_name(&cm, EventKind::ConfigRejected, "revision 8 rejected")
        );
        assert_ne!(
            name,
            event_name(&cm, EventKind::RolledBack, "revision 7 rejected")
        );
    }
}
