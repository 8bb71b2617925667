//! End-to-end: the real binary splitting traffic between two test upstreams.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::proxy::{ProxyProcess, run_to_exit};
use canary_testkit::upstream::TestUpstream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

async fn upstreams() -> (TestUpstream, TestUpstream) {
    (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    )
}

/// Sends `n` sequential requests; returns the green share. Panics on any non-200.
async fn green_share(client: &HttpClient, n: usize) -> f64 {
    let mut green = 0;
    for _ in 0..n {
        let reply = client.get("/", &[]).await.expect("reply");
        assert_eq!(reply.status, 200, "{reply:?}");
        green += usize::from(reply.color() == "green");
    }
    green as f64 / n as f64
}

fn within_4_sigma(share: f64, p: f64, n: usize) -> bool {
    (share - p).abs() <= 4.0 * (p * (1.0 - p) / n as f64).sqrt()
}

#[tokio::test]
async fn splits_at_5_and_50_percent() {
    let (blue, green) = upstreams().await;
    for (weight, p) in [("5", 0.05), ("50", 0.5)] {
        let proxy = ProxyProcess::start(
            bin(),
            &[
                ("blue.upstream", &blue.authority()),
                ("green.upstream", &green.authority()),
                ("canary-weight", weight),
            ],
        )
        .await
        .unwrap();
        let n = 2000;
        let share = green_share(&proxy.client(), n).await;
        assert!(
            within_4_sigma(share, p, n),
            "weight {weight}: green share {share}"
        );
    }
}

#[tokio::test]
async fn http2_prior_knowledge_is_proxied() {
    let (blue, green) = upstreams().await;
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &green.authority()),
        ],
    )
    .await
    .unwrap();
    let client = HttpClient::http2(proxy.addr);
    for _ in 0..20 {
        let reply = client.get("/h2", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.color(), "blue");
    }
    let (path, headers, _) = blue.last_request().unwrap();
    assert_eq!(path, "/h2");
    assert_eq!(headers["host"], proxy.addr.to_string());
    assert_eq!(headers["via"], "2 canary-proxy");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let (blue, green) = upstreams().await;
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &green.authority()),
            ("response-color-header", "x-served-color"),
            ("forwarded.trusted-hops", "1"),
        ],
    )
    .await
    .unwrap();
    let reply = proxy
        .client()
        .get(
            "/a?b=c",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "x-secret"),
                ("x-secret", "s"),
                ("proxy-authorization", "Basic eA=="),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-served-color"], "blue");
    assert_eq!(reply.headers["via"], "1.1 canary-proxy");
    let (path, headers, _) = blue.last_request().unwrap();
    assert_eq!(path, "/a?b=c");
    assert_eq!(headers["host"], "shop.example");
    assert_eq!(headers["x-forwarded-host"], "shop.example");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(!headers.contains_key("x-secret"));
    assert!(!headers.contains_key("proxy-authorization"));
}

#[tokio::test]
async fn a_file_edit_moves_the_split_within_a_second_without_failures() {
    let (blue, green) = upstreams().await;
    let (b, g) = (blue.authority(), green.authority());
    let config = |weight| {
        vec![
            ("blue.upstream", b.as_str()),
            ("green.upstream", g.as_str()),
            ("canary-weight", weight),
        ]
    };
    let initial = config("0");
    let proxy = ProxyProcess::start(bin(), &initial).await.unwrap();
    let client = proxy.client();
    assert_eq!(green_share(&client, 50).await, 0.0);

    proxy.write_config(&config("100"));
    let written = Instant::now();
    let mut sent = 0;
    let took = loop {
        let reply = client.get("/", &[]).await.expect("no failed request");
        assert_eq!(reply.status, 200);
        sent += 1;
        if reply.color() == "green" {
            break written.elapsed();
        }
        assert!(
            sent < 100_000 && written.elapsed() < Duration::from_secs(10),
            "never moved"
        );
    };
    eprintln!("split moved {took:?} after the edit, {sent} requests meanwhile");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(green_share(&client, 50).await, 1.0);
    assert_eq!(
        proxy
            .metric("canary_proxy_config_reloads_total{result=\"ok\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_bad_edit_keeps_the_old_split_and_counts_an_error() {
    let (blue, green) = upstreams().await;
    let (b, g) = (blue.authority(), green.authority());
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &b),
            ("green.upstream", &g),
            ("canary-weight", "100"),
        ],
    )
    .await
    .unwrap();
    proxy.write_config(&[
        ("blue.upstream", &b),
        ("green.upstream", &g),
        ("canary-wieght", "0"),
    ]);
    let status = proxy
        .wait_status(Duration::from_secs(5), |s| {
            !s["last_config_error"].is_null()
        })
        .await
        .expect("the bad config is reported");
    let message = status["last_config_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown key `canary-wieght` (did you mean `canary-weight`?)"),
        "{message}"
    );
    assert_eq!(
        proxy
            .metric("canary_proxy_config_reloads_total{result=\"error\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(green_share(&proxy.client(), 50).await, 1.0);
    let (ready, _) = proxy.admin_get("/readyz").await.unwrap();
    assert_eq!(
        ready, 200,
        "a rejected reload does not make the proxy unready"
    );
    assert!(proxy.logs().iter().any(|l| l.contains("config rejected")));
}

#[tokio::test]
async fn a_dead_upstream_gives_502_and_a_stall_504() {
    let (blue, green) = upstreams().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &dead.to_string()),
            ("green.upstream", &green.authority()),
        ],
    )
    .await
    .unwrap();
    let reply = proxy.client().get("/", &[]).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(&reply.body[..], b"the blue upstream could not be reached\n");
    assert_eq!(
        proxy
            .metric("canary_proxy_upstream_errors_total{color=\"blue\",kind=\"connect\"}")
            .await,
        Some(1.0)
    );

    blue.set_delay(Duration::from_secs(5));
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &green.authority()),
            ("timeout.request", "300ms"),
        ],
    )
    .await
    .unwrap();
    let reply = proxy.client().get("/", &[]).await.unwrap();
    assert_eq!(reply.status, 504);
    assert_eq!(
        proxy
            .metric("canary_proxy_requests_total{code=\"error\",color=\"blue\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let (blue, green) = upstreams().await;
    blue.set_delay(Duration::from_millis(1500));
    let mut proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &green.authority()),
        ],
    )
    .await
    .unwrap();
    let client = proxy.client();
    let in_flight = tokio::spawn(async move { client.get("/slow", &[]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while blue.last_request().is_none() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.admin_get("/readyz").await.unwrap().0 != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness turns off while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = in_flight
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(reply.status, 200);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_bad_config_at_startup_exits_non_zero_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "blue.upstream: a:1\ngreen.upstream: b:2\ncanary-weight: \"150\"\n",
    )
    .unwrap();
    let (status, stderr) = run_to_exit(
        bin(),
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("key `canary-weight`: \"150\" is above canary-weight-total (100)"),
        "{stderr}"
    );
}
