//! Steady background load for tests that change something under traffic: a few clients send
//! requests back to back until stopped, and tally what came back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::HttpClient;

/// The longest a load runs, whatever the test does: every loop stops by itself.
const MAX_RUN: Duration = Duration::from_secs(60);

/// Requests running in the background.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Tally>>,
}

/// What a load got back.
#[derive(Debug, Default)]
pub struct Tally {
    /// 2xx responses.
    pub ok: u64,
    /// Responses with another status, and transport errors.
    pub failures: u64,
    /// The first few failures, for assertion messages.
    pub examples: Vec<String>,
    /// 2xx responses per `x-color`.
    pub colors: BTreeMap<String, u64>,
}

impl Load {
    /// Starts one task per client, each sending `GET /` then waiting `pause`, until stopped.
    pub fn start(clients: Vec<HttpClient>, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .map(|client| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let started = Instant::now();
                    while !stop.load(SeqCst) && started.elapsed() < MAX_RUN {
                        match client.get("/", &[]).await {
                            Ok(reply) if reply.status.is_success() => {
                                tally.ok += 1;
                                *tally.colors.entry(reply.color().to_owned()).or_default() += 1;
                            }
                            other => {
                                tally.failures += 1;
                                if tally.examples.len() < 5 {
                                    tally.examples.push(format!("{other:?}"));
                                }
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                    tally
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the load and adds up what every client got.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, SeqCst);
        let mut total = Tally::default();
        for task in self.tasks {
            let tally = task.await.expect("load task");
            total.ok += tally.ok;
            total.failures += tally.failures;
            total.examples.extend(tally.examples);
            for (color, n) in tally.colors {
                *total.colors.entry(color).or_default() += n;
            }
        }
        total
    }
}
