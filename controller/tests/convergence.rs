//! Two replicas on one ConfigMap: a rollback written by one reaches the other through its
//! watch, and a replica started afterwards begins rolled back.

mod common;

use std::time::{Duration, Instant};

use canary_controller::{
    ConfigMapRef, RollbackRecord, SourceEvent, WRITE_BACK_DEADLINE, WriteBackOutcome, write_back,
};
use canary_testkit::fake_apiserver::FakeApiServer;
use common::{NAME, NS, client, eventually, next_event, spawn_watch};

const PROPAGATION: Duration = Duration::from_secs(1);

fn weight_and_rv(event: SourceEvent) -> (String, String, bool) {
    match event {
        SourceEvent::Applied {
            data,
            annotations,
            resource_version,
        } => (
            data.get("canary-weight").cloned().unwrap_or_default(),
            resource_version,
            annotations.contains_key("canary-proxy/rolled-back-at"),
        ),
        other => panic!("expected Applied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rollback_written_by_one_replica_reaches_the_other_within_a_second() {
    let api = FakeApiServer::start().await;
    api.create_configmap(
        NS,
        NAME,
        &[
            ("blue.upstream", "127.0.0.1:1"),
            ("green.upstream", "127.0.0.1:2"),
            ("canary-weight", "50"),
        ],
    );
    let cm = ConfigMapRef::new(NS, NAME).unwrap();
    let (a, b) = (client(&api).await, client(&api).await);
    let mut replica_a = spawn_watch(a.clone(), cm.clone());
    let mut replica_b = spawn_watch(b, cm.clone());
    let (weight, seen, _) = weight_and_rv(next_event(&mut replica_a, PROPAGATION).await);
    assert_eq!(weight, "50");
    assert_eq!(
        weight_and_rv(next_event(&mut replica_b, PROPAGATION).await).0,
        "50"
    );
    eventually(PROPAGATION, "both watches open", || async {
        (api.active_watches() == 2).then_some(())
    })
    .await;

    // Replica A's data path trips and persists its decision.
    let started = Instant::now();
    let record = RollbackRecord {
        canary_color: "green".into(),
        canary_upstream: "127.0.0.1:2".into(),
        reason: "green: 25 of 50 requests failed (50.0%) in 30s, above 5%".into(),
        at: "2026-01-01T00:00:00Z".into(),
        judged_revision: "1".into(),
        seen_resource_version: seen,
    };
    let outcome = write_back(&a, &cm, &record, WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    let WriteBackOutcome::Written { resource_version } = outcome else {
        panic!("expected Written, got {outcome:?}");
    };

    for (name, replica) in [("A", &mut replica_a), ("B", &mut replica_b)] {
        let (weight, rv, annotated) = weight_and_rv(next_event(replica, PROPAGATION).await);
        assert_eq!((weight.as_str(), annotated), ("0", true), "replica {name}");
        assert_eq!(
            rv, resource_version,
            "replica {name} runs the written revision"
        );
        eprintln!(
            "replica {name} converged {:?} after the rollback began",
            started.elapsed()
        );
    }

    // A restarted replica starts from the persisted decision, not the bad canary.
    let mut restarted = spawn_watch(client(&api).await, cm);
    let (weight, _, annotated) = weight_and_rv(next_event(&mut restarted, PROPAGATION).await);
    assert_eq!((weight.as_str(), annotated), ("0", true));
}
