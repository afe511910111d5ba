//! Decoding one kernel-written ring entry. Every value the kernel provides is
//! checked before use; a bad one becomes an [`EntryError`] naming the field.

use std::collections::BTreeMap;
use std::fmt;
use std::mem::{offset_of, size_of};

use tcmu_sys::{
    TCMU_CMD_ENTRY_IOV_OFFSET, TCMU_TMR_ABORT_TASK, TCMU_TMR_ABORT_TASK_SET, TCMU_TMR_CLEAR_ACA,
    TCMU_TMR_CLEAR_TASK_SET, TCMU_TMR_ENTRY_CMD_IDS_OFFSET, TCMU_TMR_LUN_RESET,
    TCMU_TMR_LUN_RESET_PRO, TCMU_TMR_TARGET_COLD_RESET, TCMU_TMR_TARGET_WARM_RESET,
    tcmu_cmd_entry_hdr, tcmu_cmd_entry_req, tcmu_iovec, tcmu_tmr_entry,
};

use super::mapping::Mapping;

/// Largest CDB LIO accepts (`SCSI_MAX_VARLEN_CDB_SIZE`).
pub const MAX_CDB_LEN: usize = 260;

/// What the ring did with a bad entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command was completed with CHECK CONDITION (HARDWARE ERROR,
    /// INTERNAL TARGET FAILURE); the kernel gets it with the next flush.
    CheckCondition,
    /// The entry could not be identified and is consumed like a PAD.
    Skipped,
    /// The ring structure itself is broken (entry length, head): reading
    /// stops; the device needs `reset_ring`.
    RingStopped,
}

/// A bad ring entry: where, which field, what was wrong, what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Offset of the entry in the command ring.
    pub offset: u32,
    /// The command's id when it could be read.
    pub cmd_id: Option<u16>,
    /// The field, as named in `target_core_user.h` (`req.cdb_off`, ...).
    pub field: &'static str,
    /// Index into `req.iov[]` or `cmd_ids[]` when the field is an array.
    pub index: Option<u32>,
    /// The offending value.
    pub value: u64,
    /// What is wrong with it.
    pub problem: &'static str,
    /// What the ring did about it.
    pub outcome: Outcome,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ring entry at {:#x}", self.offset)?;
        if let Some(id) = self.cmd_id {
            write!(f, " (cmd_id {id})")?;
        }
        write!(f, ": {}", self.field)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        write!(
            f,
            " = {:#x} {} ({:?})",
            self.value, self.problem, self.outcome
        )
    }
}

impl std::error::Error for EntryError {}

/// The task management function of a TMR entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmrType {
    /// ABORT TASK.
    AbortTask,
    /// ABORT TASK SET.
    AbortTaskSet,
    /// CLEAR ACA.
    ClearAca,
    /// CLEAR TASK SET.
    ClearTaskSet,
    /// LOGICAL UNIT RESET.
    LunReset,
    /// TARGET WARM RESET.
    TargetWarmReset,
    /// TARGET COLD RESET.
    TargetColdReset,
    /// LUN reset from a PREEMPT AND ABORT (`TCMU_TMR_LUN_RESET_PRO`).
    LunResetPro,
    /// Anything else, with the raw value.
    Unknown(u8),
}

impl TmrType {
    fn from_raw(v: u8) -> Self {
        match u32::from(v) {
            TCMU_TMR_ABORT_TASK => TmrType::AbortTask,
            TCMU_TMR_ABORT_TASK_SET => TmrType::AbortTaskSet,
            TCMU_TMR_CLEAR_ACA => TmrType::ClearAca,
            TCMU_TMR_CLEAR_TASK_SET => TmrType::ClearTaskSet,
            TCMU_TMR_LUN_RESET => TmrType::LunReset,
            TCMU_TMR_TARGET_WARM_RESET => TmrType::TargetWarmReset,
            TCMU_TMR_TARGET_COLD_RESET => TmrType::TargetColdReset,
            TCMU_TMR_LUN_RESET_PRO => TmrType::LunResetPro,
            _ => TmrType::Unknown(v),
        }
    }
}

/// A TMR notification: the kernel aborted these commands. They are still in
/// flight and must still be completed (their status is ignored); the ring has
/// already flagged them so [`InFlightCmd::is_aborted`](super::InFlightCmd::is_aborted)
/// answers true for those not yet started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmrEvent {
    /// The function.
    pub tmr_type: TmrType,
    /// The aborted commands' ids, as the kernel listed them.
    pub cmd_ids: Vec<u16>,
}

/// Length of a CDB from its operation code (SAM-5 groups, as the kernel's
/// `scsi_command_size`); `additional` is byte 7, used only for variable-length
/// CDBs (0x7F), whose length is `additional + 8`.
#[must_use]
pub const fn cdb_len(opcode: u8, additional: u8) -> usize {
    const GROUP_LEN: [usize; 8] = [6, 10, 10, 12, 16, 12, 10, 10];
    if opcode == 0x7f {
        additional as usize + 8
    } else {
        GROUP_LEN[(opcode >> 5) as usize]
    }
}

