//! How an endpoint outlives the requests it serves without a reference count that every worker
//! writes. A snapshot holds each endpoint through one [`Anchor`] (shared by the snapshots that
//! list it); a request holds a [`Ticket`], which counts it in flight in its thread's shard of the
//! endpoint, a cache line no other worker writes (see [`crate::shard`]). Those counts are the
//! reference count: when the anchor goes, no snapshot lists the endpoint any more, so no request
//! can start there; each shard is then closed and its count moved to one shared count, which
//! the tickets still out count down, the last one freeing the endpoint. This is the Linux
//! kernel's `percpu_ref`, with the snapshots' own reference count in place of its grace period:
//! a request starts only while its thread holds a snapshot listing the endpoint.

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};

use super::Endpoint;
use crate::shard;

/// Set in a shard's count once its endpoint has no anchor: the tickets of that shard count
/// down the shared count from then on.
const CLOSED: u64 = 1 << 63;

/// What the shared count starts at: far above any number of requests in flight, so that the
/// tickets counting it down while the shards are being closed cannot bring it to 0.
pub const BIAS: u64 = 1 << 62;

/// The snapshots' hold on one endpoint: it lives at least as long as this.
pub struct Anchor(NonNull<Endpoint>);

// SAFETY: an anchor only hands out shared references to an `Endpoint`, which is `Send + Sync`.
unsafe impl Send for Anchor {}
// SAFETY: as above.
unsafe impl Sync for Anchor {}

impl Anchor {
    /// Anchors `endpoint`.
    pub fn new(endpoint: Endpoint) -> Anchor {
        Anchor(NonNull::from(Box::leak(Box::new(endpoint))))
    }

    /// Starts a request at the endpoint: counted in flight in the calling thread's shard until
    /// the ticket is dropped.
    pub fn start(&self) -> Ticket {
        let shard = shard::index();
        // Relaxed: the anchor is alive here, so the count is not closed, and its closing
        // happens after this thread lets go of the snapshot that lists it.
        self.slots[shard].in_flight.fetch_add(1, Relaxed);
        Ticket {
            endpoint: self.0,
            shard,
        }
    }
}

impl Deref for Anchor {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        // SAFETY: the endpoint is freed only once its anchor is gone (see `Drop`).
        unsafe { self.0.as_ref() }
    }
}

impl fmt::Debug for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let open: u64 = self
            .slots
            .iter()
            .map(|slot| slot.in_flight.fetch_or(CLOSED, AcqRel) & !CLOSED)
            .sum();
        // The shared count held BIAS less the tickets of closed shards dropped since: with BIAS
        // exchanged for the tickets the shards held, it is the tickets still out.
        let settle = BIAS - open;
        let left = self.orphaned.fetch_sub(settle, AcqRel).wrapping_sub(settle);
        if left == 0 {
            // SAFETY: no snapshot lists it and no ticket is out: nothing can reach it.
            unsafe { free(self.0) }
        }
    }
}

/// One request's hold on the endpoint it went to, counting it in flight there.
pub struct Ticket {
    endpoint: NonNull<Endpoint>,
    /// The shard it is counted in.
    shard: usize,
}

// SAFETY: a ticket only hands out shared references to an `Endpoint`, which is `Send + Sync`.
unsafe impl Send for Ticket {}
// SAFETY: as above.
unsafe impl Sync for Ticket {}

impl Ticket {
    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        // SAFETY: the endpoint is freed only once every ticket is gone (see `Drop`).
        unsafe { self.endpoint.as_ref() }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("endpoint", &self.endpoint().upstream.addr)
            .field("shard", &self.shard)
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let endpoint = self.endpoint.as_ptr();
        // Through raw pointers, not references: once the shard's count is down, another thread
        // may free the endpoint. Release: this request's uses of it come before the free.
        // SAFETY: the endpoint is alive until this ticket is counted out.
        let before = unsafe {
            (*endpoint).slots[self.shard]
                .in_flight
                .fetch_sub(1, Release)
        };
        if before & CLOSED == 0 {
            return;
        }
        // SAFETY: a closed shard's tickets are counted in the shared count, which keeps the
        // endpoint alive until this one is counted out of it.
        let last = unsafe { (*endpoint).orphaned.fetch_sub(1, AcqRel) } == 1;
        if last {
            // SAFETY: the anchor is gone and this was the last ticket.
            unsafe { free(self.endpoint) }
        }
    }
}

/// Frees an endpoint made by [`Anchor::new`].
///
/// # Safety
///
/// Nothing may use `endpoint` afterwards.
unsafe fn free(endpoint: NonNull<Endpoint>) {
    // SAFETY: made by `Box::leak` in `Anchor::new`, freed once (the caller's promise).
    drop(unsafe { Box::from_raw(endpoint.as_ptr()) });
}
