//! The libiscsi iscsi-test-cu PR and RESERVE6 scenarios, replayed against
//! the engine with two initiators (sd = init0 port 1, sd2 = init1 port 1).

use super::*;

fn sd() -> Nexus {
    nx(0, 1)
}
fn sd2() -> Nexus {
    nx(1, 1)
}
const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
const MODESENSE6: [u8; 6] = [0x1a, 0, 0x3f, 0, 255, 0];

#[test]
fn prin_read_keys_truncate() {
    let mut lu = Lu::default();
    lu.register(&sd(), KA);
    let d = lu.run(&sd(), &prin_cdb(0, 8), &[]).data_in;
    assert_eq!(d.len(), 8);
    assert_ne!(&d[4..8], &[0, 0, 0, 0]);
}

#[test]
fn prin_report_caps_each_type() {
    let mut lu = Lu::default();
    lu.register(&sd(), KA);
    for kind in PrType::ALL {
        lu.reserve(&sd(), KA, kind.code());
        let key = if kind.all_registrants() { 0 } else { KA };
        assert_eq!(lu.resv(&sd()), Some((key, kind.code())));
        assert_eq!(lu.out(&sd(), 2, kind.code(), KA, 0, 0), Status::Good);
        assert_eq!(lu.resv(&sd()), None);
    }
    assert_eq!(lu.out(&sd(), 0, 0, KA, 0, 0), Status::Good);
}

#[test]
fn prout_reserve_ownership() {
    for kind in PrType::ALL {
        let mut lu = Lu::default();
        lu.register(&sd(), KA);
        lu.register(&sd2(), KB);
        lu.reserve(&sd(), KA, kind.code());
        assert_eq!(lu.out(&sd(), 0, 0, KA, 0, 0), Status::Good);
        if kind.all_registrants() {
            assert_eq!(lu.resv(&sd()), Some((0, kind.code())));
            assert_eq!(lu.out(&sd2(), 2, kind.code(), KB, 0, 0), Status::Good);
        } else {
            assert_eq!(lu.resv(&sd()), None);
        }
        assert_eq!(lu.out(&sd2(), 0, 0, KB, 0, 0), Status::Good);
        assert!(lu.state.registrations.is_empty());
    }
}

#[test]
fn prout_preempt_rm_reg() {
    let mut lu = Lu::default();
    lu.register(&sd(), KA);
    assert_eq!(lu.out(&sd(), 3, 0, KA, 0, 0), Status::Good);
    lu.register(&sd(), KA);
    lu.register(&sd2(), KB);
    let (generation, keys) = lu.keys(&sd());
    assert_eq!(keys.len(), 2);
    assert_eq!(lu.out(&sd2(), 4, 3, KB, KA, 0), Status::Good);
    assert_eq!(lu.uas.take(&sd()), Some(Ua::RegistrationsPreempted));
    assert_eq!(lu.uas.take(&sd()), None);
    assert_eq!(lu.keys(&sd()), (generation + 1, vec![KB]));
}

#[test]
fn reserve6_2initiators() {
    let mut lu = Lu::default();
    assert_eq!(lu.run(&sd(), &RESERVE6, &[]).status, Status::Good);
    assert_eq!(lu.run(&sd(), &RESERVE6, &[]).status, Status::Good);
    assert_eq!(
        lu.run(&sd2(), &RESERVE6, &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(lu.run(&sd2(), &RELEASE6, &[]).status, Status::Good);
    assert!(check_access(&lu.state, &sd(), &MODESENSE6) == Access::Allowed);
    assert!(check_access(&lu.state, &sd2(), &MODESENSE6) == Access::Conflict);
    assert_eq!(
        lu.run(&sd2(), &RESERVE6, &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(lu.run(&sd(), &RELEASE6, &[]).status, Status::Good);
    assert_eq!(lu.run(&sd2(), &RESERVE6, &[]).status, Status::Good);
    assert_eq!(lu.run(&sd2(), &RELEASE6, &[]).status, Status::Good);
    assert_eq!(lu.state, PrState::default());
}

#[test]
fn reserve6_logout_and_lun_reset() {
    let mut lu = Lu::default();
    lu.run(&sd(), &RESERVE6, &[]);
    assert_eq!(
        lu.run(&sd2(), &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
            .status,
        Status::ReservationConflict
    );
    assert_eq!(nexus_lost(&lu.state, &sd2()), None);
    lu.state = nexus_lost(&lu.state, &sd()).unwrap();
    assert_eq!(lu.run(&sd2(), &RESERVE6, &[]).status, Status::Good);
    lu.state = lu_reset(&lu.state).unwrap();
    assert_eq!(lu_reset(&lu.state), None);
    assert_eq!(lu.run(&sd(), &RESERVE6, &[]).status, Status::Good);
}

#[test]
fn spc2_meets_persistent_reservations() {
    // Registrations exist: RESERVE/RELEASE from an unregistered nexus, or
    // from a registrant without a matching PR, conflict (SPC-2 5.5.1).
    let mut lu = Lu::default();
    lu.register(&sd(), KA);
    assert_eq!(
        lu.run(&sd2(), &RESERVE6, &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(
        lu.run(&sd2(), &RELEASE6, &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(
        lu.run(&sd(), &RESERVE6, &[]).status,
        Status::ReservationConflict
    );
    // CRH: the PR holder's RESERVE/RELEASE are GOOD no-ops.
    lu.reserve(&sd(), KA, 1);
    let before = lu.state.clone();
    for cdb in [RESERVE6, RELEASE6] {
        let o = lu.run(&sd(), &cdb, &[]);
        assert_eq!((o.status, o.new_state), (Status::Good, None));
    }
    // A registrant under a registrants-only reservation: also GOOD no-op.
    lu.register(&sd2(), KB);
    assert_eq!(
        lu.run(&sd2(), &RESERVE6, &[]).status,
        Status::ReservationConflict
    );
    assert_eq!(lu.out(&sd(), 4, 5, KA, KA, 0), Status::Good);
    assert_eq!(lu.run(&sd2(), &RESERVE6, &[]).status, Status::Good);
    assert_eq!(lu.state.spc2_holder, None);
    let _ = before;
    // Third-party RESERVE(10) is not supported.
    let o = lu.run(&sd(), &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(
        o.status,
        Status::CheckCondition(SenseInfo::invalid_cdb_field(1, Some(4)))
    );
}

#[test]
fn ua_queue_delivers_to_the_right_nexus_once() {
    let mut lu = Lu::default();
    let third = nx(2, 2);
    lu.register(&sd(), KA);
    lu.register(&sd2(), KB);
    lu.register(&third, KC);
    lu.reserve(&sd(), KA, 6);
    assert_eq!(lu.out(&sd(), 2, 6, KA, 0, 0), Status::Good);
    assert_eq!(lu.uas.take(&sd()), None);
    assert_eq!(lu.uas.take(&sd2()), Some(Ua::ReservationsReleased));
    assert_eq!(lu.uas.take(&sd2()), None);
    assert!(lu.uas.has_pending(&third));
    assert_eq!(lu.out(&sd2(), 3, 0, KB, 0, 0), Status::Good);
    assert_eq!(lu.uas.take(&third), Some(Ua::ReservationsReleased));
    assert_eq!(lu.uas.take(&third), Some(Ua::ReservationsPreempted));
    assert_eq!(lu.uas.take(&sd()), Some(Ua::ReservationsPreempted));
    assert_eq!(Ua::ReservationsPreempted.sense().asc, 0x2a);
}
