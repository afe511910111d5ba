//! Property tests: `execute` never panics and keeps its contract on any
//! CDB, any parameter list and any split of the data buffers.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use proptest::prelude::*;

use super::sense::status;
use super::*;
use crate::backing::MemBacking;

fn lu(bs: u32, lbp: bool, wce: bool) -> Lu {
    let mem = Arc::new(MemBacking::new(64 * 4096, 4096));
    let mut cfg = LuConfig::new(bs, super::tests::identity());
    cfg.thin_provisioning = lbp;
    cfg.write_cache = wce;
    cfg.max_unmap_descriptors = 8;
    cfg.max_compare_write_len = 8;
    Lu::new(cfg, mem).unwrap()
}

/// Cut `buf` at the given points (taken modulo its length).
fn split<'a>(mut buf: &'a mut [u8], cuts: &[usize]) -> Vec<IoSliceMut<'a>> {
    let mut out = Vec::new();
    for &c in cuts {
        let c = if buf.is_empty() {
            0
        } else {
            c % (buf.len() + 1)
        };
        let (a, b) = buf.split_at_mut(c);
        out.push(IoSliceMut::new(a));
        buf = b;
    }
    out.push(IoSliceMut::new(buf));
    out
}

fn split_ro<'a>(mut buf: &'a [u8], cuts: &[usize]) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    for &c in cuts {
        let c = if buf.is_empty() {
            0
        } else {
            c % (buf.len() + 1)
        };
        let (a, b) = buf.split_at(c);
        out.push(IoSlice::new(a));
        buf = b;
    }
    out.push(IoSlice::new(buf));
    out
}

/// Run one command and check the response contract.
pub(super) fn check_contract(
    lu: &Lu,
    cdb: &[u8],
    out: &[u8],
    out_cuts: &[usize],
    din_len: usize,
    in_cuts: &[usize],
) {
    let mut din = vec![0u8; din_len];
    let iov_out = split_ro(out, out_cuts);
    let mut iov_in = split(&mut din, in_cuts);
    let r = lu.execute(&TargetPort::default(), cdb, &iov_out, &mut iov_in);
    assert!(r.data_in_len <= din_len);
    assert!(matches!(
        r.status,
        status::GOOD | status::CHECK_CONDITION | status::BUSY
    ));
    assert_eq!(r.sense.is_some(), r.status == status::CHECK_CONDITION);
    if let Some(s) = r.sense {
        assert_eq!(
            s.as_bytes()[0] & 0x7f,
            if lu.descriptor_sense() { 0x72 } else { 0x70 }
        );
        let _ = (s.code(), s.information(), s.field_pointer());
        assert_eq!(r.data_in_len, 0);
    }
}

/// CDBs that mostly start with a known opcode and have the right length.
fn cdb_strategy() -> impl Strategy<Value = Vec<u8>> {
    let known = (
        0..opcode::OPCODES.len(),
        proptest::collection::vec(any::<u8>(), 16),
        0u8..4,
    )
        .prop_map(|(i, rest, sparse)| {
            let o = &opcode::OPCODES[i];
            let mut c = rest;
            c.truncate(o.cdb_len());
            c[0] = o.opcode;
            if let Some(sa) = o.service_action {
                c[1] = (c[1] & 0xe0) | sa;
            }
            // Often clear the high bytes so lengths and LBAs are small
            // enough to reach the I/O paths.
            if sparse > 0 {
                for b in c.iter_mut().skip(2) {
                    *b &= 0x07;
                }
                if sparse > 1 {
                    c[1] &= 0x1f;
                    let last = c.len() - 1;
                    c[last] = 0;
                }
            }
            c
        });
    prop_oneof![
        3 => known,
        1 => proptest::collection::vec(any::<u8>(), 0..24),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn execute_never_panics(
        cdb in cdb_strategy(),
        out in proptest::collection::vec(any::<u8>(), 0..9000),
        out_cuts in proptest::collection::vec(any::<usize>(), 0..5),
        din_len in 0usize..40000,
        in_cuts in proptest::collection::vec(any::<usize>(), 0..5),
        bs in prop_oneof![Just(512u32), Just(4096u32)],
        lbp in any::<bool>(),
        wce in any::<bool>(),
    ) {
        let lu = lu(bs, lbp, wce);
        check_contract(&lu, &cdb, &out, &out_cuts, din_len, &in_cuts);
        // Again after a random MODE SELECT may have flipped D_SENSE/SWP.
        check_contract(&lu, &cdb, &out, &out_cuts, din_len, &in_cuts);
    }

    #[test]
    fn parameter_lists_never_panic(
        which in 0u8..5,
        plen in 0usize..600,
        head in proptest::collection::vec(any::<u8>(), 0..40),
        body in proptest::collection::vec(any::<u8>(), 0..600),
        short in any::<bool>(),
        out_cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let lu = lu(512, true, true);
        // A plausible header followed by noise, so parsing gets deep.
        let mut list: Vec<u8> = match which {
            0 | 1 => {
                let mut l = lu_mode_pages(&lu, which == 1);
                for (i, b) in head.iter().enumerate() {
                    let at = i * 7 % l.len().max(1);
                    if let Some(x) = l.get_mut(at) { *x ^= b & 0x0f; }
                }
                l
            }
            2 => {
                let mut l = vec![0u8; 8];
                l.extend(&body);
                let n = u16::try_from(body.len() / 16 * 16).unwrap_or(0);
                l[0..2].copy_from_slice(&(n + 6).to_be_bytes());
                l[2..4].copy_from_slice(&n.to_be_bytes());
                let n = l.len(); for (i, b) in head.iter().enumerate() { l[i % n] ^= b & 0x03; }
                l
            }
            _ => {
                let mut l = head.clone();
                l.extend(&body);
                l
            }
        };
        let plen = if which < 3 { list.len() } else { plen };
        if short { list.truncate(list.len() / 2); }
        let cdb = match which {
            0 => vec![0x15, 0x10, 0, 0, u8::try_from(plen).unwrap_or(u8::MAX), 0],
            1 => { let mut c = vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]; c[7..9].copy_from_slice(&u16::try_from(plen).unwrap_or(u16::MAX).to_be_bytes()); c }
            2 => { let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0]; c[7..9].copy_from_slice(&u16::try_from(plen).unwrap_or(u16::MAX).to_be_bytes()); c }
            3 => { let mut c = vec![0u8; 16]; c[0] = 0x89; c[13] = u8::try_from(plen % 9).unwrap_or(0); c }
            _ => { let mut c = vec![0u8; 16]; c[0] = 0x8f; c[1] = 0x02 | if plen % 2 == 0 { 0x04 } else { 0 }; c[13] = u8::try_from(plen % 5).unwrap_or(0); c }
        };
        check_contract(&lu, &cdb, &list, &out_cuts, 0, &[]);
    }
}

/// The current mode pages as a MODE SELECT parameter list.
fn lu_mode_pages(lu: &Lu, long: bool) -> Vec<u8> {
    let mut d = vec![0u8; 512];
    let cdb: Vec<u8> = if long {
        vec![0x5a, 0, 0x3f, 0, 0, 0, 0, 2, 0, 0]
    } else {
        vec![0x1a, 0, 0x3f, 0, 255, 0]
    };
    let r = lu.execute(
        &TargetPort::default(),
        &cdb,
        &[],
        &mut [IoSliceMut::new(&mut d)],
    );
    d.truncate(r.data_in_len);
    if long {
        d[0] = 0;
        d[1] = 0;
    } else {
        d[0] = 0;
    }
    d
}