/// A data segment: `len` bytes at offset `off` of the mapping (data area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub off: usize,
    pub len: usize,
}

/// A command decoded from a valid CMD entry.
#[derive(Debug)]
pub(super) struct DecodedCmd {
    pub cdb: [u8; MAX_CDB_LEN],
    pub cdb_len: usize,
    /// `iov_cnt` data segments followed by `iov_bidi_cnt` bidi (data-in) ones.
    pub segs: Vec<Segment>,
    pub n_data: usize,
}

/// Field offsets inside an entry, from the checked `tcmu-sys` layouts.
mod off {
    use super::{offset_of, size_of};
    use super::{tcmu_cmd_entry_hdr, tcmu_cmd_entry_req, tcmu_iovec, tcmu_tmr_entry};
    pub const CMD_ID: usize = offset_of!(tcmu_cmd_entry_hdr, cmd_id);
    pub const IOV_CNT: usize = offset_of!(tcmu_cmd_entry_req, iov_cnt);
    pub const IOV_BIDI_CNT: usize = offset_of!(tcmu_cmd_entry_req, iov_bidi_cnt);
    pub const IOV_DIF_CNT: usize = offset_of!(tcmu_cmd_entry_req, iov_dif_cnt);
    pub const CDB_OFF: usize = offset_of!(tcmu_cmd_entry_req, cdb_off);
    pub const IOV_SIZE: usize = size_of::<tcmu_iovec>();
    pub const IOV_BASE: usize = offset_of!(tcmu_iovec, iov_base);
    pub const IOV_LEN: usize = offset_of!(tcmu_iovec, iov_len);
    pub const TMR_TYPE: usize = offset_of!(tcmu_tmr_entry, tmr_type);
    pub const TMR_CMD_CNT: usize = offset_of!(tcmu_tmr_entry, cmd_cnt);
}
pub(super) use off::CMD_ID as CMD_ID_OFF;

/// The entry being decoded: its place in the ring and in the mapping.
pub(super) struct At<'a> {
    pub map: &'a Mapping,
    /// Offset in the command ring (for errors).
    pub ring_off: u32,
    /// Offset of the entry in the mapping.
    pub abs: usize,
    /// The entry's length from `len_op`, already checked against the ring.
    pub len: usize,
}

