//! The `canary-bench` command line: parses the flags and hands each command to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use canary_bench::compare::{self, CompareOptions};
use canary_bench::demo::{self, DemoOptions};
use canary_bench::load::{self, LoadConfig, Stop, Target, Workers};
use canary_bench::proxy;
use canary_bench::simulate::fleet::FleetOptions;
use canary_bench::simulate::progressive::{self, ProgressiveOptions};
use canary_bench::simulate::{self, RuleName, SimulateOptions};
use canary_bench::soak::{self, SoakOptions};
use canary_bench::spread;
use canary_bench::units::parse_duration;
use canary_bench::upstream::{self, Color, FaultUpdate, Upstream};

/// Test upstreams, a load generator, the demo and the benchmark of canary-proxy.
#[derive(Parser, Debug)]
#[command(name = "canary-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A fast test upstream that answers its color, with fault injection.
    Upstream(UpstreamArgs),
    /// Sends load to a URL and prints throughput, latency, statuses and the split by x-color.
    Load(LoadArgs),
    /// The whole canary story on loopback: upstreams, the real canary-proxy, 5 % -> 50 % ->
    /// 100 % -> 5 %, a fault in green and the automatic rollback; prints a timeline and
    /// writes an HTML report.
    Demo(DemoArgs),
    /// The same load direct, through canary-proxy, NGINX and HAProxy (95/5 split, same CPU
    /// budget, interleaved rounds): throughput, CPU per request, latency and memory.
    Compare(CompareArgs),
    /// Minutes of steady load through the real canary-proxy mixed with malformed requests,
    /// aborted bodies, h2 resets and reloads; reports the proxy's RSS and file descriptors
    /// from start to end and fails if good requests failed or either leaked.
    Soak(SoakArgs),
    /// The rollback verdict simulated over its pure decision code: false rollbacks over 7
    /// days and requests to catch a bad canary after a healthy day, at canary rates from 0.01
    /// to 10,000 a second, 100 seeds each, beside the windowed rule it replaced.
    Simulate(SimulateArgs),
    /// One color's pods behind the real canary-proxy under keep-alive: the per-pod load spread
    /// with the color at one Service address (a pod chosen per connection) against the
    /// per-request balancer over the pods' endpoints, and the balancer's CPU cost per request.
    Spread(SpreadArgs),
}

#[derive(Args, Debug)]
struct SpreadArgs {
    /// The canary-proxy binary (default: next to this executable).
    #[arg(long, env = "CANARY_BENCH_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// Pods of the color, on 127.0.0.11 and up.
    #[arg(long, default_value_t = 3)]
    pods: u8,
    /// Keep-alive client connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Length of each run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// A run of a few seconds (20 seeds, one day, up to 100 requests a second).
    #[arg(long)]
    quick: bool,
    /// Seeds per cell [default: 100; 20 with --quick].
    #[arg(long)]
    seeds: Option<u64>,
    /// Canary request rates, comma-separated [default: 0.01 to 10,000 by tens].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// The rules to run, comma-separated [default: both].
    #[arg(long, value_delimiter = ',', value_enum)]
    rules: Option<Vec<RuleName>>,
    /// Print the report as JSON instead of the tables.
    #[arg(long)]
    json: bool,
    /// The fleet table instead: the traffic spread over 2, 10, 50 and 500 replicas, the fleet
    /// judge against every replica judging alone (100 seeds of 24 h; 4 of 1 h with --quick).
    #[arg(long)]
    fleet: bool,
    /// The progressive-delivery table instead: releases through steps 5,25,50,100 (healthy,
    /// failing, slower) at 10 and 1,000 requests a second; promotions, rollbacks and their
    /// times (100 seeds; 10 with --quick).
    #[arg(long, conflicts_with = "fleet")]
    progressive: bool,
}

