//! EXTENDED COPY and RECEIVE COPY RESULTS over the in-memory backing.

// Test code builds CDBs and lists from small literals.
#![allow(clippy::cast_possible_truncation)]

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{
    MAX_CSCD_DESCRIPTORS, MAX_DESCRIPTOR_LIST_LEN, MAX_SEGMENT_BYTES, MAX_SEGMENT_DESCRIPTORS,
    MAX_TRACKED_COPIES,
};
use crate::backing::{Backing, FaultOp, MemBacking};
use crate::scsi::lock::LockMode;
use crate::scsi::opcode::{self, Direction};
use crate::scsi::sense::{self, FieldPointer, Sense, SenseCode, status};
use crate::scsi::{Blocks, Lba, Lu, LuConfig, Response, TargetPort};

const BS: usize = 512;
/// 4 MiB: copies span several 1 MiB chunks.
const BLOCKS: usize = 8192;

struct T {
    lu: Lu,
    mem: Arc<MemBacking>,
    bs: usize,
}

fn setup_with(bs: usize, blocks: usize, f: impl FnOnce(&mut LuConfig)) -> T {
    let mem = Arc::new(MemBacking::new(bs * blocks, bs));
    let mut cfg = LuConfig::new(bs as u32, crate::scsi::tests::identity());
    f(&mut cfg);
    let lu = Lu::new(cfg, mem.clone()).unwrap();
    // Recognisable content everywhere, so a copy from or to the wrong
    // place shows.
    let fill: Vec<u8> = (0..bs * blocks)
        .map(|i| ((i / bs) as u8).wrapping_mul(7) ^ (i as u8))
        .collect();
    mem.write_vectored_at(&[IoSlice::new(&fill)], 0, false)
        .unwrap();
    T { lu, mem, bs }
}

fn setup() -> T {
    setup_with(BS, BLOCKS, |_| {})
}

impl T {
    fn run_in(&self, cdb: &[u8], out: &[u8], din_len: usize) -> (Response, Vec<u8>) {
        let mut din = vec![0xeeu8; din_len];
        // Odd splits of both lists.
        let (o1, o2) = out.split_at(out.len().min(7));
        let iov_out = [IoSlice::new(o1), IoSlice::new(o2)];
        let (a, b) = din.split_at_mut(din_len.min(5));
        let mut iov_in = [IoSliceMut::new(a), IoSliceMut::new(b)];
        let r = self
            .lu
            .execute(&TargetPort::default(), cdb, &iov_out, &mut iov_in);
        assert!(r.data_in_len <= din_len);
        assert_eq!(r.sense.is_some(), r.status == status::CHECK_CONDITION);
        din.truncate(r.data_in_len);
        (r, din)
    }

    fn run(&self, cdb: &[u8], out: &[u8]) -> (Response, Vec<u8>) {
        self.run_in(cdb, out, 4096)
    }

    fn ok(&self, cdb: &[u8], out: &[u8]) -> Vec<u8> {
        let (r, d) = self.run(cdb, out);
        assert_eq!(r.status, status::GOOD, "{cdb:02x?}: {r:?}");
        d
    }

    fn check(&self, cdb: &[u8], out: &[u8], code: SenseCode) -> Sense {
        let (r, _) = self.run(cdb, out);
        assert_eq!(r.status, status::CHECK_CONDITION, "{cdb:02x?}");
        let s = r.sense.unwrap();
        assert_eq!(s.code(), code, "{cdb:02x?}: {s:?}");
        s
    }

    fn xcopy(&self, list: &[u8]) {
        self.ok(&xcopy_cdb(list.len()), list);
    }

    fn refused(&self, list: &[u8], code: SenseCode, at: Option<FieldPointer>) {
        let before = self.image();
        let s = self.check(&xcopy_cdb(list.len()), list, code);
        assert_eq!(s.field_pointer(), at, "{list:02x?}");
        assert!(self.image() == before, "a refused copy changed the medium");
    }

    fn image(&self) -> Vec<u8> {
        self.mem.snapshot(0, self.mem.len() as usize)
    }

    fn cscd(&self) -> Vec<u8> {
        cscd_for(&naa(), self.bs as u32)
    }
}

fn naa() -> Vec<u8> {
    crate::scsi::tests::identity().naa.as_bytes().to_vec()
}

