//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): a copy
//! manager for block to block copies inside this logical unit.
//!
//! Scope, as LIO's and tcmu-runner's: identification CSCD descriptors (E4h)
//! whose designator is this LU's NAA, block to block segment descriptors
//! (02h). A segment that uses a CSCD naming anything else aborts with COPY
//! TARGET DEVICE NOT REACHABLE, which tells the initiator to fall back to
//! READ and WRITE; CSCDs no segment uses are only checked for form.
//!
//! The whole parameter list is checked before the first block moves, so a
//! refused command has changed nothing. The copy then runs segment by
//! segment in bounded chunks through the backing, each destination chunk
//! written under the range lock exactly as a WRITE is (COMPARE AND WRITE
//! stays atomic against it). Overlapping ranges copy as if the source had
//! been read first (memmove, not memcpy).
//!
//! Status is kept per list identifier for RECEIVE COPY RESULTS (COPY
//! STATUS, FAILED SEGMENT DETAILS). SPC keys it by I_T nexus; the emulation
//! does not see the nexus, so list identifiers are per LU here, and a
//! command reusing a list identifier supersedes the earlier one instead of
//! being refused with OPERATION IN PROGRESS, which would let one initiator's
//! copies fail another's.

use std::io::{IoSlice, IoSliceMut};
use std::sync::{Mutex, MutexGuard};

use super::error::{CopyFault, ScsiError};
use super::lock::LockMode;
use super::opcode::Command;
use super::sense::{self, FieldPointer, SenseInfo};
use super::{Blocks, Lba, Lu, put_data_in, sat_u8, sat_u16};
use crate::backing::iov::{self, AlignedBuf};

/// Most CSCD descriptors in one parameter list (as LIO: a source and a
/// destination).
pub const MAX_CSCD_DESCRIPTORS: usize = 2;
/// Most segment descriptors in one parameter list.
pub const MAX_SEGMENT_DESCRIPTORS: usize = 4;
/// Most bytes of CSCD plus segment descriptors (as LIO).
pub const MAX_DESCRIPTOR_LIST_LEN: usize = 1024;
/// Most bytes one segment copies. With [`MAX_SEGMENT_DESCRIPTORS`] this
/// bounds one command to 256 MiB of copying, LIO's bound, so a command ends
/// well inside the initiator's and TCMU's timeouts.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Copies whose status is kept at once (in progress or held for RECEIVE
/// COPY RESULTS); beyond it the oldest completed status is dropped.
pub const MAX_TRACKED_COPIES: usize = 64;

const HEADER_LEN: usize = 16;
const CSCD_LEN: usize = 32;
const BLOCK_TO_BLOCK_LEN: usize = 28;
/// Identification descriptor CSCD type code.
const CSCD_IDENTIFICATION: u8 = 0xe4;
/// Block device to block device segment type code.
const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
/// CSCD descriptor IDs above this are not list indexes (SPC-4 6.4.6.1).
const MAX_CSCD_INDEX: u16 = 0x07ff;
/// Largest designator an identification CSCD descriptor holds.
const MAX_DESIGNATOR_LEN: usize = 20;
/// LIST ID USAGE: hold status for RECEIVE COPY RESULTS.
const USAGE_HOLD: u8 = 0b00;
/// LIST ID USAGE: list identifier valid, no status held.
const USAGE_NO_HOLD: u8 = 0b10;
/// LIST ID USAGE: no list identifier.
const USAGE_NO_LIST_ID: u8 = 0b11;
/// Copy buffer size: one read and one write per chunk.
const CHUNK: u64 = 1 << 20;
/// Copy buffer alignment, so O_DIRECT backings need no bounce buffer.
const BUF_ALIGN: usize = 4096;

/// The copy commands, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyCommand {
    /// EXTENDED COPY (LID1) and its parameter list length.
    ExtendedCopy {
        /// Parameter list length.
        plen: usize,
    },
    /// RECEIVE COPY RESULTS, COPY STATUS.
    CopyStatus {
        /// Which command.
        list_id: u8,
        /// Allocation length.
        alloc: usize,
    },
    /// RECEIVE COPY RESULTS, OPERATING PARAMETERS.
    OperatingParameters {
        /// Allocation length.
        alloc: usize,
    },
    /// RECEIVE COPY RESULTS, FAILED SEGMENT DETAILS.
    FailedSegmentDetails {
        /// Which command.
        list_id: u8,
        /// Allocation length.
        alloc: usize,
    },
}

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn be64(p: &[u8], at: usize) -> u64 {
    (u64::from(be32(p, at)) << 32) | u64::from(be32(p, at + 4))
}

