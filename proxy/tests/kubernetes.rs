//! End-to-end: `canary-proxy --configmap` against a fake Kubernetes API server that speaks the
//! real list/watch/patch protocol, with two upstreams on loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use canary_testkit::client::HttpClient;
use canary_testkit::fake_apiserver::{ConfigMapSnapshot, FakeApiServer, Verb};
use canary_testkit::proxy::{ProxyProcess, Source};
use canary_testkit::upstream::TestUpstream;

/// The kubeconfig's namespace, so commands run exactly as docs/operating.md gives them.
const NS: &str = "default";
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
    upstreams: (TestUpstream, TestUpstream),
}

async fn cluster(keys: &[(&str, &str)]) -> Cluster {
    let (api, (blue, green)) = FakeApiServer::with_colors(NS, NAME, keys).await;
    let proxy = start(&api).await;
    wait_ready(&proxy).await;
    Cluster {
        api,
        proxy,
        upstreams: (blue, green),
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
        upstreams: _upstreams,
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
        upstreams: _upstreams,
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
    // Both running replicas refuse the same bad revision: one Event, counted twice.
    api.patch_data(NS, NAME, &[("canary-weight", "ninety")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rejected: Vec<_> = api
            .events()
            .into_iter()
            .filter(|e| e.reason == "ConfigRejected")
            .collect();
        if rejected.iter().any(|e| e.count == 2) {
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not merged: {rejected:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rolled_back = api
        .events()
        .into_iter()
        .filter(|e| e.reason == "CanaryRolledBack")
        .count();
    assert_eq!(
        rolled_back, 1,
        "only the write that took effect is recorded"
    );
}

#[tokio::test]
async fn kubectl_patch_drives_the_weight_as_a_user_would() {
    let Cluster {
        api,
        proxy,
        upstreams: _upstreams,
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

/// Keys of the lifecycle tests: half the weighted traffic to green, a rollback after 5
/// failures in a row, and a header that reaches the canary at will.
const CANARY: [(&str, &str); 3] = [
    ("canary-weight", "50"),
    ("rollback.min-requests", "5"),
    ("canary-by-header", "x-canary"),
];

/// Sends weighted requests until the proxy has rolled the (failing) canary back.
async fn trip(proxy: &ProxyProcess) {
    let client = proxy.client();
    for _ in 0..200 {
        if proxy.status().await["rollback"]["rolled_back"] == true {
            return;
        }
        client.get("/", &[]).await.expect("a response");
    }
    panic!("no rollback after 200 requests");
}

/// Waits until the ConfigMap records a rollback of green, and returns it.
async fn recorded(api: &FakeApiServer, limit: Duration) -> ConfigMapSnapshot {
    let deadline = Instant::now() + limit;
    loop {
        let cm = api.configmap(NS, NAME).expect("the ConfigMap exists");
        if cm.annotations.get("canary-proxy/rolled-back-canary") == Some(&"green".to_owned()) {
            return cm;
        }
        assert!(Instant::now() < deadline, "not recorded: {cm:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every request, with or without the header override, is served by `color`.
async fn all_served_by(proxy: &ProxyProcess, color: &str) {
    let client = proxy.client();
    for headers in [&[][..], &[("x-canary", "always")][..]] {
        for _ in 0..20 {
            let reply = client.get("/", headers).await.unwrap();
            assert_eq!((reply.status.as_u16(), reply.color()), (200, color));
        }
    }
}

/// Runs `kubectl` with these arguments against the fake API server; its stdout.
async fn kubectl(api: &FakeApiServer, args: &[String]) -> String {
    api.run_kubectl(args).await.expect("kubectl is installed")
}

/// The command lines of docs/operating.md's code blocks that start with `prefix`, in order,
/// `\` continuations joined, each split into words as a shell would.
fn documented_commands(prefix: &str) -> Vec<Vec<String>> {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operating.md"))
            .expect("read docs/operating.md");
    docs.replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with(prefix))
        .map(shell_words)
        .collect()
}

/// Runs the command docs/operating.md gives that starts with `prefix`, word for word (the
/// first such line), as a user would paste it.
async fn documented(api: &FakeApiServer, prefix: &str) -> String {
    let commands = documented_commands(prefix);
    let words = commands
        .first()
        .unwrap_or_else(|| panic!("docs/operating.md gives no command starting {prefix:?}"));
    assert_eq!(words[0], "kubectl", "{words:?}");
    kubectl(api, &words[1..]).await
}

/// Splits a command line as a POSIX shell does for what the docs use: blanks, and single
/// or double quotes without escapes inside; a `#` word starts a comment.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, started) = (Some(c), true),
            (None, '#') if !started => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => (word.push(c), started = true).1,
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[tokio::test]
async fn a_gitops_reapply_after_a_rollback_does_not_reenable_the_canary() {
    let Cluster {
        api,
        proxy,
        upstreams: (blue, green),
    } = cluster(&CANARY).await;
    // The ConfigMap as a GitOps tool keeps it: the manifest in git, applied with kubectl.
    let dir = tempfile::tempdir().unwrap();
    let manifest = |green_upstream: &str| {
        let mut text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {NAME}\n  namespace: {NS}\ndata:\n  \
             blue.upstream: \"{}\"\n  green.upstream: \"{green_upstream}\"\n",
            blue.authority()
        );
        for (key, value) in CANARY {
            text.push_str(&format!("  {key}: \"{value}\"\n"));
        }
        let path = dir.path().join("configmap.yaml");
        std::fs::write(&path, text).unwrap();
        // The fake serves no OpenAPI documents for kubectl's client-side schema check (a GitOps
        // controller does not run that check either); the apply itself is kubectl's own.
        vec![
            "apply".to_owned(),
            "--validate=false".to_owned(),
            "-f".to_owned(),
            path.display().to_string(),
        ]
    };
    kubectl(&api, &manifest(&green.authority())).await;

    green.set_status(500);
    trip(&proxy).await;
    let written = recorded(&api, Duration::from_secs(5)).await;
    assert_eq!(written.data["canary-weight"], "0");
    assert_eq!(
        written.annotations["canary-proxy/rolled-back-upstream"],
        green.authority()
    );

    // The sync (or self-heal) puts the weight from git back; the rollback stays.
    let out = kubectl(&api, &manifest(&green.authority())).await;
    assert!(out.contains("configured"), "{out}");
    let synced = api.configmap(NS, NAME).unwrap();
    assert_eq!(synced.data["canary-weight"], "50");
    assert_eq!(synced.annotations, written.annotations, "the record stays");
    let status = proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["revision"] == synced.resource_version.as_str()
        })
        .await
        .expect("the sync is applied");
    assert_eq!(status["rollback"]["rolled_back"], true, "{status}");
    all_served_by(&proxy, "blue").await;
    // A new replica (an HPA scale-up) agrees, and nothing loops: no second write.
    let scaled = start(&api).await;
    wait_ready(&scaled).await;
    assert_eq!(scaled.status().await["rollback"]["rolled_back"], true);
    all_served_by(&scaled, "blue").await;
    assert_eq!(api.configmap(NS, NAME).unwrap(), synced);

    // A new release in git (another canary upstream) is a new canary: the record is cleared.
    let release = TestUpstream::start("green").await;
    kubectl(&api, &manifest(&release.authority())).await;
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["rollback"]["rolled_back"] == false
        })
        .await
        .expect("the new canary is not rolled back");
    let deadline = Instant::now() + Duration::from_secs(5);
    while api
        .configmap(NS, NAME)
        .unwrap()
        .annotations
        .keys()
        .any(|k| k.starts_with("canary-proxy/"))
    {
        assert!(
            Instant::now() < deadline,
            "the stale record is not cleared: {:?}\n{:#?}",
            api.configmap(NS, NAME),
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = proxy
        .client()
        .get("/", &[("x-canary", "always")])
        .await
        .unwrap();
    assert_eq!((reply.status.as_u16(), reply.color()), (200, "green"));
    assert_eq!(release.served(), 1);
}

#[tokio::test]
async fn a_documented_resume_clears_the_record_and_a_later_promotion_does_not_revive_it() {
    let Cluster {
        api,
        proxy,
        upstreams: (_blue, green),
    } = cluster(&CANARY).await;
    green.set_status(500);
    trip(&proxy).await;
    recorded(&api, Duration::from_secs(5)).await;

    // Fixed; resumed with the commands of docs/operating.md.
    green.set_status(200);
    documented(
        &api,
        "kubectl annotate configmap canary-proxy canary-proxy/rolled-back-at-",
    )
    .await;
    documented(
        &api,
        r#"kubectl patch configmap canary-proxy --type merge -p '{"data":{"canary-weight":"5"}}'"#,
    )
    .await;
    let resumed = api.configmap(NS, NAME).unwrap();
    assert!(resumed.annotations.is_empty(), "{:?}", resumed.annotations);
    proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["revision"] == resumed.resource_version.as_str()
                && s["rollback"]["rolled_back"] == false
        })
        .await
        .expect("resumed");
    let reply = proxy
        .client()
        .get("/", &[("x-canary", "always")])
        .await
        .unwrap();
    assert_eq!(reply.color(), "green");

    // Promoted as documented: blue is the next release's canary, and its header test works.
    documented(
        &api,
        r#"kubectl patch configmap canary-proxy --type merge -p '{"data":{"stable":"green","canary-weight":"0"}}'"#,
    )
    .await;
    let status = proxy
        .wait_status(Duration::from_secs(5), |s| s["stable"] == "green")
        .await
        .expect("promoted");
    assert_eq!(status["rollback"]["rolled_back"], false, "{status}");
    let reply = proxy
        .client()
        .get("/", &[("x-canary", "always")])
        .await
        .unwrap();
    assert_eq!((reply.status.as_u16(), reply.color()), (200, "blue"));
    assert_eq!(proxy.client().get("/", &[]).await.unwrap().color(), "green");

    // `kubectl describe` as documented: one Event, from the write that took effect.
    let described = documented(&api, "kubectl describe configmap canary-proxy").await;
    assert!(described.contains("CanaryRolledBack"), "{described}");
    let rolled: Vec<_> = api
        .events()
        .into_iter()
        .filter(|e| e.reason == "CanaryRolledBack")
        .collect();
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert_eq!(rolled[0].count, 1);
}

#[tokio::test]
async fn a_rollback_during_an_api_outage_reaches_the_configmap_when_it_returns() {
    let Cluster {
        api,
        proxy,
        upstreams: (_blue, green),
    } = cluster(&CANARY).await;
    api.stop().await;
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["source_state"].as_str().unwrap().contains("unreachable")
        })
        .await
        .expect("the outage is seen");
    green.set_status(500);
    trip(&proxy).await;

    // Back, and someone edits an unrelated key before the pending write gets through.
    api.restart().await;
    let edit = api.patch_data(NS, NAME, &[("timeout.connect", "2s")]);
    let written = recorded(&api, Duration::from_secs(20)).await;
    assert_eq!(written.data["canary-weight"], "0");
    assert_eq!(written.data["timeout.connect"], "2s", "the edit survives");
    assert_ne!(
        written.resource_version, edit,
        "recorded on top of the edit"
    );
    let status = proxy
        .wait_status(Duration::from_secs(5), |s| {
            s["revision"] == written.resource_version.as_str()
        })
        .await
        .expect("the record is applied");
    assert_eq!(status["rollback"]["rolled_back"], true, "{status}");
    all_served_by(&proxy, "blue").await;
}

#[tokio::test]
async fn a_refused_watch_is_shown_on_status_and_does_not_hammer_the_api_server() {
    let Cluster {
        api,
        proxy,
        upstreams: _upstreams,
    } = cluster(&[]).await;
    let lists = || {
        api.requests()
            .iter()
            .filter(|r| r.verb == Verb::List)
            .count()
    };
    // A Role edit drops `watch` but keeps `list`; the next watch request is refused.
    api.fail_next(Verb::Watch, 403, 1000);
    let before = lists();
    let since = Instant::now();
    api.expire_watches();
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["source_state"]
                .as_str()
                .unwrap()
                .contains("listed but not watched")
        })
        .await
        .expect("shown on /status");
    assert_eq!(
        proxy.metric("canary_proxy_config_source_connected").await,
        Some(0.0)
    );
    let listed = lists() - before;
    // Backoff 0.8 s, 1.6 s, .. (jittered): a handful of lists, not thousands.
    assert!(
        listed <= 2 + since.elapsed().as_secs() as usize,
        "{listed} lists in {:?}",
        since.elapsed()
    );
    assert_eq!(proxy.admin_get("/readyz").await.unwrap().0, 200);
}

