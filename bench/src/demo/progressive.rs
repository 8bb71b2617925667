//! `canary-bench demo --progressive`: three releases through `progressive.steps` 5,25,50,100
//! under steady load, each decided by the proxy alone:
//!
//! 1. a healthy green climbs every step and is promoted;
//! 2. a green that turns 30 % slower at the 25 % step is rolled back by the latency trigger;
//! 3. a green failing 3 % of requests while stable fails none, under a 5 % threshold, is
//!    promoted: the threshold is the contract (the rule is in the proxy's `progressive::plan`).
//!
//! The proxy runs with a file; each release is a new content of it (a rollback is latched until
//! the content changes). The timeline and the HTML report show each step with its evidence.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use serde::Serialize;
use serde_json::Value;

use super::DemoOptions;
use super::checks::Check;
use super::story::{DemoError, start_upstream};
use crate::admin;
use crate::load::{self, LoadConfig, Stop, Target};
use crate::proxy::{self, ProxyProcess};
use crate::upstream::Color;

/// Requests a second of the load.
const RATE: f64 = 1000.0;
/// Every upstream's own latency, so that 30 % slower is a real difference.
const BASE_LATENCY_MS: f64 = 10.0;
/// The longest a release may take.
const PATIENCE: Duration = Duration::from_secs(120);

/// One step a release left, as `/status` reported it.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    /// The step's weight.
    pub weight: u64,
    /// Where to: the next step, or `promoted`.
    pub to: String,
    /// Seconds at the step.
    pub seconds: f64,
    /// The canary's requests and failures at it.
    pub canary: (u64, u64),
    /// Stable's.
    pub stable: (u64, u64),
}

/// One release and how it ended.
#[derive(Clone, Debug, Serialize)]
pub struct Release {
    /// What it is.
    pub name: &'static str,
    /// The steps it left.
    pub steps: Vec<StepRow>,
    /// `promoted` or `rolled back`.
    pub outcome: String,
    /// The proxy's sentence: the promotion or the rollback's reason.
    pub decision: String,
    /// The step it was at when decided.
    pub at_step: Option<u64>,
    /// Seconds from the release to the decision.
    pub seconds: f64,
}

/// The three releases and the checks.
#[derive(Clone, Debug, Serialize)]
pub struct ProgressiveResult {
    /// The releases, in order.
    pub releases: Vec<Release>,
    /// Every check and its verdict.
    pub checks: Vec<Check>,
}