fn length(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Parser of EXTENDED COPY(LID1) for the opcode table.
pub(super) fn parse_extended_copy(c: &[u8]) -> Result<Command, ScsiError> {
    Ok(Command::Copy(CopyCommand::ExtendedCopy {
        plen: length(be32(c, 10)),
    }))
}

/// Parser of RECEIVE COPY STATUS(LID1) for the opcode table.
pub(super) fn parse_copy_status(c: &[u8]) -> Result<Command, ScsiError> {
    Ok(Command::Copy(CopyCommand::CopyStatus {
        list_id: c[2],
        alloc: length(be32(c, 10)),
    }))
}

/// Parser of RECEIVE COPY OPERATING PARAMETERS for the opcode table.
pub(super) fn parse_operating_parameters(c: &[u8]) -> Result<Command, ScsiError> {
    Ok(Command::Copy(CopyCommand::OperatingParameters {
        alloc: length(be32(c, 10)),
    }))
}

/// Parser of RECEIVE COPY FAILURE DETAILS(LID1) for the opcode table.
pub(super) fn parse_failed_segment_details(c: &[u8]) -> Result<Command, ScsiError> {
    Ok(Command::Copy(CopyCommand::FailedSegmentDetails {
        list_id: c[2],
        alloc: length(be32(c, 10)),
    }))
}

/// INVALID FIELD IN PARAMETER LIST at byte `at`.
fn bad(at: usize) -> ScsiError {
    ScsiError::InvalidFieldInParam(FieldPointer::param_byte(sat_u16(at)))
}

/// A copy fault pointing at parameter list byte `at`.
fn fault(f: CopyFault, at: usize) -> ScsiError {
    ScsiError::Copy(f, FieldPointer::param_byte(sat_u16(at)))
}

/// The parameter list header (SPC-4 6.4.3.1).
#[derive(Debug, Clone, Copy)]
struct Header {
    list_id: u8,
    usage: u8,
    cscd_len: usize,
    segment_len: usize,
}

impl Header {
    fn parse(h: &[u8]) -> Result<Self, ScsiError> {
        let usage = (h[1] >> 3) & 3;
        if usage == 0b01 {
            return Err(ScsiError::InvalidFieldInParam(FieldPointer::param(1, 4)));
        }
        if usage == USAGE_NO_LIST_ID && h[0] != 0 {
            return Err(bad(0));
        }
        Ok(Self {
            list_id: h[0],
            usage,
            cscd_len: usize::from(be16(h, 2)),
            segment_len: length(be32(h, 8)),
        })
    }

    /// Whether the command has a list identifier RECEIVE COPY RESULTS can name.
    fn tracked(&self) -> bool {
        matches!(self.usage, USAGE_HOLD | USAGE_NO_HOLD)
    }
}

/// An identification CSCD descriptor, as far as a copy needs it.
#[derive(Debug, Clone, Copy)]
struct Cscd {
    /// Offset in the parameter list.
    at: usize,
    /// Its designator is this LU's NAA.
    ours: bool,
    peripheral_type: u8,
    block_len: u32,
}

/// A block to block segment descriptor.
#[derive(Debug, Clone, Copy)]
struct Segment {
    at: usize,
    source: u16,
    destination: u16,
    blocks: u64,
    source_lba: u64,
    destination_lba: u64,
}

/// One checked segment: copy `blocks` from `source` to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    source: Lba,
    destination: Lba,
    blocks: Blocks,
}

/// Where a command's status stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    InProgress,
    Done,
    Failed,
}

/// The status of one EXTENDED COPY with a list identifier.
#[derive(Debug, Clone, Copy)]
struct Record {
    list_id: u8,
    /// Tells commands that reused a list identifier apart.
    seq: u64,
    /// Keep the status after completion (LIST ID USAGE 00b).
    hold: bool,
    state: CopyState,
    segments: u16,
    bytes: u64,
    /// COPY STATUS of the completed command not yet delivered.
    status_held: bool,
    /// FAILED SEGMENT DETAILS not yet delivered.
    failure: Option<SenseInfo>,
}

