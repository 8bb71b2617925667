//! The demo's printed output: a line per step as it happens, then the rollback, the latency
//! per step and the checks.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{DemoResult, Pacing, Step, StepKind};
use crate::proxy::ProxyProcess;

/// The opening lines: what runs where.
pub fn print_intro(
    pacing: &Pacing,
    proxy: &ProxyProcess,
    blue: SocketAddr,
    green: SocketAddr,
    bin: &Path,
) {
    println!("canary-bench demo: the canary story on loopback, under steady load");
    println!(
        "  upstreams  blue http://{blue}  green http://{green}  (in this process)\n  \
         proxy      {} pid {}  data http://{}  admin http://{}/\n  \
         load       {:.0} requests/s open loop over {} connections, rollback window {} s, min-requests 20\n",
        bin.display(),
        proxy.pid().map_or("?".to_string(), |pid| pid.to_string()),
        proxy.data,
        proxy.admin,
        pacing.rate,
        pacing.connections,
        pacing.window.as_secs()
    );
}

/// The timeline's column titles.
pub fn print_header() {
    println!(
        "{:>7}  {:<26} {:>7} {:>8} {:>8} {:>7}  note",
        "time", "step", "weight", "blue", "green", "errors"
    );
}

/// One timeline row.
pub fn print_step(step: &Step) {
    let c = &step.counts;
    let note = match step.kind {
        StepKind::Weight(_) => format!(
            "applied in {} ms, {} responses",
            step.applied_after.as_millis(),
            c.total()
        ),
        StepKind::Fault => format!(
            "rollback seen on /status after {} ms",
            step.applied_after.as_millis()
        ),
        StepKind::RolledBack => format!("{} responses, green gets none", c.total()),
    };
    println!(
        "{:>6.1}s  {:<26} {:>6.0}% {:>7.2}% {:>7.2}% {:>7}  {}",
        step.at.as_secs_f64(),
        step.label,
        step.weight,
        c.share(c.blue),
        c.share(c.green),
        c.client_errors(),
        note
    );
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("n/a".to_string(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

/// Everything after the timeline: the rollback, latency per step, the checks.
pub fn print_summary(result: &DemoResult) {
    let r = &result.rollback;
    println!();
    if r.happened {
        println!(
            "rollback   {} rolled back by the proxy: {}",
            r.color.as_deref().unwrap_or("?"),
            r.reason.as_deref().unwrap_or("no reason given")
        );
    } else {
        println!("rollback   none within {:?}", result.pacing.patience);
    }
    println!(
        "           client-visible failures during the fault: {} 5xx, {} without response",
        r.client_failures, r.client_errors
    );
    println!(
        "           first failing response -> last response from green (the swap, as clients saw it): {}",
        ms(r.swap_client)
    );
    if let (Some(at), Some(s)) = (&r.proxy_at, r.swap_proxy_s) {
        let note = if at.contains('.') {
            ""
        } else {
            " (rollback.at is truncated to the second)"
        };
        println!("           first failing response -> proxy's rollback.at {at}: {s:+.3} s{note}");
    }
    println!(
        "           fault injected -> rollback visible on /status: {}",
        ms(r.detected_after)
    );
    println!();
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
    );
    for step in &result.steps {
        let l = &step.latency;
        println!(
            "{:<28} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            step.label, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    println!();
    for check in &result.checks {
        println!(
            "{} {}: {}",
            if check.passed { "PASS" } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    let failed = result.checks.iter().filter(|c| !c.passed).count();
    println!(
        "\nchecks: {} of {} held (demo took {:.1} s)",
        result.checks.len() - failed,
        result.checks.len(),
        result.elapsed.as_secs_f64()
    );
}
