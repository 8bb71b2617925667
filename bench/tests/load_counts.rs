//! The load generator's counts equal what the test upstream says it served.

mod common;

use common::{http, run, served, spawn_upstream};
use serde_json::Value;

/// Runs `canary-bench load --json` against `url` with `extra` flags and returns its report.
fn load(url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["load", "--target", url, "--json"];
    args.extend_from_slice(extra);
    let output = run(&args);
    serde_json::from_slice(&output.stdout).expect("load --json prints JSON")
}

/// Checks one run: every response is counted once by both sides, and nothing failed.
fn assert_counts_match(report: &Value, served_delta: u64, expected: Option<u64>) {
    let responses = report["responses"].as_u64().expect("responses");
    let errors = &report["errors"];
    for kind in ["connect", "timeout", "io"] {
        assert_eq!(errors[kind], 0, "{kind} errors in {report:#}");
    }
    assert_eq!(
        responses, served_delta,
        "client and upstream disagree: {report:#}"
    );
    assert_eq!(
        report["colors"]["blue"].as_u64(),
        Some(responses),
        "{report:#}"
    );
    if let Some(expected) = expected {
        assert_eq!(responses, expected, "{report:#}");
    }
}

#[test]
fn counts_match_the_upstream_in_every_mode() {
    let (_upstream, addr) = spawn_upstream("blue");
    let url = format!("http://{addr}/");
    let cases: [(&str, &[&str], Option<u64>); 4] = [
        (
            "closed loop, --requests",
            &["-c", "8", "-n", "3000"],
            Some(3000),
        ),
        ("closed loop, --duration", &["-c", "8", "-d", "1s"], None),
        (
            "open loop",
            &["-c", "8", "-n", "1500", "--rate", "3000"],
            Some(1500),
        ),
        (
            "h2c, closed loop",
            &["-c", "4", "-n", "2000", "--http2"],
            Some(2000),
        ),
    ];
    for (name, flags, expected) in cases {
        let (before, _) = served(addr);
        let report = load(&url, flags);
        let (after, _) = served(addr);
        eprintln!("{name}: {} responses", report["responses"]);
        assert_counts_match(&report, after - before, expected);
    }
}

#[test]
fn open_loop_with_h2c_counts_match() {
    let (_upstream, addr) = spawn_upstream("green");
    let url = format!("http://{addr}/");
    let report = load(
        &url,
        &["-c", "4", "-n", "1000", "--rate", "2000", "--http2"],
    );
    let (served, _) = served(addr);
    assert_eq!(report["responses"].as_u64(), Some(1000), "{report:#}");
    assert_eq!(served, 1000);
    assert_eq!(report["colors"]["green"].as_u64(), Some(1000), "{report:#}");
    assert_eq!(report["mode"], "open");
    assert_eq!(report["protocol"], "h2c");
}

#[test]
fn injected_errors_are_counted_alike_by_both_sides() {
    let (_upstream, addr) = spawn_upstream("blue");
    let (status, body) = http(addr, "POST", "/fault", r#"{"error_rate":0.25}"#);
    assert_eq!(status, 200, "{body}");
    let report = load(&format!("http://{addr}/"), &["-c", "4", "-n", "2000"]);
    let (served, errors) = served(addr);
    assert_eq!(served, 2000);
    assert_eq!(report["status"]["500"].as_u64(), Some(errors), "{report:#}");
    assert_eq!(
        report["status"]["200"].as_u64(),
        Some(2000 - errors),
        "{report:#}"
    );
    // 500 of 2000 expected; 8 sigma of a binomial is about 155.
    assert!(
        (345..=655).contains(&errors),
        "{errors} errors at a 25 % rate"
    );

    let (status, body) = http(addr, "POST", "/fault", r#"{"bogus":1}"#);
    assert_eq!(status, 400, "{body}");
}

/// A server that answers three requests per connection, the third with `Connection: close`,
/// then closes, as NGINX does after `keepalive_requests`.
fn closing_server() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(100).flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                for answer in 1..=3 {
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    let close = if answer == 3 {
                        "Connection: close\r\n"
                    } else {
                        ""
                    };
                    let body = r#"{"color":"blue"}"#;
                    let _ = write!(
                        writer,
                        "HTTP/1.1 200 OK\r\nx-color: blue\r\n{close}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_closing_connections_costs_no_errors() {
    let addr = closing_server();
    let report = load(&format!("http://{addr}/"), &["-c", "2", "-n", "30"]);
    assert_eq!(report["responses"].as_u64(), Some(30), "{report:#}");
    assert_eq!(report["errors"]["io"], 0, "{report:#}");
}
