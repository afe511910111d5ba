//! A fixed pool of worker threads for command execution (file I/O and
//! emulation), fed through one multi-consumer queue. The event loop never
//! blocks on I/O; workers report back through their own channel + waker.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Worker threads that run submitted jobs until the pool is shut down.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// The queue. A worker with nothing to do sleeps on the condvar at once:
/// crossbeam's receive spun with `sched_yield` first (4 calls per command
/// in the VM trace), which costs CPU the other threads need.
#[derive(Debug, Default)]
struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.jobs.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl Shared {
    /// The next job, or `None` once the pool is closed and drained.
    fn next(&self) -> Option<Job> {
        let mut q = self
            .q
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q = self
                .cv
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Pool {
    /// Starts `n` (at least one) workers named `<name>-<i>`.
    pub fn new(n: usize, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let mut pool = Pool {
            shared,
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let shared = pool.shared.clone();
            // On error, dropping `pool` stops the workers already started.
            pool.threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        while let Some(job) = shared.next() {
                            job();
                        }
                    })?,
            );
        }
        Ok(pool)
    }

    /// Queues a job. Fails (returning it) only after shutdown began.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let mut q = self
            .shared
            .q
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.closed {
            return Err(job);
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.cv.notify_one();
        Ok(())
    }

    /// Number of worker threads.
    #[must_use]
    pub fn size(&self) -> usize {
        self.threads.len()
    }

    /// Lets queued jobs finish, then joins every worker.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared
            .q
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .closed = true;
        self.shared.cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_before_shutdown_returns() {
        let pool = Pool::new(3, "t").unwrap();
        assert_eq!(pool.size(), 3);
        let count = Arc::new(AtomicUsize::new(0));
        for _ in 0..1000 {
            let c = count.clone();
            pool.submit(Box::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            }))
            .unwrap_or_else(|_| panic!("submit refused"));
        }
        pool.shutdown();
        assert_eq!(count.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn jobs_run_on_worker_threads() {
        let pool = Pool::new(1, "named").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.submit(Box::new(move || {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap()
        }))
        .unwrap_or_else(|_| panic!("submit refused"));
        assert_eq!(rx.recv().unwrap().as_deref(), Some("named-0"));
    }
}
