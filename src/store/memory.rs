//! [`MemoryStore`]: the fleet's store inside one process, on tokio's clock.
//! Layers that share one act as a fleet; tests drive it under paused time.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    FailureRecord, Keys, Lease, Snapshot, StoreError, StoreFuture, StoredFailure, StoredToken,
    TokenStore,
};

/// A [`TokenStore`] in this process's memory.
///
/// Clones share one store: layers built with clones of one `MemoryStore` behave as a fleet
/// of processes sharing a Redis would, which makes it the store to test fleet behaviour
/// with (`#[tokio::test(start_paused = true)]`: its expiries run on tokio's clock). A single
/// layer gains nothing from it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use lengow_auth::{LengowAuthLayer, store::MemoryStore, testing::FakeLengow};
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
///
/// let lengow = FakeLengow::start().await;
/// let store = MemoryStore::new();
/// let mut layers = Vec::new();
/// for _ in 0..3 {
///     layers.push(
///         LengowAuthLayer::builder(lengow.credentials())
///             .api_url(lengow.uri())
///             .store(store.clone())
///             .build(Client::builder(TokioExecutor::new()).build_http())?,
///     );
/// }
/// for layer in &layers {
///     layer.account_id().await?;
/// }
/// assert_eq!(lengow.token_fetches(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By the name of the token key: one entry per set of credentials.
    entries: Mutex<HashMap<String, Entry>>,
    down: AtomicBool,
}

#[derive(Default)]
struct Entry {
    token: Option<(u64, Vec<u8>, Instant)>,
    lease: Option<(String, Instant)>,
    generation: u64,
    failure: Option<(Vec<u8>, u32, Instant)>,
    hold: Option<Instant>,
    floor: Option<Instant>,
}

impl Entry {
    /// Drops whatever has run out.
    fn expire(&mut self, now: Instant) {
        self.token = self.token.take().filter(|t| t.2 > now);
        self.lease = self.lease.take().filter(|l| l.1 > now);
        self.failure = self.failure.take().filter(|f| f.2 > now);
        self.hold = self.hold.filter(|&h| h > now);
        self.floor = self.floor.filter(|&f| f > now);
    }

    /// Whether a token of `generation` or newer is stored.
    fn fences(&self, generation: u64) -> bool {
        self.token.as_ref().is_some_and(|t| t.0 >= generation)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything, as `FLUSHALL` does to a Redis.
    pub fn clear(&self) {
        self.entries().clear();
    }

    /// While `down`, every call fails, as calls to a Redis that is down do: for tests of
    /// the fallback to each process's own fetches.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update below is complete before the lock is released: a poisoned map is whole.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(StoreError::new("the memory store is down", None));
        }
        Ok(())
    }

    /// Runs `f` on the entry of `keys`, expired values dropped, unless the store is down.
    fn with<T: Send + 'static>(
        &self,
        keys: &Keys,
        f: impl FnOnce(&mut Entry, Instant) -> T,
    ) -> StoreFuture<'static, T> {
        let result = self.up().map(|()| {
            let now = Instant::now();
            let mut entries = self.entries();
            let entry = entries.entry(keys.token().to_owned()).or_default();
            entry.expire(now);
            f(entry, now)
        });
        Box::pin(std::future::ready(result))
    }
}

impl TokenStore for MemoryStore {
    fn read<'a>(&'a self, keys: &'a Keys) -> StoreFuture<'a, Snapshot> {
        self.with(keys, |entry, now| Snapshot {
            token: entry
                .token
                .as_ref()
                .map(|(generation, value, until)| StoredToken {
                    generation: *generation,
                    value: value.clone(),
                    remaining: *until - now,
                }),
            failure: entry
                .failure
                .as_ref()
                .map(|(value, streak, _)| StoredFailure {
                    value: value.clone(),
                    streak: *streak,
                    hold: entry.hold.map_or(Duration::ZERO, |h| h - now),
                }),
            leased: entry.lease.is_some(),
        })
    }

    fn try_lease<'a>(
        &'a self,
        keys: &'a Keys,
        owner: &'a str,
        ttl: Duration,
        floor: Option<Duration>,
    ) -> StoreFuture<'a, Lease> {
        let owner = owner.to_owned();
        self.with(keys, move |entry, now| {
            if entry.lease.is_some() {
                return Lease::Busy;
            }
            if floor.is_some() && entry.floor.is_some() {
                return Lease::FloorHolds;
            }
            entry.lease = Some((owner, now + ttl));
            if let Some(floor) = floor {
                entry.floor = Some(now + floor);
            }
            let stored = entry.token.as_ref().map_or(0, |t| t.0);
            entry.generation = entry.generation.max(stored) + 1;
            Lease::Granted(entry.generation)
        })
    }

    fn release<'a>(&'a self, keys: &'a Keys, owner: &'a str) -> StoreFuture<'a, ()> {
        let owner = owner.to_owned();
        self.with(keys, move |entry, _| {
            entry.lease.take_if(|(held_by, _)| *held_by == owner);
        })
    }

    fn publish<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        value: Vec<u8>,
        life: Duration,
    ) -> StoreFuture<'a, bool> {
        self.with(keys, move |entry, now| {
            if entry.fences(generation) {
                return false;
            }
            entry.token = Some((generation, value, now + life));
            entry.failure = None;
            entry.hold = None;
            true
        })
    }

    fn fail<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        failure: FailureRecord,
    ) -> StoreFuture<'a, ()> {
        self.with(keys, move |entry, now| {
            if entry.fences(generation) {
                return;
            }
            entry.failure = Some((failure.value, failure.streak, now + failure.keep));
            entry.hold = Some(now + failure.hold);
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(self.up()))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("credentials", &self.entries().len())
            .field("down", &self.inner.down.load(Ordering::SeqCst))
            .finish()
    }
}
