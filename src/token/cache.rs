//! The shared token cache: single-flight fetches, cached failures with backoff, forced
//! refreshes with a floor, and the background refresher that renews ahead of expiry.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Asked, Clock, Fetcher, Token, TokenSlot};
use crate::error::{Error, Kind};
use crate::stats::Counters;

/// What waiters of one fetch share: the token or the error.
pub(crate) type Outcome = Result<Arc<Token>, Error>;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// First wait after a failed fetch; doubles per failure in a row.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between failed fetches.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The cache's settings, fixed at build time.
pub(crate) struct CacheConfig {
    pub(crate) lifetime: Duration,
    pub(crate) refresh_ahead: Duration,
    pub(crate) min_refresh_interval: Duration,
    pub(crate) invalid_credentials_cooldown: Duration,
    pub(crate) bearer: bool,
    pub(crate) clock: Clock,
}

/// Why a fetch was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// A request (or `account_id`) found no usable token.
    Demand,
    /// The refresher, ahead of expiry.
    Background,
    /// The API rejected the current token.
    Forced,
}

/// The token cache one layer and all its services share.
pub(crate) struct Cache {
    config: CacheConfig,
    slot: TokenSlot,
    state: Mutex<State>,
    fetcher: Fetcher,
    /// Wakes the refresher when a new token is in the slot.
    changed: Notify,
    pub(crate) counters: Counters,
}

/// Everything off the hot path, behind one lock never held across an await.
struct State {
    inflight: Option<watch::Receiver<Option<Outcome>>>,
    /// The last failure, served to new requests until the instant.
    failure: Option<(Error, Instant)>,
    failures_in_row: u32,
    generation: u64,
    last_forced: Option<Instant>,
    forced_floor: Duration,
    refresher: Option<AbortHandle>,
    /// Every handle to the layer is gone: requests still in flight may fetch, but no
    /// refresher starts again.
    closed: bool,
}

/// What a caller of the slow path gets: an answer now, or a fetch to wait on.
enum Step {
    Now(Outcome),
    Wait(watch::Receiver<Option<Outcome>>),
}

impl Cache {
    pub(crate) fn new(config: CacheConfig, fetcher: Fetcher) -> Self {
        let forced_floor = config.min_refresh_interval;
        Self {
            config,
            slot: TokenSlot::new(),
            state: Mutex::new(State {
                inflight: None,
                failure: None,
                failures_in_row: 0,
                generation: 0,
                last_forced: None,
                forced_floor,
                refresher: None,
                closed: false,
            }),
            fetcher,
            changed: Notify::new(),
            counters: Counters::default(),
        }
    }

    #[inline]
    pub(crate) fn clock(&self) -> &Clock {
        &self.config.clock
    }

