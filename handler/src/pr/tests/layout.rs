//! PR IN data layouts, byte for byte against SPC-4 6.15 (and what
//! libiscsi's scsi-lowlevel.c unmarshalls).

use super::*;

fn lu_with_two() -> Lu {
    let mut lu = Lu::default();
    lu.register(&nx(0, 1), KA);
    lu.register(&nx(1, 2), KB);
    lu.reserve(&nx(0, 1), KA, 5);
    lu
}

#[test]
fn read_keys_layout() {
    let mut lu = lu_with_two();
    let d = lu.run(&nx(0, 1), &prin_cdb(0, 100), &[]).data_in;
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 16];
    want.extend_from_slice(&KA.to_be_bytes());
    want.extend_from_slice(&KB.to_be_bytes());
    assert_eq!(d, want);
}

#[test]
fn read_keys_truncation_keeps_additional_length() {
    let mut lu = lu_with_two();
    for alloc in [0u16, 1, 7, 8, 12, 16, 23, 24, 25] {
        let d = lu.run(&nx(0, 1), &prin_cdb(0, alloc), &[]).data_in;
        assert_eq!(d.len(), usize::from(alloc).min(24), "alloc {alloc}");
        if alloc >= 8 {
            assert_eq!(&d[4..8], &[0, 0, 0, 16]);
        }
    }
}

#[test]
fn read_reservation_layout() {
    let mut lu = lu_with_two();
    let d = lu.run(&nx(1, 2), &prin_cdb(1, 100), &[]).data_in;
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 16];
    want.extend_from_slice(&KA.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
    assert_eq!(d, want);
    // No reservation: header only.
    let lu = Lu::default();
    assert_eq!(prin::read_reservation(&lu.state), vec![0; 8]);
}

#[test]
fn read_reservation_all_registrants_reports_key_zero() {
    let mut lu = Lu::default();
    lu.register(&nx(0, 1), KA);
    lu.reserve(&nx(0, 1), KA, 8);
    assert_eq!(lu.resv(&nx(0, 1)), Some((0, 8)));
}

#[test]
fn report_capabilities_layout() {
    let mut lu = Lu::default();
    let d = lu.run(&nx(0, 1), &prin_cdb(2, 100), &[]).data_in;
    assert_eq!(d, vec![0, 8, 0x1d, 0x90, 0xea, 0x01, 0, 0]);
    lu.out(&nx(0, 1), 6, 0, 0, KA, APTPL);
    let d = lu.run(&nx(0, 1), &prin_cdb(2, 4), &[]).data_in;
    assert_eq!(d, vec![0, 8, 0x1d, 0x91]);
}

#[test]
fn read_full_status_layout() {
    let mut lu = lu_with_two();
    let d = lu.run(&nx(0, 1), &prin_cdb(3, 4096), &[]).data_in;
    let tid_len = iqn(0).encoded_len();
    assert_eq!(tid_len, 36); // "iqn.2003-01.org.example:init0\0" padded
    let desc = 24 + tid_len;
    assert_eq!(
        &d[0..8],
        &[0, 0, 0, 2, 0, 0, 0, u8::try_from(2 * desc).unwrap()]
    );
    // First descriptor: holder, WERO, RTPI 1.
    let a = &d[8..8 + desc];
    assert_eq!(&a[0..8], &KA.to_be_bytes());
    assert_eq!(&a[8..12], &[0; 4]);
    assert_eq!(a[12], 0x01); // R_HOLDER
    assert_eq!(a[13], 0x05);
    assert_eq!(&a[14..18], &[0; 4]);
    assert_eq!(&a[18..20], &[0, 1]);
    assert_eq!(&a[20..24], &[0, 0, 0, 36]);
    assert_eq!(a[24], 0x05);
    assert_eq!(&a[26..28], &[0, 32]);
    assert_eq!(&a[28..58], b"iqn.2003-01.org.example:init0\0");
    // Second: not holder, RTPI 2.
    let b = &d[8 + desc..];
    assert_eq!(&b[0..8], &KB.to_be_bytes());
    assert_eq!(&b[12..14], &[0, 0]);
    assert_eq!(&b[18..20], &[0, 2]);
    // Truncation keeps ADDITIONAL LENGTH.
    let t = lu.run(&nx(0, 1), &prin_cdb(3, 30), &[]).data_in;
    assert_eq!(t, d[..30].to_vec());
}

#[test]
fn read_full_status_all_tg_pt_and_all_registrants() {
    let mut lu = Lu::default();
    lu.out(&nx(0, 1), 0, 0, 0, KA, ALL_TG_PT);
    lu.reserve(&nx(0, 2), KA, 7);
    let d = lu.run(&nx(0, 1), &prin_cdb(3, 4096), &[]).data_in;
    let desc = 24 + iqn(0).encoded_len();
    assert_eq!(d.len(), 8 + 2 * desc);
    for (i, rtpi) in [(0usize, 1u8), (1, 2)] {
        let x = &d[8 + i * desc..];
        assert_eq!(x[12], 0x03, "ALL_TG_PT | R_HOLDER");
        assert_eq!(x[13], 0x07);
        assert_eq!(x[19], rtpi);
    }
}

#[test]
fn prin_invalid_service_actions() {
    let mut lu = Lu::default();
    for sa in 4..0x20 {
        let o = lu.run(&nx(0, 1), &prin_cdb(sa, 100), &[]);
        assert_eq!(
            o.status,
            Status::CheckCondition(SenseInfo::invalid_cdb_field(1, Some(4)))
        );
    }
}
