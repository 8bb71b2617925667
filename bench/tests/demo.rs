//! The demo's quick mode runs the whole story against the real canary-proxy and its checks hold.
//!
//! The proxy binary is found next to canary-bench in the target directory; building the
//! workspace's tests builds it (`cargo build -p canary-proxy` otherwise).

mod common;

use std::time::Duration;

use common::run_with_proxy;

/// The quick demo takes about 15 s; this bounds a stuck run.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn quick_demo_passes_its_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.html");
    let (status, stdout) = run_with_proxy(
        &[
            "demo".as_ref(),
            "--quick".as_ref(),
            "--report".as_ref(),
            report.as_os_str(),
        ],
        DEMO_DEADLINE,
    );
    println!("{stdout}");
    assert!(status.success(), "the demo failed ({status}):\n{stdout}");

    for row in [
        "canary 5 %",
        "canary 50 %",
        "canary 100 %",
        "back to 5 %",
        "green fails",
        "rolled back",
    ] {
        assert!(stdout.contains(row), "no {row:?} row in the timeline");
    }
    assert!(
        stdout.contains("rolled back by the proxy"),
        "no rollback line"
    );
    assert!(!stdout.contains("FAIL "), "a check failed");

    let html = std::fs::read_to_string(&report).expect("the report was written");
    assert!(html.starts_with("<!doctype html>"));
    assert!(
        html.contains("<svg") && html.contains("<polyline"),
        "no chart in the report"
    );
    for external in ["<script src", "<link", "<img", "url("] {
        assert!(
            !html.contains(external),
            "the report loads an external asset: {external}"
        );
    }
}