#[derive(Debug, Default)]
struct Tracked {
    next: u64,
    /// Oldest first.
    records: Vec<Record>,
}

/// The copy manager's memory of commands with list identifiers.
#[derive(Debug, Default)]
pub(super) struct CopyManager {
    tracked: Mutex<Tracked>,
}

impl CopyManager {
    fn lock(&self) -> MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new command uses `list_id`: what was held under it is gone.
    fn forget(&self, list_id: u8) {
        self.lock().records.retain(|r| r.list_id != list_id);
    }

    /// Track a command that starts copying; returns its ticket.
    fn start(&self, list_id: u8, hold: bool) -> u64 {
        let mut t = self.lock();
        t.next += 1;
        let seq = t.next;
        t.records.retain(|r| r.list_id != list_id);
        if t.records.len() >= MAX_TRACKED_COPIES {
            let victim = t
                .records
                .iter()
                .position(|r| r.state != CopyState::InProgress)
                .unwrap_or(0);
            t.records.remove(victim);
        }
        t.records.push(Record {
            list_id,
            seq,
            hold,
            state: CopyState::InProgress,
            segments: 0,
            bytes: 0,
            status_held: false,
            failure: None,
        });
        seq
    }

    fn with(&self, seq: u64, f: impl FnOnce(&mut Vec<Record>, usize)) {
        let mut t = self.lock();
        if let Some(i) = t.records.iter().position(|r| r.seq == seq) {
            f(&mut t.records, i);
        }
    }

    fn progress(&self, seq: u64, segments: usize, bytes: u64) {
        self.with(seq, |r, i| {
            r[i].segments = sat_u16(segments);
            r[i].bytes = bytes;
        });
    }

    fn finish(&self, seq: u64, failure: Option<SenseInfo>) {
        self.with(seq, |r, i| {
            if !r[i].hold {
                r.remove(i);
                return;
            }
            let rec = &mut r[i];
            rec.state = if failure.is_some() {
                CopyState::Failed
            } else {
                CopyState::Done
            };
            rec.status_held = true;
            rec.failure = failure;
        });
    }

    fn find(&self, list_id: u8) -> Option<Record> {
        self.lock()
            .records
            .iter()
            .find(|r| r.list_id == list_id)
            .copied()
    }

    /// The application client has the completed command's COPY STATUS
    /// (or FAILED SEGMENT DETAILS): drop it, and the record once nothing
    /// of it is left to deliver.
    fn delivered(&self, seq: u64, status: bool) {
        self.with(seq, |r, i| {
            if r[i].state == CopyState::InProgress {
                return;
            }
            if status {
                r[i].status_held = false;
            } else {
                r[i].failure = None;
            }
            if !r[i].status_held && r[i].failure.is_none() {
                r.remove(i);
            }
        });
    }
}

/// COPY STATUS transfer count: (TRANSFER COUNT UNITS, TRANSFER COUNT),
/// in bytes while that fits 32 bits, else in KiB, MiB, ... (F1h, F2h, ...).
fn transfer_count(bytes: u64) -> (u8, u32) {
    let mut units = 0u8;
    let mut v = bytes;
    while v > u64::from(u32::MAX) {
        v >>= 10;
        units = if units == 0 { 0xf1 } else { units + 1 };
    }
    (units, u32::try_from(v).unwrap_or(u32::MAX))
}

