//! `compare`: the same load against the upstream directly, through canary-proxy, and through
//! NGINX and HAProxy configured for the same 95/5 split, under the same CPU budget.
//!
//! For each CPU plan (the proxy pinned to one core with one worker; then all cores), every
//! system is started once, warmed up, and measured in several interleaved rounds: a closed loop
//! (throughput, resident memory under load) and an open loop at a fixed rate well below
//! saturation (the proxy's own CPU time per request from `/proc`, and latency).
//!
//! - [`systems`]: starting each system and writing the reference proxies' configurations.
//! - [`procfs`]: CPU time and memory of a process and its children.
//! - [`idle`]: memory per idle kept-alive client connection.
//! - [`table`]: medians, spreads, ratios and the printed tables.

pub mod idle;
pub mod procfs;
pub mod systems;
pub mod table;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::load::{self, LoadConfig, LoadReport, Stop, Target, Workers};
use systems::{CpuPlan, Kind, Running, Upstreams};

/// How `compare` runs.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The `canary-proxy` binary.
    pub proxy_bin: PathBuf,
    /// Interleaved rounds per CPU plan.
    pub rounds: usize,
    /// Length of each measured load.
    pub duration: Duration,
    /// The fixed rate of the CPU-cost measurement, requests per second.
    pub rate: f64,
    /// Connections of every load.
    pub connections: usize,
    /// Only the one-core plan (skip the all-cores one).
    pub one_core_only: bool,
    /// Write the configurations here instead of a temporary directory.
    pub config_dir: Option<PathBuf>,
    /// The size of the upstreams' answer bodies, if not their few dozen bytes.
    pub body_bytes: Option<usize>,
    /// Clients speak h2c (prior knowledge) to every system.
    pub http2: bool,
    /// Idle kept-alive connections opened to each proxy to measure its memory per connection.
    pub idle_connections: Option<usize>,
}

impl CompareOptions {
    /// The load's shape, for the tables.
    pub fn describe_load(&self) -> String {
        let body = match self.body_bytes {
            Some(n) => format!("{n}-byte bodies"),
            None => "short bodies".to_string(),
        };
        let protocol = if self.http2 { "h2c" } else { "HTTP/1.1" };
        format!("{protocol} clients, {body}")
    }
}

/// One system measured in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    /// The round, from 0.
    pub round: usize,
    /// The system.
    pub kind: Kind,
    /// Closed-loop throughput.
    pub closed_rps: f64,
    /// Closed-loop latency percentiles, ms.
    pub closed_p50_ms: f64,
    /// Closed-loop p99, ms.
    pub closed_p99_ms: f64,
    /// The proxy's CPU time during the closed loop over its length, percent of one core: under
    /// 100 × workers, something other than the proxy's CPU limited the throughput.
    pub closed_busy_percent: Option<f64>,
    /// The most resident memory seen during the closed loop, bytes.
    pub load_rss: Option<u64>,
    /// Responses of the fixed-rate run.
    pub fixed_responses: u64,
    /// The proxy's CPU time per response of the fixed-rate run, microseconds.
    pub cpu_us_per_request: Option<f64>,
    /// The part of it spent in user space (the rest is the kernel's), microseconds.
    pub user_us_per_request: Option<f64>,
    /// Fixed-rate latency percentiles, ms.
    pub fixed_p50_ms: f64,
    /// Fixed-rate p99, ms.
    pub fixed_p99_ms: f64,
    /// Non-2xx answers and requests without an answer, both runs.
    pub failures: u64,
    /// Share of answers from green in the closed loop, percent (5 expected behind a proxy).
    pub green_percent: f64,
}

/// Everything measured under one CPU plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanResult {
    /// What was pinned where.
    pub plan: CpuPlan,
    /// Resident memory of each proxy right after start, bytes.
    pub idle_rss: Vec<(Kind, Option<u64>)>,
    /// Resident memory per idle kept-alive client connection of each proxy, bytes, with
    /// `idle_connections` open.
    pub rss_per_idle_connection: Vec<(Kind, Option<f64>)>,
    /// Each system in each round.
    pub rounds: Vec<Round>,
    /// Systems that could not be run, with the reason.
    pub skipped: Vec<String>,
    /// The load's shape: the clients' protocol and the size of the answers.
    pub load: String,
}

/// The CPU plans for this machine: one core (if there are at least two), then all cores.
fn plans(one_core_only: bool) -> Vec<CpuPlan> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut plans = Vec::new();
    if cores >= 2 {
        plans.push(CpuPlan::OneCore {
            proxy_cpu: 0,
            client_cpus: (1..cores).collect(),
        });
    }
    if !one_core_only || cores < 2 {
        plans.push(CpuPlan::AllCores { cores });
    }
    plans
}

/// Runs one load against `target` on `workers`.
async fn run_load(
    workers: &Workers,
    target: std::net::SocketAddr,
    options: &CompareOptions,
    rate: Option<f64>,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let config = LoadConfig {
        target: Target::from_addr(target),
        connections: options.connections,
        stop: Stop::After(duration),
        rate,
        http2: options.http2,
        timeout: Duration::from_secs(10),
    };
    Ok(load::start_on(config, workers.handles())?.finish().await)
}

