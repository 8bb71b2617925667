//! End-to-end: `canary-proxy --configmap` against a fake Kubernetes API server that speaks the
//! real list/watch/patch protocol, with two upstreams on loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::fake_apiserver::FakeApiServer;
use canary_testkit::proxy::{ProxyProcess, Source};
use canary_testkit::upstream::TestUpstream;

const NS: &str = "shop";
const NAME: &str = "canary-proxy";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

async fn start(api: &FakeApiServer) -> ProxyProcess {
    let args = vec!["--configmap".to_owned(), format!("{NS}/{NAME}")];
    let env = vec![(
        "KUBECONFIG".to_owned(),
        api.kubeconfig_path().display().to_string(),
    )];
    ProxyProcess::start_with(bin(), Source::Args(args, env), &[])
        .await
        .unwrap()
}

/// Sends requests until one is served by `color`; returns how long that took.
async fn until_served_by(client: &HttpClient, color: &str, since: Instant) -> Duration {
    loop {
        let reply = client.get("/", &[]).await.expect("no failed request");
        assert_eq!(reply.status, 200, "{reply:?}");
        if reply.color() == color {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "never served by {color}"
        );
    }
}

/// Two upstreams, a fake API server holding the ConfigMap with their addresses and `keys`,
/// and a ready proxy following it.
struct Cluster {
    api: FakeApiServer,
    proxy: ProxyProcess,
    /// Blue and green, kept serving for as long as the test holds them.
    _upstreams: (TestUpstream, TestUpstream),
}

async fn cluster(keys: &[(&str, &str)]) -> Cluster {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let api = FakeApiServer::start().await;
    let (b, g) = (blue.authority(), green.authority());
    let mut data = vec![
        ("blue.upstream", b.as_str()),
        ("green.upstream", g.as_str()),
    ];
    data.extend_from_slice(keys);
    api.create_configmap(NS, NAME, &data);
    let proxy = start(&api).await;
    wait_ready(&proxy).await;
    Cluster {
        api,
        proxy,
        _upstreams: (blue, green),
    }
}

async fn wait_ready(proxy: &ProxyProcess) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.admin_get("/readyz").await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_configmap_patch_moves_the_split_within_a_second_and_a_bad_one_is_rejected() {
    let Cluster {
        api,
        proxy,
        _upstreams,
    } = cluster(&[("canary-weight", "0")]).await;
    let client = proxy.client();
    assert_eq!(client.get("/", &[]).await.unwrap().color(), "blue");

    let rv = api.patch_data(NS, NAME, &[("canary-weight", "100")]);
    let took = until_served_by(&client, "green", Instant::now()).await;
    eprintln!("the split moved {took:?} after the patch");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(proxy.status().await["revision"], rv.as_str());
    assert_eq!(
        proxy
            .metric(&format!("canary_proxy_config_info{{revision=\"{rv}\"}}"))
            .await,
        Some(1.0)
    );

    api.patch_data(NS, NAME, &[("canary-weight", "ninety")]);
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            !s["last_config_error"].is_null()
        })
        .await
        .expect("rejected");
    for _ in 0..50 {
        assert_eq!(
            client.get("/", &[]).await.unwrap().color(),
            "green",
            "the old split keeps serving"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !api
        .events()
        .iter()
        .any(|e| e.reason == "ConfigRejected" && e.message.contains("ninety"))
    {
        assert!(
            Instant::now() < deadline,
            "no ConfigRejected event: {:?}",
            api.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn waits_for_a_missing_configmap_and_survives_its_deletion() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let api = FakeApiServer::start().await;
    let proxy = start(&api).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, body) = proxy.admin_get("/readyz").await.unwrap();
        assert_eq!(code, 503);
        if body.contains("does not exist yet") {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never said why: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.client().get("/", &[]).await.unwrap().status, 503);

    let (b, g) = (blue.authority(), green.authority());
    api.create_configmap(NS, NAME, &[("blue.upstream", &b), ("green.upstream", &g)]);
    wait_ready(&proxy).await;
    api.delete_configmap(NS, NAME);
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["source_state"].as_str().unwrap().contains("deleted")
        })
        .await
        .expect("the deletion is reported");
    let client = proxy.client();
    for _ in 0..20 {
        assert_eq!(client.get("/", &[]).await.unwrap().color(), "blue");
    }
    assert_eq!(proxy.admin_get("/readyz").await.unwrap().0, 200);
}

