//! `write_back()` and `record_event()` against the fake API server.

mod common;

use std::time::Duration;

use canary_controller::{
    ConfigMapRef, Error, EventKind, RollbackRecord, WRITE_BACK_DEADLINE, WriteBackOutcome,
    clear_stale_rollback, record_event, write_back,
};
use canary_testkit::fake_apiserver::{FakeApiServer, Verb};
use common::{NAME, NS, client};

const CONFIG: [(&str, &str); 4] = [
    ("blue.upstream", "blue.prod:8080"),
    ("green.upstream", "green.prod:8080"),
    ("canary-weight", "20"),
    ("rollback.window", "30s"),
];

fn cm() -> ConfigMapRef {
    ConfigMapRef::new(NS, NAME).unwrap()
}

fn record(seen_resource_version: &str) -> RollbackRecord {
    RollbackRecord {
        canary_color: "green".into(),
        canary_upstream: "green.prod:8080".into(),
        reason: "green: 12 of 40 requests failed (30.0%) in 30s, above 5%".into(),
        at: "2026-01-01T00:00:00Z".into(),
        judged_revision: seen_resource_version.into(),
        seen_resource_version: seen_resource_version.into(),
    }
}

fn patches(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.verb == Verb::Patch)
        .count()
}

#[tokio::test]
async fn writes_weight_zero_and_the_annotations() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    let outcome = write_back(
        &client(&api).await,
        &cm(),
        &record(&seen),
        WRITE_BACK_DEADLINE,
    )
    .await
    .unwrap();

    let stored = api.configmap(NS, NAME).unwrap();
    assert_eq!(
        outcome,
        WriteBackOutcome::Written {
            resource_version: stored.resource_version.clone()
        }
    );
    assert_eq!(stored.data["canary-weight"], "0");
    assert_eq!(
        stored.data["rollback.window"], "30s",
        "other keys untouched"
    );
    assert_eq!(
        stored.annotations["canary-proxy/rolled-back-at"],
        "2026-01-01T00:00:00Z"
    );
    assert!(stored.annotations["canary-proxy/rollback-reason"].contains("30.0%"));
    let patch = api
        .requests()
        .into_iter()
        .find(|r| r.verb == Verb::Patch)
        .unwrap();
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
}

#[tokio::test]
async fn a_conflict_is_explained_not_pushed_through() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    // Someone tunes the window after the proxy read the config: same canary, new version.
    api.patch_data(NS, NAME, &[("rollback.window", "60s")]);

    let outcome = write_back(
        &client(&api).await,
        &cm(),
        &record(&seen),
        WRITE_BACK_DEADLINE,
    )
    .await
    .unwrap();
    let WriteBackOutcome::Superseded(Some(current)) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        current.data["rollback.window"], "60s",
        "the content to judge again"
    );
    let stored = api.configmap(NS, NAME).unwrap();
    assert_eq!(
        stored.data["canary-weight"], "20",
        "decided again by the caller"
    );
    assert_eq!(patches(&api), 1, "no second patch on the re-read version");
}

#[tokio::test]
async fn a_late_write_cannot_undo_a_resume() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    let kube = client(&api).await;
    // Another replica records the rollback, then the operator resumes at a new weight.
    let first = write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(matches!(first, WriteBackOutcome::Written { .. }));
    api.remove_annotations(NS, NAME, &canary_controller::ROLLBACK_ANNOTATIONS);
    api.patch_data(NS, NAME, &[("canary-weight", "5")]);
    let resumed = api.configmap(NS, NAME).unwrap();

    // This replica's write, decided on the first version, arrives late.
    let late = write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(
        matches!(late, WriteBackOutcome::Superseded(Some(ref c)) if c.resource_version == resumed.resource_version),
        "{late:?}"
    );
    assert_eq!(
        api.configmap(NS, NAME).unwrap(),
        resumed,
        "the resume stands"
    );
}