#[derive(Args, Debug)]
struct SoakArgs {
    /// The canary-proxy binary (default: next to this executable).
    #[arg(long, env = "CANARY_BENCH_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// How long the load runs [default: 10m; 20s with --quick].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// RSS growth is measured from the end of this first part of the load [default: 1m; 5s
    /// with --quick].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Good requests per second, open loop: 80 % over HTTP/1.1 and 20 % over h2c; malformed
    /// requests, aborted bodies and h2 resets each come at 1 % of it.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Time between two configuration reloads (canary weight 10 <-> 20) [default: 30s; 4s
    /// with --quick].
    #[arg(long, value_parser = parse_duration)]
    reload_every: Option<Duration>,
    /// Print the result as JSON on stdout instead of the table and summary.
    #[arg(long)]
    json: bool,
    /// A short soak of about 20 s, for tests.
    #[arg(long)]
    quick: bool,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// The canary-proxy binary (default: next to this executable).
    #[arg(long, env = "CANARY_BENCH_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// Interleaved rounds per CPU plan.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// The fixed rate at which CPU per request and latency are measured (open loop).
    #[arg(long, default_value_t = 20000.0)]
    rate: f64,
    /// Connections of every run.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Only the plan with each proxy pinned to one core (skip the all-cores plan).
    #[arg(long)]
    one_core_only: bool,
    /// Keep the generated NGINX, HAProxy and canary-proxy configurations in this directory.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// The upstreams answer with bodies of this many bytes (such as 1024, 65536, 1048576)
    /// instead of a few dozen.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// The clients speak HTTP/2 (h2c, prior knowledge) to every system; upstreams stay HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Before the rounds, open this many idle kept-alive connections to each proxy (one
    /// request each) and report its resident memory per connection.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Print every round as JSON on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// The canary-proxy binary (default: next to this executable).
    #[arg(long, env = "CANARY_BENCH_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
    /// Where to write the HTML report.
    #[arg(
        long,
        env = "CANARY_BENCH_REPORT",
        default_value = "canary-bench-report.html"
    )]
    report: PathBuf,
    /// The same story in about 15 s, for CI.
    #[arg(long, alias = "short")]
    quick: bool,
    /// Three releases through progressive.steps 5,25,50,100 instead, each decided by the proxy:
    /// a healthy one promoted, one 30 % slower from the 25 % step rolled back by the latency
    /// trigger, one failing 3 % under a 5 % threshold promoted.
    #[arg(long)]
    progressive: bool,
}

#[derive(Args, Debug)]
struct UpstreamArgs {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, env = "CANARY_BENCH_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The color this upstream answers with, in `x-color` and the body.
    #[arg(long, env = "CANARY_BENCH_COLOR", value_enum)]
    color: Color,
    /// Fraction of answers, 0.0 to 1.0, that are 500 (changeable with POST /fault).
    #[arg(long, env = "CANARY_BENCH_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every answer, such as 5ms (changeable with POST /fault).
    #[arg(long, env = "CANARY_BENCH_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,
    /// Runtime worker threads; 1 runs on the current thread (default: one per core).
    #[arg(long, env = "CANARY_BENCH_WORKERS")]
    workers: Option<usize>,
    /// Answer with a body of this many bytes instead of the color's JSON.
    #[arg(long, env = "CANARY_BENCH_BODY_BYTES")]
    body_bytes: Option<usize>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// The URL to load, such as http://127.0.0.1:8080/.
    #[arg(long)]
    target: String,
    /// Connections, each with one request in flight at a time.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// How long to send, such as 10s.
    #[arg(long, short = 'd', value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Send exactly this many requests instead of for a duration.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Open loop at this many requests per second in total, latency measured from each
    /// request's intended send time; without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 by prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// A request without its whole answer after this long is counted as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Worker threads, each with its own share of the connections (default: one per core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Upstream(args) => {
            let runtime = runtime(args.workers)?;
            runtime.block_on(run_upstream(args))
        }
        // The connections run on their own worker threads; this runtime only waits for them.
        Command::Load(args) => runtime(Some(1))?.block_on(run_load(args)),
        Command::Demo(args) => runtime(None)?.block_on(run_demo(args)),
        // The load runs on its own pinned worker threads; this runtime starts processes and waits.
        Command::Compare(args) => runtime(Some(1))?.block_on(run_compare(args)),
        Command::Soak(args) => runtime(None)?.block_on(run_soak(args)),
        Command::Simulate(args) => run_simulate(args),
        Command::Spread(args) => runtime(None)?.block_on(run_spread(args)),
    }
}

async fn run_spread(args: SpreadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=64).contains(&args.pods),
        "--pods must be between 2 and 64"
    );
    let options = spread::SpreadOptions {
        proxy_bin: proxy::find_binary(args.proxy_bin)?,
        pods: args.pods,
        connections: args.connections,
        duration: args.duration,
    };
    let results = spread::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", spread::table(&results, &options));
    }
    Ok(())
}

fn run_simulate(args: SimulateArgs) -> anyhow::Result<()> {
    if args.fleet {
        return run_simulate_fleet(&args);
    }
    if args.progressive {
        return run_simulate_progressive(&args);
    }
    let mut options = if args.quick {
        SimulateOptions::quick()
    } else {
        SimulateOptions::full()
    };
    if let Some(seeds) = args.seeds {
        options.seeds = seeds;
    }
    if let Some(rates) = args.rates {
        options.rates = rates;
    }
    if let Some(rules) = args.rules {
        options.rules = rules;
    }
    let started = std::time::Instant::now();
    let report = simulate::simulate(&options);
    print_report(args.json, &report, || report.markdown(&options), started)
}

