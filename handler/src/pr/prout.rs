//! PERSISTENT RESERVE OUT (SPC-4 5.13 and 6.16): parameter parsing and the
//! service actions.

use super::sense::{
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION, PARAMETER_LIST_LENGTH_ERROR, SenseInfo,
};
use super::state::{Holder, Nexus, PrState, PrType, Registration, Reservation, TargetPort};
use super::transport_id::TransportId;
use super::ua::Ua;
use super::{Effect, Reject};

/// PR OUT service actions (SPC-4 table 174).
pub const REGISTER: u8 = 0x00;
pub const RESERVE: u8 = 0x01;
pub const RELEASE: u8 = 0x02;
pub const CLEAR: u8 = 0x03;
pub const PREEMPT: u8 = 0x04;
pub const PREEMPT_AND_ABORT: u8 = 0x05;
pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
pub const REGISTER_AND_MOVE: u8 = 0x07;
/// REPLACE LOST RESERVATION: not supported, rejected as an invalid field.
pub const REPLACE_LOST_RESERVATION: u8 = 0x08;

/// Length of the basic parameter list (SPC-4 6.16.3).
const BASIC_LEN: usize = 24;

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8]) -> usize {
    usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(usize::MAX)
}

/// A decoded PR OUT command.
struct Request<'a> {
    sa: u8,
    kind: Option<PrType>,
    res_key: u64,
    sa_key: u64,
    aptpl: bool,
    all_tg_pt: bool,
    /// SPEC_I_PT TransportIDs (REGISTER only).
    spec_i_pt: Option<Vec<TransportId>>,
    /// REGISTER AND MOVE: destination, UNREG.
    dest: Option<(TransportId, u16)>,
    unreg: bool,
    issuer: &'a Nexus,
}

/// Runs a PR OUT CDB (at least 10 bytes, checked by the caller).
pub(crate) fn pr_out(
    state: &PrState,
    ports: &[TargetPort],
    issuer: &Nexus,
    cdb: &[u8],
    data_out: &[u8],
) -> Result<Effect, Reject> {
    let req = decode(cdb, data_out, issuer)?;
    let mut s = state.clone();
    let mut fx = Effect::default();
    match req.sa {
        REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY => register(&mut s, ports, &req, &mut fx)?,
        RESERVE => reserve(&mut s, &req)?,
        RELEASE => release(&mut s, &req, &mut fx)?,
        CLEAR => clear(&mut s, &req, &mut fx)?,
        PREEMPT | PREEMPT_AND_ABORT => preempt(&mut s, &req, &mut fx)?,
        _ => register_and_move(&mut s, ports, &req)?,
    }
    fx.state = Some(s);
    Ok(fx)
}

