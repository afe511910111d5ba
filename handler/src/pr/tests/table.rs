//! Every PR OUT service action x reservation type x state of the issuing
//! nexus, checking status, sense, state, PRgeneration and unit attentions.
//!
//! A = issuer (init0, port 1), B = init1 port 1, C = init2 port 2,
//! D = init3 port 1 (REGISTER AND MOVE destination).

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// A unregistered; B and C registered, B holds the reservation.
    Unregistered,
    /// A, B, C registered; no reservation.
    Registered,
    /// A, B, C registered; A holds the reservation.
    Holder,
    /// A, B, C registered; B holds the reservation.
    OtherHolder,
}

const SETUPS: [Setup; 4] = [
    Setup::Unregistered,
    Setup::Registered,
    Setup::Holder,
    Setup::OtherHolder,
];

fn a() -> Nexus {
    nx(0, 1)
}
fn b() -> Nexus {
    nx(1, 1)
}
fn c() -> Nexus {
    nx(2, 2)
}
fn d() -> Nexus {
    nx(3, 1)
}

fn setup(s: Setup, kind: PrType) -> Lu {
    let mut lu = Lu::default();
    if s != Setup::Unregistered {
        lu.register(&a(), KA);
    }
    lu.register(&b(), KB);
    lu.register(&c(), KC);
    match s {
        Setup::Registered => {}
        Setup::Holder => lu.reserve(&a(), KA, kind.code()),
        _ => lu.reserve(&b(), KB, kind.code()),
    }
    lu
}

/// Observable summary: keys in order, (holder nexus or AR, type).
type Summary = (Vec<(Nexus, u64)>, Option<(Option<Nexus>, PrType)>);

fn summary(s: &PrState) -> Summary {
    (
        s.registrations
            .iter()
            .map(|r| (r.nexus.clone(), r.key))
            .collect(),
        s.reservation.as_ref().map(|r| {
            (
                match &r.holder {
                    Holder::Nexus(n) => Some(n.clone()),
                    Holder::AllRegistrants => None,
                },
                r.kind,
            )
        }),
    )
}

struct Expect {
    status: Status,
    gen_delta: u32,
    regs: Vec<(Nexus, u64)>,
    res: Option<(Option<Nexus>, PrType)>,
    uas: Vec<(Nexus, Ua)>,
    abort: Vec<Nexus>,
}

