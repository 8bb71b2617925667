//! Idle client connections without a task. A kept-alive connection that has waited
//! [`PARK_AFTER`] for its next request gives up its task, its buffers and its registration with
//! the runtime's reactor: its socket goes into the worker's park, an epoll set of the park's
//! own watched by one task, with only what it takes to serve it again (the client's address) and
//! to close it (its idle deadline). When the client sends again, or closes, the socket is taken
//! out and served by a new task as a new connection is; at its idle deadline, or at shutdown, it
//! is closed.
//!
//! Most of an ingress's client connections are idle most of the time, and a task with its
//! reactor registration is where an idle connection's memory went (about 1 KiB, against
//! NGINX's half); parked, one costs its slot here and its place in the deadline order. The
//! wait before parking keeps the cost of parking (two `epoll_ctl` calls to park, two and a task
//! to wake) off connections that are busy.

use std::collections::BTreeSet;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::headers::Scheme;
use crate::listener::{ClientConn, Drain, Limits, Phase, client_idle};
use crate::runtime::Runtime;

/// How long a kept-alive connection waits for its next request in its own task before it is
/// parked. Long against the gaps of a busy connection (a client sending once a second or more
/// often never parks), short against idle timeouts (`timeout.client-idle`, 75 s by default).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Readiness events taken from the park's epoll set at a time.
const EVENTS: usize = 256;

/// One worker's idle connections of one listener, and what serving them again takes.
pub struct Park {
    /// The park's epoll set, for registering sockets from connections' tasks.
    registry: Registry,
    slots: Mutex<Slots>,
    /// Woken when a connection is parked with a deadline earlier than all others'.
    earlier: Notify,
    runtime: Arc<Runtime>,
    base: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    drain: Drain,
}

/// The parked connections: each in a slot whose index is its epoll token, and in deadline order.
#[derive(Default)]
struct Slots {
    slots: Vec<Option<Parked>>,
    free: Vec<usize>,
    deadlines: BTreeSet<(Instant, usize)>,
    /// Set at shutdown: nothing more is parked.
    closed: bool,
}

/// An idle connection: its socket, the client's address, and when it is closed unless the
/// client sends.
struct Parked {
    socket: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
}

/// Why a connection could not be parked; it is closed (it was idle, as HTTP allows).
#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    /// Shutdown has begun.
    #[error("the listener is shutting down")]
    Closed,
    /// The park's epoll set refused the socket.
    #[error("could not watch the socket: {0}")]
    Watch(#[source] io::Error),
}

impl Park {
    /// Starts a park for a listener's connections on this worker, with the task that watches
    /// it; connections leave it to be served with `base` and `limits`, and it closes them all
    /// once `drain` leaves [`Phase::Serving`].
    pub fn start(
        runtime: Arc<Runtime>,
        base: Arc<auto::Builder<TokioExecutor>>,
        limits: Limits,
        drain: Drain,
    ) -> io::Result<Arc<Park>> {
        let poll = Poll::new()?;
        let park = Arc::new(Park {
            registry: poll.registry().try_clone()?,
            slots: Mutex::default(),
            earlier: Notify::new(),
            runtime,
            base,
            limits,
            drain,
        });
        // SAFETY: the `Poll` owns its epoll descriptor, which stays open and the same until the
        // `AsyncFd` that owns the `Poll` drops both.
        let events =
            unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        tokio::spawn(Arc::clone(&park).watch(events));
        Ok(park)
    }

