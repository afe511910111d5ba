//! Command-level tests over the in-memory backing.

// Test code builds CDBs from small literals; the cast lints add noise here.
#![allow(clippy::cast_possible_truncation)]

use std::io::{self, IoSlice, IoSliceMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sense::{self, SenseCode, status};
use super::*;
use crate::backing::{Extent, FaultOp, MemBacking};

const BS: usize = 512;
const BLOCKS: usize = 2048;

pub(super) fn identity() -> LuIdentity {
    LuIdentity {
        naa: NaaId::new(&[
            0x60, 0x01, 0x40, 0x5f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ])
        .unwrap(),
        serial: "a1b2c3d4-serial".into(),
        vendor: "LIO-ORG".into(),
        product: "dlmfile".into(),
        revision: "0.1".into(),
    }
}

struct T {
    lu: Lu,
    mem: Arc<MemBacking>,
    port: TargetPort,
}

fn setup_with(f: impl FnOnce(&mut LuConfig)) -> T {
    let mem = Arc::new(MemBacking::new(BS * BLOCKS, BS));
    let mut cfg = LuConfig::new(BS as u32, identity());
    cfg.hw_max_sectors = 1024;
    cfg.max_unmap_descriptors = 4;
    cfg.max_unmap_lba_count = 8192;
    cfg.max_compare_write_len = 16;
    f(&mut cfg);
    let lu = Lu::new(cfg, mem.clone()).unwrap();
    T {
        lu,
        mem,
        port: TargetPort {
            rtpi: 7,
            tpg: 3,
            protocol_id: None,
        },
    }
}

fn setup() -> T {
    setup_with(|_| {})
}

/// Split `len` bytes into segments of the given sizes (the last one takes
/// the rest), so every test exercises multi-segment scatter lists.
fn split_sizes(len: usize, sizes: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = len;
    for &s in sizes {
        let s = s.min(left);
        out.push(s);
        left -= s;
    }
    out.push(left);
    out
}

impl T {
    /// Run with a data-in buffer of `din_len` bytes split oddly.
    fn run_in(&self, cdb: &[u8], out: &[u8], din_len: usize) -> (Response, Vec<u8>) {
        let mut din = vec![0xeeu8; din_len];
        let sizes = split_sizes(din_len, &[3, 509, 1]);
        let mut segs: Vec<&mut [u8]> = Vec::new();
        let mut rest: &mut [u8] = &mut din;
        for s in sizes {
            let (a, b) = rest.split_at_mut(s);
            segs.push(a);
            rest = b;
        }
        let mut iov_in: Vec<IoSliceMut<'_>> = segs.into_iter().map(IoSliceMut::new).collect();
        let osizes = split_sizes(out.len(), &[7, 1000]);
        let mut iov_out = Vec::new();
        let mut pos = 0;
        for s in osizes {
            iov_out.push(IoSlice::new(&out[pos..pos + s]));
            pos += s;
        }
        let r = self.lu.execute(&self.port, cdb, &iov_out, &mut iov_in);
        assert!(r.data_in_len <= din_len);
        assert_eq!(
            r.sense.is_some(),
            r.status == status::CHECK_CONDITION,
            "{r:?}"
        );
        drop(iov_in);
        din.truncate(r.data_in_len);
        (r, din)
    }

    fn run(&self, cdb: &[u8], out: &[u8]) -> (Response, Vec<u8>) {
        self.run_in(cdb, out, 1 << 20)
    }

    fn ok(&self, cdb: &[u8], out: &[u8]) -> Vec<u8> {
        let (r, d) = self.run(cdb, out);
        assert_eq!(r.status, status::GOOD, "{cdb:02x?}: {r:?}");
        d
    }

    fn check(&self, cdb: &[u8], out: &[u8], code: SenseCode) -> Sense {
        let (r, d) = self.run(cdb, out);
        assert_eq!(r.status, status::CHECK_CONDITION, "{cdb:02x?}");
        assert!(d.is_empty());
        let s = r.sense.unwrap();
        assert_eq!(s.code(), code, "{cdb:02x?}: {s:?}");
        s
    }

    fn check_field(&self, cdb: &[u8], out: &[u8], code: SenseCode, fp: FieldPointer) {
        let s = self.check(cdb, out, code);
        assert_eq!(s.field_pointer(), Some(fp), "{cdb:02x?}");
    }
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(op: u8, b1: u8, lba: u32, len: u32) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
    (0..blocks * BS)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const fn fp(byte: u16, bit: u8) -> FieldPointer {
    FieldPointer::cdb(byte, bit)
}

#[test]
fn unsupported_and_caller_owned_opcodes() {
    let t = setup();
    t.ok(&[0, 0, 0, 0, 0, 0], &[]);
    for cdb in [
        &[][..],
        &[0xff, 0, 0, 0, 0, 0],
        &[0x16, 0, 0, 0, 0, 0],                               // RESERVE(6)
        &[0x17, 0, 0, 0, 0, 0],                               // RELEASE(6)
        &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0],                   // PR IN
        &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0],                  // PR OUT
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],             // REPORT LUNS
        &[0x48, 0x01, 0, 0, 0, 0, 0, 0, 0, 0],                // SANITIZE (never: shared LUNs)
        &[0x9c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], // WRITE ATOMIC(16)
    ] {
        t.check(cdb, &[], sense::INVALID_COMMAND_OPERATION_CODE);
    }
    // A known opcode with an unknown service action points at the field.
    t.check_field(
        &cdb16(0x9e, 0x11, 0, 32),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 4),
    );
    // Short CDBs are refused, not read past.
    t.check(&[0x28, 0, 0, 0], &[], sense::INVALID_FIELD_IN_CDB);
    // NACA in the control byte is unsupported.
    t.check_field(
        &[0, 0, 0, 0, 0, 0x04],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(5, 2),
    );
}

#[test]
fn standard_inquiry() {
    let t = setup();
    let d = t.ok(&[0x12, 0, 0, 0, 255, 0], &[]);
    assert_eq!(d.len(), 64);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    assert_eq!(d[3] & 0x0f, 2);
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"LIO-ORG ");
    assert_eq!(&d[16..32], b"dlmfile         ");
    assert_eq!(&d[32..36], b"0.1 ");
    assert_eq!(&d[58..60], &[0x00, 0xa0]);
    // Truncation to the allocation length.
    assert_eq!(t.ok(&[0x12, 0, 0, 0, 5, 0], &[]), d[..5]);
    assert!(t.ok(&[0x12, 0, 0, 0, 0, 0], &[]).is_empty());
    // Page code without EVPD, CMDDT, and unknown VPD pages.
    t.check_field(
        &[0x12, 0, 0x80, 0, 255, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(2),
    );
    t.check_field(
        &[0x12, 0x02, 0, 0, 255, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 1),
    );
    t.check_field(
        &[0x12, 1, 0x99, 0, 255, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(2),
    );
}

fn vpd(t: &T, page: u8) -> Vec<u8> {
    let d = t.ok(&[0x12, 1, page, 0x10, 0, 0], &[]);
    assert_eq!(d[1], page);
    assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len() - 4);
    d
}

/// (code set/protocol byte, PIV/assoc/type byte, body) per designator.
fn designators(d: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 4;
    while p + 4 <= d.len() {
        let l = usize::from(d[p + 3]);
        out.push((d[p], d[p + 1], d[p + 4..p + 4 + l].to_vec()));
        p += 4 + l;
    }
    assert_eq!(p, d.len());
    out
}