impl Lu {
    /// EXTENDED COPY and RECEIVE COPY RESULTS.
    pub(super) fn copy_command(
        &self,
        cmd: CopyCommand,
        out: &[IoSlice<'_>],
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        match cmd {
            CopyCommand::ExtendedCopy { plen } => self.extended_copy(plen, out).map(|()| 0),
            CopyCommand::OperatingParameters { alloc } => {
                Ok(put_data_in(&self.operating_parameters(), alloc, din))
            }
            CopyCommand::CopyStatus { list_id, alloc } => self.copy_status(list_id, alloc, din),
            CopyCommand::FailedSegmentDetails { list_id, alloc } => {
                self.failed_segment_details(list_id, alloc, din)
            }
        }
    }

    fn copy_block_size(&self) -> u64 {
        u64::from(self.cfg.block_size)
    }

    /// MAXIMUM SEGMENT LENGTH: what a 16-bit block count allows, capped.
    fn max_segment_bytes(&self) -> u64 {
        MAX_SEGMENT_BYTES.min(u64::from(u16::MAX) * self.copy_block_size())
    }

    fn extended_copy(&self, plen: usize, out: &[IoSlice<'_>]) -> Result<(), ScsiError> {
        // No parameter list: nothing to do, nothing changes (SPC-4 6.4.1).
        if plen == 0 {
            return Ok(());
        }
        if plen < HEADER_LEN || iov::total_len(out) < plen {
            return Err(ScsiError::ParameterListLength);
        }
        let mut h = [0u8; HEADER_LEN];
        iov::gather(out, 0, &mut h);
        let header = Header::parse(&h)?;
        if header.tracked() {
            self.copies.forget(header.list_id);
        }
        let lists = header.cscd_len as u64 + header.segment_len as u64;
        if lists > MAX_DESCRIPTOR_LIST_LEN as u64 {
            return Err(ScsiError::ParameterListLength);
        }
        if be32(&h, 12) != 0 {
            // Inline data is for stream devices; MAXIMUM INLINE DATA LENGTH is 0.
            return Err(bad(12));
        }
        // Bounded by MAX_DESCRIPTOR_LIST_LEN above, whatever plen says.
        let need = HEADER_LEN + header.cscd_len + header.segment_len;
        if need > plen {
            return Err(ScsiError::ParameterListLength);
        }
        let mut p = vec![0u8; need];
        iov::gather(out, 0, &mut p);
        let cscds = self.cscd_descriptors(&p, header.cscd_len)?;
        let segments = segment_descriptors(&p, HEADER_LEN + header.cscd_len, header.segment_len)?;
        let plan = segments
            .iter()
            .map(|s| self.check_segment(&cscds, s))
            .collect::<Result<Vec<_>, _>>()?;
        if !plan.is_empty() && self.write_protected() {
            return Err(ScsiError::WriteProtected);
        }
        let seq = header.tracked().then(|| {
            self.copies
                .start(header.list_id, header.usage == USAGE_HOLD)
        });
        let r = self.copy_extents(&plan, seq);
        if let Some(seq) = seq {
            self.copies
                .finish(seq, r.as_ref().err().and_then(ScsiError::sense_info));
        }
        r
    }

    /// The CSCD descriptor list at `HEADER_LEN`, `len` bytes.
    fn cscd_descriptors(&self, p: &[u8], len: usize) -> Result<Vec<Cscd>, ScsiError> {
        let naa = self.cfg.identity.naa.as_bytes();
        let end = HEADER_LEN + len;
        let mut out = Vec::new();
        let mut at = HEADER_LEN;
        while at < end {
            if out.len() == MAX_CSCD_DESCRIPTORS {
                return Err(fault(CopyFault::TooManyCscds, 2));
            }
            if p[at] != CSCD_IDENTIFICATION {
                return Err(fault(CopyFault::UnsupportedCscdType, at));
            }
            if at + CSCD_LEN > end {
                // The list length cuts the descriptor.
                return Err(bad(2));
            }
            let d = &p[at..at + CSCD_LEN];
            let dlen = usize::from(d[7]);
            if dlen > MAX_DESIGNATOR_LEN {
                return Err(bad(at + 7));
            }
            // Code set binary, associated with the LU, NAA: what VPD 0x83
            // reports for this LU. LU ID TYPE and NUL are ignored (SPC-4).
            let ours = d[4] & 0x0f == 1 && d[5] & 0x3f == 0x03 && &d[8..8 + dlen] == naa;
            out.push(Cscd {
                at,
                ours,
                peripheral_type: d[1] & 0x1f,
                block_len: u32::from_be_bytes([0, d[29], d[30], d[31]]),
            });
            at += CSCD_LEN;
        }
        Ok(out)
    }

    /// Resolve a segment's CSCDs to this LU and check its ranges.
    fn check_segment(&self, cscds: &[Cscd], s: &Segment) -> Result<Extent, ScsiError> {
        for (index, field) in [(s.source, s.at + 4), (s.destination, s.at + 6)] {
            if index > MAX_CSCD_INDEX {
                return Err(bad(field));
            }
            let c = cscds
                .get(usize::from(index))
                .ok_or_else(|| fault(CopyFault::TargetNotReachable, field))?;
            if !c.ours {
                return Err(fault(CopyFault::TargetNotReachable, c.at + 4));
            }
            if c.peripheral_type != 0 {
                return Err(ScsiError::Copy(
                    CopyFault::IncorrectTargetType,
                    FieldPointer::param(sat_u16(c.at + 1), 4),
                ));
            }
            if c.block_len != self.cfg.block_size {
                return Err(bad(c.at + 29));
            }
        }
        if s.blocks * self.copy_block_size() > self.max_segment_bytes() {
            return Err(bad(s.at + 10));
        }
        let cap = self.capacity().0;
        for (lba, field) in [(s.source_lba, s.at + 12), (s.destination_lba, s.at + 20)] {
            if lba.checked_add(s.blocks).is_none_or(|end| end > cap) {
                return Err(fault(CopyFault::TargetNotReachable, field));
            }
        }
        Ok(Extent {
            source: Lba(s.source_lba),
            destination: Lba(s.destination_lba),
            blocks: Blocks(s.blocks),
        })
    }

    /// Copy the checked segments in order, reporting progress to `seq`.
    fn copy_extents(&self, plan: &[Extent], seq: Option<u64>) -> Result<(), ScsiError> {
        let bs = self.copy_block_size();
        let longest = plan.iter().map(|e| e.blocks.0).max().unwrap_or(0);
        let per_chunk = (CHUNK / bs).clamp(1, longest.max(1));
        // At most CHUNK or one block: fits any usize.
        let buf_len = usize::try_from(per_chunk * bs).unwrap_or(1 << 20);
        let mut buf = AlignedBuf::zeroed(buf_len, BUF_ALIGN);
        // As a WRITE without FUA: write through only when the cache is off.
        let fua = !self.write_cache_enabled();
        let mut bytes = 0u64;
        for (i, e) in plan.iter().enumerate() {
            self.copy_extent(e, per_chunk, buf.as_mut_slice(), fua)?;
            bytes += e.blocks.0 * bs;
            if let Some(seq) = seq {
                self.copies.progress(seq, i + 1, bytes);
            }
        }
        Ok(())
    }

    /// Copy one extent, `per_chunk` blocks at a time through `buf`. When
    /// the destination starts inside the source, the chunks go from the
    /// end, so no source block is overwritten before it has been read.
    fn copy_extent(
        &self,
        e: &Extent,
        per_chunk: u64,
        buf: &mut [u8],
        fua: bool,
    ) -> Result<(), ScsiError> {
        let (src, dst, n) = (e.source.0, e.destination.0, e.blocks.0);
        if src == dst || n == 0 {
            return Ok(());
        }
        let bs = self.copy_block_size();
        let backward = dst > src && dst < src + n;
        let mut done = 0u64;
        while done < n {
            let k = (n - done).min(per_chunk);
            let rel = if backward { n - done - k } else { done };
            let len = usize::try_from(k * bs).unwrap_or(buf.len()).min(buf.len());
            let b = &mut buf[..len];
            self.backing
                .read_vectored_at(&mut [IoSliceMut::new(b)], (src + rel) * bs)
                .map_err(ScsiError::Read)?;
            let _g = self
                .ranges
                .lock(Lba(dst + rel), Blocks(k), LockMode::Shared);
            self.backing
                .write_vectored_at(&[IoSlice::new(b)], (dst + rel) * bs, fua)
                .map_err(ScsiError::Write)?;
            done += k;
        }
        Ok(())
    }

    /// RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 6.18.4): the
    /// limits [`Lu::extended_copy`] enforces.
    fn operating_parameters(&self) -> Vec<u8> {
        let mut d = vec![0u8; 44];
        d[4] = 0x01; // SNLID: LIST ID USAGE 11b supported
        d[8..10].copy_from_slice(&sat_u16(MAX_CSCD_DESCRIPTORS).to_be_bytes());
        d[10..12].copy_from_slice(&sat_u16(MAX_SEGMENT_DESCRIPTORS).to_be_bytes());
        let max_list = u32::try_from(MAX_DESCRIPTOR_LIST_LEN).unwrap_or(u32::MAX);
        d[12..16].copy_from_slice(&max_list.to_be_bytes());
        let max_segment = u32::try_from(self.max_segment_bytes()).unwrap_or(u32::MAX);
        d[16..20].copy_from_slice(&max_segment.to_be_bytes());
        // 20..32: no inline data, no held data, no stream devices.
        d[34..36].copy_from_slice(&sat_u16(MAX_TRACKED_COPIES).to_be_bytes());
        d[36] = sat_u8(MAX_TRACKED_COPIES);
        // DATA SEGMENT GRANULARITY (log2): segments move whole blocks.
        d[37] = u8::try_from(self.cfg.block_size.trailing_zeros()).unwrap_or(0);
        // Implemented descriptor type codes, ascending.
        let codes = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
        d[43] = sat_u8(codes.len());
        d.extend(codes);
        let avail = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
        d[..4].copy_from_slice(&avail.to_be_bytes());
        d
    }

    /// RECEIVE COPY RESULTS, COPY STATUS (SPC-4 6.18.2).
    fn copy_status(
        &self,
        list_id: u8,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        let r = self
            .copies
            .find(list_id)
            .ok_or(ScsiError::InvalidFieldInCdb(FieldPointer::cdb_byte(2)))?;
        let mut d = vec![0u8; 12];
        d[3] = 8;
        d[4] = match r.state {
            CopyState::InProgress => 0x00,
            CopyState::Done => 0x01,
            CopyState::Failed => 0x02,
        };
        d[5..7].copy_from_slice(&r.segments.to_be_bytes());
        let (units, count) = transfer_count(r.bytes);
        d[7] = units;
        d[8..12].copy_from_slice(&count.to_be_bytes());
        let n = put_data_in(&d, alloc, din);
        // Held status goes once delivered whole, or when asked with an
        // allocation length of zero.
        if n == d.len() || alloc == 0 {
            self.copies.delivered(r.seq, true);
        }
        Ok(n)
    }

    /// RECEIVE COPY RESULTS, FAILED SEGMENT DETAILS (SPC-4 6.18.5): the
    /// sense data a held command ended with.
    fn failed_segment_details(
        &self,
        list_id: u8,
        alloc: usize,
        din: &mut [IoSliceMut<'_>],
    ) -> Result<usize, ScsiError> {
        let r = self
            .copies
            .find(list_id)
            .ok_or(ScsiError::InvalidFieldInCdb(FieldPointer::cdb_byte(2)))?;
        let Some(info) = r.failure else {
            // In progress or completed without error: no details.
            return Ok(put_data_in(&[0u8; 4], alloc, din));
        };
        let s = self.encode_sense(&info);
        let sense = s.as_bytes();
        let mut d = vec![0u8; 60];
        d[56] = sense::status::CHECK_CONDITION;
        d[58..60].copy_from_slice(&sat_u16(sense.len()).to_be_bytes());
        d.extend(sense);
        let avail = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
        d[..4].copy_from_slice(&avail.to_be_bytes());
        let n = put_data_in(&d, alloc, din);
        if n == d.len() || alloc == 0 {
            self.copies.delivered(r.seq, false);
        }
        Ok(n)
    }
}

/// The segment descriptor list at `start`, `len` bytes.
fn segment_descriptors(p: &[u8], start: usize, len: usize) -> Result<Vec<Segment>, ScsiError> {
    let end = start + len;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        if out.len() == MAX_SEGMENT_DESCRIPTORS {
            return Err(fault(CopyFault::TooManySegments, 8));
        }
        if p[at] != SEGMENT_BLOCK_TO_BLOCK {
            return Err(fault(CopyFault::UnsupportedSegmentType, at));
        }
        if at + 4 > end {
            return Err(bad(8));
        }
        if usize::from(be16(p, at + 2)) != BLOCK_TO_BLOCK_LEN - 4 {
            return Err(bad(at + 2));
        }
        if at + BLOCK_TO_BLOCK_LEN > end {
            return Err(bad(8));
        }
        // DC and CAT (byte 1) change nothing when source and destination
        // have the same block size.
        out.push(Segment {
            at,
            source: be16(p, at + 4),
            destination: be16(p, at + 6),
            blocks: u64::from(be16(p, at + 10)),
            source_lba: be64(p, at + 12),
            destination_lba: be64(p, at + 20),
        });
        at += BLOCK_TO_BLOCK_LEN;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
