//! `watch()` against the fake API server: content changes, absence, expiry and outages.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canary_controller::{ConfigMapRef, SourceEvent};
use canary_testkit::fake_apiserver::{FakeApiServer, Verb};
use common::{CapturedLogs, NAME, NS, client, eventually, next_event, spawn_watch};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// Time allowed for a change to reach the watch: the 1 s.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Generous bound for reconnecting: the backoff starts at 0.8 s and doubles, with jitter.
const RECONNECT: Duration = Duration::from_secs(15);

fn cm() -> ConfigMapRef {
    ConfigMapRef::new(NS, NAME).unwrap()
}

fn weight(event: &SourceEvent) -> Option<&str> {
    match event {
        SourceEvent::Applied { data, .. } => data.get("canary-weight").map(String::as_str),
        _ => None,
    }
}

#[tokio::test]
async fn applies_the_config_then_each_patch_within_a_second() {
    let api = FakeApiServer::start().await;
    let rv = api.create_configmap(
        NS,
        NAME,
        &[("canary-weight", "5"), ("blue.upstream", "b:1")],
    );
    let mut events = spawn_watch(client(&api).await, cm());

    let first = next_event(&mut events, PROPAGATION).await;
    let expected: BTreeMap<String, String> = [("canary-weight", "5"), ("blue.upstream", "b:1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        first,
        SourceEvent::Applied {
            data: expected,
            annotations: BTreeMap::new(),
            resource_version: rv
        }
    );
    eventually(PROPAGATION, "the watch to be open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;

    for w in ["50", "100", "0"] {
        let started = Instant::now();
        let rv = api.patch_data(NS, NAME, &[("canary-weight", w)]);
        let event = next_event(&mut events, PROPAGATION).await;
        assert_eq!(weight(&event), Some(w));
        assert!(
            matches!(&event, SourceEvent::Applied { resource_version, .. } if *resource_version == rv)
        );
        eprintln!("weight {w} reached the watch in {:?}", started.elapsed());
    }

    let lists = api
        .requests()
        .into_iter()
        .filter(|r| r.verb == Verb::List || r.verb == Verb::Watch)
        .collect::<Vec<_>>();
    assert!(
        lists
            .iter()
            .all(|r| r.query.contains("fieldSelector=metadata.name%3Dcanary")),
        "{lists:?}"
    );
}

#[tokio::test]
async fn identical_content_is_not_repeated_but_our_annotations_are() {
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    let kube = client(&api).await;
    let mut events = spawn_watch(kube.clone(), cm());
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );

    // A label and a foreign annotation change the resourceVersion but not the config.
    let cms: Api<ConfigMap> = Api::namespaced(kube, NS);
    let unrelated =
        serde_json::json!({"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}}});
    cms.patch(NAME, &PatchParams::default(), &Patch::Merge(unrelated))
        .await
        .unwrap();
    // Our own annotation is part of the config the proxy must see.
    let ours = serde_json::json!({"metadata": {"annotations": {"canary-proxy/rolled-back-at": "2026-01-01T00:00:00Z"}}});
    cms.patch(NAME, &PatchParams::default(), &Patch::Merge(ours))
        .await
        .unwrap();

    match next_event(&mut events, PROPAGATION).await {
        SourceEvent::Applied { annotations, .. } => {
            assert_eq!(
                annotations.len(),
                1,
                "only canary-proxy/ annotations: {annotations:?}"
            );
            assert!(annotations.contains_key("canary-proxy/rolled-back-at"));
        }
        other => panic!("expected Applied with the annotation, got {other:?}"),
    }
}

#[tokio::test]
async fn waits_for_a_missing_configmap_and_survives_its_deletion() {
    let api = FakeApiServer::start().await;
    let mut events = spawn_watch(client(&api).await, cm());
    assert_eq!(
        next_event(&mut events, PROPAGATION).await,
        SourceEvent::Missing
    );
    eventually(PROPAGATION, "the watch to be open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;

    // Another ConfigMap in the namespace is none of our business.
    api.create_configmap(NS, "other", &[("canary-weight", "99")]);
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );

    assert!(api.delete_configmap(NS, NAME));
    assert_eq!(
        next_event(&mut events, PROPAGATION).await,
        SourceEvent::Deleted
    );

    // Recreated with the very same data: still announced, the proxy must leave "deleted".
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );
}

#[tokio::test]
async fn an_expired_watch_relists_without_reporting_an_outage() {
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    let mut events = spawn_watch(client(&api).await, cm());
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );
    eventually(PROPAGATION, "the watch to be open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.verb == Verb::List)
        .count();

    // Compaction: the open watch gets 410 Gone, and so would resuming from its version.
    api.expire_watches();
    eventually(PROPAGATION, "a relist", || async {
        let lists = api
            .requests()
            .iter()
            .filter(|r| r.verb == Verb::List)
            .count();
        (lists > lists_before && api.active_watches() == 1).then_some(())
    })
    .await;
    api.patch_data(NS, NAME, &[("canary-weight", "30")]);
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("30")
    );

    // Two 410s in a row (the in-stream one, then the next watch request's): the second waits
    // for the backoff, and neither is reported as an outage.
    api.fail_next(Verb::Watch, 410, 1);
    api.expire_watches();
    api.patch_data(NS, NAME, &[("canary-weight", "31")]);
    assert_eq!(
        weight(&next_event(&mut events, RECONNECT).await),
        Some("31")
    );
}

#[tokio::test]
async fn an_api_server_outage_is_reported_once_and_recovered_from() {
    let (logs, _guard) = CapturedLogs::start();
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    let mut events = spawn_watch(client(&api).await, cm());
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );
    eventually(PROPAGATION, "the watch to be open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;

    api.stop().await;
    assert!(matches!(
        next_event(&mut events, RECONNECT).await,
        SourceEvent::Disconnected { .. }
    ));
    // Retries go on behind the scenes (0.8 s, 1.6 s, ..) without another event.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), events.recv())
            .await
            .is_err(),
        "retries must not be reported one by one"
    );

    // The config changed while the watch was away; it must not be missed.
    api.patch_data(NS, NAME, &[("canary-weight", "40")]);
    api.restart().await;
    assert_eq!(
        next_event(&mut events, RECONNECT).await,
        SourceEvent::Reconnected
    );
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("40")
    );

    // One warning for the outage and one line for the recovery, however many retries.
    assert!(logs.count("still failing") >= 1, "retries happened");
    // (kube's client adds its own "eof in poll" warning when the stream breaks; the proxy's
    // log filter keeps kube's crates at error level.)
    let warnings = logs.lines("WARN canary_controller");
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:#?}");
    assert_eq!(logs.count("reachable again"), 1);
}

