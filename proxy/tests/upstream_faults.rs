//! Broken upstreams against the real binary (RELIABILITY.md cases 15-18 and 20): refused
//! connections, resets in the middle of a body, silence, garbage responses, and pooled
//! connections that the upstream closed while they were idle.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::faulty::{RawConn, Script, ScriptedUpstream};
use canary_testkit::proxy::ProxyProcess;
use canary_testkit::upstream::TestUpstream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

const WAIT: Duration = Duration::from_secs(5);
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A proxy whose stable (blue) is `blue`, with green (the canary) at `green`.
async fn proxy(blue: &str, green: &str, extra: &[(&str, &str)]) -> ProxyProcess {
    let mut config = vec![("blue.upstream", blue), ("green.upstream", green)];
    config.extend_from_slice(extra);
    ProxyProcess::start(bin(), &config).await.unwrap()
}

fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn a_refused_canary_goes_to_stable_and_a_refused_stable_gives_502() {
    let blue = TestUpstream::start("blue").await;
    let dead = closed_port();
    let proxy = proxy(&blue.authority(), &dead, &[("canary-weight", "100")]).await;
    let client = proxy.client();
    for _ in 0..20 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    }
    let retries = proxy
        .metric("canary_proxy_retries_total{from=\"green\",to=\"blue\"}")
        .await;
    assert_eq!(retries, Some(20.0));

    let proxy = self::proxy(&dead, &blue.authority(), &[]).await;
    let started = Instant::now();
    let reply = proxy.client().get("/", &[]).await.unwrap();
    eprintln!(
        "refused stable: {} in {:?}",
        reply.status,
        started.elapsed()
    );
    assert_eq!(reply.status, 502);
}

#[tokio::test]
async fn a_reset_mid_body_is_never_a_clean_end() {
    let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
    head.extend(vec![b'a'; 100 * 1024]);
    let upstream = ScriptedUpstream::start(Script::ResetAfter(head)).await;
    let proxy = proxy(&upstream.authority(), &upstream.authority(), &[]).await;

    // HTTP/1.1: the declared length never arrives and the connection is closed.
    let reply = RawConn::exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", WAIT).await;
    assert!(reply.closed);
    assert_eq!(reply.statuses(), [200]);
    let body = reply.bytes.len() - reply.text().find("\r\n\r\n").unwrap() - 4;
    eprintln!("reset mid-body: the HTTP/1.1 client got {body} of 1048576 bytes, then the close");
    assert!(body < 1048576);

    // HTTP/2: the stream is reset, so the body ends in an error.
    let h2 = HttpClient::http2(proxy.addr).get("/", &[]).await;
    assert!(h2.is_err(), "{h2:?}");
    assert_eq!(
        proxy
            .metric("canary_proxy_upstream_errors_total{color=\"blue\",kind=\"reset\"}")
            .await,
        Some(2.0)
    );

    // A reset before any header is a 502; and the next request gets a fresh connection.
    upstream.set_script(Script::ResetAfter(Vec::new()));
    assert_eq!(proxy.client().get("/", &[]).await.unwrap().status, 502);
    upstream.set_script(Script::Reply(OK.to_vec()));
    assert_eq!(proxy.client().get("/", &[]).await.unwrap().status, 200);
    assert_eq!(upstream.reused(), 0);
}

