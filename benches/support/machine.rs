//! Watching the machine a bench runs on, shared by `benches/hot_path.rs` and
//! `benches/end_to_end.rs`: how busy other processes keep it (from /proc, Linux only), and how
//! long a cache line takes to pass between two threads.
//!
//! Included by path (`#[path = "support/machine.rs"] mod machine;`), not a crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// CPU ticks the whole machine spent busy, and those this process spent (Linux only).
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (which may hold spaces) comes field 3; utime and stime are 14, 15.
    let after_name = &own[own.rfind(')')? + 2..];
    let own: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = own.get(11)?.parse().ok()?;
    let stime: u64 = own.get(12)?.parse().ok()?;
    Some((busy, utime + stime))
}

/// When a stretch of work began: the time, and the [`cpu_ticks`] then.
pub type LoadStart = (Instant, Option<(u64, u64)>);

pub fn load_start() -> LoadStart {
    (Instant::now(), cpu_ticks())
}

/// The seconds since `start`, and the share of the machine (in percent) other processes kept
/// busy meanwhile; `None` where /proc cannot be read.
pub fn background_load(start: LoadStart) -> Option<(f64, f64)> {
    let (Some((busy0, own0)), Some((busy1, own1))) = (start.1, cpu_ticks()) else {
        return None;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // /proc/stat counts in USER_HZ, 100 per second on Linux.
    let seconds = start.0.elapsed().as_secs_f64();
    let capacity = seconds * 100.0 * cpus;
    let others = (busy1 - busy0).saturating_sub(own1 - own0) as f64;
    Some((seconds, 100.0 * others / capacity))
}

/// Prints the background load (from [`background_load`]) during `what`, with a warning when
/// it is high enough to skew the figures.
pub fn print_background_load(what: &str, load: f64) {
    let warning = if load > 10.0 {
        "  <- busy machine: rerun when quiet"
    } else {
        ""
    };
    println!("background load during {what}: {load:.0}% of the machine{warning}");
}

/// Round trips of the ball in one cache-line hand-off measure.
pub const HANDOFF_ROUND_TRIPS: u64 = 100_000;

/// One side (0 or 1) of a cache-line hand-off: waits for `ball` to come to it and passes it
/// back, `HANDOFF_ROUND_TRIPS` times; returns how long that took. Run both sides at once, on
/// two threads, and give the slower time to [`ns_per_handoff`].
pub fn handoff_side(ball: &AtomicU64, side: u64) -> Duration {
    let start = Instant::now();
    for i in 0..HANDOFF_ROUND_TRIPS {
        let mine = 2 * i + side;
        while ball.load(Ordering::Acquire) != mine {
            std::hint::spin_loop();
        }
        ball.store(mine + 1, Ordering::Release);
    }
    start.elapsed()
}

/// Nanoseconds per hand-off, from the slower side's [`handoff_side`] time.
pub fn ns_per_handoff(slowest: Duration) -> f64 {
    slowest.as_nanos() as f64 / (2 * HANDOFF_ROUND_TRIPS) as f64
}
