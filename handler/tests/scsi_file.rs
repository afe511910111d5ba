//! The SCSI emulation over real files: O_DIRECT vectored I/O into split
//! buffers, UNMAP visible as holes, read-only images write-protected.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use tcmu_prd::backing::iov::AlignedBuf;
use tcmu_prd::backing::{FileBacking, FileOptions};
use tcmu_prd::scsi::sense::{self, status};
use tcmu_prd::scsi::{Lu, LuConfig, LuIdentity, NaaId, Response, TargetPort};

fn identity() -> LuIdentity {
    LuIdentity {
        naa: NaaId::new(&[0x60, 0x01, 0x40, 0x5f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap(),
        serial: "file-test".into(),
        vendor: "LIO-ORG".into(),
        product: "dlmfile".into(),
        revision: "0.1".into(),
    }
}

fn image(len: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

fn lu_over(path: &std::path::Path, bs: u32, opts: &FileOptions) -> Lu {
    let b = FileBacking::open(path, opts).unwrap();
    let mut cfg = LuConfig::new(bs, identity());
    cfg.hw_max_sectors = 1024;
    Lu::new(cfg, Arc::new(b)).unwrap()
}

fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
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

fn exec(lu: &Lu, cdb: &[u8], out: &[IoSlice<'_>], din: &mut [IoSliceMut<'_>]) -> Response {
    lu.execute(&TargetPort::default(), cdb, out, din)
}

#[test]
fn direct_io_with_ring_like_and_unaligned_buffers() {
    let img = image(1 << 20);
    for bs in [512u32, 4096] {
        let lu = lu_over(img.path(), bs, &FileOptions::default());
        // Page-aligned segments, as the TCMU data area provides: no bounce.
        let mut a = AlignedBuf::zeroed(4096, 4096);
        let mut b = AlignedBuf::zeroed(8192, 4096);
        a.as_mut_slice().fill(0x11);
        b.as_mut_slice().fill(0x22);
        let blocks = u16::try_from(12288 / bs).unwrap();
        let r = exec(
            &lu,
            &cdb10(0x2a, 0x08, 0, blocks),
            &[IoSlice::new(a.as_slice()), IoSlice::new(b.as_slice())],
            &mut [],
        );
        assert_eq!(r.status, status::GOOD, "{r:?}");
        let on_disk = std::fs::read(img.path()).unwrap();
        assert!(on_disk[..4096].iter().all(|&x| x == 0x11));
        assert!(on_disk[4096..12288].iter().all(|&x| x == 0x22));
        // Unaligned, odd segments (bounce path) read back the same bytes.
        let mut r1 = vec![0u8; 100];
        let mut r2 = vec![0u8; 12288 - 100];
        let r = exec(
            &lu,
            &cdb10(0x28, 0, 0, blocks),
            &[],
            &mut [IoSliceMut::new(&mut r1), IoSliceMut::new(&mut r2)],
        );
        assert_eq!((r.status, r.data_in_len), (status::GOOD, 12288));
        r1.extend(r2);
        assert_eq!(r1, on_disk[..12288]);
        // A short data-in buffer (underflow) gets what fits, through the
        // O_DIRECT bounce path.
        let mut short = vec![0u8; 700];
        let r = exec(
            &lu,
            &cdb10(0x28, 0, 0, blocks),
            &[],
            &mut [IoSliceMut::new(&mut short)],
        );
        assert_eq!((r.status, r.data_in_len), (status::GOOD, 700));
        assert_eq!(short, on_disk[..700]);
        // VERIFY with byte check against the file contents.
        let r = exec(
            &lu,
            &cdb10(0x2f, 0x02, 0, blocks),
            &[IoSlice::new(&on_disk[..12288])],
            &mut [],
        );
        assert_eq!(r.status, status::GOOD);
        assert_eq!(
            exec(&lu, &cdb10(0x35, 0, 0, 0), &[], &mut []).status,
            status::GOOD
        );
        std::fs::write(img.path(), vec![0u8; 1 << 20]).unwrap();
    }
}

#[test]
fn unmap_punches_holes_and_get_lba_status_sees_them() {
    let img = image(0);
    std::fs::write(img.path(), vec![0xffu8; 1 << 20]).unwrap();
    let lu = lu_over(img.path(), 4096, &FileOptions::default());
    // UNMAP blocks 16..32 (64 KiB at 64 KiB).
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend(16u64.to_be_bytes());
    list.extend(16u32.to_be_bytes());
    list.extend([0; 4]);
    let r = exec(&lu, &cdb10(0x42, 0, 0, 24), &[IoSlice::new(&list)], &mut []);
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let e = lu.backing().extent(64 * 1024).unwrap();
    assert!(!e.mapped);
    assert_eq!(e.len, 64 * 1024);
    // WRITE SAME(16) UNMAP NDOB punches too.
    let r = exec(&lu, &cdb16(0x93, 0x09, 64, 8), &[], &mut []);
    assert_eq!(r.status, status::GOOD);
    let mut d = vec![0u8; 200];
    let r = exec(
        &lu,
        &cdb16(0x9e, 0x12, 0, 200),
        &[],
        &mut [IoSliceMut::new(&mut d)],
    );
    assert_eq!(r.status, status::GOOD);
    let descs: Vec<(u64, u32, u8)> = d[8..r.data_in_len]
        .chunks(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12],
            )
        })
        .collect();
    assert_eq!(
        descs,
        [
            (0, 16, 0),
            (16, 16, 1),
            (32, 32, 0),
            (64, 8, 1),
            (72, 184, 0)
        ]
    );
    let data = std::fs::read(img.path()).unwrap();
    assert!(data[64 * 1024..128 * 1024].iter().all(|&x| x == 0));
    assert!(data[128 * 1024..256 * 1024].iter().all(|&x| x == 0xff));
}

