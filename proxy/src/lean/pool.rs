//! Idle upstream connections of the lean path: plain TCP streams kept per endpoint, per
//! worker thread. A request takes the most recently used one that is still open; a clean
//! response puts it back. A sweeper on each worker closes those idle past
//! `timeout.upstream-idle` and those of retired endpoints once a second, so an idle proxy does
//! not keep its upstream connections open for ever.
//!
//! No lock: every worker runs its own current-thread runtime (see [`crate::workers`]), so the
//! requests that use a thread's pool and the sweeper spawned from that thread all run on it.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::upstream::Upstream;

/// Idle connections kept per endpoint per thread.
const MAX_IDLE: usize = 256;
/// How often the sweeper looks.
const SWEEP: Duration = Duration::from_secs(1);

/// One endpoint's idle connections on one thread.
struct Idle {
    key: u64,
    /// The endpoint's retirement: its connections are closed once idle.
    retired: Arc<AtomicBool>,
    /// Connections and when each stops being trusted, oldest first.
    conns: Vec<(TcpStream, Instant)>,
}

thread_local! {
    /// This thread's idle connections.
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's sweeper runs (it stops with its runtime).
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// An idle connection to `upstream` that is still open, if there is one.
pub fn take(upstream: &Upstream) -> Option<TcpStream> {
    let key = upstream.pool_key();
    IDLE.with_borrow_mut(|idle| {
        let entry = idle.iter_mut().find(|e| e.key == key)?;
        if entry.retired.load(Relaxed) {
            entry.conns.clear();
            return None;
        }
        let now = Instant::now();
        // Most recently used first: the least likely to have been closed by the upstream.
        while let Some((stream, expires)) = entry.conns.pop() {
            if expires > now && still_open(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

/// Keeps `stream` to `upstream` for the next request, for at most `idle`.
pub fn put(upstream: &Upstream, stream: TcpStream, idle: Duration) {
    if upstream.retired_flag().load(Relaxed) {
        return;
    }
    let key = upstream.pool_key();
    let expires = Instant::now() + idle;
    IDLE.with_borrow_mut(|pool| {
        let entry = match pool.iter().position(|e| e.key == key) {
            Some(i) => &mut pool[i],
            None => {
                pool.push(Idle {
                    key,
                    retired: upstream.retired_flag().clone(),
                    conns: Vec::new(),
                });
                pool.last_mut().expect("just pushed")
            }
        };
        if entry.conns.len() >= MAX_IDLE {
            entry.conns.remove(0);
        }
        entry.conns.push((stream, expires));
    });
    if !SWEEPING.replace(true) {
        tokio::spawn(sweep());
    }
}

/// Whether an idle connection has neither been closed by the upstream nor sent anything
/// unasked. Reads only when the reactor has seen it readable: a live idle one costs no
/// system call.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Closes this thread's expired connections and those of retired endpoints, once a second,
/// for as long as the runtime runs.
async fn sweep() {
    /// Lets a later runtime on this thread start its own sweeper once this one's is gone.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            SWEEPING.set(false);
        }
    }
    let _running = Running;
    loop {
        tokio::time::sleep(SWEEP).await;
        let now = Instant::now();
        IDLE.with_borrow_mut(|idle| {
            for entry in idle.iter_mut() {
                if entry.retired.load(Relaxed) {
                    entry.conns.clear();
                } else {
                    entry
                        .conns
                        .retain(|(stream, expires)| *expires > now && still_open(stream));
                }
            }
            idle.retain(|e| !e.conns.is_empty());
        });
    }
}
