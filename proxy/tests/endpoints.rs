//! End-to-end: a color at several endpoints (pods on loopback addresses, a static list in the
//! config file). Each request is balanced across a color's pods; one failing pod is ejected
//! without blaming its version; a fault on every pod still rolls the canary back; a request
//! that could not connect to one pod goes to another pod of the same color.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::proxy::ProxyProcess;
use canary_testkit::upstream::{TestUpstream, assert_even_spread};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// `n` test upstreams of `color` at 127.0.0.`first`, 127.0.0.`first + 1`, ... as pods are at
/// their own addresses.
async fn pods(color: &'static str, first: u8, n: u8) -> Vec<TestUpstream> {
    let mut pods = Vec::new();
    for i in 0..n {
        let addr = ([127, 0, 0, first + i], 0).into();
        pods.push(TestUpstream::start_at(addr, color).await);
    }
    pods
}

/// The config value listing `pods`.
fn list(pods: &[TestUpstream]) -> String {
    pods.iter()
        .map(TestUpstream::authority)
        .collect::<Vec<_>>()
        .join(",")
}

/// The proxy in front of three blue and three green pods, with `extra` keys.
async fn three_and_three(
    extra: &[(&str, &str)],
) -> (Vec<TestUpstream>, Vec<TestUpstream>, ProxyProcess) {
    let (blue, green) = (pods("blue", 11, 3).await, pods("green", 21, 3).await);
    let (b, g) = (list(&blue), list(&green));
    let mut config = vec![
        ("blue.upstream", b.as_str()),
        ("green.upstream", g.as_str()),
    ];
    config.extend_from_slice(extra);
    let proxy = ProxyProcess::start(bin(), &config).await.unwrap();
    (blue, green, proxy)
}

/// Sends `n` GETs over `clients` keep-alive connections at once; returns the statuses.
async fn send(proxy: &ProxyProcess, n: usize, clients: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = proxy.client();
            let share = n / clients + usize::from(c < n % clients);
            tokio::spawn(async move {
                let mut statuses = Vec::with_capacity(share);
                for _ in 0..share {
                    let reply = client.get("/", &[]).await.expect("a reply");
                    statuses.push(reply.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test]
async fn requests_spread_evenly_across_a_colors_pods_under_keep_alive() {
    let (blue, green, proxy) = three_and_three(&[("canary-weight", "50")]).await;
    let statuses = tokio::time::timeout(Duration::from_secs(60), send(&proxy, 3_000, 8))
        .await
        .expect("3,000 requests within a minute");
    assert!(statuses.iter().all(|&s| s == 200));
    for (color, pods) in [("blue", &blue), ("green", &green)] {
        let served: Vec<u64> = pods.iter().map(TestUpstream::served).collect();
        assert!(served.iter().sum::<u64>() > 1_000, "{color} got {served:?}");
        assert_even_spread(color, &served);
    }
    let status = proxy.status().await;
    let endpoints = status["colors"]["green"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3);
    assert!(
        endpoints.iter().all(|e| e["state"] == "ready"),
        "{status:#}"
    );
}

#[tokio::test]
async fn one_failing_pod_is_ejected_and_the_canary_is_not_rolled_back() {
    let (_blue, green, proxy) = three_and_three(&[("canary-weight", "50")]).await;
    green[0].set_status(500);
    let statuses = tokio::time::timeout(Duration::from_secs(60), send(&proxy, 1_000, 4))
        .await
        .expect("1,000 requests within a minute");
    let errors = statuses.iter().filter(|&&s| s == 500).count();
    let status = proxy.status().await;
    eprintln!("{errors} errors; green: {:#}", status["colors"]["green"]);
    assert_eq!(status["rollback"]["rolled_back"], false, "{status:#}");
    // Five in a row eject it; more only if a probe came back within the run.
    assert!(
        (5..=10).contains(&errors),
        "{errors} clients saw the bad pod"
    );
    let endpoints = status["colors"]["green"]["endpoints"].as_array().unwrap();
    let bad = green[0].authority();
    let ejected = endpoints.iter().find(|e| e["address"] == bad).unwrap();
    assert_eq!(ejected["state"], "ejected", "{status:#}");
    assert_eq!(ejected["ejections"], 1);
    assert!(green[1].served() > 100 && green[2].served() > 100);
    assert_eq!(
        proxy
            .metric("canary_proxy_endpoints{color=\"green\",state=\"ejected\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric(&format!(
                "canary_proxy_endpoint_requests_total{{color=\"green\",endpoint=\"{bad}\",result=\"failure\"}}"
            ))
            .await,
        Some(errors as f64)
    );
}

#[tokio::test]
async fn a_fault_on_every_canary_pod_rolls_back_as_fast_as_today() {
    let (_blue, green, proxy) = three_and_three(&[("canary-weight", "50")]).await;
    let client = proxy.client();
    // Every pod well first: the fault then starts on one pod, as a bad release's does.
    for _ in 0..100 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    }
    for pod in &green {
        pod.set_status(500);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut errors = 0;
    while proxy.status().await["rollback"]["rolled_back"] != true && Instant::now() < deadline {
        errors += usize::from(client.get("/", &[]).await.unwrap().status == 500);
        assert!(errors <= 40, "not rolled back at the 40th failure");
    }
    eprintln!("rolled back at the {errors}th failure");
    let status = proxy.status().await;
    assert_eq!(status["rollback"]["rolled_back"], true, "{status:#}");
    // `rollback.min-requests` (20) failures in a row roll back at once, as with one address;
    // failures held while the fault looked like one pod's count as soon as a second pod fails.
    // If the first five failures all land on one pod (about one run in eighty: (1/3)^4), that
    // pod is ejected before another fails and its three held failures are settled as its own:
    // 23.
    assert!(
        (20..=23).contains(&errors),
        "{errors} failures before the rollback"
    );
}

#[tokio::test]
async fn a_request_that_cannot_connect_to_one_pod_goes_to_another_of_its_color() {
    let (_blue, mut green, proxy) = three_and_three(&[("canary-weight", "100")]).await;
    let dead = green.remove(0);
    drop(dead);
    let client = proxy.client();
    for _ in 0..100 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "green"));
    }
    assert_eq!(green[0].served() + green[1].served(), 100);
    let status = proxy.status().await;
    assert_eq!(status["rollback"]["rolled_back"], false);
    assert_eq!(status["colors"]["green"]["failures"], 0, "{status:#}");
}