fn run_case(sa: u8, kind: PrType, s: Setup) {
    let mut lu = setup(s, kind);
    let before = lu.state.clone();
    let (regs0, res0) = summary(&before);
    let ar = kind.all_registrants();
    let ro_or_ar = kind.registrants_have_access();
    let res_key = if s == Setup::Unregistered { 0 } else { KA };
    let mut data = params(res_key, KN, 0);
    let sa_key_for = |sa: u8| match sa {
        4 | 5 => KB,
        _ => KN,
    };
    data[8..16].copy_from_slice(&sa_key_for(sa).to_be_bytes());
    if sa == 7 {
        // REGISTER AND MOVE: destination D on port 1.
        let mut tid = Vec::new();
        iqn(3).encode(&mut tid);
        data[16..24].fill(0);
        data[18..20].copy_from_slice(&1u16.to_be_bytes());
        data[20..24].copy_from_slice(&u32::try_from(tid.len()).unwrap().to_be_bytes());
        data.extend_from_slice(&tid);
    }
    let cdb = prout_cdb(sa, kind.code(), u32::try_from(data.len()).unwrap());
    let o = lu.run(&a(), &cdb, &data);

    let holder_a = Some((Some(a()), kind));
    let ar_res = Some((None, kind));
    let res_a_or_ar = if ar { ar_res.clone() } else { holder_a.clone() };
    let conflict = Expect {
        status: Status::ReservationConflict,
        gen_delta: 0,
        regs: regs0.clone(),
        res: res0.clone(),
        uas: vec![],
        abort: vec![],
    };
    let unchanged = Expect {
        status: Status::Good,
        ..conflict_like(&regs0, &res0)
    };
    let with_key = |key: u64| -> Vec<(Nexus, u64)> {
        regs0
            .iter()
            .map(|(n, k)| (n.clone(), if *n == a() { key } else { *k }))
            .collect()
    };
    let without_b: Vec<(Nexus, u64)> = regs0.iter().filter(|(n, _)| *n != b()).cloned().collect();
    let others = |ua: Ua| vec![(b(), ua), (c(), ua)];

    let e = match (sa, s) {
        (_, Setup::Unregistered) if sa != 0 && sa != 6 => conflict,
        // REGISTER / REGISTER AND IGNORE EXISTING KEY.
        (0 | 6, Setup::Unregistered) => Expect {
            status: Status::Good,
            gen_delta: 1,
            regs: {
                let mut r = regs0.clone();
                r.push((a(), KN));
                r
            },
            ..conflict_like(&regs0, &res0)
        },
        (0 | 6, _) => Expect {
            status: Status::Good,
            gen_delta: 1,
            regs: with_key(KN),
            ..conflict_like(&regs0, &res0)
        },
        // RESERVE.
        (1, Setup::Registered) => Expect {
            res: res_a_or_ar.clone(),
            ..unchanged
        },
        (1, Setup::Holder) => unchanged,
        (1, Setup::OtherHolder) if ar => unchanged,
        (1, Setup::OtherHolder) => conflict,
        // RELEASE.
        (2, Setup::Registered) => unchanged,
        (2, Setup::OtherHolder) if !ar => unchanged,
        (2, _) => Expect {
            res: None,
            uas: if ro_or_ar {
                others(Ua::ReservationsReleased)
            } else {
                vec![]
            },
            ..unchanged
        },
        // CLEAR.
        (3, _) => Expect {
            status: Status::Good,
            gen_delta: 1,
            regs: vec![],
            res: None,
            uas: others(Ua::ReservationsPreempted),
            abort: vec![],
        },
        // PREEMPT / PREEMPT AND ABORT of B's key.
        (4 | 5, _) => Expect {
            status: Status::Good,
            gen_delta: 1,
            regs: without_b.clone(),
            res: match s {
                Setup::Registered => None,
                Setup::Holder => res_a_or_ar.clone(),
                // B held it: A takes it over (AR stays AR).
                _ => {
                    if ar {
                        ar_res.clone()
                    } else {
                        holder_a.clone()
                    }
                }
            },
            uas: vec![(b(), Ua::RegistrationsPreempted)],
            abort: if sa == 5 { vec![b()] } else { vec![] },
        },
        // REGISTER AND MOVE: only a holder of a non-AR reservation.
        (7, Setup::Holder) if !ar => Expect {
            status: Status::Good,
            gen_delta: 1,
            regs: {
                let mut r = regs0.clone();
                r.push((d(), KN));
                r
            },
            res: Some((Some(d()), kind)),
            uas: vec![],
            abort: vec![],
        },
        (7, _) => conflict,
        _ => unreachable!(),
    };
    let ctx = format!("sa {sa} type {kind:?} setup {s:?}");
    assert_eq!(o.status, e.status, "{ctx}");
    let after = o.new_state.clone().unwrap_or(before.clone());
    assert_eq!(
        after.generation,
        before.generation.wrapping_add(e.gen_delta),
        "{ctx}"
    );
    assert_eq!(summary(&after), (e.regs, e.res), "{ctx}");
    let uas: Vec<(Nexus, Ua)> = o
        .unit_attentions
        .iter()
        .map(|u| (u.nexus.clone(), u.ua))
        .collect();
    assert_eq!(uas, e.uas, "{ctx}");
    assert_eq!(o.abort, e.abort, "{ctx}");
    assert!(
        o.new_state.as_ref() != Some(&before),
        "{ctx}: unchanged state reported"
    );
    assert!(!o.aptpl_changed, "{ctx}");
}

fn conflict_like(regs: &[(Nexus, u64)], res: &Option<(Option<Nexus>, PrType)>) -> Expect {
    Expect {
        status: Status::ReservationConflict,
        gen_delta: 0,
        regs: regs.to_vec(),
        res: res.clone(),
        uas: vec![],
        abort: vec![],
    }
}

#[test]
fn every_service_action_type_and_registration_state() {
    let mut n = 0;
    for sa in 0..=7 {
        for kind in PrType::ALL {
            for s in SETUPS {
                run_case(sa, kind, s);
                n += 1;
            }
        }
    }
    assert_eq!(n, 8 * 6 * 4);
}

