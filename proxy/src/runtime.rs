//! The proxy's shared state: the routing table behind one `ArcSwap`, the metrics, readiness,
//! and the two ways the table changes: a new configuration, or a rollback.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::cache::Cache;
use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

use crate::config::{Color, Config, ConfigError};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::progressive::{self, Seat, StepEvent};
use crate::rfc3339;
use crate::rollback::history::History;
use crate::rollback::judge::Judge;
use crate::rollback::tally::Tally;
use crate::route::{RolledBack, RouteTable};
use crate::upstream::endpoints::Endpoints;

/// A worker thread's handle on the runtime and its current routing table, for a request that
/// owns them until its response ends (the hyper path): see [`Runtime::current`].
pub struct Current {
    /// The proxy's shared state.
    pub runtime: Arc<Runtime>,
    /// The routing table when the handle was made.
    pub table: Arc<RouteTable>,
}

thread_local! {
    /// This thread's [`Current`], made again when the table or the runtime is another.
    static CURRENT: RefCell<Option<Arc<Current>>> = const { RefCell::new(None) };
}

/// See [`Runtime::route_cache`].
pub type RouteCache<'a> = Cache<&'a ArcSwapOption<RouteTable>, Option<Arc<RouteTable>>>;

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
    /// Tells subscribers (the Kubernetes write-back) about the step plan's moves.
    steps: broadcast::Sender<StepEvent>,
    /// Where the configuration comes from, for `/status` and logs.
    pub source: String,
    /// How the source is doing, in a sentence, for `/readyz` and `/status`.
    source_state: ArcSwap<String>,
    /// This process's random id, in its evidence: the fleet's judge tells a restart by it.
    pub process: String,
    /// With `--fleet`, this replica's part in the fleet; set once before serving.
    fleet: OnceLock<Fleet>,
    /// Upgraded tunnels open now on every worker, for `limit.tunnels` (written only when a
    /// tunnel opens or closes).
    tunnels: Arc<AtomicUsize>,
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
            steps: broadcast::channel(16).0,
            source,
            source_state: ArcSwap::from_pointee("reading the configuration".to_owned()),
            process: format!("{:016x}", rand::random::<u64>()),
            fleet: OnceLock::new(),
            tunnels: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The count of open tunnels that every worker's listener shares, so that
    /// `limit.tunnels` caps the process, not each worker.
    pub fn tunnels(&self) -> Arc<AtomicUsize> {
        self.tunnels.clone()
    }

    /// Makes this replica one of a fleet: from now on its own judge keeps only the streak rule
    /// and the rate test is the fleet judge's. Only the first call counts.
    pub fn join_fleet(&self, fleet: Fleet) {
        let _ = self.fleet.set(fleet);
    }

    /// This replica's part in the fleet, with `--fleet`.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.get()
    }

    /// Who runs the step plan here: this replica alone, or in a fleet its judge.
    pub fn seat(&self) -> Seat {
        match self.fleet() {
            None => Seat::Alone,
            Some(fleet) if fleet.view().is_judge => Seat::Judge,
            Some(_) => Seat::Following,
        }
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

    /// A connection's own view of the routing table, for one request after another: a
    /// pointer compared per request, and the table's shared reference count touched only
    /// when the table has changed, so that requests on different workers write no common
    /// cache line to find their routes.
    pub fn route_cache(&self) -> RouteCache<'_> {
        Cache::new(&self.routes)
    }

    /// The runtime and its current routing table, owned, for one request; `None` before the
    /// first configuration. Each worker thread keeps one handle per table and gives out clones
    /// of it: a clone writes a count that only this thread writes, where cloning the shared
    /// `Arc`s would write two lines that every worker writes, at every request.
    pub fn current(self: &Arc<Self>) -> Option<Arc<Current>> {
        let loaded = self.routes.load();
        let table = loaded.as_ref()?;
        CURRENT.with_borrow_mut(|held| {
            if let Some(current) = held
                .as_ref()
                .filter(|c| Arc::ptr_eq(&c.table, table) && Arc::ptr_eq(&c.runtime, self))
            {
                return Some(Arc::clone(current));
            }
            let current = Arc::new(Current {
                runtime: Arc::clone(self),
                table: Arc::clone(table),
            });
            *held = Some(Arc::clone(&current));
            Some(current)
        })
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

    /// Whether a configuration is loaded, its stable color has an endpoint (a Service's
    /// arrive after the configuration), and the proxy is not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self
                .routes
                .load()
                .as_ref()
                .is_some_and(|t| !t.upstreams[t.config.stable.index()].is_empty())
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

    /// Subscribes to the step plan's moves.
    pub fn subscribe_steps(&self) -> broadcast::Receiver<StepEvent> {
        self.steps.subscribe()
    }

    /// Tells subscribers about a move of the step plan (nobody listening is fine).
    pub fn announce_step(&self, event: StepEvent) {
        let _ = self.steps.send(event);
    }

    /// Validates `data` and, if it is good, swaps it in; otherwise keeps the current table.
    /// `persisted` says, given the table being replaced, which rollback the new table keeps:
    /// one the configuration itself records (the ConfigMap's rollback annotations), so a
    /// restarted or other replica keeps sending everything to stable, or one latched on
    /// unchanged content.
    ///
    /// The swap is a compare-and-swap: a rollback decided after `persisted` looked at the table
    /// is carried into the new one when the canary is still the same one, so a reload never
    /// silently undoes a rollback whose metric, log line and write-back have already gone out.
    pub fn apply(
        &self,
        data: &BTreeMap<String, String>,
        revision: &str,
        persisted: impl FnOnce(Option<&RouteTable>) -> Option<RolledBack>,
    ) -> Result<(), ConfigError> {
        let staged = self.stage(data, revision)?;
        let persisted = persisted(staged.seen.as_deref());
        let table = self.install(staged, persisted);
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

    /// The first half of [`Runtime::apply`]: validates `data` and builds its table, noting
    /// the table it is to replace. A rollback after this moment is not undone by the reload.
    fn stage(
        &self,
        data: &BTreeMap<String, String>,
        revision: &str,
    ) -> Result<Staged, ConfigError> {
        match Config::from_map(data) {
            Ok(config) => Ok(Staged {
                fresh: RouteTable::new(config, revision),
                seen: self.routes.load_full(),
            }),
            Err(e) => {
                self.reject(&e, revision);
                Err(e)
            }
        }
    }

    /// The second half of [`Runtime::apply`]: swaps the staged table in, by compare-and-swap,
    /// carrying a rollback that happened since it was staged if the canary is the same.
    fn install(&self, staged: Staged, persisted: Option<RolledBack>) -> Arc<RouteTable> {
        let Staged { fresh, seen } = staged;
        let persisted = persisted.map(Arc::new);
        let mut current = seen.clone();
        loop {
            let mut table = carry_over(&fresh, current.as_deref(), &self.tally);
            let raced = current
                .as_ref()
                .and_then(|c| c.rolled_back.clone())
                .filter(|r| {
                    let known = seen.as_ref().and_then(|f| f.rolled_back.as_ref());
                    !known.is_some_and(|k| Arc::ptr_eq(k, r))
                        && current.as_deref().is_some_and(|c| same_canary(c, &table))
                });
            table.rolled_back = persisted.clone().or(raced);
            let table = Arc::new(table);
            let expected = current.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
            let previous = self.routes.compare_and_swap(expected, Some(table.clone()));
            if previous.as_ref().map_or(std::ptr::null(), Arc::as_ptr) == expected {
                return table;
            }
            current = (*previous).clone();
        }
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
            revision: table.revision.clone(),
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

    /// Swaps `next` in if `current` is still the table (a step of the plan); false when a
    /// reload or a rollback came first.
    pub fn replace(&self, current: &Arc<RouteTable>, next: Arc<RouteTable>) -> bool {
        let previous = self
            .routes
            .compare_and_swap(Arc::as_ptr(current), Some(next.clone()));
        let swapped = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, current));
        if swapped {
            self.publish_weights(&next);
        }
        swapped
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

/// A validated configuration's table, waiting to be swapped in.
struct Staged {
    /// The new table, before anything is carried over.
    fresh: RouteTable,
    /// The table that was current when it was staged.
    seen: Option<Arc<RouteTable>>,
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
            progressive::apply::carry(&mut table, p);
        }
        _ => {
            tally.reset_streak(canary);
            table.judge = Arc::new(Judge::starting_now(tally));
        }
    }
    if let Some(p) = previous {
        for color in Color::ALL {
            let i = color.index();
            let config = &table.config;
            table.upstreams[i] = if config.upstream(color) == p.config.upstream(color)
                && config.protocol(color) == p.config.protocol(color)
            {
                p.upstreams[i].clone()
            } else {
                Arc::new(Endpoints::new(
                    config.upstream(color),
                    config.protocol(color),
                    Some(&p.upstreams[i]),
                ))
            };
        }
    }
    table
}