impl At<'_> {
    fn err(
        &self,
        cmd_id: Option<u16>,
        field: &'static str,
        index: Option<u32>,
        value: u64,
        problem: &'static str,
        outcome: Outcome,
    ) -> EntryError {
        EntryError {
            offset: self.ring_off,
            cmd_id,
            field,
            index,
            value,
            problem,
            outcome,
        }
    }

    /// The command id of a CMD entry (the header is always inside the entry).
    pub fn cmd_id(&self) -> u16 {
        self.map.read_u16(self.abs + off::CMD_ID).unwrap_or(0)
    }

    /// Decodes a CMD entry whose id is `cmd_id`; `inflight` holds the data
    /// ranges (start -> end) of commands already handed out.
    pub fn decode_cmd(
        &self,
        cmd_id: u16,
        inflight: &BTreeMap<usize, usize>,
    ) -> Result<DecodedCmd, EntryError> {
        let id = Some(cmd_id);
        let cc = Outcome::CheckCondition;
        let map = self.map;
        if self.len < TCMU_CMD_ENTRY_IOV_OFFSET {
            return Err(self.err(
                id,
                "hdr.len_op",
                None,
                self.len as u64,
                "is shorter than a command entry",
                cc,
            ));
        }
        let rd32 = |o| map.read_u32(self.abs + o).unwrap_or(0);
        let (n_data, n_bidi, n_dif) = (
            rd32(off::IOV_CNT),
            rd32(off::IOV_BIDI_CNT),
            rd32(off::IOV_DIF_CNT),
        );
        // u64 arithmetic: three u32 counts times 16 cannot overflow it.
        let n_iov = u64::from(n_data) + u64::from(n_bidi) + u64::from(n_dif);
        let iov_end = TCMU_CMD_ENTRY_IOV_OFFSET as u64 + n_iov * off::IOV_SIZE as u64;
        if iov_end > self.len as u64 {
            let (field, v) =
                if n_data as usize * off::IOV_SIZE + TCMU_CMD_ENTRY_IOV_OFFSET > self.len {
                    ("req.iov_cnt", n_data)
                } else if n_dif == 0 {
                    ("req.iov_bidi_cnt", n_bidi)
                } else {
                    ("req.iov_dif_cnt", n_dif)
                };
            return Err(self.err(
                id,
                field,
                None,
                v.into(),
                "iovecs run past the end of the entry",
                cc,
            ));
        }

        let cdb_off = map.read_u64(self.abs + off::CDB_OFF).unwrap_or(u64::MAX);
        let bad_cdb = |problem| self.err(id, "req.cdb_off", None, cdb_off, problem, cc);
        let cdb_at = usize::try_from(cdb_off).map_err(|_| bad_cdb("is outside the mapping"))?;
        let opcode = map
            .read_u8(cdb_at)
            .ok_or_else(|| bad_cdb("is outside the mapping"))?;
        let additional = if opcode == 0x7f {
            let at7 = cdb_at
                .checked_add(7)
                .ok_or_else(|| bad_cdb("is outside the mapping"))?;
            map.read_u8(at7)
                .ok_or_else(|| bad_cdb("CDB runs past the mapping"))?
        } else {
            0
        };
        let cdb_len = cdb_len(opcode, additional);
        if cdb_len > MAX_CDB_LEN {
            return Err(self.err(
                id,
                "cdb[7]",
                None,
                additional.into(),
                "variable-length CDB longer than 260 bytes",
                cc,
            ));
        }
        let mut cdb = [0u8; MAX_CDB_LEN];
        if !map.read_bytes(cdb_at, &mut cdb[..cdb_len]) {
            return Err(bad_cdb("CDB runs past the mapping"));
        }

        let n_segs = usize::try_from(u64::from(n_data) + u64::from(n_bidi)).unwrap_or(usize::MAX);
        let mut segs = Vec::with_capacity(n_segs);
        for i in 0..n_segs {
            let at = self.abs + TCMU_CMD_ENTRY_IOV_OFFSET + i * off::IOV_SIZE;
            let base = map.read_u64(at + off::IOV_BASE).unwrap_or(u64::MAX);
            let len = map.read_u64(at + off::IOV_LEN).unwrap_or(u64::MAX);
            let index = u32::try_from(i).ok();
            let start = usize::try_from(base)
                .ok()
                .filter(|&b| b >= map.data_off() && b <= map.len());
            let Some(start) = start else {
                return Err(self.err(
                    id,
                    "req.iov.iov_base",
                    index,
                    base,
                    "is outside the data area",
                    cc,
                ));
            };
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| start.checked_add(l))
                .filter(|&e| e <= map.len());
            let Some(end) = end else {
                return Err(self.err(
                    id,
                    "req.iov.iov_len",
                    index,
                    len,
                    "runs past the data area",
                    cc,
                ));
            };
            segs.push(Segment {
                off: start,
                len: end - start,
            });
        }
        if let Some(i) = overlap(&segs, inflight) {
            let index = u32::try_from(i).ok();
            return Err(self.err(
                id,
                "req.iov.iov_base",
                index,
                segs[i].off as u64,
                "overlaps another in-flight data buffer",
                cc,
            ));
        }
        Ok(DecodedCmd {
            cdb,
            cdb_len,
            segs,
            n_data: n_data as usize,
        })
    }

    /// Decodes a TMR entry.
    pub fn decode_tmr(&self) -> Result<TmrEvent, EntryError> {
        let skip = Outcome::Skipped;
        if self.len < TCMU_TMR_ENTRY_CMD_IDS_OFFSET {
            return Err(self.err(
                None,
                "hdr.len_op",
                None,
                self.len as u64,
                "is shorter than a TMR entry",
                skip,
            ));
        }
        let raw_type = self.map.read_u8(self.abs + off::TMR_TYPE).unwrap_or(0);
        let cnt = self
            .map
            .read_u32(self.abs + off::TMR_CMD_CNT)
            .unwrap_or(u32::MAX);
        let room = (self.len - TCMU_TMR_ENTRY_CMD_IDS_OFFSET) / size_of::<u16>();
        let n = usize::try_from(cnt).ok().filter(|&n| n <= room);
        let Some(n) = n else {
            return Err(self.err(
                None,
                "cmd_cnt",
                None,
                cnt.into(),
                "ids run past the end of the entry",
                skip,
            ));
        };
        let ids = (0..n)
            .map(|i| {
                let at = self.abs + TCMU_TMR_ENTRY_CMD_IDS_OFFSET + i * size_of::<u16>();
                self.map.read_u16(at).unwrap_or(0)
            })
            .collect();
        Ok(TmrEvent {
            tmr_type: TmrType::from_raw(raw_type),
            cmd_ids: ids,
        })
    }
}

/// Index of the first non-empty segment overlapping another segment of the
/// same command or an in-flight one.
fn overlap(segs: &[Segment], inflight: &BTreeMap<usize, usize>) -> Option<usize> {
    let hits_inflight = |s: &Segment| {
        let end = s.off + s.len;
        // The in-flight range starting last before our end is the only candidate.
        inflight
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > s.off)
    };
    let mut order: Vec<usize> = (0..segs.len()).filter(|&i| segs[i].len > 0).collect();
    order.sort_by_key(|&i| segs[i].off);
    for (k, &i) in order.iter().enumerate() {
        if hits_inflight(&segs[i]) {
            return Some(i);
        }
        if let Some(&next) = order.get(k + 1)
            && segs[i].off + segs[i].len > segs[next].off
        {
            return Some(next);
        }
    }
    None
}
