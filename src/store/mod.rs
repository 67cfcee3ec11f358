//! Shared token stores: one token, one fetch at a time and one backoff for a whole fleet of
//! processes. [`TokenStore`] is what a store provides; [`MemoryStore`] and [`RedisStore`] are two.
//!
//! A layer built with [`LengowAuthBuilder::store`](crate::LengowAuthBuilder::store) keeps its
//! in-process cache in front: requests read the token from memory and never touch the store.
//! The store is asked only where a layer would otherwise call `get_token`: a cold start, a
//! refresh ahead of expiry, a refresh forced by a rejection. There, the fleet agrees through
//! it on who fetches (a lease), which token is the newest (generations), how long it lives
//! (the store's own expiry, never one host's clock against another's), and how long every
//! process serves a failure before the next attempt (backoff, `Retry-After`, the cooldown
//! after refused credentials, the floor between forced refreshes).
//!
//! What a store holds is unreadable without the secret: key names are a keyed hash of the
//! origin and the access token, and the token is sealed with an AEAD whose key is derived
//! from the secret. A value that does not open (another secret, a garbled write) is read
//! as a miss.
//!
//! A store that fails or answers slowly never fails a request: the layer falls back to its
//! own single flight, says so once in the log, probes the store in the background and
//! rejoins the fleet when it answers again.

mod memory;
mod redis;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// What a store's calls return: a boxed future, so that a store can sit behind `dyn`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A place where a fleet of processes shares one Lengow token and agrees on who fetches it.
///
/// The layer drives the algorithm (when to read, lease, publish, back off); a store provides
/// a handful of atomic operations on the keys of one set of credentials, named by [`Keys`].
/// Values are opaque bytes, already sealed by the layer: a store never sees a token.
///
/// # What an implementation must guarantee
///
/// - **Atomicity.** Each call is one atomic step against every other call on the same
///   [`Keys`], from any process (a Lua script on Redis, a lock in memory).
/// - **Expiry.** A value given a life (`life`, `ttl`, `hold`, `floor`) is gone once it has
///   run out, and [`read`](TokenStore::read) reports what is left of it by the store's own
///   clock. The layer compares no clock of its own with the store's.
/// - **The lease.** [`try_lease`](TokenStore::try_lease) grants the lease to at most one
///   owner at a time, for `ttl`; only that owner's [`release`](TokenStore::release) ends
///   it early. Each grant hands out a generation larger than any handed out before and
///   larger than the stored token's.
/// - **Fencing.** [`publish`](TokenStore::publish) replaces the token only with a newer
///   generation, and clears the recorded failure when it does;
///   [`fail`](TokenStore::fail) records nothing over a token of that generation or newer.
/// - **Errors.** A store that cannot answer returns a [`StoreError`] promptly (a timeout of
///   its own rather than a hang). No error carries a secret.
pub trait TokenStore: Send + Sync + 'static {
    /// Everything the fleet knows about one set of credentials, read in one atomic step.
    fn read<'a>(&'a self, keys: &'a Keys) -> StoreFuture<'a, Snapshot>;

    /// Takes the lease for `owner` for `ttl` if no one holds it ([`Lease::Busy`] otherwise).
    /// With a `floor` (a refresh forced by a rejection), a free lease is granted only if no
    /// forced refresh started within the last floor ([`Lease::FloorHolds`] otherwise), and
    /// the grant starts a new floor.
    fn try_lease<'a>(
        &'a self,
        keys: &'a Keys,
        owner: &'a str,
        ttl: Duration,
        floor: Option<Duration>,
    ) -> StoreFuture<'a, Lease>;

    /// Ends the lease if `owner` still holds it; does nothing otherwise.
    fn release<'a>(&'a self, keys: &'a Keys, owner: &'a str) -> StoreFuture<'a, ()>;

    /// Stores `value` as the token of `generation` for `life`, if no token of that generation
    /// or newer is stored; clears the recorded failure when it does. Returns whether it did.
    fn publish<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        value: Vec<u8>,
        life: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Records a failed fetch of `generation`: `value` and the failures in a row (`streak`),
    /// kept for `keep`; every process serves it without fetching for `hold`. Does nothing if
    /// a token of that generation or newer is stored.
    fn fail<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        failure: FailureRecord,
    ) -> StoreFuture<'a, ()>;

    /// Checks that the store answers.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