#[test]
fn wrong_key_is_a_conflict_for_every_keyed_service_action() {
    for kind in PrType::ALL {
        for sa in [0u8, 1, 2, 3, 4, 5] {
            let mut lu = setup(Setup::Holder, kind);
            let before = lu.state.clone();
            let st = lu.out(&a(), sa, kind.code(), KA ^ 1, KB, 0);
            assert_eq!(st, Status::ReservationConflict, "sa {sa} {kind:?}");
            assert_eq!(lu.state, before);
        }
    }
}

#[test]
fn release_with_other_type_is_invalid_release() {
    for kind in PrType::ALL {
        let mut lu = setup(Setup::Holder, kind);
        let other = PrType::ALL.iter().find(|k| **k != kind).unwrap();
        let st = lu.out(&a(), 2, other.code(), KA, 0, 0);
        assert!(cc(0x26, 0x04)(&st), "{kind:?}: {st:?}");
        assert!(lu.state.reservation.is_some());
    }
}

#[test]
fn preempt_with_type_change_releases_for_the_rest() {
    let mut lu = setup(Setup::OtherHolder, PrType::WriteExclusive);
    let o = lu.run(&a(), &prout_cdb(4, 3, 24), &params(KA, KB, 0));
    assert_eq!(o.status, Status::Good);
    assert_eq!(
        o.unit_attentions,
        vec![
            UnitAttention {
                nexus: c(),
                ua: Ua::ReservationsReleased
            },
            UnitAttention {
                nexus: b(),
                ua: Ua::RegistrationsPreempted
            },
        ]
    );
    assert_eq!(lu.resv(&a()), Some((KA, 3)));
}

#[test]
fn preempt_zero_key() {
    // All-registrants: everyone else goes, A holds the new type.
    let mut lu = setup(Setup::Holder, PrType::ExclusiveAccessAllRegistrants);
    let o = lu.run(&a(), &prout_cdb(5, 1, 24), &params(KA, 0, 0));
    assert_eq!(o.status, Status::Good);
    assert_eq!(o.abort, vec![b(), c()]);
    assert_eq!(lu.keys(&a()).1, vec![KA]);
    assert_eq!(lu.resv(&a()), Some((KA, 1)));
    // Otherwise an invalid field in the parameter list.
    for s in [Setup::Registered, Setup::OtherHolder] {
        let mut lu = setup(s, PrType::WriteExclusive);
        let st = lu.out(&a(), 4, 1, KA, 0, 0);
        assert_eq!(
            st,
            Status::CheckCondition(SenseInfo::invalid_param_field(8, None))
        );
    }
}

#[test]
fn preempt_unknown_key_is_a_conflict() {
    let mut lu = setup(Setup::Holder, PrType::WriteExclusive);
    assert_eq!(lu.out(&a(), 4, 1, KA, 0x77, 0), Status::ReservationConflict);
}

#[test]
fn unregistering_holder_releases_registrants_only() {
    for kind in PrType::ALL {
        let mut lu = setup(Setup::Holder, kind);
        let o = lu.run(&a(), &prout_cdb(0, 0, 24), &params(KA, 0, 0));
        assert_eq!(o.status, Status::Good);
        let expect_res = kind.all_registrants();
        assert_eq!(lu.state.reservation.is_some(), expect_res, "{kind:?}");
        let want: Vec<UnitAttention> = if matches!(
            kind,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        ) {
            [b(), c()]
                .into_iter()
                .map(|nexus| UnitAttention {
                    nexus,
                    ua: Ua::ReservationsReleased,
                })
                .collect()
        } else {
            vec![]
        };
        assert_eq!(o.unit_attentions, want, "{kind:?}");
    }
}

