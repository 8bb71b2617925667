//! Worker threads for the load generator, each with its own single-threaded tokio runtime.
//!
//! This is wrk's model: a connection lives on one thread for its whole life, so a request
//! never crosses threads and the scheduler needs no work stealing. It costs measurably less
//! CPU per request than one multi-threaded runtime.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A set of threads that each run a current-thread runtime until the set is dropped.
pub struct Workers {
    /// Where connection tasks are spawned.
    handles: Vec<Handle>,
    /// Dropping these ends each thread's `block_on`.
    stops: Vec<oneshot::Sender<()>>,
    /// Joined on drop so that no runtime outlives the set.
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn new(count: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                    })?,
            );
        }
        Ok(workers)
    }

    /// The runtimes to spread connections over.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
