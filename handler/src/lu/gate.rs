//! The LU's I/O gate: data commands hold it shared for as long as they
//! touch the medium, a reservation change holds it exclusive, so no data
//! command runs (or is half done) while the PR state changes. Writers are
//! preferred: once one waits, new readers wait behind it.
//!
//! Unlike `std::sync::RwLock` it has an owned read guard that can be tried
//! without blocking: the ring thread keeps one per command it has in
//! flight on io_uring, and must never block on the gate itself, since a
//! waiting writer waits for exactly those commands to finish.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    readers: usize,
    writer: bool,
    writers_waiting: usize,
}

/// Shared for data commands, exclusive for reservation changes.
#[derive(Debug, Default)]
pub struct Gate {
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

    /// Blocks while a writer holds or waits for the gate, then holds it shared.
    pub fn read(&self) -> ReadGuard<'_> {
        let mut s = self.lock();
        while s.writer || s.writers_waiting > 0 {
            s = self.wait(s);
        }
        s.readers += 1;
        ReadGuard(self)
    }

    /// Holds it shared if that needs no wait (no writer holds or waits).
    pub fn try_read_owned(self: &Arc<Self>) -> Option<OwnedReadGuard> {
        let mut s = self.lock();
        if s.writer || s.writers_waiting > 0 {
            return None;
        }
        s.readers += 1;
        Some(OwnedReadGuard(self.clone()))
    }

    /// Blocks until no one holds the gate, then holds it exclusive.
    pub fn write(&self) -> WriteGuard<'_> {
        let mut s = self.lock();
        s.writers_waiting += 1;
        while s.writer || s.readers > 0 {
            s = self.wait(s);
        }
        s.writers_waiting -= 1;
        s.writer = true;
        WriteGuard(self)
    }

    fn release_read(&self) {
        let mut s = self.lock();
        s.readers -= 1;
        let wake = s.readers == 0 && s.writers_waiting > 0;
        drop(s);
        if wake {
            self.cv.notify_all();
        }
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
}
