//! `--workers 2` against the real binary: each worker accepts its own share of the
//! connections, and on SIGTERM each drains its own, so requests in flight on every worker
//! finish before the process exits.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::faulty::RecordingUpstream;
use canary_testkit::proxy::{ProxyProcess, Source};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// Waits up to `wait` for `condition`.
async fn eventually(wait: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_workers_share_the_connections_and_each_drains_its_own() {
    let upstream = RecordingUpstream::start().await;
    let authority = upstream.authority();
    let config = [
        ("blue.upstream", authority.as_str()),
        ("green.upstream", authority.as_str()),
    ];
    let mut proxy = ProxyProcess::start_with(bin(), Source::File(&config), &["--workers", "2"])
        .await
        .unwrap();

    // 16 requests in flight, each on a connection of its own, to an upstream that holds them
    // long enough for the signal to arrive first. Both workers accept: with 16 connections the
    // chance that one worker gets all of them is 2 in 65,536 for an even split.
    upstream.set_delay(Duration::from_millis(1500));
    const CONNECTIONS: u64 = 16;
    let in_flight: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let client = HttpClient::http1(proxy.addr);
            tokio::spawn(async move { client.get("/slow", &[]).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || upstream.requests()
            >= CONNECTIONS)
        .await,
        "the requests never reached the upstream"
    );

    proxy.signal("TERM");
    for request in in_flight {
        let reply = request
            .await
            .unwrap()
            .expect("the request in flight completes");
        assert_eq!(reply.status, 200);
    }
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");

    // Each worker logs its own drain, with the connections it had open.
    let logs: Vec<Value> = proxy
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let mut draining: Vec<(u64, u64)> = logs
        .iter()
        .filter(|v| v["message"] == "stopped accepting, draining")
        .map(|v| {
            let worker = v["span"]["index"].as_u64().expect("logged by a worker");
            (worker, v["open"].as_u64().expect("open connections"))
        })
        .collect();
    draining.sort();
    assert_eq!(
        draining
            .iter()
            .map(|(worker, _)| *worker)
            .collect::<Vec<_>>(),
        [0, 1],
        "{draining:?}"
    );
    assert!(
        draining.iter().all(|(_, open)| *open > 0),
        "a worker had no connection to drain: {draining:?}"
    );
    let drained = logs
        .iter()
        .filter(|v| v["message"] == "all connections drained")
        .count();
    assert_eq!(drained, 2, "every worker drains before the exit");
}