#[tokio::test]
async fn a_silent_upstream_gives_504_and_a_post_is_not_retried() {
    let upstream = ScriptedUpstream::start(Script::Stall).await;
    let proxy = proxy(
        &upstream.authority(),
        &upstream.authority(),
        &[("timeout.request", "300ms")],
    )
    .await;
    let client = proxy.client();
    let started = Instant::now();
    assert_eq!(client.get("/", &[]).await.unwrap().status, 504);
    let took = started.elapsed();
    let post = http::Request::post(format!("http://{}/", proxy.addr))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"once",
        )))
        .unwrap();
    assert_eq!(client.send(post).await.unwrap().status, 504);
    eprintln!("silent upstream: 504 after {took:?} (timeout.request 300ms)");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(upstream.requests(), 2, "each request was sent once");
    assert_eq!(
        proxy
            .metric("canary_proxy_upstream_errors_total{color=\"blue\",kind=\"timeout\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn garbage_responses_give_502_and_their_connection_is_dropped() {
    // Good answers close their connection, so any reuse is of a garbage one.
    let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let upstream = ScriptedUpstream::start(Script::Reply(ok.clone())).await;
    let proxy = proxy(&upstream.authority(), &upstream.authority(), &[]).await;
    let client = proxy.client();
    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-huge: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(1024 * 1024)
    );
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-numeric length",
            b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nok".to_vec(),
        ),
        (
            "HTTP/9.9",
            b"HTTP/9.9 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "random bytes",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        ),
        (
            "conflicting lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
        ),
        ("a 1 MiB header", huge.into_bytes()),
        (
            "Transfer-Encoding with Content-Length",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "a non-chunked Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "CR inside a value",
            b"HTTP/1.1 200 OK\r\nx-a: b\rset-cookie: evil=1\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        ),
    ];
    for (name, bytes) in garbage {
        upstream.set_script(Script::Reply(bytes));
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 502, "{name}: {reply:?}");
        assert!(!reply.headers.contains_key("set-cookie"), "{name}");
        upstream.set_script(Script::Reply(ok.clone()));
        assert_eq!(client.get("/", &[]).await.unwrap().status, 200, "{name}");
    }
    assert_eq!(upstream.requests(), 16);
    assert_eq!(
        upstream.reused(),
        0,
        "a connection was used after a garbage answer"
    );

    // Bare LF line ends are read leniently (as by NGINX), and re-framed by the proxy.
    upstream.set_script(Script::Reply(
        b"HTTP/1.1 200 OK\ncontent-length: 2\nconnection: close\n\nok".to_vec(),
    ));
    let reply = client.get("/", &[]).await.unwrap();
    assert_eq!((reply.status.as_u16(), &reply.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn idle_connections_the_upstream_closed_cause_no_errors() {
    // The upstream closes idle connections after 100 ms, sooner than the proxy's pool
    // forgets them; requests come 150 to 170 ms apart, so each finds its pooled connection
    // closed by the upstream.
    let idle = Duration::from_millis(100);
    let upstream = ScriptedUpstream::start(Script::CloseWhenIdle(idle)).await;
    let proxy = proxy(&upstream.authority(), &upstream.authority(), &[]).await;
    let client = proxy.client();
    let mut failures = Vec::new();
    for i in 0..24u64 {
        let reply = client.get("/", &[]).await;
        match reply {
            Ok(r) if r.status == 200 => {}
            other => failures.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(150 + i % 21)).await;
    }
    eprintln!(
        "stale pool: 24 requests over {} upstream connections, {} reused",
        upstream.connections(),
        upstream.reused()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    let proxy = ProxyProcess::start(
        Path::new(env!("CARGO_BIN_EXE_canary-proxy")),
        &[
            ("blue.upstream", &blue.authority()),
            ("green.upstream", &green.authority()),
            ("timeout.upstream-idle", "500ms"),
        ],
    )
    .await
    .unwrap();
    let pid = proxy.pid();
    let quiet = canary_testkit::procfs::open_fds(pid);
    // Several concurrent requests open several pooled upstream connections.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let client = proxy.client();
        burst.spawn(async move { client.get("/", &[]).await });
    }
    while let Some(reply) = burst.join_next().await {
        assert_eq!(reply.unwrap().unwrap().status, 200);
    }
    let busy = canary_testkit::procfs::open_fds(pid);
    assert!(
        busy > quiet,
        "no upstream connection was opened: {quiet} -> {busy}"
    );
    // The pool's idle timeout is 500 ms and the check runs as often: within 5 s all are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while canary_testkit::procfs::open_fds(pid) > quiet {
        assert!(
            Instant::now() < deadline,
            "idle upstream connections stay open: {quiet} -> {}",
            canary_testkit::procfs::open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_idempotent_request_on_a_connection_closed_under_it_is_sent_again() {
    // Each connection's second request is lost: the upstream closes as it arrives.
    let upstream = ScriptedUpstream::start(Script::CloseOnReuse).await;
    let proxy = proxy(&upstream.authority(), &upstream.authority(), &[]).await;
    let mut conn = RawConn::connect(proxy.addr).await.unwrap();
    for (request, status) in [
        (&b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"[..], 200),
        // Lands on the pooled connection, which closes under it: sent again, once.
        (b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (
            b"POST /3 HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Length: 0\r\n\r\n",
            200,
        ),
        // Not safe to repeat: the client gets the error.
        (
            b"POST /4 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
            502,
        ),
    ] {
        let before = upstream.requests();
        conn.send(request).await.unwrap();
        let reply = conn.read_responses(1, WAIT).await;
        assert_eq!(reply.statuses(), [status], "{}", reply.text());
        let sent = upstream.requests() - before;
        let expected = if status == 200 && before > 0 { 2 } else { 1 };
        assert_eq!(sent, expected, "{}", String::from_utf8_lossy(request));
    }
}
