//! Tokens: the credentials, the `get_token` call, the token as the layer holds it, the
//! shared cache with its refresher and, with a store, the fleet's agreement on one token.

mod cache;
mod clock;
mod credentials;
mod fetch;
#[cfg(feature = "redis")]
mod fleet;
mod response;
#[cfg(feature = "redis")]
mod seal;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tokio::time::Instant;

pub(crate) use cache::{Cache, CacheConfig, Outcome};
pub(crate) use clock::Clock;
pub use clock::{SystemClock, WallClock};
pub use credentials::Credentials;
pub(crate) use fetch::Fetcher;
#[cfg(feature = "redis")]
pub(crate) use fleet::{Failure, Fleet, FleetConfig, Want};
pub(crate) use response::TokenAnswer;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Prints `** redacted **` in place of a secret.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

/// A token the layer holds, with the header value it is sent as. The token's text lives
/// only in `header`, which is dropped with the token once a newer one replaces it.
pub(crate) struct Token {
    /// `Authorization` value: the raw token (or `Bearer <token>`), marked sensitive.
    pub(crate) header: HeaderValue,
    pub(crate) account_id: u64,
    pub(crate) user_id: Option<u64>,
    /// Counts the tokens this layer (or its fleet) has held; a rejection names the
    /// generation it rejected.
    pub(crate) generation: u64,
    usable_until: Instant,
    wall_usable_until: SystemTime,
    refresh_at: Instant,
    /// Fetched because the token before it was rejected.
    forced: bool,
    /// The API has accepted this token at least once.
    proven: AtomicBool,
}

/// When a token was asked for, by both clocks.
#[derive(Clone, Copy)]
pub(crate) struct Asked {
    pub(crate) at: Instant,
    pub(crate) wall: SystemTime,
}

impl Token {
    /// A token asked for at `asked` with `life` left, usable until a safety margin before
    /// that, to be refreshed `refresh_ahead` (less up to 10% jitter) before its end.
    pub(crate) fn new(
        header: HeaderValue,
        answer: &TokenAnswer,
        generation: u64,
        asked: Asked,
        life: Duration,
        refresh_ahead: Duration,
        forced: bool,
    ) -> Self {
        // A request sent just before expiry must not arrive after it.
        let margin = (life / 20).min(Duration::from_secs(30));
        let usable = life - margin;
        let jitter = refresh_ahead.mul_f64(0.1 * fastrand::f64());
        let refresh_after = life
            .saturating_sub(refresh_ahead)
            .saturating_sub(jitter)
            .min(usable);
        Self {
            header,
            account_id: answer.account_id,
            user_id: answer.user_id,
            generation,
            usable_until: asked.at + usable,
            wall_usable_until: asked.wall + usable,
            refresh_at: asked.at + refresh_after,
            forced,
            proven: AtomicBool::new(false),
        }
    }

    /// Whether the token may still be sent: both tokio's clock (which tests pause) and the
    /// wall clock (which runs on while the machine sleeps) must say so.
    fn is_usable(&self, wall: &Clock) -> bool {
        Instant::now() < self.usable_until && wall.now() < self.wall_usable_until
    }

    /// A token fetched after a rejection that the API has not accepted yet.
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

/// The `Authorization` value for `token`: raw, or `Bearer <token>`; marked sensitive.
pub(crate) fn header_value(token: &str, bearer: bool) -> Option<HeaderValue> {
    let mut value = if bearer {
        HeaderValue::try_from(format!("Bearer {token}")).ok()?
    } else {
        HeaderValue::try_from(token).ok()?
    };
    value.set_sensitive(true);
    Some(value)
}
