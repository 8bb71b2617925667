//! The systems under comparison, started the same way: the upstream directly, canary-proxy,
//! NGINX and HAProxy, each configured for the same 95/5 split with keep-alive to upstreams.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::procfs;
use crate::proxy::{self, ProxyProcess};

/// How long a reference proxy may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One system under comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The blue upstream itself, no proxy: the ceiling.
    Direct,
    /// canary-proxy.
    CanaryProxy,
    /// NGINX, `upstream` with `weight=` and `keepalive`.
    Nginx,
    /// HAProxy, `balance roundrobin` with weights and `http-reuse always`.
    Haproxy,
}

impl Kind {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::CanaryProxy => "canary-proxy",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// How much CPU a proxy gets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CpuPlan {
    /// The proxy pinned to one CPU with one worker; load and upstreams on the other CPUs.
    OneCore {
        /// The proxy's CPU.
        proxy_cpu: usize,
        /// Where the load generator and the upstreams run.
        client_cpus: Vec<usize>,
    },
    /// Nothing pinned; one worker per core for every proxy.
    AllCores {
        /// Cores on the machine.
        cores: usize,
    },
}

impl CpuPlan {
    /// Workers each proxy runs with.
    pub fn workers(&self) -> usize {
        match self {
            CpuPlan::OneCore { .. } => 1,
            CpuPlan::AllCores { cores } => *cores,
        }
    }

    /// The `taskset` prefix for a proxy.
    pub fn proxy_prefix(&self) -> Vec<String> {
        match self {
            CpuPlan::OneCore { proxy_cpu, .. } => {
                vec!["taskset".into(), "-c".into(), proxy_cpu.to_string()]
            }
            CpuPlan::AllCores { .. } => Vec::new(),
        }
    }

    /// The `taskset` prefix for an upstream.
    pub fn client_prefix(&self) -> Vec<String> {
        match self {
            CpuPlan::OneCore { client_cpus, .. } => {
                vec!["taskset".into(), "-c".into(), cpu_list(client_cpus)]
            }
            CpuPlan::AllCores { .. } => Vec::new(),
        }
    }

    /// A line saying what was pinned where.
    pub fn describe(&self) -> String {
        match self {
            CpuPlan::OneCore {
                proxy_cpu,
                client_cpus,
            } => format!(
                "one core: each proxy pinned to CPU {proxy_cpu} with one worker; load generator and upstreams on CPU {}",
                cpu_list(client_cpus)
            ),
            CpuPlan::AllCores { cores } => {
                format!(
                    "all cores: nothing pinned, {cores} workers per proxy, sharing the {cores} cores with load and upstreams"
                )
            }
        }
    }
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A started system: where to send load and which processes to measure.
pub struct Running {
    /// Which system.
    pub kind: Kind,
    /// Where the load goes.
    pub target: SocketAddr,
    /// The proxy's main process (none for direct); NGINX's workers are its children.
    pub main_pid: Option<u32>,
    /// Resident memory right after start, before any request.
    pub idle_rss: Option<u64>,
    /// Keeps the process alive; dropping it kills the process.
    process: Process,
}

enum Process {
    None,
    Canary(ProxyProcess),
    Reference(Child),
}

impl Running {
    /// The processes to measure: the main one and its children, looked up now because NGINX
    /// forks its workers after it starts listening.
    pub fn pids(&self) -> Vec<u32> {
        self.main_pid.map(procfs::family).unwrap_or_default()
    }