/// One of the article's Ingresses: every host, path `/`, to `service`.
fn article_ingress(name: &str, service: &str, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{ "hosts": ["app.example.com"], "secretName": "app-tls" }],
            "rules": [{ "http": { "paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": { "service": { "name": service, "port": { "number": 80 } } },
            }] } }],
        },
    })
}

#[tokio::test]
async fn the_documented_ingress_switch_keeps_the_stable_ingress_and_retires_the_canary() {
    let api = FakeApiServer::start().await;
    let stable = api.create_object(
        "ingresses",
        NS,
        article_ingress(
            "bluegreen-ingress-stable",
            "bluegreen-service-blue",
            serde_json::json!({ "nginx.ingress.kubernetes.io/proxy-body-size": "8m" }),
        ),
    );
    api.create_object(
        "ingresses",
        NS,
        article_ingress(
            "bluegreen-ingress-canary",
            "bluegreen-service-green",
            serde_json::json!({
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": "5",
            }),
        ),
    );
    // The old way, a second Ingress for the same host and path, is refused as ingress-nginx's
    // webhook refuses it.
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../k8s/ingress.yaml");
    let second = api
        .kubectl()
        .args(["apply", "--validate=false", "-f", file])
        .output()
        .await
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("is already defined in ingress"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let rules = documented(
        &api,
        "kubectl get ingress bluegreen-ingress-stable -o jsonpath",
    )
    .await;
    assert_eq!(rules, " / -> bluegreen-service-blue\n");
    let out = documented(&api, "kubectl patch ingress bluegreen-ingress-stable").await;
    assert!(out.contains("patched"), "{out}");
    let out = documented(&api, "kubectl delete ingress bluegreen-ingress-canary").await;
    assert!(out.contains("deleted"), "{out}");

    let switched = api
        .object("ingresses", NS, "bluegreen-ingress-stable")
        .unwrap();
    let backend = &switched["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(
        backend,
        &serde_json::json!({ "name": "canary-proxy", "port": { "name": "http" } })
    );
    for kept in [
        "/metadata/annotations",
        "/spec/tls",
        "/spec/ingressClassName",
    ] {
        assert_eq!(
            switched.pointer(kept),
            stable.pointer(kept),
            "{kept} changed"
        );
    }
    assert!(
        api.object("ingresses", NS, "bluegreen-ingress-canary")
            .is_none()
    );
    // The patch checks what it replaces: run again, it refuses rather than guess.
    let again = api
        .kubectl()
        .args(shell_words(
            r#"patch ingress bluegreen-ingress-stable --type json -p '[{"op":"test","path":"/spec/rules/0/http/paths/0/backend/service/name","value":"bluegreen-service-blue"}]'"#,
        ))
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
}

#[tokio::test]
async fn every_documented_configmap_edit_works_as_the_docs_say() {
    let Cluster {
        api,
        proxy,
        upstreams: _upstreams,
    } = cluster(&[]).await;
    let mut commands = documented_commands("kubectl patch configmap canary-proxy");
    commands.extend(documented_commands(
        "kubectl annotate configmap canary-proxy",
    ));
    commands.dedup();
    assert!(commands.len() >= 10, "{commands:#?}");
    for words in commands {
        let before = api.configmap(NS, NAME).unwrap();
        kubectl(&api, &words[1..]).await;
        let after = api.configmap(NS, NAME).unwrap();
        // The watch reports changes of the data and of our annotations only.
        let ours = |cm: &ConfigMapSnapshot| {
            let mut annotations = cm.annotations.clone();
            annotations.retain(|k, _| k.starts_with("canary-proxy/"));
            (cm.data.clone(), annotations)
        };
        if ours(&after) == ours(&before) {
            continue;
        }
        // The docs show two bad edits (a typo, a weight above the total): refused by the proxy
        // here (the fake runs no admission policy), applied otherwise.
        let refused = after.data.contains_key("canary-wieght")
            || after.data.get("canary-weight").is_some_and(|w| w == "150");
        let status = proxy
            .wait_status(Duration::from_secs(5), |s| {
                s["revision"] == after.resource_version.as_str()
                    || (refused && !s["last_config_error"].is_null())
            })
            .await
            .unwrap_or_else(|e| panic!("{words:?} not taken up: {e}"));
        assert_eq!(
            status["last_config_error"].is_null(),
            !refused,
            "{words:?}: {status}"
        );
        if refused {
            // Undo it, as the docs' next command would, so the next edit is judged on its own.
            let good: Vec<(&str, &str)> = before
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            api.set_data(NS, NAME, &good);
        }
    }
}
