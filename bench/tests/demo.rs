//! The demo's quick mode runs the whole story against the real canary-proxy and its checks hold.
//!
//! The proxy binary is found next to canary-bench in the target directory; building the
//! workspace's tests builds it (`cargo build -p canary-proxy` otherwise).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, ChildGuard};

/// The quick demo takes about 15 s; this bounds a stuck run.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn quick_demo_passes_its_checks() {
    let proxy = std::path::Path::new(BIN).with_file_name("canary-proxy");
    assert!(
        proxy.is_file(),
        "{} is missing: build it with `cargo build -p canary-proxy` before this test",
        proxy.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.html");
    let stdout_path = dir.path().join("stdout.txt");
    let child = Command::new(BIN)
        .args(["demo", "--quick", "--report"])
        .arg(&report)
        .env_remove("CANARY_BENCH_PROXY_BIN")
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the demo");
    let mut child = ChildGuard(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for the demo") {
            break status;
        }
        assert!(
            started.elapsed() < DEMO_DEADLINE,
            "the quick demo ran over {DEMO_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("demo output");
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
