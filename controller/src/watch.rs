//! Following one ConfigMap through the API: kube's watcher, turned into source events.
//!
//! kube's [`watcher()`] resumes a broken watch from its last resourceVersion and reports
//! nothing when that succeeds, so a caller could not tell "reconnected" from "still down".
//! This module therefore drops the watcher on any error and, after a jittered backoff
//! ([`DefaultBackoff`]: 0.8 s doubling to 30 s, like client-go), starts a fresh one. A fresh
//! watcher lists before it watches, so every recovery (server back, 410 Gone, in-stream error)
//! is confirmed by a list of our one object: cheap, and it also catches a deletion that
//! happened while we were away.
//!
//! A list that works is not enough to call the link healthy: with LIST allowed and WATCH
//! refused (a 403 after a Role edit), relisting at once would loop at round-trip speed. The
//! backoff is therefore reset only once a watch has delivered an event or stayed open for
//! 5 s (`WATCH_PROOF`); until then each failed watch waits for the next backoff step, and a watch
//! that keeps failing after good lists is reported once as [`SourceEvent::WatchFailing`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, watcher};
use kube::{Api, Client};

use crate::{ANNOTATION_PREFIX, ConfigMapRef};

/// Server-side timeout of each watch request. It bounds how long a silently dead connection
/// (no FIN, no RST) goes unnoticed: the watcher gives up on a silent stream 5 s after this.
const WATCH_TIMEOUT_SECS: u32 = 60;

/// Longest pause between attempts (the backoff's own cap, used if it ever runs dry).
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Two 410 Gone answers closer than this mean relisting is not helping: back off.
const EXPIRY_REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// A watch open this long after its list (or one that delivered an event) works: the backoff
/// starts over.
const WATCH_PROOF: Duration = Duration::from_secs(5);

/// Failed watches after good lists, in a row, that are reported as
/// [`SourceEvent::WatchFailing`]: one may be a connection cut at a bad moment.
const WATCH_FAILURES_REPORTED: u32 = 2;

/// What happened to the watched ConfigMap, as the proxy's config source needs to hear it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The ConfigMap exists with this content, different from the last `Applied` (identical
    /// content is not repeated, whatever its resourceVersion).
    Applied {
        /// The ConfigMap's `data`: the configuration keys, still to be validated.
        data: BTreeMap<String, String>,
        /// Its annotations under the `canary-proxy/` prefix (a persisted rollback).
        annotations: BTreeMap<String, String>,
        /// The resourceVersion of this content: the config revision, and the precondition for
        /// a rollback write-back.
        resource_version: String,
    },
    /// The ConfigMap does not exist (yet); nothing was ever applied. Sent once.
    Missing,
    /// The ConfigMap was applied before and is gone now; keep serving the last good config.
    Deleted,
    /// The API server cannot be reached or keeps failing; retrying with backoff. Sent once per
    /// outage, with the first error.
    Disconnected {
        /// The first error of this outage.
        error: String,
    },
    /// The ConfigMap can be listed but the watch keeps failing (403 after a Role edit, a proxy
    /// in between that cuts long requests): changes are seen only at each relist, which backs
    /// off up to 30 s. Sent once, until a watch works again (then `Reconnected`).
    WatchFailing {
        /// The watch's last error.
        error: String,
    },
    /// The API server answers again after a `Disconnected`, or the watch works again after a
    /// `WatchFailing`; the ConfigMap was re-listed and any change is sent right after this
    /// event.
    Reconnected,
}

/// Watches one ConfigMap for as long as the stream is polled; it never ends by itself.
///
/// The first event is `Applied`, `Missing` or `Disconnected`. Errors never end the stream: a
/// failure that an immediate retry cures goes unreported; otherwise it becomes one
/// `Disconnected`, then one `Reconnected` when the API server answers again.
pub fn watch(client: Client, cm: ConfigMapRef) -> impl Stream<Item = SourceEvent> + Send + 'static {
    futures_util::stream::unfold(ConfigMapWatch::new(client, cm), |mut w| async move {
        let event = w.next_event().await;
        Some((event, w))
    })
}

/// Whether the API server is answering, as far as the watch knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No list has succeeded yet and no error has been seen.
    Connecting,
    /// The last list succeeded and the watch is running.
    Up,
    /// One request failed; retrying at once before calling it an outage.
    Suspect,
    /// An outage was reported; retrying with backoff until a list succeeds.
    Down,
    /// Lists succeed but watches fail: reported, retrying with backoff until a watch works.
    WatchFailing,
}

/// What the proxy has been told about the object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Presence {
    /// Nothing yet.
    Unknown,
    /// `Missing` was sent.
    Missing,
    /// `Applied` was sent with this data and these annotations.
    Present(BTreeMap<String, String>, BTreeMap<String, String>),
    /// `Deleted` was sent.
    Deleted,
}