#[test]
fn cdb_and_parameter_list_errors() {
    let mut lu = setup(Setup::Holder, PrType::WriteExclusive);
    let before = lu.state.clone();
    let n = a();
    let p = params(KA, KN, 0);
    // REPLACE LOST RESERVATION and reserved service actions.
    for sa in 8..0x20 {
        let o = lu.run(&n, &prout_cdb(sa, 1, 24), &p);
        assert_eq!(
            o.status,
            Status::CheckCondition(SenseInfo::invalid_cdb_field(1, Some(4)))
        );
    }
    // Bad TYPE and SCOPE for RESERVE / RELEASE / PREEMPT.
    for sa in [1, 2, 4, 5] {
        for t in [0u8, 2, 4, 9, 15] {
            let o = lu.run(&n, &prout_cdb(sa, t, 24), &p);
            assert_eq!(
                o.status,
                Status::CheckCondition(SenseInfo::invalid_cdb_field(2, Some(3)))
            );
        }
        let o = lu.run(&n, &prout_cdb(sa, 0x11, 24), &p);
        assert_eq!(
            o.status,
            Status::CheckCondition(SenseInfo::invalid_cdb_field(2, Some(7)))
        );
    }
    // PARAMETER LIST LENGTH other than 24.
    for sa in 0..=6 {
        for len in [0u32, 8, 23, 25, 28, 32] {
            let mut data = p.clone();
            data.resize(32, 0);
            let o = lu.run(&n, &prout_cdb(sa, 1, len), &data);
            assert!(cc(0x1a, 0)(&o.status), "sa {sa} len {len}: {:?}", o.status);
        }
        // Data-out shorter than announced.
        let o = lu.run(&n, &prout_cdb(sa, 1, 24), &p[..20]);
        assert!(cc(0x1a, 0)(&o.status));
    }
    // SPEC_I_PT with anything but REGISTER.
    for sa in [1u8, 2, 3, 4, 5, 6] {
        let o = lu.run(&n, &prout_cdb(sa, 1, 24), &params(KA, KN, SPEC_I_PT));
        assert_eq!(
            o.status,
            Status::CheckCondition(SenseInfo::invalid_param_field(20, Some(3)))
        );
    }
    assert_eq!(lu.state, before);
}

