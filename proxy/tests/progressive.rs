//! End-to-end: the step plan with `--config FILE` (steps move in memory and show on
//! `/status`), and the latency trigger, on the real binary.

use std::path::Path;
use std::time::Duration;

use canary_testkit::load::Load;
use canary_testkit::proxy::ProxyProcess;
use canary_testkit::upstream::TestUpstream;
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// A blue and a green test upstream, and the config keys that name them.
async fn colors() -> (TestUpstream, TestUpstream, [(&'static str, String); 2]) {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let keys = [
        ("blue.upstream", blue.authority()),
        ("green.upstream", green.authority()),
    ];
    (blue, green, keys)
}

/// The upstream keys followed by `extra`.
fn config<'a>(
    upstreams: &'a [(&'static str, String); 2],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    upstreams
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect()
}

fn plan_state(status: &Value) -> &str {
    status["progressive"]["state"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_healthy_canary_climbs_every_step_and_is_promoted_by_itself() {
    let (_blue, _green, upstreams) = colors().await;
    // A 20 % threshold makes each step's gate pass after 39 canary successes.
    let proxy = ProxyProcess::start(
        bin(),
        &config(
            &upstreams,
            &[
                ("canary-weight", "10"),
                ("rollback.max-error-rate", "20"),
                ("progressive.steps", "10,50,100"),
                ("progressive.step-min-duration", "300ms"),
                ("progressive.step-min-requests", "20"),
            ],
        ),
    )
    .await
    .unwrap();
    let status = proxy.status().await;
    assert_eq!(plan_state(&status), "stepping", "{status:#}");
    assert_eq!(
        status["progressive"]["steps"],
        serde_json::json!([10, 50, 100])
    );
    let load = Load::start((0..4).map(|_| proxy.client()).collect(), Duration::ZERO);
    let promoted = proxy
        .wait_status(Duration::from_secs(45), |s| plan_state(s) == "promoted")
        .await;
    let tally = load.stop().await;
    let status = promoted.unwrap_or_else(|s| panic!("not promoted: {s:#}"));
    assert_eq!(tally.failures, 0, "{:?}", tally.examples);
    assert_eq!(status["stable"], "green", "{status:#}");
    assert_eq!(status["configured_weight"]["weight"], 0);
    let done = status["progressive"]["steps_done"].as_array().unwrap();
    let path: Vec<_> = done.iter().map(|d| d["to"].as_str().unwrap()).collect();
    assert_eq!(path, ["50", "100", "promoted"], "{status:#}");
    for step in done {
        assert!(step["canary"]["requests"].as_u64().unwrap() >= 20, "{step}");
        assert!(step["seconds"].as_f64().unwrap() >= 0.3, "{step}");
    }
    // The gauges follow on the next tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proxy.metric("canary_proxy_progressive_steps_done").await != Some(3.0) {
        assert!(std::time::Instant::now() < deadline, "steps_done never 3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        proxy.logs().iter().any(|l| l.contains("canary promoted")),
        "{:?}",
        proxy.logs()
    );
}

#[tokio::test]
async fn an_edit_of_the_weight_pauses_the_plan_and_the_paused_key_resumes_it() {
    let (_blue, _green, upstreams) = colors().await;
    let keys = |weight: &'static str, paused: Option<&'static str>| {
        let mut extra = vec![
            ("canary-weight", weight),
            ("progressive.steps", "10,50,100"),
            ("progressive.step-min-duration", "1h"),
        ];
        extra.extend(paused.map(|p| ("progressive.paused", p)));
        extra
    };
    let proxy = ProxyProcess::start(bin(), &config(&upstreams, &keys("10", None)))
        .await
        .unwrap();
    let wait = |state: &'static str| {
        proxy.wait_status(Duration::from_secs(10), move |s| {
            plan_state(s) == state && s["progressive"]["seconds_at_step"].is_number()
        })
    };
    let status = wait("stepping").await.unwrap_or_else(|s| panic!("{s:#}"));
    assert_eq!(status["progressive"]["next_step"], "50");
    assert!(
        status["progressive"]["next_step_earliest_in_seconds"]
            .as_f64()
            .unwrap()
            > 3000.0
    );
    proxy.write_config(&config(&upstreams, &keys("50", None)));
    let status = wait("paused").await.unwrap_or_else(|s| panic!("{s:#}"));
    let message = status["progressive"]["message"].as_str().unwrap();
    assert!(message.contains("set to 50 by hand"), "{message}");
    assert_eq!(status["configured_weight"]["weight"], 50);
    // Each edit must be seen before the next (the file is applied once it reads the same
    // twice): wait for its revision.
    let revision = status["revision"].clone();
    proxy.write_config(&config(&upstreams, &keys("50", Some("true"))));
    let status = proxy
        .wait_status(Duration::from_secs(10), |s| s["revision"] != revision)
        .await
        .unwrap();
    assert_eq!(plan_state(&status), "paused");
    proxy.write_config(&config(&upstreams, &keys("50", Some("false"))));
    let resumed = proxy
        .wait_status(Duration::from_secs(10), |s| plan_state(s) == "stepping")
        .await
        .unwrap_or_else(|s| panic!("{s:#}\nbefore: {status:#}"));
    assert_eq!(resumed["progressive"]["current_step"], 50);
    assert_eq!(resumed["progressive"]["next_step"], "100");
}

#[tokio::test]
async fn a_canary_slower_than_stable_beyond_the_margin_is_rolled_back() {
    let (_blue, green, upstreams) = colors().await;
    green.set_delay(Duration::from_millis(20));
    // At the 0.9 quantile, stable's threshold needs 100 requests.
    let proxy = ProxyProcess::start(
        bin(),
        &config(
            &upstreams,
            &[
                ("canary-weight", "50"),
                ("rollback.max-latency-increase", "20%"),
                ("rollback.latency-quantile", "0.9"),
            ],
        ),
    )
    .await
    .unwrap();
    let load = Load::start((0..8).map(|_| proxy.client()).collect(), Duration::ZERO);
    let rolled = proxy
        .wait_status(Duration::from_secs(30), |s| {
            s["rollback"]["rolled_back"] == true
        })
        .await;
    let tally = load.stop().await;
    let status = rolled.unwrap_or_else(|s| panic!("not rolled back: {s:#}"));
    assert_eq!(tally.failures, 0, "{:?}", tally.examples);
    let reason = status["rollback"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("canary slower than stable by more than 20% beyond chance"),
        "{reason}"
    );
    let latency = &status["rollback"]["latency"];
    assert!(
        latency["statistic"].as_f64().unwrap() >= latency["boundary"].as_f64().unwrap(),
        "{latency:#}"
    );
}

#[tokio::test]
async fn a_canary_as_fast_as_stable_is_not_rolled_back_for_latency() {
    let (_blue, _green, upstreams) = colors().await;
    let proxy = ProxyProcess::start(
        bin(),
        &config(
            &upstreams,
            &[
                ("canary-weight", "50"),
                ("rollback.max-latency-increase", "20%"),
                ("rollback.latency-quantile", "0.9"),
            ],
        ),
    )
    .await
    .unwrap();
    let load = Load::start((0..4).map(|_| proxy.client()).collect(), Duration::ZERO);
    let judged = proxy
        .wait_status(Duration::from_secs(20), |s| {
            s["colors"]["green"]["requests_total"].as_u64() > Some(2_000)
                && s["rollback"]["latency"]["stable_slow_ms"].is_number()
        })
        .await;
    load.stop().await;
    let status = judged.unwrap_or_else(|s| panic!("{s:#}"));
    assert_eq!(status["rollback"]["rolled_back"], false, "{status:#}");
}

#[tokio::test]
async fn with_rollback_off_the_steps_still_move_on_the_gate_s_evidence() {
    let (_blue, _green, upstreams) = colors().await;
    let proxy = ProxyProcess::start(
        bin(),
        &config(
            &upstreams,
            &[
                ("canary-weight", "10"),
                ("rollback.enabled", "false"),
                ("rollback.max-error-rate", "20"),
                ("progressive.steps", "10,100"),
                ("progressive.step-min-duration", "300ms"),
                ("progressive.step-min-requests", "20"),
            ],
        ),
    )
    .await
    .unwrap();
    let load = Load::start((0..4).map(|_| proxy.client()).collect(), Duration::ZERO);
    let promoted = proxy
        .wait_status(Duration::from_secs(45), |s| plan_state(s) == "promoted")
        .await;
    load.stop().await;
    let status = promoted.unwrap_or_else(|s| panic!("not promoted: {s:#}"));
    assert_eq!(status["stable"], "green");
    assert_eq!(status["rollback"]["verdict"], "disabled");
}
