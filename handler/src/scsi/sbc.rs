//! SBC block commands: READ/WRITE, WRITE AND VERIFY, VERIFY, SYNCHRONIZE
//! CACHE, WRITE SAME, UNMAP, COMPARE AND WRITE, GET LBA STATUS. Payloads move
//! between the caller's scatter lists and the backing without copies; only
//! comparisons and WRITE SAME patterns use bounded scratch buffers.

use std::io::{IoSlice, IoSliceMut};

use super::error::ScsiError;
use super::lock::{HookRefusal, LockMode, RangeGuard};
use super::opcode::Rw;
use super::sense::FieldPointer;
use super::{Blocks, Lba, Lu, put_data_in};
use crate::backing::iov;

/// Scratch size for verify reads and WRITE SAME patterns.
const CHUNK: usize = 1 << 20;

/// Most GET LBA STATUS descriptors returned in one answer.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 1024;

impl Lu {
    fn bs(&self) -> u64 {
        u64::from(self.cfg.block_size)
    }

    /// Byte offset and length of `[lba, lba+blocks)`, or LBA OUT OF RANGE.
    pub(super) fn byte_range(&self, lba: Lba, blocks: Blocks) -> Result<(u64, u64), ScsiError> {
        let end = lba
            .0
            .checked_add(blocks.0)
            .ok_or(ScsiError::LbaOutOfRange)?;
        if end > self.capacity().0 {
            return Err(ScsiError::LbaOutOfRange);
        }
        // Cannot overflow: end <= capacity = backing bytes / block size.
        Ok((lba.0 * self.bs(), blocks.0 * self.bs()))
    }

    /// Transfer length within the Block Limits maximum.
    pub(super) fn check_transfer(&self, rw: &Rw) -> Result<usize, ScsiError> {
        if rw.blocks.0 > u64::from(self.cfg.hw_max_sectors) {
            return Err(ScsiError::InvalidFieldInCdb(rw.len_field));
        }
        usize::try_from(rw.blocks.0 * self.bs())
            .map_err(|_| ScsiError::InvalidFieldInCdb(rw.len_field))
    }

    fn check_writable(&self) -> Result<(), ScsiError> {
        if self.write_protected() {
            return Err(ScsiError::WriteProtected);
        }
        Ok(())
    }

