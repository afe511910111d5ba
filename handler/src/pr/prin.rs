//! PERSISTENT RESERVE IN (SPC-4 6.15): READ KEYS, READ RESERVATION, REPORT
//! CAPABILITIES, READ FULL STATUS.

use super::sense::SenseInfo;
use super::state::PrState;

/// PR IN service actions.
pub const READ_KEYS: u8 = 0x00;
pub const READ_RESERVATION: u8 = 0x01;
pub const REPORT_CAPABILITIES: u8 = 0x02;
pub const READ_FULL_STATUS: u8 = 0x03;

/// Answers a PR IN CDB (at least 10 bytes, checked by the caller): the
/// data-in bytes, already cut to the ALLOCATION LENGTH. The ADDITIONAL
/// LENGTH fields always describe the full data (SPC-4 4.2.5.6).
pub fn pr_in(state: &PrState, cdb: &[u8]) -> Result<Vec<u8>, SenseInfo> {
    let sa = cdb[1] & 0x1f;
    let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
    let mut data = match sa {
        READ_KEYS => read_keys(state),
        READ_RESERVATION => read_reservation(state),
        REPORT_CAPABILITIES => report_capabilities(state),
        READ_FULL_STATUS => read_full_status(state),
        _ => return Err(SenseInfo::invalid_cdb_field(1, Some(4))),
    };
    data.truncate(alloc);
    Ok(data)
}

fn header(state: &PrState, additional: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + additional);
    v.extend_from_slice(&state.generation.to_be_bytes());
    v.extend_from_slice(&u32::try_from(additional).unwrap_or(u32::MAX).to_be_bytes());
    v
}

/// SPC-4 6.15.2: PRgeneration, ADDITIONAL LENGTH, one key per registered
/// I_T nexus in registration order.
pub fn read_keys(state: &PrState) -> Vec<u8> {
    let mut v = header(state, 8 * state.registrations.len());
    for r in &state.registrations {
        v.extend_from_slice(&r.key.to_be_bytes());
    }
    v
}

/// SPC-4 6.15.3: the reservation, if any, in 16 bytes.
pub fn read_reservation(state: &PrState) -> Vec<u8> {
    let (Some(res), Some(key)) = (&state.reservation, state.reservation_key()) else {
        return header(state, 0);
    };
    let mut v = header(state, 16);
    v.extend_from_slice(&key.to_be_bytes());
    v.extend_from_slice(&[0; 4]); // obsolete
    v.push(0);
    v.push(res.kind.code()); // SCOPE LU_SCOPE (0h) | TYPE
    v.extend_from_slice(&[0; 2]); // obsolete
    v
}

/// SPC-4 6.15.4, with the capabilities LIO reports (DESIGN.md §5).
pub fn report_capabilities(state: &PrState) -> Vec<u8> {
    const CRH: u8 = 0x10;
    const SIP_C: u8 = 0x08;
    const ATP_C: u8 = 0x04;
    const PTPL_C: u8 = 0x01;
    const TMV: u8 = 0x80;
    // ALLOW COMMANDS 001b: see table 167 (the conflict table in conflict.rs).
    const ALLOW_COMMANDS_1: u8 = 0x10;
    // Type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
    const MASK: [u8; 2] = [0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01];
    vec![
        0,
        8,
        CRH | SIP_C | ATP_C | PTPL_C,
        TMV | ALLOW_COMMANDS_1 | u8::from(state.aptpl),
        MASK[0],
        MASK[1],
        0,
        0,
    ]
}

/// SPC-4 6.15.5: one full status descriptor per registered I_T nexus.
pub fn read_full_status(state: &PrState) -> Vec<u8> {
    let total: usize = state
        .registrations
        .iter()
        .map(|r| 24 + r.nexus.initiator.encoded_len())
        .sum();
    let mut v = header(state, total);
    for (i, r) in state.registrations.iter().enumerate() {
        v.extend_from_slice(&r.key.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
        let holder = state.registration_holds(i);
        v.push(u8::from(r.all_tg_pt) << 1 | u8::from(holder));
        // SCOPE and TYPE are only meaningful for a holder.
        v.push(match (&state.reservation, holder) {
            (Some(res), true) => res.kind.code(),
            _ => 0,
        });
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&r.nexus.rtpi.to_be_bytes());
        let len = r.nexus.initiator.encoded_len();
        v.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        r.nexus.initiator.encode(&mut v);
    }
    v
}