    /// Where the current token is: the hot path checks its generation against a per-thread
    /// copy (`crate::local`) and reads it only when a new one is in.
    #[inline]
    pub(crate) fn slot(&self) -> &TokenSlot {
        &self.slot
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in a caller: every update is one step.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn usable(&self) -> Option<Arc<Token>> {
        let now = Instant::now();
        let wall = self.config.clock.wall();
        self.slot.load_full().filter(|t| t.is_usable(now, wall))
    }

    /// A usable token: the current one, a fetch in flight, the cached failure, or a new fetch.
    pub(crate) fn token(self: &Arc<Self>) -> BoxFuture<Outcome> {
        let step = {
            let mut state = self.lock();
            self.ensure_refresher(&mut state);
            match self.usable() {
                Some(token) => Step::Now(Ok(token)),
                None => self.join_or_fetch(&mut state, Reason::Demand),
            }
        };
        wait(step)
    }

    /// A token to replay with after the API rejected token `rejected`.
    ///
    /// A newer usable token is returned as is. Otherwise one forced fetch is shared by every
    /// rejection of that token, and forced fetches are at least the floor apart: within it,
    /// the replay goes out with the current token.
    pub(crate) fn after_rejection(self: &Arc<Self>, rejected: u64) -> BoxFuture<Outcome> {
        let step = {
            let mut state = self.lock();
            self.ensure_refresher(&mut state);
            let current = self.usable();
            match current {
                Some(token) if token.generation != rejected => Step::Now(Ok(token)),
                _ if state.live_inflight().is_some() || state.failing() => {
                    self.join_or_fetch(&mut state, Reason::Demand)
                }
                Some(token) => {
                    let now = Instant::now();
                    let too_soon = state
                        .last_forced
                        .is_some_and(|last| now < last + state.forced_floor);
                    if too_soon {
                        tracing::debug!(
                            floor_ms = state.forced_floor.as_millis() as u64,
                            "forced refresh skipped: too soon after the last one"
                        );
                        Step::Now(Ok(token))
                    } else {
                        state.forced_floor = if token.unproven_forced() {
                            (state.forced_floor * 2).min(self.config.lifetime)
                        } else {
                            self.config.min_refresh_interval
                        };
                        state.last_forced = Some(now);
                        tracing::debug!(
                            generation = rejected,
                            next_floor_ms = state.forced_floor.as_millis() as u64,
                            "token rejected by the api: forcing a refresh"
                        );
                        self.join_or_fetch(&mut state, Reason::Forced)
                    }
                }
                None => self.join_or_fetch(&mut state, Reason::Demand),
            }
        };
        wait(step)
    }

    /// Joins the fetch in flight, serves the cached failure, or starts a fetch.
    fn join_or_fetch(self: &Arc<Self>, state: &mut State, reason: Reason) -> Step {
        if let Some(rx) = state.live_inflight() {
            return Step::Wait(rx);
        }
        if let Some((error, until)) = &state.failure {
            if Instant::now() < *until {
                return Step::Now(Err(error.clone()));
            }
        }
        self.start_fetch(state, reason)
    }

    fn start_fetch(self: &Arc<Self>, state: &mut State, reason: Reason) -> Step {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Step::Now(Err(Error::new(Kind::NoRuntime)));
        };
        let (tx, rx) = watch::channel(None);
        state.inflight = Some(rx.clone());
        let attempt = state.failures_in_row + 1;
        let cache = Arc::clone(self);
        // Its own task: a caller that gives up does not cancel the fetch for the others.
        runtime.spawn(async move {
            let outcome = cache.fetch(reason, attempt).await;
            tx.send_replace(Some(outcome));
        });
        Step::Wait(rx)
    }

    async fn fetch(&self, reason: Reason, attempt: u32) -> Outcome {
        Counters::bump(&self.counters.fetches);
        match reason {
            Reason::Background => Counters::bump(&self.counters.background_refreshes),
            Reason::Forced => Counters::bump(&self.counters.forced_refreshes),
            Reason::Demand => {}
        }
        let span = tracing::info_span!(
            "lengow_auth::get_token",
            reason = ?reason,
            attempt,
            outcome = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            account_id = tracing::field::Empty,
        );
        let asked = Asked {
            at: Instant::now(),
            wall: self.config.clock.wall(),
        };
        let result = self
            .fetcher
            .fetch(&self.config.clock)
            .instrument(span.clone())
            .await;
        let result = result.and_then(|answer| {
            let header = self.header_value(&answer.token)?;
            Ok((answer, header))
        });
        span.record("latency_ms", asked.at.elapsed().as_millis() as u64);
        let _entered = span.enter();
        let mut state = self.lock();
        state.inflight = None;
        match result {
            Ok((answer, header)) => {
                state.generation += 1;
                state.failures_in_row = 0;
                state.failure = None;
                let token = Arc::new(Token::new(
                    header,
                    &answer,
                    state.generation,
                    asked,
                    &self.config,
                    reason == Reason::Forced,
                ));
                self.slot.replace(Arc::clone(&token));
                drop(state);
                // Wakes a refresher already waiting, and leaves no permit behind: a stored permit
                // would make the refresher schedule the same token twice.
                self.changed.notify_waiters();
                span.record("outcome", "ok");
                span.record("account_id", token.account_id);
                tracing::info!(
                    generation = token.generation,
                    user_id = token.user_id,
                    "token fetched"
                );
                Ok(token)
            }
            Err(error) => {
                Counters::bump(&self.counters.fetch_failures);
                state.failures_in_row = state.failures_in_row.saturating_add(1);
                let wait = self.failure_wait(&error, state.failures_in_row);
                state.failure = Some((error.clone(), Instant::now() + wait));
                span.record("outcome", "failed");
                tracing::warn!(
                    error = %error,
                    backoff_ms = wait.as_millis() as u64,
                    "token fetch failed: backing off"
                );
                Err(error)
            }
        }
    }

    /// The `Authorization` value for a token: raw, or `Bearer <token>` if asked; sensitive;
    /// and whether it is static.
    fn header_value(&self, token: &str) -> Result<(HeaderValue, bool), Error> {
        let text = if self.config.bearer {
            format!("Bearer {token}")
        } else {
            token.to_owned()
        };
        super::header::sensitive(text)
            .ok_or_else(|| Error::malformed("`token` is not a valid header value"))
    }

