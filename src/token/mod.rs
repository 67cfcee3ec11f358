//! Tokens: the credentials, the `get_token` call, the shared cache and its refresher.
//! Everything that touches the auth service lives below this module.

mod cache;
mod clock;
mod credentials;
mod fetch;
mod header;
mod response;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::time::Instant;

pub(crate) use cache::{Cache, CacheConfig};
pub(crate) use clock::{Clock, WallTime};
pub use clock::{SystemClock, WallClock};
pub use credentials::Credentials;
pub(crate) use fetch::Fetcher;

/// Prints `** redacted **` in place of a secret.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

/// A token the layer holds, with the header value it is sent as.
pub(crate) struct Token {
    /// `Authorization` value: the raw token (or `Bearer <token>`), marked sensitive.
    pub(crate) header: HeaderValue,
    /// `header` is over static bytes (see `header.rs`): its clones share no count.
    pub(crate) static_header: bool,
    pub(crate) account_id: u64,
    pub(crate) user_id: Option<u64>,
    /// Counts tokens this layer has held; a rejection names the generation it rejected.
    pub(crate) generation: u64,
    usable_until: Instant,
    wall_usable_until: WallTime,
    refresh_at: Instant,
    /// Fetched because the token before it was rejected.
    forced: bool,
    /// The API has accepted this token at least once.
    proven: AtomicBool,
    /// Set once tokio's clock has passed `usable_until` (by the refresher's timer, or by the
    /// slow path), so the hot path reads a flag instead of the clock.
    expired: AtomicBool,
}

/// When a token was asked for, by both clocks.
#[derive(Clone, Copy)]
pub(crate) struct Asked {
    pub(crate) at: Instant,
    pub(crate) wall: WallTime,
}

impl Token {
    /// A token fetched at `asked`, usable until a safety margin before its assumed expiry,
    /// to be refreshed `refresh_ahead` (less up to 10% jitter) before that expiry.
    fn new(
        (header, static_header): (HeaderValue, bool),
        answer: &response::TokenAnswer,
        generation: u64,
        asked: Asked,
        config: &CacheConfig,
        forced: bool,
    ) -> Self {
        let lifetime = config.lifetime;
        // A request sent just before expiry must not arrive after it.
        let margin = (lifetime / 20).min(Duration::from_secs(30));
        let usable = lifetime - margin;
        let jitter = config.refresh_ahead.mul_f64(0.1 * fastrand::f64());
        let refresh_after = lifetime
            .saturating_sub(config.refresh_ahead)
            .saturating_sub(jitter)
            .min(usable);
        Self {
            header,
            static_header,
            account_id: answer.account_id,
            user_id: answer.user_id,
            generation,
            usable_until: asked.at + usable,
            wall_usable_until: asked.wall.saturating_add(usable),
            refresh_at: asked.at + refresh_after,
            forced,
            proven: AtomicBool::new(false),
            expired: AtomicBool::new(false),
        }
    }

    /// Whether the token may still be sent, by tokio's clock and by the wall clock; marks it
    /// expired when it may not.
    pub(crate) fn is_usable(&self, now: Instant, wall: WallTime) -> bool {
        let usable = now < self.usable_until && wall < self.wall_usable_until;
        if !usable {
            self.expire();
        }
        usable
    }

    /// The hot path's check: the expiry flag (tokio's clock, set by a timer) and the wall
    /// clock (which, unlike tokio's, runs on while the machine sleeps).
    #[inline]
    pub(crate) fn is_fresh(&self, wall: WallTime) -> bool {
        !self.expired.load(Ordering::Relaxed) && wall < self.wall_usable_until
    }

    pub(crate) fn expire(&self) {
        self.expired.store(true, Ordering::Relaxed);
    }

    /// When tokio's clock says the token may no longer be sent.
    pub(crate) fn usable_until(&self) -> Instant {
        self.usable_until
    }

    /// Records that the API accepted this token (cheap when already recorded).
    #[inline]
    pub(crate) fn mark_accepted(&self) {
        if self.forced && !self.proven.load(Ordering::Relaxed) {
            self.proven.store(true, Ordering::Relaxed);
        }
    }

    /// A forced token that the API has not yet accepted.
    #[inline]
    pub(crate) fn unproven_forced(&self) -> bool {
        self.forced && !self.proven.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &Redacted)
            .field("account_id", &self.account_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Where the current token lives: replaced after every fetch, read by every thread the first
/// time it sees a new generation.
///
/// This is the seam for a shared store (one token for a fleet behind one IP): the cache
/// reads and replaces the current token through these calls only.
pub(crate) struct TokenSlot {
    current: ArcSwapOption<Token>,
    /// The generation of the current token (0 before the first); threads compare it with
    /// their own copy's to know the copy is current, without touching a reference count.
    generation: AtomicU64,
}

impl TokenSlot {
    fn new() -> Self {
        Self {
            current: ArcSwapOption::const_empty(),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn load_full(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// The current token's generation.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn replace(&self, token: Arc<Token>) {
        let generation = token.generation;
        self.current.store(Some(token));
        self.generation.store(generation, Ordering::Release);
    }
}
