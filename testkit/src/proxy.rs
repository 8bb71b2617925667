//! Runs the real `canary-proxy` binary as a child process on loopback ports, with its config
//! in a temporary directory, and reads its admin endpoints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::HttpClient;

/// Where the proxy reads its configuration.
pub enum Source<'a> {
    /// A flat YAML file the harness writes (and rewrites with [`ProxyProcess::write_config`]).
    File(&'a [(&'a str, &'a str)]),
    /// Any other command-line arguments, e.g. `--configmap ns/name`, with extra environment.
    Args(Vec<String>, Vec<(String, String)>),
}

/// A running proxy. Killed when dropped.
pub struct ProxyProcess {
    child: Child,
    /// The data listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `binary` with a config file holding `config`, and waits until it listens.
    pub async fn start(binary: &Path, config: &[(&str, &str)]) -> Result<ProxyProcess, String> {
        Self::start_with(binary, Source::File(config), &[]).await
    }

    /// Starts `binary` with both colors at one upstream, `authority`, plus `extra` keys: for
    /// tests of the HTTP path, where the color does not matter.
    pub async fn in_front_of(
        binary: &Path,
        authority: &str,
        extra: &[(&str, &str)],
    ) -> Result<ProxyProcess, String> {
        let mut config = vec![("blue.upstream", authority), ("green.upstream", authority)];
        config.extend_from_slice(extra);
        Self::start(binary, &config).await
    }

    /// Starts `binary` with `source` and `extra` arguments; waits until both listeners are up.
    pub async fn start_with(
        binary: &Path,
        source: Source<'_>,
        extra: &[&str],
    ) -> Result<ProxyProcess, String> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_at(binary, source, (any, any), extra).await
    }

    /// Like [`ProxyProcess::start_with`], with the data and admin listeners at `listen`
    /// (replicas of a fleet share an admin port on different loopback addresses, as pods do).
    pub async fn start_at(
        binary: &Path,
        source: Source<'_>,
        listen: (SocketAddr, SocketAddr),
        extra: &[&str],
    ) -> Result<ProxyProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("config.yaml");
        let mut cmd = Command::new(binary);
        cmd.env("CANARY_PROXY_HTTP1", http1_path());
        match source {
            Source::File(config) => {
                write_atomically(&config_path, config);
                cmd.arg("--config").arg(&config_path);
            }
            Source::Args(args, env) => {
                cmd.args(args).envs(env);
            }
        }
        cmd.arg("--listen")
            .arg(listen.0.to_string())
            .arg("--admin-listen")
            .arg(listen.1.to_string())
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn({
            let logs = logs.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().expect("lock").push(line);
                }
            }
        });

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = |name: &str| -> Option<SocketAddr> {
                logs.lock().expect("lock").iter().find_map(|line| {
                    let v: Value = serde_json::from_str(line).ok()?;
                    (v["message"] == "listening" && v["listener"] == name)
                        .then(|| v["addr"].as_str()?.parse().ok())?
                })
            };
            if let (Some(addr), Some(admin)) = (found("data"), found("admin")) {
                return Ok(ProxyProcess {
                    child,
                    addr,
                    admin,
                    config_path,
                    logs,
                    _dir: dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "canary-proxy exited with {status} before listening:\n{}",
                    logs.lock().expect("lock").join("\n")
                ));
            }
            if Instant::now() > deadline {
                return Err("canary-proxy did not listen within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces the config file atomically, as a deployment tool would.
    pub fn write_config(&self, config: &[(&str, &str)]) {
        write_atomically(&self.config_path, config);
    }

    /// Writes raw text to the config file (for malformed and half-written configs).
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// An HTTP/1.1 client to the data listener.
    pub fn client(&self) -> HttpClient {
        HttpClient::http1(self.addr)
    }

    /// GET on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let reply = HttpClient::http1(self.admin).get(path, &[]).await?;
        Ok((
            reply.status.as_u16(),
            String::from_utf8_lossy(&reply.body).into_owned(),
        ))
    }

    /// `GET /status`, parsed.
    pub async fn status(&self) -> Value {
        let (_, body) = self.admin_get("/status").await.expect("status");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// The value of one metric series, e.g. `canary_proxy_requests_total{color="blue",code="2xx"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await.ok()?;
        body.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// Waits until `condition` holds on `/status`, up to `timeout`; returns the last status.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Result<Value, Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if condition(&status) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id, for reading its costs in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal (e.g. `"TERM"`) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("lock").clone()
    }
}

/// Runs `binary` to completion with `args` (for start-up failures); returns status and stderr.
pub async fn run_to_exit(binary: &Path, args: &[&str]) -> (ExitStatus, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("exits within 15 s")
    .expect("runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `config` as a flat YAML map to a temporary file, then renames it over `path`.
pub fn write_atomically(path: &Path, config: &[(&str, &str)]) {
    let text: String = config
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", serde_json::to_string(v).expect("string")))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// The HTTP/1.1 path the proxy serves plain-TCP clients with in this test binary: `hyper` in
/// the binaries named `hyper_path*` (which run suites of the other binaries again on the
/// hyper path), otherwise `lean`, the default.
pub fn http1_path() -> &'static str {
    let hyper = std::env::current_exe().is_ok_and(|exe| {
        exe.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("hyper_path"))
    });
    if hyper { "hyper" } else { "lean" }
}