/// A failed fetch as the fleet records it; see [`TokenStore::fail`].
#[derive(Clone)]
pub struct FailureRecord {
    /// The sealed error.
    pub value: Vec<u8>,
    /// Failed fetches in a row, this one included.
    pub streak: u32,
    /// How long every process serves the failure without fetching.
    pub hold: Duration,
    /// How long the record (and its streak) is kept.
    pub keep: Duration,
}

impl fmt::Debug for FailureRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureRecord")
            .field("streak", &self.streak)
            .field("hold", &self.hold)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// The answer of [`TokenStore::try_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The lease is the caller's; the token it fetches will be this generation.
    Granted(u64),
    /// Another owner holds it.
    Busy,
    /// A forced refresh started less than a floor ago (only when a floor was given).
    FloorHolds,
}

/// What [`TokenStore::read`] saw, in one atomic step. Values are sealed: printing them
/// shows no token.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The current token, if one is stored.
    pub token: Option<StoredToken>,
    /// The last failed fetch, if one is recorded.
    pub failure: Option<StoredFailure>,
    /// Whether someone holds the lease.
    pub leased: bool,
}

/// A stored token: sealed, with its generation and what is left of its life.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// The generation it was published with.
    pub generation: u64,
    /// The sealed token.
    pub value: Vec<u8>,
    /// What is left of its life, by the store's clock.
    pub remaining: Duration,
}

/// A recorded failure: sealed, with the failures in a row and what is left of its hold.
#[derive(Debug, Clone)]
pub struct StoredFailure {
    /// The sealed error.
    pub value: Vec<u8>,
    /// Failed fetches in a row.
    pub streak: u32,
    /// How much longer every process serves it without fetching (zero once the hold is
    /// over: the record is then kept only for its streak).
    pub hold: Duration,
}

/// The names of the keys of one set of credentials, all under one hash tag (so that a Redis
/// Cluster keeps them on one node, as its scripts need).
///
/// The tag is a keyed hash (HMAC-SHA256, key derived from the secret) of the origin and the
/// access token: no credential shows in a name, and two credentials never share one.
#[derive(Clone)]
pub struct Keys {
    token: String,
    lease: String,
    generation: String,
    failure: String,
    hold: String,
    floor: String,
}

impl Keys {
    pub(crate) fn new(tag: &str) -> Self {
        let name = |role: &str| format!("lengow-auth:{{{tag}}}:{role}");
        Self {
            token: name("token"),
            lease: name("lease"),
            generation: name("generation"),
            failure: name("failure"),
            hold: name("hold"),
            floor: name("floor"),
        }
    }

    /// The current token (sealed), with its generation; it expires with the token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lease: who is fetching.
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// The last generation handed out.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// The last failed fetch (sealed) and the failures in a row.
    pub fn failure(&self) -> &str {
        &self.failure
    }

    /// Present while every process serves the last failure without fetching.
    pub fn hold(&self) -> &str {
        &self.hold
    }

    /// Present for the floor after a forced refresh.
    pub fn floor(&self) -> &str {
        &self.floor
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names hold no secret, but they do say which credentials a process uses.
        f.debug_struct("Keys")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A store that could not answer. The layer falls back to its own fetches when it sees one.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// An error with this message (which must hold no secret) and an optional cause.
    pub fn new(
        message: impl Into<String>,
        source: Option<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fencing every store must give, checked against each: once the lease of generation
    /// `slow` expired and `fast` was granted, the slow holder can neither replace `fast`'s token,
    /// nor record a failure over it, nor end `fast`'s lease.
    pub(crate) async fn assert_fences_a_slow_writer(
        store: &dyn TokenStore,
        keys: &Keys,
        slow: u64,
        fast: u64,
    ) -> StoredToken {
        let hour = Duration::from_secs(3600);
        assert!(fast > slow);
        assert!(
            store
                .publish(keys, fast, b"new".to_vec(), hour)
                .await
                .unwrap()
        );
        assert!(
            !store
                .publish(keys, slow, b"old".to_vec(), hour)
                .await
                .unwrap()
        );
        let failure = FailureRecord {
            value: b"x".to_vec(),
            streak: 1,
            hold: hour,
            keep: hour,
        };
        store.fail(keys, slow, failure).await.unwrap();
        store.release(keys, "slow").await.unwrap();
        let snapshot = store.read(keys).await.unwrap();
        assert!(snapshot.failure.is_none() && snapshot.leased);
        let token = snapshot.token.unwrap();
        assert_eq!(
            (token.generation, token.value.as_slice()),
            (fast, &b"new"[..])
        );
        token
    }
}
