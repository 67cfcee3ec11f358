//! Counters of what the layer did, kept with relaxed atomics off every lock.
//! [`LengowAuthLayer::stats`](crate::LengowAuthLayer::stats) returns a [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of what a layer (and every service it wrapped) has done so far.
///
/// It serialises (with serde) to an object of the counters below, for a `/stats` endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// `get_token` calls made, whatever their outcome.
    pub fetches: u64,
    /// `get_token` calls that failed.
    pub fetch_failures: u64,
    /// Fetches started by the background refresher ahead of expiry.
    pub background_refreshes: u64,
    /// Fetches forced by the API rejecting the current token.
    pub forced_refreshes: u64,
    /// Requests sent a second time after a rejection.
    pub replays: u64,
    /// Rejected requests not replayed because their body was over `replay_body_limit`
    /// or could not be kept.
    pub replays_skipped: u64,
    /// Replayed requests that were rejected again; the caller got that rejection.
    pub rejected_after_replay: u64,
    /// Requests that found no usable token and waited for a fetch (or its cached failure).
    pub token_waits: u64,
    /// Rejections returned as they were because the floor between forced refreshes held
    /// and no newer token was at hand.
    pub rejected_within_floor: u64,
    /// Rejections returned as they were because no newer token could be fetched.
    pub rejected_without_token: u64,
    /// Rejections returned at once, on a route known to reject fresh tokens.
    pub rejected_on_known_routes: u64,
    /// Times a route was found rejecting a fresh token, and remembered.
    pub routes_learnt: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_failures: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) forced_refreshes: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) replays_skipped: AtomicU64,
    pub(crate) rejected_after_replay: AtomicU64,
    pub(crate) token_waits: AtomicU64,
    pub(crate) rejected_within_floor: AtomicU64,
    pub(crate) rejected_without_token: AtomicU64,
    pub(crate) rejected_on_known_routes: AtomicU64,
    pub(crate) routes_learnt: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            fetches: read(&self.fetches),
            fetch_failures: read(&self.fetch_failures),
            background_refreshes: read(&self.background_refreshes),
            forced_refreshes: read(&self.forced_refreshes),
            replays: read(&self.replays),
            replays_skipped: read(&self.replays_skipped),
            rejected_after_replay: read(&self.rejected_after_replay),
            token_waits: read(&self.token_waits),
            rejected_within_floor: read(&self.rejected_within_floor),
            rejected_without_token: read(&self.rejected_without_token),
            rejected_on_known_routes: read(&self.rejected_on_known_routes),
            routes_learnt: read(&self.routes_learnt),
        }
    }
}
