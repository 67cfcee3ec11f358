//! What the operations the hot path is built from cost on this machine, so that the figures
//! BENCHMARKS.md quotes for them can be measured again: the clock reads (the precise ones the
//! layer no longer makes per request, and the coarse one it does), and the atomic increment and
//! decrement pair that sharing a reference count costs a request.
//!
//! `cargo bench --bench primitives` (≈ 15 s): criterion's report, then a summary of medians
//! from an interleaved pass (15 rounds of 2 000 000 calls of each, each round starting one
//! primitive further on) and the step by which the coarse clock advances.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use lengow_auth::{SystemClock, WallClock};

type Primitive = (&'static str, fn());

fn system_time_now() {
    black_box(SystemTime::now());
}

fn tokio_instant_now() {
    black_box(tokio::time::Instant::now());
}

fn system_clock_now() {
    black_box(SystemClock.now());
}

fn arc_clone_and_drop() {
    thread_local! {
        static SHARED: Arc<u64> = Arc::new(0);
    }
    SHARED.with(|shared| drop(black_box(Arc::clone(shared))));
}

fn thread_local_access() {
    thread_local! {
        static LOCAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    LOCAL.with(|local| local.set(black_box(local.get() + 1)));
}

const PRIMITIVES: [Primitive; 5] = [
    ("SystemTime::now (precise wall clock)", system_time_now),
    ("tokio::time::Instant::now", tokio_instant_now),
    (
        "lengow_auth::SystemClock::now (coarse on Linux)",
        system_clock_now,
    ),
    ("Arc clone + drop (one thread)", arc_clone_and_drop),
    ("thread-local access (for scale)", thread_local_access),
];

const ROUNDS: usize = 15;
const CALLS: u32 = 2_000_000;

/// Medians of an interleaved pass, ns per call, in the order of `PRIMITIVES`.
fn interleaved() -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = PRIMITIVES.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for k in 0..PRIMITIVES.len() {
            let i = (round + k) % PRIMITIVES.len();
            let f = PRIMITIVES[i].1;
            let start = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            times[i].push(start.elapsed().as_nanos() as f64 / f64::from(CALLS));
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// The smallest step, over a few hundred changes, by which `SystemClock` moves forward.
fn coarse_step() -> Option<Duration> {
    let mut last = SystemClock.now();
    let mut smallest: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut steps = 0;
    while steps < 200 && Instant::now() < deadline {
        let now = SystemClock.now();
        if let Ok(step) = now.duration_since(last) {
            if !step.is_zero() {
                smallest = Some(smallest.map_or(step, |s| s.min(step)));
                steps += 1;
            }
        }
        last = now;
    }
    smallest
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut group = c.benchmark_group("primitives");
    for (name, f) in PRIMITIVES {
        group.bench_function(name, |b| b.iter(f));
    }
    group.finish();
    c.final_summary();

    println!("=== summary: median ns per call (interleaved pass) ===");
    for ((name, _), ns) in PRIMITIVES.iter().zip(interleaved()) {
        println!("  {name:<50} {ns:6.1} ns");
    }
    match coarse_step() {
        Some(step) => println!("  SystemClock advances in steps of {step:?}"),
        None => println!("  SystemClock did not advance within 2 s"),
    }
}
