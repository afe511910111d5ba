//! Reservation conflict checking for every command: ONE table, SPC-4 table
//! 66 ("SPC commands that are allowed in the presence of various
//! reservations"), SPC-4 table 67 (PERSISTENT RESERVE OUT service actions)
//! and SBC-3 table 13 (block commands), plus the SPC-2 reservation rules.
//!
//! Hot path: no allocation, one pass over the registrations.

use super::state::{Holder, Nexus, PrState};

/// Whether a command may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Complete the command with RESERVATION CONFLICT.
    Conflict,
}

/// The row shapes of the tables, for a nexus that does not hold the
/// persistent reservation. Columns: reservation held by another nexus of
/// type WE / EA ("from any I_T nexus"), then for registrants-only and
/// all-registrants types, from a registered nexus and from an unregistered
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessClass {
    /// Allowed in every column.
    Always,
    /// A C | A A | A C: reads.
    Read,
    /// C C | A A | C C: writes and anything that changes the LU.
    Write,
    /// PR OUT RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT: allowed
    /// from registered nexuses (the service action then decides).
    Registered,
    /// PR OUT REGISTER AND MOVE: only the holder.
    HolderOnly,
}

/// Classifies a CDB by the tables. Unknown opcodes and service actions are
/// [`AccessClass::Write`]: a command we cannot classify must not get past
/// a reservation.
pub fn classify(cdb: &[u8]) -> AccessClass {
    use AccessClass::*;
    let Some(&op) = cdb.first() else {
        return Always;
    };
    let sa = cdb.get(1).map_or(0, |b| b & 0x1f);
    match op {
        // SPC-4 table 66.
        0x00 => Always, // TEST UNIT READY
        0x03 => Always, // REQUEST SENSE
        0x12 => Always, // INQUIRY
        0x4d => Always, // LOG SENSE
        0x5e => Always, // PERSISTENT RESERVE IN
        0x86 => Always, // ACCESS CONTROL IN
        0x87 => Always, // ACCESS CONTROL OUT
        0xa0 => Always, // REPORT LUNS
        // RESERVE / RELEASE (6)/(10): CRH rules in spc2.rs decide.
        0x16 | 0x17 | 0x56 | 0x57 => Always,
        0x1a | 0x5a => Read,  // MODE SENSE (6)/(10)
        0x1c => Read,         // RECEIVE DIAGNOSTIC RESULTS
        0x3c => Read,         // READ BUFFER
        0x8c => Read,         // READ ATTRIBUTE
        0xa2 => Read,         // SECURITY PROTOCOL IN
        0x15 | 0x55 => Write, // MODE SELECT (6)/(10)
        0x1d => Write,        // SEND DIAGNOSTIC
        0x3b => Write,        // WRITE BUFFER
        0x4c => Write,        // LOG SELECT
        0x83 => match sa {
            0x10 => Read, // POPULATE TOKEN (SBC-3)
            _ => Write,   // EXTENDED COPY, WRITE USING TOKEN, ...
        },
        0x84 => Read,  // RECEIVE COPY RESULTS / ROD TOKEN INFORMATION (reports only)
        0x8d => Write, // WRITE ATTRIBUTE
        0xb5 => Write, // SECURITY PROTOCOL OUT
        0xa3 => match sa {
            0x05 => Always, // REPORT IDENTIFYING INFORMATION
            0x0a => Always, // REPORT TARGET PORT GROUPS
            0x0b => Always, // REPORT ALIASES
            0x0c => Read,   // REPORT SUPPORTED OPERATION CODES
            0x0d => Read,   // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
            0x0e => Always, // REPORT PRIORITY
            0x0f => Always, // REPORT TIMESTAMP
            0x10 => Read,   // MANAGEMENT PROTOCOL IN
            _ => Write,
        },
        // MAINTENANCE OUT: SET IDENTIFYING INFORMATION, SET TARGET PORT
        // GROUPS, CHANGE ALIASES, SET PRIORITY, SET TIMESTAMP, MANAGEMENT
        // PROTOCOL OUT.
        0xa4 => Write,
        0xab => match sa {
            0x01 => Always, // READ MEDIA SERIAL NUMBER
            _ => Write,
        },
        // SPC-4 table 67.
        0x5f => match sa {
            0x00 | 0x06 => Always, // REGISTER, REGISTER AND IGNORE EXISTING KEY
            0x01..=0x05 => Registered,
            0x07 => HolderOnly, // REGISTER AND MOVE
            _ => Always,        // unsupported: ILLEGAL REQUEST from the engine
        },
        // SBC-3 table 13.
        0x25 => Always, // READ CAPACITY (10)
        0x9e => match sa {
            0x10 => Always, // READ CAPACITY (16)
            0x11 => Read,   // READ LONG (16)
            0x12 => Read,   // GET LBA STATUS
            0x13 => Read,   // REPORT REFERRALS
            _ => Write,
        },
        0x08 | 0x28 | 0xa8 | 0x88 => Read, // READ (6)/(10)/(12)/(16)
        0x2f | 0xaf | 0x8f => Read,        // VERIFY (10)/(12)/(16)
        0x34 | 0x90 => Read,               // PRE-FETCH (10)/(16)
        0x37 | 0xb7 => Read,               // READ DEFECT DATA (10)/(12)
        0x3e => Read,                      // READ LONG (10)
        0x7f => {
            // Variable length: READ (32), VERIFY (32) read; the rest write.
            let sa32 = match (cdb.get(8), cdb.get(9)) {
                (Some(&a), Some(&b)) => u16::from_be_bytes([a, b]),
                _ => 0,
            };
            match sa32 {
                0x0009 | 0x000a => Read,
                _ => Write,
            }
        }
        // START STOP UNIT with START=1 and POWER CONDITION=0 is allowed.
        0x1b => match cdb.get(4) {
            Some(&b) if b & 0x01 == 1 && b >> 4 == 0 => Always,
            _ => Write,
        },
        // PREVENT ALLOW MEDIUM REMOVAL with PREVENT=0 is allowed.
        0x1e => match cdb.get(4) {
            Some(&b) if b & 0x03 == 0 => Always,
            _ => Write,
        },
        // WRITE*, WRITE AND VERIFY*, WRITE SAME*, UNMAP, COMPARE AND WRITE,
        // ORWRITE, SYNCHRONIZE CACHE, FORMAT UNIT, REASSIGN BLOCKS, WRITE
        // LONG, SANITIZE, WRITE ATOMIC, XDWRITEREAD and everything unknown.
        _ => Write,
    }
}

