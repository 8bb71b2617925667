//! End-to-end: HTTP/2 clients' requests without a body go to HTTP/1.1 upstreams over the lean
//! path's raw connections (`lean::relay`): each response framing reaches the client decoded,
//! the connection is pooled again only after a clean end, a broken or ambiguous response is
//! a 502 or a broken stream counted against its color, a pooled connection closed under an
//! idempotent request is replayed, chunked trailers reach the client, and a request with a
//! body still goes through hyper's client.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use canary_testkit::client::HttpClient;
use canary_testkit::faulty::{RecordingUpstream, Script, ScriptedUpstream};
use canary_testkit::proxy::ProxyProcess;
use http::Request;
use http_body_util::Full;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// A proxy in front of `upstream`, and an h2c client to it.
async fn proxy(upstream: &str) -> (ProxyProcess, HttpClient) {
    let proxy = ProxyProcess::in_front_of(bin(), upstream, &[])
        .await
        .expect("proxy starts");
    let client = HttpClient::http2(proxy.addr);
    (proxy, client)
}

#[tokio::test]
async fn length_and_chunked_bodies_reach_an_h2_client_decoded_on_one_upstream_connection() {
    for (response, body) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"[..],
            &b"hello"[..],
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-a\r\nkeep-alive: timeout=5\r\nx-a: 1\r\n\
              content-length: 0\r\n\r\n",
            b"",
        ),
    ] {
        let upstream = ScriptedUpstream::start(Script::Reply(response.to_vec())).await;
        let (_proxy, client) = proxy(&upstream.authority()).await;
        let text = String::from_utf8_lossy(response).into_owned();
        for _ in 0..3 {
            let reply = client.get("/", &[]).await.unwrap();
            assert_eq!(reply.status, 200, "{text}");
            assert_eq!(reply.body, body, "{text}");
            assert_eq!(reply.headers.get("via").unwrap(), "1.1 canary-proxy");
            assert!(reply.headers.get("transfer-encoding").is_none());
            assert!(reply.headers.get("keep-alive").is_none());
            // Named in `Connection`: hop-by-hop, removed.
            let named = text.contains("connection: keep-alive, x-a");
            assert_eq!(reply.headers.contains_key("x-a"), !named, "{text}");
        }
        assert_eq!(upstream.connections(), 1, "{text}");
        assert_eq!(upstream.reused(), 2, "{text}");
    }
}

#[tokio::test]
async fn head_204_and_304_to_an_h2_client_have_no_body_and_keep_the_connection() {
    for (method, response) in [
        ("HEAD", &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..]),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (
            "GET",
            b"HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\ncontent-length: 10\r\n\r\n",
        ),
    ] {
        let upstream = ScriptedUpstream::start(Script::Reply(response.to_vec())).await;
        let (_proxy, client) = proxy(&upstream.authority()).await;
        for _ in 0..2 {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{}/", _proxy.addr))
                .body(Full::<Bytes>::default())
                .unwrap();
            let reply = client.send(req).await.unwrap();
            assert!(reply.body.is_empty(), "{method} {reply:?}");
        }
        // A body read where there is none would have broken the second exchange.
        assert_eq!(upstream.connections(), 1, "{method}");
    }
}

#[tokio::test]
async fn an_ambiguous_or_cut_response_is_a_failure_and_its_connection_is_not_reused() {
    let upstream = ScriptedUpstream::start(Script::Reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let (proxy, client) = proxy(&upstream.authority()).await;
    for round in 1..=2 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 502);
        assert_eq!(upstream.connections(), round);
    }
    // A chunked body the upstream resets mid-way: the client sees a broken stream.
    upstream.set_script(Script::ResetAfter(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec(),
    ));
    assert!(client.get("/", &[]).await.is_err());
    // And one whose framing is broken.
    upstream.set_script(Script::Reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
    ));
    assert!(client.get("/", &[]).await.is_err());
    assert_eq!(upstream.reused(), 0);
    let status = proxy.status().await;
    assert_eq!(status["colors"]["blue"]["failures"], 4, "{status:#}");
}

#[tokio::test]
async fn a_pooled_connection_closed_under_a_get_is_replayed_on_a_fresh_one() {
    let upstream = ScriptedUpstream::start(Script::CloseOnReuse).await;
    let (_proxy, client) = proxy(&upstream.authority()).await;
    for _ in 0..3 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
    }
    // The first, then twice a pooled one closed under the request and a fresh one.
    assert_eq!(upstream.connections(), 3);
    assert_eq!(upstream.requests(), 5);
}

#[tokio::test]
async fn a_request_with_a_body_still_goes_through_hyper() {
    let upstream = RecordingUpstream::start().await;
    let (proxy, client) = proxy(&upstream.authority()).await;
    let post = Request::post(format!("http://{}/up", proxy.addr))
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    assert_eq!(client.send(post).await.unwrap().status, 200);
    let transcript = String::from_utf8_lossy(&upstream.transcript()).into_owned();
    assert!(transcript.contains("abc"), "{transcript}");
}

#[tokio::test]
async fn chunked_trailers_reach_an_h2_client_in_pieces_and_a_grpc_status_counts() {
    let (head, pieces) = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
        vec![
            b"3\r\nabc\r\n0\r\nx-sum: ".to_vec(),
            b"42\r\ngrpc-status: 1".to_vec(),
            b"4\r\n\r\n".to_vec(),
        ],
    );
    let upstream = ScriptedUpstream::start(Script::Trickle(
        [vec![head], pieces].concat(),
        Duration::from_millis(20),
    ))
    .await;
    let (proxy, client) = proxy(&upstream.authority()).await;
    for _ in 0..2 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.body, "abc");
        let trailers = reply.trailers.expect("the upstream's trailers");
        assert_eq!(trailers["x-sum"], "42");
        assert_eq!(trailers["grpc-status"], "14");
    }
    assert_eq!(upstream.connections(), 1);
    // grpc-status 14 (unavailable) is a failure of its color.
    let status = proxy.status().await;
    assert_eq!(status["colors"]["blue"]["failures"], 2, "{status:#}");
}

#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_after_the_response_idle_timeout() {
    let upstream = ScriptedUpstream::start(Script::StallAfter(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(),
    ))
    .await;
    let proxy = ProxyProcess::in_front_of(
        bin(),
        &upstream.authority(),
        &[("timeout.response-idle", "300ms")],
    )
    .await
    .unwrap();
    let client = HttpClient::http2(proxy.addr);
    // The client's own limit is 10 s: the stream must be cut well before.
    assert!(client.get("/", &[]).await.is_err());
    let status = proxy.status().await;
    assert_eq!(status["colors"]["blue"]["failures"], 1, "{status:#}");
}
