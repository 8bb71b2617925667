//! End-to-end: HTTP/1.1 framing through the real binary, client and upstream on raw sockets:
//! pipelining, `Expect: 100-continue`, chunked responses with trailers, HEAD, 204 and 304,
//! an ambiguous response, a head that arrives a few bytes at a time, and a connection that
//! leaves the lean path for hyper halfway.

use std::path::Path;
use std::time::Duration;

use canary_testkit::faulty::{RawConn, RecordingUpstream, Script, ScriptedUpstream};
use canary_testkit::proxy::ProxyProcess;

/// Long enough for anything on loopback; the tests wait for a condition, not for this.
const WAIT: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// A proxy in front of `upstream`, and a client connection to it (the proxy lives as long as
/// the first).
async fn proxy(upstream: &str) -> (ProxyProcess, RawConn) {
    let proxy = ProxyProcess::in_front_of(bin(), upstream, &[])
        .await
        .expect("proxy starts");
    let conn = RawConn::connect(proxy.addr).await.unwrap();
    (proxy, conn)
}

/// Reads until `bytes` holds `needle` `times` times, the connection closes, or `WAIT` passes.
async fn read_until(conn: &mut RawConn, needle: &str, times: usize) -> String {
    read_while(conn, |text| text.matches(needle).count() < times).await
}

/// Reads while `more` says so, until the connection closes, or `WAIT` passes.
async fn read_while(conn: &mut RawConn, more: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..50 {
        let reply = conn.read_responses(usize::MAX, WAIT / 50).await;
        text.push_str(&reply.text());
        if !more(&text) || reply.closed {
            break;
        }
    }
    text
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = RecordingUpstream::start().await;
    let (_proxy, mut conn) = proxy(&upstream.authority()).await;
    conn.send(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = conn.read_responses(4, WAIT).await;
    assert_eq!(reply.statuses(), [200, 200, 200, 200], "{}", reply.text());
    assert_eq!(upstream.paths(), ["/1", "/2", "/3", "/4"]);
    assert!(!reply.closed);
}

#[tokio::test]
async fn expect_100_continue_still_works_and_the_connection_goes_on() {
    let upstream = RecordingUpstream::start().await;
    let (_proxy, mut conn) = proxy(&upstream.authority()).await;
    conn.send(b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_responses(1, WAIT).await.statuses(), [200]);
    conn.send(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut conn, "100 Continue", 1).await;
    assert!(interim.contains("HTTP/1.1 100 Continue"), "{interim}");
    conn.send(b"hello").await.unwrap();
    conn.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = conn.read_responses(2, WAIT).await;
    assert_eq!(reply.statuses(), [200, 200], "{}", reply.text());
    assert_eq!(upstream.paths(), ["/before", "/up", "/after"]);
}

#[tokio::test]
async fn a_chunked_response_with_trailers_passes_and_the_connection_is_reused() {
    let upstream = ScriptedUpstream::start(Script::Reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let (_proxy, mut conn) = proxy(&upstream.authority()).await;
    for round in 1..=2 {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let text = read_until(&mut conn, "x-sum: 42\r\n\r\n", 1).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("hello") && text.contains(" world"), "{text}");
        assert!(
            text.ends_with("0\r\nx-sum: 42\r\n\r\n"),
            "round {round}: {text}"
        );
    }
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.reused(), 1);
}

#[tokio::test]
async fn head_204_and_304_have_no_body() {
    for (request, response) in [
        (
            &b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..],
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\ncontent-length: 10\r\n\r\n",
        ),
    ] {
        let upstream = ScriptedUpstream::start(Script::Reply(response.to_vec())).await;
        let (_proxy, mut conn) = proxy(&upstream.authority()).await;
        let status = &String::from_utf8_lossy(response)[..12];
        // Twice on one connection: a body read where there is none would swallow the second.
        conn.send(&[request, request].concat()).await.unwrap();
        let text = read_until(&mut conn, status, 2).await;
        assert_eq!(text.matches(status).count(), 2, "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert_eq!(upstream.connections(), 1, "{text}");
    }
}

#[tokio::test]
async fn a_response_with_both_lengths_gets_502_and_its_connection_is_dropped() {
    let upstream = ScriptedUpstream::start(Script::Reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let (_proxy, mut conn) = proxy(&upstream.authority()).await;
    for round in 1..=2 {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let reply = conn.read_responses(1, WAIT).await;
        assert_eq!(reply.statuses(), [502], "{}", reply.text());
        assert_eq!(upstream.connections(), round);
    }
    assert_eq!(upstream.reused(), 0);
}

#[tokio::test]
async fn a_head_split_across_many_reads_is_put_together() {
    let upstream = RecordingUpstream::start().await;
    let (_proxy, mut conn) = proxy(&upstream.authority()).await;
    let request = b"GET /split?q=1 HTTP/1.1\r\nHost: x\r\nX-Long: abcdefghij\r\n\r\n";
    for (i, piece) in request.chunks(3).enumerate() {
        conn.send(piece).await.unwrap();
        if i % 2 == 0 {
            // Lets the proxy read what has come so far, so the head arrives in many reads.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let reply = conn.read_responses(1, WAIT).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
    assert_eq!(upstream.paths(), ["/split?q=1"]);
    assert_eq!(
        upstream.last_headers().unwrap()["x-long"],
        "abcdefghij",
        "the head reached the upstream whole"
    );
}

#[tokio::test]
async fn a_connection_leaves_the_lean_path_mid_way_and_is_still_served() {
    let upstream = RecordingUpstream::start().await;
    let (_proxy, mut conn) = proxy(&upstream.authority()).await;
    conn.send(
        b"GET /lean HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /then HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = conn.read_responses(3, WAIT).await;
    assert_eq!(reply.statuses(), [200, 200, 200], "{}", reply.text());
    assert_eq!(upstream.paths(), ["/lean", "/chunked", "/then"]);
    let transcript = String::from_utf8_lossy(&upstream.transcript()).into_owned();
    assert!(transcript.contains("abc"), "{transcript}");
    // And an upgrade after a lean request goes to hyper, which tunnels or refuses it as before.
    conn.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let reply = conn.read_responses(1, WAIT).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
}