/// The state behind [`watch`].
struct ConfigMapWatch {
    /// The ConfigMaps of the namespace; the watcher narrows it to our name.
    api: Api<ConfigMap>,
    /// The followed ConfigMap, for the logs and the name check.
    cm: ConfigMapRef,
    /// kube's watcher; `None` after an error, so the next poll starts a fresh list-then-watch.
    stream: Option<BoxStream<'static, Result<watcher::Event<ConfigMap>, watcher::Error>>>,
    /// Delays between attempts while the API server fails; reset once it answers.
    backoff: DefaultBackoff,
    /// Set after an error: wait this long before the next attempt.
    pause: Option<Duration>,
    /// Whether the API server answers.
    link: Link,
    /// What was last reported about the object, to send only changes.
    presence: Presence,
    /// The object seen during the current initial list (between `Init` and `InitDone`).
    listed: Option<ConfigMap>,
    /// Events decided but not yet handed out (a reconnection can yield two at once).
    pending: VecDeque<SourceEvent>,
    /// When the last 410 Gone came, to notice a relist loop.
    last_expiry: Option<Instant>,
    /// When the current stream's list finished, while its watch has not yet proven itself.
    unproven_since: Option<Instant>,
    /// Watches that failed after a good list without proving themselves, in a row.
    unproven_failures: u32,
}

impl ConfigMapWatch {
    fn new(client: Client, cm: ConfigMapRef) -> Self {
        Self {
            api: Api::namespaced(client, &cm.namespace),
            cm,
            stream: None,
            backoff: DefaultBackoff::default(),
            pause: None,
            link: Link::Connecting,
            presence: Presence::Unknown,
            listed: None,
            pending: VecDeque::new(),
            last_expiry: None,
            unproven_since: None,
            unproven_failures: 0,
        }
    }

