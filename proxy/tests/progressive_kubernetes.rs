//! End-to-end: the step plan with `--configmap` against the fake Kubernetes API server: each
//! step is written into the ConfigMap with an Event, a restart resumes at the ConfigMap's
//! step, and an edit of the weight (with `kubectl patch`) pauses the plan.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::fake_apiserver::FakeApiServer;
use canary_testkit::load::Load;
use canary_testkit::proxy::{ProxyProcess, Source};
use serde_json::Value;

const NS: &str = "default";
const NAME: &str = "canary-proxy";
const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

async fn start(api: &FakeApiServer) -> ProxyProcess {
    let args = vec!["--configmap".to_owned(), format!("{NS}/{NAME}")];
    let env = vec![(
        "KUBECONFIG".to_owned(),
        api.kubeconfig_path().display().to_string(),
    )];
    let proxy = ProxyProcess::start_with(bin(), Source::Args(args, env), &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.admin_get("/readyz").await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
}

/// The ConfigMap's `key`.
fn data(api: &FakeApiServer, key: &str) -> String {
    api.configmap(NS, NAME)
        .and_then(|cm| cm.data.get(key).cloned())
        .unwrap_or_default()
}

/// Waits until `condition` holds on the fake API server, up to [`WAIT`].
async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn plan_state(status: &Value) -> &str {
    status["progressive"]["state"].as_str().unwrap_or("")
}

#[tokio::test]
async fn each_step_is_written_to_the_configmap_with_an_event_until_promotion() {
    let (api, _upstreams) = FakeApiServer::with_colors(
        NS,
        NAME,
        &[
            ("canary-weight", "10"),
            ("rollback.max-error-rate", "20"),
            ("progressive.steps", "10,50,100"),
            ("progressive.step-min-duration", "500ms"),
            ("progressive.step-min-requests", "20"),
        ],
    )
    .await;
    let proxy = start(&api).await;
    let load = Load::start((0..4).map(|_| proxy.client()).collect(), Duration::ZERO);
    wait_for("the promotion written", || data(&api, "stable") == "green").await;
    let tally = load.stop().await;
    assert_eq!(tally.failures, 0, "{:?}", tally.examples);
    assert_eq!(data(&api, "canary-weight"), "0");
    // The Event is recorded after the write it reports.
    wait_for("the promotion's Event", || {
        api.events().iter().any(|e| e.reason == "CanaryPromoted")
    })
    .await;
    let events = api.events();
    let reasons: Vec<_> = events.iter().map(|e| e.reason.as_str()).collect();
    let steps = reasons
        .iter()
        .filter(|r| **r == "CanaryStepPromoted")
        .count();
    assert_eq!(steps, 2, "{reasons:?}");
    let step = events
        .iter()
        .find(|e| {
            e.reason == "CanaryStepPromoted" && e.message.starts_with("canary weight 10 -> 50")
        })
        .expect("the first step's Event");
    assert_eq!(step.type_, "Normal");
    assert!(
        step.message.contains("failure evidence"),
        "{}",
        step.message
    );
    // The proxy follows its own write: green is stable, with everything.
    let status = proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["revision"].as_str()
                == api
                    .configmap(NS, NAME)
                    .map(|c| c.resource_version)
                    .as_deref()
        })
        .await
        .unwrap_or_else(|s| panic!("{s:#}"));
    assert_eq!(status["stable"], "green");
    assert_eq!(plan_state(&status), "promoted", "{status:#}");
}

#[tokio::test]
async fn a_restart_resumes_at_the_configmap_step_and_a_weight_edit_pauses_the_plan() {
    let (api, _upstreams) = FakeApiServer::with_colors(
        NS,
        NAME,
        &[
            ("canary-weight", "10"),
            ("rollback.max-error-rate", "20"),
            ("progressive.steps", "10,50,80,100"),
            // Long enough that the edit below lands while the plan is still at 50 on a loaded
            // machine.
            ("progressive.step-min-duration", "3s"),
            ("progressive.step-min-requests", "20"),
        ],
    )
    .await;
    let mut proxy = start(&api).await;
    let load = Load::start((0..4).map(|_| proxy.client()).collect(), Duration::ZERO);
    wait_for("the first step written", || {
        data(&api, "canary-weight") == "50"
    })
    .await;
    // Hold the plan at 50 before it moves on: a long least time at each step.
    api.patch_data(NS, NAME, &[("progressive.step-min-duration", "1h")]);
    load.stop().await;
    proxy.signal("KILL");
    proxy.wait_exit(Duration::from_secs(10)).await;
    // A restart reads the step from the ConfigMap.
    assert_eq!(data(&api, "canary-weight"), "50");
    let proxy = start(&api).await;
    let status = proxy
        .wait_status(Duration::from_secs(10), |s| {
            plan_state(s) == "stepping" && s["progressive"]["seconds_at_step"].is_number()
        })
        .await
        .unwrap_or_else(|s| panic!("{s:#}"));
    assert_eq!(status["progressive"]["current_step"], 50, "{status:#}");
    // An edit of the weight, as a person would make it.
    let patched = api
        .run_kubectl(&[
            "patch",
            "configmap",
            NAME,
            "--type=merge",
            "-p",
            r#"{"data":{"canary-weight":"80"}}"#,
        ])
        .await;
    assert!(patched.is_some(), "kubectl patch failed");
    let status = proxy
        .wait_status(Duration::from_secs(10), |s| plan_state(s) == "paused")
        .await
        .unwrap_or_else(|s| panic!("{s:#}"));
    let message = status["progressive"]["message"].as_str().unwrap();
    assert!(message.contains("set to 80 by hand"), "{message}");
    assert_eq!(status["configured_weight"]["weight"], 80);
    wait_for("the pause's Event", || {
        api.events()
            .iter()
            .any(|e| e.reason == "CanaryPaused" && e.type_ == "Warning")
    })
    .await;
    // Nothing moves while paused: the ConfigMap keeps the person's weight.
    assert_eq!(data(&api, "canary-weight"), "80");
    // Resumed by writing progressive.paused, from the person's step.
    api.run_kubectl(&[
        "patch",
        "configmap",
        NAME,
        "--type=merge",
        "-p",
        r#"{"data":{"progressive.paused":"false"}}"#,
    ])
    .await;
    let status = proxy
        .wait_status(Duration::from_secs(10), |s| plan_state(s) == "stepping")
        .await
        .unwrap_or_else(|s| panic!("{s:#}"));
    assert_eq!(status["progressive"]["current_step"], 80);
    assert_eq!(status["progressive"]["next_step"], "100");
}
