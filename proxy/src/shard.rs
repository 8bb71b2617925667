//! Which per-thread shard the calling thread writes its counters to. Counters written on every
//! response live in shards on cache lines of their own, so that two workers never write the
//! same line; readers sum the shards.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Shards; threads are spread over them round robin.
pub const SHARDS: usize = 16;

/// The calling thread's shard, in `0..SHARDS`.
pub fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}
