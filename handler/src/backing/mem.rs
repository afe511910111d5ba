//! In-memory backing for tests and fuzzing, with fault injection and
//! counters that let tests see FUA and SYNCHRONIZE CACHE reach the medium.

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use super::{Backing, Extent};

/// Which operation an injected fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// Reads only.
    Read,
    /// Writes, zeroing and discards.
    Write,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    start: u64,
    end: u64,
    op: FaultOp,
    errno: i32,
}

#[derive(Debug)]
struct State {
    data: Vec<u8>,
    /// Allocation map, one flag per `unit` bytes.
    mapped: Vec<bool>,
}

/// A RAM disk. Starts fully unmapped (reads zeros), like a sparse file.
#[derive(Debug)]
pub struct MemBacking {
    state: RwLock<State>,
    unit: u64,
    read_only: AtomicBool,
    faults: Mutex<Vec<Fault>>,
    syncs: AtomicU64,
    fua_writes: AtomicU64,
}

impl MemBacking {
    /// `len` bytes, tracking allocation per `unit` bytes (e.g. 4096).
    pub fn new(len: usize, unit: usize) -> Self {
        let unit = unit.max(1);
        Self {
            state: RwLock::new(State {
                data: vec![0; len],
                mapped: vec![false; len.div_ceil(unit)],
            }),
            unit: unit as u64,
            read_only: AtomicBool::new(false),
            faults: Mutex::new(Vec::new()),
            syncs: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        }
    }

    /// Make the medium read-only (or writable again).
    pub fn set_read_only(&self, ro: bool) {
        self.read_only.store(ro, Ordering::Relaxed);
    }

    /// Fail `op` on any byte in `[start, start+len)` with OS error `errno`.
    pub fn inject_fault(&self, start: u64, len: u64, op: FaultOp, errno: i32) {
        lock(&self.faults).push(Fault {
            start,
            end: start.saturating_add(len),
            op,
            errno,
        });
    }

    /// Remove all injected faults.
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// How many times `sync` was called.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// How many writes asked for FUA.
    pub fn fua_write_count(&self) -> u64 {
        self.fua_writes.load(Ordering::Relaxed)
    }

    /// A copy of `len` bytes at `offset` (test inspection).
    pub fn snapshot(&self, offset: usize, len: usize) -> Vec<u8> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.data[offset..offset + len].to_vec()
    }

    /// True if the allocation unit holding `offset` is mapped.
    pub fn is_mapped(&self, offset: u64) -> bool {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.mapped
            .get(usize::try_from(offset / self.unit).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(false)
    }

    fn check(&self, op: FaultOp, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.saturating_add(len);
        if end > self.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "beyond end"));
        }
        if op == FaultOp::Write && self.is_read_only() {
            return Err(io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        }
        for f in lock(&self.faults).iter() {
            if f.op == op && f.start < end && offset < f.end {
                return Err(io::Error::from_raw_os_error(f.errno));
            }
        }
        Ok(())
    }

    fn range(offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        let s = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let l = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        Ok(s..s + l)
    }

    fn set_mapped(st: &mut State, unit: u64, offset: u64, len: u64, mapped: bool) {
        if len == 0 {
            return;
        }
        let (first, last) = if mapped {
            (offset / unit, (offset + len - 1) / unit)
        } else {
            // Only units wholly inside the range become unmapped.
            let first = offset.div_ceil(unit);
            let end = (offset + len) / unit;
            if end == 0 || first >= end {
                return;
            }
            (first, end - 1)
        };
        for u in first..=last {
            if let Some(m) = usize::try_from(u).ok().and_then(|u| st.mapped.get_mut(u)) {
                *m = mapped;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backing for MemBacking {
    fn len(&self) -> u64 {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.data.len() as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let total = super::iov::total_len_mut(bufs) as u64;
        self.check(FaultOp::Read, offset, total)?;
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(offset, total)?;
        let mut pos = r.start;
        for b in bufs.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&st.data[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64, fua: bool) -> io::Result<()> {
        let total = super::iov::total_len(bufs) as u64;
        self.check(FaultOp::Write, offset, total)?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(offset, total)?;
        let mut pos = r.start;
        for b in bufs {
            st.data[pos..pos + b.len()].copy_from_slice(b);
            pos += b.len();
        }
        Self::set_mapped(&mut st, self.unit, offset, total, true);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(FaultOp::Write, offset, len)?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(offset, len)?;
        st.data[r].fill(0);
        Self::set_mapped(&mut st, self.unit, offset, len, false);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(FaultOp::Write, offset, len)?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let r = Self::range(offset, len)?;
        st.data[r].fill(0);
        Self::set_mapped(&mut st, self.unit, offset, len, true);
        Ok(())
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        let len = self.len();
        if offset >= len {
            return Ok(Extent {
                mapped: true,
                len: 0,
            });
        }
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let first = usize::try_from(offset / self.unit).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mapped = st.mapped[first];
        let run = st.mapped[first..]
            .iter()
            .take_while(|&&m| m == mapped)
            .count() as u64;
        let end = ((first as u64 + run) * self.unit).min(len);
        Ok(Extent {
            mapped,
            len: end - offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_discard_extent() {
        let m = MemBacking::new(64 * 1024, 4096);
        assert_eq!(
            m.extent(0).unwrap(),
            Extent {
                mapped: false,
                len: 65536
            }
        );
        let d = vec![0xabu8; 8192];
        m.write_vectored_at(&[IoSlice::new(&d)], 4096, true)
            .unwrap();
        assert_eq!(m.fua_write_count(), 1);
        assert_eq!(
            m.extent(0).unwrap(),
            Extent {
                mapped: false,
                len: 4096
            }
        );
        assert_eq!(
            m.extent(5000).unwrap(),
            Extent {
                mapped: true,
                len: 12288 - 5000
            }
        );
        m.discard(4096, 4096).unwrap();
        assert_eq!(
            m.extent(4096).unwrap(),
            Extent {
                mapped: false,
                len: 4096
            }
        );
        let mut out = vec![1u8; 8192];
        m.read_vectored_at(&mut [IoSliceMut::new(&mut out)], 4096)
            .unwrap();
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert!(out[4096..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn faults_and_read_only() {
        let m = MemBacking::new(8192, 512);
        m.inject_fault(1000, 1, FaultOp::Read, 5);
        let mut b = [0u8; 512];
        assert!(
            m.read_vectored_at(&mut [IoSliceMut::new(&mut b)], 0)
                .is_ok()
        );
        let e = m
            .read_vectored_at(&mut [IoSliceMut::new(&mut b)], 512)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5));
        m.set_read_only(true);
        let e = m
            .write_vectored_at(&[IoSlice::new(&b)], 0, false)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ReadOnlyFilesystem);
    }
}