/// An identification CSCD descriptor: binary NAA designator, LU
/// association, block device of `bs` bytes.
fn cscd_for(designator: &[u8], bs: u32) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xe4;
    d[4] = 0x01;
    d[5] = 0x03;
    d[7] = designator.len() as u8;
    d[8..8 + designator.len()].copy_from_slice(designator);
    d[29..32].copy_from_slice(&bs.to_be_bytes()[1..]);
    d
}

/// A block to block segment descriptor.
fn seg(src_idx: u16, dst_idx: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
    d[4..6].copy_from_slice(&src_idx.to_be_bytes());
    d[6..8].copy_from_slice(&dst_idx.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src.to_be_bytes());
    d[20..28].copy_from_slice(&dst.to_be_bytes());
    d
}

/// A parameter list: header with `list_id` and `usage`, then the lists.
fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
    let c: Vec<u8> = cscds.concat();
    let s: Vec<u8> = segs.concat();
    let mut l = vec![0u8; 16];
    l[0] = list_id;
    l[1] = usage << 3;
    l[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
    l[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    l.extend(c);
    l.extend(s);
    l
}

/// LIST ID USAGE 11b, no list identifier: no status kept.
fn plain(cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
    list(0, 3, cscds, segs)
}

fn xcopy_cdb(plen: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(plen as u32).to_be_bytes());
    c
}