#[tokio::test]
async fn a_dns_name_becomes_the_addresses_it_resolves_to() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let b = blue.authority();
    let g = format!("localhost:{}", green.addr.port());
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", b.as_str()),
            ("green.upstream", g.as_str()),
            ("canary-weight", "100"),
        ],
    )
    .await
    .unwrap();
    let resolved = green.authority();
    let status = proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["colors"]["green"]["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["address"] == resolved.as_str()))
        })
        .await
        .expect("the name resolved to the upstream's address");
    eprintln!("{}", status["colors"]["green"]["endpoints"]);
    // `localhost` may also resolve to ::1, where nothing listens: a request that cannot
    // connect there is tried on 127.0.0.1.
    let client = proxy.client();
    for _ in 0..50 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "green"));
    }
}

#[tokio::test]
async fn an_ejected_pod_that_recovers_is_probed_back() {
    let (_blue, green, proxy) = three_and_three(&[("canary-weight", "100")]).await;
    let bad = green[0].authority();
    let state_of_bad = |status: &serde_json::Value| {
        status["colors"]["green"]["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["address"] == bad.as_str()))
            .map(|e| e["state"].as_str().unwrap_or("").to_owned())
    };
    green[0].set_status(500);
    let client = proxy.client();
    for _ in 0..100 {
        client.get("/", &[]).await.unwrap();
    }
    assert_eq!(
        state_of_bad(&proxy.status().await).as_deref(),
        Some("ejected")
    );
    green[0].set_status(200);
    let served = green[0].served();
    // After its backoff (10 s) one request probes it; it succeeds and the pod is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
        if state_of_bad(&proxy.status().await).as_deref() == Some("ready") {
            break;
        }
        assert!(Instant::now() < deadline, "never probed back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..300 {
        client.get("/", &[]).await.unwrap();
    }
    assert!(green[0].served() > served + 30, "it takes its share again");
}
