//! The fleet's algorithm: who fetches (a lease), which token wins (generations), how long a
//! failure is served (a hold every process reads), and the fallback when the store fails.
//!
//! The cache calls [`Fleet::obtain`] where a layer alone would call `get_token`; only its
//! single fetch task does, so a process asks the store one thing at a time.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::seal::Sealer;
use super::{Credentials, TokenAnswer};
use crate::error::{Error, Kind};
use crate::store::{FailureRecord, Lease, Snapshot, StoreError, TokenStore};

/// The lease outlives the fetch timeout by this much: time to publish what was fetched.
const LEASE_SLACK: Duration = Duration::from_secs(2);
/// A failure record (and its count of failures in a row) outlives its hold by this much, so
/// that the next failure doubles the backoff instead of starting it over.
const STREAK_KEEP: Duration = Duration::from_secs(120);
/// How often a store that failed is probed, at most (jitter shortens it by up to half).
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// What the fleet is asked for, by the cache's one fetch task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A request found no usable token: any token with life left will do.
    Demand,
    /// The refresher, ahead of expiry of the fleet's token `current`: a token other than
    /// `current`, not itself due for refresh.
    Background { current: u64 },
    /// The API rejected the fleet's token `rejected`: any other token with life left, or a
    /// fetch if the fleet's floor between forced refreshes (`floor`) allows one.
    Forced { rejected: u64, floor: Duration },
}

/// A token the fleet agreed on.
#[derive(Debug)]
pub(crate) struct Obtained {
    pub(crate) answer: TokenAnswer,
    /// The fleet's generation of the token (0 for a token fetched alone, the store down).
    pub(crate) generation: u64,
    /// What is left of its life, from now, by the store's clock (a fresh fetch: the whole
    /// lifetime less the time the fetch took).
    pub(crate) remaining: Duration,
    /// This process made the `get_token` call.
    pub(crate) fetched_here: bool,
}

/// Why no token came back.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A fetch failed, here or in another process: every process serves `error` for `wait`.
    Fetch { error: Error, wait: Duration },
    /// A forced refresh was refused: the fleet's floor holds and no newer token exists.
    FloorHolds,
}

/// What the fleet gives the cache.
type Outcome = Result<Obtained, Failure>;

/// Where the fleet's way ends: with an answer, or with the lease to fetch under.
enum Turn {
    Answer(Outcome),
    /// The lease of `generation` is this process's; `streak` fetches failed in a row before.
    Fetch {
        generation: u64,
        streak: u32,
    },
}

/// The layer's settings the fleet needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FleetConfig {
    pub(crate) lifetime: Duration,
    pub(crate) refresh_ahead: Duration,
    pub(crate) fetch_timeout: Duration,
}

/// One layer's seat in the fleet: the store, the keys and cipher of its credentials, and
/// whether it is on its own for now.
pub(crate) struct Fleet {
    store: Arc<dyn TokenStore>,
    sealer: Sealer,
    config: FleetConfig,
    /// Names this layer as the holder of a lease: process id and a random part.
    owner: String,
    alone: Mutex<Alone>,
}

/// The fallback's state: set while the store fails.
#[derive(Default)]
struct Alone {
    /// The store failed; a probe runs until it answers.
    since: Option<Instant>,
    /// Failed fetches in a row while alone.
    streak: u32,
}

/// A failed fetch as sealed in the store: enough to give every process the same error.
#[derive(Serialize, Deserialize)]
struct SealedFailure {
    kind: SharedKind,
    message: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum SharedKind {
    InvalidCredentials {
        status: u16,
    },
    RateLimited {
        retry_after_ms: Option<u64>,
    },
    Unavailable {
        status: Option<u16>,
        retry_after_ms: Option<u64>,
    },
    Timeout {
        after_ms: u64,
    },
    Malformed,
    Config,
}

impl Fleet {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        credentials: &Credentials,
        origin: &str,
        config: FleetConfig,
    ) -> Self {
        Self {
            store,
            sealer: Sealer::new(credentials, origin),
            config,
            owner: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            alone: Mutex::new(Alone::default()),
        }
    }

