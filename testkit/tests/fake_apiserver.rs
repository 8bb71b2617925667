//! The fake API server's wire protocol, checked byte by byte with a plain HTTP client: what
//! kube-rs and kubectl rely on (list versions, watch events, bookmarks, 410, preconditions).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use canary_testkit::fake_apiserver::FakeApiServer;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &HttpClient,
    api: &FakeApiServer,
    method: Method,
    path: &str,
    content_type: &str,
    body: Value,
) -> Response<Incoming> {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.url()))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("answer within 5 s")
        .expect("request")
}

async fn json_of(response: Response<Incoming>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// Reads a watch response line by line.
struct Lines {
    body: Incoming,
    buffer: BytesMut,
}

impl Lines {
    /// The next event, `None` when the stream ended or broke; panics after `limit`.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line = self.buffer.split_to(end + 1);
                    return Some(
                        serde_json::from_slice(&line).expect("each line is one JSON event"),
                    );
                }
                // A cut connection ends the stream as far as a watcher is concerned.
                let Ok(frame) = self.body.frame().await? else {
                    return None;
                };
                if let Ok(data) = frame.into_data() {
                    self.buffer.extend_from_slice(&data);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no watch event within {limit:?}"))
    }
}

async fn watch(client: &HttpClient, api: &FakeApiServer, query: &str) -> Lines {
    let response = send(
        client,
        api,
        Method::GET,
        &format!("{CMS}?watch=true&{query}"),
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(response.status(), 200);
    Lines {
        body: response.into_body(),
        buffer: BytesMut::new(),
    }
}

#[tokio::test]
async fn lists_and_watches_with_resource_versions_and_bookmarks() {
    let api = FakeApiServer::start().await;
    let client = http();
    let rv = api.create_configmap("default", "canary", &[("canary-weight", "5")]);
    api.create_configmap("default", "other", &[]);

    let (status, list) = json_of(
        send(
            &client,
            &api,
            Method::GET,
            &format!("{CMS}?fieldSelector=metadata.name%3Dcanary"),
            "",
            Value::Null,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(
        list["metadata"]["resourceVersion"], "2",
        "the collection's version, not the item's"
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["metadata"]["resourceVersion"], rv.as_str());

    let mut events = watch(
        &client,
        &api,
        "fieldSelector=metadata.name%3Dcanary&allowWatchBookmarks=true&timeoutSeconds=3",
    )
    .await;
    let added = events.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["data"]["canary-weight"].as_str()
        ),
        (Some("ADDED"), Some("5"))
    );

    api.patch_data("default", "canary", &[("canary-weight", "50")]);
    api.patch_data("default", "other", &[("x", "y")]);
    let modified = events.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["data"]["canary-weight"], "50");
    api.delete_configmap("default", "canary");
    let deleted = events.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(
        deleted["object"]["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );

    let bookmark = events.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );
    // timeoutSeconds=3 ends the stream (bookmarks may come first).
    loop {
        match events.next(Duration::from_secs(4)).await {
            None => break,
            Some(event) => assert_eq!(event["type"], "BOOKMARK"),
        }
    }
}

#[tokio::test]
async fn resumes_after_a_version_and_answers_410_once_compacted() {
    let api = FakeApiServer::start().await;
    let client = http();
    let first = api.create_configmap("default", "canary", &[("canary-weight", "5")]);
    let second = api.patch_data("default", "canary", &[("canary-weight", "6")]);
    api.patch_data("default", "canary", &[("canary-weight", "7")]);

    let mut events = watch(&client, &api, &format!("resourceVersion={first}")).await;
    for expected in ["6", "7"] {
        let event = events.next(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            (
                event["type"].as_str(),
                event["object"]["data"]["canary-weight"].as_str()
            ),
            (Some("MODIFIED"), Some(expected))
        );
    }
    assert_eq!(api.active_watches(), 1);

    // Compaction ends the open watch with an ERROR event carrying a 410 Status.
    api.expire_watches();
    let gone = events.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (gone["type"].as_str(), gone["object"]["code"].as_u64()),
        (Some("ERROR"), Some(410))
    );
    assert_eq!(gone["object"]["reason"], "Expired");
    assert!(events.next(Duration::from_secs(1)).await.is_none());

    // Resuming from any older version: 200, one ERROR 410, end.
    let mut events = watch(&client, &api, &format!("resourceVersion={second}")).await;
    let gone = events.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(gone["object"]["code"], 410);
    assert!(events.next(Duration::from_secs(1)).await.is_none());
}

#[tokio::test]
async fn patches_honour_resource_version_preconditions() {
    let api = FakeApiServer::start().await;
    let client = http();
    let rv = api.create_configmap("default", "canary", &[("canary-weight", "5")]);
    let path = format!("{CMS}/canary");
    let merge = "application/merge-patch+json";

    let body = json!({"metadata": {"resourceVersion": rv}, "data": {"canary-weight": "0"}});
    let (status, object) =
        json_of(send(&client, &api, Method::PATCH, &path, merge, body.clone()).await).await;
    assert_eq!(
        (status, object["data"]["canary-weight"].as_str()),
        (200, Some("0"))
    );

    let (status, conflict) =
        json_of(send(&client, &api, Method::PATCH, &path, merge, body).await).await;
    assert_eq!(
        (
            status,
            conflict["kind"].as_str(),
            conflict["reason"].as_str()
        ),
        (409, Some("Status"), Some("Conflict"))
    );

    let strategic =
        json!({"data": {"canary-weight": "9"}, "metadata": {"annotations": {"a": "b"}}});
    let (status, object) = json_of(
        send(
            &client,
            &api,
            Method::PATCH,
            &path,
            "application/strategic-merge-patch+json",
            strategic,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, object["metadata"]["annotations"]["a"].as_str()),
        (200, Some("b"))
    );

    let (status, _) = json_of(
        send(
            &client,
            &api,
            Method::PATCH,
            &path,
            "application/apply-patch+yaml",
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 415, "server-side apply is not served");
    let (status, invalid) = json_of(
        send(
            &client,
            &api,
            Method::PATCH,
            &path,
            merge,
            json!({"data": {"canary-weight": 50}}),
        )
        .await,
    )
    .await;
    assert_eq!((status, invalid["reason"].as_str()), (422, Some("Invalid")));

    // PUT with a stale version conflicts too; create of an existing name is AlreadyExists.
    let stale = json!({"metadata": {"name": "canary", "resourceVersion": rv}, "data": {}});
    let (status, _) =
        json_of(send(&client, &api, Method::PUT, &path, "application/json", stale).await).await;
    assert_eq!(status, 409);
    let (status, exists) = json_of(
        send(
            &client,
            &api,
            Method::POST,
            CMS,
            "application/json",
            json!({"metadata": {"name": "canary"}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, exists["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
}

#[tokio::test]
async fn stop_cuts_connections_and_restart_serves_the_same_objects_on_the_same_port() {
    let api = FakeApiServer::start().await;
    let rv = api.create_configmap("default", "canary", &[("canary-weight", "5")]);
    let addr = api.addr();
    let mut events = watch(&http(), &api, &format!("resourceVersion={rv}")).await;

    api.stop().await;
    assert!(!api.is_running());
    assert!(
        events.next(Duration::from_secs(1)).await.is_none(),
        "the watch stream is cut"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed"
    );

    api.restart().await;
    assert_eq!(api.addr(), addr);
    let (status, object) = json_of(
        send(
            &http(),
            &api,
            Method::GET,
            &format!("{CMS}/canary"),
            "",
            Value::Null,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, object["data"]["canary-weight"].as_str()),
        (200, Some("5"))
    );
}
