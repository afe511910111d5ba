//! check_access against SPC-4 table 66 / SBC-3 table 13, and the libiscsi
//! access matrix (test_prout_reserve_access.c).

use super::*;

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];

fn lu(kind: PrType, holder: &Nexus, other: Option<&Nexus>) -> Lu {
    let mut lu = Lu::default();
    lu.register(holder, KA);
    if let Some(o) = other {
        lu.register(o, KB);
    }
    lu.reserve(holder, KA, kind.code());
    lu
}

fn ok(s: &PrState, n: &Nexus, cdb: &[u8]) -> bool {
    check_access(s, n, cdb) == Access::Allowed
}

#[test]
fn libiscsi_access_matrix() {
    // (type, registered read, registered write, unregistered read,
    // unregistered write) as libiscsi expects.
    let matrix = [
        (PrType::ExclusiveAccess, false, false, false, false),
        (PrType::WriteExclusive, true, false, true, false),
        (
            PrType::ExclusiveAccessRegistrantsOnly,
            true,
            true,
            false,
            false,
        ),
        (
            PrType::WriteExclusiveRegistrantsOnly,
            true,
            true,
            true,
            false,
        ),
        (
            PrType::ExclusiveAccessAllRegistrants,
            true,
            true,
            false,
            false,
        ),
        (
            PrType::WriteExclusiveAllRegistrants,
            true,
            true,
            true,
            false,
        ),
    ];
    let (h, o) = (nx(0, 1), nx(1, 2));
    for (kind, rr, rw, ur, uw) in matrix {
        let mut l = lu(kind, &h, Some(&o));
        assert!(ok(&l.state, &h, &READ10) && ok(&l.state, &h, &WRITE10));
        assert_eq!(ok(&l.state, &o, &READ10), rr, "{kind:?}");
        assert_eq!(ok(&l.state, &o, &WRITE10), rw, "{kind:?}");
        assert_eq!(l.out(&o, 0, 0, KB, 0, 0), Status::Good);
        assert_eq!(ok(&l.state, &o, &READ10), ur, "{kind:?}");
        assert_eq!(ok(&l.state, &o, &WRITE10), uw, "{kind:?}");
    }
}

#[test]
fn spc_table_rows() {
    use AccessClass::*;
    let rows: &[(&[u8], AccessClass)] = &[
        (&[0x00, 0, 0, 0, 0, 0], Always),    // TEST UNIT READY
        (&[0x12, 0, 0, 0, 36, 0], Always),   // INQUIRY
        (&[0x03, 0, 0, 0, 18, 0], Always),   // REQUEST SENSE
        (&[0xa0; 12], Always),               // REPORT LUNS
        (&[0x4d; 10], Always),               // LOG SENSE
        (&[0x25; 10], Always),               // READ CAPACITY (10)
        (&[0x9e, 0x10], Always),             // READ CAPACITY (16)
        (&[0x9e, 0x12], Read),               // GET LBA STATUS
        (&[0xa3, 0x0a], Always),             // REPORT TARGET PORT GROUPS
        (&[0xa3, 0x0c], Read),               // REPORT SUPPORTED OPCODES
        (&[0x1a, 0, 0x3f, 0, 255, 0], Read), // MODE SENSE (6)
        (&[0x15, 0x10, 0, 0, 0, 0], Write),  // MODE SELECT (6)
        (&[0x5e, 0], Always),                // PR IN
        (&[0x5f, 0x00], Always),             // PR OUT REGISTER
        (&[0x5f, 0x06], Always),             // REGISTER AND IGNORE
        (&[0x5f, 0x01], Registered),         // RESERVE
        (&[0x5f, 0x03], Registered),         // CLEAR
        (&[0x5f, 0x07], HolderOnly),         // REGISTER AND MOVE
        (&[0x1b, 0, 0, 0, 0x01, 0], Always), // START STOP UNIT START=1
        (&[0x1b, 0, 0, 0, 0x00, 0], Write),  // START STOP UNIT STOP
        (&[0x1b, 0, 0, 0, 0x11, 0], Write),  // with POWER CONDITION
        (&[0x1e, 0, 0, 0, 0, 0], Always),    // ALLOW MEDIUM REMOVAL
        (&[0x1e, 0, 0, 0, 1, 0], Write),     // PREVENT
        (&[0x35; 10], Write),                // SYNCHRONIZE CACHE
        (&[0x42; 10], Write),                // UNMAP
        (&[0x89; 16], Write),                // COMPARE AND WRITE
        (&[0x93; 16], Write),                // WRITE SAME (16)
        (&[0x88; 16], Read),                 // READ (16)
        (&[0x2f; 10], Read),                 // VERIFY (10)
        (&[0xc0; 10], Write),                // vendor specific
        (&[], Always),
    ];
    for (cdb, class) in rows {
        assert_eq!(classify(cdb), *class, "{cdb:02x?}");
    }
}

#[test]
fn read_like_rows_follow_the_columns() {
    // MODE SENSE: allowed under Write Exclusive from anyone, under
    // Exclusive Access only from registrants of RO/AR types.
    let ms = [0x1a, 0, 0x3f, 0, 255, 0];
    let (h, r, u) = (nx(0, 1), nx(1, 1), nx(2, 2));
    for kind in PrType::ALL {
        let l = lu(kind, &h, Some(&r));
        assert!(ok(&l.state, &h, &ms));
        assert_eq!(
            ok(&l.state, &r, &ms),
            kind.write_exclusive() || kind.registrants_have_access()
        );
        assert_eq!(ok(&l.state, &u, &ms), kind.write_exclusive());
        // PR OUT RESERVE: registered nexuses get through to the engine.
        assert!(ok(&l.state, &r, &[0x5f, 0x01]));
        assert!(!ok(&l.state, &u, &[0x5f, 0x01]));
        assert!(ok(&l.state, &u, &[0x5f, 0x00]));
        assert!(ok(&l.state, &u, &[0x12, 0, 0, 0, 36, 0]));
    }
}

#[test]
fn spc2_reservation_allows_only_the_spc2_list() {
    let mut l = Lu::default();
    let (h, o) = (nx(0, 1), nx(1, 2));
    assert_eq!(l.run(&h, &[0x16, 0, 0, 0, 0, 0], &[]).status, Status::Good);
    for cdb in [
        &READ10[..],
        &WRITE10[..],
        &[0x00; 6],
        &[0x1a, 0, 0x3f, 0, 255, 0],
    ] {
        assert!(ok(&l.state, &h, cdb));
        assert!(!ok(&l.state, &o, cdb));
    }
    for cdb in [
        &[0x12, 0, 0, 0, 36, 0][..],
        &[0x03; 6],
        &[0xa0; 12],
        &[0x17; 6],
    ] {
        assert!(ok(&l.state, &o, cdb));
    }
    // SPC-2 5.5.1: PR IN and PR OUT conflict for everyone, even the holder.
    assert!(!ok(&l.state, &h, &prin_cdb(0, 8)));
    assert!(!ok(&l.state, &h, &prout_cdb(6, 0, 24)));
}

#[test]
fn hundred_registrants_is_cheap() {
    let mut l = Lu::default();
    for i in 0..100u8 {
        l.register(&nx(i, 1 + u16::from(i % 2)), u64::from(i) + 1);
    }
    l.reserve(&nx(0, 1), 1, 5);
    let last = nx(99, 2);
    let t = std::time::Instant::now();
    for _ in 0..10_000 {
        assert!(ok(&l.state, &last, &WRITE10));
    }
    // Generous bound for debug builds on a shared machine: this catches
    // an accidental quadratic, not nanoseconds.
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}
