//! The soak's pass/fail rules, as pure functions of what it measured, and its printed output:
//! a row per sample as it is taken, then the summary and the checks.

use std::net::SocketAddr;

use super::hostile::HostileCounts;
use super::process::Descriptors;
use super::reload::Reloads;
use super::{GoodCounts, ProxyEnd, Sample, SoakOptions, SoakResult};
use crate::demo::checks::Check;

/// The most the proxy's resident memory may grow from the end of the warm-up to the end of
/// the load (RELIABILITY.md LIFE-SOAK).
pub const RSS_GROWTH_LIMIT_MIB: f64 = 10.0;
/// Descriptors above the start value still accepted after the load: sockets of the load's
/// last connections that the kernel and the proxy are still closing.
pub const FD_SLACK: usize = 3;

/// Every good request got a 2xx answer.
pub fn good_requests(good: &GoodCounts) -> Check {
    Check {
        name: "no good request failed".to_string(),
        passed: good.sent > 0 && good.failed == 0,
        detail: format!("{} failed of {} sent", good.failed, good.sent),
    }
}

/// Resident memory grew less than [`RSS_GROWTH_LIMIT_MIB`] after the warm-up.
pub fn rss_growth(warm_mib: Option<f64>, end_mib: Option<f64>) -> Check {
    let name = format!("RSS grows < {RSS_GROWTH_LIMIT_MIB} MiB after the warm-up");
    match (warm_mib, end_mib) {
        (Some(warm), Some(end)) => Check {
            name,
            passed: end - warm < RSS_GROWTH_LIMIT_MIB,
            detail: format!(
                "{warm:.1} MiB at warm-up end, {end:.1} MiB at end of load: {:+.1} MiB",
                end - warm
            ),
        },
        _ => Check {
            name,
            passed: false,
            detail: "the proxy's memory could not be read".to_string(),
        },
    }
}

/// Whether the descriptors besides upstream connections are back at the start value, give or
/// take [`FD_SLACK`].
pub fn fds_are_back(start: &Descriptors, now: &Descriptors) -> bool {
    now.besides_upstream() <= start.besides_upstream() + FD_SLACK
}

/// Whether the upstream connections (the proxy's pool) are back at the start value.
pub fn pool_is_back(start: &Descriptors, now: &Descriptors) -> bool {
    now.upstream <= start.upstream
}

/// The descriptors besides upstream connections came back to the start value after the load.
pub fn fds_back(
    start: Option<Descriptors>,
    after: Option<Descriptors>,
    after_s: f64,
    patience_s: f64,
) -> Check {
    let name = format!("fds back at the start value within {patience_s:.0} s of the load");
    let (Some(start), Some(after)) = (start, after) else {
        return unreadable(name);
    };
    Check {
        name,
        passed: fds_are_back(&start, &after),
        detail: format!(
            "besides upstream connections: {} at start, {} after {after_s:.1} s ({} client)",
            start.besides_upstream(),
            after.besides_upstream(),
            after.client
        ),
    }
}

/// The proxy's upstream connections (its pool) came back to the start value after the load.
pub fn pool_back(
    start: Option<Descriptors>,
    after: Option<Descriptors>,
    after_s: f64,
    patience_s: f64,
) -> Check {
    let name = format!("upstream pool back at the start value within {patience_s:.0} s");
    let (Some(start), Some(after)) = (start, after) else {
        return unreadable(name);
    };
    Check {
        name,
        passed: pool_is_back(&start, &after),
        detail: format!(
            "upstream connections: {} at start, {} after {after_s:.1} s",
            start.upstream, after.upstream
        ),
    }
}

fn unreadable(name: String) -> Check {
    Check {
        name,
        passed: false,
        detail: "the proxy's descriptors could not be read".to_string(),
    }
}

/// Every hostile kind was sent, and every hostile connection was accepted.
pub fn hostile_sent(hostile: &HostileCounts) -> Check {
    let sent = [
        hostile.malformed_sent(),
        hostile.aborted_bodies,
        hostile.h2_resets,
    ];
    Check {
        name: "hostile clients ran".to_string(),
        passed: sent.iter().all(|n| *n > 0) && hostile.connect_errors == 0,
        detail: format!(
            "{} malformed, {} aborted bodies, {} h2 resets; {} connections refused",
            sent[0], sent[1], sent[2], hostile.connect_errors
        ),
    }
}

