//! End-to-end: rollback in the data path and failover of requests that never reached the canary.

use std::path::Path;
use std::time::Duration;

use canary_testkit::proxy::ProxyProcess;
use canary_testkit::upstream::TestUpstream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

#[tokio::test]
async fn a_failing_canary_at_weight_50_is_rolled_back_within_min_requests() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let (b, g) = (blue.authority(), green.authority());
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &b),
            ("green.upstream", &g),
            ("canary-weight", "50"),
            ("rollback.min-requests", "20"),
        ],
    )
    .await
    .unwrap();
    let client = proxy.client();
    // A healthy start, so that stable has a record of successes to give as its alibi.
    for _ in 0..100 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    }
    green.set_status(500); // the article's FORCE_ERROR=true
    let mut errors = 0;
    let mut sent = 0;
    // Sequential requests: at most one is in flight when the rollback happens.
    while proxy.status().await["rollback"]["rolled_back"] != true {
        let reply = client.get("/", &[]).await.unwrap();
        errors += usize::from(reply.status.is_server_error());
        sent += 1;
        assert!(sent < 2000, "no rollback after {sent} requests");
    }
    assert!(errors <= 20 + 1, "clients saw {errors} errors");
    assert_eq!(errors, 20, "rolled back at exactly the 20th canary failure");
    for _ in 0..200 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    }
    let status = proxy.status().await;
    assert_eq!(status["rollback"]["color"], "green");
    assert_eq!(status["rollback"]["verdict"], "rolled_back");
    assert_eq!(status["effective_weight"]["green"], 0.0);
    let reason = status["rollback"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("canary failed its last 20 requests in a row"),
        "{reason}"
    );
    assert_eq!(
        proxy
            .metric("canary_proxy_rollbacks_total{color=\"green\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("canary_proxy_weight_percent{color=\"green\"}")
            .await,
        Some(0.0)
    );
    let warn = proxy
        .logs()
        .into_iter()
        .find(|l| l.contains("rolled back"))
        .unwrap();
    assert!(
        warn.contains("\"level\":\"WARN\"") && warn.contains("last 20 requests"),
        "{warn}"
    );
}

#[tokio::test]
async fn a_canary_that_is_not_listening_costs_clients_nothing() {
    let blue = TestUpstream::start("blue").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &dead.to_string()),
            ("canary-weight", "50"),
        ],
    )
    .await
    .unwrap();
    let client = proxy.client();
    for _ in 0..300 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    }
    let retries = proxy
        .metric("canary_proxy_retries_total{from=\"green\",to=\"blue\"}")
        .await
        .unwrap();
    assert!(retries >= 20.0, "retries {retries}");
    // The dead canary is also rolled back, after which nothing needs retrying.
    assert_eq!(proxy.status().await["rollback"]["rolled_back"], true);
    assert_eq!(
        retries, 20.0,
        "retried until the rollback at min-requests, then no more"
    );
}

#[tokio::test]
async fn rolled_back_until_the_config_file_changes() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    green.set_status(503);
    let (b, g) = (blue.authority(), green.authority());
    let config = |weight| {
        vec![
            ("blue.upstream", b.as_str()),
            ("green.upstream", g.as_str()),
            ("canary-weight", weight),
            ("rollback.min-requests", "5"),
        ]
    };
    let proxy = ProxyProcess::start(bin(), &config("100")).await.unwrap();
    // Five in a row at a 5 % threshold would roll back a healthy canary too often for the
    // 99 % confidence: the streak in force is the least that keeps the bound.
    let status = proxy.status().await;
    assert_eq!(status["rollback"]["test"]["streak_boundary"], 10);
    let client = proxy.client();
    for _ in 0..10 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 503);
    }
    assert_eq!(client.get("/", &[]).await.unwrap().color(), "blue");
    // Green is fixed, but the latch holds until the configuration changes.
    green.set_status(200);
    for _ in 0..50 {
        assert_eq!(client.get("/", &[]).await.unwrap().color(), "blue");
    }
    proxy.write_config(&config("99"));
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["rollback"]["rolled_back"] == false
        })
        .await
        .expect("a new config clears the rollback");
    let green_replies = {
        let mut n = 0;
        for _ in 0..50 {
            n += usize::from(client.get("/", &[]).await.unwrap().color() == "green");
        }
        n
    };
    assert!(
        green_replies >= 40,
        "back to the split: {green_replies}/50 green"
    );
}

#[tokio::test]
async fn a_fault_both_colors_share_is_not_rolled_back() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    blue.set_status(500);
    green.set_status(500);
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &green.authority()),
            ("canary-weight", "50"),
        ],
    )
    .await
    .unwrap();
    let client = proxy.client();
    for _ in 0..400 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 500);
        // From the first request on, never rolled back.
        assert_eq!(
            proxy
                .metric("canary_proxy_rollbacks_total{color=\"green\"}")
                .await,
            Some(0.0)
        );
    }
    let status = proxy.status().await;
    assert_eq!(status["rollback"]["rolled_back"], false);
    assert_eq!(status["rollback"]["verdict"], "shared_fault");
    assert_eq!(
        proxy
            .metric("canary_proxy_shared_fault{color=\"green\"}")
            .await,
        Some(1.0)
    );
}
