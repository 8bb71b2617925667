//! The real `canary-proxy` as a child process: found, configured by file, started on loopback
//! ports it picks itself, read through its admin endpoints, and stopped with SIGTERM.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::admin::{self, AdminError};

/// The environment variable that names the proxy binary, like `--proxy-bin`.
pub const PROXY_BIN_ENV: &str = "CANARY_BENCH_PROXY_BIN";
/// Lines of the proxy's log kept for error messages.
const LOG_TAIL: usize = 40;
/// How long the proxy may take to print its addresses and become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the proxy could not be found, started or read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No binary where it was looked for.
    #[error(
        "canary-proxy not found at {0}: build it with `cargo build --release -p canary-proxy` \
         (it lands next to canary-bench), or name it with --proxy-bin PATH or {PROXY_BIN_ENV}"
    )]
    NotFound(PathBuf),
    /// The process could not be spawned.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// It exited, or did not become ready in time.
    #[error("canary-proxy {what}; its last log lines:\n{log}")]
    Start {
        /// What happened.
        what: String,
        /// The end of its stderr.
        log: String,
    },
    /// An admin endpoint failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// `/status` did not parse as the documented JSON.
    #[error("unexpected /status JSON: {0}")]
    Status(#[from] serde_json::Error),
    /// The configuration file could not be written.
    #[error("cannot write the proxy's configuration {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Where the proxy binary is: `explicit` if given, else `canary-proxy` next to this executable.
pub fn find_binary(explicit: Option<PathBuf>) -> Result<PathBuf, ProxyError> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("canary-proxy")))
            .unwrap_or_else(|| PathBuf::from("canary-proxy")),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProxyError::NotFound(path))
    }
}

/// Writes `entries` as a flat YAML map of strings, atomically (a temporary file in the same
/// directory renamed over the old one), so the proxy never reads half a file.
pub fn write_config(path: &Path, entries: &[(&str, String)]) -> Result<(), ProxyError> {
    let mut text = String::new();
    for (key, value) in entries {
        // JSON strings are YAML strings, and escape whatever a value holds.
        let quoted = serde_json::to_string(value).unwrap_or_default();
        text.push_str(&format!("{key}: {quoted}\n"));
    }
    let temporary = path.with_extension("yaml.tmp");
    let fail = |source| ProxyError::Config {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&temporary, text).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// The parts of `GET /status` the bench reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The applied configuration's revision.
    pub revision: String,
    /// The canary weight in force.
    pub configured_weight: Weight,
    /// The share each color gets now, rollback included.
    pub effective_weight: BTreeMap<String, f64>,
    /// Per-color counters.
    pub colors: BTreeMap<String, ColorStatus>,
    /// The rollback state.
    pub rollback: Rollback,
    /// The last rejected configuration, if any.
    pub last_config_error: Option<serde_json::Value>,
}

/// `configured_weight` of `/status`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Weight {
    /// Out of `total`.
    pub weight: u32,
    /// The weight's denominator.
    pub total: u32,
    /// `weight / total` in percent.
    pub percent: f64,
}

/// One color in `/status`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ColorStatus {
    /// Requests in the sliding window.
    pub requests: u64,
    /// Failures in the sliding window.
    pub failures: u64,
    /// Requests since the start.
    pub requests_total: u64,
}

/// `rollback` of `/status`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Rollback {
    /// Whether traffic was sent back to stable.
    pub rolled_back: bool,
    /// The canary color that was rolled back.
    pub color: Option<String>,
    /// A sentence with the figures.
    pub reason: Option<String>,
    /// When, in RFC 3339.
    pub at: Option<String>,
    /// `healthy`, `comparing`, `shared_fault`, `rolling_back`, `rolled_back`, `disabled` or
    /// `no_canary`.
    pub verdict: String,
}