impl ProgressiveResult {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

fn config(blue: SocketAddr, green: SocketAddr, release: u32) -> Vec<(&'static str, String)> {
    vec![
        ("blue.upstream", blue.to_string()),
        ("green.upstream", green.to_string()),
        ("stable", "blue".into()),
        ("canary-weight", "5".into()),
        ("rollback.max-error-rate", "5".into()),
        // The upstreams' timers add up to a millisecond: a 10 % margin keeps 30 % slower clear
        // of it.
        ("rollback.max-latency-increase", "10%".into()),
        // Stable's tail is known after 100 requests at the 0.9 quantile.
        ("rollback.latency-quantile", "0.9".into()),
        ("progressive.steps", "5,25,50,100".into()),
        ("progressive.step-min-duration", "3s".into()),
        ("progressive.step-min-requests", "100".into()),
        // Each release is a new content of the file.
        ("response-color-header", format!("x-release-{release}")),
    ]
}

async fn fault(addr: SocketAddr, body: String) -> Result<(), DemoError> {
    admin::call(addr, Method::POST, "/fault", &body).await?;
    Ok(())
}

/// Plays the three releases.
pub async fn run(options: &DemoOptions) -> Result<ProgressiveResult, DemoError> {
    let blue = start_upstream(Color::Blue).await?;
    let green = start_upstream(Color::Green).await?;
    let base = format!(r#"{{"latency_ms":{BASE_LATENCY_MS},"error_rate":0.0}}"#);
    fault(blue.addr, base.clone()).await?;
    fault(green.addr, base.clone()).await?;
    let dir = tempfile::tempdir().map_err(|source| DemoError::Io {
        what: "cannot make a temporary directory",
        source,
    })?;
    let path = dir.path().join("canary.yaml");
    proxy::write_config(&path, &config(blue.addr, green.addr, 1))?;
    let proxy = ProxyProcess::start(&options.proxy_bin, &path, &[], &[]).await?;
    let load = load::start(LoadConfig {
        target: Target::from_addr(proxy.data),
        connections: 32,
        stop: Stop::Manual,
        rate: Some(RATE),
        http2: false,
        timeout: Duration::from_secs(5),
    })?;
    println!("canary-bench demo --progressive: steps 5,25,50,100 at {RATE} requests/s");
    let mut releases = Vec::new();
    for (i, name) in [
        "1: healthy green",
        "2: green 30 % slower from the 25 % step",
        "3: green failing 3 %, stable 0 %, threshold 5 %",
    ]
    .into_iter()
    .enumerate()
    {
        let began = Instant::now();
        if i > 0 {
            fault(green.addr, base.clone()).await?;
            if i == 2 {
                fault(green.addr, r#"{"error_rate":0.03}"#.into()).await?;
            }
            proxy::write_config(&path, &config(blue.addr, green.addr, i as u32 + 1))?;
            // The new content applied: blue stable again, at the first step.
            wait(&proxy, |s| {
                s["stable"] == "blue" && s["progressive"]["current_step"] == 5
            })
            .await?;
        }
        let mut slowed = false;
        let end = loop {
            let s = status(&proxy).await?;
            if i == 1 && !slowed && s["progressive"]["current_step"] == 25 {
                let slower = BASE_LATENCY_MS * 1.3;
                fault(green.addr, format!(r#"{{"latency_ms":{slower}}}"#)).await?;
                slowed = true;
            }
            let state = s["progressive"]["state"].as_str().unwrap_or("");
            if state == "promoted" || s["rollback"]["rolled_back"] == true {
                break s;
            }
            if began.elapsed() > PATIENCE {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let release = release(name, &end, began.elapsed());
        print_release(&release);
        releases.push(release);
    }
    load.stop();
    let _ = load.finish().await;
    let _ = proxy.terminate(Duration::from_secs(10)).await;
    let checks = checks(&releases);
    for c in &checks {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    Ok(ProgressiveResult { releases, checks })
}

async fn status(proxy: &ProxyProcess) -> Result<Value, DemoError> {
    let body = admin::get(proxy.admin, "/status").await?;
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn wait(proxy: &ProxyProcess, done: impl Fn(&Value) -> bool) -> Result<(), DemoError> {
    let since = Instant::now();
    while !done(&status(proxy).await?) && since.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn release(name: &'static str, s: &Value, took: Duration) -> Release {
    let counts = |v: &Value| {
        (
            v["requests"].as_u64().unwrap_or(0),
            v["failures"].as_u64().unwrap_or(0),
        )
    };
    let steps = s["progressive"]["steps_done"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| StepRow {
            weight: d["weight"].as_u64().unwrap_or(0),
            to: d["to"].as_str().unwrap_or("").to_owned(),
            seconds: d["seconds"].as_f64().unwrap_or(0.0),
            canary: counts(&d["canary"]),
            stable: counts(&d["stable"]),
        })
        .collect();
    let rolled = s["rollback"]["rolled_back"] == true;
    Release {
        name,
        steps,
        outcome: if rolled {
            "rolled back".into()
        } else if s["progressive"]["state"] == "promoted" {
            "promoted".into()
        } else {
            "undecided".into()
        },
        decision: if rolled {
            s["rollback"]["reason"].as_str().unwrap_or("").to_owned()
        } else {
            s["progressive"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        },
        at_step: s["progressive"]["current_step"].as_u64(),
        seconds: took.as_secs_f64(),
    }
}

fn print_release(r: &Release) {
    println!("\nrelease {}", r.name);
    for s in &r.steps {
        println!(
            "  step {:>3} -> {:<8} after {:>5.1} s: canary {} requests, {} failed; stable {}, {} failed",
            s.weight, s.to, s.seconds, s.canary.0, s.canary.1, s.stable.0, s.stable.1
        );
    }
    let at = r
        .at_step
        .map(|w| format!(" at step {w}"))
        .unwrap_or_default();
    println!(
        "  {}{at} after {:.1} s: {}",
        r.outcome, r.seconds, r.decision
    );
}

/// The demo's verdicts on the three releases.
pub fn checks(releases: &[Release]) -> Vec<Check> {
    let path = |r: &Release| {
        r.steps
            .iter()
            .map(|s| s.to.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let check = |name: &str, passed: bool, detail: String| Check {
        name: name.into(),
        passed,
        detail,
    };
    let get = |i: usize| releases.get(i);
    vec![
        check(
            "release 1 is promoted through every step",
            get(0).is_some_and(|r| r.outcome == "promoted" && path(r) == "25,50,100,promoted"),
            get(0).map_or_else(String::new, |r| format!("{}: {}", r.outcome, path(r))),
        ),
        check(
            "release 2 is rolled back by the latency trigger at the 25 % step",
            get(1).is_some_and(|r| {
                r.outcome == "rolled back"
                    && r.decision.starts_with("canary slower than stable")
                    && r.at_step == Some(25)
            }),
            get(1).map_or_else(String::new, |r| r.decision.clone()),
        ),
        check(
            "release 3 (3 % failing, under the 5 % threshold) is promoted",
            get(2).is_some_and(|r| r.outcome == "promoted"),
            get(2).map_or_else(String::new, |r| format!("{}: {}", r.outcome, path(r))),
        ),
    ]
}

/// The releases as a self-contained HTML page.
pub fn render(result: &ProgressiveResult) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>canary-proxy: progressive delivery</title>\
         <style>body{font:14px system-ui;margin:2em}td,th{padding:2px 10px;text-align:left}\
         .pass{color:#080}.fail{color:#b00}</style><h1>Progressive delivery: three releases</h1>\
         <p>Steps 5, 25, 50, 100; at least 3 s and 100 canary requests each; 5 % threshold; \
         latency trigger 10 % at p90; 1,000 requests/s.</p>",
    );
    for r in &result.releases {
        let _ = write!(
            html,
            "<h2>Release {}</h2><table><tr><th>step</th><th>to</th><th>seconds</th>\
             <th>canary requests</th><th>canary failures</th><th>stable requests</th>\
             <th>stable failures</th></tr>",
            escape(r.name)
        );
        for s in &r.steps {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                s.weight, s.to, s.seconds, s.canary.0, s.canary.1, s.stable.0, s.stable.1
            );
        }
        let at = r
            .at_step
            .map(|w| format!(" at step {w}"))
            .unwrap_or_default();
        let _ = write!(
            html,
            "</table><p><b>{}</b>{at} after {:.1} s: {}</p>",
            r.outcome,
            r.seconds,
            escape(&r.decision)
        );
    }
    html.push_str("<h2>Checks</h2><ul>");
    for c in &result.checks {
        let class = if c.passed { "pass" } else { "fail" };
        let _ = write!(
            html,
            "<li class={class}>{} {}: {}</li>",
            if c.passed { "PASS" } else { "FAIL" },
            escape(&c.name),
            escape(&c.detail)
        );
    }
    html.push_str("</ul>");
    html
}
