//! Idle upstream connections of the lean path: plain TCP streams kept per endpoint, in a
//! shard per worker thread. A request takes the most recently used one that is still open;
//! a clean response puts it back. A sweeper closes those idle past `timeout.upstream-idle`
//! and those of retired endpoints once a second, so an idle proxy does not keep its upstream
//! connections open for ever.
//!
//! Each shard has a mutex, taken by its own thread on the request path and by the sweeper
//! once a second: it is never contended between requests, so it costs two uncontended
//! atomic operations, not a wait.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::upstream::Upstream;

/// Idle connections kept per endpoint per thread.
const MAX_IDLE: usize = 256;
/// How often the sweeper looks.
const SWEEP: Duration = Duration::from_secs(1);

/// One endpoint's idle connections in one shard.
struct Idle {
    key: u64,
    /// The endpoint's retirement: its connections are closed once idle.
    retired: Arc<AtomicBool>,
    /// Connections and when each stops being trusted, oldest first.
    conns: Vec<(TcpStream, Instant)>,
}

/// One thread's idle connections.
#[derive(Default)]
struct Shard {
    idle: Mutex<Vec<Idle>>,
}

/// Every shard, for the sweeper.
static SHARDS: Mutex<Vec<Weak<Shard>>> = Mutex::new(Vec::new());
/// Whether a sweeper runs (it stops with its runtime).
static SWEEPING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static SHARD: OnceCell<Arc<Shard>> = const { OnceCell::new() };
}

fn with_shard<T>(f: impl FnOnce(&mut Vec<Idle>) -> T) -> T {
    SHARD.with(|cell| {
        let shard = cell.get_or_init(|| {
            let shard = Arc::new(Shard::default());
            let mut all = SHARDS.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|s| s.strong_count() > 0);
            all.push(Arc::downgrade(&shard));
            shard
        });
        f(&mut shard.idle.lock().unwrap_or_else(|e| e.into_inner()))
    })
}

/// An idle connection to `upstream` that is still open, if there is one.
pub fn take(upstream: &Upstream) -> Option<TcpStream> {
    let key = upstream.pool_key();
    with_shard(|idle| {
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
    with_shard(|shard| {
        let entry = match shard.iter().position(|e| e.key == key) {
            Some(i) => &mut shard[i],
            None => {
                shard.push(Idle {
                    key,
                    retired: upstream.retired_flag().clone(),
                    conns: Vec::new(),
                });
                shard.last_mut().expect("just pushed")
            }
        };
        if entry.conns.len() >= MAX_IDLE {
            entry.conns.remove(0);
        }
        entry.conns.push((stream, expires));
    });
    if !SWEEPING.swap(true, Relaxed) {
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

/// Closes expired connections and those of retired endpoints, once a second, for as long as
/// the runtime runs.
async fn sweep() {
    /// Lets a later runtime start its own sweeper once this one's is gone.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            SWEEPING.store(false, Relaxed);
        }
    }
    let _running = Running;
    loop {
        tokio::time::sleep(SWEEP).await;
        let shards: Vec<Arc<Shard>> = SHARDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let now = Instant::now();
        for shard in shards {
            let mut idle = shard.idle.lock().unwrap_or_else(|e| e.into_inner());
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
        }
    }
}
