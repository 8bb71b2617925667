//! Over HTTPS, as a real API server is reached: kube's rustls client (ring provider) trusts
//! the cluster CA named in the kubeconfig, and `kubectl` does too.

mod common;

use std::time::Duration;

use canary_controller::{
    ConfigMapRef, RollbackRecord, SourceEvent, WRITE_BACK_DEADLINE, WriteBackOutcome, write_back,
};
use canary_testkit::fake_apiserver::FakeApiServer;
use common::{NAME, NS, client, next_event, spawn_watch};

#[tokio::test]
async fn watch_and_write_back_over_https() {
    let api = FakeApiServer::start_tls().await;
    assert!(api.url().starts_with("https://"));
    let rv = api.create_configmap(
        NS,
        NAME,
        &[("green.upstream", "g:1"), ("canary-weight", "5")],
    );
    let kube = client(&api).await;
    let cm = ConfigMapRef::new(NS, NAME).unwrap();
    let mut events = spawn_watch(kube.clone(), cm.clone());
    assert!(matches!(
        next_event(&mut events, Duration::from_secs(2)).await,
        SourceEvent::Applied { .. }
    ));

    let record = RollbackRecord {
        canary_color: "green".into(),
        canary_upstream: "g:1".into(),
        reason: "test".into(),
        at: "2026-01-01T00:00:00Z".into(),
        judged_revision: "1".into(),
        seen_resource_version: rv,
    };
    let outcome = write_back(&kube, &cm, &record, WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteBackOutcome::Written { .. }),
        "{outcome:?}"
    );
    match next_event(&mut events, Duration::from_secs(1)).await {
        SourceEvent::Applied { data, .. } => assert_eq!(data["canary-weight"], "0"),
        other => panic!("expected the rollback, got {other:?}"),
    }

    let output = api
        .kubectl()
        .args([
            "get",
            "configmap",
            NAME,
            "-o",
            "jsonpath={.data.canary-weight}",
        ])
        .output();
    let output = match tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("kubectl finishes within 60 s")
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED the kubectl part: kubectl is not installed");
            return;
        }
        Err(e) => panic!("kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "0");
}
