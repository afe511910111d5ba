//! The ONE opcode table: which commands exist, their CDB usage masks (used
//! both to reject reserved bits and to answer REPORT SUPPORTED OPERATION
//! CODES), and the CDB parsers (step 2 of opcode -> command -> parsed CDB).

use super::error::ScsiError;
use super::sense::FieldPointer;
use super::{Blocks, Lba};

/// When a table entry is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    /// Always emulated here.
    Always,
    /// Emulated only when logical block provisioning (UNMAP) is enabled.
    Lbp,
    /// Served by the kernel (REPORT LUNS): listed in RSOC, never executed.
    Kernel,
    /// Served by the caller's PR engine: listed in RSOC if the LU says so,
    /// answered INVALID COMMAND OPERATION CODE if it ever reaches us.
    Caller,
}

/// A parser from CDB bytes (length already checked) to a [`Command`].
pub type Parser = fn(&[u8]) -> Result<Command, ScsiError>;

/// One supported (opcode, service action).
#[derive(Debug)]
pub struct OpInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action (in byte 1 bits 4:0) for opcodes that have one.
    pub service_action: Option<u8>,
    /// Name for logs.
    pub name: &'static str,
    /// CDB usage data as RSOC reports it: byte 0 is the opcode, the service
    /// action sits in its field, every other bit set means "used". Its
    /// length is the CDB length.
    pub usage: &'static [u8],
    /// Who serves it.
    pub avail: Avail,
    /// CDB parser, for entries emulated here.
    pub parse: Option<Parser>,
}

impl OpInfo {
    /// CDB length.
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

/// READ/WRITE-family fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rw {
    /// First LBA.
    pub lba: Lba,
    /// Blocks to transfer.
    pub blocks: Blocks,
    /// Disable page out (a cache hint; accepted, no effect).
    pub dpo: bool,
    /// Force unit access.
    pub fua: bool,
    /// Where the transfer length field is, for error pointers.
    pub len_field: FieldPointer,
}

/// A parsed CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Command {
    TestUnitReady,
    /// EXTENDED COPY and RECEIVE COPY RESULTS ([`super::xcopy`]).
    Copy(super::xcopy::CopyCommand),
    RequestSense {
        desc: bool,
        alloc: usize,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: usize,
    },
    ModeSense {
        long: bool,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: usize,
    },
    ModeSelect {
        long: bool,
        pf: bool,
        sp: bool,
        plen: usize,
    },
    StartStop {
        start: bool,
        no_flush: bool,
    },
    PreventAllow,
    ReadCapacity10,
    ReadCapacity16 {
        alloc: usize,
    },
    GetLbaStatus {
        lba: Lba,
        alloc: usize,
    },
    Read(Rw),
    Write(Rw),
    WriteVerify {
        rw: Rw,
        bytchk: bool,
    },
    Verify {
        rw: Rw,
        bytchk: u8,
    },
    SyncCache {
        lba: Lba,
        blocks: Blocks,
    },
    WriteSame {
        rw: Rw,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    },
    Unmap {
        anchor: bool,
        plen: usize,
    },
    CompareAndWrite {
        rw: Rw,
    },
    OrWrite(Rw),
    PreFetch {
        lba: Lba,
        blocks: Blocks,
    },
    ReadDefectData {
        long: bool,
        plist: bool,
        glist: bool,
        format: u8,
        alloc: usize,
    },
    ReportOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
        alloc: usize,
    },
}

fn be16(c: &[u8], at: usize) -> u64 {
    u64::from(u16::from_be_bytes([c[at], c[at + 1]]))
}

fn be32(c: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]]))
}

fn be64(c: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[at..at + 8]);
    u64::from_be_bytes(b)
}

