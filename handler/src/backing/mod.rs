//! Backing stores for a logical unit: a byte-addressed medium with vectored
//! I/O straight into the caller's buffers. Knows nothing of SCSI or rings.
//!
//! Errors are plain `std::io::Error`s so that the OS errno survives: the SCSI
//! layer maps EIO to MEDIUM ERROR, ENOSPC/EDQUOT to SPACE ALLOCATION FAILED
//! WRITE PROTECT and EROFS to WRITE PROTECTED.

mod file;
pub mod iov;
mod mem;

use std::io::{self, IoSlice, IoSliceMut};

pub use file::{FileBacking, FileOptions, OpenError};
pub use mem::{FaultOp, MemBacking};

/// One run of equally provisioned bytes, as reported by [`Backing::extent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// True if the bytes have storage behind them (written data).
    pub mapped: bool,
    /// Length in bytes from the queried offset; at least 1 unless at the end.
    pub len: u64,
}

/// A medium the SCSI emulation reads and writes. Offsets and lengths are in
/// bytes; the SCSI layer only issues whole logical blocks inside `len()`.
/// All methods take `&self`: workers call them concurrently.
pub trait Backing: Send + Sync + std::fmt::Debug {
    /// Usable size in bytes.
    fn len(&self) -> u64;

    /// True if the medium has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if writes must be refused (image opened read-only).
    fn is_read_only(&self) -> bool;

    /// Fill `bufs` completely from `offset`.
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()>;

    /// Write all of `bufs` at `offset`; with `fua` the data is durable on
    /// return (a DSYNC write or a write followed by a data sync).
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()>;

    /// Make every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;

    /// The open file behind the medium and the alignment its offsets and
    /// buffers need, for asynchronous I/O that bypasses
    /// [`Backing::read_vectored_at`]/[`Backing::write_vectored_at`]
    /// (`ring::uring`). `None`: this backing only does its own I/O.
    fn async_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, usize)> {
        None
    }

    /// True if [`Backing::discard`] deallocates (so reads return zeros and
    /// [`Backing::extent`] reports the range unmapped).
    fn supports_discard(&self) -> bool;

    /// Deallocate a range; afterwards it reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Make a range read as zeros, keeping it allocated.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Provisioning state of the bytes from `offset` on. Backings that
    /// cannot tell report everything mapped.
    /// A hint that `[offset, offset+len)` will be read soon (PRE-FETCH).
    /// Nothing is promised, so the default does nothing.
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        Ok(Extent {
            mapped: true,
            len: self.len().saturating_sub(offset),
        })
    }
}
