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
        Workers::pinned(count, &[])
    }

    /// Starts `count` worker threads allowed to run only on `cpus` (anywhere if empty).
    pub fn pinned(count: usize, cpus: &[usize]) -> io::Result<Workers> {
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
            let cpus = cpus.to_vec();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        // Pinning is best effort: an unpinned load still measures correctly.
                        let _ = pin_current_thread(&cpus);
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

/// Restricts the calling thread to `cpus`; nothing to do if the list is empty.
fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is a plain bit set for which all zeroes is the empty set; CPU_SET
    // writes inside it (it ignores CPUs beyond its size); sched_setaffinity(0, ..) reads it and
    // changes only the calling thread.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
