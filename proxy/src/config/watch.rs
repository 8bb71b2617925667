//! Follows `--config PATH`: polls it and applies each new content once it has read the same
//! twice in a row, so a half-written file is never applied.
//!
//! Polling rather than inotify: kubelet updates a mounted ConfigMap by swapping the `..data`
//! symlink, editors replace files by rename, and a watched inode can vanish in either case.
//! Reading a few small files five times a second is cheap, has no watch to lose, and bounds
//! the delay of a change to two polls.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{ConfigError, source};
use crate::route::RouteTable;
use crate::runtime::Runtime;

/// Time between two reads of the config path.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

type Read = Result<BTreeMap<String, String>, ConfigError>;

/// Reads `path` and applies it; the error is the reason it could not be used.
pub fn load(runtime: &Runtime, path: &std::path::Path) -> Result<(), ConfigError> {
    let data = source::read(path)?;
    runtime.set_source_state(true, format!("following {}", path.display()));
    runtime.apply(&data, &source::revision(&data), |_| None)
}

/// Polls `path` until `shutdown` resolves, applying or rejecting each settled change.
pub async fn follow(runtime: Arc<Runtime>, path: PathBuf, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    // The content last acted on (applied or rejected), and a change seen once, not yet twice.
    let mut settled: Read = source::read(&path);
    let mut candidate: Option<Read> = None;
    // The content last applied: a rollback decided on it stays latched until it changes.
    let mut applied = settled.as_ref().ok().cloned();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = &mut shutdown => return,
        }
        let read = source::read(&path);
        if read == settled {
            candidate = None;
            continue;
        }
        if candidate.as_ref() != Some(&read) {
            candidate = Some(read);
            continue;
        }
        candidate = None;
        match &read {
            Ok(data) => {
                runtime.set_source_state(true, format!("following {}", path.display()));
                // The applied content back after a moment unreadable (removed, or no file
                // descriptor left) or after a rejected edit was undone: not a change, so a
                // rollback stays.
                let unchanged = applied.as_ref() == Some(data);
                let kept = |table: Option<&RouteTable>| {
                    table
                        .filter(|_| unchanged)
                        .and_then(|table| table.rolled_back.as_deref().cloned())
                };
                // A rejection is logged and counted by the runtime.
                if runtime.apply(data, &source::revision(data), kept).is_ok() {
                    applied = Some(data.clone());
                }
            }
            Err(e) => {
                runtime.set_source_state(false, e.to_string());
                runtime.reject(e, "unreadable");
                warn!(path = %path.display(), "keeping the last good config");
            }
        }
        settled = read;
    }
}