fn spec_i_pt_list(res: u64, key: u64, flags: u8, tids: &[TransportId]) -> Vec<u8> {
    let mut p = params(res, key, SPEC_I_PT | flags);
    let mut t = Vec::new();
    for tid in tids {
        tid.encode(&mut t);
    }
    p.extend_from_slice(&u32::try_from(t.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&t);
    p
}

#[test]
fn spec_i_pt_registers_every_named_port() {
    let mut lu = Lu::default();
    let fc = TransportId::Fc { wwpn: 0x21 };
    let p = spec_i_pt_list(0, KA, ALL_TG_PT, &[iqn(1), fc.clone()]);
    let o = lu.run(&a(), &prout_cdb(0, 0, u32::try_from(p.len()).unwrap()), &p);
    assert_eq!(o.status, Status::Good);
    let got: Vec<(Nexus, u64, bool)> = lu
        .state
        .registrations
        .iter()
        .map(|r| (r.nexus.clone(), r.key, r.all_tg_pt))
        .collect();
    let fcn = |rtpi| Nexus {
        initiator: fc.clone(),
        rtpi,
    };
    assert_eq!(
        got,
        vec![
            (nx(0, 1), KA, true),
            (nx(0, 2), KA, true),
            (nx(1, 1), KA, true),
            (nx(1, 2), KA, true),
            (fcn(1), KA, true),
            (fcn(2), KA, true),
        ]
    );
    assert_eq!(lu.state.generation, 1);
}

#[test]
fn spec_i_pt_errors() {
    // Registered issuer.
    let mut lu = Lu::default();
    lu.register(&a(), KA);
    let p = spec_i_pt_list(KA, KN, 0, &[iqn(1)]);
    let cdb = prout_cdb(0, 0, u32::try_from(p.len()).unwrap());
    assert_eq!(
        lu.run(&a(), &cdb, &p).status,
        Status::CheckCondition(SenseInfo::invalid_param_field(20, Some(3)))
    );
    // A named nexus that is already registered: nothing registered.
    let mut lu = Lu::default();
    lu.register(&b(), KB);
    let p = spec_i_pt_list(0, KA, 0, &[iqn(2), iqn(1)]);
    let cdb = prout_cdb(0, 0, u32::try_from(p.len()).unwrap());
    assert!(cc(0x26, 0)(&lu.run(&a(), &cdb, &p).status));
    assert_eq!(lu.state.registrations.len(), 1);
    // TRANSPORTID PARAMETER DATA LENGTH disagreeing with the list length.
    let mut p = spec_i_pt_list(0, KA, 0, &[iqn(1)]);
    p[27] += 4;
    let cdb = prout_cdb(0, 0, u32::try_from(p.len()).unwrap());
    assert!(cc(0x1a, 0)(&lu.run(&a(), &cdb, &p).status));
    // A TransportID cut short inside the list.
    let mut p = spec_i_pt_list(0, KA, 0, &[iqn(1)]);
    p.truncate(p.len() - 4);
    p[27] -= 4;
    let cdb = prout_cdb(0, 0, u32::try_from(p.len()).unwrap());
    assert!(cc(0x26, 0)(&lu.run(&a(), &cdb, &p).status));
    // Too short for the length field.
    let p = params(0, KA, SPEC_I_PT);
    assert!(cc(0x1a, 0)(&lu.run(&a(), &prout_cdb(0, 0, 24), &p).status));
}

#[test]
fn register_and_move_errors() {
    let ram = |lu: &mut Lu, sak: u64, dest: &TransportId, rtpi: u16, unreg: bool| {
        let mut p = params(KA, sak, 0);
        p[16..24].fill(0);
        p[17] = if unreg { 0x02 } else { 0 };
        p[18..20].copy_from_slice(&rtpi.to_be_bytes());
        let mut t = Vec::new();
        dest.encode(&mut t);
        p[20..24].copy_from_slice(&u32::try_from(t.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&t);
        lu.run(&a(), &prout_cdb(7, 0, u32::try_from(p.len()).unwrap()), &p)
    };
    let mut lu = setup(Setup::Holder, PrType::ExclusiveAccess);
    let st = ram(&mut lu, 0, &iqn(3), 1, false).status;
    assert_eq!(
        st,
        Status::CheckCondition(SenseInfo::invalid_param_field(8, None))
    );
    let st = ram(&mut lu, KN, &iqn(3), 9, false).status;
    assert_eq!(
        st,
        Status::CheckCondition(SenseInfo::invalid_param_field(18, None))
    );
    let st = ram(&mut lu, KN, &iqn(0), 1, false).status;
    assert_eq!(
        st,
        Status::CheckCondition(SenseInfo::invalid_param_field(24, None))
    );
    // Moving to an already registered nexus replaces its key; UNREG drops A.
    let o = ram(&mut lu, KN, &iqn(2), 2, true);
    assert_eq!(o.status, Status::Good);
    assert_eq!(lu.keys(&b()).1, vec![KB, KN]);
    assert_eq!(lu.resv(&b()), Some((KN, 3)));
}

#[test]
fn aptpl_follows_the_last_register() {
    let mut lu = Lu::default();
    let o = lu.run(&a(), &prout_cdb(6, 0, 24), &params(0, KA, APTPL));
    assert!(o.aptpl_changed && lu.state.aptpl);
    let o = lu.run(&b(), &prout_cdb(6, 0, 24), &params(0, KB, APTPL));
    assert!(!o.aptpl_changed && lu.state.aptpl);
    // Ignored for RESERVE.
    let o = lu.run(&a(), &prout_cdb(1, 1, 24), &params(KA, 0, 0));
    assert!(!o.aptpl_changed && lu.state.aptpl);
    let o = lu.run(&b(), &prout_cdb(0, 0, 24), &params(KB, KN, 0));
    assert!(o.aptpl_changed && !lu.state.aptpl);
    // Power on without APTPL forgets everything.
    assert_eq!(lu.state.power_on().registrations.len(), 0);
}

#[test]
fn all_tg_pt_registration_changes_as_one() {
    let mut lu = Lu::default();
    lu.out(&a(), 6, 0, 0, KA, ALL_TG_PT);
    assert_eq!(lu.keys(&a()).1, vec![KA, KA]);
    lu.out(&nx(0, 2), 0, 0, KA, KN, 0);
    assert_eq!(lu.keys(&a()).1, vec![KN, KN]);
    lu.out(&a(), 0, 0, KN, 0, 0);
    assert_eq!(lu.keys(&a()), (3, vec![]));
}
