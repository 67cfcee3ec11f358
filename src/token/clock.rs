//! The wall clock the layer judges expiry by, beside tokio's clock.
//! Injectable, so that a machine that slept through an expiry can be tested.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A source of wall-clock time.
///
/// Expiry is judged on tokio's clock and on this one: tokio's clock can be paused in tests,
/// and the wall clock keeps running while a machine sleeps (tokio's does not). The default
/// is [`SystemClock`]; tests inject their own through
/// [`LengowAuthBuilder::wall_clock`](crate::LengowAuthBuilder::wall_clock).
pub trait WallClock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
///
/// Every request reads it, so it is read the cheapest way the platform offers: on Linux and
/// Android the kernel's coarse real-time clock (`CLOCK_REALTIME_COARSE`, about 5 ns a read
/// against about 22 ns for [`SystemTime::now`], accurate to the kernel's tick of 1 to 4 ms,
/// which is nothing beside a token's hour; `cargo bench --bench primitives` measures both);
/// elsewhere [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    #[inline]
    fn now(&self) -> SystemTime {
        system_now()
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn system_now() -> SystemTime {
    use rustix::time::{ClockId, clock_gettime};
    let now = clock_gettime(ClockId::RealtimeCoarse);
    match (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => {
            SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
        }
        // A clock set before 1970: the precise read handles it.
        _ => SystemTime::now(),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn system_now() -> SystemTime {
    SystemTime::now()
}

impl fmt::Debug for dyn WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WallClock")
    }
}

/// The clock a layer was built with: the system's is called directly, an injected one
/// through its vtable.
#[derive(Clone)]
pub(crate) enum Clock {
    System,
    Custom(Arc<dyn WallClock>),
}

impl Clock {
    #[inline]
    pub(crate) fn now(&self) -> SystemTime {
        match self {
            Clock::System => system_now(),
            Clock::Custom(clock) => clock.now(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clock::System => f.write_str("SystemClock"),
            Clock::Custom(_) => f.write_str("WallClock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_tells_the_time() {
        // The coarse clock trails the precise one by at most a tick (a few ms); a second is
        // a bound no scheduler hiccup reaches and no wrong epoch or unit passes.
        let precise = SystemTime::now();
        let coarse = SystemClock.now();
        let gap = match coarse.duration_since(precise) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        assert!(gap < std::time::Duration::from_secs(1), "{gap:?}");
    }
}