/// Whether both tables have the same canary: the same color at the same upstream.
fn same_canary(a: &RouteTable, b: &RouteTable) -> bool {
    let canary = a.config.canary();
    b.config.canary() == canary && a.config.upstream(canary) == b.config.upstream(canary)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn data(weight: u32) -> BTreeMap<String, String> {
        [
            ("blue.upstream", "127.0.0.1:1".to_owned()),
            ("green.upstream", "127.0.0.1:2".to_owned()),
            ("canary-weight", weight.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    #[test]
    fn a_rollback_between_staging_and_swapping_a_reload_survives_it() {
        let runtime = Runtime::new(Metrics::new().unwrap(), "test".into());
        runtime.apply(&data(50), "0", |_| None).unwrap();
        let staged = runtime.stage(&data(60), "1").unwrap();
        let table = runtime.routes().clone().unwrap();
        runtime.roll_back(&table, "test".into());
        let installed = runtime.install(staged, None);
        assert!(
            installed.rolled_back.is_some(),
            "the reload undid the rollback"
        );
        assert_eq!(installed.config.weight, 60, "the rollback undid the reload");
        // A reload staged after the rollback is the one that may clear it (a file source
        // resumes that way).
        runtime.apply(&data(70), "2", |_| None).unwrap();
        assert!(runtime.routes().clone().unwrap().rolled_back.is_none());
    }

    #[test]
    fn a_rollback_decided_on_a_replaced_table_applies_to_its_successor() {
        let runtime = Runtime::new(Metrics::new().unwrap(), "test".into());
        runtime.apply(&data(50), "0", |_| None).unwrap();
        let judged = runtime.routes().clone().unwrap();
        runtime.apply(&data(60), "1", |_| None).unwrap();
        runtime.roll_back(&judged, "test".into());
        let now = runtime.routes().clone().unwrap();
        assert!(now.rolled_back.is_some());
        assert_eq!((now.config.weight, &*now.revision), (60, "1"));
        assert_eq!(runtime.metrics.color(Color::Green).rollbacks.get(), 1);
        // A new canary is not rolled back for the old one's evidence.
        let mut other = data(60);
        other.insert("green.upstream".into(), "127.0.0.1:3".into());
        runtime.apply(&other, "2", |_| None).unwrap();
        let before = runtime.routes().clone().unwrap();
        runtime.roll_back(&judged, "test".into());
        assert!(runtime.routes().clone().unwrap().rolled_back.is_none());
        assert!(Arc::ptr_eq(&before, &runtime.routes().clone().unwrap()));
    }

    #[test]
    fn rollbacks_racing_reloads_never_lose_each_other() {
        let runtime = Runtime::new(Metrics::new().unwrap(), "test".into());
        runtime.apply(&data(50), "0", |_| None).unwrap();
        // Reloads staged so far: only a reload staged after a rollback may clear it.
        let staged = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let rollbacks = std::thread::scope(|s| {
            let roller = s.spawn(|| {
                let mut rollbacks = 0;
                while !done.load(Relaxed) {
                    let Some(table) = runtime.routes().clone() else {
                        continue;
                    };
                    if table.rolled_back.is_some() {
                        continue;
                    }
                    let before = staged.load(Relaxed);
                    let counted = runtime.metrics.color(Color::Green).rollbacks.get();
                    runtime.roll_back(&table, "test".into());
                    if runtime.metrics.color(Color::Green).rollbacks.get() == counted {
                        continue;
                    }
                    rollbacks += 1;
                    let now = runtime.routes().clone().unwrap();
                    assert!(
                        now.rolled_back.is_some() || staged.load(Relaxed) > before,
                        "a reload staged before the rollback undid it (revision {})",
                        now.revision
                    );
                }
                rollbacks
            });
            for i in 1..=20_000u32 {
                let weight = 40 + i % 20;
                let next = runtime.stage(&data(weight), &i.to_string()).unwrap();
                staged.fetch_add(1, Relaxed);
                let installed = runtime.install(next, None);
                assert_eq!(installed.config.weight, weight, "a rollback undid a reload");
            }
            done.store(true, Relaxed);
            roller.join().unwrap()
        });
        eprintln!("{rollbacks} rollbacks raced 20,000 reloads");
        assert!(rollbacks > 50, "the race was not exercised: {rollbacks}");
    }
}
