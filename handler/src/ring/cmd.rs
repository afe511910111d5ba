//! A command in flight (owned, `Send`, zero-copy access to its data buffers)
//! and the response that completes it.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tcmu_sys::TCMU_SENSE_BUFFERSIZE;

use super::entry::{MAX_CDB_LEN, Segment};
use super::mapping::Mapping;
use super::status;

/// Size of the sense buffer in a completion.
pub const SENSE_LEN: usize = TCMU_SENSE_BUFFERSIZE as usize;

/// One "aborted by a TMR" bit per command id, shared by a ring and its
/// commands so a worker can check before starting one.
#[derive(Debug)]
pub(super) struct AbortTable([AtomicU64; 1024]);

impl AbortTable {
    pub fn new() -> Arc<Self> {
        Arc::new(AbortTable(std::array::from_fn(|_| AtomicU64::new(0))))
    }
    // Relaxed: the bit is a hint that publishes no other data; a worker that
    // misses a concurrent abort just runs the command, which SAM allows.
    pub fn set(&self, id: u16, on: bool) {
        let (w, b) = (usize::from(id) / 64, 1u64 << (id % 64));
        if on {
            self.0[w].fetch_or(b, Ordering::Relaxed);
        } else {
            self.0[w].fetch_and(!b, Ordering::Relaxed);
        }
    }
    pub fn get(&self, id: u16) -> bool {
        self.0[usize::from(id) / 64].load(Ordering::Relaxed) & (1u64 << (id % 64)) != 0
    }
}

/// A command taken from the ring, owned until [`Ring::complete`](super::Ring::complete)
/// consumes it. It can be sent to a worker thread; it keeps the mapping alive.
///
/// Its data buffers are the kernel's data-area pages, not copies. That is
/// sound because, for a command in flight, the kernel has finished writing
/// data-out before publishing `cmd_head` and reads data-in only after the
/// completion is consumed (it frees the blocks then), and the ring checked
/// that the segments lie in the data area and overlap no other in-flight
/// command's. Completion consumes the token, so no slice can outlive it.
/// (A `reset_ring` while tokens are out would break this: the daemon resets
/// only before it maps, DESIGN.md §1.)
#[derive(Debug)]
#[must_use = "a command must be completed, or the initiator waits until the kernel times it out"]
pub struct InFlightCmd {
    pub(super) cmd_id: u16,
    pub(super) cdb: [u8; MAX_CDB_LEN],
    pub(super) cdb_len: usize,
    pub(super) segs: Vec<Segment>,
    pub(super) n_data: usize,
    pub(super) map: Arc<Mapping>,
    pub(super) aborts: Arc<super::cmd::AbortTable>,
    pub(super) ring_id: u64,
    pub(super) completed: bool,
}

impl InFlightCmd {
    /// The kernel's id for this command.
    #[must_use]
    pub fn cmd_id(&self) -> u16 {
        self.cmd_id
    }

