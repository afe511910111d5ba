//! SPC-2 RESERVE(6)/(10) and RELEASE(6)/(10), with the compatible
//! reservation handling (CRH=1) of SPC-4 5.13.3, and the events that drop
//! an SPC-2 reservation.

use super::sense::SenseInfo;
use super::state::{Nexus, PrState};
use super::{Effect, Reject};

pub const RESERVE_6: u8 = 0x16;
pub const RELEASE_6: u8 = 0x17;
pub const RESERVE_10: u8 = 0x56;
pub const RELEASE_10: u8 = 0x57;

/// Rejects third-party and extent reservations, which we do not support:
/// RESERVE(6)/RELEASE(6) byte 1 bit 0 (extent) and bits 4..1 (third party),
/// RESERVE(10)/RELEASE(10) byte 1 bit 4 (3RDPTY) and bit 1 (LONGID).
fn check_cdb(cdb: &[u8]) -> Result<(), Reject> {
    let b1 = cdb.get(1).copied().unwrap_or(0);
    let bad = match cdb[0] {
        RESERVE_6 | RELEASE_6 => b1 & 0x1f,
        _ => b1 & 0x12,
    };
    if bad != 0 {
        let bit = 7 - bad.leading_zeros();
        return Err(SenseInfo::invalid_cdb_field(1, u8::try_from(bit).ok()).into());
    }
    Ok(())
}

/// SPC-4 5.13.3: with CRH=1 a RESERVE or RELEASE from a persistent
/// reservation holder, or from a registrant while a registrants-only or
/// all-registrants reservation exists, completes with GOOD and does
/// nothing (`Ok(true)`). Otherwise SPC-2 rules apply, and SPC-2 5.5.1 makes
/// every RESERVE/RELEASE conflict while any registration exists.
fn crh(s: &PrState, nexus: &Nexus) -> Result<bool, Reject> {
    if s.registration(nexus).is_some()
        && (s.is_holder(nexus)
            || s.reservation
                .as_ref()
                .is_some_and(|r| r.kind.registrants_have_access()))
    {
        return Ok(true);
    }
    if s.registrations.is_empty() {
        Ok(false)
    } else {
        Err(Reject::Conflict)
    }
}

/// RESERVE(6)/(10): the nexus takes (or keeps) the SPC-2 reservation.
pub(crate) fn reserve(s: &PrState, nexus: &Nexus, cdb: &[u8]) -> Result<Effect, Reject> {
    check_cdb(cdb)?;
    if crh(s, nexus)? {
        return Ok(Effect::default());
    }
    match &s.spc2_holder {
        Some(h) if !h.matches(nexus) => Err(Reject::Conflict),
        Some(_) => Ok(Effect::default()),
        None => {
            let mut n = s.clone();
            n.spc2_holder = Some(nexus.clone());
            Ok(Effect::with_state(n))
        }
    }
}

/// RELEASE(6)/(10): releases the nexus' own SPC-2 reservation; from anyone
/// else it is GOOD with no effect (SPC-2 7.17).
pub(crate) fn release(s: &PrState, nexus: &Nexus, cdb: &[u8]) -> Result<Effect, Reject> {
    check_cdb(cdb)?;
    if crh(s, nexus)? {
        return Ok(Effect::default());
    }
    match &s.spc2_holder {
        Some(h) if h.matches(nexus) => {
            let mut n = s.clone();
            n.spc2_holder = None;
            Ok(Effect::with_state(n))
        }
        _ => Ok(Effect::default()),
    }
}

/// I_T nexus loss (logout, session drop): the nexus' SPC-2 reservation is
/// released (SPC-2 5.5.1); persistent reservations survive. Returns the
/// new state if anything changed.
pub fn nexus_lost(s: &PrState, nexus: &Nexus) -> Option<PrState> {
    if s.spc2_holder.as_ref().is_some_and(|h| h.matches(nexus)) {
        let mut n = s.clone();
        n.spc2_holder = None;
        Some(n)
    } else {
        None
    }
}

/// LOGICAL UNIT RESET (and hard reset): releases the SPC-2 reservation;
/// persistent reservations survive (SPC-4 5.13.1). Returns the new state if
/// anything changed.
pub fn lu_reset(s: &PrState) -> Option<PrState> {
    s.spc2_holder.as_ref()?;
    let mut n = s.clone();
    n.spc2_holder = None;
    Some(n)
}
