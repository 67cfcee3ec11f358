//! [`RedisStore`]: the fleet's store on Redis, one Lua script per atomic step.
//! Connects lazily through the redis crate's connection manager, which reconnects by itself.

use std::fmt;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{
    FailureRecord, Keys, Lease, Snapshot, StoreError, StoreFuture, StoredFailure, StoredToken,
    TokenStore,
};
use crate::error::Error;

/// The longest a call to Redis may take before the layer stops waiting and fetches on its
/// own: far more than a healthy Redis needs, far less than a request can wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the counter of generations is kept: far longer than a token lives.
const GENERATION_KEEP: Duration = Duration::from_secs(24 * 3600);

/// One atomic read of everything the fleet shares for a set of credentials.
/// KEYS: token, failure, hold, lease.
const READ: &str = r"
local t = redis.call('HMGET', KEYS[1], 'g', 'v')
local f = redis.call('HMGET', KEYS[2], 's', 'v')
return {t[1] or '', t[2] or '', redis.call('PTTL', KEYS[1]),
        f[1] or '', f[2] or '', redis.call('PTTL', KEYS[3]), redis.call('EXISTS', KEYS[4])}
";

/// The lease (`SET NX PX` in effect: the script is atomic), refused within a forced-refresh
/// floor; a granted lease hands out a generation newer than any before and than the token's.
/// KEYS: lease, generation, token, floor. ARGV: owner, ttl ms, floor ms (0: none), keep ms.
const TRY_LEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local floor = tonumber(ARGV[3])
if floor > 0 and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if floor > 0 then redis.call('SET', KEYS[4], '1', 'PX', ARGV[3]) end
local g = redis.call('INCR', KEYS[2])
local current = tonumber(redis.call('HGET', KEYS[3], 'g') or '0')
if g <= current then
  g = current + 1
  redis.call('SET', KEYS[2], g)
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return g
";

/// Ends the lease only if its owner asks. KEYS: lease. ARGV: owner.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Replaces the token only with a newer generation, and clears the failure.
/// KEYS: token, failure, hold. ARGV: generation, value, life ms.
const PUBLISH: &str = r"
local current = redis.call('HGET', KEYS[1], 'g')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Records a failure, unless a token of that generation or newer is stored.
/// KEYS: token, failure, hold. ARGV: generation, value, streak, hold ms, keep ms.
const FAIL: &str = r"
local current = redis.call('HGET', KEYS[1], 'g')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 's', ARGV[3], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
return 1
";

/// A [`TokenStore`] on Redis (or any server that speaks its protocol and runs its Lua
/// scripts, such as Valkey): the store a fleet of processes shares.
///
/// Every atomic step is one Lua script on the keys of one set of credentials, all under one
/// hash tag, so a Redis Cluster runs them on one node. Calls give up after a second; the
/// layer then falls back to its own fetches until Redis answers again.
///
/// ```no_run
/// # fn run(credentials: lengow_auth::Credentials) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use lengow_auth::{LengowAuthLayer, store::RedisStore};
///
/// let store = RedisStore::open("redis://127.0.0.1:6379/")?; // no connection yet
/// let layer = LengowAuthLayer::builder(credentials)
///     .store(store)
///     .build(Client::builder(TokioExecutor::new()).build_http())?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub struct RedisStore {
    client: Client,
    /// Made on first use, inside the runtime that uses it; dropped after a failed call, so
    /// that the next call starts afresh (in whatever runtime it runs).
    connection: Mutex<Option<ConnectionManager>>,
}

impl RedisStore {
    /// A store on the Redis at `url`: `redis://[user:password@]host[:port][/db]`, or
    /// `rediss://…` for TLS (rustls, Mozilla's roots). Connects on first use, not here.
    ///
    /// Fails only if the URL is not a Redis URL; the error does not repeat it (it may hold
    /// a password).
    pub fn open(url: &str) -> Result<Self, Error> {
        let client = Client::open(url).map_err(|e| {
            Error::config(format!(
                "the redis url is not valid ({:?}): expected redis://host:port/ or rediss://host:port/",
                e.kind()
            ))
        })?;
        Ok(Self::from_client(client))
    }

