//! The wall clock the layer judges expiry by, beside tokio's clock.
//! Injectable, so that a machine that slept through an expiry can be tested.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    match coarse_now() {
        Some((secs, nanos)) => SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
        // A clock set before 1970: the precise read handles it.
        None => SystemTime::now(),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn system_now() -> SystemTime {
    SystemTime::now()
}

/// The coarse real-time clock as seconds and nanoseconds since the Unix epoch; `None` before it.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn coarse_now() -> Option<(u64, u32)> {
    use rustix::time::{ClockId, clock_gettime};
    let now = clock_gettime(ClockId::RealtimeCoarse);
    match (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => Some((secs, nanos)),
        _ => None,
    }
}

/// A wall-clock reading as nanoseconds since the Unix epoch, the form the hot path compares:
/// two integers, where comparing `SystemTime`s (and making one from the kernel's reading)
/// costs overflow checks. Saturates at the epoch before it and in the year 2554 after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WallTime(u64);

impl WallTime {
    pub(crate) fn from_system(time: SystemTime) -> Self {
        let since_epoch = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    #[inline]
    fn from_parts(secs: u64, nanos: u32) -> Self {
        Self(
            secs.saturating_mul(1_000_000_000)
                .saturating_add(u64::from(nanos)),
        )
    }

    pub(crate) fn saturating_add(self, duration: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
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

    /// The current time as the hot path compares it.
    #[inline(always)]
    pub(crate) fn wall(&self) -> WallTime {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Clock::System = self {
            if let Some((secs, nanos)) = coarse_now() {
                return WallTime::from_parts(secs, nanos);
            }
        }
        WallTime::from_system(self.now())
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
        assert!(gap < Duration::from_secs(1), "{gap:?}");
    }

    #[test]
    fn wall_times_order_as_the_system_times_they_come_from() {
        let epoch = SystemTime::UNIX_EPOCH;
        let at = |secs: u64, nanos: u32| WallTime::from_system(epoch + Duration::new(secs, nanos));
        assert_eq!(at(1_700_000_000, 5), WallTime::from_parts(1_700_000_000, 5));
        assert!(at(1_700_000_000, 999_999_999) < at(1_700_000_001, 0));
        assert_eq!(
            at(10, 0).saturating_add(Duration::from_millis(1500)),
            at(11, 500_000_000)
        );
        // Before the epoch, and past what 64 bits of nanoseconds hold: saturated, not wrapped.
        assert_eq!(
            WallTime::from_system(epoch - Duration::from_secs(1)),
            at(0, 0)
        );
        let far = WallTime::from_system(epoch + Duration::from_secs(u64::MAX / 2));
        assert_eq!(far, WallTime(u64::MAX));
        assert_eq!(WallTime::from_parts(u64::MAX, 0), WallTime(u64::MAX));
        assert_eq!(far.saturating_add(Duration::from_secs(1)), far);
        // The system clock read both ways agrees within the coarse clock's tick.
        let clock = Clock::System;
        let (a, b) = (clock.wall(), WallTime::from_system(SystemTime::now()));
        assert!(a.0.abs_diff(b.0) < 1_000_000_000);
    }
}
