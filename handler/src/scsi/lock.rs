//! Block-range locks that make COMPARE AND WRITE atomic with respect to
//! every other write to the same blocks on this LU: writes hold their range
//! shared (they do not order among themselves, as SCSI allows), COMPARE AND
//! WRITE holds it exclusive. Cross-node atomicity is the [`CawHook`]'s job.

use std::sync::{Condvar, Mutex};

use super::{Blocks, Lba};

/// How a range is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders (plain writes).
    Shared,
    /// One holder (COMPARE AND WRITE).
    Exclusive,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    id: u64,
    start: u64,
    end: u64,
    mode: LockMode,
}

#[derive(Debug, Default)]
struct Inner {
    held: Vec<Held>,
    next: u64,
}

/// A set of held block ranges.
#[derive(Debug, Default)]
pub struct RangeLock {
    inner: Mutex<Inner>,
    cv: Condvar,
}

/// Releases its range on drop.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

/// Releases its range on drop; owns its reference to the lock (for a
/// command whose I/O outlives the call that started it).
#[derive(Debug)]
pub struct OwnedRangeGuard {
    lock: std::sync::Arc<RangeLock>,
    id: u64,
}

impl Inner {
    fn conflicts(&self, start: u64, end: u64, mode: LockMode) -> bool {
        self.held.iter().any(|h| {
            h.start < end
                && start < h.end
                && (mode == LockMode::Exclusive || h.mode == LockMode::Exclusive)
        })
    }

    fn hold(&mut self, start: u64, end: u64, mode: LockMode) -> u64 {
        self.next += 1;
        let id = self.next;
        self.held.push(Held {
            id,
            start,
            end,
            mode,
        });
        id
    }
}

/// `[lba, lba+blocks)` as held: an empty range still counts as one block
/// so it orders with others.
fn span(lba: Lba, blocks: Blocks) -> (u64, u64) {
    (lba.0, lba.0.saturating_add(blocks.0.max(1)))
}

impl RangeLock {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until `[lba, lba+blocks)` can be held in `mode`, then hold it.
    pub fn lock(&self, lba: Lba, blocks: Blocks, mode: LockMode) -> RangeGuard<'_> {
        let (start, end) = span(lba, blocks);
        let mut g = self.inner();
        while g.conflicts(start, end, mode) {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        let id = g.hold(start, end, mode);
        RangeGuard { lock: self, id }
    }

    /// Holds `[lba, lba+blocks)` in `mode` if that needs no wait.
    pub fn try_lock_owned(
        self: &std::sync::Arc<Self>,
        lba: Lba,
        blocks: Blocks,
        mode: LockMode,
    ) -> Option<OwnedRangeGuard> {
        let (start, end) = span(lba, blocks);
        let mut g = self.inner();
        if g.conflicts(start, end, mode) {
            return None;
        }
        let id = g.hold(start, end, mode);
        Some(OwnedRangeGuard {
            lock: self.clone(),
            id,
        })
    }

    fn release(&self, id: u64) {
        let mut g = self.inner();
        g.held.retain(|h| h.id != id);
        drop(g);
        self.cv.notify_all();
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.lock.release(self.id);
    }
}

impl Drop for OwnedRangeGuard {
    fn drop(&mut self) {
        self.lock.release(self.id);
    }
}

/// Why a [`CawHook`] refused to enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HookRefusal {
    /// Temporarily unavailable (e.g. cluster lock timed out): BUSY status.
    #[error("busy")]
    Busy,
}

/// Taken around every COMPARE AND WRITE, after the local range lock: the
/// cluster code wraps it in a per-LU DLM EX lock. The returned guard is
/// dropped when the command is done.
pub trait CawHook: Send + Sync + std::fmt::Debug {
    /// Enter the critical section for `[lba, lba+blocks)`.
    fn enter(&self, lba: Lba, blocks: Blocks) -> Result<Box<dyn Send>, HookRefusal>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn exclusive_waits_for_overlapping_shared() {
        let l = Arc::new(RangeLock::default());
        let g = l.lock(Lba(10), Blocks(5), LockMode::Shared);
        // Shared overlapping and exclusive disjoint proceed at once.
        drop(l.lock(Lba(12), Blocks(1), LockMode::Shared));
        drop(l.lock(Lba(15), Blocks(3), LockMode::Exclusive));
        let got = Arc::new(AtomicBool::new(false));
        let t = {
            let (l, got) = (l.clone(), got.clone());
            std::thread::spawn(move || {
                let _x = l.lock(Lba(14), Blocks(2), LockMode::Exclusive);
                got.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!got.load(Ordering::SeqCst));
        drop(g);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }
}
