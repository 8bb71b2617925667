//! The data plane's workers, shaped like NGINX's worker processes: one OS thread per worker,
//! each running its own current-thread tokio runtime and accepting from its own listening
//! socket at the data address. A connection, and every task it spawns (its upstream
//! connections, its tunnels), stays on the worker that accepted it: no work stealing, no
//! wake-ups across threads, and the per-thread upstream pools serve every request of their
//! worker.
//!
//! The control plane (configuration source, admin listener, judge timer, signals) is not
//! here: it runs on the caller's runtime, so that a large `/metrics` or a Kubernetes watch
//! event never delays one worker's connections (the kernel gives every worker the same share
//! of them), and it tells the workers when to stop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::listener::{self, Limits};
use crate::runtime::Runtime;

/// Pending connections each worker's socket may queue.
const BACKLOG: u32 = 1024;

/// Why the workers could not start or did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The data listener's address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The worker's runtime or its thread could not be made.
    #[error("cannot start worker {index}: {source}")]
    Start {
        /// The worker, from 0.
        index: usize,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The worker's thread panicked.
    #[error("worker {index} panicked")]
    Panicked {
        /// The worker, from 0.
        index: usize,
    },
}

/// The workers' runtimes, each with its own listening socket, bound and not serving yet.
pub struct Bound {
    workers: Vec<(tokio::runtime::Runtime, TcpListener)>,
    addr: SocketAddr,
}

/// Makes `count` workers' runtimes (at least one) and binds a listening socket for each at
/// `addr`, all with `SO_REUSEPORT` so that the kernel spreads new connections over them.
///
/// One socket shared by every worker would hand each burst of connections to whichever
/// worker's event loop woke first (measured: every connection of a 16-connection load on one
/// of two workers); with a socket each, the kernel's hash of each connection's addresses
/// picks the worker. When `addr` asks for port 0, the others bind the port the first got.
/// The price: another process of the same user that also sets `SO_REUSEPORT` could bind the
/// same address and take a share (not possible across pods, each in its own network
/// namespace).
pub fn bind(addr: SocketAddr, count: usize) -> Result<Bound, WorkerError> {
    let mut workers = Vec::new();
    let mut bound = addr;
    for index in 0..count.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| WorkerError::Start { index, source })?;
        // Registered with the worker's own runtime, which is the one that polls it.
        let listener = {
            let _context = rt.enter();
            reuseport_listener(bound).map_err(|source| WorkerError::Bind { addr, source })?
        };
        if index == 0 {
            bound = listener
                .local_addr()
                .map_err(|source| WorkerError::Bind { addr, source })?;
        }
        workers.push((rt, listener));
    }
    Ok(Bound {
        workers,
        addr: bound,
    })
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Bound {
    /// The address the sockets are bound to, with the port the system chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts every worker, each serving its socket with [`listener::serve`] until
    /// [`Workers::stop`].
    pub fn serve(self, serving: Serving) -> Result<Workers, WorkerError> {
        let (stop, stopping) = watch::channel(false);
        let (report, exits) = mpsc::unbounded_channel();
        for (index, (rt, accept)) in self.workers.into_iter().enumerate() {
            let serving = serving.clone();
            let mut stopping = stopping.clone();
            let exits = report.clone();
            thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    let _report = Reporter { index, exits };
                    let stopped = async move {
                        let _ = stopping.wait_for(|stop| *stop).await;
                    };
                    let serve = listener::serve(
                        accept,
                        serving.tls,
                        serving.runtime,
                        serving.limits,
                        stopped,
                        serving.drain_timeout,
                    );
                    rt.block_on(serve.instrument(tracing::info_span!("worker", index)));
                    // The worker's remaining tasks (idle upstream connections) go before its
                    // end is reported.
                    drop(rt);
                })
                .map_err(|source| WorkerError::Start { index, source })?;
        }
        Ok(Workers {
            stop,
            exits,
            panicked: None,
        })
    }
}

/// What every worker serves, and how.
#[derive(Clone)]
pub struct Serving {
    /// TLS on the data listener, if configured.
    pub tls: Option<TlsAcceptor>,
    /// The proxy's shared state.
    pub runtime: Arc<Runtime>,
    /// Limits on what a client may send.
    pub limits: Limits,
    /// How long in-flight requests may take to finish once stopping.
    pub drain_timeout: Duration,
}

/// The running workers. Dropping this stops them (as [`Workers::stop`] does), without
/// waiting for them.
pub struct Workers {
    stop: watch::Sender<bool>,
    exits: mpsc::UnboundedReceiver<Exit>,
    /// The first worker seen to have panicked.
    panicked: Option<usize>,
}

/// A worker's thread is ending.
struct Exit {
    index: usize,
    panicked: bool,
}

/// Reports its worker's end when dropped, which also covers a panic's unwinding.
struct Reporter {
    index: usize,
    exits: mpsc::UnboundedSender<Exit>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.exits.send(Exit {
            index: self.index,
            panicked: thread::panicking(),
        });
    }
}

impl Workers {
    /// Tells every worker to stop accepting and drain its connections.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until some worker ends, and returns its index. Before [`Workers::stop`] that is a
    /// fault: a worker serves until it is told to stop.
    pub async fn exited(&mut self) -> Option<usize> {
        let exit = self.exits.recv().await?;
        if exit.panicked {
            self.panicked.get_or_insert(exit.index);
        }
        Some(exit.index)
    }

    /// Waits until every worker has ended (each within its drain timeout once stopped).
    pub async fn join(mut self) -> Result<(), WorkerError> {
        while self.exited().await.is_some() {}
        match self.panicked {
            Some(index) => Err(WorkerError::Panicked { index }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_listens_on_the_port_the_first_got() {
        let bound = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 3).unwrap();
        let addr = bound.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(bound.workers.len(), 3);
        for (_, listener) in &bound.workers {
            assert_eq!(listener.local_addr().unwrap(), addr);
        }
        // A socket without SO_REUSEPORT cannot join them.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }
}