#[test]
fn read_only_image_is_write_protected() {
    let img = image(64 * 1024);
    let lu = lu_over(
        img.path(),
        512,
        &FileOptions {
            read_only: true,
            ..Default::default()
        },
    );
    let block = AlignedBuf::zeroed(512, 4096);
    let r = exec(
        &lu,
        &cdb10(0x2a, 0, 0, 1),
        &[IoSlice::new(block.as_slice())],
        &mut [],
    );
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(r.sense.unwrap().code(), sense::WRITE_PROTECTED);
    let mut d = [0u8; 64];
    let r = exec(
        &lu,
        &[0x1a, 0, 0x3f, 0, 64, 0],
        &[],
        &mut [IoSliceMut::new(&mut d)],
    );
    assert_eq!(r.status, status::GOOD);
    assert_eq!(d[2] & 0x80, 0x80);
    // Provisioning is a property of the medium; write protection refuses
    // UNMAP like any other change.
    assert!(lu.lbp());
    let r = exec(&lu, &[0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &mut []);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(r.sense.unwrap().code(), sense::WRITE_PROTECTED);
}

#[test]
fn dev_size_grows_only_when_asked() {
    let img = image(4096);
    assert!(
        FileBacking::open(
            img.path(),
            &FileOptions {
                size: Some(1 << 20),
                ..Default::default()
            }
        )
        .is_err()
    );
    let lu = lu_over(
        img.path(),
        512,
        &FileOptions {
            size: Some(1 << 20),
            grow: true,
            direct: false,
            ..Default::default()
        },
    );
    assert_eq!(lu.capacity().0, 2048);
    let mut d = [0u8; 8];
    let r = exec(
        &lu,
        &cdb10(0x25, 0, 0, 0),
        &[],
        &mut [IoSliceMut::new(&mut d)],
    );
    assert_eq!(r.data_in_len, 8);
    assert_eq!(&d[..4], &2047u32.to_be_bytes());
}
