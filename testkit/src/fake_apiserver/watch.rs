//! Watch responses: a chunked stream of newline-delimited `{"type":..,"object":..}` events,
//! ended by the request's `timeoutSeconds`, by 410 Gone, or by the connection dropping.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Interval};

use super::Shared;
use super::routes::Body;
use super::status::ApiError;
use super::store::{Change, Notice, Selector};

/// Which objects a watch reports.
pub(crate) struct WatchFilter {
    /// Plural resource name.
    pub resource: String,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// The request's field selector.
    pub selector: Selector,
}

impl WatchFilter {
    fn matches(&self, change: &Change) -> bool {
        change.key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == change.key.namespace)
            && self.selector.matches(&change.object)
    }
}

/// The parameters of one watch request.
pub(crate) struct WatchRequest {
    pub filter: WatchFilter,
    /// `resourceVersion` to resume after; `None` for "now", starting with synthetic ADDEDs.
    pub since: Option<u64>,
    /// When the server ends the watch (`timeoutSeconds`).
    pub timeout: Duration,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
}

/// Counts the open watches while it lives, so tests can wait for a watcher to be connected.
struct WatchGuard(Arc<Shared>);

impl WatchGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.watches.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The state the response stream carries from one event to the next.
struct WatchState {
    /// Lines decided but not yet sent (history replay, or the final 410).
    backlog: VecDeque<Bytes>,
    /// Live changes; `None` once the watch is ending.
    feed: Option<tokio::sync::broadcast::Receiver<Notice>>,
    filter: WatchFilter,
    /// The newest version this watch has accounted for: what a bookmark may promise.
    seen_rv: u64,
    deadline: Instant,
    bookmarks: Option<Interval>,
    /// Kept for its `Drop`.
    _guard: WatchGuard,
}

/// Builds the streaming body of a watch; a too-old `since` yields one 410 ERROR event.
pub(crate) fn watch_body(shared: &Arc<Shared>, request: WatchRequest) -> Body {
    let started = {
        let store = shared.store();
        // Subscribed and replayed under one lock: everything up to now is in the backlog.
        let now = store.resource_version();
        store
            .watch_from(request.since)
            .map(|(changes, feed)| (changes, feed, now))
    };
    let (backlog, feed, seen_rv) = match started {
        Ok((changes, feed, now)) => {
            let lines = changes
                .iter()
                .filter(|c| request.filter.matches(c))
                .map(change_line)
                .collect();
            (lines, Some(feed), now)
        }
        Err(rv) => (VecDeque::from([error_line(&ApiError::gone(rv))]), None, 0),
    };
    let bookmarks = request.bookmarks.then(|| {
        let period = shared.bookmark_interval;
        tokio::time::interval_at(Instant::now() + period, period)
    });
    let state = WatchState {
        backlog,
        feed,
        filter: request.filter,
        seen_rv,
        deadline: Instant::now() + request.timeout,
        bookmarks,
        _guard: WatchGuard::new(shared.clone()),
    };
    let events = stream::unfold(state, |mut state| async move {
        let line = next_line(&mut state).await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), state))
    });
    BodyExt::boxed_unsync(StreamBody::new(events))
}

async fn next_line(state: &mut WatchState) -> Option<Bytes> {
    if let Some(line) = state.backlog.pop_front() {
        return Some(line);
    }
    let feed = state.feed.as_mut()?;
    loop {
        let tick = async {
            match state.bookmarks.as_mut() {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            notice = feed.recv() => match notice {
                Ok(Notice::Change(change)) => {
                    state.seen_rv = change.rv;
                    if state.filter.matches(&change) {
                        return Some(change_line(&change));
                    }
                }
                Ok(Notice::Expire) | Err(RecvError::Lagged(_)) => {
                    state.feed = None;
                    return Some(error_line(&ApiError::gone(state.seen_rv)));
                }
                Err(RecvError::Closed) => return None,
            },
            _ = tick => return Some(bookmark_line(&state.filter.resource, state.seen_rv)),
            _ = tokio::time::sleep_until(state.deadline) => return None,
        }
    }
}

fn change_line(change: &Change) -> Bytes {
    line(&json!({ "type": change.kind.as_str(), "object": change.object }))
}

fn bookmark_line(resource: &str, rv: u64) -> Bytes {
    let (api_version, kind) = super::store::type_of(resource);
    line(&json!({
        "type": "BOOKMARK",
        "object": { "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": rv.to_string() } },
    }))
}

/// An ERROR event; a real server sends 410 this way, inside a 200 response.
pub(crate) fn error_line(error: &ApiError) -> Bytes {
    line(&json!({ "type": "ERROR", "object": error.to_status() }))
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("JSON values serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}
