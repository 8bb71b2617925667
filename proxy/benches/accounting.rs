//! Response accounting from 1 and 2 threads at once: `Runtime::account` as the proxy calls it
//! at each response's end, with the request counted in flight at its endpoint from before it
//! (a color of one endpoint, and one of three, where the balancer's latency estimate is fed
//! too), beside the same writes made to one shared set of Prometheus handles (how the
//! per-response metrics were kept before they were sharded). With nothing shared, the cost per
//! call stays flat as threads are added; with shared counters, the threads fight over their
//! cache lines. Costs are each thread's own CPU time (its CPU-time clock), so that other
//! work on the machine does not count; they are only comparable when the machine has the
//! threads' cores to spare.
//!
//! Then the routing table's look-up as each request starts, three ways: a clone of the shared
//! `Arc` (a write to its reference count, which every worker writes), a connection's own
//! [`Runtime::route_cache`] (a pointer compared; the lean path), and a clone of the thread's
//! [`Runtime::current`] handle (a count only that thread writes; the hyper path).
//!
//! `cargo bench -p canary-proxy --bench accounting`

use std::hint::black_box;
use std::time::Duration;

use canary_proxy::accounting::Outcome;
use canary_proxy::config::Color;
use canary_proxy::metrics::Metrics;
use canary_proxy::rollback::tally::Evidence;
use canary_proxy::route::{Choice, RouteTable};
use canary_proxy::runtime::Runtime;
use prometheus::{Histogram, HistogramOpts, IntCounter};
use std::sync::Arc;

/// Calls per thread in one measurement.
const CALLS: u64 = 2_000_000;
/// Measurements per setting; the fastest is reported.
const ROUNDS: usize = 5;

fn main() {
    let one = Bench::new("127.0.0.1:1");
    let three = Bench::new("127.0.0.1:1,127.0.0.1:3,127.0.0.1:4");
    let requests = IntCounter::new("requests", "shared").expect("counter");
    let duration = Histogram::with_opts(HistogramOpts::new("duration", "shared")).expect("hist");
    let shared = |_: usize| {
        for i in 0..CALLS {
            let latency = Duration::from_micros(100 + i % 512);
            black_box(&requests).inc();
            duration.observe(latency.as_secs_f64());
        }
    };
    println!("threads  1 endpoint ns/call  3 endpoints ns/call  shared-handles ns/call");
    for threads in [1, 2] {
        let single = best(threads, &|_| one.run());
        let spread = best(threads, &|_| three.run());
        let theirs = best(threads, &shared);
        println!("{threads:>7}  {single:>18.1}  {spread:>19.1}  {theirs:>22.1}");
    }
    println!();
    println!(
        "threads  shared table clone ns/request  connection's cache ns/request  thread's handle ns/request"
    );
    for threads in [1, 2] {
        let cloned = best(threads, &|_| one.look_up_shared());
        let cached = best(threads, &|_| one.look_up_cached());
        let current = best(threads, &|_| one.look_up_current());
        println!("{threads:>7}  {cloned:>30.1}  {cached:>29.1}  {current:>26.1}");
    }
    for bench in [one, three] {
        bench.check();
    }
}

/// A runtime whose stable color has the endpoints `stable`.
struct Bench {
    runtime: Arc<Runtime>,
    table: Arc<RouteTable>,
}

impl Bench {
    fn new(stable: &str) -> Bench {
        let runtime = Runtime::new(Metrics::new().expect("metrics"), "bench".into());
        let data = [
            ("blue.upstream", stable),
            ("green.upstream", "127.0.0.1:2"),
            ("canary-weight", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        runtime.apply(&data, "bench", |_| None).expect("config");
        let table = runtime.routes().clone().expect("table");
        Bench { runtime, table }
    }

    /// [`CALLS`] responses of the stable color, each accounted at the end of its exchange.
    fn run(&self) {
        let stable = self.table.config.stable;
        let choice = Choice {
            color: stable,
            evidence: Evidence::Weighted,
        };
        for i in 0..CALLS {
            let latency = Duration::from_micros(100 + i % 512);
            let served = self.table.upstreams[stable.index()].serve_first();
            self.runtime.account(
                &self.table,
                black_box(choice),
                served.as_ref(),
                Outcome::Response(200),
                latency,
            );
        }
    }

    /// [`CALLS`] requests each taking their own reference to the shared table, as the hyper
    /// path did.
    fn look_up_shared(&self) {
        for _ in 0..CALLS {
            let table = (*self.runtime.routes()).clone();
            black_box(table.as_ref().map(|t| t.config.stable));
        }
    }

    /// [`CALLS`] requests of one connection each finding the table through its cache, as the
    /// lean path does.
    fn look_up_cached(&self) {
        let mut routes = self.runtime.route_cache();
        for _ in 0..CALLS {
            // Through `black_box`, or the compiler would look the table up once for the loop.
            let table = black_box(&mut routes).load();
            black_box(table.as_ref().map(|t| t.config.stable));
        }
    }

    /// [`CALLS`] requests each taking the thread's handle on the table, as the hyper path does.
    fn look_up_current(&self) {
        for _ in 0..CALLS {
            let current = black_box(&self.runtime).current();
            black_box(current.as_ref().map(|c| c.table.config.stable));
        }
    }

    fn check(&self) {
        let metrics = &self.runtime.metrics;
        let total = metrics.color(Color::Blue).requests_total()
            + metrics.color(Color::Green).requests_total();
        assert_eq!(total, CALLS * 3 * ROUNDS as u64, "every call was counted");
    }
}

/// The fastest of [`ROUNDS`] runs of `work` on `threads` threads at once, in nanoseconds of
/// CPU time per call, averaged over the threads.
fn best(threads: usize, work: &(impl Fn(usize) + Sync)) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let cpu: u64 = std::thread::scope(|s| {
                let running: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || {
                            let before = thread_cpu();
                            work(t);
                            thread_cpu() - before
                        })
                    })
                    .collect();
                running.into_iter().map(|t| t.join().expect("thread")).sum()
            });
            cpu as f64 / (CALLS * threads as u64) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The calling thread's CPU time so far, in nanoseconds, to the moment of the call (the
/// scheduler's statistics in `/proc` lag by up to a tick, as much as a short run takes).
fn thread_cpu() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(done, 0, "the thread's CPU clock");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