fn alloc(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// LBA in bytes 2..6, length in 7..9 (10-byte CDBs).
fn rw10(c: &[u8]) -> Rw {
    Rw {
        lba: Lba(be32(c, 2)),
        blocks: Blocks(be16(c, 7)),
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
        len_field: FieldPointer::cdb_byte(7),
    }
}

fn rw12(c: &[u8]) -> Rw {
    Rw {
        lba: Lba(be32(c, 2)),
        blocks: Blocks(be32(c, 6)),
        len_field: FieldPointer::cdb_byte(6),
        ..rw10(c)
    }
}

fn rw16(c: &[u8]) -> Rw {
    Rw {
        lba: Lba(be64(c, 2)),
        blocks: Blocks(be32(c, 10)),
        len_field: FieldPointer::cdb_byte(10),
        ..rw10(c)
    }
}

fn rw6(c: &[u8]) -> Rw {
    let len = u64::from(c[4]);
    Rw {
        lba: Lba(u64::from(u32::from_be_bytes([0, c[1] & 0x1f, c[2], c[3]]))),
        // SBC: a READ(6)/WRITE(6) length of zero means 256 blocks.
        blocks: Blocks(if len == 0 { 256 } else { len }),
        dpo: false,
        fua: false,
        len_field: FieldPointer::cdb_byte(4),
    }
}

fn bytchk(c: &[u8]) -> u8 {
    (c[1] >> 1) & 3
}

fn write_verify(rw: Rw, c: &[u8]) -> Result<Command, ScsiError> {
    match bytchk(c) {
        0 => Ok(Command::WriteVerify { rw, bytchk: false }),
        1 => Ok(Command::WriteVerify { rw, bytchk: true }),
        _ => Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 2))),
    }
}

fn verify(rw: Rw, c: &[u8]) -> Result<Command, ScsiError> {
    match bytchk(c) {
        2 => Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 2))),
        b => Ok(Command::Verify { rw, bytchk: b }),
    }
}

fn write_same(rw: Rw, c: &[u8], long: bool) -> Command {
    Command::WriteSame {
        rw: Rw {
            fua: false,
            dpo: false,
            ..rw
        },
        anchor: c[1] & 0x10 != 0,
        unmap: c[1] & 0x08 != 0,
        ndob: long && c[1] & 0x01 != 0,
    }
}

/// Shorthand for the table below: reads best as one line per command.
const fn op(
    opcode: u8,
    service_action: Option<u8>,
    name: &'static str,
    usage: &'static [u8],
    avail: Avail,
    parse: Option<Parser>,
) -> OpInfo {
    OpInfo {
        opcode,
        service_action,
        name,
        usage,
        avail,
        parse,
    }
}

use Avail::{Always, Caller, Kernel, Lbp};