#[test]
fn vpd_pages() {
    let mut t = setup();
    assert_eq!(&vpd(&t, 0)[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    assert_eq!(&vpd(&t, 0x80)[4..], b"a1b2c3d4-serial");

    let ds = designators(&vpd(&t, 0x83));
    assert_eq!(ds.len(), 4);
    assert_eq!((ds[0].0, ds[0].1), (0x01, 0x03));
    assert_eq!(ds[0].2, identity().naa.as_bytes());
    assert_eq!((ds[1].0, ds[1].1), (0x02, 0x01));
    assert_eq!(ds[1].2, b"LIO-ORG a1b2c3d4-serial");
    assert_eq!((ds[2].0, ds[2].1), (0x01, 0x14));
    assert_eq!(ds[2].2, [0, 0, 0, 7]);
    assert_eq!((ds[3].0, ds[3].1), (0x01, 0x15));
    assert_eq!(ds[3].2, [0, 0, 0, 3]);
    // With a known protocol (iSCSI = 5) the port designators carry PIV.
    t.port = TargetPort {
        rtpi: 0x1234,
        tpg: 2,
        protocol_id: Some(5),
    };
    let ds = designators(&vpd(&t, 0x83));
    assert_eq!(
        (ds[2].0, ds[2].1, ds[2].2.clone()),
        (0x51, 0x94, vec![0, 0, 0x12, 0x34])
    );
    assert_eq!((ds[3].0, ds[3].1), (0x51, 0x95));
    assert_eq!((ds[0].0, ds[0].1), (0x01, 0x03)); // LU designators unchanged

    let b0 = vpd(&t, 0xb0);
    assert_eq!(b0.len(), 64);
    assert_eq!(b0[4] & 1, 0); // WSNZ=0: zero blocks means to the end
    assert_eq!(b0[5], 16); // max compare and write
    assert_eq!(&b0[8..12], &1024u32.to_be_bytes()); // max transfer
    assert_eq!(&b0[20..24], &8192u32.to_be_bytes()); // max unmap LBA count
    assert_eq!(&b0[24..28], &4u32.to_be_bytes()); // max unmap descriptors
    assert_eq!(&b0[36..44], &0xffffu64.to_be_bytes()); // max write same
    assert_eq!(vpd(&t, 0xb1).len(), 64);
    let b2 = vpd(&t, 0xb2);
    assert_eq!(b2[5] & 0xe0, 0xe0); // LBPU LBPWS LBPWS10
    assert_eq!((b2[5] >> 2) & 7, 1); // LBPRZ
    assert_eq!(b2[5] & 0x02, 0); // ANC_SUP

    let t = setup_with(|c| c.thin_provisioning = false);
    assert_eq!(vpd(&t, 0xb2)[5], 0);
    assert_eq!(&vpd(&t, 0xb0)[20..28], &[0; 8]);
}

#[test]
fn read_capacity() {
    let t = setup();
    let d = t.ok(&cdb10(0x25, 0, 0, 0), &[]);
    assert_eq!(d, [0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    let d = t.ok(&cdb16(0x9e, 0x10, 0, 32), &[]);
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &(BLOCKS as u64 - 1).to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[14] & 0xc0, 0xc0); // LBPME, LBPRZ
    assert_eq!(d[13], 0);
    let t8 = setup_with(|c| c.lbppbe = 3);
    assert_eq!(t8.ok(&cdb16(0x9e, 0x10, 0, 32), &[])[13], 3);
    assert_eq!(t.ok(&cdb16(0x9e, 0x10, 0, 12), &[]), d[..12]);
    let t = setup_with(|c| c.thin_provisioning = false);
    assert_eq!(t.ok(&cdb16(0x9e, 0x10, 0, 32), &[])[14], 0);
}

/// A huge all-zero medium for capacity and overflow edge cases.
#[derive(Debug)]
struct ZeroBacking(u64);

impl Backing for ZeroBacking {
    fn len(&self) -> u64 {
        self.0
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], _: u64) -> io::Result<()> {
        bufs.iter_mut().for_each(|b| b.fill(0));
        Ok(())
    }
    fn write_vectored_at(&self, _: &[IoSlice<'_>], _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn huge_capacity_and_overflow() {
    let blocks = 1u64 << 40;
    let lu = Lu::new(
        LuConfig::new(512, identity()),
        Arc::new(ZeroBacking(blocks * 512)),
    )
    .unwrap();
    let port = TargetPort::default();
    let mut buf = [0u8; 64];
    let run = |cdb: &[u8], buf: &mut [u8]| lu.execute(&port, cdb, &[], &mut [IoSliceMut::new(buf)]);
    let r = run(&cdb10(0x25, 0, 0, 0), &mut buf);
    assert_eq!(r.data_in_len, 8);
    assert_eq!(&buf[..4], &[0xff; 4]);
    let r = run(&cdb16(0x9e, 0x10, 0, 32), &mut buf);
    assert_eq!(r.data_in_len, 32);
    assert_eq!(&buf[..8], &(blocks - 1).to_be_bytes());
    // lba + len overflows u64.
    let r = run(&cdb16(0x88, 0, u64::MAX, 2), &mut buf);
    assert_eq!(r.sense.unwrap().code(), sense::LBA_OUT_OF_RANGE);
    // Short MODE SENSE(6) block descriptor saturates the block count.
    let r = run(&[0x1a, 0, 0x08, 0, 64, 0], &mut buf);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&buf[4..8], &[0xff; 4]);
}

#[test]
fn read_write_all_sizes_roundtrip() {
    let t = setup_with(|c| c.hw_max_sectors = 256);
    let data = pattern(4, 1);
    t.ok(&cdb10(0x2a, 0, 10, 4), &data);
    assert_eq!(t.mem.snapshot(10 * BS, 4 * BS), data);
    assert_eq!(t.ok(&cdb10(0x28, 0, 10, 4), &[]), data);
    assert_eq!(t.ok(&cdb12(0xa8, 0, 10, 4), &[]), data);
    assert_eq!(t.ok(&cdb16(0x88, 0, 10, 4), &[]), data);
    assert_eq!(t.ok(&[0x08, 0, 0, 10, 4, 0], &[]), data);
    let d2 = pattern(3, 9);
    t.ok(&cdb12(0xaa, 0, 100, 3), &d2);
    t.ok(&cdb16(0x8a, 0, 200, 3), &d2);
    t.ok(&[0x0a, 0, 1, 44, 3, 0], &d2); // WRITE(6) at LBA 300
    for lba in [100, 200, 300] {
        assert_eq!(t.mem.snapshot(lba * BS, 3 * BS), d2);
    }
    // READ(6) length 0 transfers 256 blocks.
    let (r, d) = t.run(&[0x08, 0, 0, 0, 0, 0], &[]);
    assert_eq!((r.status, d.len()), (status::GOOD, 256 * BS));
    // Zero-length transfers are fine and touch nothing.
    assert!(t.ok(&cdb10(0x28, 0, 0, 0), &[]).is_empty());
    t.ok(&cdb10(0x2a, 0, BLOCKS as u32, 0), &[]);
    // DPO and FUA_NV are accepted.
    assert_eq!(t.ok(&cdb10(0x28, 0x12, 10, 4), &[]), data);
}

#[test]
fn read_write_errors() {
    let t = setup();
    let b = BLOCKS as u32;
    for cdb in [
        cdb10(0x28, 0, b - 1, 2),
        cdb10(0x28, 0, b + 1, 0),
        cdb16(0x88, 0, u64::MAX, 1),
        cdb10(0x2a, 0, b, 1),
        cdb12(0xa8, 0, u32::MAX, 1),
        vec![0x08, 0x1f, 0xff, 0xff, 1, 0],
    ] {
        let out = pattern(2, 0);
        t.check(&cdb, &out, sense::LBA_OUT_OF_RANGE);
    }
    // Beyond the maximum transfer length: pointer at the length field.
    t.check_field(
        &cdb10(0x28, 0, 0, 1025),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(7),
    );
    t.check_field(
        &cdb12(0xa8, 0, 0, 4096),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(6),
    );
    t.check_field(
        &cdb16(0x88, 0, 0, u32::MAX),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(10),
    );
    // Protection fields are reserved without protection information.
    t.check_field(
        &cdb10(0x28, 0x20, 0, 1),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 5),
    );
    t.check_field(
        &cdb16(0x8a, 0xe0, 0, 1),
        &pattern(1, 0),
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 7),
    );
    // RARC is not supported.
    t.check_field(
        &cdb10(0x28, 0x04, 0, 1),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 2),
    );
    // Data-out shorter than the CDB implies.
    t.check(
        &cdb10(0x2a, 0, 0, 2),
        &pattern(1, 0),
        sense::INVALID_FIELD_IN_COMMAND_IU,
    );
    // Data-in buffer shorter than the CDB implies: an underflow, the
    // buffer is filled and the length says how much.
    t.ok(&cdb10(0x2a, 0, 0, 2), &pattern(2, 6));
    for have in [0, 1, BS, BS + 7] {
        let (r, d) = t.run_in(&cdb10(0x28, 0, 0, 2), &[], have);
        assert_eq!((r.status, r.data_in_len), (status::GOOD, have));
        assert_eq!(d, pattern(2, 6)[..have]);
    }
}

