//! CDB parsing: the opcode table lookup and the CDB parser, as
//! `scsi::Lu::execute` runs them for every command.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tcmu_prd::scsi::opcode::{lookup, parse};

fn cdb(c: &mut Criterion) {
    let cases: [(&str, &[u8]); 4] = [
        ("read10", &[0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]),
        (
            "write16",
            &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 8, 0, 0],
        ),
        ("inquiry", &[0x12, 0, 0, 0, 0xff, 0]),
        ("unknown", &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let mut g = c.benchmark_group("cdb");
    for (name, bytes) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                let cdb = black_box(bytes);
                lookup(cdb).and_then(|info| parse(info, cdb)).is_ok()
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = cdb
}
criterion_main!(benches);
