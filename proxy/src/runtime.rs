//! The proxy's shared state: the routing table behind one `ArcSwap`, the metrics, readiness,
//! and the two ways the table changes: a new configuration, or a rollback.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

use crate::config::{Color, Config, ConfigError};
use crate::metrics::Metrics;
use crate::rfc3339;
use crate::rollback::history::History;
use crate::rollback::judge::Judge;
use crate::rollback::tally::Tally;
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
    /// Every outcome per color, sharded per thread: the rollback test's evidence.
    pub tally: Tally,
    /// Readings of the tally over `rollback.window`, for `/status` and the charts.
    history: Mutex<History>,
    /// Origin of the monotonic millisecond clock the history uses.
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
            tally: Tally::new(),
            history: Mutex::new(History::new(Duration::from_secs(30))),
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

    /// Milliseconds since start on a monotonic clock: the history's time base.
    pub fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.started)
            .as_millis() as u64
    }

    /// The readings behind `/status`'s window.
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
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
    ///
    /// The swap is a compare-and-swap: a rollback decided while the new table was being built
    /// is carried into it when the canary is still the same one, so a reload never silently
    /// undoes a rollback whose metric, log line and write-back have already gone out.
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
        let fresh = RouteTable::new(config, revision);
        let persisted = persisted.map(Arc::new);
        let first = self.routes.load_full();
        let mut current = first.clone();
        let table = loop {
            let mut table = carry_over(&fresh, current.as_deref(), &self.tally);
            let raced = current
                .as_ref()
                .and_then(|c| c.rolled_back.clone())
                .filter(|r| {
                    let known = first.as_ref().and_then(|f| f.rolled_back.as_ref());
                    !known.is_some_and(|k| Arc::ptr_eq(k, r))
                        && current.as_deref().is_some_and(|c| same_canary(c, &table))
                });
            table.rolled_back = persisted.clone().or(raced);
            let table = Arc::new(table);
            let expected = current.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
            let previous = self.routes.compare_and_swap(expected, Some(table.clone()));
            if previous.as_ref().map_or(std::ptr::null(), Arc::as_ptr) == expected {
                break table;
            }
            current = (*previous).clone();
        };
        let window = table.config.rollback.window;
        if self.history().window() != window {
            *self.history() = History::new(window);
        }
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

    /// Swaps in a table that sends everything to stable. The decision was made on `table`; if
    /// a reload replaced it meanwhile with the same canary, the rollback applies to the new
    /// table too (a reload that changed the canary wins: the evidence was about another one).
    pub fn roll_back(&self, table: &Arc<RouteTable>, reason: String) {
        let canary = table.config.canary();
        let at = rfc3339::format(SystemTime::now());
        let rolled_back = Arc::new(RolledBack {
            color: canary,
            reason: reason.clone(),
            at: at.clone(),
        });
        let mut current = table.clone();
        let rolled = loop {
            if current.rolled_back.is_some() || !same_canary(&current, table) {
                return;
            }
            let rolled = Arc::new(RouteTable {
                rolled_back: Some(rolled_back.clone()),
                ..RouteTable::clone(&current)
            });
            let previous = self
                .routes
                .compare_and_swap(Arc::as_ptr(&current), Some(rolled.clone()));
            match &*previous {
                Some(p) if Arc::ptr_eq(p, &current) => break rolled,
                Some(p) => current = p.clone(),
                None => return,
            }
        };
        self.metrics.color(canary).rollbacks.inc();
        self.publish_weights(&rolled);
        warn!(
            canary = %canary,
            stable = %rolled.config.stable,
            revision = %rolled.revision,
            reason = %reason,
            "rolled back: all traffic to stable"
        );
        // Nobody listening (file source) is fine.
        let _ = self.rollbacks.send(RollbackEvent {
            canary,
            canary_upstream: rolled.config.upstream(canary).to_string(),
            reason,
            at,
            revision: rolled.revision.clone(),
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

/// `fresh` (a new configuration's table) with what should survive a reload of `previous`:
/// equal upstreams (so their pools stay warm) and, while the canary is the same one and was not
/// rolled back, its test (so a reload does not erase the evidence). A new canary starts with a
/// clean record: a new test and no failure streak.
fn carry_over(fresh: &RouteTable, previous: Option<&RouteTable>, tally: &Tally) -> RouteTable {
    let mut table = fresh.clone();
    let canary = table.config.canary();
    match previous {
        Some(p) if same_canary(p, &table) && p.rolled_back.is_none() => {
            table.judge = p.judge.clone();
        }
        _ => {
            tally.reset_streak(canary);
            table.judge = Arc::new(Judge::starting_now(tally));
        }
    }
    if let Some(p) = previous {
        for (new, old) in table.upstreams.iter_mut().zip(&p.upstreams) {
            if new.addr == old.addr && new.protocol == old.protocol {
                *new = old.clone();
            }
        }
    }
    table
}

/// Whether both tables have the same canary: the same color at the same upstream.
fn same_canary(a: &RouteTable, b: &RouteTable) -> bool {
    let canary = a.config.canary();
    b.config.canary() == canary && a.config.upstream(canary) == b.config.upstream(canary)
}
