//! The whole per-command path for a 4 KiB READ(10) on a `MemBacking` LU:
//! `scsi::Lu::execute` alone vs `View::execute` (unit attention check,
//! conflict check, emulation) without a reservation and with WERO and 100
//! registrants.

mod common;

use std::hint::black_box;
use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcmu_prd::backing::MemBacking;
use tcmu_prd::lu::state::{Identity, LuState};
use tcmu_prd::lu::{Lu, View};
use tcmu_prd::pr::{Nexus, PrState};
use tcmu_prd::scsi::{self, LuConfig, TargetPort};

/// READ(10), LBA 16, 8 blocks of 512 bytes.
const READ_10_4K: [u8; 10] = [0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0];
/// WRITE(10), LBA 16, 8 blocks of 512 bytes.
const WRITE_10_4K: [u8; 10] = [0x2a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0];
const LEN: usize = 4096;
const PORT: TargetPort = TargetPort {
    rtpi: common::RTPI,
    tpg: common::RTPI,
    protocol_id: Some(5),
};

fn view(dir: &std::path::Path, tag: &str, pr: PrState, nexus: Nexus) -> View {
    let id = Identity::from_random(&[7; 13]);
    let identity = id.lu_identity(None).expect("NAA 6");
    let backing = Arc::new(MemBacking::new(64 << 20, 4096));
    let scsi = scsi::Lu::new(LuConfig::new(512, identity), backing).expect("valid LU");
    let state = LuState {
        pr,
        ..LuState::new(id)
    };
    let lu = Lu::for_tests(scsi, state, &dir.join(tag)).expect("state store");
    let v = View::new(Arc::new(lu), tag.into(), PathBuf::new(), PathBuf::new());
    v.set_nexus_for_tests(nexus, PORT);
    v
}

fn path(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = view(dir.path(), "none", PrState::default(), common::initiator(0));
    let holder = view(
        dir.path(),
        "holder",
        common::wero(100),
        common::initiator(99),
    );
    let registered = view(
        dir.path(),
        "registered",
        common::wero(100),
        common::initiator(50),
    );
    // Write Exclusive family: reads stay open to an unregistered initiator.
    let stranger = view(
        dir.path(),
        "stranger",
        common::wero(100),
        common::stranger(),
    );
    let mut buf = vec![0u8; LEN];
    let mut g = c.benchmark_group("read10_4k");
    g.throughput(Throughput::Bytes(LEN as u64));

    let lu = plain.lu().scsi();
    g.bench_function("scsi_lu", |b| {
        b.iter(|| {
            let mut din = [IoSliceMut::new(&mut buf)];
            let r = lu.execute(&PORT, black_box(&READ_10_4K), &[], &mut din);
            assert_eq!(r.data_in_len, LEN);
        });
    });
    for (name, v) in [
        ("view/none", &plain),
        ("view/wero100/holder", &holder),
        ("view/wero100/registered", &registered),
        ("view/wero100/unregistered", &stranger),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut din = [IoSliceMut::new(&mut buf)];
                let r = v.execute(black_box(&READ_10_4K), &[], &mut din);
                assert_eq!(r.data_in_len, LEN);
            });
        });
    }
    g.finish();

    // WRITE(10) of the same 4 KiB: allowed to the holder and every
    // registrant under WERO, as to anyone without a reservation.
    let data = vec![0x5au8; LEN];
    let mut g = c.benchmark_group("write10_4k");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("scsi_lu", |b| {
        b.iter(|| {
            let dout = [IoSlice::new(&data)];
            let r = lu.execute(&PORT, black_box(&WRITE_10_4K), &dout, &mut []);
            assert_eq!(r.status, 0);
        });
    });
    for (name, v) in [
        ("view/none", &plain),
        ("view/wero100/holder", &holder),
        ("view/wero100/registered", &registered),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let dout = [IoSlice::new(&data)];
                let r = v.execute(black_box(&WRITE_10_4K), &dout, &mut []);
                assert_eq!(r.status, 0);
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = path
}
criterion_main!(benches);
