//! Shared by the controller's tests: a kube client for a fake API server, and waiting.

#![allow(dead_code)] // each test binary uses its own subset

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_controller::{ConfigMapRef, SourceEvent};
use canary_testkit::fake_apiserver::FakeApiServer;
use futures_util::StreamExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::mpsc;

/// Namespace and name of the ConfigMap the tests use.
pub const NS: &str = "default";
pub const NAME: &str = "canary";

/// A client configured from the fake server's kubeconfig file, as `KUBECONFIG` would give.
pub async fn client(api: &FakeApiServer) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig_path()).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("load the kubeconfig");
    kube::Client::try_from(config).expect("build the client")
}

/// Runs the watch in its own task, as the proxy does, so it keeps polling (and its watch
/// request stays open) while the test looks elsewhere.
pub fn spawn_watch(client: kube::Client, cm: ConfigMapRef) -> mpsc::UnboundedReceiver<SourceEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(canary_controller::watch(client, cm));
        while let Some(event) = events.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next source event, within `limit`.
pub async fn next_event(
    events: &mut mpsc::UnboundedReceiver<SourceEvent>,
    limit: Duration,
) -> SourceEvent {
    tokio::time::timeout(limit, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no source event within {limit:?}"))
        .expect("the watch stream never ends")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Log lines written while a [`CapturedLogs`] guard is alive on this thread.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures this thread's logs (the test's and, on the current-thread runtime, its tasks')
    /// until the guard is dropped.
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The lines that contain `text`.
    pub fn lines(&self, text: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(text))
            .map(str::to_owned)
            .collect()
    }

    /// How many lines contain `text`.
    pub fn count(&self, text: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