    /// A store on the Redis an existing client points at (its URL, TLS settings and
    /// credentials are used as they are).
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            connection: Mutex::new(None),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<ConnectionManager>> {
        // Holds one handle, replaced in one step: a poisoned lock holds a valid value.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection manager, made now if there is none.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.slot();
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| redis_error("cannot set up the redis connection", e))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs one call with the deadline; a failed call drops the connection.
    fn call<'a, T, F>(
        &'a self,
        what: &'static str,
        call: impl FnOnce(ConnectionManager) -> F + Send + 'a,
    ) -> StoreFuture<'a, T>
    where
        F: Future<Output = redis::RedisResult<T>> + Send + 'a,
        T: Send + 'a,
    {
        Box::pin(async move {
            let connection = self.connection()?;
            let result = match tokio::time::timeout(CALL_TIMEOUT, call(connection)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => redis_error(what, e),
                Err(_) => StoreError::new(
                    format!("{what}: redis did not answer within {CALL_TIMEOUT:?}"),
                    None,
                ),
            };
            *self.slot() = None;
            Err(result)
        })
    }
}

fn redis_error(what: &str, e: redis::RedisError) -> StoreError {
    // The redis crate's messages name commands and server replies, never the URL.
    StoreError::new(format!("{what}: {e}"), Some(Box::new(e)))
}

fn millis(d: Duration) -> u64 {
    // Redis refuses an expiry of zero.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A PTTL as a duration; missing (-2) and no expiry (-1) read as zero.
fn pttl(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

type ReadReply = (String, Vec<u8>, i64, String, Vec<u8>, i64, i64);

impl TokenStore for RedisStore {
    fn read<'a>(&'a self, keys: &'a Keys) -> StoreFuture<'a, Snapshot> {
        self.call("reading the shared token", move |mut c| async move {
            let (generation, value, life, streak, failure, hold, leased): ReadReply =
                Script::new(READ)
                    .key(&[keys.token(), keys.failure(), keys.hold(), keys.lease()])
                    .invoke_async(&mut c)
                    .await?;
            let token = match (generation.parse::<u64>(), life > 0) {
                (Ok(generation), true) => Some(StoredToken {
                    generation,
                    value,
                    remaining: pttl(life),
                }),
                _ => None,
            };
            let failure = streak.parse::<u32>().ok().map(|streak| StoredFailure {
                value: failure,
                streak,
                hold: pttl(hold),
            });
            Ok(Snapshot {
                token,
                failure,
                leased: leased == 1,
            })
        })
    }

    fn try_lease<'a>(
        &'a self,
        keys: &'a Keys,
        owner: &'a str,
        ttl: Duration,
        floor: Option<Duration>,
    ) -> StoreFuture<'a, Lease> {
        self.call("taking the lease", move |mut c| async move {
            let reply: i64 = Script::new(TRY_LEASE)
                .key(&[keys.lease(), keys.generation(), keys.token(), keys.floor()])
                .arg(owner)
                .arg(millis(ttl))
                .arg(floor.map_or(0, millis))
                .arg(millis(GENERATION_KEEP))
                .invoke_async(&mut c)
                .await?;
            Ok(match reply {
                -1 => Lease::FloorHolds,
                g if g > 0 => Lease::Granted(g.unsigned_abs()),
                _ => Lease::Busy,
            })
        })
    }

    fn release<'a>(&'a self, keys: &'a Keys, owner: &'a str) -> StoreFuture<'a, ()> {
        self.call("releasing the lease", move |mut c| async move {
            let _: i64 = Script::new(RELEASE)
                .key(keys.lease())
                .arg(owner)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
    }

    fn publish<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        value: Vec<u8>,
        life: Duration,
    ) -> StoreFuture<'a, bool> {
        self.call("publishing the token", move |mut c| async move {
            let done: i64 = Script::new(PUBLISH)
                .key(&[keys.token(), keys.failure(), keys.hold()])
                .arg(generation)
                .arg(value)
                .arg(millis(life))
                .invoke_async(&mut c)
                .await?;
            Ok(done == 1)
        })
    }

    fn fail<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        failure: FailureRecord,
    ) -> StoreFuture<'a, ()> {
        self.call("recording a failed fetch", move |mut c| async move {
            let _: i64 = Script::new(FAIL)
                .key(&[keys.token(), keys.failure(), keys.hold()])
                .arg(generation)
                .arg(failure.value)
                .arg(failure.streak)
                .arg(millis(failure.hold))
                .arg(millis(failure.keep))
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.call("pinging redis", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await?;
            Ok(())
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may hold a password: none of it is printed.
        f.debug_struct("RedisStore")
            .field("connected", &self.slot().is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, feature = "test-util"))]
#[path = "redis_tests.rs"]
mod tests;
