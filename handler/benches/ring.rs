//! Ring engine: commands submitted by the simulated 6.1 kernel, polled,
//! completed out of order and published with one flush per batch.
//!
//! Two numbers per batch size: `ring_side` times only what the daemon does
//! (poll + complete + flush); `round_trip` adds the simulator's own work
//! (laying out entries, consuming completions), which is test code.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tcmu_prd::ring::sim::{Dir, SimKernel};
use tcmu_prd::ring::{Event, InFlightCmd, Response, Ring};

const READ_10_4K: [u8; 10] = [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0];
const BLK: usize = 4096;

fn setup(batch: usize) -> (SimKernel, Ring) {
    // 1 MiB ring: room for a batch of 128 entries with PADs at the wrap.
    let kernel = SimKernel::new(1 << 20, batch, BLK);
    let ring = kernel.ring();
    (kernel, ring)
}

fn submit(kernel: &mut SimKernel, batch: usize) {
    for _ in 0..batch {
        kernel
            .submit(&READ_10_4K, Dir::FromDevice(BLK))
            .expect("room for the batch");
    }
}

/// Poll everything, complete newest first (out of order), flush once.
fn serve(ring: &mut Ring, cmds: &mut Vec<InFlightCmd>, rsp: &Response) {
    while let Some(ev) = ring.poll() {
        match ev {
            Ok(Event::Command(c)) => cmds.push(c),
            other => panic!("unexpected ring event {other:?}"),
        }
    }
    while let Some(c) = cmds.pop() {
        ring.complete(black_box(c), rsp).expect("in flight");
    }
    ring.flush().expect("sim doorbell");
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    let rsp = Response::good();
    for batch in [1usize, 32, 128] {
        g.throughput(Throughput::Elements(batch as u64));
        // Doorbell writes and batches over all of criterion's runs of a case.
        let (mut kicks, mut batches) = (0usize, 0usize);
        g.bench_with_input(BenchmarkId::new("ring_side", batch), &batch, |b, &n| {
            let (mut kernel, mut ring) = setup(n);
            let mut cmds = Vec::with_capacity(n);
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    submit(&mut kernel, n);
                    let start = Instant::now();
                    serve(&mut ring, &mut cmds, &rsp);
                    t += start.elapsed();
                    assert_eq!(kernel.handle_completions(), n);
                    kernel.take_completions();
                }
                batches += usize::try_from(iters).unwrap_or(usize::MAX);
                t
            });
            kicks += kernel.kicks();
        });
        eprintln!(
            "ring_side/{batch}: {batches} batches, {kicks} doorbell writes ({:.3} per batch)",
            kicks as f64 / batches as f64
        );
        g.bench_with_input(BenchmarkId::new("round_trip", batch), &batch, |b, &n| {
            let (mut kernel, mut ring) = setup(n);
            let mut cmds = Vec::with_capacity(n);
            b.iter(|| {
                submit(&mut kernel, n);
                serve(&mut ring, &mut cmds, &rsp);
                let done = kernel.handle_completions();
                kernel.take_completions();
                done
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = ring
}
criterion_main!(benches);