    /// The CDB (6 to 260 bytes, length from the operation code).
    #[must_use]
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..self.cdb_len]
    }

    /// True once a TMR (ABORT TASK, LUN RESET, ...) listed this command: a
    /// worker should not start it but complete it at once, e.g. with
    /// [`Response::task_aborted`] (the kernel ignores the status).
    #[must_use]
    pub fn is_aborted(&self) -> bool {
        self.aborts.get(self.cmd_id)
    }

    /// Whether the kernel sent a separate data-in buffer (bidirectional
    /// command: `data` is data-out, `bidi` is data-in).
    #[must_use]
    pub fn is_bidi(&self) -> bool {
        self.segs.len() > self.n_data
    }

    /// Total length of the data buffer (`iov_cnt` segments).
    #[must_use]
    pub fn data_len(&self) -> usize {
        self.segs[..self.n_data].iter().map(|s| s.len).sum()
    }

    /// Total length of the data-in buffer: the bidi segments of a
    /// bidirectional command, else the data buffer.
    #[must_use]
    pub fn data_in_len(&self) -> usize {
        self.data_in_range().map(|i| self.segs[i].len).sum()
    }

    fn data_in_range(&self) -> std::ops::Range<usize> {
        if self.is_bidi() {
            self.n_data..self.segs.len()
        } else {
            0..self.n_data
        }
    }

    /// Pointer and length of a segment; validated at decode, so the empty
    /// fallback is never taken.
    fn raw(&self, s: Segment) -> (*mut u8, usize) {
        match self.map.data_ptr(s.off, s.len) {
            Some(p) => (p, s.len),
            None => (std::ptr::NonNull::dangling().as_ptr(), 0),
        }
    }

    fn slice(&self, s: Segment) -> &[u8] {
        let (p, len) = self.raw(s);
        // SAFETY: the range lies in the data area of the mapping this token keeps alive
        // (or is empty and dangling), and no one writes it while the command is in flight.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    #[allow(clippy::mut_from_ref)] // Only called from `&mut self` methods below.
    fn slice_mut(&self, s: Segment) -> &mut [u8] {
        let (p, len) = self.raw(s);
        // SAFETY: as in `slice`; exclusive because the callers hold `&mut self`, the segments
        // of one command do not overlap, and no other in-flight command's do (checked).
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// The data buffer (data-out of a write, or the buffer to fill for a read).
    #[must_use]
    pub fn data(&self) -> Vec<IoSlice<'_>> {
        self.segs[..self.n_data]
            .iter()
            .map(|&s| IoSlice::new(self.slice(s)))
            .collect()
    }

    /// The data buffer, writable (for preadv into it).
    pub fn data_mut(&mut self) -> Vec<IoSliceMut<'_>> {
        let this = &*self;
        this.segs[..this.n_data]
            .iter()
            .map(|&s| IoSliceMut::new(this.slice_mut(s)))
            .collect()
    }

    /// The first `len` bytes of the data buffer as raw iovecs, for the
    /// kernel to fill or read (`ring::uring`); `None` if the buffer is
    /// shorter than `len`. Only `uring`, which keeps this token until the
    /// kernel is done with them, may hand them out.
    pub(super) fn data_iovecs(&self, len: usize) -> Option<Vec<libc::iovec>> {
        let mut left = len;
        let mut out = Vec::with_capacity(self.n_data);
        for &s in &self.segs[..self.n_data] {
            if left == 0 {
                break;
            }
            let (p, n) = self.raw(s);
            let n = n.min(left);
            out.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            });
            left -= n;
        }
        (left == 0).then_some(out)
    }

    /// The data-in buffer, writable: bidi segments, or the data buffer.
    pub fn data_in_mut(&mut self) -> Vec<IoSliceMut<'_>> {
        let this = &*self;
        this.data_in_range()
            .map(|i| IoSliceMut::new(this.slice_mut(this.segs[i])))
            .collect()
    }

    /// Copies an emulated response (INQUIRY data, ...) into the data-in
    /// buffer; returns the bytes copied (`min(src.len(), data_in_len())`),
    /// which is the `read_len` to report.
    pub fn copy_to_data_in(&mut self, src: &[u8]) -> usize {
        let mut done = 0;
        for mut buf in self.data_in_mut() {
            let n = buf.len().min(src.len() - done);
            buf[..n].copy_from_slice(&src[done..done + n]);
            done += n;
            if done == src.len() {
                break;
            }
        }
        done
    }

    /// Copies the data buffer (data-out) into `dst`; returns bytes copied.
    pub fn copy_from_data(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for buf in self.data() {
            let n = buf.len().min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&buf[..n]);
            done += n;
        }
        done
    }
}

impl Drop for InFlightCmd {
    fn drop(&mut self) {
        if !self.completed {
            tracing::error!(
                cmd_id = self.cmd_id,
                "command dropped without completion; the kernel will time it out"
            );
        }
    }
}

/// The result of a command: SAM status, sense data, and how much data-in
/// was produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// SAM status byte.
    pub status: u8,
    /// Sense data (only sent with CHECK CONDITION), zero-padded.
    pub sense: [u8; SENSE_LEN],
    /// Bytes of data-in actually produced; reported to the kernel when
    /// shorter than the data-in buffer (`TCMU_UFLAG_READ_LEN`). The kernel
    /// ignores 0, so "no data" of a read is not expressible: send status.
    pub read_len: Option<u32>,
}

impl Response {
    /// GOOD, full data transfer.
    #[must_use]
    pub fn good() -> Self {
        Response::with_status(status::GOOD)
    }

    /// Any status without sense data (BUSY, RESERVATION CONFLICT, ...).
    #[must_use]
    pub fn with_status(status: u8) -> Self {
        Response {
            status,
            sense: [0; SENSE_LEN],
            read_len: None,
        }
    }

    /// CHECK CONDITION with `sense` (truncated to 96 bytes).
    #[must_use]
    pub fn check_condition(sense: &[u8]) -> Self {
        let mut r = Response::with_status(status::CHECK_CONDITION);
        let n = sense.len().min(SENSE_LEN);
        r.sense[..n].copy_from_slice(&sense[..n]);
        r
    }

    /// TASK ABORTED, for a command a TMR aborted before it started.
    #[must_use]
    pub fn task_aborted() -> Self {
        Response::with_status(status::TASK_ABORTED)
    }

    /// Sets the produced data-in length (saturating at `u32::MAX`).
    #[must_use]
    pub fn read_len(mut self, n: usize) -> Self {
        self.read_len = Some(u32::try_from(n).unwrap_or(u32::MAX));
        self
    }

    /// The completion for a malformed entry: CHECK CONDITION, fixed-format
    /// sense HARDWARE ERROR / INTERNAL TARGET FAILURE (44h/00h).
    pub(super) fn internal_target_failure() -> Self {
        let mut sense = [0u8; 18];
        sense[0] = 0x70; // current error, fixed format
        sense[2] = 0x04; // HARDWARE ERROR
        sense[7] = 10; // additional sense length
        sense[12] = 0x44; // INTERNAL TARGET FAILURE
        Response::check_condition(&sense)
    }
}
