//! The proxy's shared state: the routing table behind one `ArcSwap`, the metrics, readiness,
//! and the two ways the table changes: a new configuration, or a rollback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

use crate::config::{Color, Config, ConfigError};
use crate::metrics::Metrics;
use crate::rfc3339;
use crate::route::{RolledBack, RouteTable};

/// A rollback the data path decided, for whoever persists it (the Kubernetes write-back).
#[derive(Clone, Debug)]
pub struct RollbackEvent {
    /// The canary color that was rolled back.
    pub canary: Color,
    /// Its upstream, so a writer can check the canary is still the one configured.
    pub canary_upstream: String,
    /// The reason, with the figures.
    pub reason: String,
    /// When it happened, in RFC 3339.
    pub at: String,
    /// The revision of the configuration that was rolled back.
    pub revision: Arc<str>,
}

/// A rejected configuration, kept for `/status`.
#[derive(Clone, Debug)]
pub struct ConfigFault {
    /// The error message.
    pub message: String,
    /// When it was rejected.
    pub at: SystemTime,
}

/// State shared by the listeners, the config source and the admin endpoints.
pub struct Runtime {
    /// The routing table; `None` until the first configuration arrives.
    routes: ArcSwapOption<RouteTable>,
    /// Metric handles, resolved once.
    pub metrics: Metrics,
    /// Origin of the monotonic millisecond clock the windows use.
    started: Instant,
    /// Set while shutting down: `/readyz` turns 503.
    draining: AtomicBool,
    /// The last rejected configuration, cleared by the next good one.
    last_error: ArcSwapOption<ConfigFault>,
    /// Tells subscribers (the Kubernetes write-back) about rollbacks.
    rollbacks: broadcast::Sender<RollbackEvent>,
    /// Where the configuration comes from, for `/status` and logs.
    pub source: String,
    /// How the source is doing, in a sentence, for `/readyz` and `/status`.
    source_state: ArcSwap<String>,
}

impl Runtime {
    /// A runtime with no configuration yet.
    pub fn new(metrics: Metrics, source: String) -> Arc<Runtime> {
        Arc::new(Runtime {
            routes: ArcSwapOption::empty(),
            metrics,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            last_error: ArcSwapOption::empty(),
            rollbacks: broadcast::channel(16).0,
            source,
            source_state: ArcSwap::from_pointee("reading the configuration".to_owned()),
        })
    }

    /// Records how the configuration source is doing: whether it is connected, and a sentence
    /// for operators ("waiting for ConfigMap default/canary-proxy to be created").
    pub fn set_source_state(&self, connected: bool, state: impl Into<String>) {
        self.metrics.source_connected.set(i64::from(connected));
        self.source_state.store(Arc::new(state.into()));
    }

    /// The sentence last given to [`Runtime::set_source_state`].
    pub fn source_state(&self) -> Arc<String> {
        self.source_state.load_full()
    }

    /// The current routing table, for one request.
    pub fn routes(&self) -> Guard<Option<Arc<RouteTable>>> {
        self.routes.load()
    }

    /// Milliseconds since start on a monotonic clock: the windows' time base.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` on the windows' time base.
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Whether a configuration is loaded and the proxy is not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.routes.load().is_some()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Turns readiness off for good: shutdown has begun.
    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// The last rejected configuration, if no good one came after it.
    pub fn last_error(&self) -> Option<Arc<ConfigFault>> {
        self.last_error.load_full()
    }

    /// Subscribes to rollbacks.
    pub fn subscribe_rollbacks(&self) -> broadcast::Receiver<RollbackEvent> {
        self.rollbacks.subscribe()
    }