    async fn next_event(&mut self) -> SourceEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if let Some(pause) = self.pause.take() {
                tokio::time::sleep(pause).await;
            }
            let stream = self.stream.get_or_insert_with(|| {
                let config = watcher::Config::default()
                    .fields(&format!("metadata.name={}", self.cm.name))
                    .timeout(WATCH_TIMEOUT_SECS);
                watcher(self.api.clone(), config).boxed()
            });
            // A watch that stays open this long works, even if nothing changes.
            let unproven_since = self.unproven_since;
            let proof = async move {
                match unproven_since {
                    Some(since) => tokio::time::sleep_until(since + WATCH_PROOF).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                next = stream.next() => next,
                () = proof => {
                    self.prove();
                    continue;
                }
            };
            match next {
                Some(Ok(event)) => self.on_event(event),
                Some(Err(error)) => self.on_error(&error),
                // The watcher never ends; if it did, starting over is the right answer.
                None => self.stream = None,
            }
        }
    }

    fn on_event(&mut self, event: watcher::Event<ConfigMap>) {
        match event {
            watcher::Event::Init => self.listed = None,
            watcher::Event::InitApply(obj) => {
                if self.is_ours(&obj) {
                    self.listed = Some(obj);
                }
            }
            watcher::Event::InitDone => {
                self.mark_up();
                self.unproven_since = Some(Instant::now());
                match self.listed.take() {
                    Some(obj) => self.present(obj),
                    None => self.absent(),
                }
            }
            watcher::Event::Apply(obj) => {
                self.prove();
                if self.is_ours(&obj) {
                    self.present(obj);
                }
            }
            watcher::Event::Delete(obj) => {
                self.prove();
                if self.is_ours(&obj) {
                    self.absent();
                }
            }
        }
    }

    fn on_error(&mut self, error: &watcher::Error) {
        self.stream = None;
        let unproven = self.unproven_since.take().is_some();
        if is_expired(error) {
            // 410 Gone: our resourceVersion was compacted away. Routine; relist at once, unless
            // it keeps happening, which calls for the backoff after all.
            let now = Instant::now();
            let again = self
                .last_expiry
                .is_some_and(|t| now - t < EXPIRY_REPEAT_WINDOW);
            self.last_expiry = Some(now);
            if again {
                self.pause = self.backoff.next();
            }
            tracing::debug!(configmap = %self.cm, %error, "watch expired; listing again");
            return;
        }
        if unproven && is_watch_error(error) {
            self.on_unproven_watch_failure(error);
            return;
        }
        match self.link {
            Link::Connecting | Link::Up => {
                // One broken connection (an API server restarting behind its load balancer)
                // is routine: retry at once, and only call it an outage if that fails too.
                self.link = Link::Suspect;
                tracing::debug!(configmap = %self.cm, %error, "Kubernetes API request failed; retrying at once");
                return;
            }
            Link::Down => {
                self.pause = Some(self.backoff.next().unwrap_or(MAX_PAUSE));
                tracing::debug!(configmap = %self.cm, %error, "Kubernetes API still failing; retrying");
                return;
            }
            Link::Suspect | Link::WatchFailing => {}
        }
        self.pause = Some(self.backoff.next().unwrap_or(MAX_PAUSE));
        self.link = Link::Down;
        tracing::warn!(
            configmap = %self.cm,
            %error,
            "Kubernetes API watch failed; keeping the last good config and retrying with backoff"
        );
        self.pending.push_back(SourceEvent::Disconnected {
            error: error.to_string(),
        });
    }

    /// A list succeeded: the API server answers. The backoff goes on until the watch proves
    /// itself ([`ConfigMapWatch::prove`]).
    fn mark_up(&mut self) {
        match self.link {
            Link::Down => {
                tracing::info!(configmap = %self.cm, "Kubernetes API reachable again; watch resumed");
                self.pending.push_back(SourceEvent::Reconnected);
                self.link = Link::Up;
            }
            // Still waiting for a watch that works.
            Link::WatchFailing => {}
            Link::Connecting | Link::Up | Link::Suspect => self.link = Link::Up,
        }
    }

    /// The watch delivered an event or stayed open: the link works, the backoff starts over.
    fn prove(&mut self) {
        if self.unproven_since.take().is_none() {
            return;
        }
        self.unproven_failures = 0;
        self.backoff.reset();
        if self.link == Link::WatchFailing {
            tracing::info!(configmap = %self.cm, "Kubernetes API watch works again");
            self.pending.push_back(SourceEvent::Reconnected);
            self.link = Link::Up;
        }
    }

    /// A watch failed right after a good list: never relist at once, and after
    /// [`WATCH_FAILURES_REPORTED`] in a row say so, once.
    fn on_unproven_watch_failure(&mut self, error: &watcher::Error) {
        self.pause = Some(self.backoff.next().unwrap_or(MAX_PAUSE));
        self.unproven_failures += 1;
        if self.unproven_failures < WATCH_FAILURES_REPORTED || self.link == Link::WatchFailing {
            tracing::debug!(configmap = %self.cm, %error, pause = ?self.pause, "watch failed after a good list; backing off");
            return;
        }
        self.link = Link::WatchFailing;
        tracing::warn!(
            configmap = %self.cm,
            %error,
            "the ConfigMap can be listed but not watched (check the Role's `watch` verb); \
             relisting with backoff up to 30 s, so changes arrive late"
        );
        self.pending.push_back(SourceEvent::WatchFailing {
            error: error.to_string(),
        });
    }

    /// A field selector is honoured by real API servers, but a stray object must still never be
    /// taken for ours.
    fn is_ours(&self, obj: &ConfigMap) -> bool {
        obj.metadata.name.as_deref() == Some(self.cm.name.as_str())
    }

    fn present(&mut self, obj: ConfigMap) {
        let data = obj.data.unwrap_or_default();
        let annotations: BTreeMap<String, String> = obj
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| key.starts_with(ANNOTATION_PREFIX))
            .collect();
        if let Presence::Present(old_data, old_annotations) = &self.presence
            && *old_data == data
            && *old_annotations == annotations
        {
            return;
        }
        if matches!(self.presence, Presence::Missing | Presence::Deleted) {
            tracing::info!(configmap = %self.cm, "ConfigMap found");
        }
        let resource_version = obj.metadata.resource_version.unwrap_or_default();
        tracing::debug!(configmap = %self.cm, %resource_version, "ConfigMap content changed");
        self.presence = Presence::Present(data.clone(), annotations.clone());
        self.pending.push_back(SourceEvent::Applied {
            data,
            annotations,
            resource_version,
        });
    }

    fn absent(&mut self) {
        match self.presence {
            Presence::Unknown => {
                tracing::warn!(configmap = %self.cm, "ConfigMap does not exist yet; waiting for it");
                self.presence = Presence::Missing;
                self.pending.push_back(SourceEvent::Missing);
            }
            Presence::Present(..) => {
                tracing::warn!(
                    configmap = %self.cm,
                    "ConfigMap was deleted; keeping the last good config until it is back"
                );
                self.presence = Presence::Deleted;
                self.pending.push_back(SourceEvent::Deleted);
            }
            Presence::Missing | Presence::Deleted => {}
        }
    }
}

/// Whether the API server answered the watch request (not the list before it) with an error:
/// a refusal that relisting will not cure. A cut connection is an ordinary failure instead.
fn is_watch_error(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::WatchStartFailed(kube::Error::Api(_))
            | watcher::Error::WatchFailed(kube::Error::Api(_))
            | watcher::Error::WatchError(_)
    )
}

/// Whether the API server answered 410 Gone: the watch's resourceVersion is too old.
fn is_expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}