/// Every malformed request got a 4xx or a closed connection.
pub fn malformed_refused(hostile: &HostileCounts) -> Check {
    let accepted: Vec<String> = hostile
        .malformed
        .iter()
        .filter(|case| case.accepted > 0)
        .map(|case| format!("{} {}", case.case, case.accepted))
        .collect();
    Check {
        name: "malformed requests get a 4xx or a close".to_string(),
        passed: accepted.is_empty(),
        detail: if accepted.is_empty() {
            format!(
                "{} answered 4xx, {} closed",
                hostile.malformed_refused(),
                hostile.malformed_closed()
            )
        } else {
            format!("neither: {}", accepted.join(", "))
        },
    }
}

/// Every configuration rewrite was applied.
pub fn reloads_applied(reloads: &Reloads) -> Check {
    Check {
        name: "every reload applied".to_string(),
        passed: reloads.written > 0 && reloads.applied == reloads.written,
        detail: format!(
            "{} of {} (slowest {:.2} s)",
            reloads.applied, reloads.written, reloads.slowest_apply_s
        ),
    }
}

/// The proxy still runs and is ready.
pub fn proxy_alive(proxy: &ProxyEnd) -> Check {
    Check {
        name: "proxy alive and ready".to_string(),
        passed: proxy.alive && proxy.ready,
        detail: format!(
            "{}, {}",
            if proxy.alive { "running" } else { "exited" },
            if proxy.ready {
                "/readyz 200"
            } else {
                "/readyz not 200"
            }
        ),
    }
}

/// The opening lines: what runs where, at what rates.
pub fn print_intro(options: &SoakOptions, pid: u32, data: SocketAddr, admin: SocketAddr) {
    let rates = options.rates();
    println!("canary-bench soak: the real proxy under steady load, hostile clients and reloads");
    println!(
        "  proxy      {} pid {pid}  data http://{data}  admin http://{admin}/\n  \
         load       {:.0} good requests/s open loop: {:.0} HTTP/1.1 + {:.0} h2c\n  \
         hostile    {:.1}/s each: malformed requests, aborted bodies, h2 streams reset\n  \
         reloads    every {:.0} s, canary weight 10 <-> 20\n  \
         length     {:.0} s, RSS growth measured after a {:.0} s warm-up\n",
        options.proxy_bin.display(),
        options.rate,
        rates.http1,
        rates.http2,
        rates.hostile,
        options.reload_every.as_secs_f64(),
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64()
    );
}

/// The table's column titles.
pub fn print_header() {
    println!(
        "{:>7}  {:<12} {:>8}  {:>5} {:>6} {:>8}  {:>9} {:>6}  {:>9} {:>7} {:>9} {:>7}",
        "time s",
        "phase",
        "RSS MiB",
        "fds",
        "client",
        "upstream",
        "good ok",
        "failed",
        "malformed",
        "aborted",
        "h2 resets",
        "reloads"
    );
}

/// One row of the table.
pub fn print_sample(sample: &Sample) {
    let rss = sample
        .rss_mib
        .map_or("gone".to_string(), |mib| format!("{mib:.1}"));
    let fds = sample.fds.unwrap_or_default();
    println!(
        "{:>7.1}  {:<12} {:>8}  {:>5} {:>6} {:>8}  {:>9} {:>6}  {:>9} {:>7} {:>9} {:>7}",
        sample.at_s,
        sample.phase.label(),
        rss,
        fds.total,
        fds.client,
        fds.upstream,
        sample.good.ok,
        sample.good.failed,
        sample.malformed,
        sample.aborted,
        sample.h2_resets,
        sample.reloads
    );
}

