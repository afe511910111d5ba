//! The lock-manager interface the state-cache protocol (`cache`) runs on.
//!
//! It is the DLM's own model, asynchronous and event-driven: a request
//! returns at once and its outcome arrives later as an [`Event`] from
//! [`LockManager::poll`], as do blocking ASTs. That is what libdlm_lt gives
//! us (ASTs run inside `dlm_dispatch`), what lets one thread serve many LUs
//! without ever waiting on one of them, and what lets the test double
//! (`fake`) interleave several simulated nodes deterministically.
//!
//! Implementations: `dlm` (the Linux DLM through dlm-sys), `local` (one
//! process, no cluster) and `fake` (a DLM test double with simulated nodes).

use std::time::Duration;

pub use dlm_sys::{LVB_LEN, LockFlags, Mode};

/// A lock on one resource, as handed out by one lock manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockId(pub u64);

/// Why a lock request failed or the lock manager cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LmError {
    /// The request was cancelled before it was granted.
    #[error("lock request cancelled")]
    Cancelled,
    /// NOQUEUE was set and the lock could not be granted at once.
    #[error("lock not granted at once (NOQUEUE)")]
    WouldBlock,
    /// The DLM found a conversion deadlock and refused this conversion.
    #[error("conversion deadlock")]
    Deadlock,
    /// A request is already outstanding on this lock.
    #[error("a request on this lock is already pending")]
    Busy,
    /// The request is not valid (e.g. QUECVT on a new request or a down-conversion).
    #[error("invalid lock request: {0}")]
    Invalid(&'static str),
    /// The lockspace is not usable (not joined, dlm_controld/corosync gone,
    /// quorum lost); the string says why.
    #[error("lockspace unavailable: {0}")]
    Unavailable(String),
    /// Anything else the DLM reported.
    #[error("{0}")]
    Other(String),
}

/// A granted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The mode now held.
    pub mode: Mode,
    /// The lock's LVB buffer after the grant (the resource's LVB if this grant
    /// read it, see the DLM's LVB rules).
    pub lvb: [u8; LVB_LEN],
    /// VALNOTVALID: a holder in PW/EX died since the LVB was last written.
    pub lvb_invalid: bool,
}

/// Something the lock manager reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Completion AST of a request (or of a cancel: `Err(Cancelled)`).
    Completed {
        lock: LockId,
        result: Result<Grant, LmError>,
    },
    /// Blocking AST: a request for `mode` waits behind this lock's granted mode.
    Blocking { lock: LockId, mode: Option<Mode> },
    /// The lockspace is gone: every lock of this manager is lost.
    Lost { reason: String },
    /// The lockspace is usable again (after `Lost`); locks must be reopened.
    Restored,
}

/// A lock manager: one lockspace as seen from one node.
pub trait LockManager {
    /// A new lock on `resource` (at most 64 bytes), not yet requested.
    fn open(&mut self, resource: &[u8]) -> Result<LockId, LmError>;
    /// Requests `mode` (a conversion if the lock is held). `lvb` replaces the
    /// lock's LVB buffer first: what a down-conversion from PW/EX with
    /// VALBLK writes to the resource. The outcome arrives as an event.
    fn request(
        &mut self,
        lock: LockId,
        mode: Mode,
        flags: LockFlags,
        lvb: Option<&[u8; LVB_LEN]>,
    ) -> Result<(), LmError>;
    /// Cancels the outstanding request, if any; its completion then
    /// arrives as `Err(Cancelled)` (or as a grant that won the race).
    fn cancel(&mut self, lock: LockId) -> Result<(), LmError>;
    /// Unlocks and forgets the lock.
    fn close(&mut self, lock: LockId);
    /// Appends what happened since the last call; never blocks.
    fn poll(&mut self, events: &mut Vec<Event>);
    /// Blocks up to `timeout` until events may be ready or `wake` becomes
    /// readable (used by the cluster thread; never called on the I/O path).
    fn wait(&mut self, wake: &std::os::unix::net::UnixStream, timeout: Duration);
}

/// The DLM's LVB operations, rows granted mode (None = new request),
/// columns requested mode: `Some(true)` read, `Some(false)` write, `None`
/// nothing (`dlm_lvb_operations` in fs/dlm/lock.c, IV/PD left out).
pub(crate) fn lvb_op(granted: Option<Mode>, requested: Mode) -> Option<bool> {
    match granted {
        None => Some(true),
        Some(g @ (Mode::Pw | Mode::Ex)) => {
            if g == Mode::Pw && requested == Mode::Ex {
                Some(true)
            } else {
                Some(false)
            }
        }
        Some(g) => (requested >= g).then_some(true),
    }
}

/// The DLM resource name of an LU's lock of `kind` (`b's'` state, `b'c'`
/// COMPARE AND WRITE): `tcmu-prd:<kind>:<lu id>`, or, for ids that do not
/// fit in 64 bytes or are not printable ASCII, a prefix of the id and a
/// 64-bit hash of all of it.
#[must_use]
pub fn resource_name(kind: u8, lu: &str) -> Vec<u8> {
    let mut name = format!("tcmu-prd:{}:", char::from(kind)).into_bytes();
    let printable = lu.bytes().all(|b| b.is_ascii_graphic());
    if printable && name.len() + lu.len() <= dlm_sys::RESOURCE_NAME_MAX {
        name.extend_from_slice(lu.as_bytes());
        return name;
    }
    let h1 = crc32c::crc32c(lu.as_bytes());
    let h2 = crc32c::crc32c_append(0x5bd1_e995, lu.as_bytes());
    let tail = format!("#{h1:08x}{h2:08x}");
    let room = dlm_sys::RESOURCE_NAME_MAX - name.len() - tail.len();
    name.extend(lu.bytes().filter(u8::is_ascii_graphic).take(room));
    name.extend_from_slice(tail.as_bytes());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_fit_and_differ() {
        assert_eq!(resource_name(b's', "vol1"), b"tcmu-prd:s:vol1");
        let long_a = "a".repeat(100);
        let mut long_b = long_a.clone();
        long_b.push('b');
        let (a, b) = (resource_name(b's', &long_a), resource_name(b's', &long_b));
        assert!(a.len() <= 64 && b.len() <= 64);
        assert_ne!(a, b);
        assert_ne!(resource_name(b's', "x"), resource_name(b'c', "x"));
        let odd = resource_name(b's', "vol 1\u{e9}");
        assert!(odd.len() <= 64 && odd.iter().all(u8::is_ascii_graphic));
        assert_ne!(odd, resource_name(b's', "vol1"));
    }
}
