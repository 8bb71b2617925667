//! The quick soak runs the real canary-proxy under load, hostile clients and reloads for about
//! 20 s, and every one of its checks holds: no good request failed, memory did not grow after
//! the warm-up, the descriptors and the upstream pool came back after the load, and the proxy
//! is still ready.
//!
//! The proxy binary is found next to canary-bench in the target directory; building the
//! workspace's tests builds it (`cargo build -p canary-proxy` otherwise).

mod common;

use std::time::Duration;

use common::run_with_proxy;

/// The quick soak takes about 20 s plus up to 30 s for the descriptors; this bounds a stuck
/// run.
const SOAK_DEADLINE: Duration = Duration::from_secs(240);

#[test]
fn quick_soak_passes_its_checks() {
    let (status, stdout) = run_with_proxy(
        &["soak".as_ref(), "--quick".as_ref(), "--json".as_ref()],
        SOAK_DEADLINE,
    );
    let result: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("the soak printed no JSON ({err}, {status}):\n{stdout}"));

    let checks = result["checks"].as_array().expect("checks");
    for check in checks {
        println!(
            "{} {}: {}",
            if check["passed"] == true {
                "PASS"
            } else {
                "FAIL"
            },
            check["name"],
            check["detail"]
        );
    }
    for check in checks {
        assert_eq!(
            check["passed"], true,
            "{}: {}",
            check["name"], check["detail"]
        );
    }
    assert_eq!(checks.len(), 8, "every check was judged");
    assert_eq!(result["passed"], true);
    assert!(status.success(), "the soak exited with {status}");

    let phases: Vec<&str> = result["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter_map(|sample| sample["phase"].as_str())
        .collect();
    for phase in ["start", "warm_up_end", "end_of_load", "after_stop"] {
        assert!(phases.contains(&phase), "no {phase} sample in {phases:?}");
    }
    let good = &result["good"]["total"];
    assert!(good["sent"].as_u64().expect("good sent") > 1000, "{good}");
    assert_eq!(good["failed"], 0, "{good}");
    assert!(result["rss_warm_mib"].as_f64().is_some());
    assert!(result["fds_after"]["total"].as_u64().is_some());
}
