//! Helpers shared by the integration tests: the real binary as a child process, and a tiny
//! blocking HTTP/1.1 client for the admin paths.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_canary-bench");

/// A child process killed when the test lets go of it, pass or fail.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `canary-bench upstream` on a free loopback port and returns it with its address.
pub fn spawn_upstream(color: &str) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "upstream",
            "--listen",
            "127.0.0.1:0",
            "--color",
            color,
            "--workers",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start canary-bench upstream");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the upstream prints its address");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (guard, addr)
}

/// One HTTP/1.1 exchange on a fresh connection; returns the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The upstream's own count of requests it answered, from `GET /stats`.
pub fn served(addr: SocketAddr) -> (u64, u64) {
    let (status, body) = http(addr, "GET", "/stats", "");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
    (
        stats["served"].as_u64().expect("served"),
        stats["errors"].as_u64().expect("errors"),
    )
}

/// Runs the binary to completion with `args` and returns its output, failing on a bad exit.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("run canary-bench");
    assert!(
        output.status.success(),
        "canary-bench {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `canary-bench ARGS` with the real canary-proxy next to it, stdout to a file, until it
/// exits or `deadline` passes; returns its status and stdout.
pub fn run_with_proxy(
    args: &[&std::ffi::OsStr],
    deadline: Duration,
) -> (std::process::ExitStatus, String) {
    let proxy = std::path::Path::new(BIN).with_file_name("canary-proxy");
    assert!(
        proxy.is_file(),
        "{} is missing: build it with `cargo build -p canary-proxy` before this test",
        proxy.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout_path = dir.path().join("stdout");
    let child = Command::new(BIN)
        .args(args)
        .env_remove("CANARY_BENCH_PROXY_BIN")
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start canary-bench");
    let mut child = ChildGuard(child);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for canary-bench") {
            break status;
        }
        assert!(
            started.elapsed() < deadline,
            "canary-bench {args:?} ran over {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("canary-bench output");
    (status, stdout)
}