#[tokio::test]
async fn traffic_continues_while_the_api_server_is_away() {
    let Cluster {
        api,
        proxy,
        _upstreams,
    } = cluster(&[("canary-weight", "100")]).await;
    let client = proxy.client();

    api.stop().await;
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["source_state"].as_str().unwrap().contains("unreachable")
        })
        .await
        .expect("the outage is reported");
    assert_eq!(
        proxy.metric("canary_proxy_config_source_connected").await,
        Some(0.0)
    );
    for _ in 0..100 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "green"));
    }
    assert_eq!(
        proxy.admin_get("/readyz").await.unwrap().0,
        200,
        "ready on the last good config"
    );

    api.restart().await;
    api.patch_data(NS, NAME, &[("canary-weight", "0")]);
    until_served_by(&client, "blue", Instant::now()).await;
    assert_eq!(
        proxy.metric("canary_proxy_config_source_connected").await,
        Some(1.0)
    );
    let warnings = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("unreachable"))
        .count();
    assert!(
        warnings <= 2,
        "logged per attempt rather than per state change: {warnings}"
    );
}

#[tokio::test]
async fn a_rollback_is_written_back_and_a_second_replica_converges() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    green.set_status(500);
    let api = FakeApiServer::start().await;
    let (b, g) = (blue.authority(), green.authority());
    api.create_configmap(
        NS,
        NAME,
        &[
            ("blue.upstream", &b),
            ("green.upstream", &g),
            ("canary-weight", "100"),
            ("canary-by-header", "x-canary"),
            ("rollback.min-requests", "10"),
        ],
    );
    let (first, second) = (start(&api).await, start(&api).await);
    wait_ready(&first).await;
    wait_ready(&second).await;
    // Only the first replica sees canary traffic, and fails it.
    let one = first.client();
    let mut failed = 0;
    while first.status().await["rollback"]["rolled_back"] != true {
        failed += usize::from(one.get("/", &[]).await.unwrap().status == 500);
        assert!(failed <= 10, "no rollback after {failed} failures");
    }
    let tripped = Instant::now();
    let deadline = tripped + Duration::from_secs(5);
    let written = loop {
        let cm = api.configmap(NS, NAME).unwrap();
        if cm.data["canary-weight"] == "0"
            && cm.annotations.contains_key("canary-proxy/rolled-back-at")
        {
            break cm;
        }
        assert!(Instant::now() < deadline, "not written back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        written.annotations["canary-proxy/rollback-reason"]
            .contains("canary failed its last 10 requests in a row")
    );
    // The second replica converges: the header override no longer reaches the canary.
    let status = second
        .wait_status(Duration::from_secs(1), |s| {
            s["rollback"]["rolled_back"] == true
        })
        .await
        .expect("the second replica converges within 1 s");
    assert_eq!(status["revision"], written.resource_version.as_str());
    eprintln!(
        "second replica rolled back {:?} after the first",
        tripped.elapsed()
    );
    for _ in 0..20 {
        let reply = second
            .client()
            .get("/", &[("x-canary", "always")])
            .await
            .unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    }
    // A restart does not resurrect the bad canary.
    drop(second);
    let third = start(&api).await;
    wait_ready(&third).await;
    assert_eq!(third.status().await["rollback"]["rolled_back"], true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !api.events().iter().any(|e| e.reason == "CanaryRolledBack") {
        assert!(Instant::now() < deadline, "no CanaryRolledBack event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kubectl_patch_drives_the_weight_as_a_user_would() {
    let Cluster {
        api,
        proxy,
        _upstreams,
    } = cluster(&[("canary-weight", "0")]).await;
    let out = api
        .kubectl()
        .args([
            "-n",
            NS,
            "patch",
            "configmap",
            NAME,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"canary-weight":"100"}}"#,
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("patched"));
    until_served_by(&proxy.client(), "green", Instant::now()).await;
}