/// Every command the LU knows, sorted by (opcode, service action).
#[rustfmt::skip]
pub static OPCODES: &[OpInfo] = &[
    op(0x00, None, "TEST UNIT READY", &[0x00, 0, 0, 0, 0, 0], Always,
        Some(|_| Ok(Command::TestUnitReady))),
    op(0x03, None, "REQUEST SENSE", &[0x03, 0x01, 0, 0, 0xff, 0], Always,
        Some(|c| Ok(Command::RequestSense { desc: c[1] & 1 != 0, alloc: usize::from(c[4]) }))),
    op(0x08, None, "READ(6)", &[0x08, 0x1f, 0xff, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::Read(rw6(c))))),
    op(0x0a, None, "WRITE(6)", &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::Write(rw6(c))))),
    op(0x12, None, "INQUIRY", &[0x12, 0x01, 0xff, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::Inquiry { evpd: c[1] & 1 != 0, page: c[2], alloc: alloc(be16(c, 3)) }))),
    op(0x15, None, "MODE SELECT(6)", &[0x15, 0x11, 0, 0, 0xff, 0], Always,
        Some(|c| Ok(Command::ModeSelect { long: false, pf: c[1] & 0x10 != 0, sp: c[1] & 1 != 0,
            plen: usize::from(c[4]) }))),
    op(0x16, None, "RESERVE(6)", &[0x16, 0, 0, 0, 0, 0], Caller, None),
    op(0x17, None, "RELEASE(6)", &[0x17, 0, 0, 0, 0, 0], Caller, None),
    op(0x1a, None, "MODE SENSE(6)", &[0x1a, 0x08, 0xff, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::ModeSense { long: false, dbd: c[1] & 0x08 != 0, llbaa: false,
            pc: c[2] >> 6, page: c[2] & 0x3f, subpage: c[3], alloc: usize::from(c[4]) }))),
    op(0x1b, None, "START STOP UNIT", &[0x1b, 0x01, 0, 0, 0x05, 0], Always,
        Some(|c| Ok(Command::StartStop { start: c[4] & 1 != 0, no_flush: c[4] & 4 != 0 }))),
    op(0x1e, None, "PREVENT ALLOW MEDIUM REMOVAL", &[0x1e, 0, 0, 0, 0x03, 0], Always,
        Some(|_| Ok(Command::PreventAllow))),
    op(0x25, None, "READ CAPACITY(10)", &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0], Always,
        Some(|_| Ok(Command::ReadCapacity10))),
    op(0x28, None, "READ(10)", &[0x28, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::Read(rw10(c))))),
    op(0x2a, None, "WRITE(10)", &[0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::Write(rw10(c))))),
    op(0x2e, None, "WRITE AND VERIFY(10)", &[0x2e, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        Always, Some(|c| write_verify(rw10(c), c))),
    op(0x2f, None, "VERIFY(10)", &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], Always,
        Some(|c| verify(rw10(c), c))),
    op(0x34, None, "PRE-FETCH(10)", &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::PreFetch { lba: Lba(be32(c, 2)), blocks: Blocks(be16(c, 7)) }))),
    op(0x35, None, "SYNCHRONIZE CACHE(10)", &[0x35, 0x06, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        Always, Some(|c| Ok(Command::SyncCache { lba: Lba(be32(c, 2)), blocks: Blocks(be16(c, 7)) }))),
    op(0x37, None, "READ DEFECT DATA(10)", &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::ReadDefectData { long: false, plist: c[2] & 0x10 != 0, glist: c[2] & 0x08 != 0,
            format: c[2] & 7, alloc: alloc(be16(c, 7)) }))),
    op(0x41, None, "WRITE SAME(10)", &[0x41, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], Always,
        Some(|c| Ok(write_same(rw10(c), c, false)))),
    op(0x42, None, "UNMAP", &[0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0], Lbp,
        Some(|c| Ok(Command::Unmap { anchor: c[1] & 1 != 0, plen: alloc(be16(c, 7)) }))),
    op(0x55, None, "MODE SELECT(10)", &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::ModeSelect { long: true, pf: c[1] & 0x10 != 0, sp: c[1] & 1 != 0,
            plen: alloc(be16(c, 7)) }))),
    op(0x56, None, "RESERVE(10)", &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], Caller, None),
    op(0x57, None, "RELEASE(10)", &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], Caller, None),
    op(0x5a, None, "MODE SENSE(10)", &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0], Always,
        Some(|c| Ok(Command::ModeSense { long: true, dbd: c[1] & 0x08 != 0, llbaa: c[1] & 0x10 != 0,
            pc: c[2] >> 6, page: c[2] & 0x3f, subpage: c[3], alloc: alloc(be16(c, 7)) }))),
    op(0x5e, Some(0x00), "PERSISTENT RESERVE IN/READ KEYS", &[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0], Caller, None),
    op(0x5e, Some(0x01), "PERSISTENT RESERVE IN/READ RESERVATION", &[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0], Caller, None),
    op(0x5e, Some(0x02), "PERSISTENT RESERVE IN/REPORT CAPABILITIES", &[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0], Caller, None),
    op(0x5e, Some(0x03), "PERSISTENT RESERVE IN/READ FULL STATUS", &[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x00), "PERSISTENT RESERVE OUT/REGISTER", &[0x5f, 0x00, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x01), "PERSISTENT RESERVE OUT/RESERVE", &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x02), "PERSISTENT RESERVE OUT/RELEASE", &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x03), "PERSISTENT RESERVE OUT/CLEAR", &[0x5f, 0x03, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x04), "PERSISTENT RESERVE OUT/PREEMPT", &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x05), "PERSISTENT RESERVE OUT/PREEMPT AND ABORT", &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x06), "PERSISTENT RESERVE OUT/REGISTER AND IGNORE EXISTING KEY", &[0x5f, 0x06, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x5f, Some(0x07), "PERSISTENT RESERVE OUT/REGISTER AND MOVE", &[0x5f, 0x07, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], Caller, None),
    op(0x83, Some(0x00), "EXTENDED COPY(LID1)", &[0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        Always, Some(super::xcopy::parse_extended_copy)),
    op(0x84, Some(0x00), "RECEIVE COPY STATUS(LID1)", &[0x84, 0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        Always, Some(super::xcopy::parse_copy_status)),
    op(0x84, Some(0x03), "RECEIVE COPY OPERATING PARAMETERS", &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        Always, Some(super::xcopy::parse_operating_parameters)),
    op(0x84, Some(0x04), "RECEIVE COPY FAILURE DETAILS(LID1)", &[0x84, 0x04, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        Always, Some(super::xcopy::parse_failed_segment_details)),
    op(0x88, None, "READ(16)", &[0x88, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(Command::Read(rw16(c))))),
    op(0x89, None, "COMPARE AND WRITE", &[0x89, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(Command::CompareAndWrite { rw: Rw {
            blocks: Blocks(u64::from(c[13])), len_field: FieldPointer::cdb_byte(13), ..rw16(c) } }))),
    op(0x8a, None, "WRITE(16)", &[0x8a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(Command::Write(rw16(c))))),
    op(0x8b, None, "ORWRITE(16)", &[0x8b, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(Command::OrWrite(rw16(c))))),
    op(0x8e, None, "WRITE AND VERIFY(16)", &[0x8e, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| write_verify(rw16(c), c))),
    op(0x8f, None, "VERIFY(16)", &[0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| verify(rw16(c), c))),
    op(0x90, None, "PRE-FETCH(16)", &[0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(Command::PreFetch { lba: Lba(be64(c, 2)), blocks: Blocks(be32(c, 10)) }))),
    op(0x91, None, "SYNCHRONIZE CACHE(16)", &[0x91, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(Command::SyncCache { lba: Lba(be64(c, 2)), blocks: Blocks(be32(c, 10)) }))),
    op(0x93, None, "WRITE SAME(16)", &[0x93, 0x19, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| Ok(write_same(rw16(c), c, true)))),
    op(0x9e, Some(0x10), "READ CAPACITY(16)", &[0x9e, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0],
        Always, Some(|c| Ok(Command::ReadCapacity16 { alloc: alloc(be32(c, 10)) }))),
    op(0x9e, Some(0x12), "GET LBA STATUS", &[0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
        Lbp, Some(|c| Ok(Command::GetLbaStatus { lba: Lba(be64(c, 2)), alloc: alloc(be32(c, 10)) }))),
    op(0xa0, None, "REPORT LUNS", &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0], Kernel, None),
    op(0xa3, Some(0x0c), "REPORT SUPPORTED OPERATION CODES", &[0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
        Always, Some(|c| Ok(Command::ReportOpcodes { rctd: c[2] & 0x80 != 0, options: c[2] & 7, opcode: c[3],
            sa: u16::from_be_bytes([c[4], c[5]]), alloc: alloc(be32(c, 6)) }))),
    op(0xa8, None, "READ(12)", &[0xa8, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0], Always,
        Some(|c| Ok(Command::Read(rw12(c))))),
    op(0xaa, None, "WRITE(12)", &[0xaa, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0], Always,
        Some(|c| Ok(Command::Write(rw12(c))))),
    op(0xae, None, "WRITE AND VERIFY(12)", &[0xae, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        Always, Some(|c| write_verify(rw12(c), c))),
    op(0xaf, None, "VERIFY(12)", &[0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0], Always,
        Some(|c| verify(rw12(c), c))),
    op(0xb7, None, "READ DEFECT DATA(12)", &[0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], Always,
        Some(|c| Ok(Command::ReadDefectData { long: true, plist: c[1] & 0x10 != 0, glist: c[1] & 0x08 != 0,
            format: c[1] & 7, alloc: alloc(be32(c, 6)) }))),
];

/// True if `opcode` carries a service action in byte 1 bits 4:0.
pub fn has_service_action(opcode: u8) -> bool {
    OPCODES
        .iter()
        .any(|o| o.opcode == opcode && o.service_action.is_some())
}

/// Step 1: find the table entry for a CDB. `Err` carries the error to
/// report: unknown opcode, or unknown service action of a known opcode.
pub fn lookup(cdb: &[u8]) -> Result<&'static OpInfo, ScsiError> {
    let &opcode = cdb.first().ok_or(ScsiError::InvalidOpcode)?;
    if has_service_action(opcode) {
        let &b1 = cdb.get(1).ok_or(ScsiError::CdbTooShort {
            have: cdb.len(),
            need: 2,
        })?;
        let sa = b1 & 0x1f;
        return OPCODES
            .iter()
            .find(|o| o.opcode == opcode && o.service_action == Some(sa))
            .ok_or(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(1, 4)));
    }
    OPCODES
        .iter()
        .find(|o| o.opcode == opcode)
        .ok_or(ScsiError::InvalidOpcode)
}

/// Step 2: check length and reserved bits against the usage mask, then
/// parse. Reserved bits (mask 0) that are set, including NACA in the
/// control byte, give INVALID FIELD IN CDB pointing at the highest one.
pub fn parse(info: &OpInfo, cdb: &[u8]) -> Result<Command, ScsiError> {
    let need = info.cdb_len();
    if cdb.len() < need {
        return Err(ScsiError::CdbTooShort {
            have: cdb.len(),
            need,
        });
    }
    for (i, (&b, &mask)) in cdb.iter().zip(info.usage).enumerate().skip(1) {
        let mask = if i == 1 && info.service_action.is_some() {
            mask | 0x1f
        } else {
            mask
        };
        let bad = b & !mask;
        if bad != 0 {
            let at = super::sat_u16(i);
            return Err(ScsiError::InvalidFieldInCdb(FieldPointer::cdb(
                at,
                super::high_bit(bad),
            )));
        }
    }
    match info.parse {
        Some(p) => p(&cdb[..need]),
        None => Err(ScsiError::InvalidOpcode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_self_describing() {
        for w in OPCODES.windows(2) {
            assert!(
                (w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action),
                "{} / {}",
                w[0].name,
                w[1].name
            );
        }
        for o in OPCODES {
            assert_eq!(o.usage[0], o.opcode, "{}", o.name);
            // CDB length follows the group code (SPC-4 4.2.5.1).
            let len = match o.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => unreachable!(),
            };
            assert_eq!(o.cdb_len(), len, "{}", o.name);
            if let Some(sa) = o.service_action {
                assert_eq!(o.usage[1] & 0x1f, sa, "{}", o.name);
            }
            // NACA and LINK are not supported, so the control byte is unused.
            assert_eq!(*o.usage.last().unwrap(), 0, "{}", o.name);
            assert_eq!(
                o.parse.is_some(),
                matches!(o.avail, Avail::Always | Avail::Lbp),
                "{}",
                o.name
            );
        }
    }

    #[test]
    fn lookup_and_reserved_bits() {
        assert!(matches!(lookup(&[]), Err(ScsiError::InvalidOpcode)));
        assert!(matches!(lookup(&[0xff]), Err(ScsiError::InvalidOpcode)));
        assert!(matches!(
            lookup(&[0x9e]),
            Err(ScsiError::CdbTooShort { .. })
        ));
        assert!(matches!(
            lookup(&[0x9e, 0x11]),
            Err(ScsiError::InvalidFieldInCdb(FieldPointer {
                in_cdb: true,
                byte: 1,
                bit: Some(4)
            }))
        ));
        let rc16 = lookup(&[0x9e, 0x10]).unwrap();
        assert_eq!(rc16.name, "READ CAPACITY(16)");
        let read10 = lookup(&[0x28]).unwrap();
        let mut cdb = [0x28u8, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(parse(read10, &cdb).is_ok());
        cdb[1] = 0x20; // RDPROTECT=1
        assert!(matches!(
            parse(read10, &cdb),
            Err(ScsiError::InvalidFieldInCdb(FieldPointer {
                byte: 1,
                bit: Some(5),
                ..
            }))
        ));
        cdb[1] = 0;
        cdb[9] = 0x04; // NACA
        assert!(matches!(
            parse(read10, &cdb),
            Err(ScsiError::InvalidFieldInCdb(FieldPointer {
                byte: 9,
                bit: Some(2),
                ..
            }))
        ));
        assert!(matches!(
            parse(read10, &cdb[..9]),
            Err(ScsiError::CdbTooShort { have: 9, need: 10 })
        ));
    }

    #[test]
    fn read6_zero_means_256() {
        let r = parse(lookup(&[0x08]).unwrap(), &[0x08, 0x01, 0x02, 0x03, 0, 0]).unwrap();
        match r {
            Command::Read(rw) => {
                assert_eq!(rw.lba, Lba(0x010203));
                assert_eq!(rw.blocks, Blocks(256));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Which way a command's data moves: the ring gives one scatter list per
/// command and does not say, so the caller asks here before handing it to
/// [`super::Lu::execute`] as data-out or data-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// No data (or a CDB we reject before touching data).
    None,
    /// Initiator to target: WRITE, MODE SELECT, UNMAP, PR OUT, ...
    ToDevice,
    /// Target to initiator: READ, INQUIRY, MODE SENSE, PR IN, ...
    FromDevice,
}

/// The data direction of `cdb`, from its opcode (and service action where
/// it matters). Unknown opcodes say [`Direction::None`]: they are answered
/// with sense data before any transfer.
#[must_use]
pub fn direction(cdb: &[u8]) -> Direction {
    let Some(&op) = cdb.first() else {
        return Direction::None;
    };
    match op {
        // READ 6/10/12/16, INQUIRY, REQUEST SENSE, MODE SENSE 6/10,
        // READ CAPACITY 10, PR IN, REPORT LUNS.
        0x08 | 0x28 | 0xa8 | 0x88 | 0x12 | 0x03 | 0x1a | 0x5a | 0x25 | 0x5e | 0xa0 => {
            Direction::FromDevice
        }
        // READ DEFECT DATA 10/12.
        0x37 | 0xb7 => Direction::FromDevice,
        // SERVICE ACTION IN(16): READ CAPACITY 16, GET LBA STATUS.
        0x9e => Direction::FromDevice,
        // MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPCODES, ...
        0xa3 => Direction::FromDevice,
        // EXTENDED COPY sends its parameter list; RECEIVE COPY RESULTS answers.
        0x83 => Direction::ToDevice,
        0x84 => Direction::FromDevice,
        // WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16, MODE SELECT 6/10,
        // UNMAP, COMPARE AND WRITE, PR OUT, MAINTENANCE OUT.
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x15 | 0x55 | 0x42 | 0x89 | 0x5f
        | 0xa4 => Direction::ToDevice,
        // ORWRITE(16).
        0x8b => Direction::ToDevice,
        // VERIFY 10/12/16: data only with BYTCHK != 0.
        0x2f | 0xaf | 0x8f => {
            if cdb.get(1).is_some_and(|b| b & 0x06 != 0) {
                Direction::ToDevice
            } else {
                Direction::None
            }
        }
        // WRITE SAME 10/16: one block of data unless NDOB (16 only).
        0x41 => Direction::ToDevice,
        0x93 => {
            if cdb.get(1).is_some_and(|b| b & 0x01 != 0) {
                Direction::None
            } else {
                Direction::ToDevice
            }
        }
        _ => Direction::None,
    }
}

#[cfg(test)]
mod direction_tests {
    use super::*;

    #[test]
    fn directions_of_common_commands() {
        assert_eq!(direction(&[]), Direction::None);
        assert_eq!(direction(&[0x00, 0, 0, 0, 0, 0]), Direction::None);
        assert_eq!(direction(&[0x28; 10]), Direction::FromDevice);
        assert_eq!(direction(&[0x2a; 10]), Direction::ToDevice);
        assert_eq!(
            direction(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Direction::FromDevice
        );
        assert_eq!(
            direction(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Direction::ToDevice
        );
        assert_eq!(
            direction(&[0x2f, 0x00, 0, 0, 0, 0, 0, 0, 1, 0]),
            Direction::None
        );
        assert_eq!(
            direction(&[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0]),
            Direction::ToDevice
        );
        assert_eq!(
            direction(&[0x93, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
            Direction::None
        );
        assert_eq!(
            direction(&[0x93, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
            Direction::ToDevice
        );
    }

    /// Every emulated command that takes data-in according to the table must
    /// be FromDevice here, or the daemon would hand it no buffer.
    #[test]
    fn agrees_with_the_opcode_table_for_reads_and_writes() {
        for info in OPCODES {
            let mut cdb = info.usage.to_vec();
            cdb[0] = info.opcode;
            let d = direction(&cdb);
            let name = info.name;
            if name.starts_with("READ")
                || name.starts_with("INQUIRY")
                || name.starts_with("MODE SENSE")
            {
                assert_eq!(d, Direction::FromDevice, "{name}");
            }
            if name.starts_with("WRITE") || name.starts_with("MODE SELECT") || name == "UNMAP" {
                assert_ne!(d, Direction::FromDevice, "{name}");
            }
        }
    }
}
