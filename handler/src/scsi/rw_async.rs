//! READ and WRITE split in two for asynchronous I/O: [`Lu::start_rw`] does
//! every check `execute` would (operation code, transfer length, LBA range,
//! write protection, data-out length, the range lock) and says where the
//! bytes go; the caller moves them (io_uring) and [`Lu::finish_rw`] turns
//! the outcome into the response `execute` would have given.
//!
//! Only the plain case is split. Anything else (an error to report, a
//! zero-length transfer, a range lock that would wait, another command)
//! is `Elsewhere`: run it through `execute`, which answers it exactly.

use super::lock::{LockMode, OwnedRangeGuard};
use super::opcode::{self, Avail, Command};
use super::{Lu, Response, ScsiError};

/// Where a READ or WRITE's bytes go, with the range lock a WRITE holds
/// until its I/O is done.
#[derive(Debug)]
pub struct RwPlan {
    /// True for a WRITE (data-out to the medium).
    pub write: bool,
    /// Byte offset in the medium.
    pub offset: u64,
    /// Bytes to move: the transfer length (a READ: at most the data-in
    /// buffer, as `execute` fills it).
    pub len: usize,
    /// The write must be durable on completion (FUA, or the write cache is off).
    pub dsync: bool,
    /// Held (shared) while a WRITE's data goes out: COMPARE AND WRITE
    /// excludes it.
    _range: Option<OwnedRangeGuard>,
}

impl Lu {
    /// A READ or WRITE (6/10/12/16) that needs nothing but its bytes moved,
    /// given the data buffer's length; `None` for anything to run through
    /// [`Lu::execute`] instead.
    #[must_use]
    pub fn start_rw(&self, cdb: &[u8], data_len: usize) -> Option<RwPlan> {
        let info = opcode::lookup(cdb).ok()?;
        if info.avail != Avail::Always {
            return None;
        }
        let (rw, write) = match opcode::parse(info, cdb).ok()? {
            Command::Read(rw) => (rw, false),
            Command::Write(rw) => (rw, true),
            _ => return None,
        };
        let len = self.check_transfer(&rw).ok()?;
        let (offset, _) = self.byte_range(rw.lba, rw.blocks).ok()?;
        if len == 0 {
            return None;
        }
        if !write {
            return Some(RwPlan {
                write,
                offset,
                len: len.min(data_len),
                dsync: false,
                _range: None,
            })
            .filter(|p| p.len > 0);
        }
        if self.write_protected() || data_len < len {
            return None;
        }
        let range = self
            .ranges
            .try_lock_owned(rw.lba, rw.blocks, LockMode::Shared)?;
        Some(RwPlan {
            write,
            offset,
            len,
            dsync: self.effective_fua(rw.fua),
            _range: Some(range),
        })
    }

    /// The response to a started READ/WRITE whose I/O ended with `result`
    /// (all `plan.len` bytes moved, or the error); releases its range lock.
    #[must_use]
    pub fn finish_rw(&self, plan: RwPlan, result: std::io::Result<()>) -> Response {
        match result {
            Ok(()) => Response::good(if plan.write { 0 } else { plan.len }),
            Err(e) => {
                let e = if plan.write {
                    ScsiError::Write(e)
                } else {
                    ScsiError::Read(e)
                };
                e.to_response(self.descriptor_sense())
            }
        }
    }
}