fn rcr(sa: u8, list_id: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// `model` after copying `n` blocks from `src` to `dst`.
fn model_copy(model: &mut [u8], bs: usize, src: usize, dst: usize, n: usize) {
    model.copy_within(src * bs..(src + n) * bs, dst * bs);
}

const fn param(byte: u16) -> Option<FieldPointer> {
    Some(FieldPointer::param_byte(byte))
}

#[test]
fn copies_within_the_lu() {
    let t = setup();
    let mut model = t.image();
    t.xcopy(&plain(&[t.cscd()], &[seg(0, 0, 100, 10, 5000)]));
    model_copy(&mut model, BS, 10, 5000, 100);
    assert!(t.image() == model);

    // Two CSCDs naming this LU, several segments, applied in order: the
    // second reads what the first wrote.
    t.xcopy(&plain(
        &[t.cscd(), t.cscd()],
        &[
            seg(0, 1, 8, 0, 100),
            seg(1, 0, 8, 100, 200),
            seg(1, 1, 0, 300, 400),
            seg(0, 1, 1, 8191, 0),
        ],
    ));
    model_copy(&mut model, BS, 0, 100, 8);
    model_copy(&mut model, BS, 100, 200, 8);
    model_copy(&mut model, BS, 8191, 0, 1);
    assert!(t.image() == model);
}

#[test]
fn copies_span_chunks_and_overlap_like_memmove() {
    for (src, dst, n) in [
        (0usize, 1000usize, 3000usize), // destination inside the source
        (1000, 0, 3000),                // source inside the destination
        (0, 3000, 3000),                // adjacent
        (500, 500, 3000),               // onto itself
        (7, 2055, 4096),                // exactly two chunks, overlapping
        (4000, 4001, 4191),             // one block apart, to the end
    ] {
        let t = setup();
        let mut model = t.image();
        t.xcopy(&plain(
            &[t.cscd()],
            &[seg(0, 0, n as u16, src as u64, dst as u64)],
        ));
        model_copy(&mut model, BS, src, dst, n);
        assert!(t.image() == model, "{src} -> {dst} x {n}");
    }
}

#[test]
fn copy_follows_the_write_cache() {
    let t = setup_with(BS, 64, |c| c.write_cache = false);
    let before = t.mem.fua_write_count();
    t.xcopy(&plain(&[t.cscd()], &[seg(0, 0, 4, 0, 10)]));
    assert!(t.mem.fua_write_count() > before);
    let t = setup_with(BS, 64, |_| {});
    t.xcopy(&plain(&[t.cscd()], &[seg(0, 0, 4, 0, 10)]));
    assert_eq!(t.mem.fua_write_count(), 0);
}

#[test]
fn empty_and_no_op_lists() {
    let t = setup();
    let before = t.image();
    // No parameter list: GOOD whatever the data-out holds.
    t.ok(&xcopy_cdb(0), &[0xff; 64]);
    // A header alone, and zero-block segments, copy nothing.
    t.xcopy(&plain(&[], &[]));
    t.xcopy(&plain(&[t.cscd()], &[seg(0, 0, 0, 8191, 0)]));
    // Bytes beyond the lists are ignored.
    let mut l = plain(&[t.cscd()], &[]);
    l.extend([0xaa; 10]);
    t.xcopy(&l);
    assert!(t.image() == before);
}

#[test]
fn parameter_list_length_errors() {
    let t = setup();
    let good = plain(&[t.cscd()], &[seg(0, 0, 4, 0, 100)]);
    // Every parameter list length that cuts the header or a descriptor.
    for plen in 1..good.len() {
        let s = t.check(
            &xcopy_cdb(plen),
            &good[..plen],
            sense::PARAMETER_LIST_LENGTH_ERROR,
        );
        assert_eq!(s.field_pointer(), None);
    }
    // The data-out is shorter than the CDB says.
    t.check(
        &xcopy_cdb(good.len()),
        &good[..good.len() - 1],
        sense::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Descriptor lists longer than MAXIMUM DESCRIPTOR LIST LENGTH, whatever
    // the parameter list length.
    let segs: Vec<Vec<u8>> = (0..36).map(|_| seg(0, 0, 1, 0, 1)).collect();
    let l = plain(&[t.cscd()], &segs);
    assert!(l.len() - 16 > MAX_DESCRIPTOR_LIST_LEN);
    t.refused(&l, sense::PARAMETER_LIST_LENGTH_ERROR, None);
    let mut huge = plain(&[], &[]);
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    t.refused(&huge, sense::PARAMETER_LIST_LENGTH_ERROR, None);
}

#[test]
fn parameter_list_field_errors() {
    let t = setup();
    let c = t.cscd();
    let s = seg(0, 0, 4, 0, 100);
    // LIST ID USAGE 01b is reserved; 11b needs list identifier zero.
    let mut l = list(0, 1, std::slice::from_ref(&c), std::slice::from_ref(&s));
    t.refused(
        &l,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
        Some(FieldPointer::param(1, 4)),
    );
    l = list(9, 3, std::slice::from_ref(&c), std::slice::from_ref(&s));
    t.refused(&l, sense::INVALID_FIELD_IN_PARAMETER_LIST, param(0));
    // Inline data is not supported.
    l = plain(std::slice::from_ref(&c), std::slice::from_ref(&s));
    l[15] = 1;
    l.push(0);
    t.refused(&l, sense::INVALID_FIELD_IN_PARAMETER_LIST, param(12));
    // A CSCD list length that cuts a descriptor.
    l = plain(std::slice::from_ref(&c), &[]);
    l[3] = 31;
    l.truncate(16 + 31);
    t.refused(&l, sense::INVALID_FIELD_IN_PARAMETER_LIST, param(2));
    // A designator longer than the descriptor holds.
    let mut long = c.clone();
    long[7] = 21;
    t.refused(
        &plain(&[long], std::slice::from_ref(&s)),
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
        param(16 + 7),
    );
    // A segment descriptor of the wrong length, or cut by the list length.
    let mut bad_len = s.clone();
    bad_len[3] = 0x14;
    t.refused(
        &plain(std::slice::from_ref(&c), &[bad_len]),
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
        param(48 + 2),
    );
    l = plain(std::slice::from_ref(&c), std::slice::from_ref(&s));
    l[11] = 27;
    l.pop();
    t.refused(&l, sense::INVALID_FIELD_IN_PARAMETER_LIST, param(8));
    l[11] = 3;
    l.truncate(48 + 3);
    t.refused(&l, sense::INVALID_FIELD_IN_PARAMETER_LIST, param(8));
    // CSCD IDs above 07FFh are not indexes.
    t.refused(
        &plain(std::slice::from_ref(&c), &[seg(0x0800, 0, 4, 0, 100)]),
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
        param(48 + 4),
    );
    // The CSCD's block length must be this LU's.
    t.refused(
        &plain(&[cscd_for(&naa(), 4096)], std::slice::from_ref(&s)),
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
        param(16 + 29),
    );
}

#[test]
fn descriptor_counts_and_types() {
    let t = setup();
    let c = t.cscd();
    let s = seg(0, 0, 1, 0, 1);
    // Up to the limits is fine.
    t.xcopy(&plain(
        &vec![c.clone(); MAX_CSCD_DESCRIPTORS],
        &vec![s.clone(); MAX_SEGMENT_DESCRIPTORS],
    ));
    t.refused(
        &plain(
            &vec![c.clone(); MAX_CSCD_DESCRIPTORS + 1],
            std::slice::from_ref(&s),
        ),
        sense::TOO_MANY_TARGET_DESCRIPTORS,
        param(2),
    );
    t.refused(
        &plain(
            std::slice::from_ref(&c),
            &vec![s.clone(); MAX_SEGMENT_DESCRIPTORS + 1],
        ),
        sense::TOO_MANY_SEGMENT_DESCRIPTORS,
        param(8),
    );
    // A Fibre Channel N_Port_Name CSCD, and the 64-byte IPv6 one.
    for ty in [0xe0u8, 0xea] {
        let mut fc = c.clone();
        fc[0] = ty;
        t.refused(
            &plain(&[c.clone(), fc], std::slice::from_ref(&s)),
            sense::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
            param(48),
        );
    }
    // Stream to stream (20 bytes), block to block with offsets (32 bytes).
    for (ty, len) in [(0x03u8, 20usize), (0x0a, 32), (0x00, 24)] {
        let mut other = vec![0u8; len];
        other[0] = ty;
        other[3] = (len - 4) as u8;
        t.refused(
            &plain(std::slice::from_ref(&c), &[s.clone(), other]),
            sense::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
            param(48 + 28),
        );
    }
}

#[test]
fn copy_aborts() {
    let t = setup();
    let c = t.cscd();
    let abort = sense::COPY_TARGET_DEVICE_NOT_REACHABLE;
    assert_eq!(abort.key, sense::key::COPY_ABORTED);
    // An index past the CSCD list (libiscsi ValidSegDescr).
    t.refused(
        &plain(std::slice::from_ref(&c), &[seg(0, 1, 4, 0, 100)]),
        abort,
        param(48 + 6),
    );
    t.refused(&plain(&[], &[seg(0, 0, 4, 0, 100)]), abort, param(16 + 4));
    // Another LU's NAA, or this LU by another kind of designator.
    let mut other = naa();
    other[15] ^= 1;
    t.refused(
        &plain(
            &[c.clone(), cscd_for(&other, BS as u32)],
            &[seg(0, 1, 4, 0, 100)],
        ),
        abort,
        param(48 + 4),
    );
    let mut t10 = cscd_for(b"LIO-ORG a1b2c3d4", BS as u32);
    t10[4] = 0x02;
    t10[5] = 0x01;
    t.refused(
        &plain(&[t10], &[seg(0, 0, 4, 0, 100)]),
        abort,
        param(16 + 4),
    );
    let mut port = c.clone();
    port[5] = 0x13; // associated with the target port
    t.refused(
        &plain(&[port], &[seg(0, 0, 4, 0, 100)]),
        abort,
        param(16 + 4),
    );
    let short = cscd_for(&naa()[..8], BS as u32);
    t.refused(
        &plain(&[short], &[seg(0, 0, 4, 0, 100)]),
        abort,
        param(16 + 4),
    );
    // An unreferenced foreign CSCD is fine.
    t.xcopy(&plain(
        &[c.clone(), cscd_for(&other, BS as u32)],
        &[seg(0, 0, 4, 0, 100)],
    ));
    // Not a block device.
    let mut tape = c.clone();
    tape[1] = 0x01;
    t.refused(
        &plain(&[tape], &[seg(0, 0, 4, 0, 100)]),
        sense::INCORRECT_COPY_TARGET_DEVICE_TYPE,
        Some(FieldPointer::param(17, 4)),
    );
    // Ranges past the end (libiscsi ValidSegDescr), and LBA overflow.
    let last = BLOCKS as u64;
    for (src, dst, field) in [
        (last - 3, 0, 48 + 12),
        (0, last - 3, 48 + 20),
        (u64::MAX - 1, 0, 48 + 12),
        (0, u64::MAX, 48 + 20),
    ] {
        t.refused(
            &plain(std::slice::from_ref(&c), &[seg(0, 0, 4, src, dst)]),
            abort,
            param(field),
        );
    }
    // The last segment's fault refuses the whole command: nothing copied.
    t.refused(
        &plain(
            std::slice::from_ref(&c),
            &[seg(0, 0, 4, 0, 100), seg(0, 0, 4, 0, last)],
        ),
        abort,
        param(48 + 28 + 20),
    );
    // LU ID TYPE and NUL are ignored (SPC-4; libiscsi ValidTgtDescr).
    let mut lu_id = c.clone();
    lu_id[1] = 0xe0;
    t.xcopy(&plain(&[lu_id], &[seg(0, 0, 4, 0, 100)]));
}

#[test]
fn segment_length_limit() {
    // 65535 blocks of 512 bytes fit MAX_SEGMENT_BYTES; of 4096 they do
    // not. The length is checked before the range, so a small LU shows it.
    let t = setup_with(4096, 64, |_| {});
    let max = (MAX_SEGMENT_BYTES / 4096) as u16;
    t.refused(
        &plain(&[t.cscd()], &[seg(0, 0, max, 0, 1)]),
        sense::COPY_TARGET_DEVICE_NOT_REACHABLE,
        param(48 + 12),
    );
    t.refused(
        &plain(&[t.cscd()], &[seg(0, 0, max + 1, 0, 1)]),
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
        param(48 + 10),
    );
    let t = setup_with(512, 64, |_| {});
    t.refused(
        &plain(&[t.cscd()], &[seg(0, 0, u16::MAX, 0, 1)]),
        sense::COPY_TARGET_DEVICE_NOT_REACHABLE,
        param(48 + 12),
    );
}

#[test]
fn write_protection() {
    let t = setup_with(BS, 64, |c| c.read_only = true);
    let l = plain(&[t.cscd()], &[seg(0, 0, 4, 0, 10)]);
    t.refused(&l, sense::WRITE_PROTECTED, None);
    // Checks of the list come first; an empty list changes nothing.
    t.refused(
        &plain(&[t.cscd()], &[seg(0, 1, 4, 0, 10)]),
        sense::COPY_TARGET_DEVICE_NOT_REACHABLE,
        param(48 + 6),
    );
    t.xcopy(&plain(&[t.cscd()], &[]));
    // SWP from the control mode page too.
    let t = setup_with(BS, 64, |_| {});
    let page = [
        0u8, 0, 0, 0, 0x0a, 0x0a, 0, 0x10, 0x08, 0x40, 0, 0, 0xff, 0xff, 0, 0,
    ];
    t.ok(&[0x15, 0x10, 0, 0, page.len() as u8, 0], &page);
    t.refused(&l, sense::WRITE_PROTECTED, None);
}

#[test]
fn backing_errors_abort_the_copy() {
    let t = setup();
    let l = plain(&[t.cscd()], &[seg(0, 0, 40, 0, 1000)]);
    t.mem.inject_fault(20 * BS as u64, 1, FaultOp::Read, 5); // EIO
    t.check(&xcopy_cdb(l.len()), &l, sense::UNRECOVERED_READ_ERROR);
    t.mem.clear_faults();
    t.mem.inject_fault(1000 * BS as u64, 1, FaultOp::Write, 5);
    t.check(&xcopy_cdb(l.len()), &l, sense::WRITE_ERROR);
    t.mem.clear_faults();
    t.mem.inject_fault(0, BS as u64, FaultOp::Write, 28); // ENOSPC
    t.check(
        &xcopy_cdb(l.len()),
        &plain(&[t.cscd()], &[seg(0, 0, 40, 100, 0)]),
        sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    );
}

#[test]
fn destination_writes_take_the_range_lock() {
    let t = setup();
    let before = t.image();
    let l = plain(&[t.cscd()], &[seg(0, 0, 16, 0, 1000)]);
    // A COMPARE AND WRITE holding part of the destination holds the copy.
    let g =
        t.lu.range_lock()
            .lock(Lba(1010), Blocks(1), LockMode::Exclusive);
    std::thread::scope(|s| {
        let h = s.spawn(|| t.ok(&xcopy_cdb(l.len()), &l));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            t.image() == before,
            "copy wrote through an exclusive range lock"
        );
        assert!(!h.is_finished());
        drop(g);
        h.join().unwrap();
    });
    let mut model = before;
    model_copy(&mut model, BS, 0, 1000, 16);
    assert!(t.image() == model);
}

#[test]
fn opcode_table_rsoc_direction_and_reservations() {
    let t = setup();
    let rsoc = |ro: u8, op: u8, sa: u16| {
        let mut c = vec![0xa3, 0x0c, ro, op, 0, 0, 0, 0, 0x10, 0, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c
    };
    let all = t.ok(&rsoc(0, 0, 0), &[]);
    let listed: Vec<(u8, u16, u8, u16)> = all[4..]
        .chunks(8)
        .map(|c| {
            let sa = u16::from_be_bytes([c[2], c[3]]);
            (c[0], sa, c[5] & 1, u16::from_be_bytes([c[6], c[7]]))
        })
        .collect();
    for want in [
        (0x83, 0, 1, 16),
        (0x84, 0, 1, 16),
        (0x84, 3, 1, 16),
        (0x84, 4, 1, 16),
    ] {
        assert!(listed.contains(&want), "{want:02x?}");
    }
    let usage = |op: u8, sa: u16| {
        let d = t.ok(&rsoc(2, op, sa), &[]);
        assert_eq!(d[1] & 7, 3);
        d[4..].to_vec()
    };
    let len = [0xff, 0xff, 0xff, 0xff];
    let mut want = vec![0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    want.extend(len);
    want.extend([0, 0]);
    assert_eq!(usage(0x83, 0), want);
    want[0] = 0x84;
    want[2] = 0xff;
    assert_eq!(usage(0x84, 0), want);
    want[1] = 0x04;
    assert_eq!(usage(0x84, 4), want);
    want[1] = 0x03;
    want[2] = 0;
    assert_eq!(usage(0x84, 3), want);
    // EXTENDED COPY(LID4), RECEIVE COPY DATA: not supported.
    assert_eq!(t.ok(&rsoc(2, 0x83, 1), &[]), [0, 1, 0, 0]);
    assert_eq!(t.ok(&rsoc(2, 0x84, 1), &[]), [0, 1, 0, 0]);
    let mut lid4 = xcopy_cdb(0);
    lid4[1] = 0x01;
    let s = t.check(&lid4, &[], sense::INVALID_FIELD_IN_CDB);
    assert_eq!(s.field_pointer(), Some(FieldPointer::cdb(1, 4)));
    t.check(&rcr(1, 0, 64), &[], sense::INVALID_FIELD_IN_CDB);
    // OPERATING PARAMETERS has no list identifier.
    let s = t.check(&rcr(3, 1, 64), &[], sense::INVALID_FIELD_IN_CDB);
    assert_eq!(s.field_pointer(), Some(FieldPointer::cdb(2, 0)));

    assert_eq!(opcode::direction(&xcopy_cdb(16)), Direction::ToDevice);
    assert_eq!(opcode::direction(&rcr(3, 0, 64)), Direction::FromDevice);
    use crate::pr::conflict::{AccessClass, classify};
    assert_eq!(classify(&xcopy_cdb(16)), AccessClass::Write);
    for sa in [0, 3, 4] {
        assert_eq!(classify(&rcr(sa, 0, 64)), AccessClass::Read);
    }
}

#[test]
fn operating_parameters_report_the_enforced_limits() {
    for (bs, max_segment) in [(512usize, 65535 * 512u32), (4096, 64 << 20)] {
        let t = setup_with(bs, 64, |_| {});
        let d = t.ok(&rcr(3, 0, 1024), &[]);
        assert_eq!(d.len(), 46);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 42);
        assert_eq!(d[4], 0x01); // SNLID
        let be16 = |at: usize| usize::from(u16::from_be_bytes([d[at], d[at + 1]]));
        let be32 = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
        assert_eq!(be16(8), MAX_CSCD_DESCRIPTORS);
        assert_eq!(be16(10), MAX_SEGMENT_DESCRIPTORS);
        assert_eq!(be32(12) as usize, MAX_DESCRIPTOR_LIST_LEN);
        assert_eq!(be32(16), max_segment);
        assert_eq!(&d[20..32], &[0; 12]); // no inline, held or stream data
        assert_eq!(be16(34), MAX_TRACKED_COPIES);
        assert_eq!(usize::from(d[36]), MAX_TRACKED_COPIES);
        assert_eq!(1usize << d[37], bs);
        assert_eq!(d[43], 2);
        assert_eq!(&d[44..], &[0x02, 0xe4]);
        // Truncated by the allocation length and by the buffer.
        assert_eq!(t.ok(&rcr(3, 0, 10), &[]), d[..10]);
        let (r, short) = t.run_in(&rcr(3, 0, 1024), &[], 3);
        assert_eq!((r.status, short.as_slice()), (status::GOOD, &d[..3]));
    }
}

fn copy_status(t: &T, list_id: u8) -> Vec<u8> {
    t.ok(&rcr(0, list_id, 64), &[])
}

#[test]
fn copy_status_of_held_copies() {
    let t = setup();
    let c = t.cscd();
    t.check(&rcr(0, 1, 64), &[], sense::INVALID_FIELD_IN_CDB);
    t.check(&rcr(4, 1, 64), &[], sense::INVALID_FIELD_IN_CDB);
    // LIST ID USAGE 00b: held until delivered.
    let l = list(
        1,
        0,
        std::slice::from_ref(&c),
        &[seg(0, 0, 8, 0, 100), seg(0, 0, 2, 0, 200)],
    );
    t.xcopy(&l);
    // No failure: FAILED SEGMENT DETAILS has nothing.
    assert_eq!(t.ok(&rcr(4, 1, 64), &[]), [0, 0, 0, 0]);
    // A truncated answer does not deliver it.
    assert_eq!(t.ok(&rcr(0, 1, 5), &[]), [0, 0, 0, 8, 1]);
    let want = [0, 0, 0, 8, 0x01, 0, 2, 0, 0, 0, 0x14, 0];
    assert_eq!(copy_status(&t, 1), want);
    t.check(&rcr(0, 1, 64), &[], sense::INVALID_FIELD_IN_CDB);
    // An allocation length of zero discards it.
    t.xcopy(&l);
    assert!(t.ok(&rcr(0, 1, 0), &[]).is_empty());
    t.check(&rcr(0, 1, 64), &[], sense::INVALID_FIELD_IN_CDB);
    // 10b and 11b keep nothing.
    t.xcopy(&list(
        2,
        2,
        std::slice::from_ref(&c),
        &[seg(0, 0, 8, 0, 100)],
    ));
    t.check(&rcr(0, 2, 64), &[], sense::INVALID_FIELD_IN_CDB);
    t.xcopy(&plain(std::slice::from_ref(&c), &[seg(0, 0, 8, 0, 100)]));
    t.check(&rcr(0, 0, 64), &[], sense::INVALID_FIELD_IN_CDB);
    // A new command under a list identifier drops what was held, even if
    // it is refused.
    t.xcopy(&l);
    t.refused(
        &list(1, 0, std::slice::from_ref(&c), &[seg(0, 1, 8, 0, 100)]),
        sense::COPY_TARGET_DEVICE_NOT_REACHABLE,
        param(48 + 6),
    );
    t.check(&rcr(0, 1, 64), &[], sense::INVALID_FIELD_IN_CDB);
    // Different list identifiers are kept apart, up to the limit.
    for id in 0..=MAX_TRACKED_COPIES as u8 {
        t.xcopy(&list(
            id,
            0,
            std::slice::from_ref(&c),
            &[seg(0, 0, 1, 0, 100)],
        ));
    }
    t.check(&rcr(0, 0, 64), &[], sense::INVALID_FIELD_IN_CDB);
    for id in 1..=MAX_TRACKED_COPIES as u8 {
        assert_eq!(copy_status(&t, id)[4], 0x01);
    }
}

#[test]
fn failed_segment_details() {
    let t = setup();
    let c = t.cscd();
    t.mem.inject_fault(300 * BS as u64, 1, FaultOp::Read, 5);
    let l = list(
        5,
        0,
        std::slice::from_ref(&c),
        &[seg(0, 0, 8, 0, 100), seg(0, 0, 8, 296, 1000)],
    );
    t.check(&xcopy_cdb(l.len()), &l, sense::UNRECOVERED_READ_ERROR);
    // Completed with errors, one segment done.
    assert_eq!(
        copy_status(&t, 5),
        [0, 0, 0, 8, 0x02, 0, 1, 0, 0, 0, 0x10, 0]
    );
    let d = t.ok(&rcr(4, 5, 256), &[]);
    assert_eq!(d.len(), 60 + 18);
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 56 + 18);
    assert_eq!(d[56], status::CHECK_CONDITION);
    assert_eq!(&d[58..60], &[0, 18]);
    assert_eq!((d[60], d[62], d[72], d[73]), (0x70, 0x03, 0x11, 0x00));
    // Delivered: the record is gone.
    t.check(&rcr(4, 5, 256), &[], sense::INVALID_FIELD_IN_CDB);
    t.check(&rcr(0, 5, 256), &[], sense::INVALID_FIELD_IN_CDB);

    // Descriptor sense when D_SENSE is set; details first, then status.
    let page = [
        0u8, 0, 0, 0, 0x0a, 0x0a, 0x04, 0x10, 0, 0x40, 0, 0, 0xff, 0xff, 0, 0,
    ];
    t.ok(&[0x15, 0x10, 0, 0, page.len() as u8, 0], &page);
    t.check(&xcopy_cdb(l.len()), &l, sense::UNRECOVERED_READ_ERROR);
    let d = t.ok(&rcr(4, 5, 256), &[]);
    assert_eq!((d[60], d[61], d[62]), (0x72, 0x03, 0x11));
    assert_eq!(copy_status(&t, 5)[4], 0x02);
    t.check(&rcr(4, 5, 256), &[], sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn copy_status_in_progress() {
    let t = setup();
    let l = list(
        3,
        2,
        &[t.cscd()],
        &[seg(0, 0, 1, 0, 100), seg(0, 0, 16, 0, 1000)],
    );
    let g =
        t.lu.range_lock()
            .lock(Lba(1000), Blocks(1), LockMode::Exclusive);
    std::thread::scope(|s| {
        let h = s.spawn(|| t.ok(&xcopy_cdb(l.len()), &l));
        // Blocked in its second segment: in progress, one segment done.
        let mut d = Vec::new();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(10));
            let (r, got) = t.run(&rcr(0, 3, 64), &[]);
            d = got;
            if r.status == status::GOOD && d[6] == 1 {
                break;
            }
        }
        assert_eq!(d, [0, 0, 0, 8, 0x00, 0, 1, 0, 0, 0, 0x02, 0]);
        assert_eq!(t.ok(&rcr(4, 3, 64), &[]), [0, 0, 0, 0]);
        // Reading it does not discard it while the copy runs.
        assert_eq!(copy_status(&t, 3)[4], 0x00);
        drop(g);
        h.join().unwrap();
    });
    // LIST ID USAGE 10b: gone once done.
    t.check(&rcr(0, 3, 64), &[], sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn transfer_count_units() {
    assert_eq!(super::transfer_count(0), (0, 0));
    assert_eq!(super::transfer_count(u64::from(u32::MAX)), (0, u32::MAX));
    assert_eq!(super::transfer_count(1 << 32), (0xf1, 1 << 22));
    assert_eq!(super::transfer_count(1 << 62), (0xf4, 1 << 22));
}

/// One CSCD descriptor: mostly this LU's, sometimes broken.
fn arb_cscd() -> impl Strategy<Value = Vec<u8>> {
    (0u8..8, any::<[u8; 32]>(), any::<bool>()).prop_map(|(kind, noise, bs4k)| {
        let mut d = cscd_for(&naa(), if bs4k { 4096 } else { 512 });
        match kind {
            0 => d[0] = noise[0],
            1 => d[5] = noise[5],
            2 => d[7] = noise[7],
            3 => d[8 + usize::from(noise[1] % 16)] ^= noise[2] | 1,
            4 => d[1] = noise[1],
            5 => d = noise.to_vec(),
            _ => {}
        }
        d
    })
}

/// One segment descriptor: mostly block to block inside a small LU.
fn arb_segment() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..10,
        any::<[u8; 28]>(),
        0u16..3,
        0u16..3,
        0u16..80,
        0u64..80,
        0u64..80,
    )
        .prop_map(|(kind, noise, si, di, n, src, dst)| {
            let mut d = seg(si, di, n, src, dst);
            match kind {
                0 => d[0] = noise[0],
                1 => d[2..4].copy_from_slice(&noise[2..4]),
                2 => d[10..28].copy_from_slice(&noise[10..28]),
                3 => d = noise.to_vec(),
                4 => d.truncate(usize::from(noise[0]) % 28),
                _ => {}
            }
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Random parameter lists: never a panic, the response contract holds,
    /// a refused command leaves the medium as it was, and RECEIVE COPY
    /// RESULTS answers sensibly afterwards.
    #[test]
    fn random_parameter_lists(
        list_id in 0u8..4,
        usage in 0u8..4,
        cscds in proptest::collection::vec(arb_cscd(), 0..4),
        segs in proptest::collection::vec(arb_segment(), 0..6),
        flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..3),
        plen_kind in 0u8..4,
        plen_noise in any::<u32>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..3),
        alloc in 0u32..80,
        read_only in any::<bool>(),
    ) {
        let t = setup_with(512, 64, |c| c.read_only = read_only);
        let mut l = list(list_id, usage, &cscds, &segs);
        for (at, x) in flips {
            let n = l.len();
            l[usize::from(at) % n] ^= x;
        }
        let plen = match plen_kind {
            0 | 1 => l.len(),
            2 => plen_noise as usize % (l.len() + 8),
            _ => plen_noise as usize,
        };
        let before = t.image();
        let cdb = xcopy_cdb(plen);
        let (r, _) = t.run(&cdb, &l);
        crate::scsi::proptests::check_contract(&t.lu, &cdb, &l, &cuts, 0, &[]);
        if let Some(s) = r.sense {
            let key = s.code().key;
            if key != sense::key::MEDIUM_ERROR && key != sense::key::HARDWARE_ERROR {
                prop_assert!(t.image() == before, "refused with {:?} yet changed data", s);
            }
        }
        for sa in [0u8, 3, 4] {
            crate::scsi::proptests::check_contract(&t.lu, &rcr(sa, list_id, alloc), &[], &[], 80, &cuts);
        }
    }
}