#[tokio::test]
async fn stale_annotations_are_cleared_only_at_the_version_seen() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    let kube = client(&api).await;
    write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    let recorded = api.patch_data(NS, NAME, &[("green.upstream", "green-v2.prod:8080")]);
    api.patch_data(NS, NAME, &[("canary-weight", "1")]);
    let changed = clear_stale_rollback(&kube, &cm(), &recorded, WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(
        matches!(changed, WriteBackOutcome::Superseded(Some(_))),
        "changed since: not cleared at once: {changed:?}"
    );
    let current = api.configmap(NS, NAME).unwrap().resource_version;
    let cleared = clear_stale_rollback(&kube, &cm(), &current, WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(matches!(cleared, WriteBackOutcome::Written { .. }));
    let stored = api.configmap(NS, NAME).unwrap();
    assert!(stored.annotations.is_empty(), "{:?}", stored.annotations);
    assert_eq!(stored.data["canary-weight"], "1");
}

#[tokio::test]
async fn a_conflict_with_a_new_canary_leaves_it_alone() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    api.patch_data(
        NS,
        NAME,
        &[
            ("green.upstream", "green-v2.prod:8080"),
            ("canary-weight", "10"),
        ],
    );

    let outcome = write_back(
        &client(&api).await,
        &cm(),
        &record(&seen),
        WRITE_BACK_DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!(outcome, WriteBackOutcome::CanaryChanged);
    let stored = api.configmap(NS, NAME).unwrap();
    assert_eq!(stored.data["canary-weight"], "10");
    assert!(stored.annotations.is_empty());

    // Swapping the stable color makes blue the canary: also not ours.
    let seen = api.configmap(NS, NAME).unwrap().resource_version;
    api.patch_data(
        NS,
        NAME,
        &[("stable", "green"), ("green.upstream", "green.prod:8080")],
    );
    let outcome = write_back(
        &client(&api).await,
        &cm(),
        &record(&seen),
        WRITE_BACK_DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!(outcome, WriteBackOutcome::CanaryChanged);
}

#[tokio::test]
async fn a_replica_that_lost_the_race_finds_it_rolled_back() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    let kube = client(&api).await;
    // Two replicas trip on the same evidence; the second one's precondition is stale.
    let first = write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(matches!(first, WriteBackOutcome::Written { .. }));
    let second = write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert_eq!(second, WriteBackOutcome::AlreadyRolledBack);
}

#[tokio::test]
async fn transient_failures_are_retried_and_forbidden_is_not() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    let kube = client(&api).await;

    api.fail_next(Verb::Patch, 500, 1);
    api.fail_next(Verb::Patch, 429, 1);
    api.fail_next(Verb::Patch, 503, 1);
    let outcome = write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteBackOutcome::Written { .. }),
        "{outcome:?}"
    );
    assert_eq!(patches(&api), 4);

    api.patch_data(NS, NAME, &[("canary-weight", "20")]);
    let seen = api.configmap(NS, NAME).unwrap().resource_version;
    api.fail_next(Verb::Patch, 403, 1);
    let error = write_back(&kube, &cm(), &record(&seen), WRITE_BACK_DEADLINE)
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), Some(403), "{error}");
    assert!(matches!(
        error,
        Error::Api {
            action: "patching",
            ..
        }
    ));
    assert_eq!(patches(&api), 5, "403 is not retried");
}

#[tokio::test]
async fn a_write_that_cannot_finish_in_time_is_dropped() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    api.fail_next(Verb::Patch, 503, 1000);
    let deadline = Duration::from_secs(1);
    let error = write_back(&client(&api).await, &cm(), &record(&seen), deadline)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::DeadlineExceeded { .. }), "{error}");
    let tried = patches(&api);
    assert!((2..20).contains(&tried), "{tried} patches in {deadline:?}");
    // Dropped means dropped: nothing lands afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(patches(&api), tried);
    assert_eq!(api.configmap(NS, NAME).unwrap().data["canary-weight"], "20");
}

#[tokio::test]
async fn a_deleted_configmap_is_not_recreated() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    api.delete_configmap(NS, NAME);
    let outcome = write_back(
        &client(&api).await,
        &cm(),
        &record(&seen),
        WRITE_BACK_DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!(outcome, WriteBackOutcome::Deleted);
    assert!(api.configmap(NS, NAME).is_none());
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_at_the_deadline() {
    let api = FakeApiServer::start().await;
    let seen = api.create_configmap(NS, NAME, &CONFIG);
    let kube = client(&api).await;
    api.stop().await;
    let started = std::time::Instant::now();
    let error = write_back(&kube, &cm(), &record(&seen), Duration::from_secs(2))
        .await
        .unwrap_err();
    eprintln!("gave up after {:?}: {error}", started.elapsed());
    assert!(matches!(error, Error::DeadlineExceeded { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn events_name_the_configmap_so_describe_shows_them() {
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &CONFIG);
    let kube = client(&api).await;
    record_event(
        &kube,
        &cm(),
        EventKind::RolledBack,
        "green rolled back: 30.0% failed",
    )
    .await;
    record_event(
        &kube,
        &cm(),
        EventKind::ConfigRejected,
        "canary-weight: \"ninety\" is not a number",
    )
    .await;

    // Every replica rejects the same revision: one Event, counted, not one per replica.
    record_event(
        &kube,
        &cm(),
        EventKind::ConfigRejected,
        "canary-weight: \"ninety\" is not a number",
    )
    .await;
    let events = api.events();
    assert_eq!(events.len(), 2, "{events:?}");
    let counts: Vec<i64> = events.iter().map(|e| e.count).collect();
    assert!(counts.contains(&2) && counts.contains(&1), "{events:?}");
    let uid = api.configmap(NS, NAME).unwrap().uid;
    for event in &events {
        assert_eq!(event.type_, "Warning");
        assert_eq!(
            (event.involved_kind.as_str(), event.involved_name.as_str()),
            ("ConfigMap", NAME)
        );
        assert_eq!(
            event.involved_uid, uid,
            "kubectl describe matches on the UID"
        );
        assert_eq!(event.namespace, NS);
    }
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons.contains(&"CanaryRolledBack") && reasons.contains(&"ConfigRejected"),
        "{reasons:?}"
    );
    assert!(events.iter().any(|e| e.message.contains("ninety")));

    // Failing to record is not the proxy's problem: it returns, quietly.
    api.fail_next(Verb::Create, 403, 1);
    record_event(&kube, &cm(), EventKind::RolledBack, "again").await;
    api.stop().await;
    record_event(
        &kube,
        &cm(),
        EventKind::RolledBack,
        "while the API server is away",
    )
    .await;
    assert_eq!(api.events().len(), 2);
}