#[test]
fn fua_and_write_cache() {
    let t = setup();
    let d = pattern(1, 3);
    t.ok(&cdb10(0x2a, 0, 0, 1), &d);
    assert_eq!(t.mem.fua_write_count(), 0);
    t.ok(&cdb10(0x2a, 0x08, 0, 1), &d);
    t.ok(&cdb16(0x8a, 0x08, 0, 1), &d);
    assert_eq!(t.mem.fua_write_count(), 2);
    // With the write cache off every write is durable before GOOD.
    t.lu.set_write_cache(false);
    t.ok(&cdb10(0x2a, 0, 0, 1), &d);
    assert_eq!(t.mem.fua_write_count(), 3);
    let t = setup_with(|c| c.write_cache = false);
    t.ok(&cdb12(0xaa, 0, 0, 1), &d);
    assert_eq!(t.mem.fua_write_count(), 1);
}

#[test]
fn backing_errors_map_to_sense() {
    let t = setup();
    t.mem.inject_fault(4 * BS as u64, 1, FaultOp::Read, 5); // EIO
    t.check(&cdb10(0x28, 0, 3, 2), &[], sense::UNRECOVERED_READ_ERROR);
    t.mem.inject_fault(8 * BS as u64, 1, FaultOp::Write, 5);
    t.check(&cdb10(0x2a, 0, 8, 1), &pattern(1, 0), sense::WRITE_ERROR);
    t.mem.clear_faults();
    t.mem.inject_fault(0, BS as u64, FaultOp::Write, 28); // ENOSPC
    let s = t.check(
        &cdb10(0x2a, 0, 0, 1),
        &pattern(1, 0),
        sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    );
    assert_eq!(s.as_bytes()[2], sense::key::DATA_PROTECT);
    t.check(
        &cdb16(0x93, 0, 0, 4),
        &pattern(1, 7),
        sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    );
    t.mem.clear_faults();
    t.ok(&cdb10(0x2a, 0, 0, 1), &pattern(1, 0));
}

#[test]
fn write_protection() {
    let t = setup_with(|c| c.read_only = true);
    let out = pattern(1, 0);
    for cdb in [
        cdb10(0x2a, 0, 0, 1),
        cdb16(0x8a, 0, 0, 1),
        cdb10(0x2e, 0, 0, 1),
        cdb10(0x41, 0, 0, 1),
    ] {
        t.check(&cdb, &out, sense::WRITE_PROTECTED);
    }
    t.ok(&cdb10(0x28, 0, 0, 1), &[]);
    // MODE SENSE reports WP.
    assert_eq!(t.ok(&[0x1a, 0x08, 0x3f, 0, 255, 0], &[])[2] & 0x80, 0x80);
    let t = setup();
    t.mem.set_read_only(true);
    t.check(&cdb10(0x2a, 0, 0, 1), &out, sense::WRITE_PROTECTED);
    t.check(
        &cdb10(0x42, 0, 0, 24),
        &unmap_list(&[(0, 1)]),
        sense::WRITE_PROTECTED,
    );
}

fn mode_sense6(t: &T, b1: u8, pc_page: u8, sub: u8) -> Vec<u8> {
    let d = t.ok(&[0x1a, b1, pc_page, sub, 255, 0], &[]);
    assert_eq!(usize::from(d[0]), d.len() - 1);
    d
}

/// Pages of a MODE SENSE answer keyed by page code.
fn pages(d: &[u8], hdr: usize) -> Vec<(u8, Vec<u8>)> {
    let bdl = if hdr == 4 {
        usize::from(d[3])
    } else {
        usize::from(u16::from_be_bytes([d[6], d[7]]))
    };
    let mut p = hdr + bdl;
    let mut v = Vec::new();
    while p < d.len() {
        let l = usize::from(d[p + 1]) + 2;
        v.push((d[p] & 0x3f, d[p..p + l].to_vec()));
        p += l;
    }
    assert_eq!(p, d.len());
    v
}

