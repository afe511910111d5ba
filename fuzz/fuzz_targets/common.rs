//! Shared set-up for the fuzz targets: a small in-memory LU whose
//! configuration comes from the first input byte, and a runner that splits
//! the data buffers where the input says and checks the response contract.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use tcmu_prd::backing::MemBacking;
use tcmu_prd::scsi::sense::status;
use tcmu_prd::scsi::{Lu, LuConfig, LuIdentity, NaaId, TargetPort};

pub fn lu(flags: u8) -> Lu {
    let bs = if flags & 1 != 0 { 4096 } else { 512 };
    let mem = Arc::new(MemBacking::new(64 * 4096, 4096));
    let identity = LuIdentity {
        naa: NaaId::new(&[0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
            .expect("valid NAA"),
        serial: "fuzz".into(),
        vendor: "LIO-ORG".into(),
        product: "dlmfile".into(),
        revision: "0.1".into(),
    };
    let mut cfg = LuConfig::new(bs, identity);
    cfg.thin_provisioning = flags & 2 != 0;
    cfg.write_cache = flags & 4 != 0;
    cfg.read_only = flags & 8 != 0;
    cfg.max_unmap_descriptors = 8;
    cfg.max_compare_write_len = 8;
    mem.set_read_only(flags & 16 != 0);
    Lu::new(cfg, mem).expect("valid config")
}

/// Execute with data-out `out` cut at `cut_out` and a data-in buffer of
/// `din_len` bytes cut at `cut_in`; assert the response contract.
pub fn run(lu: &Lu, cdb: &[u8], out: &[u8], cut_out: usize, din_len: usize, cut_in: usize) {
    let c = if out.is_empty() {
        0
    } else {
        cut_out % (out.len() + 1)
    };
    let (o1, o2) = out.split_at(c);
    let iov_out = [IoSlice::new(o1), IoSlice::new(o2)];
    let mut din = vec![0u8; din_len];
    let c = if din_len == 0 {
        0
    } else {
        cut_in % (din_len + 1)
    };
    let (a, b) = din.split_at_mut(c);
    let mut iov_in = [IoSliceMut::new(a), IoSliceMut::new(b)];
    let r = lu.execute(&TargetPort::default(), cdb, &iov_out, &mut iov_in);
    assert!(r.data_in_len <= din_len);
    assert_eq!(r.sense.is_some(), r.status == status::CHECK_CONDITION);
    assert!(matches!(
        r.status,
        status::GOOD | status::CHECK_CONDITION | status::BUSY
    ));
}