    /// Parks `socket`, the connection of `peer`, until the client sends or closes, or until
    /// `deadline`.
    pub fn put(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<(), ParkError> {
        let mut slots = self.slots();
        if slots.closed {
            return Err(ParkError::Closed);
        }
        let index = slots.free.pop().unwrap_or(slots.slots.len());
        let fd = socket.as_raw_fd();
        self.registry
            .register(&mut SourceFd(&fd), Token(index), Interest::READABLE)
            .map_err(|e| {
                slots.free.push(index);
                ParkError::Watch(e)
            })?;
        let parked = Some(Parked {
            socket,
            peer,
            deadline,
        });
        if index == slots.slots.len() {
            slots.slots.push(parked);
        } else {
            slots.slots[index] = parked;
        }
        slots.deadlines.insert((deadline, index));
        if slots.deadlines.first() == Some(&(deadline, index)) {
            self.earlier.notify_one();
        }
        Ok(())
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        self.slots().deadlines.len()
    }

    /// Whether no connection is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Nothing panics while holding the lock; if something did, the slots are still whole.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The park's task: serves again the connections whose clients send or close, closes
    /// those whose deadline passes, and all of them at shutdown.
    async fn watch(self: Arc<Self>, mut poll: AsyncFd<Poll>) {
        let mut events = Events::with_capacity(EVENTS);
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            let moved = self.drain.moved();
            let earlier = self.earlier.notified();
            if self.drain.phase() != Phase::Serving {
                break;
            }
            let next = self
                .slots()
                .deadlines
                .first()
                .map(|&(deadline, _)| deadline);
            if let Some(deadline) = next {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                ready = poll.readable_mut() => match ready {
                    Ok(mut guard) => {
                        if self.wake(guard.get_inner_mut(), &mut events) {
                            guard.clear_ready();
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "the park of idle connections failed; closing them");
                        break;
                    }
                },
                () = &mut timer, if next.is_some() => self.expire(Instant::now()),
                () = earlier => {}
                () = moved => {}
            }
        }
        let mut slots = self.slots();
        slots.closed = true;
        slots.deadlines.clear();
        slots.slots.clear();
    }

    /// Serves again every connection the park's epoll set reports; false if there may be more
    /// reported than one call took.
    fn wake(self: &Arc<Self>, poll: &mut Poll, events: &mut Events) -> bool {
        if let Err(e) = poll.poll(events, Some(Duration::ZERO)) {
            // Interrupted, or out of memory for a moment: the next readiness tries again.
            debug!(error = %e, "reading the park's events");
            return true;
        }
        let idle = client_idle(&self.runtime);
        for event in events.iter() {
            let Some(parked) = self.take(event.token().0) else {
                continue;
            };
            let peer = parked.peer;
            let socket = match tokio::net::TcpStream::from_std(parked.socket) {
                Ok(socket) => socket,
                Err(e) => {
                    debug!(%peer, error = %e, "an idle connection could not be served again");
                    continue;
                }
            };
            let runtime = Arc::clone(&self.runtime);
            let conn = ClientConn::new(runtime, peer, Scheme::Http, self.drain.clone());
            let base = Arc::clone(&self.base);
            let park = Some(Arc::clone(self));
            tokio::spawn(super::serve(socket, conn, base, self.limits, idle, park));
        }
        events.iter().count() < EVENTS
    }

    /// Takes the connection in slot `index` out of the park and out of its epoll set.
    fn take(&self, index: usize) -> Option<Parked> {
        let mut slots = self.slots();
        let parked = slots.slots.get_mut(index)?.take()?;
        slots.deadlines.remove(&(parked.deadline, index));
        slots.free.push(index);
        // Closing the socket would take it out of the set too, but this one lives on.
        let _ = self
            .registry
            .deregister(&mut SourceFd(&parked.socket.as_raw_fd()));
        Some(parked)
    }

