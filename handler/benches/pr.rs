//! The per-command reservation conflict check (`pr::check_access`) for a
//! WRITE(10): no reservation vs WERO with 1 and 100 registrants, issued by
//! the holder, a registered non-holder and an unregistered initiator.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tcmu_prd::pr::{Access, Nexus, PrState, check_access};

const WRITE_10: [u8; 10] = [0x2a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0];

fn pr(c: &mut Criterion) {
    let none = PrState::default();
    let one = common::wero(1);
    let hundred = common::wero(100);
    let cases: [(&str, &PrState, Nexus, Access); 6] = [
        ("none", &none, common::initiator(0), Access::Allowed),
        ("wero1/holder", &one, common::initiator(0), Access::Allowed),
        (
            "wero1/unregistered",
            &one,
            common::stranger(),
            Access::Conflict,
        ),
        (
            "wero100/holder",
            &hundred,
            common::initiator(99),
            Access::Allowed,
        ),
        // Registrants Only: a registered non-holder may write.
        (
            "wero100/registered",
            &hundred,
            common::initiator(50),
            Access::Allowed,
        ),
        (
            "wero100/unregistered",
            &hundred,
            common::stranger(),
            Access::Conflict,
        ),
    ];
    let mut g = c.benchmark_group("check_access/write10");
    for (name, state, nexus, want) in cases {
        assert_eq!(check_access(state, &nexus, &WRITE_10), want, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| check_access(black_box(state), black_box(&nexus), black_box(&WRITE_10)));
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = pr
}
criterion_main!(benches);
