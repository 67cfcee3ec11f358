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

/// The system's wall clock: [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The wall clock a layer was built with.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn WallClock>);

impl Clock {
    pub(crate) fn new(clock: impl WallClock) -> Self {
        Self(Arc::new(clock))
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.0.now()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(SystemClock)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WallClock")
    }
}