    /// How long a failure is served before the next fetch: the backoff (1 s doubling to
    /// 60 s, jitter shortening it by at most half), at least any `Retry-After`, or the
    /// cooldown for refused credentials.
    fn failure_wait(&self, error: &Error, failures_in_row: u32) -> Duration {
        if error.is_invalid_credentials() {
            return self.config.invalid_credentials_cooldown;
        }
        let doublings = failures_in_row.saturating_sub(1).min(16);
        let backoff = BACKOFF_START
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        let jittered = backoff.mul_f64(1.0 - 0.5 * fastrand::f64());
        jittered.max(error.retry_after().unwrap_or_default())
    }

    /// Starts the background refresher on first use, or again if its runtime went away.
    fn ensure_refresher(self: &Arc<Self>, state: &mut State) {
        if state.closed || state.refresher.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = Arc::clone(self);
        state.refresher = Some(runtime.spawn(cache.refresh_loop()).abort_handle());
    }

    /// Stops the refresher: called when the last handle to the layer is dropped.
    pub(crate) fn shutdown(&self) {
        let mut state = self.lock();
        state.closed = true;
        if let Some(refresher) = state.refresher.take() {
            refresher.abort();
        }
    }

    /// Renews the token `refresh_ahead` before it expires; after a failure, retries when the
    /// backoff ends, keeping the valid token meanwhile. Once a token has expired, fetches are
    /// left to the requests that need one, and the loop waits for the next token.
    async fn refresh_loop(self: Arc<Self>) {
        loop {
            let changed = self.changed.notified();
            let token = self.usable();
            let Some(token) = token else {
                changed.await;
                continue;
            };
            tracing::debug!(
                generation = token.generation,
                in_ms = token
                    .refresh_at
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "background refresh scheduled"
            );
            tokio::select! {
                () = tokio::time::sleep_until(token.refresh_at) => {}
                () = changed => continue,
            }
            loop {
                let step = {
                    let mut state = self.lock();
                    match self.usable() {
                        Some(current) if current.generation == token.generation => {}
                        // A newer token arrived, or this one expired: start over.
                        _ => break,
                    }
                    match state.failure.as_ref() {
                        Some((_, until)) if Instant::now() < *until => Err(*until),
                        _ => Ok(match state.live_inflight() {
                            Some(rx) => Step::Wait(rx),
                            None => self.start_fetch(&mut state, Reason::Background),
                        }),
                    }
                };
                match step {
                    // Wake at the token's expiry at the latest, to mark it expired.
                    Err(until) => tokio::time::sleep_until(until.min(token.usable_until())).await,
                    Ok(step) => match expire_meanwhile(&token, wait(step)).await {
                        Ok(_) => {
                            tracing::debug!("background refresh done");
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(error = %error, "background refresh failed: keeping the current token");
                        }
                    },
                }
            }
        }
    }

    /// The account id of the current token, fetching one if none is usable.
    pub(crate) async fn account_id(self: &Arc<Self>) -> Result<u64, Error> {
        Ok(self.token().await?.account_id)
    }
}

impl State {
    /// The fetch in flight, unless its task went away with its runtime.
    fn live_inflight(&self) -> Option<watch::Receiver<Option<Outcome>>> {
        self.inflight
            .as_ref()
            .filter(|rx| rx.has_changed().is_ok())
            .cloned()
    }

    fn failing(&self) -> bool {
        self.failure
            .as_ref()
            .is_some_and(|(_, until)| Instant::now() < *until)
    }
}

/// Waits for `outcome`, marking `token` expired if its time runs out meanwhile.
async fn expire_meanwhile(token: &Token, mut outcome: BoxFuture<Outcome>) -> Outcome {
    tokio::select! {
        result = &mut outcome => result,
        () = tokio::time::sleep_until(token.usable_until()) => {
            token.expire();
            outcome.await
        }
    }
}

fn wait(step: Step) -> BoxFuture<Outcome> {
    Box::pin(async move {
        match step {
            Step::Now(outcome) => outcome,
            Step::Wait(mut rx) => match rx.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(cancelled())),
                Err(_) => Err(cancelled()),
            },
        }
    })
}

fn cancelled() -> Error {
    Error::build(
        Kind::Unavailable {
            status: None,
            retry_after: None,
        },
        Some("the token fetch was cancelled (its runtime shut down)".to_owned()),
        None,
    )
}
