//! `canary-bench spread`: how evenly one color's pods share the load under keep-alive, and what
//! the per-request balancer costs. Pods are test upstreams on their own loopback addresses
//! (127.0.0.11, .12, ...) in this process; the real `canary-proxy` runs in front of them three
//! ways, one after the other, with the same closed-loop load:
//!
//! - `service address`: the color's upstream is one address, a stand-in for a ClusterIP in
//!   this process that picks a pod at random per *connection*, as kube-proxy does (today's
//!   behaviour with `blue.upstream: blue-svc:80`);
//! - `endpoints`: the color's upstream lists the pods, each request balanced across them;
//! - `one pod`: the color's upstream is a single pod, the same proxy path without a choice to
//!   make, against which the balancer's CPU cost per request is read.
//!
//! The proxy's CPU time per request comes from `/proc` around each run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};

use crate::compare::procfs;
use crate::load::{self, LoadConfig, Stop, Target};
use crate::proxy::{ProxyProcess, write_config};
use crate::upstream::{self, Color, FaultUpdate, Upstream};

/// What to run.
#[derive(Clone, Debug)]
pub struct SpreadOptions {
    /// The `canary-proxy` binary.
    pub proxy_bin: PathBuf,
    /// Pods of the color.
    pub pods: u8,
    /// Keep-alive client connections.
    pub connections: usize,
    /// Length of each run.
    pub duration: Duration,
}

/// One way of reaching the pods, measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SpreadResult {
    /// `service address`, `endpoints` or `one pod`.
    pub setup: &'static str,
    /// Requests answered during the run.
    pub requests: u64,
    /// Requests each pod answered.
    pub per_pod: Vec<u64>,
    /// Standard deviation of the per-pod counts over their mean (0 is perfectly even).
    pub spread: f64,
    /// The busiest pod's count over the least busy one's.
    pub max_over_min: f64,
    /// The proxy's CPU time (user and system) per request, in microseconds.
    pub proxy_cpu_us: f64,
    /// Requests per second.
    pub requests_per_s: f64,
}

/// Runs the three setups in turn.
pub async fn run(options: &SpreadOptions) -> anyhow::Result<Vec<SpreadResult>> {
    let mut pods = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..options.pods {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 11 + i], 0)))
            .await
            .context("cannot bind a pod on a loopback address")?;
        addrs.push(listener.local_addr()?);
        let state = Upstream::new(Color::Blue, FaultUpdate::default());
        pods.push(state.clone());
        tokio::spawn(upstream::serve(listener, state, std::future::pending()));
    }
    let service = service_address(addrs.clone()).await?;
    let list = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let setups = [
        ("service address", service.to_string()),
        ("endpoints", list),
        ("one pod", addrs[0].to_string()),
    ];
    let dir = tempfile::tempdir()?;
    let mut results = Vec::new();
    for (setup, upstream) in setups {
        let path = dir.path().join("config.yaml");
        write_config(
            &path,
            &[
                ("blue.upstream", upstream.clone()),
                ("green.upstream", upstream),
                ("canary-weight", "0".to_string()),
            ],
        )?;
        let proxy = ProxyProcess::start(
            &options.proxy_bin,
            &path,
            &[],
            &["--workers".into(), "1".into()],
        )
        .await?;
        let pids = procfs::family(proxy.pid().context("the proxy exited")?);
        let target = Target::resolve(&format!("http://{}/", proxy.data)).await?;
        let before: Vec<u64> = pods.iter().map(|p| p.stats().served).collect();
        let cpu_before = procfs::cpu_time(&pids);
        let report = load::run(LoadConfig {
            target,
            connections: options.connections,
            stop: Stop::After(options.duration),
            rate: None,
            http2: false,
            timeout: Duration::from_secs(10),
        })
        .await?;
        let cpu = procfs::cpu_time(&pids).saturating_sub(cpu_before);
        let per_pod: Vec<u64> = pods
            .iter()
            .zip(&before)
            .map(|(p, b)| p.stats().served - b)
            .collect();
        proxy.terminate(Duration::from_secs(5)).await;
        let requests: u64 = per_pod.iter().sum();
        results.push(summarize(
            setup,
            per_pod,
            requests,
            cpu,
            report.requests_per_s,
        ));
        eprintln!("{setup}: {:?}", results.last().map(|r| &r.per_pod));
    }
    Ok(results)
}

fn summarize(
    setup: &'static str,
    per_pod: Vec<u64>,
    requests: u64,
    cpu: Duration,
    requests_per_s: f64,
) -> SpreadResult {
    // The one-pod setup is even by definition: its spread is over the pod it uses.
    let used: Vec<f64> = if setup == "one pod" {
        vec![requests as f64]
    } else {
        per_pod.iter().map(|&c| c as f64).collect()
    };
    let mean = used.iter().sum::<f64>() / used.len() as f64;
    let variance = used.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / used.len() as f64;
    let (min, max) = used
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &c| (lo.min(c), hi.max(c)));
    SpreadResult {
        setup,
        requests,
        per_pod,
        spread: if mean > 0.0 {
            variance.sqrt() / mean
        } else {
            0.0
        },
        max_over_min: if min > 0.0 { max / min } else { f64::INFINITY },
        proxy_cpu_us: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
        requests_per_s,
    }
}

/// A Markdown table of the results.
pub fn table(results: &[SpreadResult], options: &SpreadOptions) -> String {
    let mut out = format!(
        "{} pods, {} keep-alive connections, {:?} closed loop per setup, proxy with one worker\n\n\
         | setup | requests/s | per pod | spread (σ/mean) | max/min | proxy CPU µs/request |\n\
         | --- | ---: | --- | ---: | ---: | ---: |\n",
        options.pods, options.connections, options.duration
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {:.0} | {:?} | {:.3} | {:.2} | {:.1} |\n",
            r.setup, r.requests_per_s, r.per_pod, r.spread, r.max_over_min, r.proxy_cpu_us
        ));
    }
    out
}

/// A stand-in for a ClusterIP: a TCP relay on 127.0.0.1 that sends each new connection to a pod
/// drawn at random, as kube-proxy does, and copies bytes both ways.
async fn service_address(pods: Vec<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pods = Arc::new(pods);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let pod = pods[rand::rng().random_range(0..pods.len())];
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(pod).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(addr)
}