/// Measures one system once: the closed loop with memory sampling, then the fixed rate with
/// the proxy's CPU time.
async fn measure(
    system: &Running,
    workers: &Workers,
    options: &CompareOptions,
    round: usize,
) -> anyhow::Result<Round> {
    let pids = system.pids();
    // The peak resident memory during the closed loop, sampled every 100 ms.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pids, peak) = (pids.clone(), peak.clone());
        tokio::spawn(async move {
            while !pids.is_empty() {
                peak.fetch_max(procfs::rss_bytes(&pids), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let cpu_before_closed = procfs::cpu_time(&pids);
    let closed = run_load(workers, system.target, options, None, options.duration).await?;
    let closed_cpu = procfs::cpu_time(&pids).saturating_sub(cpu_before_closed);
    sampler.abort();
    let load_rss =
        (!pids.is_empty()).then(|| peak.load(Ordering::Relaxed).max(procfs::rss_bytes(&pids)));
    let (user_before, system_before) = procfs::cpu_times(&pids);
    let fixed = run_load(
        workers,
        system.target,
        options,
        Some(options.rate),
        options.duration,
    )
    .await?;
    let (user_after, system_after) = procfs::cpu_times(&pids);
    let user = user_after.saturating_sub(user_before);
    let cpu = user + system_after.saturating_sub(system_before);
    let per_request = |time: Duration| {
        (!pids.is_empty() && fixed.responses > 0)
            .then(|| time.as_secs_f64() * 1e6 / fixed.responses as f64)
    };
    let failures = |r: &LoadReport| {
        r.errors.total()
            + r.status
                .iter()
                .filter(|(code, _)| !(200..300).contains(*code))
                .map(|(_, n)| n)
                .sum::<u64>()
    };
    Ok(Round {
        round,
        kind: system.kind,
        closed_rps: closed.requests_per_s,
        closed_p50_ms: closed.latency_ms.p50,
        closed_p99_ms: closed.latency_ms.p99,
        closed_busy_percent: (!pids.is_empty() && closed.elapsed_s > 0.0)
            .then(|| 100.0 * closed_cpu.as_secs_f64() / closed.elapsed_s),
        load_rss,
        fixed_responses: fixed.responses,
        cpu_us_per_request: per_request(cpu),
        user_us_per_request: per_request(user),
        fixed_p50_ms: fixed.latency_ms.p50,
        fixed_p99_ms: fixed.latency_ms.p99,
        failures: failures(&closed) + failures(&fixed),
        green_percent: if closed.responses == 0 {
            0.0
        } else {
            100.0 * closed.colors.green as f64 / closed.responses as f64
        },
    })
}

/// Runs every plan and returns what was measured; prints progress lines on stderr.
pub async fn run(options: &CompareOptions) -> anyhow::Result<Vec<PlanResult>> {
    let mut results = Vec::new();
    for (index, plan) in plans(options.one_core_only).into_iter().enumerate() {
        eprintln!("== {}; {}", plan.describe(), options.describe_load());
        let temporary = tempfile::tempdir().context("cannot make a temporary directory")?;
        let dir = match &options.config_dir {
            Some(dir) => dir.join(format!("plan-{index}")),
            None => temporary.path().to_path_buf(),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (client_cpus, client_threads) = match &plan {
            CpuPlan::OneCore { client_cpus, .. } => (client_cpus.clone(), client_cpus.len()),
            CpuPlan::AllCores { cores } => (Vec::new(), *cores),
        };
        let prefix = plan.client_prefix();
        let body = options.body_bytes;
        let (_blue, blue) = systems::start_upstream("blue", client_threads, body, &prefix).await?;
        let (_green, green) =
            systems::start_upstream("green", client_threads, body, &prefix).await?;
        let upstreams = Upstreams { blue, green };
        let workers = Workers::pinned(client_threads, &client_cpus)?;

        let mut running = Vec::new();
        let mut skipped = Vec::new();
        for kind in [Kind::Direct, Kind::CanaryProxy, Kind::Nginx, Kind::Haproxy] {
            let kind_dir = dir.join(kind.name());
            std::fs::create_dir_all(&kind_dir)?;
            let started = systems::start(
                kind,
                &plan,
                upstreams,
                &kind_dir,
                &options.proxy_bin,
                options.http2,
            );
            match started.await? {
                Ok(system) => {
                    // Warm-up: connections to the upstreams, allocator arenas, page faults.
                    run_load(
                        &workers,
                        system.target,
                        options,
                        None,
                        Duration::from_secs(1),
                    )
                    .await?;
                    running.push(system);
                }
                Err(reason) => {
                    eprintln!("   {}: {reason}", kind.name());
                    skipped.push(format!("{}: {reason}", kind.name()));
                }
            }
        }
        let idle_rss = running.iter().map(|s| (s.kind, s.idle_rss)).collect();
        let mut rss_per_idle_connection = Vec::new();
        if let Some(connections) = options.idle_connections {
            for system in running.iter().filter(|s| !s.pids().is_empty()) {
                let per =
                    idle::rss_per_connection(&system.pids(), system.target, connections).await;
                eprintln!(
                    "   {:<13} {} bytes of RSS per idle connection ({connections} open)",
                    system.kind.name(),
                    per.map_or("-".to_string(), |b| format!("{b:.0}"))
                );
                rss_per_idle_connection.push((system.kind, per));
            }
        }
        let mut rounds = Vec::new();
        for round in 0..options.rounds {
            // Interleaved, and in a rotated order, so that no system always runs first or last.
            for i in 0..running.len() {
                let system = &running[(i + round) % running.len()];
                let measured = measure(system, &workers, options, round).await?;
                eprintln!(
                    "   round {} {:<13} {:>9.0} req/s closed, {} µs CPU/request at {:.0}/s",
                    round + 1,
                    system.kind.name(),
                    measured.closed_rps,
                    measured
                        .cpu_us_per_request
                        .map_or("-".to_string(), |us| format!("{us:.1}")),
                    options.rate
                );
                rounds.push(measured);
            }
        }
        for system in running {
            system.stop().await;
        }
        results.push(PlanResult {
            plan,
            idle_rss,
            rounds,
            skipped,
            load: options.describe_load(),
            rss_per_idle_connection,
        });
    }
    Ok(results)
}
