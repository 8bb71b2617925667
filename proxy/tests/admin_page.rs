//! End-to-end: the admin `/` page, loaded by headless Chromium from the real proxy under
//! traffic, renders its figures and charts, and then shows a rollback.
//!
//! Needs Debian's `chromium` (or the browser named by `CHROMIUM`). Chromium runs with a virtual
//! time budget: the page's one-second polls happen back to back in real time, while traffic
//! keeps flowing. Set `CANARY_ADMIN_SCREENSHOT=path.png` to keep a copy of the screenshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use canary_testkit::proxy::ProxyProcess;
use canary_testkit::upstream::TestUpstream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_canary-proxy"))
}

/// The browser: `CHROMIUM`, else the first of Debian's and others' names on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
        .expect("headless Chromium is needed: apt-get install -y chromium (or set CHROMIUM)")
}

/// Runs headless Chromium on `url` with `output` (`--dump-dom` or `--screenshot=...`) after
/// `budget_ms` of virtual time; returns its stdout.
async fn browse(url: &str, output: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let run = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,960",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(output)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("DOM is UTF-8")
}

/// Sequential requests through the proxy until `stop` is set (bounded at 60 s), so the
/// counters move while the page polls.
fn traffic(proxy: &ProxyProcess, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let client = proxy.client();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if client.get("/", &[]).await.is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

/// The opening tag and the text right after it of the element with `id`.
fn element<'d>(dom: &'d str, id: &str) -> (&'d str, &'d str) {
    let at = dom
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the page"));
    let start = dom[..at].rfind('<').expect("tag start");
    let end = at + dom[at..].find('>').expect("tag end") + 1;
    let text = &dom[end..];
    (
        &dom[start..end],
        &text[..text.find('<').unwrap_or(text.len())],
    )
}

fn text<'d>(dom: &'d str, id: &str) -> &'d str {
    element(dom, id).1.trim()
}

fn attr<'d>(dom: &'d str, id: &str, name: &str) -> &'d str {
    let tag = element(dom, id).0;
    let key = format!(" {name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("#{id} has no {name}: {tag}"))
        + key.len();
    &tag[at..at + tag[at..].find('"').expect("closing quote")]
}

/// Every chart has a line through at least `min` samples.
fn assert_charts(dom: &str, min: usize) {
    for kind in ["rate", "fail", "p99"] {
        for color in ["blue", "green"] {
            let chart = format!("chart-{kind}-{color}");
            let points: usize = attr(dom, &chart, "data-points").parse().expect("a count");
            assert!(points >= min, "#{chart} drew {points} points");
            let line = attr(dom, &format!("{chart}-line"), "d");
            assert!(
                line.starts_with('M') && line.matches('L').count() + 1 >= min,
                "#{chart} line is {line:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_renders_live_state_and_a_rollback() {
    let (blue, green) = (
        TestUpstream::start("blue").await,
        TestUpstream::start("green").await,
    );
    green.set_delay(Duration::from_millis(2));
    let (b, g) = (blue.authority(), green.authority());
    let proxy = ProxyProcess::start(
        bin(),
        &[
            ("blue.upstream", &b),
            ("green.upstream", &g),
            ("canary-weight", "30"),
            ("rollback.min-requests", "20"),
        ],
    )
    .await
    .unwrap();
    let url = format!("http://{}/", proxy.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&proxy, stop.clone());
    proxy
        .wait_status(Duration::from_secs(20), |s| {
            s["colors"]["green"]["requests"].as_u64() >= Some(20)
        })
        .await
        .expect("traffic reaches both colors");

    let dom = browse(&url, "--dump-dom", 8000).await;
    assert_eq!(
        attr(&dom, "connection", "class"),
        "pill ok",
        "the page reached /status"
    );
    assert!(attr(&dom, "page", "data-samples").parse::<u32>().unwrap() >= 5);
    assert_eq!(text(&dom, "stable-color"), "blue");
    assert_eq!(text(&dom, "canary-color"), "green");
    assert_eq!(text(&dom, "configured-weight"), "30 / 100 (30 %) to green");
    assert_eq!(text(&dom, "effective-weight-blue"), "70 %");
    assert_eq!(text(&dom, "effective-weight-green"), "30 %");
    assert_eq!(attr(&dom, "rollback-state", "data-verdict"), "healthy");
    for color in ["blue", "green"] {
        let requests: u64 = text(&dom, &format!("requests-{color}")).parse().unwrap();
        assert!(requests > 0, "{color} shows no window requests");
        assert!(text(&dom, &format!("p99-{color}")).ends_with(" ms"));
        assert!(text(&dom, &format!("rate-{color}")).ends_with("/s"));
        assert_eq!(
            text(&dom, &format!("role-{color}")),
            if color == "blue" { "stable" } else { "canary" }
        );
    }
    assert!(
        element(&dom, "config-error").0.contains(" hidden"),
        "no config error shown"
    );
    assert_charts(&dom, 3);

    // A rejected edit first (the last good config keeps serving), then a failing canary.
    proxy.write_config_text("blue.upstream: [not a string map\n");
    proxy
        .wait_status(Duration::from_secs(20), |s| {
            !s["last_config_error"].is_null()
        })
        .await
        .expect("the broken config is reported");
    green.set_status(500);
    let status = proxy
        .wait_status(Duration::from_secs(20), |s| {
            s["rollback"]["rolled_back"] == true
        })
        .await
        .expect("the failing canary is rolled back");

    let dom = browse(&url, "--dump-dom", 5000).await;
    assert_eq!(attr(&dom, "rollback-state", "data-verdict"), "rolled_back");
    assert_eq!(text(&dom, "rollback-state"), "rolled back");
    assert_eq!(
        text(&dom, "rollback-reason"),
        status["rollback"]["reason"].as_str().unwrap()
    );
    assert!(text(&dom, "rollback-when").starts_with("green at "));
    assert_eq!(text(&dom, "effective-weight-green"), "0.0 %");
    assert!(
        !element(&dom, "config-error").0.contains(" hidden"),
        "the config error is shown"
    );
    assert!(!text(&dom, "config-error-message").is_empty());
    assert_charts(&dom, 3);

    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("admin-page.png");
    browse(&url, &format!("--screenshot={}", png.display()), 8000).await;
    let bytes = std::fs::read(&png).expect("a screenshot was written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("CANARY_ADMIN_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("copy the screenshot");
    }

    stop.store(true, Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_the_step_plan() {
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
            ("canary-weight", "10"),
            ("progressive.steps", "10,50,100"),
            ("progressive.step-min-duration", "1h"),
        ],
    )
    .await
    .unwrap();
    proxy
        .wait_status(Duration::from_secs(10), |s| {
            s["progressive"]["seconds_at_step"].is_number()
        })
        .await
        .expect("the plan runs");
    let dom = browse(&format!("http://{}/", proxy.admin), "--dump-dom", 4000).await;
    assert_eq!(text(&dom, "plan-steps"), "[10] → 50 → 100 → promote");
    assert_eq!(text(&dom, "plan-state"), "stepping");
    assert!(
        text(&dom, "plan-next").starts_with("next: 50, in "),
        "{}",
        text(&dom, "plan-next")
    );
    assert!(
        text(&dom, "plan-evidence").contains("failure evidence 0.0 of 4.6"),
        "{}",
        text(&dom, "plan-evidence")
    );
}