#[test]
fn mode_sense_pages_and_page_control() {
    let t = setup();
    let all = mode_sense6(&t, 0, 0x3f, 0);
    assert_eq!(all[2], 0x10); // DPOFUA, not WP
    assert_eq!(all[3], 8);
    assert_eq!(&all[4..8], &(BLOCKS as u32).to_be_bytes());
    assert_eq!(&all[9..12], &[0, 2, 0]);
    let ps = pages(&all, 4);
    let codes: Vec<u8> = ps.iter().map(|p| p.0).collect();
    assert_eq!(codes, [0x01, 0x08, 0x0a, 0x1c]);
    assert_eq!(ps[1].1.len(), 20);
    assert_eq!(ps[1].1[2] & 0x04, 0x04); // WCE on
    assert_eq!(ps[2].1[2] & 0x04, 0); // D_SENSE off
    // All subpages (0xff) is the same set.
    assert_eq!(mode_sense6(&t, 0, 0x3f, 0xff), all);
    // Changeable values: WCE, D_SENSE, SWP.
    let chg = pages(&mode_sense6(&t, 0x08, 0x7f, 0), 4);
    assert_eq!(chg[1].1[2], 0x04);
    assert_eq!((chg[2].1[2], chg[2].1[4]), (0x04, 0x08));
    assert!(chg[0].1[2..].iter().all(|&b| b == 0));
    // Default values follow the configuration, not the current state.
    t.lu.set_write_cache(false);
    let cur = pages(&mode_sense6(&t, 0x08, 0x08, 0), 4);
    assert_eq!(cur[0].1[2] & 0x04, 0);
    let def = pages(&mode_sense6(&t, 0x08, 0x88, 0), 4);
    assert_eq!(def[0].1[2] & 0x04, 0x04);
    // Saved values are not supported; unknown pages and subpages refused.
    t.check_field(
        &[0x1a, 0, 0xc8, 0, 255, 0],
        &[],
        sense::SAVING_PARAMETERS_NOT_SUPPORTED,
        fp(2, 7),
    );
    t.check_field(
        &[0x1a, 0, 0x19, 0, 255, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(2, 5),
    );
    t.check_field(
        &[0x1a, 0, 0x08, 1, 255, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(3),
    );
    // DBD drops the block descriptor.
    let d = mode_sense6(&t, 0x08, 0x08, 0);
    assert_eq!((d[3], d.len()), (0, 4 + 20));
    // Truncation keeps the header's full length.
    let d = t.ok(&[0x1a, 0, 0x3f, 0, 4, 0], &[]);
    assert_eq!(d, all[..4]);
}

#[test]
fn mode_sense10_long_lba() {
    let t = setup();
    let d = t.ok(&[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])), d.len() - 2);
    assert_eq!(d[4] & 1, 1); // LONGLBA
    assert_eq!(&d[6..8], &[0, 16]);
    assert_eq!(&d[8..16], &(BLOCKS as u64).to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    assert_eq!(pages(&d, 8).len(), 1);
    let d = t.ok(&[0x5a, 0, 0x0a, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!((d[4], d[7]), (0, 8));
}

/// A MODE SELECT(6) list holding `page` (as MODE SENSE returned it).
fn select6(page: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0];
    p.extend(page);
    p
}

#[test]
fn mode_select_changes_wce_dsense_swp() {
    let t = setup();
    let cur = pages(&mode_sense6(&t, 0x08, 0x3f, 0), 4);
    let mut caching = cur[1].1.clone();
    caching[2] &= !0x04;
    let list = select6(&caching);
    t.ok(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert!(!t.lu.write_cache_enabled());
    t.ok(&cdb10(0x2a, 0, 0, 1), &pattern(1, 0));
    assert_eq!(t.mem.fua_write_count(), 1);

    // D_SENSE switches errors to descriptor format.
    let mut control = cur[2].1.clone();
    control[2] |= 0x04;
    let list = select6(&control);
    t.ok(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    let s = t.check(
        &cdb10(0x28, 0, BLOCKS as u32, 1),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
    assert_eq!(s.as_bytes()[0], 0x72);
    let s = t.check(&[0x12, 0, 1, 0, 255, 0], &[], sense::INVALID_FIELD_IN_CDB);
    assert_eq!(s.field_pointer(), Some(FieldPointer::cdb_byte(2)));

    // SWP write-protects, MODE SELECT(10) clears it again.
    control[4] |= 0x08;
    let mut list10 = vec![0u8; 8];
    list10.extend(&control);
    t.ok(
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, list10.len() as u8, 0],
        &list10,
    );
    t.check(
        &cdb10(0x2a, 0, 0, 1),
        &pattern(1, 0),
        sense::WRITE_PROTECTED,
    );
    assert_eq!(mode_sense6(&t, 0, 0x3f, 0)[2] & 0x80, 0x80);
    let n = list10.len();
    list10[8 + 4] &= !0x08;
    list10[8 + 2] &= !0x04;
    t.ok(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, n as u8, 0], &list10);
    t.ok(&cdb10(0x2a, 0, 0, 1), &pattern(1, 0));
    assert_eq!(
        t.check(
            &cdb10(0x28, 0, BLOCKS as u32, 1),
            &[],
            sense::LBA_OUT_OF_RANGE
        )
        .as_bytes()[0],
        0x70
    );
}

#[test]
fn mode_select_errors() {
    let t = setup();
    let cur = pages(&mode_sense6(&t, 0x08, 0x3f, 0), 4);
    let caching = select6(&cur[1].1);
    let n = caching.len() as u8;
    t.check_field(
        &[0x15, 0x11, 0, 0, n, 0],
        &caching,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 0),
    );
    t.check_field(
        &[0x15, 0x00, 0, 0, n, 0],
        &caching,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 4),
    );
    t.ok(&[0x15, 0x10, 0, 0, 0, 0], &[]);
    // Data-out shorter than the parameter list length; list shorter than a header.
    t.check(
        &[0x15, 0x10, 0, 0, n, 0],
        &caching[..10],
        sense::PARAMETER_LIST_LENGTH_ERROR,
    );
    t.check(
        &[0x15, 0x10, 0, 0, 2, 0],
        &caching,
        sense::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Truncated page.
    t.check(
        &[0x15, 0x10, 0, 0, n - 1, 0],
        &caching,
        sense::PARAMETER_LIST_LENGTH_ERROR,
    );
    // A non-changeable bit (RCD) changed: pointer into the parameter list.
    let mut l = caching.clone();
    l[4 + 2] |= 0x01;
    let s = t.check(
        &[0x15, 0x10, 0, 0, n, 0],
        &l,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.field_pointer(), Some(FieldPointer::param(6, 0)));
    // Wrong page length, unknown page, subpage format.
    let mut l = caching.clone();
    l[5] = 0x11;
    let s = t.check(
        &[0x15, 0x10, 0, 0, n, 0],
        &l,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.field_pointer(), Some(FieldPointer::param(5, 7)));
    let mut l = caching.clone();
    l[4] = 0x19;
    t.check(
        &[0x15, 0x10, 0, 0, n, 0],
        &l,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    l[4] = 0x48;
    t.check(
        &[0x15, 0x10, 0, 0, n, 0],
        &l,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // Block descriptor: current geometry accepted, another block size not.
    let mut bd = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    bd.extend(&cur[1].1);
    t.ok(&[0x15, 0x10, 0, 0, bd.len() as u8, 0], &bd);
    bd[10] = 0x10;
    let s = t.check(
        &[0x15, 0x10, 0, 0, bd.len() as u8, 0],
        &bd,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.field_pointer(), Some(FieldPointer::param(9, 7)));
    // Nothing was applied by the failed selects.
    assert!(t.lu.write_cache_enabled());
}

#[test]
fn sync_cache_and_start_stop() {
    let t = setup();
    t.ok(&cdb10(0x35, 0, 0, 0), &[]);
    t.ok(&cdb10(0x35, 0x06, 5, 10), &[]); // IMMED, SYNC_NV
    t.ok(&cdb16(0x91, 0, 0, BLOCKS as u32), &[]);
    assert_eq!(t.mem.sync_count(), 3);
    t.check(
        &cdb10(0x35, 0, BLOCKS as u32 - 1, 2),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
    t.check(
        &cdb16(0x91, 0, BLOCKS as u64 + 1, 0),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
    assert_eq!(t.mem.sync_count(), 3);
    // START STOP UNIT: stopping flushes unless NO_FLUSH; no eject, no power
    // conditions on a fixed disk.
    t.ok(&[0x1b, 0, 0, 0, 1, 0], &[]);
    assert_eq!(t.mem.sync_count(), 3);
    t.ok(&[0x1b, 1, 0, 0, 0, 0], &[]);
    assert_eq!(t.mem.sync_count(), 4);
    t.ok(&[0x1b, 0, 0, 0, 4, 0], &[]);
    assert_eq!(t.mem.sync_count(), 4);
    t.check_field(
        &[0x1b, 0, 0, 0, 2, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(4, 1),
    );
    t.check_field(
        &[0x1b, 0, 0, 0, 0x31, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(4, 5),
    );
    for prevent in 0..4 {
        t.ok(&[0x1e, 0, 0, 0, prevent, 0], &[]);
    }
}

#[test]
fn request_sense_formats() {
    let t = setup();
    let d = t.ok(&[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!(d.len(), 18);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0, 0, 0));
    let d = t.ok(&[0x03, 1, 0, 0, 252, 0], &[]);
    assert_eq!(d, [0x72, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(t.ok(&[0x03, 0, 0, 0, 3, 0], &[]).len(), 3);
}

#[test]
fn verify_bytchk_modes() {
    let t = setup();
    let data = pattern(4, 5);
    t.ok(&cdb10(0x2a, 0, 20, 4), &data);
    t.ok(&cdb10(0x2f, 0, 20, 4), &[]);
    t.ok(&cdb16(0x8f, 0, 0, BLOCKS as u32), &[]); // whole medium, no transfer limit
    t.ok(&cdb12(0xaf, 0x02, 20, 4), &data);
    t.ok(&cdb16(0x8f, 0x02, 20, 4), &data);
    let mut bad = data.clone();
    bad[1000] ^= 1;
    let s = t.check(
        &cdb10(0x2f, 0x02, 20, 4),
        &bad,
        sense::MISCOMPARE_DURING_VERIFY,
    );
    assert_eq!(s.information(), Some(1000));
    // BYTCHK 11b: one block compared with each block.
    let block = pattern(1, 9);
    t.ok(&cdb16(0x93, 0, 40, 3), &block);
    t.ok(&cdb10(0x2f, 0x06, 40, 3), &block);
    let s = t.check(
        &cdb10(0x2f, 0x06, 39, 3),
        &block,
        sense::MISCOMPARE_DURING_VERIFY,
    );
    assert_eq!(s.information(), Some(0));
    t.check_field(
        &cdb10(0x2f, 0x04, 20, 4),
        &data,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 2),
    );
    t.check(
        &cdb10(0x2f, 0x02, 20, 4),
        &data[..100],
        sense::INVALID_FIELD_IN_COMMAND_IU,
    );
    t.check(
        &cdb10(0x2f, 0, BLOCKS as u32, 1),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
    t.mem.inject_fault(21 * BS as u64, 1, FaultOp::Read, 5);
    t.check(&cdb10(0x2f, 0, 20, 4), &[], sense::UNRECOVERED_READ_ERROR);
}

#[test]
fn write_and_verify() {
    let t = setup();
    let data = pattern(3, 2);
    t.ok(&cdb10(0x2e, 0, 7, 3), &data);
    assert_eq!(t.mem.snapshot(7 * BS, 3 * BS), data);
    assert_eq!(t.mem.fua_write_count(), 1);
    t.ok(&cdb12(0xae, 0x02, 7, 3), &data);
    t.ok(&cdb16(0x8e, 0x12, 7, 3), &data);
    t.check_field(
        &cdb10(0x2e, 0x04, 7, 3),
        &data,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 2),
    );
    t.check(
        &cdb10(0x2e, 0, BLOCKS as u32 - 1, 3),
        &data,
        sense::LBA_OUT_OF_RANGE,
    );
    t.mem.inject_fault(8 * BS as u64, 1, FaultOp::Read, 5);
    t.check(&cdb10(0x2e, 0, 7, 3), &data, sense::UNRECOVERED_READ_ERROR);
}

#[test]
fn write_same_variants() {
    let t = setup();
    let block = pattern(1, 4);
    t.ok(&cdb10(0x41, 0, 50, 5), &block);
    for i in 0..5 {
        assert_eq!(t.mem.snapshot((50 + i) * BS, BS), block);
    }
    // WRITE SAME(16) larger than the 1 MiB pattern chunk.
    t.ok(&cdb16(0x93, 0, 0, 2047), &block);
    assert_eq!(t.mem.snapshot(2046 * BS, BS), block);
    assert_eq!(t.mem.snapshot(2047 * BS, BS), vec![0; BS]);
    // UNMAP with zero data deallocates; NDOB needs no data-out.
    t.ok(&cdb16(0x93, 0x08, 10, 4), &vec![0; BS]);
    assert!(!t.mem.is_mapped(10 * BS as u64) && !t.mem.is_mapped(13 * BS as u64));
    assert!(t.mem.is_mapped(14 * BS as u64));
    t.ok(&cdb16(0x93, 0x09, 20, 2), &[]);
    assert!(!t.mem.is_mapped(20 * BS as u64));
    assert_eq!(t.mem.snapshot(20 * BS, 2 * BS), vec![0; 2 * BS]);
    t.ok(&cdb16(0x93, 0x01, 30, 2), &[]);
    assert!(t.mem.is_mapped(30 * BS as u64));
    assert_eq!(t.mem.snapshot(30 * BS, BS), vec![0; BS]);
    // UNMAP deallocates whatever the data: LBPRZ=1 reads zeros back.
    t.ok(&cdb10(0x2a, 0, 40, 1), &block);
    t.ok(&cdb10(0x41, 0x08, 40, 1), &block);
    assert!(!t.mem.is_mapped(40 * BS as u64));
    assert_eq!(t.mem.snapshot(40 * BS, BS), vec![0; BS]);
    // The data-out is exactly one block: more is refused as well as less.
    t.check(
        &cdb10(0x41, 0, 0, 1),
        &pattern(2, 1),
        sense::INVALID_FIELD_IN_COMMAND_IU,
    );
    // Zero blocks: from the LBA to the end of the medium.
    let other = pattern(1, 9);
    t.ok(&cdb10(0x41, 0, BLOCKS as u32 - 3, 0), &other);
    for b in BLOCKS - 3..BLOCKS {
        assert_eq!(t.mem.snapshot(b * BS, BS), other);
    }
    assert_ne!(t.mem.snapshot((BLOCKS - 4) * BS, BS), other);
    t.ok(&cdb10(0x41, 0, BLOCKS as u32, 0), &other); // nothing left: GOOD
    t.check(
        &cdb10(0x41, 0, BLOCKS as u32 + 1, 0),
        &other,
        sense::LBA_OUT_OF_RANGE,
    );
    // ... bounded by MAXIMUM WRITE SAME LENGTH like any other length.
    let small = setup_with(|c| c.max_write_same_len = 16);
    small.check_field(
        &cdb10(0x41, 0, 0, 0),
        &block,
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(7),
    );
    small.ok(&cdb10(0x41, 0, BLOCKS as u32 - 16, 0), &block);
    // Errors: ANCHOR, max length, out of range, short data-out.
    t.check_field(
        &cdb16(0x93, 0x18, 0, 1),
        &block,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 4),
    );
    t.check_field(
        &cdb16(0x93, 0, 0, 0x10000),
        &block,
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(10),
    );
    t.check(
        &cdb16(0x93, 0, BLOCKS as u64 - 1, 2),
        &block,
        sense::LBA_OUT_OF_RANGE,
    );
    t.check(
        &cdb10(0x41, 0, 0, 1),
        &block[..100],
        sense::INVALID_FIELD_IN_COMMAND_IU,
    );
    // PBDATA/LBDATA are obsolete and refused; NDOB does not exist in (10).
    t.check_field(
        &cdb10(0x41, 0x02, 0, 1),
        &block,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 1),
    );
    t.check_field(
        &cdb10(0x41, 0x01, 0, 1),
        &block,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 0),
    );
    // Without LBP the UNMAP bit is an invalid field.
    let t = setup_with(|c| c.thin_provisioning = false);
    t.check_field(
        &cdb16(0x93, 0x08, 0, 1),
        &block,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 3),
    );
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    for &(lba, n) in descs {
        p.extend(lba.to_be_bytes());
        p.extend(n.to_be_bytes());
        p.extend([0; 4]);
    }
    p
}

fn unmap_cdb(plen: usize) -> Vec<u8> {
    cdb10(0x42, 0, 0, plen as u16)
}

#[test]
fn unmap_and_get_lba_status() {
    let t = setup();
    t.ok(&cdb16(0x93, 0, 0, 64), &pattern(1, 1));
    let l = unmap_list(&[(8, 8), (32, 4), (60, 0)]);
    t.ok(&unmap_cdb(l.len()), &l);
    assert!(!t.mem.is_mapped(8 * BS as u64) && !t.mem.is_mapped(15 * BS as u64));
    assert!(t.mem.is_mapped(16 * BS as u64));
    assert_eq!(t.mem.snapshot(8 * BS, 8 * BS), vec![0; 8 * BS]);

    let d = t.ok(&cdb16(0x9e, 0x12, 0, 1000), &[]);
    let descs: Vec<(u64, u32, u8)> = d[8..]
        .chunks(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12],
            )
        })
        .collect();
    assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len() - 4);
    assert_eq!(
        descs,
        [
            (0, 8, 0),
            (8, 8, 1),
            (16, 16, 0),
            (32, 4, 1),
            (36, 28, 0),
            (64, BLOCKS as u32 - 64, 1)
        ]
    );
    // From an unmapped LBA in the middle of a run.
    let d = t.ok(&cdb16(0x9e, 0x12, 10, 24), &[]);
    assert_eq!(d.len(), 24);
    assert_eq!(&d[8..20], &[0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 6]);
    // Truncation: the header still tells the full length.
    let d = t.ok(&cdb16(0x9e, 0x12, 0, 4), &[]);
    assert_eq!(d.len(), 4);
    t.check(
        &cdb16(0x9e, 0x12, BLOCKS as u64, 24),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
}

#[test]
fn unmap_errors() {
    let t = setup();
    t.ok(&unmap_cdb(0), &[]);
    let l = unmap_list(&[(0, 1)]);
    t.check(&unmap_cdb(4), &l, sense::PARAMETER_LIST_LENGTH_ERROR);
    t.check(
        &unmap_cdb(l.len()),
        &l[..20],
        sense::PARAMETER_LIST_LENGTH_ERROR,
    );
    t.check_field(
        &cdb10(0x42, 1, 0, 24),
        &l,
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 0),
    );
    let five = unmap_list(&[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]);
    t.check(
        &unmap_cdb(five.len()),
        &five,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    let big = unmap_list(&[(0, 8193)]);
    let s = t.check(
        &unmap_cdb(big.len()),
        &big,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.field_pointer(), Some(FieldPointer::param_byte(16)));
    let oob = unmap_list(&[(0, 1), (BLOCKS as u64 - 1, 2)]);
    t.check(&unmap_cdb(oob.len()), &oob, sense::LBA_OUT_OF_RANGE);
    let oob = unmap_list(&[(u64::MAX, 2)]);
    t.check(&unmap_cdb(oob.len()), &oob, sense::LBA_OUT_OF_RANGE);
    // Descriptor data length beyond the list.
    let mut l2 = l.clone();
    l2[3] = 32;
    let s = t.check(
        &unmap_cdb(l2.len()),
        &l2,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_eq!(s.field_pointer(), Some(FieldPointer::param_byte(2)));
    let mut l3 = l.clone();
    l3[1] = 200;
    t.check(
        &unmap_cdb(l3.len()),
        &l3,
        sense::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // A trailing partial descriptor is ignored.
    t.ok(&cdb16(0x93, 0, 0, 2), &pattern(1, 1));
    let mut partial = unmap_list(&[(0, 1)]);
    partial.extend([0u8; 8]);
    partial[0..2].copy_from_slice(&30u16.to_be_bytes());
    partial[2..4].copy_from_slice(&24u16.to_be_bytes());
    t.ok(&unmap_cdb(partial.len()), &partial);
    assert!(!t.mem.is_mapped(0) && t.mem.is_mapped(BS as u64));
    // Nothing was unmapped by the failed lists.
    let t = setup_with(|c| c.thin_provisioning = false);
    t.check(
        &unmap_cdb(l.len()),
        &l,
        sense::INVALID_COMMAND_OPERATION_CODE,
    );
    t.check(
        &cdb16(0x9e, 0x12, 0, 24),
        &[],
        sense::INVALID_COMMAND_OPERATION_CODE,
    );
}

fn caw(lba: u64, n: u8, fua: bool) -> Vec<u8> {
    let mut c = cdb16(0x89, if fua { 0x08 } else { 0 }, lba, 0);
    c[10..14].fill(0);
    c[13] = n;
    c
}

#[test]
fn compare_and_write() {
    let t = setup();
    let old = pattern(2, 1);
    let new = pattern(2, 2);
    t.ok(&cdb10(0x2a, 0, 100, 2), &old);
    let mut out = old.clone();
    out.extend(&new);
    t.ok(&caw(100, 2, true), &out);
    assert_eq!(t.mem.snapshot(100 * BS, 2 * BS), new);
    assert_eq!(t.mem.fua_write_count(), 1);
    // Now the verify data no longer matches: MISCOMPARE at the first byte.
    let s = t.check(&caw(100, 2, false), &out, sense::MISCOMPARE_DURING_VERIFY);
    assert_eq!(s.information(), Some(0));
    let mut out2 = new.clone();
    out2[700] ^= 0x80;
    out2.extend(&old);
    let s = t.check(&caw(100, 2, false), &out2, sense::MISCOMPARE_DURING_VERIFY);
    assert_eq!(s.information(), Some(700));
    assert_eq!(t.mem.snapshot(100 * BS, 2 * BS), new);
    // The data-out must be exactly 2 x NUMBER OF LOGICAL BLOCKS: a CAW of
    // one block carrying two blocks' worth is refused, nothing compared.
    let mut long = new[..BS].to_vec();
    long.extend(&old);
    t.check_field(
        &caw(100, 1, false),
        &long,
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(13),
    );
    // NUMBER OF LOGICAL BLOCKS 0 with data: the field is what is wrong.
    t.check_field(
        &caw(100, 0, false),
        &long,
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(13),
    );
    assert_eq!(t.mem.snapshot(100 * BS, 2 * BS), new);
    // Errors.
    t.ok(&caw(100, 0, false), &[]);
    t.check_field(
        &caw(0, 17, false),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(13),
    );
    t.check(
        &caw(BLOCKS as u64 - 1, 2, false),
        &out,
        sense::LBA_OUT_OF_RANGE,
    );
    t.check_field(
        &caw(100, 2, false),
        &out[..3 * BS],
        sense::INVALID_FIELD_IN_CDB,
        FieldPointer::cdb_byte(13),
    );
    let mut reserved = caw(100, 2, false);
    reserved[10] = 1;
    t.check_field(&reserved, &out, sense::INVALID_FIELD_IN_CDB, fp(10, 0));
}

#[test]
fn compare_and_write_is_atomic() {
    // Each thread increments a counter in block 0 by read + COMPARE AND
    // WRITE, retrying on MISCOMPARE; lost updates would show as a short
    // count. Plain writes to a neighbouring block run concurrently.
    let t = Arc::new(setup());
    let threads = 4;
    let per = 50;
    let mut hs = Vec::new();
    for k in 0..threads {
        let t = t.clone();
        hs.push(std::thread::spawn(move || {
            let mut done = 0;
            while done < per {
                let cur = t.ok(&cdb10(0x28, 0, 0, 1), &[]);
                let v = u64::from_be_bytes(cur[..8].try_into().unwrap());
                let mut out = cur.clone();
                let mut next = cur.clone();
                next[..8].copy_from_slice(&(v + 1).to_be_bytes());
                out.extend(&next);
                let (r, _) = t.run(&caw(0, 1, false), &out);
                if r.status == status::GOOD {
                    done += 1;
                } else {
                    assert_eq!(r.sense.unwrap().code(), sense::MISCOMPARE_DURING_VERIFY);
                }
                t.ok(&cdb10(0x2a, 0, 1, 1), &pattern(1, k));
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    let cur = t.ok(&cdb10(0x28, 0, 0, 1), &[]);
    assert_eq!(
        u64::from_be_bytes(cur[..8].try_into().unwrap()),
        (threads * per) as u64
    );
}

#[derive(Debug, Default)]
struct CountingHook {
    entered: AtomicU64,
    refuse: std::sync::atomic::AtomicBool,
}

impl CawHook for CountingHook {
    fn enter(&self, _: Lba, blocks: Blocks) -> Result<Box<dyn Send>, HookRefusal> {
        assert!(blocks.0 > 0);
        if self.refuse.load(Ordering::SeqCst) {
            return Err(HookRefusal::Busy);
        }
        self.entered.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(()))
    }
}

#[test]
fn compare_and_write_hook() {
    let mut t = setup();
    let hook = Arc::new(CountingHook::default());
    t.lu.set_caw_hook(hook.clone());
    let out = vec![0u8; 2 * BS];
    t.ok(&caw(5, 1, false), &out);
    assert_eq!(hook.entered.load(Ordering::SeqCst), 1);
    hook.refuse.store(true, Ordering::SeqCst);
    let (r, _) = t.run(&caw(5, 1, false), &out);
    assert_eq!((r.status, r.sense), (status::BUSY, None));
}

fn rsoc(ro: u8, rctd: bool, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![
        0xa3,
        0x0c,
        ro | if rctd { 0x80 } else { 0 },
        op,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn report_supported_opcodes_all() {
    let t = setup();
    let d = t.ok(&rsoc(0, false, 0, 0, 65535), &[]);
    assert_eq!(
        u32::from_be_bytes(d[..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    let listed: Vec<(u8, u16)> = descs
        .iter()
        .map(|c| (c[0], u16::from_be_bytes([c[2], c[3]])))
        .collect();
    assert!(listed.contains(&(0x28, 0)));
    assert!(listed.contains(&(0x42, 0)));
    assert!(listed.contains(&(0xa0, 0))); // REPORT LUNS, served by the kernel
    assert!(listed.contains(&(0x9e, 0x10)));
    assert!(!listed.iter().any(|&(op, _)| op == 0x5e || op == 0x16));
    for c in &descs {
        let info = opcode::OPCODES
            .iter()
            .find(|o| {
                o.opcode == c[0]
                    && u16::from(o.service_action.unwrap_or(0)) == u16::from_be_bytes([c[2], c[3]])
            })
            .unwrap();
        assert_eq!(c[5] & 1, u8::from(info.service_action.is_some()));
        assert_eq!(
            usize::from(u16::from_be_bytes([c[6], c[7]])),
            info.cdb_len()
        );
    }
    // RCTD: each descriptor is followed by a 12-byte timeouts descriptor.
    let d2 = t.ok(&rsoc(0, true, 0, 0, 65535), &[]);
    assert_eq!((d2.len() - 4) / 20, descs.len());
    assert_eq!(d2[4 + 5] & 0x02, 0x02);
    assert_eq!(&d2[12..14], &[0, 0x0a]);
    assert_eq!(&d2[20..24], &30u32.to_be_bytes());
    // Truncation.
    assert_eq!(t.ok(&rsoc(0, false, 0, 0, 10), &[]), d[..10]);
    // Without LBP, UNMAP is not listed; with PR reporting, PR is.
    let t2 = setup_with(|c| {
        c.thin_provisioning = false;
        c.report_pr_commands = true;
    });
    let d = t2.ok(&rsoc(0, false, 0, 0, 65535), &[]);
    let ops: Vec<u8> = d[4..].chunks(8).map(|c| c[0]).collect();
    assert!(!ops.contains(&0x42));
    assert!(
        ops.contains(&0x5e) && ops.contains(&0x5f) && ops.contains(&0x16) && ops.contains(&0x57)
    );
}

#[test]
fn report_supported_opcodes_one() {
    let t = setup();
    let d = t.ok(&rsoc(1, false, 0x28, 0, 100), &[]);
    assert_eq!(d[1] & 7, 3);
    assert_eq!(&d[2..4], &[0, 10]);
    assert_eq!(
        &d[4..],
        &[0x28, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]
    );
    // RCTD appends timeouts and sets CTDP.
    let d = t.ok(&rsoc(1, true, 0x28, 0, 100), &[]);
    assert_eq!(d[1], 0x83);
    assert_eq!(d.len(), 4 + 10 + 12);
    // Service-action commands need options 2 (or 3).
    t.check_field(
        &rsoc(1, false, 0x9e, 0x10, 100),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(2, 2),
    );
    let d = t.ok(&rsoc(2, false, 0x9e, 0x10, 100), &[]);
    assert_eq!(d[1] & 7, 3);
    assert_eq!(&d[4..6], &[0x9e, 0x10]);
    assert_eq!(t.ok(&rsoc(3, false, 0x9e, 0x10, 100), &[]), d);
    assert_eq!(t.ok(&rsoc(2, false, 0x9e, 0x11, 100), &[])[1] & 7, 1);
    t.check_field(
        &rsoc(2, false, 0x28, 0, 100),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(2, 2),
    );
    assert_eq!(t.ok(&rsoc(3, false, 0x28, 0, 100), &[])[1] & 7, 3);
    // Unsupported or caller-owned (not reported) commands.
    assert_eq!(t.ok(&rsoc(1, false, 0xff, 0, 100), &[]), [0, 1, 0, 0]);
    assert_eq!(t.ok(&rsoc(2, false, 0x5e, 0, 100), &[]), [0, 1, 0, 0]);
    t.check_field(
        &rsoc(4, false, 0x28, 0, 100),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(2, 2),
    );
    // The usage map agrees with what the parser accepts: every bit the map
    // marks unused is refused.
    for o in opcode::OPCODES.iter().filter(|o| o.parse.is_some()) {
        for (byte, &mask) in o.usage.iter().enumerate().skip(1) {
            let mask = if byte == 1 && o.service_action.is_some() {
                mask | 0x1f
            } else {
                mask
            };
            for bit in 0..8u8 {
                if mask & (1 << bit) != 0 {
                    continue;
                }
                let mut cdb = o.usage.to_vec();
                cdb.iter_mut().skip(2).for_each(|b| *b = 0);
                if o.service_action.is_none() {
                    cdb[1] = 0;
                }
                cdb[byte] |= 1 << bit;
                let (r, _) = t.run(&cdb, &[]);
                let s = r
                    .sense
                    .unwrap_or_else(|| panic!("{} byte {byte} bit {bit}", o.name));
                assert_eq!(s.code(), sense::INVALID_FIELD_IN_CDB, "{}", o.name);
                assert_eq!(s.field_pointer(), Some(fp(byte as u16, bit)), "{}", o.name);
            }
        }
    }
}

#[test]
fn allocation_length_truncation_everywhere() {
    let t = setup();
    t.ok(&cdb16(0x93, 0, 0, 8), &pattern(1, 1));
    // (CDB builder taking an allocation length, its maximum.) GET LBA
    // STATUS is not here: it returns as many descriptors as fit.
    type Build = Box<dyn Fn(u32) -> Vec<u8>>;
    let cases: Vec<(Build, u32)> = vec![
        (
            Box::new(|a| vec![0x12, 0, 0, (a >> 8) as u8, a as u8, 0]),
            0xffff,
        ),
        (
            Box::new(|a| vec![0x12, 1, 0x83, (a >> 8) as u8, a as u8, 0]),
            0xffff,
        ),
        (
            Box::new(|a| vec![0x12, 1, 0xb0, (a >> 8) as u8, a as u8, 0]),
            0xffff,
        ),
        (Box::new(|a| vec![0x03, 0, 0, 0, a as u8, 0]), 0xff),
        (Box::new(|a| vec![0x1a, 0, 0x3f, 0, a as u8, 0]), 0xff),
        (
            Box::new(|a| cdb10(0x5a, 0x10, 0x3f00_0000, a as u16)),
            0xffff,
        ),
        (Box::new(|a| cdb16(0x9e, 0x10, 0, a)), u32::MAX),
        (Box::new(|a| rsoc(0, true, 0, 0, a)), u32::MAX),
        (Box::new(|a| rsoc(1, true, 0x8a, 0, a)), u32::MAX),
    ];
    for (build, max) in &cases {
        let full = t.ok(&build(*max), &[]);
        assert!(!full.is_empty());
        for alloc in [0u32, 1, 2, 3, 4, 5, 7, 8, 13, 36, 64, 255] {
            let alloc = alloc.min(*max);
            let d = t.ok(&build(alloc), &[]);
            assert_eq!(
                d.len(),
                (alloc as usize).min(full.len()),
                "{:02x?}",
                build(alloc)
            );
            assert_eq!(d, full[..d.len()]);
            // And the buffer bounds it too.
            for buf in [0usize, 1, 6, 20] {
                let (r, d) = t.run_in(&build(alloc), &[], buf);
                assert_eq!(r.status, status::GOOD);
                assert_eq!(d.len(), (alloc as usize).min(full.len()).min(buf));
                assert_eq!(d, full[..d.len()]);
            }
        }
    }
}

#[test]
fn extent_default_reports_mapped() {
    let z = ZeroBacking(4096);
    assert_eq!(
        z.extent(1024).unwrap(),
        Extent {
            mapped: true,
            len: 3072
        }
    );
}

#[test]
fn config_validation() {
    let mem: Arc<dyn Backing> = Arc::new(MemBacking::new(4096, 512));
    for bs in [0, 256, 1000, 131072] {
        assert_eq!(
            Lu::new(LuConfig::new(bs, identity()), mem.clone()).unwrap_err(),
            ConfigError::BlockSize(bs)
        );
    }
    let mut id = identity();
    id.vendor = "TOO-LONG-VENDOR".into();
    assert!(matches!(
        Lu::new(LuConfig::new(512, id), mem.clone()),
        Err(ConfigError::BadString {
            field: "vendor",
            ..
        })
    ));
    let mut id = identity();
    id.serial = "x".repeat(248);
    assert!(matches!(
        Lu::new(LuConfig::new(512, id.clone()), mem.clone()),
        Err(ConfigError::BadString {
            field: "serial",
            ..
        })
    ));
    // The longest serial still yields a well-formed VPD 0x83.
    id.serial.pop();
    let t = T {
        lu: Lu::new(LuConfig::new(512, id), Arc::new(MemBacking::new(4096, 512))).unwrap(),
        mem: Arc::new(MemBacking::new(0, 512)),
        port: TargetPort::default(),
    };
    let ds = designators(&vpd(&t, 0x83));
    assert_eq!(ds[1].2.len(), 255);
    assert_eq!(NaaId::new(&[0x60; 8]).unwrap_err(), ConfigError::BadNaa);
    assert_eq!(NaaId::new(&[0x50; 16]).unwrap_err(), ConfigError::BadNaa);
    assert!(NaaId::new(&[0x50; 8]).is_ok());
}

#[test]
fn lu_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Lu>();
}

#[test]
fn or_write() {
    let t = setup();
    let a = pattern(3, 1);
    t.ok(&cdb10(0x2a, 0, 100, 3), &a);
    let b = pattern(3, 77);
    t.ok(&cdb16(0x8b, 0, 100, 3), &b);
    let want: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x | y).collect();
    assert_eq!(t.mem.snapshot(100 * BS, 3 * BS), want);
    // Neighbours untouched; zero blocks is no transfer and GOOD.
    assert_eq!(t.mem.snapshot(103 * BS, BS), vec![0; BS]);
    t.ok(&cdb16(0x8b, 0, 0, 0), &[]);
    // DPO/FUA accepted; ORPROTECT without protection information is not.
    t.ok(&cdb16(0x8b, 0x18, 100, 1), &b[..BS]);
    t.check_field(
        &cdb16(0x8b, 0x20, 100, 1),
        &b[..BS],
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 5),
    );
    t.check(
        &cdb16(0x8b, 0, BLOCKS as u64 - 1, 2),
        &pattern(2, 3),
        sense::LBA_OUT_OF_RANGE,
    );
    t.check(
        &cdb16(0x8b, 0, 0, 2),
        &pattern(1, 3),
        sense::INVALID_FIELD_IN_COMMAND_IU,
    );
    let ro = setup_with(|c| c.read_only = true);
    ro.check(&cdb16(0x8b, 0, 0, 1), &b[..BS], sense::WRITE_PROTECTED);
    // WRITE SAME on a write-protected LU: WRITE PROTECTED even with the
    // UNMAP bit on an LU without provisioning.
    let ro = setup_with(|c| {
        c.read_only = true;
        c.thin_provisioning = false;
    });
    ro.check(&cdb10(0x41, 0x08, 0, 1), &b[..BS], sense::WRITE_PROTECTED);
    ro.check(&cdb16(0x93, 0x08, 0, 1), &b[..BS], sense::WRITE_PROTECTED);
    // A write-protected thin LU still offers UNMAP, and refuses it.
    let ro = setup_with(|c| c.read_only = true);
    let mut l = vec![0u8; 24];
    l[0..2].copy_from_slice(&22u16.to_be_bytes());
    l[2..4].copy_from_slice(&16u16.to_be_bytes());
    l[8..16].copy_from_slice(&1u64.to_be_bytes());
    l[16..20].copy_from_slice(&1u32.to_be_bytes());
    let mut unmap = vec![0x42u8, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    ro.check(&unmap, &l, sense::WRITE_PROTECTED);
    unmap[8] = 0;
    ro.check(&unmap, &[], sense::WRITE_PROTECTED);
}

#[test]
fn or_write_is_atomic_against_compare_and_write() {
    // ORWRITE takes the same exclusive range as COMPARE AND WRITE: a CAW
    // expecting the pre-OR data must never succeed after the OR landed.
    let t = Arc::new(setup());
    t.ok(&cdb10(0x2a, 0, 5, 1), &vec![0u8; BS]);
    let mut caw_data = vec![0u8; BS];
    caw_data.extend(vec![0x80u8; BS]);
    let t2 = t.clone();
    let h = std::thread::spawn(move || {
        for _ in 0..200 {
            t2.run(&cdb16(0x8b, 0, 5, 1), &vec![0x01u8; BS]);
        }
    });
    for _ in 0..200 {
        let _ = t.run(&caw(5, 1, false), &caw_data);
    }
    h.join().unwrap();
    let got = t.mem.snapshot(5 * BS, BS);
    // Every byte saw the same history: all equal, and bit 0 set (the OR
    // ran at least once after any CAW).
    assert!(got.iter().all(|&x| x == got[0]), "{got:02x?}");
    assert_eq!(got[0] & 0x01, 0x01);
}

#[test]
fn pre_fetch() {
    let t = setup();
    t.ok(&cdb10(0x34, 0, 0, 256), &[]);
    t.ok(&cdb10(0x34, 0x02, BLOCKS as u32 - 1, 1), &[]); // IMMED
    t.ok(&cdb16(0x90, 0, 0, BLOCKS as u32), &[]);
    let mut grp = cdb10(0x34, 0, 0, 1);
    grp[6] = 3; // group number
    t.ok(&grp, &[]);
    t.ok(&cdb10(0x34, 0, 10, 0), &[]); // zero: to the end
    t.check(
        &cdb10(0x34, 0, BLOCKS as u32 - 1, 2),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
    t.check(&cdb16(0x90, 0, u64::MAX, 1), &[], sense::LBA_OUT_OF_RANGE);
    t.check(
        &cdb10(0x34, 0, BLOCKS as u32 + 1, 0),
        &[],
        sense::LBA_OUT_OF_RANGE,
    );
    t.check_field(
        &cdb10(0x34, 0x01, 0, 1),
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(1, 0),
    );
}

#[test]
fn read_defect_data() {
    let t = setup();
    let d = t.ok(&[0x37, 0, 0x18 | 5, 0, 0, 0, 0, 0, 32, 0], &[]);
    assert_eq!(d, vec![0, 0x18 | 5, 0, 0]);
    let d = t.ok(&[0xb7, 0x10 | 4, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]);
    assert_eq!(d, vec![0, 0x10 | 4, 0, 0, 0, 0, 0, 0]);
    // Allocation length truncates.
    let d = t.ok(&[0x37, 0, 0, 0, 0, 0, 0, 0, 2, 0], &[]);
    assert_eq!(d.len(), 2);
    t.check_field(
        &[0x37, 0, 0x20, 0, 0, 0, 0, 0, 4, 0],
        &[],
        sense::INVALID_FIELD_IN_CDB,
        fp(2, 5),
    );
}