/// A simulation's report: JSON on stdout, or its tables and the time it took.
fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    markdown: impl FnOnce() -> String,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", markdown());
        eprintln!("simulated in {:.0?}", started.elapsed());
    }
    Ok(())
}

fn run_simulate_progressive(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut options = if args.quick {
        ProgressiveOptions::quick()
    } else {
        ProgressiveOptions::full()
    };
    if let Some(seeds) = args.seeds {
        options.seeds = seeds;
    }
    if let Some(rates) = &args.rates {
        options.rates = rates.clone();
    }
    let started = std::time::Instant::now();
    let report = (
        progressive::simulate_progressive(&options),
        progressive::simulate_alarms(&options),
    );
    print_report(
        args.json,
        &report,
        || progressive::markdown(&report.0, &options) + &progressive::alarms_markdown(&report.1),
        started,
    )
}

fn run_simulate_fleet(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut options = if args.quick {
        FleetOptions::quick()
    } else {
        FleetOptions::full()
    };
    if let Some(seeds) = args.seeds {
        options.seeds = seeds;
    }
    let started = std::time::Instant::now();
    let report = simulate::fleet::simulate_fleet(&options);
    print_report(args.json, &report, || report.markdown(&options), started)
}

/// A tokio runtime with `workers` threads (one per core by default; 1 = current thread).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    runtime.context("cannot start the tokio runtime")
}

async fn run_upstream(args: UpstreamArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_rate),
        "--error-rate must be between 0.0 and 1.0, not {}",
        args.error_rate
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let state = Upstream::with_body(
        args.color,
        FaultUpdate {
            error_rate: Some(args.error_rate),
            latency_ms: Some(args.latency.as_secs_f64() * 1000.0),
        },
        args.body_bytes,
    );
    println!("canary-bench upstream {} listening on {addr}", args.color);
    upstream::serve(listener, state, shutdown_signal()).await;
    Ok(())
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&args.target).await?;
    let stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(duration)) => Stop::After(duration),
        (None, None) => Stop::After(Duration::from_secs(10)),
    };
    let config = LoadConfig {
        target,
        connections: args.connections,
        stop,
        rate: args.rate,
        http2: args.http2,
        timeout: args.timeout,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers = Workers::new(threads).context("cannot start the load's worker threads")?;
    let handle = load::start_on(config, workers.handles())?;
    let progress = handle.spawn_progress();
    let report = handle.finish().await;
    load::clear_progress(progress);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let options = DemoOptions {
        proxy_bin: proxy::find_binary(args.proxy_bin)?,
        report: args.report,
        quick: args.quick,
    };
    if args.progressive {
        let result = demo::progressive::run(&options).await?;
        std::fs::write(&options.report, demo::progressive::render(&result))
            .with_context(|| format!("cannot write the report {}", options.report.display()))?;
        println!("report     {}", options.report.display());
        anyhow::ensure!(result.passed(), "the demo's checks failed");
        return Ok(());
    }
    let result = demo::run(&options).await?;
    demo::timeline::print_summary(&result);
    std::fs::write(&options.report, demo::html::render(&result))
        .with_context(|| format!("cannot write the report {}", options.report.display()))?;
    println!("report     {}", options.report.display());
    anyhow::ensure!(result.passed(), "the demo's checks failed");
    Ok(())
}

async fn run_compare(args: CompareArgs) -> anyhow::Result<()> {
    let options = CompareOptions {
        proxy_bin: proxy::find_binary(args.proxy_bin)?,
        rounds: args.rounds.max(1),
        duration: args.duration,
        rate: args.rate,
        connections: args.connections,
        one_core_only: args.one_core_only,
        config_dir: args.config_dir,
        body_bytes: args.body_bytes,
        http2: args.http2,
        idle_connections: args.idle_connections,
    };
    let results = compare::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for result in &results {
            println!(
                "{}",
                compare::table::render(result, options.rate, options.connections)
            );
        }
    }
    Ok(())
}

async fn run_soak(args: SoakArgs) -> anyhow::Result<()> {
    let mut options = SoakOptions::new(proxy::find_binary(args.proxy_bin)?, args.quick);
    options.duration = args.duration.unwrap_or(options.duration);
    options.warmup = args.warmup.unwrap_or(options.warmup);
    options.reload_every = args.reload_every.unwrap_or(options.reload_every);
    options.rate = args.rate;
    options.live = !args.json;
    let result = soak::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        soak::report::print_summary(&result);
    }
    anyhow::ensure!(result.passed, "the soak's checks failed");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