    /// Validates `data` and, if it is good, swaps it in; otherwise keeps the current table.
    /// `persisted` is a rollback the configuration itself records (the ConfigMap's rollback
    /// annotations), so a restarted or other replica keeps sending everything to stable.
    pub fn apply(
        &self,
        data: &BTreeMap<String, String>,
        revision: &str,
        persisted: Option<RolledBack>,
    ) -> Result<(), ConfigError> {
        let config = match Config::from_map(data) {
            Ok(config) => config,
            Err(e) => {
                self.reject(&e, revision);
                return Err(e);
            }
        };
        let previous = self.routes.load_full();
        let mut table = build_table(config, revision, previous.as_deref());
        table.rolled_back = persisted.map(Arc::new);
        self.routes.store(Some(Arc::new(table)));
        let table = self.routes.load_full().expect("just stored");
        self.last_error.store(None);
        self.metrics.reloads_ok.inc();
        self.metrics.set_revision(revision);
        self.publish_weights(&table);
        let c = &table.config;
        info!(
            revision,
            stable = %c.stable,
            canary = %c.canary(),
            weight = c.weight,
            weight_total = c.weight_total,
            blue = %c.upstream(Color::Blue),
            green = %c.upstream(Color::Green),
            rolled_back = table.rolled_back.is_some(),
            "config applied"
        );
        Ok(())
    }

    /// Records a configuration that could not be used; the current one keeps serving.
    pub fn reject(&self, error: &ConfigError, revision: &str) {
        self.metrics.reloads_error.inc();
        self.last_error.store(Some(Arc::new(ConfigFault {
            message: error.to_string(),
            at: SystemTime::now(),
        })));
        error!(revision, error = %error, "config rejected, keeping the last good one");
    }

    /// Swaps in a table that sends everything to stable, unless `table` has been replaced
    /// meanwhile (a reload wins over a rollback decided on the config it replaced).
    pub fn roll_back(&self, table: &Arc<RouteTable>, reason: String) {
        let canary = table.config.canary();
        let at = rfc3339::format(SystemTime::now());
        let rolled = RouteTable {
            rolled_back: Some(Arc::new(RolledBack {
                color: canary,
                reason: reason.clone(),
                at: at.clone(),
                revision: table.revision.clone(),
            })),
            ..RouteTable::clone(table)
        };
        let rolled = Arc::new(rolled);
        let previous = self
            .routes
            .compare_and_swap(Arc::as_ptr(table), Some(rolled.clone()));
        let swapped = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, table));
        if !swapped {
            return;
        }
        self.metrics.color(canary).rollbacks.inc();
        self.publish_weights(&rolled);
        warn!(
            canary = %canary,
            stable = %table.config.stable,
            revision = %table.revision,
            reason = %reason,
            "rolled back: all traffic to stable"
        );
        // Nobody listening (file source) is fine.
        let _ = self.rollbacks.send(RollbackEvent {
            canary,
            canary_upstream: table.config.upstream(canary).to_string(),
            reason,
            at,
            revision: table.revision.clone(),
        });
    }

    fn publish_weights(&self, table: &RouteTable) {
        for color in Color::ALL {
            self.metrics
                .color(color)
                .weight_percent
                .set(table.weight_percent(color));
        }
    }
}

/// Builds the table for `config`, carrying over what should survive a reload: the windows
/// (so a reload does not erase the evidence) and equal upstreams (so their pools stay warm).
fn build_table(config: Config, revision: &str, previous: Option<&RouteTable>) -> RouteTable {
    let mut table = RouteTable::new(config, revision);
    let Some(p) = previous else {
        return table;
    };
    for (new, old) in table.upstreams.iter_mut().zip(&p.upstreams) {
        if new.addr == old.addr && new.protocol == old.protocol {
            *new = old.clone();
        }
    }
    if p.windows[0].has_length(table.config.rollback.window) {
        // The canary starts with a clean record when it changed, or after a rollback: its old
        // failures were already acted on.
        let canary = table.config.canary();
        let same_canary = p.config.canary() == canary
            && p.config.upstream(canary) == table.config.upstream(canary);
        if !same_canary || p.rolled_back.is_some() {
            p.windows[canary.index()].reset();
        }
        table.windows = p.windows.clone();
    }
    table
}