/// Commands an SPC-2 reservation held by another nexus allows (SPC-2
/// 5.5.1): INQUIRY, REQUEST SENSE, REPORT LUNS, RELEASE (a no-op there).
fn spc2_allowed(op: u8) -> bool {
    matches!(op, 0x12 | 0x03 | 0xa0 | 0x17 | 0x57)
}

/// Whether `nexus` may run `cdb` given the reservations in `state`.
pub fn check_access(state: &PrState, nexus: &Nexus, cdb: &[u8]) -> Access {
    check_access_with(state, nexus, cdb, || {
        state.registrations.iter().any(|r| r.nexus.matches(nexus))
    })
}

/// [`check_access`] with the "is `nexus` registered" answer supplied by the
/// caller (asked at most once, and only when a reservation makes it matter):
/// a view remembers it per state instead of scanning every registration on
/// every command.
pub fn check_access_with(
    state: &PrState,
    nexus: &Nexus,
    cdb: &[u8],
    is_registered: impl FnOnce() -> bool,
) -> Access {
    let Some(&op) = cdb.first() else {
        return Access::Allowed;
    };
    if let Some(h) = &state.spc2_holder {
        // SPC-2 5.5.1: every PR IN / PR OUT conflicts while an SPC-2
        // reservation exists, whoever sends it.
        if op == 0x5e || op == 0x5f {
            return Access::Conflict;
        }
        if !h.matches(nexus) && !spc2_allowed(op) {
            return Access::Conflict;
        }
    }
    let Some(res) = &state.reservation else {
        return Access::Allowed;
    };
    // The holder of a one-nexus reservation is answered without the scan of
    // the registrations (O(registrants) string compares).
    if let Holder::Nexus(h) = &res.holder
        && h.matches(nexus)
    {
        return Access::Allowed;
    }
    let registered = is_registered();
    if registered && matches!(res.holder, Holder::AllRegistrants) {
        return Access::Allowed;
    }
    let reg_access = registered && res.kind.registrants_have_access();
    let allowed = match classify(cdb) {
        AccessClass::Always => true,
        AccessClass::Read => res.kind.write_exclusive() || reg_access,
        AccessClass::Write => reg_access,
        AccessClass::Registered => registered,
        AccessClass::HolderOnly => false,
    };
    if allowed {
        Access::Allowed
    } else {
        Access::Conflict
    }
}
