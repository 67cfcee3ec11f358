//! The shared token cache: single-flight fetches, cached failures with backoff, forced
//! refreshes with a floor, and the background refresher that renews ahead of expiry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Asked, BoxFuture, Clock, Fetcher, Token, TokenAnswer};
#[cfg(feature = "redis")]
use super::{Failure, Fleet, Want};
use crate::error::{Error, Kind};
use crate::stats::Counters;

/// What waiters of one fetch share: the token or the error.
pub(crate) type Outcome = Result<Arc<Token>, Error>;

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
    /// The fleet's shared store, if the layer was given one.
    #[cfg(feature = "redis")]
    pub(crate) fleet: Option<Arc<Fleet>>,
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

/// The token a request is sent with: its header value, cloned from the current token.
pub(crate) struct Sending {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
    /// See [`Token::unproven_forced`].
    pub(crate) unproven: bool,
}

/// The token cache one layer and all its services share.
pub(crate) struct Cache {
    config: CacheConfig,
    /// The current token, read by every request with one lock-free load.
    current: ArcSwapOption<Token>,
    state: Mutex<State>,
    fetcher: Fetcher,
    /// Wakes the refresher when a new token is in.
    changed: Notify,
    /// The refresher task is alive. It clears this as it is dropped (its layer went away,
    /// or its runtime shut down), so the next request starts another.
    refresher_running: AtomicBool,
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
    /// The fleet's generation of the current token (with a store).
    #[cfg(feature = "redis")]
    fleet_generation: u64,
    refresher: Option<AbortHandle>,
    /// Every handle to the layer is gone: requests still in flight may fetch, but no
    /// refresher starts again.
    closed: bool,
}

