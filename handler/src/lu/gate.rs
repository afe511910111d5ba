//! The LU's I/O gate: data commands hold it shared for as long as they
//! touch the medium, a reservation change holds it exclusive, so no data
//! command runs (or is half done) while the PR state changes. Writers are
//! preferred: once one waits, new readers wait behind it.
//!
//! Unlike `std::sync::RwLock` it has an owned read guard that can be tried
//! without blocking: the ring thread keeps one per command it has in
//! flight on io_uring, and must never block on the gate itself, since a
//! waiting writer waits for exactly those commands to finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// In [`Gate::word`]: a writer holds or waits for the gate (new readers
/// take the slow path and wait). The bits below it count the readers.
const BLOCKED: usize = 1 << (usize::BITS - 1);

#[derive(Debug, Default)]
struct State {
    writer: bool,
    writers_waiting: usize,
}

/// Shared for data commands, exclusive for reservation changes.
///
/// A reader that finds no writer costs one compare-and-swap to enter and
/// one atomic subtraction to leave (as `std::sync::RwLock`'s): the mutex
/// and condition variable are only for waiting. Writers set [`BLOCKED`]
/// under the mutex; the last reader out, seeing it, takes the mutex to
/// wake them, so a writer that found readers is never left asleep.
#[derive(Debug, Default)]
pub struct Gate {
    /// Readers holding the gate, plus [`BLOCKED`].
    word: AtomicUsize,
    s: Mutex<State>,
    cv: Condvar,
}

/// Held shared.
#[derive(Debug)]
#[must_use]
pub struct ReadGuard<'a>(&'a Gate);

/// Held shared, owning its reference to the gate.
#[derive(Debug)]
#[must_use]
pub struct OwnedReadGuard(Arc<Gate>);

/// Held exclusive.
#[derive(Debug)]
#[must_use]
pub struct WriteGuard<'a>(&'a Gate);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.s
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv
            .wait(g)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more reader unless a writer holds or waits.
    fn try_enter(&self) -> bool {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if w & BLOCKED != 0 {
                return false;
            }
            // Acquire: what the last writer did is visible to this reader.
            match self
                .word
                .compare_exchange_weak(w, w + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// Blocks while a writer holds or waits for the gate, then holds it shared.
    pub fn read(&self) -> ReadGuard<'_> {
        if !self.try_enter() {
            let mut s = self.lock();
            // Under the mutex: a writer clears BLOCKED under it too, then
            // notifies, so the check and the wait cannot miss it.
            while !self.try_enter() {
                s = self.wait(s);
            }
        }
        ReadGuard(self)
    }

    /// Holds it shared if that needs no wait (no writer holds or waits).
    pub fn try_read_owned(self: &Arc<Self>) -> Option<OwnedReadGuard> {
        self.try_enter().then(|| OwnedReadGuard(self.clone()))
    }

    /// Blocks until no one holds the gate, then holds it exclusive.
    pub fn write(&self) -> WriteGuard<'_> {
        let mut s = self.lock();
        s.writers_waiting += 1;
        self.word.fetch_or(BLOCKED, Ordering::Relaxed);
        // Acquire: pairs with the readers' Release as they leave.
        while s.writer || self.word.load(Ordering::Acquire) & !BLOCKED > 0 {
            s = self.wait(s);
        }
        s.writers_waiting -= 1;
        s.writer = true;
        WriteGuard(self)
    }

    fn release_read(&self) {
        // Release: this reader's accesses happen before a writer's.
        let before = self.word.fetch_sub(1, Ordering::Release);
        if before == BLOCKED | 1 {
            // The last reader, and a writer waits: wake it under the mutex
            // (it checks the count under it before it sleeps).
            drop(self.lock());
            self.cv.notify_all();
        }
    }

    /// Readers holding the gate now (for tests).
    #[cfg(test)]
    fn readers(&self) -> usize {
        self.word.load(Ordering::Acquire) & !BLOCKED
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.0.release_read();
    }
}

impl Drop for OwnedReadGuard {
    fn drop(&mut self) {
        self.0.release_read();
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.writer = false;
        if s.writers_waiting == 0 {
            // Release: the writer's changes before the next reader's entry.
            self.0.word.fetch_and(!BLOCKED, Ordering::Release);
        }
        drop(s);
        self.0.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn readers_share_a_writer_excludes_and_is_preferred() {
        let g = Arc::new(Gate::default());
        let r1 = g.read();
        let r2 = g.try_read_owned().expect("readers share");
        let (tx, rx) = mpsc::channel();
        let g2 = g.clone();
        let w = std::thread::spawn(move || {
            let _w = g2.write();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        });
        // Wait until the writer is waiting: then no new reader gets in.
        while g.lock().writers_waiting == 0 {
            std::thread::yield_now();
        }
        assert!(g.try_read_owned().is_none(), "a waiting writer goes first");
        assert!(rx.try_recv().is_err(), "readers still hold it");
        drop(r1);
        assert_eq!(g.readers(), 1);
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "one reader (the owned guard) still holds it"
        );
        drop(r2);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the writer gets it once the last reader left");
        w.join().unwrap();
        assert!(g.try_read_owned().is_some(), "free again after the writer");
        let _r = g.read();
    }

    #[test]
    fn writers_exclude_readers_and_each_other_under_contention() {
        use std::sync::atomic::AtomicBool;
        let g = Arc::new(Gate::default());
        // Set only while a writer holds the gate; readers must never see it.
        let writing = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (g, writing, seen) = (g.clone(), writing.clone(), seen.clone());
                std::thread::spawn(move || {
                    for n in 0..2000 {
                        if i < 2 && n % 20 == i {
                            let _w = g.write();
                            assert!(!writing.swap(true, Ordering::SeqCst), "two writers");
                            std::thread::yield_now();
                            writing.store(false, Ordering::SeqCst);
                        } else if n % 2 == 0 {
                            let _r = g.read();
                            assert!(
                                !writing.load(Ordering::SeqCst),
                                "a reader ran with a writer"
                            );
                            seen.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(_r) = g.try_read_owned() {
                            assert!(
                                !writing.load(Ordering::SeqCst),
                                "a reader ran with a writer"
                            );
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(seen.load(Ordering::Relaxed) > 0);
        assert_eq!(g.readers(), 0);
        let _w = g.write();
        assert!(g.try_read_owned().is_none());
    }
}