/// A running `canary-proxy`, killed if dropped without [`ProxyProcess::terminate`].
pub struct ProxyProcess {
    /// The child; `kill_on_drop` so a failed run leaves no proxy behind.
    child: Child,
    /// The data listener, read from its log.
    pub data: SocketAddr,
    /// The admin listener, read from its log.
    pub admin: SocketAddr,
    /// The end of its stderr, for error messages.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl ProxyProcess {
    /// Starts `bin` on the configuration `config` with loopback ports it picks, and waits for
    /// `/readyz`. `prefix` is a command to run it under (e.g. `taskset -c 0`), and `extra` more
    /// flags (e.g. `--workers 1`).
    pub async fn start(
        bin: &Path,
        config: &Path,
        prefix: &[String],
        extra: &[String],
    ) -> Result<Self, ProxyError> {
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        command
            .arg("--config")
            .arg(config)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ProxyError::Spawn {
            path: bin.to_path_buf(),
            source,
        })?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (addrs_tx, mut addrs) = mpsc::unbounded_channel();
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(read_log(BufReader::new(stderr), log.clone(), addrs_tx));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut data, mut admin) = (None, None);
        while data.is_none() || admin.is_none() {
            let event = tokio::time::timeout_at(deadline.into(), addrs.recv()).await;
            match event {
                Ok(Some((listener, addr))) if listener == "data" => data = Some(addr),
                Ok(Some((_, addr))) => admin = Some(addr),
                Ok(None) => {
                    let status = child.wait().await.ok();
                    return Err(start_error(
                        &log,
                        format!("exited ({status:?}) before listening"),
                    ));
                }
                Err(_) => {
                    return Err(start_error(
                        &log,
                        "printed no listening addresses".to_string(),
                    ));
                }
            }
        }
        let proxy = ProxyProcess {
            child,
            data: data.unwrap_or_else(|| unreachable!("loop exits with both set")),
            admin: admin.unwrap_or_else(|| unreachable!("loop exits with both set")),
            log,
        };
        while admin::call(proxy.admin, http::Method::GET, "/readyz", "")
            .await
            .map(|(status, _)| status)
            .ok()
            != Some(200)
        {
            if Instant::now() > deadline {
                return Err(start_error(&proxy.log, "never became ready".to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(proxy)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `GET /status`, parsed.
    pub async fn status(&self) -> Result<Status, ProxyError> {
        let body = admin::get(self.admin, "/status").await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> Result<String, ProxyError> {
        let body = admin::get(self.admin, "/metrics").await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The last lines the proxy logged.
    pub fn log_tail(&self) -> String {
        tail_text(&self.log)
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `grace`).
    pub async fn terminate(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) on our own child's pid, which it still is: we have not reaped it.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

/// Reads the proxy's JSON log lines: keeps the tail, and reports each `listening` line.
async fn read_log(
    stderr: BufReader<tokio::process::ChildStderr>,
    log: Arc<Mutex<VecDeque<String>>>,
    addrs: mpsc::UnboundedSender<(String, SocketAddr)>,
) {
    let mut lines = stderr.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == "listening"
            && let (Some(listener), Some(addr)) =
                (event["listener"].as_str(), event["addr"].as_str())
            && let Ok(addr) = addr.parse()
        {
            let _ = addrs.send((listener.to_string(), addr));
        }
        if let Ok(mut tail) = log.lock() {
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

fn tail_text(log: &Mutex<VecDeque<String>>) -> String {
    log.lock()
        .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

fn start_error(log: &Mutex<VecDeque<String>>, what: String) -> ProxyError {
    ProxyError::Start {
        what,
        log: tail_text(log),
    }
}

/// The value of a Prometheus sample `name{labels}` in `metrics`, labels written exactly as the
/// exposition prints them (e.g. `color="green"`).
pub fn metric_value(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (found, value) = rest.split_once("} ")?;
        let mut want: Vec<&str> = labels.split(',').collect();
        let mut have: Vec<&str> = found.split(',').collect();
        want.sort_unstable();
        have.sort_unstable();
        (want == have).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_labelled_sample() {
        let text = "# TYPE x counter\ncanary_proxy_rollbacks_total{color=\"blue\"} 0\n\
                    canary_proxy_rollbacks_total{color=\"green\"} 1\n\
                    canary_proxy_requests_total{code=\"5xx\",color=\"green\"} 9\n";
        assert_eq!(
            metric_value(text, "canary_proxy_rollbacks_total", "color=\"green\""),
            Some(1.0)
        );
        assert_eq!(
            metric_value(
                text,
                "canary_proxy_requests_total",
                "color=\"green\",code=\"5xx\""
            ),
            Some(9.0)
        );
        assert_eq!(
            metric_value(text, "canary_proxy_rollbacks_total", "color=\"red\""),
            None
        );
    }

    #[test]
    fn config_is_written_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.yaml");
        write_config(
            &path,
            &[
                ("canary-weight", "5".to_string()),
                ("stable", "blue".to_string()),
            ],
        )
        .expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "canary-weight: \"5\"\nstable: \"blue\"\n");
        assert!(!path.with_extension("yaml.tmp").exists());
    }
}