impl Cache {
    pub(crate) fn new(config: CacheConfig, fetcher: Fetcher) -> Self {
        let forced_floor = config.min_refresh_interval;
        Self {
            config,
            current: ArcSwapOption::empty(),
            state: Mutex::new(State {
                inflight: None,
                failure: None,
                failures_in_row: 0,
                generation: 0,
                last_forced: None,
                forced_floor,
                #[cfg(feature = "redis")]
                fleet_generation: 0,
                refresher: None,
                closed: false,
            }),
            fetcher,
            changed: Notify::new(),
            refresher_running: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is one step: a panic elsewhere cannot leave it half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token to send now, if one is usable: one lock-free load, two clock reads and a
    /// header clone. Starts the refresher if it is not running.
    pub(crate) fn sending(self: &Arc<Self>) -> Option<Sending> {
        self.ensure_refresher();
        let current = self.current.load();
        let token = current
            .as_deref()
            .filter(|t| t.is_usable(&self.config.clock))?;
        Some(Sending {
            header: token.header.clone(),
            generation: token.generation,
            unproven: token.unproven_forced(),
        })
    }

    /// The current token if it is usable.
    fn usable(&self) -> Option<Arc<Token>> {
        let current = self.current.load_full();
        current.filter(|t| t.is_usable(&self.config.clock))
    }

    /// A usable token: the current one, a fetch in flight, the cached failure, or a new fetch.
    pub(crate) fn token(self: &Arc<Self>) -> BoxFuture<Outcome> {
        self.ensure_refresher();
        let mut state = self.lock();
        match self.usable() {
            Some(token) => ready(Ok(token)),
            None => self.join_or_fetch(&mut state, Reason::Demand),
        }
    }

    /// A token newer than `rejected` to replay with, after the API rejected that one; an error
    /// when none can be had (`Error::is_floor` when the floor between forced refreshes holds,
    /// in this process or, with a store, in the fleet).
    ///
    /// A newer usable token, or a fetch in flight, is used as is. A rejection of the current
    /// token forces one fetch, shared by every rejection of it, at least the floor after the
    /// last forced one. A cached failure is served at once.
    pub(crate) fn after_rejection(self: &Arc<Self>, rejected: u64) -> BoxFuture<Outcome> {
        self.ensure_refresher();
        let mut state = self.lock();
        match self.usable() {
            Some(token) if token.generation != rejected => ready(Ok(token)),
            // An expired token: an ordinary fetch, not a forced one.
            None => self.join_or_fetch(&mut state, Reason::Demand),
            Some(_) if state.live_inflight().is_some() || state.held_failure().is_some() => {
                self.join_or_fetch(&mut state, Reason::Demand)
            }
            Some(token) => {
                // A forced token the API never accepted (it cured neither the request that
                // forced it nor any other) says the token is not the fault: the floor doubles.
                // An accepted one puts it back to its minimum.
                let floor = if token.unproven_forced() {
                    (state.forced_floor * 2).min(self.config.lifetime)
                } else {
                    self.config.min_refresh_interval
                };
                let now = Instant::now();
                if state.last_forced.is_some_and(|last| now < last + floor) {
                    tracing::debug!(
                        floor_ms = floor.as_millis() as u64,
                        "forced refresh skipped: too soon after the last one"
                    );
                    return ready(Err(Error::floor()));
                }
                state.forced_floor = floor;
                state.last_forced = Some(now);
                tracing::debug!(
                    generation = rejected,
                    "token rejected by the api: forcing a refresh"
                );
                self.join_or_fetch(&mut state, Reason::Forced)
            }
        }
    }

    /// Records that the API accepted token `generation`, if it is still the current one.
    pub(crate) fn accepted(&self, generation: u64) {
        if let Some(token) = self.current.load().as_deref() {
            if token.generation == generation {
                token.proven.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Joins the fetch in flight, serves the cached failure, or starts a fetch.
    fn join_or_fetch(self: &Arc<Self>, state: &mut State, reason: Reason) -> BoxFuture<Outcome> {
        if let Some(rx) = state.live_inflight() {
            return Box::pin(joined(rx));
        }
        if let Some((error, _)) = state.held_failure() {
            return ready(Err(error.clone()));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ready(Err(Error::new(Kind::NoRuntime)));
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
        Box::pin(joined(rx))
    }

    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    async fn fetch(self: &Arc<Self>, reason: Reason, attempt: u32) -> Outcome {
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
            wall: self.config.clock.now(),
        };
        let got = self.get_token(reason).instrument(span.clone()).await;
        span.record("latency_ms", asked.at.elapsed().as_millis() as u64);
        let _entered = span.enter();
        let mut state = self.lock();
        state.inflight = None;
        let (error, wait) = match got {
            Got::Token {
                answer,
                life,
                fleet,
            } => {
                if let Some(header) = super::header_value(&answer.token, self.config.bearer) {
                    state.generation += 1;
                    state.failures_in_row = 0;
                    state.failure = None;
                    #[cfg(feature = "redis")]
                    {
                        state.fleet_generation = fleet;
                    }
                    let forced = reason == Reason::Forced;
                    let (generation, ahead) = (state.generation, self.config.refresh_ahead);
                    let token = Token::new(header, &answer, generation, asked, life, ahead, forced);
                    let token = Arc::new(token);
                    self.current.store(Some(Arc::clone(&token)));
                    drop(state);
                    // Wakes a refresher already waiting, and leaves no permit behind: a stored
                    // permit would make the refresher schedule the same token twice.
                    self.changed.notify_waiters();
                    span.record("outcome", "ok");
                    span.record("account_id", token.account_id);
                    tracing::info!(generation, user_id = token.user_id, "token fetched");
                    return Ok(token);
                }
                (
                    Error::malformed("`token` is not a valid header value"),
                    None,
                )
            }
            Got::Failed { error, wait } => (error, wait),
            // No newer token: the rejection is returned as is; nothing is backed off.
            #[cfg(feature = "redis")]
            Got::FloorHolds => return Err(Error::floor()),
        };
        Counters::bump(&self.counters.fetch_failures);
        state.failures_in_row = state.failures_in_row.saturating_add(1);
        let wait = wait.unwrap_or_else(|| self.failure_wait(&error, state.failures_in_row));
        state.failure = Some((error.clone(), Instant::now() + wait));
        span.record("outcome", "failed");
        tracing::warn!(
            error = %error,
            backoff_ms = wait.as_millis() as u64,
            "token fetch failed: backing off"
        );
        Err(error)
    }

    /// One `get_token` call, or, with a store, what the fleet agrees on.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    async fn get_token(self: &Arc<Self>, reason: Reason) -> Got {
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.config.fleet {
            let want = {
                let state = self.lock();
                match reason {
                    Reason::Demand => Want::Demand,
                    Reason::Background => Want::Background {
                        current: state.fleet_generation,
                    },
                    Reason::Forced => Want::Forced {
                        rejected: state.fleet_generation,
                        floor: state.forced_floor,
                    },
                }
            };
            let wait_for = |error: &Error, streak| self.failure_wait(error, streak);
            return match fleet
                .obtain(want, || self.call_token_client(), wait_for)
                .await
            {
                Ok(got) => {
                    tracing::debug!(
                        fleet_generation = got.generation,
                        fetched_here = got.fetched_here,
                        remaining_ms = got.remaining.as_millis() as u64,
                        "token from the fleet"
                    );
                    Got::Token {
                        answer: got.answer,
                        life: got.remaining,
                        fleet: got.generation,
                    }
                }
                Err(Failure::Fetch { error, wait }) => Got::Failed {
                    error,
                    wait: Some(wait),
                },
                Err(Failure::FloorHolds) => Got::FloorHolds,
            };
        }
        match self.call_token_client().await {
            Ok(answer) => Got::Token {
                answer,
                life: self.config.lifetime,
                fleet: 0,
            },
            Err(error) => Got::Failed { error, wait: None },
        }
    }

    /// One `get_token` call. The token client runs in a task of its own, so that its panic
    /// is a failed fetch, backed off like any other, and not a lost one.
    async fn call_token_client(self: &Arc<Self>) -> Result<TokenAnswer, Error> {
        Counters::bump(&self.counters.fetches);
        let cache = Arc::clone(self);
        let call = tokio::spawn(async move { cache.fetcher.fetch(&cache.config.clock).await });
        match call.await {
            Ok(result) => result,
            Err(e) => Err(Error::from_join(e)),
        }
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

    /// Starts the background refresher if it is not running: on first use, and again when
    /// the runtime that ran it has gone (a layer kept across runtimes).
    fn ensure_refresher(self: &Arc<Self>) {
        if !self.refresher_running.load(Ordering::Relaxed) {
            self.start_refresher();
        }
    }

    /// Starts the background refresher, unless every handle to the layer is gone or no
    /// runtime is at hand.
    fn start_refresher(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.closed || self.refresher_running.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.refresher_running.store(true, Ordering::Relaxed);
        // The guard is moved into the task before it first runs, so that a task dropped
        // unpolled (its runtime shut down at once) still clears the flag.
        let running = Running(Arc::clone(self));
        let cache = Arc::clone(self);
        let task = runtime.spawn(async move {
            let _running = running;
            cache.refresh_loop().await;
        });
        state.refresher = Some(task.abort_handle());
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
            let Some(token) = self.usable() else {
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
                let next = {
                    let mut state = self.lock();
                    match self.usable() {
                        Some(current) if current.generation == token.generation => {}
                        // A newer token arrived, or this one expired: start over.
                        _ => break,
                    }
                    match state.held_failure() {
                        Some((_, until)) => Err(*until),
                        None => Ok(self.join_or_fetch(&mut state, Reason::Background)),
                    }
                };
                match next {
                    Err(until) => tokio::time::sleep_until(until.min(token.usable_until)).await,
                    Ok(fetch) => match fetch.await {
                        Ok(_) => {
                            tracing::debug!("background refresh done");
                            break;
                        }
                        Err(error) => tracing::debug!(
                            error = %error,
                            "background refresh failed: keeping the current token"
                        ),
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

/// What one fetch brought.
enum Got {
    /// A token and its life left: the configured lifetime, or the store's.
    Token {
        answer: TokenAnswer,
        life: Duration,
        fleet: u64,
    },
    /// An error, served for `wait` (the fleet's) or for the cache's own backoff.
    Failed {
        error: Error,
        wait: Option<Duration>,
    },
    /// A forced refresh the fleet refused: its floor holds and no newer token exists.
    #[cfg(feature = "redis")]
    FloorHolds,
}

/// Held by the refresher task: clears `refresher_running` when the task is dropped.
struct Running(Arc<Cache>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.refresher_running.store(false, Ordering::Relaxed);
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

    /// The last failure and when it ends, while it is still served.
    fn held_failure(&self) -> Option<&(Error, Instant)> {
        self.failure
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
    }
}

fn ready(outcome: Outcome) -> BoxFuture<Outcome> {
    Box::pin(std::future::ready(outcome))
}

/// The outcome of the fetch in flight, shared by all who wait on it.
async fn joined(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(Error::cancelled())),
        Err(_) => Err(Error::cancelled()),
    }
}