/// CDB and parameter list checks, in this order: service action, SCOPE
/// and TYPE, PARAMETER LIST LENGTH, parameter list fields.
fn decode<'a>(cdb: &[u8], data_out: &[u8], issuer: &'a Nexus) -> Result<Request<'a>, Reject> {
    let sa = cdb[1] & 0x1f;
    if sa > REGISTER_AND_MOVE {
        return Err(SenseInfo::invalid_cdb_field(1, Some(4)).into());
    }
    let mut kind = None;
    if matches!(sa, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT) {
        if cdb[2] >> 4 != 0 {
            return Err(SenseInfo::invalid_cdb_field(2, Some(7)).into());
        }
        kind = Some(
            PrType::from_code(cdb[2] & 0x0f)
                .ok_or_else(|| Reject::from(SenseInfo::invalid_cdb_field(2, Some(3))))?,
        );
    }
    let pll = be32(&cdb[5..9]);
    // A data-out shorter than PARAMETER LIST LENGTH is a length error too.
    let Some(p) = data_out.get(..pll) else {
        return Err(PARAMETER_LIST_LENGTH_ERROR.into());
    };
    if pll < BASIC_LEN {
        return Err(PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let mut req = Request {
        sa,
        kind,
        res_key: be64(&p[0..]),
        sa_key: be64(&p[8..]),
        aptpl: false,
        all_tg_pt: false,
        spec_i_pt: None,
        dest: None,
        unreg: false,
        issuer,
    };
    if sa == REGISTER_AND_MOVE {
        // SPC-4 6.16.4: header, then exactly one TransportID.
        req.unreg = p[17] & 0x02 != 0;
        req.aptpl = p[17] & 0x01 != 0;
        let rtpi = u16::from_be_bytes([p[18], p[19]]);
        let tid_len = be32(&p[20..24]);
        if BASIC_LEN.checked_add(tid_len) != Some(pll) {
            return Err(PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let (tid, used) = TransportId::parse(&p[24..], 24).map_err(|e| Reject::from(e.sense()))?;
        if used != tid_len {
            return Err(SenseInfo::invalid_param_field(20, None).into());
        }
        req.dest = Some((tid, rtpi));
        return Ok(req);
    }
    let spec_i_pt = p[20] & 0x08 != 0;
    req.all_tg_pt = p[20] & 0x04 != 0;
    req.aptpl = p[20] & 0x01 != 0;
    if spec_i_pt && sa != REGISTER {
        return Err(SenseInfo::invalid_param_field(20, Some(3)).into());
    }
    if !spec_i_pt {
        if pll != BASIC_LEN {
            return Err(PARAMETER_LIST_LENGTH_ERROR.into());
        }
        return Ok(req);
    }
    // SPC-4 6.16.3: TRANSPORTID PARAMETER DATA LENGTH, then the ids.
    if pll < BASIC_LEN + 4 {
        return Err(PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let tid_len = be32(&p[24..28]);
    if (BASIC_LEN + 4).checked_add(tid_len) != Some(pll) {
        return Err(PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let mut tids = Vec::new();
    let mut off = BASIC_LEN + 4;
    while off < pll {
        let (tid, used) =
            TransportId::parse(&p[off..], off).map_err(|e| Reject::from(e.sense()))?;
        tids.push(tid);
        off += used;
    }
    req.spec_i_pt = Some(tids);
    Ok(req)
}

/// The issuer's registration index and key check shared by every service
/// action except REGISTER AND IGNORE EXISTING KEY: an unregistered nexus or
/// a wrong key is a RESERVATION CONFLICT.
fn registered(s: &PrState, req: &Request<'_>) -> Result<usize, Reject> {
    let i = s.registration_index(req.issuer).ok_or(Reject::Conflict)?;
    if s.registrations[i].key != req.res_key {
        return Err(Reject::Conflict);
    }
    Ok(i)
}

/// Target ports a registration is made on: the issuer's, or with ALL_TG_PT
/// every port of the LU (SPC-4 5.13.7).
fn reg_ports(ports: &[TargetPort], issuer: &Nexus, all_tg_pt: bool) -> Vec<u16> {
    let mut v = vec![issuer.rtpi];
    if all_tg_pt {
        v.extend(ports.iter().map(|p| p.rtpi).filter(|r| *r != issuer.rtpi));
    }
    v
}

/// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 5.13.7, 5.13.11.3).
fn register(
    s: &mut PrState,
    ports: &[TargetPort],
    req: &Request<'_>,
    fx: &mut Effect,
) -> Result<(), Reject> {
    let ignore = req.sa == REGISTER_AND_IGNORE_EXISTING_KEY;
    let Some(i) = s.registration_index(req.issuer) else {
        if !ignore && req.res_key != 0 {
            return Err(Reject::Conflict);
        }
        let rtpis = reg_ports(ports, req.issuer, req.all_tg_pt);
        // Resolve SPEC_I_PT targets first: none may be registered already.
        let mut others: Vec<Nexus> = Vec::new();
        for tid in req.spec_i_pt.iter().flatten() {
            // The issuer's own ports are registered below anyway.
            if tid.matches(&req.issuer.initiator) {
                continue;
            }
            for &rtpi in &rtpis {
                let n = Nexus {
                    initiator: tid.clone(),
                    rtpi,
                };
                if others.iter().any(|o| o.matches(&n)) {
                    continue;
                }
                if s.registration_index(&n).is_some() {
                    return Err(SenseInfo::invalid_param_field(24, None).into());
                }
                others.push(n);
            }
        }
        if req.sa_key == 0 {
            // Unregistered nexus, key zero: nothing to do (SPC-4 table 46).
            return Ok(());
        }
        for rtpi in rtpis {
            let n = Nexus {
                initiator: req.issuer.initiator.clone(),
                rtpi,
            };
            // ALL_TG_PT takes over the initiator's registrations on other
            // ports too.
            match s.registration_index(&n) {
                Some(j) => {
                    s.registrations[j].key = req.sa_key;
                    s.registrations[j].all_tg_pt = true;
                }
                None => s.registrations.push(Registration {
                    nexus: n,
                    key: req.sa_key,
                    all_tg_pt: req.all_tg_pt,
                }),
            }
        }
        for n in others {
            s.registrations.push(Registration {
                nexus: n,
                key: req.sa_key,
                all_tg_pt: req.all_tg_pt,
            });
        }
        s.generation = s.generation.wrapping_add(1);
        s.aptpl = req.aptpl;
        return Ok(());
    };
    if !ignore && s.registrations[i].key != req.res_key {
        return Err(Reject::Conflict);
    }
    if req.spec_i_pt.is_some() {
        return Err(SenseInfo::invalid_param_field(20, Some(3)).into());
    }
    // An ALL_TG_PT registration changes as one (LIO does the same).
    let group: Vec<usize> = if s.registrations[i].all_tg_pt {
        let init = s.registrations[i].nexus.initiator.clone();
        (0..s.registrations.len())
            .filter(|&j| {
                s.registrations[j].all_tg_pt && s.registrations[j].nexus.initiator.matches(&init)
            })
            .collect()
    } else {
        vec![i]
    };
    if req.sa_key == 0 {
        let released = match &s.reservation {
            Some(Reservation {
                holder: Holder::Nexus(h),
                kind,
            }) if group.iter().any(|&j| s.registrations[j].nexus.matches(h)) => Some(*kind),
            _ => None,
        };
        for &j in group.iter().rev() {
            s.remove_registration(j);
        }
        // SPC-4 5.13.11.3: a registrants-only holder unregistering releases
        // the reservation; the other registrants are told.
        if released.is_some_and(|k| k.registrants_have_access()) {
            for r in &s.registrations {
                fx.ua(&r.nexus, Ua::ReservationsReleased);
            }
        }
    } else {
        for &j in &group {
            s.registrations[j].key = req.sa_key;
        }
    }
    s.generation = s.generation.wrapping_add(1);
    s.aptpl = req.aptpl;
    Ok(())
}

/// RESERVE (SPC-4 5.13.9).
fn reserve(s: &mut PrState, req: &Request<'_>) -> Result<(), Reject> {
    let i = registered(s, req)?;
    let kind = req.kind.ok_or(Reject::Conflict)?;
    match &s.reservation {
        None => {
            let holder = if kind.all_registrants() {
                Holder::AllRegistrants
            } else {
                Holder::Nexus(s.registrations[i].nexus.clone())
            };
            s.reservation = Some(Reservation { holder, kind });
            Ok(())
        }
        // The holder reserving again with the same type: nothing to do.
        Some(r) if r.kind == kind && s.is_holder(req.issuer) => Ok(()),
        Some(_) => Err(Reject::Conflict),
    }
}

/// RELEASE (SPC-4 5.13.11.2).
fn release(s: &mut PrState, req: &Request<'_>, fx: &mut Effect) -> Result<(), Reject> {
    registered(s, req)?;
    let kind = req.kind.ok_or(Reject::Conflict)?;
    let Some(res) = &s.reservation else {
        return Ok(());
    };
    if !s.is_holder(req.issuer) {
        return Ok(());
    }
    if res.kind != kind {
        return Err(INVALID_RELEASE_OF_PERSISTENT_RESERVATION.into());
    }
    if res.kind.registrants_have_access() {
        for r in &s.registrations {
            if !r.nexus.matches(req.issuer) {
                fx.ua(&r.nexus, Ua::ReservationsReleased);
            }
        }
    }
    s.reservation = None;
    Ok(())
}

/// CLEAR (SPC-4 5.13.11.6).
fn clear(s: &mut PrState, req: &Request<'_>, fx: &mut Effect) -> Result<(), Reject> {
    registered(s, req)?;
    for r in &s.registrations {
        if !r.nexus.matches(req.issuer) {
            fx.ua(&r.nexus, Ua::ReservationsPreempted);
        }
    }
    s.registrations.clear();
    s.reservation = None;
    s.generation = s.generation.wrapping_add(1);
    Ok(())
}

/// Removes every registration with `key`, except the issuer's when
/// `keep_issuer`; returns the nexuses removed.
fn remove_key(s: &mut PrState, key: Option<u64>, issuer: &Nexus, keep_issuer: bool) -> Vec<Nexus> {
    let mut removed = Vec::new();
    let mut j = 0;
    while j < s.registrations.len() {
        let r = &s.registrations[j];
        let hit = key.is_none_or(|k| r.key == k) && !(keep_issuer && r.nexus.matches(issuer));
        if hit {
            removed.push(s.remove_registration(j).nexus);
        } else {
            j += 1;
        }
    }
    removed
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4, 5.13.11.5).
fn preempt(s: &mut PrState, req: &Request<'_>, fx: &mut Effect) -> Result<(), Reject> {
    let i = registered(s, req)?;
    let kind = req.kind.ok_or(Reject::Conflict)?;
    let me = s.registrations[i].nexus.clone();
    let new_res = |kind: PrType| Reservation {
        holder: if kind.all_registrants() {
            Holder::AllRegistrants
        } else {
            Holder::Nexus(me.clone())
        },
        kind,
    };
    let old = s.reservation.clone();
    let removed = match &old {
        Some(r) if r.kind.all_registrants() && req.sa_key == 0 => {
            // Preempt an all-registrants reservation: everyone but the
            // issuer goes, the issuer gets the new reservation.
            let removed = remove_key(s, None, req.issuer, true);
            s.reservation = Some(new_res(kind));
            removed
        }
        _ if req.sa_key == 0 => {
            return Err(SenseInfo::invalid_param_field(8, None).into());
        }
        Some(Reservation {
            holder: Holder::Nexus(h),
            kind: old_kind,
        }) if s.registration(h).is_some_and(|r| r.key == req.sa_key) => {
            // Preempt the holder: its key's registrations go (not the
            // issuer's), the issuer holds the new reservation.
            let removed = remove_key(s, Some(req.sa_key), req.issuer, true);
            s.reservation = Some(new_res(kind));
            if *old_kind != kind {
                for r in &s.registrations {
                    if !r.nexus.matches(req.issuer) {
                        fx.ua(&r.nexus, Ua::ReservationsReleased);
                    }
                }
            }
            removed
        }
        _ => {
            // Remove registrations only; the reservation stays.
            let removed = remove_key(s, Some(req.sa_key), req.issuer, false);
            if removed.is_empty() {
                return Err(Reject::Conflict);
            }
            removed
        }
    };
    for n in removed.iter().filter(|n| !n.matches(req.issuer)) {
        fx.ua(n, Ua::RegistrationsPreempted);
        if req.sa == PREEMPT_AND_ABORT {
            fx.abort.push(n.clone());
        }
    }
    s.generation = s.generation.wrapping_add(1);
    Ok(())
}

/// REGISTER AND MOVE (SPC-4 5.13.8).
fn register_and_move(
    s: &mut PrState,
    ports: &[TargetPort],
    req: &Request<'_>,
) -> Result<(), Reject> {
    let i = registered(s, req)?;
    match &s.reservation {
        Some(r) if !r.kind.all_registrants() && s.is_holder(req.issuer) => {}
        _ => return Err(Reject::Conflict),
    }
    if req.sa_key == 0 {
        return Err(SenseInfo::invalid_param_field(8, None).into());
    }
    let Some((tid, rtpi)) = req.dest.clone() else {
        return Err(Reject::Conflict);
    };
    if !ports.iter().any(|p| p.rtpi == rtpi) {
        return Err(SenseInfo::invalid_param_field(18, None).into());
    }
    let dest = Nexus {
        initiator: tid,
        rtpi,
    };
    if dest.matches(req.issuer) {
        return Err(SenseInfo::invalid_param_field(24, None).into());
    }
    let me = s.registrations[i].nexus.clone();
    let dest = match s.registration_index(&dest) {
        Some(j) => {
            s.registrations[j].key = req.sa_key;
            s.registrations[j].nexus.clone()
        }
        None => {
            s.registrations.push(Registration {
                nexus: dest.clone(),
                key: req.sa_key,
                all_tg_pt: false,
            });
            dest
        }
    };
    if let Some(r) = &mut s.reservation {
        r.holder = Holder::Nexus(dest);
    }
    if req.unreg
        && let Some(j) = s.registration_index(&me)
    {
        s.registrations.remove(j);
    }
    s.generation = s.generation.wrapping_add(1);
    s.aptpl = req.aptpl;
    Ok(())
}
