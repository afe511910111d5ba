//! A fixed pool of worker threads for command execution (file I/O and
//! emulation), fed through one multi-consumer queue and shared by every
//! LU's ring thread; each job sends its result back to the ring thread that
//! submitted it.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// A unit of work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Worker threads that run submitted jobs until the pool is shut down.
#[derive(Debug)]
pub struct Pool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` (at least one) workers named `<name>-<i>`.
    pub fn new(n: usize, name: &str) -> std::io::Result<Self> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let rx = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    })?,
            );
        }
        Ok(Pool {
            tx: Some(tx),
            threads,
        })
    }

    /// Queues a job. Fails (returning it) only after shutdown began.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        }
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
        self.tx.take();
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
