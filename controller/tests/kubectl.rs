//! The installed `kubectl` against the fake API server, driven exactly as a user would.
//! Skipped, saying so, where no `kubectl` is installed.

mod common;

use std::time::{Duration, Instant};

use canary_controller::{ConfigMapRef, EventKind, SourceEvent, record_event};
use canary_testkit::fake_apiserver::FakeApiServer;
use common::{NAME, NS, client, eventually, next_event, spawn_watch};

/// Runs kubectl with the fake's kubeconfig; `None` if kubectl is not installed.
async fn kubectl(api: &FakeApiServer, args: &[&str]) -> Option<String> {
    api.run_kubectl(args).await
}

#[tokio::test]
async fn kubectl_patch_moves_the_weight_and_describe_shows_the_events() {
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    let kube = client(&api).await;
    let cm = ConfigMapRef::new(NS, NAME).unwrap();
    let mut events = spawn_watch(kube.clone(), cm.clone());
    assert!(matches!(
        next_event(&mut events, Duration::from_secs(1)).await,
        SourceEvent::Applied { .. }
    ));
    eventually(Duration::from_secs(1), "the watch to be open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;

    let patch = r#"{"data":{"canary-weight":"50"}}"#;
    let Some(out) = kubectl(
        &api,
        &["patch", "configmap", NAME, "--type", "merge", "-p", patch],
    )
    .await
    else {
        eprintln!("SKIPPED: kubectl is not installed");
        return;
    };
    let patched = Instant::now();
    assert_eq!(out.trim(), "configmap/canary patched");
    match next_event(&mut events, Duration::from_secs(1)).await {
        SourceEvent::Applied { data, .. } => assert_eq!(data["canary-weight"], "50"),
        other => panic!("expected the patched weight, got {other:?}"),
    }
    eprintln!(
        "kubectl patch reached the watch {:?} after kubectl returned",
        patched.elapsed()
    );

    record_event(
        &kube,
        &cm,
        EventKind::RolledBack,
        "green rolled back: 30.0% of 40 requests failed",
    )
    .await;
    let described = kubectl(&api, &["describe", "configmap", NAME])
        .await
        .unwrap();
    assert!(described.contains("CanaryRolledBack"), "{described}");
    assert!(
        described.contains("green rolled back: 30.0% of 40 requests failed"),
        "{described}"
    );

    let yaml = kubectl(
        &api,
        &[
            "get",
            "configmap",
            NAME,
            "-o",
            "jsonpath={.data.canary-weight}",
        ],
    )
    .await
    .unwrap();
    assert_eq!(yaml, "50");
}