    fn alone(&self) -> MutexGuard<'_, Alone> {
        // Two fields, each written in one step: a poisoned lock holds a valid state.
        self.alone
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lease_ttl(&self) -> Duration {
        self.config.fetch_timeout + LEASE_SLACK
    }

    /// A token for `want`: the fleet's if it has a suitable one, else one `fetch` (here or in
    /// the process that holds the lease), else the failure the fleet is serving.
    ///
    /// `wait_for` is the cache's policy: how long a failure is served, given the error and the
    /// fleet's count of failures in a row. If the store fails before `fetch` was called, this
    /// process fetches on its own (and keeps doing so until a background probe finds the
    /// store answering again); a request never fails because the store did.
    pub(crate) async fn obtain<F, Fut>(
        self: &Arc<Self>,
        want: Want,
        fetch: F,
        wait_for: impl Fn(&Error, u32) -> Duration,
    ) -> Result<Obtained, Failure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TokenAnswer, Error>>,
    {
        let mut lease = None;
        if self.alone().since.is_none() {
            match self.coordinate(want).await {
                Ok(Turn::Answer(outcome)) => return outcome,
                Ok(Turn::Fetch { generation, streak }) => lease = Some((generation, streak)),
                Err(error) => self.go_alone(&error),
            }
        }
        let asked = Instant::now();
        let fetched = fetch().await;
        let remaining = self.config.lifetime.saturating_sub(asked.elapsed());
        match lease {
            Some((generation, streak)) => {
                self.share(generation, streak, fetched, remaining, &wait_for)
                    .await
            }
            None => self.keep_alone(fetched, remaining, &wait_for),
        }
    }

    /// The fleet's way: read, then take the lease or wait for whoever holds it.
    async fn coordinate(&self, want: Want) -> Result<Turn, StoreError> {
        let floor = match want {
            Want::Forced { floor, .. } => Some(floor),
            _ => None,
        };
        if let (_, Some(answer)) = self.look(want).await? {
            return Ok(Turn::Answer(answer));
        }
        loop {
            match self
                .store
                .try_lease(self.sealer.keys(), &self.owner, self.lease_ttl(), floor)
                .await?
            {
                Lease::Granted(generation) => {
                    // Look again: the holder before may have just finished.
                    let (snapshot, answer) = self.look(want).await?;
                    if let Some(answer) = answer {
                        self.release().await;
                        return Ok(Turn::Answer(answer));
                    }
                    let streak = snapshot.failure.map_or(0, |f| f.streak);
                    return Ok(Turn::Fetch { generation, streak });
                }
                Lease::FloorHolds => {
                    // The lease is free and the floor set: whoever forced the last refresh is
                    // done, maybe since the read above. What it left decides.
                    let (_, answer) = self.look(want).await?;
                    return Ok(Turn::Answer(answer.unwrap_or(Err(Failure::FloorHolds))));
                }
                Lease::Busy => {
                    if let Some(answer) = self.wait_for_holder(want).await? {
                        return Ok(Turn::Answer(answer));
                    }
                }
            }
        }
    }

    /// Reads the store: what it holds, and the answer it already has for `want` (a suitable
    /// token, or the failure every process is serving), if any.
    async fn look(&self, want: Want) -> Result<(Snapshot, Option<Outcome>), StoreError> {
        // Life left is counted from before the question: never longer than the store's.
        let read_at = Instant::now();
        let snapshot = self.store.read(self.sealer.keys()).await?;
        let answer = match self.suitable(want, &snapshot, read_at) {
            Some(found) => Some(Ok(found)),
            None => self.held_failure(&snapshot).map(Err),
        };
        Ok((snapshot, answer))
    }