#[tokio::test]
async fn one_failed_request_is_retried_silently_and_more_are_one_outage() {
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    // A single failure is cured by the immediate retry: the proxy hears nothing of it.
    api.fail_next(Verb::List, 503, 1);
    let mut events = spawn_watch(client(&api).await, cm());
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );
    eventually(PROPAGATION, "the watch to be open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;

    // Two in a row are an outage, reported once.
    api.fail_next(Verb::List, 500, 2);
    api.expire_watches();
    api.patch_data(NS, NAME, &[("canary-weight", "6")]);
    assert!(
        matches!(next_event(&mut events, PROPAGATION).await, SourceEvent::Disconnected { error } if error.contains("500"))
    );
    assert_eq!(
        next_event(&mut events, RECONNECT).await,
        SourceEvent::Reconnected
    );
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("6")
    );
}

#[tokio::test]
async fn a_refused_watch_after_good_lists_backs_off_and_is_reported_once() {
    let (logs, _guard) = CapturedLogs::start();
    let api = FakeApiServer::start().await;
    api.create_configmap(NS, NAME, &[("canary-weight", "5")]);
    // A Role edit dropped `watch` but kept `list`: every list works, every watch is refused.
    api.fail_next(Verb::Watch, 403, 3);
    let started = Instant::now();
    let mut events = spawn_watch(client(&api).await, cm());
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("5")
    );
    match next_event(&mut events, RECONNECT).await {
        SourceEvent::WatchFailing { error } => assert!(error.contains("403"), "{error}"),
        other => panic!("expected WatchFailing, got {other:?}"),
    }
    eventually(RECONNECT, "a watch that stays open", || async {
        (api.active_watches() == 1).then_some(())
    })
    .await;
    let calls = |verb| api.requests().iter().filter(|r| r.verb == verb).count();
    // Without the backoff this is thousands of calls a second; with it, one list per refusal
    // (0.8 s, 1.6 s, 3.2 s apart, jittered) and the one that led to the open watch.
    assert_eq!(
        (calls(Verb::List), calls(Verb::Watch)),
        (4, 4),
        "after {:?}",
        started.elapsed()
    );

    // The watch works again: reported as soon as it delivers a change.
    api.patch_data(NS, NAME, &[("canary-weight", "6")]);
    assert_eq!(
        next_event(&mut events, PROPAGATION).await,
        SourceEvent::Reconnected
    );
    assert_eq!(
        weight(&next_event(&mut events, PROPAGATION).await),
        Some("6")
    );
    let warnings = logs.lines("WARN canary_controller");
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    assert!(
        warnings[0].contains("listed but not watched"),
        "{warnings:#?}"
    );
}
