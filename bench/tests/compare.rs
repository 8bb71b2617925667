//! `compare` runs end to end on a tiny budget: direct and canary-proxy are always measured;
//! NGINX and HAProxy are measured when installed and skipped with a clear line otherwise.

mod common;

use common::run;

#[test]
fn compare_smoke_run() {
    let output = run(&[
        "compare",
        "--rounds",
        "1",
        "--duration",
        "300ms",
        "--rate",
        "500",
        "--connections",
        "4",
        "--one-core-only",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let row = |name: &str| stdout.lines().any(|line| line.starts_with(name));
    assert!(row("direct"), "no direct row");
    assert!(row("canary-proxy"), "no canary-proxy row");
    for reference in ["nginx", "haproxy"] {
        assert!(
            row(reference) || stdout.contains(&format!("{reference} is not installed")),
            "{reference} neither measured nor reported as skipped"
        );
    }
    assert!(stdout.contains("target idle RSS < 20 MiB"), "no verdicts");
}