    fn need_out(out: &[IoSlice<'_>], need: usize) -> Result<(), ScsiError> {
        let have = iov::total_len(out);
        if have < need {
            return Err(ScsiError::BufferLength { have, need });
        }
        Ok(())
    }

    /// For commands whose data-out size the CDB fixes exactly (WRITE SAME,
    /// COMPARE AND WRITE): LIO's TCMU passthrough hands us the initiator's
    /// expected transfer length unchecked, so a mismatch in either
    /// direction is the initiator's error, not data to guess at.
    fn exact_out(out: &[IoSlice<'_>], need: usize) -> Result<(), ScsiError> {
        let have = iov::total_len(out);
        if have != need {
            return Err(ScsiError::BufferLength { have, need });
        }
        Ok(())
    }

    /// FUA when asked, and always when the write cache is disabled.
    pub(super) fn effective_fua(&self, fua: bool) -> bool {
        fua || !self.write_cache_enabled()
    }

    pub(super) fn read(&self, rw: &Rw, din: &mut [IoSliceMut<'_>]) -> Result<usize, ScsiError> {
        let len = self.check_transfer(rw)?;
        let (off, _) = self.byte_range(rw.lba, rw.blocks)?;
        if len == 0 {
            return Ok(0);
        }
        // A data-in buffer shorter than the transfer is an underflow (the
        // initiator expected less): fill what fits, the transport reports
        // the residual, as LIO does for READs.
        let len = len.min(iov::total_len_mut(din));
        if len == 0 {
            return Ok(0);
        }
        // FUA on a read needs nothing extra: the page cache (if any) is
        // coherent with the medium, so the data returned is the same.
        let mut bufs = iov::sub_slices_mut(din, 0, len);
        self.backing
            .read_vectored_at(&mut bufs, off)
            .map_err(ScsiError::Read)?;
        Ok(len)
    }

    pub(super) fn write(&self, rw: &Rw, out: &[IoSlice<'_>]) -> Result<usize, ScsiError> {
        self.write_range(rw, out, self.effective_fua(rw.fua))?;
        Ok(0)
    }

    /// The shared front of WRITE and WRITE AND VERIFY: checks the transfer,
    /// the range and write protection, then writes the data-out under the
    /// range lock (shared: COMPARE AND WRITE excludes it). Returns the lock,
    /// still held, with the byte offset and length, or `None` for a
    /// zero-length transfer.
    fn write_range(
        &self,
        rw: &Rw,
        out: &[IoSlice<'_>],
        fua: bool,
    ) -> Result<Option<(RangeGuard<'_>, u64, usize)>, ScsiError> {
        let len = self.check_transfer(rw)?;
        let (off, _) = self.byte_range(rw.lba, rw.blocks)?;
        self.check_writable()?;
        if len == 0 {
            return Ok(None);
        }
        Self::need_out(out, len)?;
        let g = self.ranges.lock(rw.lba, rw.blocks, LockMode::Shared);
        let bufs = iov::sub_slices(out, 0, len);
        self.backing
            .write_vectored_at(&bufs, off, fua)
            .map_err(ScsiError::Write)?;
        Ok(Some((g, off, len)))
    }

    /// Read `[off, off+len)` in chunks, calling `check(pos, chunk)` with the
    /// byte position relative to `off`.
    fn scan(
        &self,
        off: u64,
        len: u64,
        mut check: impl FnMut(u64, &[u8]) -> Result<(), ScsiError>,
    ) -> Result<(), ScsiError> {
        let chunk = (CHUNK as u64).min(len);
        let mut buf = vec![0u8; usize::try_from(chunk).unwrap_or(CHUNK)];
        let mut pos = 0u64;
        while pos < len {
            let n = usize::try_from((len - pos).min(chunk)).unwrap_or(CHUNK);
            let b = &mut buf[..n];
            self.backing
                .read_vectored_at(&mut [IoSliceMut::new(b)], off + pos)
                .map_err(ScsiError::Read)?;
            check(pos, b)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
        a.iter().zip(b).position(|(x, y)| x != y)
    }

    /// Compare the medium at `off` with `len` bytes of `out`.
    fn compare_with(&self, off: u64, len: u64, out: &[IoSlice<'_>]) -> Result<(), ScsiError> {
        let mut expect = Vec::new();
        self.scan(off, len, |pos, got| {
            expect.resize(got.len(), 0);
            iov::gather(out, usize::try_from(pos).unwrap_or(usize::MAX), &mut expect);
            match Self::first_difference(got, &expect) {
                Some(i) => Err(ScsiError::Miscompare {
                    offset: pos + i as u64,
                }),
                None => Ok(()),
            }
        })
    }

    pub(super) fn write_verify(
        &self,
        rw: &Rw,
        bytchk: bool,
        out: &[IoSlice<'_>],
    ) -> Result<usize, ScsiError> {
        // The verify must see the medium, so the write is always durable;
        // the range stays locked until the verify is done.
        let Some((_g, off, len)) = self.write_range(rw, out, true)? else {
            return Ok(0);
        };
        if bytchk {
            self.compare_with(off, len as u64, out)?;
        } else {
            self.scan(off, len as u64, |_, _| Ok(()))?;
        }
        Ok(0)
    }

    pub(super) fn verify(
        &self,
        rw: &Rw,
        bytchk: u8,
        out: &[IoSlice<'_>],
    ) -> Result<usize, ScsiError> {
        if bytchk == 1 {
            // Only a byte-by-byte compare transfers data, so only it is bound
            // by the maximum transfer length.
            self.check_transfer(rw)?;
        }
        let (off, len) = self.byte_range(rw.lba, rw.blocks)?;
        if len == 0 {
            return Ok(0);
        }
        match bytchk {
            0 => self.scan(off, len, |_, _| Ok(()))?,
            1 => {
                Self::need_out(out, usize::try_from(len).unwrap_or(usize::MAX))?;
                self.compare_with(off, len, out)?;
            }
            _ => {
                // BYTCHK 11b: one block of data-out compared with every block.
                let bs = usize::try_from(self.bs()).unwrap_or(usize::MAX);
                Self::need_out(out, bs)?;
                let mut block = vec![0u8; bs];
                iov::gather(out, 0, &mut block);
                self.scan(off, len, |pos, got| {
                    for (i, b) in got.chunks(bs).enumerate() {
                        if let Some(j) = Self::first_difference(b, &block) {
                            return Err(ScsiError::Miscompare {
                                offset: pos + (i * bs + j) as u64,
                            });
                        }
                    }
                    Ok(())
                })?;
            }
        }
        Ok(0)
    }

    pub(super) fn sync_cache(&self, lba: Lba, blocks: Blocks) -> Result<usize, ScsiError> {
        // Zero blocks means "to the end of the medium".
        if blocks.0 == 0 {
            if lba.0 > self.capacity().0 {
                return Err(ScsiError::LbaOutOfRange);
            }
        } else {
            self.byte_range(lba, blocks)?;
        }
        self.backing.sync().map_err(ScsiError::Sync)?;
        Ok(0)
    }

    pub(super) fn write_same(
        &self,
        rw: &Rw,
        unmap: bool,
        anchor: bool,
        ndob: bool,
        out: &[IoSlice<'_>],
    ) -> Result<usize, ScsiError> {
        // A write-protected LU says so first, whatever else is asked (as
        // LIO, which checks write protection before the backend sees the
        // CDB).
        self.check_writable()?;
        if anchor {
            // ANC_SUP is zero in the LBP VPD page.
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 4)));
        }
        if unmap && !self.lbp() {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 3)));
        }
        // WSNZ=0: zero blocks means every block from the LBA to the end.
        let mut rw = *rw;
        if rw.blocks.0 == 0 {
            rw.blocks = Blocks(
                self.capacity()
                    .0
                    .checked_sub(rw.lba.0)
                    .ok_or(ScsiError::LbaOutOfRange)?,
            );
            if rw.blocks.0 == 0 {
                return Ok(0);
            }
        }
        let max = self.cfg.max_write_same_len;
        if max != 0 && rw.blocks.0 > max {
            return Err(ScsiError::InvalidFieldInCdb(rw.len_field));
        }
        let (off, len) = self.byte_range(rw.lba, rw.blocks)?;
        self.check_writable()?;
        let bs = usize::try_from(self.bs()).unwrap_or(usize::MAX);
        let mut block = vec![0u8; bs];
        if !ndob {
            Self::exact_out(out, bs)?;
            iov::gather(out, 0, &mut block);
        }
        let _g = self.ranges.lock(rw.lba, rw.blocks, LockMode::Shared);
        let zero = block.iter().all(|&b| b == 0);
        let res = if unmap {
            // UNMAP=1 asks for deallocation whatever the data says (as LIO
            // and libiscsi read SBC); with LBPRZ=1 the blocks then read as
            // zeros.
            self.backing.discard(off, len)
        } else if zero {
            self.backing.write_zeroes(off, len)
        } else {
            let per = (CHUNK / bs).max(1);
            let mut pattern = Vec::with_capacity(per * bs);
            for _ in 0..per {
                pattern.extend_from_slice(&block);
            }
            let mut pos = 0u64;
            let mut r = Ok(());
            while pos < len {
                let n =
                    usize::try_from((len - pos).min(pattern.len() as u64)).unwrap_or(pattern.len());
                r = self.backing.write_vectored_at(
                    &[IoSlice::new(&pattern[..n])],
                    off + pos,
                    false,
                );
                if r.is_err() {
                    break;
                }
                pos += n as u64;
            }
            r
        };
        res.map_err(ScsiError::Write)?;
        if !self.write_cache_enabled() {
            self.backing.sync().map_err(ScsiError::Sync)?;
        }
        Ok(0)
    }

    pub(super) fn unmap(
        &self,
        anchor: bool,
        plen: usize,
        out: &[IoSlice<'_>],
    ) -> Result<usize, ScsiError> {
        self.check_writable()?;
        if anchor {
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 0)));
        }
        if plen == 0 {
            return Ok(0);
        }
        if plen < 8 || iov::total_len(out) < plen {
            return Err(ScsiError::ParameterListLength);
        }
        let mut p = vec![0u8; plen];
        iov::gather(out, 0, &mut p);
        let bad = |byte: usize| {
            ScsiError::InvalidFieldInParam(FieldPointer::param_byte(super::sat_u16(byte)))
        };
        let data_len = usize::from(u16::from_be_bytes([p[0], p[1]]));
        let bd_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if data_len + 2 > plen {
            return Err(bad(0));
        }
        if bd_len + 8 > plen || bd_len + 6 > data_len {
            return Err(bad(2));
        }
        // A trailing partial descriptor is ignored (SBC-4 5.32.2).
        let count = bd_len / 16;
        if count as u64 > u64::from(self.cfg.max_unmap_descriptors) {
            return Err(bad(2));
        }
        self.check_writable()?;
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let d = &p[8 + 16 * i..8 + 16 * (i + 1)];
            let lba = Lba(u64::from_be_bytes(d[..8].try_into().unwrap_or_default()));
            let blocks = Blocks(u64::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]])));
            if blocks.0 > u64::from(self.cfg.max_unmap_lba_count) {
                return Err(bad(8 + 16 * i + 8));
            }
            let (off, len) = self.byte_range(lba, blocks)?;
            ranges.push((lba, blocks, off, len));
        }
        for (lba, blocks, off, len) in ranges {
            if len == 0 {
                continue;
            }
            let _g = self.ranges.lock(lba, blocks, LockMode::Shared);
            self.backing.discard(off, len).map_err(ScsiError::Write)?;
        }
        Ok(0)
    }

    /// Holds `rw`'s range for a read-modify-write (COMPARE AND WRITE,
    /// ORWRITE): exclusive against every other command on this node, and
    /// through the cluster hook (if any) against the other nodes.
    fn lock_atomic(&self, rw: &Rw) -> Result<AtomicGuard<'_>, ScsiError> {
        let local = self.ranges.lock(rw.lba, rw.blocks, LockMode::Exclusive);
        let cluster = match &self.caw_hook {
            Some(h) => Some(
                h.enter(rw.lba, rw.blocks)
                    .map_err(|HookRefusal::Busy| ScsiError::Busy)?,
            ),
            None => None,
        };
        Ok(AtomicGuard {
            _cluster: cluster,
            _local: local,
        })
    }

    /// ORWRITE(16) without protection information: the blocks become the
    /// bitwise OR of their contents and the data-out, as one uninterrupted
    /// read-modify-write (SBC-3 5.8).
    pub(super) fn or_write(&self, rw: &Rw, out: &[IoSlice<'_>]) -> Result<usize, ScsiError> {
        let len = self.check_transfer(rw)?;
        let (off, _) = self.byte_range(rw.lba, rw.blocks)?;
        self.check_writable()?;
        if len == 0 {
            return Ok(0);
        }
        Self::need_out(out, len)?;
        let _atomic = self.lock_atomic(rw)?;
        let mut cur = vec![0u8; len];
        self.backing
            .read_vectored_at(&mut [IoSliceMut::new(&mut cur)], off)
            .map_err(ScsiError::Read)?;
        let mut data = vec![0u8; len];
        iov::gather(out, 0, &mut data);
        for (c, d) in cur.iter_mut().zip(&data) {
            *c |= d;
        }
        self.backing
            .write_vectored_at(&[IoSlice::new(&cur)], off, self.effective_fua(rw.fua))
            .map_err(ScsiError::Write)?;
        Ok(0)
    }

    /// PRE-FETCH(10)/(16). Zero blocks means "to the end of the medium".
    /// GOOD, not CONDITION MET: nothing is guaranteed to stay cached (with
    /// O_DIRECT there is no cache at all); buffered backings are told to
    /// read ahead.
    pub(super) fn pre_fetch(&self, lba: Lba, blocks: Blocks) -> Result<usize, ScsiError> {
        let blocks = if blocks.0 == 0 {
            Blocks(
                self.capacity()
                    .0
                    .checked_sub(lba.0)
                    .ok_or(ScsiError::LbaOutOfRange)?,
            )
        } else {
            blocks
        };
        let (off, len) = self.byte_range(lba, blocks)?;
        self.backing.prefetch(off, len);
        Ok(0)
    }

    /// READ DEFECT DATA(10)/(12): a file or a shared LUN has no defect
    /// lists; both are returned, empty, in the format asked for.
    pub(super) fn read_defect_data(
        &self,
        long: bool,
        plist: bool,
        glist: bool,
        format: u8,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> usize {
        let flags = (u8::from(plist) << 4) | (u8::from(glist) << 3) | (format & 7);
        let hdr: &[u8] = if long {
            &[0, flags, 0, 0, 0, 0, 0, 0]
        } else {
            &[0, flags, 0, 0]
        };
        put_data_in(hdr, alloc, din)
    }

    pub(super) fn compare_and_write(
        &self,
        rw: &Rw,
        out: &[IoSlice<'_>],
    ) -> Result<usize, ScsiError> {
        if rw.blocks.0 > u64::from(self.cfg.max_compare_write_len) {
            return Err(ScsiError::InvalidFieldInCdb(rw.len_field));
        }
        let len = self.check_transfer(rw)?;
        let (off, _) = self.byte_range(rw.lba, rw.blocks)?;
        self.check_writable()?;
        // The data-out must be exactly verify + write data. A mismatch means
        // the NUMBER OF LOGICAL BLOCKS field does not describe the transfer
        // (libiscsi sends 256 blocks' worth with the one-byte field wrapped
        // to 0): point at the field rather than compare a guess.
        if iov::total_len(out) != 2 * len {
            return Err(ScsiError::InvalidFieldInCdb(rw.len_field));
        }
        if len == 0 {
            return Ok(0);
        }
        let _atomic = self.lock_atomic(rw)?;
        let mut expect = vec![0u8; len];
        iov::gather(out, 0, &mut expect);
        let mut cur = vec![0u8; len];
        self.backing
            .read_vectored_at(&mut [IoSliceMut::new(&mut cur)], off)
            .map_err(ScsiError::Read)?;
        if let Some(i) = Self::first_difference(&cur, &expect) {
            return Err(ScsiError::Miscompare { offset: i as u64 });
        }
        let bufs = iov::sub_slices(out, len, len);
        self.backing
            .write_vectored_at(&bufs, off, self.effective_fua(rw.fua))
            .map_err(ScsiError::Write)?;
        Ok(0)
    }

    pub(super) fn get_lba_status(
        &self,
        lba: Lba,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        let cap = self.capacity().0;
        if lba.0 >= cap {
            return Err(ScsiError::LbaOutOfRange);
        }
        let bs = self.bs();
        let max = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let mut descs: Vec<(u64, u64, bool)> = Vec::new();
        let mut cur = lba.0;
        while cur < cap && descs.len() < max {
            let ext = self.backing.extent(cur * bs).map_err(ScsiError::Read)?;
            let end_byte = (cur * bs).saturating_add(ext.len);
            // A block is unmapped only if all of it is; a partly mapped block
            // counts as mapped.
            let mut end = if ext.mapped {
                end_byte.div_ceil(bs)
            } else {
                end_byte / bs
            };
            let mut mapped = ext.mapped;
            if end <= cur {
                mapped = true;
                end = cur + 1;
            }
            let end = end.min(cap);
            match descs.last_mut() {
                Some(last) if last.2 == mapped && last.0 + last.1 == cur => last.1 += end - cur,
                _ => descs.push((cur, end - cur, mapped)),
            }
            cur = end;
        }
        let mut d = vec![0u8; 8];
        for (start, n, mapped) in descs {
            // The count field is 32 bits: split longer runs.
            let mut s = start;
            let mut left = n;
            while left > 0 {
                let take = left.min(u64::from(u32::MAX));
                d.extend(s.to_be_bytes());
                d.extend(u32::try_from(take).unwrap_or(u32::MAX).to_be_bytes());
                d.extend([u8::from(!mapped), 0, 0, 0]);
                s += take;
                left -= take;
            }
        }
        let l = u32::try_from(d.len() - 4).unwrap_or(u32::MAX).to_be_bytes();
        d[..4].copy_from_slice(&l);
        Ok(put_data_in(&d, alloc, din))
    }
}

/// The locks of a read-modify-write, released cluster side first (fields
/// drop in declaration order).
struct AtomicGuard<'a> {
    _cluster: Option<Box<dyn Send>>,
    _local: RangeGuard<'a>,
}
