//! The `canary-proxy` binary: command line, logging, and the wiring of the listeners, the
//! config source and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use canary_proxy::admin;
use canary_proxy::config::{parse_duration, watch as config_watch};
use canary_proxy::lean::Http1;
use canary_proxy::listener::Limits;
use canary_proxy::metrics::Metrics;
use canary_proxy::runtime::Runtime;
use canary_proxy::tls::Certificates;
use canary_proxy::workers::{self, Serving};

#[cfg(feature = "kubernetes")]
mod kubernetes;

// Per-thread free lists suit a proxy's many small, short-lived allocations (header maps, body
// chunks) better than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its value in `mi_option_e`; the sys crate names no
/// constant for it). Milliseconds before pages found empty go back to the system; 1,000 unless set.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Empty pages go back to the system at once, not after the allocator's delay, which only runs
/// out when the thread next allocates: a worker whose connections have all gone idle (parked,
/// their tasks freed) allocates nothing more, and would keep their memory resident. Measured
/// free on the request path: no `madvise` per request or per new connection (BENCHMARKS.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still decides, for operators who want otherwise.
fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of the allocator's options to a value it documents; nothing but this
        // thread runs yet.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
    }
}

/// A blue/green traffic-splitting reverse proxy with rollback in the data path.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file or directory, watched for changes.
    #[arg(
        long,
        env = "CANARY_PROXY_CONFIG",
        required_unless_present = "configmap",
        conflicts_with = "configmap"
    )]
    config: Option<PathBuf>,
    /// Kubernetes ConfigMap to watch, as NAMESPACE/NAME.
    #[arg(long, env = "CANARY_PROXY_CONFIGMAP")]
    configmap: Option<String>,
    /// Address of the data listener.
    #[arg(long, env = "CANARY_PROXY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of the admin listener (metrics, probes, status).
    #[arg(
        long,
        env = "CANARY_PROXY_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    admin_listen: SocketAddr,
    /// PEM certificate chain for HTTPS on the data listener (with --tls-key).
    #[arg(long, env = "CANARY_PROXY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "CANARY_PROXY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "CANARY_PROXY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Log format.
    #[arg(long, env = "CANARY_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Data-plane worker threads, each with its own event loop and its share of the
    /// connections, as NGINX's worker processes; the control plane has a thread of its own.
    /// Default: one per core.
    #[arg(long, env = "CANARY_PROXY_WORKERS")]
    workers: Option<usize>,
    /// Judge rollbacks and the step plan on the whole fleet's evidence, as NAMESPACE/SERVICE:
    /// peers from that headless Service's EndpointSlices, one judge elected by a Lease of the
    /// same name.
    #[arg(long, env = "CANARY_PROXY_FLEET", requires = "configmap")]
    fleet: Option<String>,
    /// Which server takes plain-TCP HTTP/1.1 connections: `lean` (parses heads in place and
    /// hands anything unusual to hyper) or `hyper` (every connection).
    #[arg(long, env = "CANARY_PROXY_HTTP1", default_value = "lean")]
    http1: Http1,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    purge_at_once();
    let args = Args::parse();
    init_logging(args.log_format);
    // This thread runs the control plane (config source, admin listener, judge timer,
    // signals); the data plane runs on the workers' own threads (see `workers`).
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // kube's own client logs every broken watch stream; the controller logs outages once.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client=error,kube_runtime=error")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("cannot register metrics")?;
    // true once shutdown has begun; every task holds a receiver.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (runtime, source_task) = match (&args.config, &args.configmap) {
        (Some(path), _) => {
            let runtime = Runtime::new(metrics, format!("file:{}", path.display()));
            config_watch::load(&runtime, path)
                .with_context(|| format!("no usable configuration at {}", path.display()))?;
            let follow =
                config_watch::follow(runtime.clone(), path.clone(), stopped(stop_rx.clone()));
            // Service upstreams in a file are followed with the in-cluster or kubeconfig client.
            #[cfg(feature = "kubernetes")]
            kubernetes::endpoints::start(runtime.clone(), None, stop_rx.clone());
            (runtime, tokio::spawn(follow))
        }
        #[cfg(feature = "kubernetes")]
        (None, Some(target)) => {
            let runtime = Runtime::new(metrics, format!("configmap:{target}"));
            let task = kubernetes::start(
                runtime.clone(),
                target,
                args.fleet.as_deref(),
                stop_rx.clone(),
            )
            .await?;
            (runtime, task)
        }
        _ => bail!("--configmap needs the `kubernetes` feature, which this build does not include"),
    };

    let certificates = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(Certificates::load(cert, key).context("cannot use the TLS certificate")?)
        }
        _ => None,
    };
    let judge_task = tokio::spawn(runtime.clone().keep_judging(stopped(stop_rx.clone())));
    tokio::spawn(canary_proxy::upstream::dns::keep_resolving(
        runtime.clone(),
        stopped(stop_rx.clone()),
    ));
    let count = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let data = workers::bind(args.listen, count).context("data listener")?;
    info!(listener = "data", addr = %data.local_addr(), workers = count, "listening");
    let admin_listener = bind(args.admin_listen, "admin").await?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        runtime.clone(),
        stopped(stop_rx.clone()),
    ));
    let tls = certificates.map(|certs| {
        tokio::spawn(certs.clone().follow(stopped(stop_rx.clone())));
        certs.acceptor()
    });

    let serving = Serving {
        tls,
        runtime: runtime.clone(),
        limits: Limits {
            http1: args.http1,
            ..Limits::default()
        },
        drain_timeout: args.drain_timeout,
    };
    let mut workers = data.serve(serving)?;
    let failed = tokio::select! {
        () = wait_for_signal() => {
            info!("shutdown signal received: readiness off, draining");
            None
        }
        index = workers.exited() => index,
    };
    runtime.start_draining();
    workers.stop();
    let joined = workers.join().await;

    let _ = stop_tx.send(true);
    let _ = tokio::join!(admin_task, source_task, judge_task);
    joined?;
    if let Some(index) = failed {
        bail!("worker {index} stopped before shutdown");
    }
    info!("stopped");
    Ok(())
}

async fn bind(addr: SocketAddr, name: &'static str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({name})"))?;
    let addr = listener.local_addr()?;
    info!(listener = name, %addr, "listening");
    Ok(listener)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option set by number is the purge delay: the only option whose default is 1,000 (ms),
    /// and it reads 0 once set.
    #[test]
    fn the_allocator_option_set_is_its_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an option; this test's process has no other allocator user that cares.
        let before = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(
            before, 1000,
            "option {PURGE_DELAY} is not mimalloc's purge delay"
        );
        purge_at_once();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 0);
    }
}
