//! The proxy's configuration file during a soak, rewritten atomically every `reload_every`
//! with the canary weight alternating between 10 and 20; each rewrite counts as applied once
//! `/status` shows the new weight.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin;
use crate::proxy::{self, ProxyError, Status};

/// The weights a reload alternates between; the first is the starting one.
pub const WEIGHTS: [u32; 2] = [10, 20];
/// How long the proxy may take to show a rewritten weight on `/status` (it polls every ~0.5 s).
const APPLY_PATIENCE: Duration = Duration::from_secs(10);
/// Time between two looks at `/status` while waiting for a weight.
const APPLY_POLL: Duration = Duration::from_millis(50);

/// The reloads of a soak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Reloads {
    /// Configuration rewrites.
    pub written: u64,
    /// Of those, the ones `/status` showed within the patience.
    pub applied: u64,
    /// The longest time from a rewrite to `/status` showing it, seconds.
    pub slowest_apply_s: f64,
    /// The increase of `canary_proxy_config_reloads_total{result="ok"}` over the soak.
    pub metric_ok: Option<f64>,
    /// The increase of `canary_proxy_config_reloads_total{result="error"}` over the soak.
    pub metric_error: Option<f64>,
}

/// The proxy's configuration file and what it points at.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    /// The file the proxy follows.
    pub path: PathBuf,
    /// The blue upstream.
    pub blue: SocketAddr,
    /// The green upstream.
    pub green: SocketAddr,
}

impl ConfigFile {
    /// Writes the configuration at canary weight `weight`, atomically.
    pub fn write(&self, weight: u32) -> Result<(), ProxyError> {
        proxy::write_config(
            &self.path,
            &[
                ("blue.upstream", self.blue.to_string()),
                ("green.upstream", self.green.to_string()),
                ("stable", "blue".to_string()),
                ("canary-weight", weight.to_string()),
            ],
        )
    }
}

/// The running reloads.
pub struct Reloader {
    /// Rewrites applied so far, for the samples.
    applied: Arc<AtomicU64>,
    /// Tells the task to stop after the reload in progress.
    stop: watch::Sender<bool>,
    /// The reload loop, returning its counts.
    task: JoinHandle<Reloads>,
}

impl Reloader {
    /// Rewrites `config` every `every`, alternating [`WEIGHTS`], and waits for the proxy at
    /// `admin_addr` to show each one.
    pub fn start(config: ConfigFile, admin_addr: SocketAddr, every: Duration) -> Reloader {
        let applied = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn({
            let applied = applied.clone();
            async move {
                let mut reloads = Reloads::default();
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                for next in (1..).map(|i| WEIGHTS[i % WEIGHTS.len()]) {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.wait_for(|stop| *stop) => break,
                    }
                    reloads.written += 1;
                    let written = Instant::now();
                    // A failed write counts as a reload not applied; the next one tries again.
                    if config.write(next).is_ok() && shows_weight(admin_addr, next).await {
                        reloads.applied += 1;
                        applied.fetch_add(1, Ordering::Relaxed);
                        reloads.slowest_apply_s =
                            reloads.slowest_apply_s.max(written.elapsed().as_secs_f64());
                    }
                }
                reloads
            }
        });
        Reloader {
            applied,
            stop,
            task,
        }
    }

    /// Reloads applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Stops after the reload in progress and returns the counts.
    pub async fn stop(self) -> Reloads {
        let _ = self.stop.send(true);
        // A panicked loop reports no reloads, which fails the reload check.
        self.task.await.unwrap_or_default()
    }
}

/// Whether `/status` shows canary weight `weight` within [`APPLY_PATIENCE`].
async fn shows_weight(admin_addr: SocketAddr, weight: u32) -> bool {
    let deadline = Instant::now() + APPLY_PATIENCE;
    while Instant::now() < deadline {
        let shown = admin::get(admin_addr, "/status")
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<Status>(&body).ok())
            .map(|status| status.configured_weight.weight);
        if shown == Some(weight) {
            return true;
        }
        tokio::time::sleep(APPLY_POLL).await;
    }
    false
}