    /// Closes the connections whose deadline is `now` or earlier.
    fn expire(&self, now: Instant) {
        let mut slots = self.slots();
        while let Some(&(deadline, index)) = slots.deadlines.first() {
            if deadline > now {
                break;
            }
            slots.deadlines.pop_first();
            // Closing the socket takes it out of the epoll set.
            slots.slots[index] = None;
            slots.free.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use canary_testkit::upstream::TestUpstream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::listener::{Shutdown, http_builder, shutdown_pair};
    use crate::metrics::Metrics;

    /// Bounds every wait of these tests; none is a measurement.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A lean listener on loopback whose idle connections go into one park, its colors
    /// `upstream`, idle connections kept for `idle`.
    struct Fixture {
        park: Arc<Park>,
        shutdown: Shutdown,
        addr: SocketAddr,
        /// The accepting task, which holds a handle on the drain too.
        accepting: tokio::task::JoinHandle<()>,
    }

    async fn fixture(upstream: &TestUpstream, idle: &str) -> Fixture {
        let runtime = Runtime::new(Metrics::new().unwrap(), "test".into());
        let data: BTreeMap<String, String> = [
            ("blue.upstream", upstream.authority()),
            ("green.upstream", upstream.authority()),
            ("timeout.client-idle", idle.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        runtime.apply(&data, "0", |_| None).unwrap();
        let limits = Limits::default();
        let base = Arc::new(http_builder(limits));
        let (shutdown, drain) = shutdown_pair(Default::default());
        let park = Park::start(runtime.clone(), base.clone(), limits, drain.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parks = Arc::clone(&park);
        let accepting = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let conn = ClientConn::new(runtime.clone(), peer, Scheme::Http, drain.clone());
                let idle = client_idle(&runtime);
                let park = Some(Arc::clone(&parks));
                tokio::spawn(super::super::serve(
                    stream,
                    conn,
                    base.clone(),
                    limits,
                    idle,
                    park,
                ));
            }
        });
        Fixture {
            park,
            shutdown,
            addr,
            accepting,
        }
    }

    /// Sends a GET and reads its whole response (by its `Content-Length`).
    async fn get(client: &mut tokio::net::TcpStream) -> String {
        client
            .write_all(b"GET /parked HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let read = async {
            loop {
                let text = String::from_utf8_lossy(&response).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|l| l.trim().parse::<usize>().ok())
                        .expect("a Content-Length");
                    if body.len() >= length {
                        return text;
                    }
                }
                let mut chunk = [0; 4096];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-response: {text}");
                response.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("a response")
    }

    /// Waits until `park` holds `n` connections.
    async fn until_parked(park: &Park, n: usize) {
        let parked = async {
            while park.len() != n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let held = tokio::time::timeout(PATIENCE, parked).await;
        assert!(held.is_ok(), "{} parked, not {n}", park.len());
    }

    /// Reads until the proxy closes the connection; false if it is still open at the end.
    async fn closed(client: &mut tokio::net::TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn an_idle_connection_is_parked_and_served_again_on_the_same_socket() {
        let upstream = TestUpstream::start("blue").await;
        let f = fixture(&upstream, "75s").await;
        let mut client = tokio::net::TcpStream::connect(f.addr).await.unwrap();
        let mut other = tokio::net::TcpStream::connect(f.addr).await.unwrap();
        for client in [&mut client, &mut other] {
            assert!(get(client).await.starts_with("HTTP/1.1 200"));
        }
        until_parked(&f.park, 2).await;
        // Out of the park when the client sends; the other stays.
        let again = get(&mut client).await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        assert!(again.contains("x-color: blue"), "{again}");
        assert_eq!(upstream.served(), 3);
        // And back in when it is idle again.
        until_parked(&f.park, 2).await;
        drop(other);
        until_parked(&f.park, 1).await;
    }

    #[tokio::test]
    async fn a_parked_connection_is_closed_at_its_idle_deadline() {
        let upstream = TestUpstream::start("blue").await;
        let f = fixture(&upstream, "1500ms").await;
        let mut client = tokio::net::TcpStream::connect(f.addr).await.unwrap();
        assert!(get(&mut client).await.starts_with("HTTP/1.1 200"));
        until_parked(&f.park, 1).await;
        assert!(
            closed(&mut client).await,
            "the idle deadline never closed it"
        );
        assert!(f.park.is_empty());
    }

    #[tokio::test]
    async fn shutdown_closes_parked_connections_and_lets_the_drain_finish() {
        let upstream = TestUpstream::start("blue").await;
        let f = fixture(&upstream, "75s").await;
        let mut client = tokio::net::TcpStream::connect(f.addr).await.unwrap();
        assert!(get(&mut client).await.starts_with("HTTP/1.1 200"));
        until_parked(&f.park, 1).await;
        let park = f.park;
        f.accepting.abort();
        let drained = tokio::spawn(f.shutdown.drain(PATIENCE * 2));
        assert!(
            closed(&mut client).await,
            "shutdown left the parked connection open"
        );
        // The drain waits for every connection's handle: the park's too.
        drop(park);
        let finished = tokio::time::timeout(PATIENCE, drained).await;
        assert!(finished.is_ok(), "the drain waited on the park");
    }
}