    /// Polls (every 15 to 45 ms) until the holder of the lease is done: the answer appears, or
    /// the lease is free (`None`). Never longer than a lease lives: then the lease has run out
    /// and the caller may take it.
    async fn wait_for_holder(&self, want: Want) -> Result<Option<Outcome>, StoreError> {
        let deadline = Instant::now() + self.lease_ttl();
        loop {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(15..=45))).await;
            let (snapshot, answer) = self.look(want).await?;
            if answer.is_some() || !snapshot.leased || Instant::now() >= deadline {
                return Ok(answer);
            }
        }
    }

    /// Shares what the fetch under the lease of `generation` gave (publishes the token, or
    /// records the failure after `streak` others), then releases the lease.
    async fn share(
        &self,
        generation: u64,
        streak: u32,
        fetched: Result<TokenAnswer, Error>,
        remaining: Duration,
        wait_for: &impl Fn(&Error, u32) -> Duration,
    ) -> Outcome {
        let keys = self.sealer.keys();
        let outcome = match fetched {
            Ok(answer) => {
                let sealed = self.seal_token(&answer, generation);
                match self
                    .store
                    .publish(keys, generation, sealed, remaining)
                    .await
                {
                    Ok(true) => tracing::debug!(generation, "token published to the fleet"),
                    Ok(false) => tracing::debug!(
                        generation,
                        "a newer token was published meanwhile: this one is not shared"
                    ),
                    Err(error) => tracing::debug!(error = %error, "token not published"),
                }
                Ok(Obtained {
                    answer,
                    generation,
                    remaining,
                    fetched_here: true,
                })
            }
            Err(error) => {
                let streak = streak.saturating_add(1);
                let wait = wait_for(&error, streak);
                let record = FailureRecord {
                    value: self.seal_failure(&error, streak),
                    streak,
                    hold: wait,
                    keep: wait + STREAK_KEEP,
                };
                if let Err(store_error) = self.store.fail(keys, generation, record).await {
                    tracing::debug!(error = %store_error, "failure not shared");
                }
                Err(Failure::Fetch { error, wait })
            }
        };
        self.release().await;
        outcome
    }

    async fn release(&self) {
        if let Err(error) = self.store.release(self.sealer.keys(), &self.owner).await {
            // The lease runs out on its own.
            tracing::debug!(error = %error, "lease not released");
        }
    }

    /// The stored token, if it answers `want` and opens.
    fn suitable(&self, want: Want, snapshot: &Snapshot, read_at: Instant) -> Option<Obtained> {
        let stored = snapshot.token.as_ref()?;
        // A token this close to its end is not sent (the cache keeps the same margin).
        let margin = (self.config.lifetime / 20).min(Duration::from_secs(30));
        let wanted = match want {
            Want::Demand => stored.remaining > margin,
            Want::Background { current } => {
                stored.generation != current && stored.remaining > self.config.refresh_ahead
            }
            Want::Forced { rejected, .. } => {
                stored.generation != rejected && stored.remaining > margin
            }
        };
        if !wanted {
            return None;
        }
        let mut plain = self
            .sealer
            .open("token", stored.generation, &stored.value)?;
        let answer = serde_json::from_slice(&plain);
        plain.fill(0);
        Some(Obtained {
            answer: answer.ok()?,
            generation: stored.generation,
            remaining: stored.remaining.saturating_sub(read_at.elapsed()),
            fetched_here: false,
        })
    }

    /// The failure every process is serving, if its hold is still on and it opens.
    fn held_failure(&self, snapshot: &Snapshot) -> Option<Failure> {
        let stored = snapshot.failure.as_ref().filter(|f| !f.hold.is_zero())?;
        let plain = self
            .sealer
            .open("failure", u64::from(stored.streak), &stored.value)?;
        let sealed: SealedFailure = serde_json::from_slice(&plain).ok()?;
        Some(Failure::Fetch {
            error: sealed.into_error(stored.hold),
            wait: stored.hold,
        })
    }

    fn seal_token(&self, answer: &TokenAnswer, generation: u64) -> Vec<u8> {
        let mut plain = serde_json::to_vec(answer).unwrap_or_default();
        let value = self.sealer.seal("token", generation, &plain);
        plain.fill(0);
        value
    }

    fn seal_failure(&self, error: &Error, streak: u32) -> Vec<u8> {
        let sealed = SealedFailure::from_error(error);
        let plain = serde_json::to_vec(&sealed).unwrap_or_default();
        self.sealer.seal("failure", u64::from(streak), &plain)
    }

    /// The store failed: fetch alone from now on, say so once, and probe the store until it
    /// answers.
    fn go_alone(self: &Arc<Self>, error: &StoreError) {
        let mut alone = self.alone();
        if alone.since.is_some() {
            return;
        }
        alone.since = Some(Instant::now());
        alone.streak = 0;
        drop(alone);
        tracing::warn!(
            error = %error,
            "token store unreachable: this process fetches its own tokens until it answers again"
        );
        let fleet = Arc::downgrade(self);
        tokio::spawn(probe(fleet));
    }

    /// The fallback: a fetch made alone, as a layer without a store makes, with this
    /// process's own count of failures in a row.
    fn keep_alone(
        &self,
        fetched: Result<TokenAnswer, Error>,
        remaining: Duration,
        wait_for: &impl Fn(&Error, u32) -> Duration,
    ) -> Outcome {
        match fetched {
            Ok(answer) => {
                self.alone().streak = 0;
                Ok(Obtained {
                    answer,
                    generation: 0,
                    remaining,
                    fetched_here: true,
                })
            }
            Err(error) => {
                let streak = {
                    let mut alone = self.alone();
                    alone.streak = alone.streak.saturating_add(1);
                    alone.streak
                };
                let wait = wait_for(&error, streak);
                Err(Failure::Fetch { error, wait })
            }
        }
    }
}

