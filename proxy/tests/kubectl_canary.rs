//! End-to-end: the `kubectl canary` plugin (the real binary) against the fake Kubernetes API
//! server and a real proxy following its ConfigMap, `/status` read through the service proxy.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use canary_testkit::fake_apiserver::FakeApiServer;
use canary_testkit::proxy::{ProxyProcess, Source};
use serde_json::Value;

const NS: &str = "default";
const NAME: &str = "canary-proxy";

fn proxy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

async fn start(api: &FakeApiServer) -> ProxyProcess {
    let args = vec!["--configmap".to_owned(), format!("{NS}/{NAME}")];
    let env = vec![(
        "KUBECONFIG".to_owned(),
        api.kubeconfig_path().display().to_string(),
    )];
    let proxy = ProxyProcess::start_with(proxy_bin(), Source::Args(args, env), &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.admin_get("/readyz").await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
}

/// Runs `kubectl-canary` with `args` against `api`.
async fn plugin(api: &FakeApiServer, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-canary"))
        .args(args)
        .env("KUBECONFIG", api.kubeconfig_path())
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("kubectl-canary finished within 30 s")
        .expect("kubectl-canary runs")
}

/// Runs it and expects success; its stdout.
async fn ok(api: &FakeApiServer, args: &[&str]) -> String {
    let out = plugin(api, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl canary {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn data(api: &FakeApiServer, key: &str) -> Option<String> {
    api.configmap(NS, NAME)?.data.get(key).cloned()
}

async fn wait(proxy: &ProxyProcess, condition: impl Fn(&Value) -> bool) -> Value {
    proxy
        .wait_status(Duration::from_secs(10), condition)
        .await
        .unwrap_or_else(|s| panic!("{s:#}"))
}

#[tokio::test]
async fn every_command_patches_the_configmap_and_status_shows_the_plan() {
    let (api, _upstreams) = FakeApiServer::with_colors(
        NS,
        NAME,
        &[
            ("canary-weight", "10"),
            ("progressive.steps", "10,50,100"),
            ("progressive.step-min-duration", "1h"),
        ],
    )
    .await;
    let proxy = start(&api).await;
    api.set_service_backend(NS, NAME, "admin", proxy.admin);
    wait(&proxy, |s| s["progressive"]["seconds_at_step"].is_number()).await;

    let table = ok(&api, &["status"]).await;
    for expected in [
        "Steps",
        "[10] -> 50 -> 100 -> promote",
        "[10]",
        "stepping",
        "Verdict",
    ] {
        assert!(table.contains(expected), "{expected:?} in\n{table}");
    }
    let json: Value = serde_json::from_str(&ok(&api, &["status", "--json"]).await).unwrap();
    assert_eq!(json["progressive"]["current_step"], 10);

    ok(&api, &["pause"]).await;
    assert_eq!(data(&api, "progressive.paused").as_deref(), Some("true"));
    wait(&proxy, |s| s["progressive"]["state"] == "paused").await;
    ok(&api, &["resume"]).await;
    assert_eq!(data(&api, "progressive.paused").as_deref(), Some("false"));
    wait(&proxy, |s| s["progressive"]["state"] == "stepping").await;

    let said = ok(&api, &["promote"]).await;
    assert!(said.contains("weight 10 -> 50"), "{said}");
    assert_eq!(data(&api, "canary-weight").as_deref(), Some("50"));
    ok(&api, &["set-weight", "100"]).await;
    assert_eq!(data(&api, "canary-weight").as_deref(), Some("100"));
    // A hand-set weight pauses the plan; resume carries on from it.
    wait(&proxy, |s| s["progressive"]["state"] == "paused").await;
    ok(&api, &["resume"]).await;
    wait(&proxy, |s| {
        s["progressive"]["state"] == "stepping" && s["progressive"]["current_step"] == 100
    })
    .await;

    ok(&api, &["abort"]).await;
    assert_eq!(data(&api, "canary-weight").as_deref(), Some("0"));
    let status = wait(&proxy, |s| s["rollback"]["rolled_back"] == true).await;
    assert!(
        status["rollback"]["reason"]
            .as_str()
            .unwrap()
            .contains("kubectl canary abort"),
        "{status:#}"
    );
    let table = ok(&api, &["status"]).await;
    assert!(table.contains("Rolled back"), "{table}");

    ok(&api, &["promote", "--full"]).await;
    assert_eq!(data(&api, "stable").as_deref(), Some("green"));
}

#[tokio::test]
async fn a_missing_configmap_or_proxy_is_a_clear_error() {
    let (api, _upstreams) = FakeApiServer::with_colors(NS, NAME, &[]).await;
    let out = plugin(&api, &["pause", "--configmap", "nothing-here"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ConfigMap default/nothing-here not found"),
        "{stderr}"
    );
    // No proxy behind the Service.
    let out = plugin(&api, &["status"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "cannot read canary-proxy's /status through Service default/canary-proxy port admin"
        ),
        "{stderr}"
    );
}
