//! Kubernetes Events on the ConfigMap, so `kubectl describe configmap` tells what happened.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::ConfigMapRef;

/// The component named as the source of our Events.
const COMPONENT: &str = "canary-proxy";

/// Longest message we send; events.k8s.io caps notes at 1 kB, so stay within it.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Why an Event is recorded; both are `Warning`s, as something needs a person's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The data path rolled the canary back (reason `CanaryRolledBack`).
    RolledBack,
    /// A new ConfigMap content was invalid and the last good config is kept (reason
    /// `ConfigRejected`).
    ConfigRejected,
}

impl EventKind {
    /// The Event's `reason`, a CamelCase word as Kubernetes convention has it.
    pub fn reason(self) -> &'static str {
        match self {
            EventKind::RolledBack => "CanaryRolledBack",
            EventKind::ConfigRejected => "ConfigRejected",
        }
    }
}

/// Records a `Warning` Event about the ConfigMap (core/v1, as `kubectl describe` lists them).
///
/// An Event is a courtesy to the operator: failing to write one is logged and otherwise
/// ignored, never allowed to disturb the proxy. An API server that does not answer holds this
/// call for as long as the client's timeouts, so run it in its own task.
pub async fn record_event(client: &Client, cm: &ConfigMapRef, kind: EventKind, message: &str) {
    let event = build_event(client, cm, kind, message).await;
    let api: Api<Event> = Api::namespaced(client.clone(), &cm.namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => tracing::debug!(configmap = %cm, reason = kind.reason(), "event recorded"),
        Err(error) => tracing::warn!(
            configmap = %cm,
            reason = kind.reason(),
            %error,
            "could not record a Kubernetes Event (is `create` on events allowed by the Role?)"
        ),
    }
}

async fn build_event(client: &Client, cm: &ConfigMapRef, kind: EventKind, message: &str) -> Event {
    let now = SystemTime::now();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| COMPONENT.to_owned());
    let timestamp = Timestamp::try_from(now).ok().map(Time);
    Event {
        metadata: ObjectMeta {
            // client-go's naming: object name plus a hex timestamp, unique per event.
            name: Some(format!("{}.{nanos:x}", cm.name)),
            namespace: Some(cm.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: involved_object(client, cm).await,
        reason: Some(kind.reason().to_owned()),
        message: Some(truncate(message, MAX_MESSAGE_BYTES).to_owned()),
        type_: Some("Warning".to_owned()),
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
    use super::truncate;

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("héllo", 3), "hé");
    }
}