    /// Stops the system.
    pub async fn stop(self) {
        match self.process {
            Process::None => {}
            Process::Canary(proxy) => {
                let _ = proxy.terminate(Duration::from_secs(5)).await;
            }
            Process::Reference(mut child) => {
                let _ = child.kill().await;
            }
        }
    }
}

/// Finds `name` on `PATH` or in the sbin directories Debian installs servers to.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Starts a `canary-bench upstream` child of `color` under `prefix`, answering with bodies of
/// `body_bytes` if given, and returns it with its address.
pub async fn start_upstream(
    color: &str,
    workers: usize,
    body_bytes: Option<usize>,
    prefix: &[String],
) -> std::io::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut command = match prefix.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let workers = workers.to_string();
    command
        .args([
            "upstream",
            "--listen",
            "127.0.0.1:0",
            "--color",
            color,
            "--workers",
            &workers,
        ])
        .args(body_bytes.map(|n| format!("--body-bytes={n}")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| std::io::Error::other("the upstream printed no address"))??
        .unwrap_or_default();
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no address in {line:?}")))?;
    Ok((child, addr))
}

/// A free loopback port for a reference proxy (bound, read and released).
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Waits until `addr` accepts a connection.
async fn wait_listening(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The NGINX configuration for the 95/5 split, listening for h2c clients if `http2`. Answers
/// are not buffered (`proxy_buffering off`, ingress-nginx's default), so a large body streams
/// through as it does through canary-proxy instead of going to temporary files.
pub fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    upstreams: Upstreams,
    workers: usize,
    http2: bool,
) -> String {
    let dir = dir.display();
    let Upstreams { blue, green } = upstreams;
    let listen = if http2 {
        format!("{listen} http2")
    } else {
        listen.to_string()
    };
    format!(
        "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\nworker_rlimit_nofile 20000;\nevents {{ worker_connections 16384; multi_accept on; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {dir}/client_body;\n  proxy_temp_path {dir}/proxy;\n\
         \x20 upstream colors {{\n    server {blue} weight=95;\n    server {green} weight=5;\n    keepalive 256;\n    keepalive_requests 1000000;\n  }}\n\
         \x20 server {{\n    listen {listen} backlog=4096;\n    location / {{\n      proxy_pass http://colors;\n\
         \x20     proxy_http_version 1.1;\n      proxy_buffering off;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
         \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n"
    )
}

/// The HAProxy configuration for the 95/5 split, listening for h2c clients if `http2`.
pub fn haproxy_config(
    listen: SocketAddr,
    upstreams: Upstreams,
    workers: usize,
    http2: bool,
) -> String {
    let Upstreams { blue, green } = upstreams;
    let bind = if http2 {
        format!("{listen} proto h2")
    } else {
        listen.to_string()
    };
    format!(
        "global\n  nbthread {workers}\n  maxconn 9000\n\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n\
         \x20 timeout server 60s\n  option forwardfor\n  http-reuse always\n\nfrontend split\n  bind {bind}\n  default_backend colors\n\n\
         backend colors\n  balance roundrobin\n  server blue {blue} weight 95\n  server green {green} weight 5\n"
    )
}

/// Where a system's upstreams are.
#[derive(Clone, Copy, Debug)]
pub struct Upstreams {
    /// Blue, which also serves `direct`.
    pub blue: SocketAddr,
    /// Green.
    pub green: SocketAddr,
}

/// Starts `kind` under `plan` in `dir`, for h2c clients if `http2`; `Ok(None)` with a reason
/// when it is not installed.
pub async fn start(
    kind: Kind,
    plan: &CpuPlan,
    upstreams: Upstreams,
    dir: &Path,
    proxy_bin: &Path,
    http2: bool,
) -> anyhow::Result<Result<Running, String>> {
    let workers = plan.workers();
    let (process, target, main_pid) = match kind {
        Kind::Direct => (Process::None, upstreams.blue, None),
        Kind::CanaryProxy => {
            let config = dir.join("canary.yaml");
            proxy::write_config(
                &config,
                &[
                    ("blue.upstream", upstreams.blue.to_string()),
                    ("green.upstream", upstreams.green.to_string()),
                    ("stable", "blue".to_string()),
                    ("canary-weight", "5".to_string()),
                ],
            )?;
            let extra = ["--workers".to_string(), workers.to_string()];
            let proxy =
                ProxyProcess::start(proxy_bin, &config, &plan.proxy_prefix(), &extra).await?;
            let (target, pid) = (proxy.data, proxy.pid());
            (Process::Canary(proxy), target, pid)
        }
        Kind::Nginx | Kind::Haproxy => {
            let program = if kind == Kind::Nginx {
                "nginx"
            } else {
                "haproxy"
            };
            let Some(binary) = find_program(program) else {
                return Ok(Err(format!(
                    "{program} is not installed (bench/install-reference-proxies.sh installs it from Debian); skipped"
                )));
            };
            let listen = free_port()?;
            let mut command = match plan.proxy_prefix().split_first() {
                Some((prefix, args)) => {
                    let mut command = Command::new(prefix);
                    command.args(args).arg(&binary);
                    command
                }
                None => Command::new(&binary),
            };
            if kind == Kind::Nginx {
                let path = dir.join("nginx.conf");
                std::fs::write(&path, nginx_config(dir, listen, upstreams, workers, http2))?;
                command
                    .arg("-c")
                    .arg(&path)
                    .arg("-p")
                    .arg(dir)
                    .arg("-e")
                    .arg(dir.join("nginx-error.log"));
            } else {
                let path = dir.join("haproxy.cfg");
                std::fs::write(&path, haproxy_config(listen, upstreams, workers, http2))?;
                command.arg("-f").arg(&path).arg("-db");
            }
            let log = dir.join("stderr.log");
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .kill_on_drop(true);
            let child = command.spawn()?;
            let pid = child.id();
            if !wait_listening(listen).await {
                anyhow::bail!(
                    "{program} did not listen on {listen} within {START_TIMEOUT:?}; its output:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            (Process::Reference(child), listen, pid)
        }
    };
    let mut running = Running {
        kind,
        target,
        main_pid,
        idle_rss: None,
        process,
    };
    // Let NGINX fork its workers before its memory is read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pids = running.pids();
    running.idle_rss = (!pids.is_empty()).then(|| procfs::rss_bytes(&pids));
    Ok(Ok(running))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn upstreams() -> Upstreams {
        Upstreams {
            blue: addr(8081),
            green: addr(8082),
        }
    }

    #[test]
    fn nginx_splits_95_5_with_keepalive() {
        let text = nginx_config(Path::new("nginx-dir"), addr(8080), upstreams(), 1, false);
        assert!(text.contains("server 127.0.0.1:8081 weight=95;"));
        assert!(text.contains("server 127.0.0.1:8082 weight=5;"));
        assert!(text.contains("keepalive 256;"));
        assert!(text.contains("proxy_http_version 1.1;"));
        assert!(text.contains("proxy_set_header Connection \"\";"));
        assert!(text.contains("worker_processes 1;"));
        assert!(text.contains("listen 127.0.0.1:8080 backlog"));
        assert!(text.contains("proxy_buffering off;"));
        let h2c = nginx_config(Path::new("nginx-dir"), addr(8080), upstreams(), 1, true);
        assert!(h2c.contains("listen 127.0.0.1:8080 http2 backlog"));
    }

    #[test]
    fn haproxy_splits_95_5_with_reuse() {
        let text = haproxy_config(addr(8080), upstreams(), 2, false);
        assert!(text.contains("server blue 127.0.0.1:8081 weight 95"));
        assert!(text.contains("server green 127.0.0.1:8082 weight 5"));
        assert!(text.contains("http-reuse always"));
        assert!(text.contains("balance roundrobin"));
        assert!(text.contains("nbthread 2"));
        assert!(text.contains("bind 127.0.0.1:8080\n"));
        let h2c = haproxy_config(addr(8080), upstreams(), 2, true);
        assert!(h2c.contains("bind 127.0.0.1:8080 proto h2\n"));
    }

    #[test]
    fn pinning_prefixes() {
        let plan = CpuPlan::OneCore {
            proxy_cpu: 0,
            client_cpus: vec![1, 2, 3],
        };
        assert_eq!(plan.proxy_prefix(), ["taskset", "-c", "0"]);
        assert_eq!(plan.client_prefix(), ["taskset", "-c", "1,2,3"]);
        assert_eq!(plan.workers(), 1);
        assert!(CpuPlan::AllCores { cores: 4 }.proxy_prefix().is_empty());
    }
}