/// Pings the store until it answers, then puts the layer back in the fleet. Ends early when
/// the layer is dropped.
async fn probe(fleet: Weak<Fleet>) {
    loop {
        tokio::time::sleep(PROBE_EVERY.mul_f64(1.0 - 0.5 * fastrand::f64())).await;
        let Some(fleet) = fleet.upgrade() else {
            return;
        };
        if fleet.store.ping().await.is_ok() {
            let since = fleet.alone().since.take();
            tracing::info!(
                alone_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64),
                "token store answers again: back in the fleet"
            );
            return;
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SealedFailure {
    fn from_error(error: &Error) -> Self {
        let kind = match error.kind() {
            Kind::InvalidCredentials { status } => SharedKind::InvalidCredentials {
                status: status.as_u16(),
            },
            Kind::RateLimited { retry_after } => SharedKind::RateLimited {
                retry_after_ms: retry_after.map(ms),
            },
            Kind::Unavailable {
                status,
                retry_after,
            } => SharedKind::Unavailable {
                status: status.map(|s| s.as_u16()),
                retry_after_ms: retry_after.map(ms),
            },
            Kind::Timeout { after } => SharedKind::Timeout {
                after_ms: ms(after),
            },
            Kind::MalformedResponse => SharedKind::Malformed,
            Kind::Config | Kind::NoRuntime | Kind::NoTimers | Kind::FloorHolds => {
                SharedKind::Config
            }
        };
        Self {
            kind,
            message: error.server_message().map(str::to_owned),
        }
    }

    /// The error as the fetching process saw it; a `Retry-After` is what is left of the hold.
    fn into_error(self, hold: Duration) -> Error {
        let status = |code: u16| http::StatusCode::from_u16(code).ok();
        let retry_after = |original: Option<u64>| original.map(|_| hold);
        let kind = match self.kind {
            SharedKind::InvalidCredentials { status: code } => Kind::InvalidCredentials {
                status: status(code).unwrap_or(http::StatusCode::UNAUTHORIZED),
            },
            SharedKind::RateLimited { retry_after_ms } => Kind::RateLimited {
                retry_after: retry_after(retry_after_ms),
            },
            SharedKind::Unavailable {
                status: code,
                retry_after_ms,
            } => Kind::Unavailable {
                status: code.and_then(status),
                retry_after: retry_after(retry_after_ms),
            },
            SharedKind::Timeout { after_ms } => Kind::Timeout {
                after: Duration::from_millis(after_ms),
            },
            SharedKind::Malformed => Kind::MalformedResponse,
            SharedKind::Config => Kind::Config,
        };
        Error::build(kind, self.message, None)
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