/// The summary and the checks.
pub fn print_summary(result: &SoakResult) {
    let mib = |value: Option<f64>| value.map_or("?".to_string(), |v| format!("{v:.1} MiB"));
    let growth = match (result.rss_warm_mib, result.rss_end_mib) {
        (Some(warm), Some(end)) => format!("{:+.1} MiB", end - warm),
        _ => "?".to_string(),
    };
    let fds = |value: Option<Descriptors>| {
        value.map_or("?".to_string(), |d| {
            format!("{} ({} client, {} upstream)", d.total, d.client, d.upstream)
        })
    };
    let g = &result.good;
    let h = &result.hostile;
    let r = &result.reloads;
    let metric = |value: Option<f64>| value.map_or("?".to_string(), |v| format!("+{v:.0}"));
    println!("\nsummary");
    println!(
        "  RSS        {} at warm-up end -> {} at end of load: {growth} (peak {})",
        mib(result.rss_warm_mib),
        mib(result.rss_end_mib),
        mib(result.rss_peak_mib)
    );
    println!(
        "  fds        {} at start, {} at end of load, {} {:.1} s after the load stopped",
        fds(result.fds_start),
        fds(result.fds_end),
        fds(result.fds_after),
        result.fds_after_s
    );
    println!(
        "  good       {} sent, {} ok, {} failed (HTTP/1.1 {}/{}, h2c {}/{}, h2 after a reset {}/{} ok/sent)",
        g.total.sent,
        g.total.ok,
        g.total.failed,
        g.http1.ok,
        g.http1.sent,
        g.http2.ok,
        g.http2.sent,
        g.h2_follow_ups.ok,
        g.h2_follow_ups.sent
    );
    for (label, latency) in [
        ("HTTP/1.1", &g.http1_latency_ms),
        ("h2c", &g.http2_latency_ms),
    ] {
        println!(
            "  latency    {label:<8} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            latency.p50, latency.p99, latency.p999, latency.max
        );
    }
    let cases: Vec<String> = h
        .malformed
        .iter()
        .map(|c| {
            format!(
                "{}: {} 4xx, {} closed, {} neither",
                c.case, c.refused, c.closed, c.accepted
            )
        })
        .collect();
    println!(
        "  malformed  {} sent, {} refused ({} answered 4xx, {} closed), {} neither\n             {}",
        h.malformed_sent(),
        h.malformed_refused() + h.malformed_closed(),
        h.malformed_refused(),
        h.malformed_closed(),
        h.malformed_accepted(),
        cases.join("; ")
    );
    println!(
        "  aborted    {} request bodies cut off after 16 KiB of 1 MiB (FIN and RST alternately)",
        h.aborted_bodies
    );
    println!(
        "  h2 resets  {} streams reset by the client: {} before the answer, {} after its head \
         (request body still open)",
        h.h2_resets,
        h.h2_resets - h.h2_resets_after_answer,
        h.h2_resets_after_answer
    );
    println!(
        "  reloads    {} written, {} applied (slowest {:.2} s); \
         canary_proxy_config_reloads_total ok {}, error {}",
        r.written,
        r.applied,
        r.slowest_apply_s,
        metric(r.metric_ok),
        metric(r.metric_error)
    );
    println!(
        "  proxy      {}, {}, rollback verdict {}",
        if result.proxy.alive {
            "running"
        } else {
            "exited"
        },
        if result.proxy.ready {
            "ready"
        } else {
            "not ready"
        },
        result.proxy.verdict.as_deref().unwrap_or("?")
    );
    println!("\nchecks");
    for check in &result.checks {
        let verdict = if check.passed { "PASS" } else { "FAIL" };
        println!("  {verdict}  {:<62} {}", check.name, check.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(total: usize, upstream: usize) -> Option<Descriptors> {
        Some(Descriptors {
            total,
            client: 0,
            upstream,
        })
    }

    #[test]
    fn good_requests_fail_on_one_failure_or_none_sent() {
        let counts = |sent, failed| GoodCounts {
            sent,
            ok: sent - failed,
            failed,
        };
        assert!(good_requests(&counts(1000, 0)).passed);
        assert!(!good_requests(&counts(1000, 1)).passed);
        assert!(!good_requests(&counts(0, 0)).passed);
    }

    #[test]
    fn rss_growth_is_bounded_from_the_warm_up() {
        assert!(rss_growth(Some(20.0), Some(29.9)).passed);
        assert!(!rss_growth(Some(20.0), Some(30.0)).passed);
        assert!(rss_growth(Some(20.0), Some(12.0)).passed);
        assert!(!rss_growth(None, Some(12.0)).passed);
    }

    #[test]
    fn fds_must_come_back_within_the_slack() {
        assert!(fds_back(fds(13, 0), fds(13, 0), 0.5, 30.0).passed);
        assert!(fds_back(fds(13, 0), fds(13 + FD_SLACK, 0), 30.0, 30.0).passed);
        assert!(!fds_back(fds(13, 0), fds(14 + FD_SLACK, 0), 30.0, 30.0).passed);
        assert!(!fds_back(None, fds(13, 0), 0.0, 30.0).passed);
    }

    #[test]
    fn the_pool_is_judged_apart_and_exactly() {
        // 20 idle upstream connections left: the other descriptors are back, the pool is not.
        assert!(fds_back(fds(13, 0), fds(33, 20), 30.0, 30.0).passed);
        let pool = pool_back(fds(13, 0), fds(33, 20), 30.0, 30.0);
        assert!(!pool.passed);
        assert!(
            pool.detail.contains("0 at start, 20 after"),
            "{}",
            pool.detail
        );
        assert!(pool_back(fds(13, 0), fds(13, 0), 1.0, 30.0).passed);
    }

    #[test]
    fn reloads_must_all_apply() {
        let reloads = |written, applied| Reloads {
            written,
            applied,
            ..Reloads::default()
        };
        assert!(reloads_applied(&reloads(20, 20)).passed);
        assert!(!reloads_applied(&reloads(20, 19)).passed);
        assert!(!reloads_applied(&reloads(0, 0)).passed);
    }
}
