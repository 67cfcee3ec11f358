//! The fleet's algorithm over a shared `MemoryStore`, several layers' seats in one process,
//! under paused time.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::store::{Keys, MemoryStore, StoreFuture, StoredToken};

const HOUR: Duration = Duration::from_secs(3600);

fn config() -> FleetConfig {
    FleetConfig {
        lifetime: HOUR,
        refresh_ahead: Duration::from_secs(600),
        fetch_timeout: Duration::from_secs(10),
    }
}

fn seat(store: &MemoryStore, secret: &str) -> Arc<Fleet> {
    Arc::new(Fleet::new(
        Arc::new(store.clone()),
        &Credentials::new("access", secret),
        "http://127.0.0.1:1",
        config(),
    ))
}

/// Counts `get_token` calls; each answers a new token after `delay`, or `error`.
#[derive(Clone, Default)]
struct Lengow {
    calls: Arc<AtomicUsize>,
}

impl Lengow {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fetch(
        &self,
        delay: Duration,
        error: Option<Error>,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<TokenAnswer, Error>> + Send>>
    {
        let calls = Arc::clone(&self.calls);
        move || {
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                match error {
                    Some(e) => Err(e),
                    None => Ok(TokenAnswer {
                        token: format!("token-{n}"),
                        account_id: 7,
                        user_id: None,
                    }),
                }
            })
        }
    }
}

/// The cache's policy: 1 s doubling to 60 s, at least `Retry-After`, 60 s after refused
/// credentials (no jitter, so that the tests can count).
fn policy(error: &Error, streak: u32) -> Duration {
    if error.is_invalid_credentials() {
        return Duration::from_secs(60);
    }
    let backoff =
        Duration::from_secs(1 << streak.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    backoff.max(error.retry_after().unwrap_or_default())
}

fn rate_limited(secs: u64) -> Error {
    Error::build(
        Kind::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        },
        Some("slow down".to_owned()),
        None,
    )
}

async fn obtain(seat: &Arc<Fleet>, want: Want, lengow: &Lengow) -> Result<Obtained, Failure> {
    seat.obtain(want, lengow.fetch(Duration::from_millis(300), None), policy)
        .await
}

#[tokio::test(start_paused = true)]
async fn a_cold_fleet_fetches_once() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let seat = seat(&store, "secret");
        let lengow = lengow.clone();
        tasks.push(tokio::spawn(async move {
            obtain(&seat, Want::Demand, &lengow).await
        }));
    }
    let mut here = 0;
    for task in tasks {
        let got = task.await.unwrap().unwrap();
        assert_eq!((got.answer.token.as_str(), got.generation), ("token-1", 1));
        assert!(got.remaining > HOUR - Duration::from_secs(1) && got.remaining <= HOUR);
        here += usize::from(got.fetched_here);
    }
    assert_eq!((lengow.calls(), here), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn remaining_life_is_the_stores() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let first = obtain(&seat(&store, "secret"), Want::Demand, &lengow)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(1000)).await;
    let later = obtain(&seat(&store, "secret"), Want::Demand, &lengow)
        .await
        .unwrap();
    assert!(!later.fetched_here);
    assert_eq!(later.remaining, first.remaining - Duration::from_secs(1000));
    assert_eq!(lengow.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_is_one_fetch_for_the_fleet() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let seats: Vec<_> = (0..4).map(|_| seat(&store, "secret")).collect();
    let first = obtain(&seats[0], Want::Demand, &lengow).await.unwrap();
    // Not yet due: a newer token is wanted, so the first refresher fetches...
    tokio::time::advance(HOUR - Duration::from_secs(700)).await;
    let want = Want::Background {
        current: first.generation,
    };
    let mut tasks = Vec::new();
    for seat in &seats {
        let (seat, lengow) = (Arc::clone(seat), lengow.clone());
        tasks.push(tokio::spawn(
            async move { obtain(&seat, want, &lengow).await },
        ));
    }
    for task in tasks {
        let got = task.await.unwrap().unwrap();
        assert_eq!(got.generation, 2);
    }
    assert_eq!(lengow.calls(), 2);
    // ...and a refresher that wakes later adopts the new token.
    let late = obtain(&seats[3], want, &lengow).await.unwrap();
    assert_eq!(
        (late.generation, late.fetched_here, lengow.calls()),
        (2, false, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_due_token_is_not_what_a_refresher_wants() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    obtain(&seat(&store, "secret"), Want::Demand, &lengow)
        .await
        .unwrap();
    tokio::time::advance(HOUR - Duration::from_secs(60)).await;
    // A cold process may still use it...
    let cold = obtain(&seat(&store, "secret"), Want::Demand, &lengow)
        .await
        .unwrap();
    assert_eq!((cold.generation, lengow.calls()), (1, 1));
    // ...but a refresher of an older generation fetches rather than adopt a token that is
    // itself due.
    let got = obtain(
        &seat(&store, "secret"),
        Want::Background { current: 0 },
        &lengow,
    )
    .await
    .unwrap();
    assert_eq!((got.generation, lengow.calls()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_rejection_seen_by_all_forces_one_fetch_then_the_floor_holds() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let seats: Vec<_> = (0..6).map(|_| seat(&store, "secret")).collect();
    let first = obtain(&seats[0], Want::Demand, &lengow).await.unwrap();
    let floor = Duration::from_secs(10);
    let forced = |rejected| Want::Forced { rejected, floor };
    let mut tasks = Vec::new();
    for seat in &seats {
        let (seat, lengow) = (Arc::clone(seat), lengow.clone());
        let want = forced(first.generation);
        tasks.push(tokio::spawn(
            async move { obtain(&seat, want, &lengow).await },
        ));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().generation, 2);
    }
    assert_eq!(lengow.calls(), 2);
    // The new token is rejected too, within the floor: no fetch, no newer token.
    let refused = obtain(&seats[1], forced(2), &lengow).await;
    assert!(matches!(refused, Err(Failure::FloorHolds)), "{refused:?}");
    assert_eq!(lengow.calls(), 2);
    tokio::time::advance(floor).await;
    let got = obtain(&seats[2], forced(2), &lengow).await.unwrap();
    assert_eq!((got.generation, lengow.calls()), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_served_by_the_whole_fleet_until_its_hold_ends() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let first = seat(&store, "secret")
        .obtain(
            Want::Demand,
            lengow.fetch(Duration::ZERO, Some(rate_limited(5))),
            policy,
        )
        .await;
    assert!(
        matches!(&first, Err(Failure::Fetch { error, wait }) if error.is_rate_limited() && *wait == Duration::from_secs(5)),
        "{first:?}"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let other = obtain(&seat(&store, "secret"), Want::Demand, &lengow).await;
    match other {
        Err(Failure::Fetch { error, wait }) => {
            assert!(error.is_rate_limited());
            assert_eq!(error.server_message(), Some("slow down"));
            assert_eq!(
                (wait, error.retry_after()),
                (Duration::from_secs(3), Some(wait))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lengow.calls(), 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    let got = obtain(&seat(&store, "secret"), Want::Demand, &lengow)
        .await
        .unwrap();
    assert!(got.fetched_here);
    assert_eq!(lengow.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_doubles_across_the_fleet() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let unavailable = || {
        Error::build(
            Kind::Unavailable {
                status: Some(http::StatusCode::BAD_GATEWAY),
                retry_after: None,
            },
            None,
            None,
        )
    };
    let mut waits = Vec::new();
    for _ in 0..4 {
        // Each failure in another process, each after the previous hold.
        let got = seat(&store, "secret")
            .obtain(
                Want::Demand,
                lengow.fetch(Duration::ZERO, Some(unavailable())),
                policy,
            )
            .await;
        let Err(Failure::Fetch { wait, error }) = got else {
            panic!("{got:?}")
        };
        assert_eq!(error.status(), Some(http::StatusCode::BAD_GATEWAY));
        waits.push(wait.as_secs());
        tokio::time::advance(wait).await;
    }
    assert_eq!(waits, [1, 2, 4, 8]);
    assert_eq!(lengow.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_dies_costs_one_more_fetch() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let doomed = {
        let (seat, lengow) = (seat(&store, "secret"), lengow.clone());
        tokio::spawn(async move {
            seat.obtain(Want::Demand, lengow.fetch(HOUR, None), policy)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(lengow.calls(), 1);
    let waiter = {
        let (seat, lengow) = (seat(&store, "secret"), lengow.clone());
        tokio::spawn(async move { obtain(&seat, Want::Demand, &lengow).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    doomed.abort();
    let started = Instant::now();
    let got = waiter.await.unwrap().unwrap();
    assert!(got.fetched_here);
    assert_eq!(lengow.calls(), 2);
    // It waited for the lease to run out (fetch timeout + slack), not longer.
    assert!(started.elapsed() <= config().fetch_timeout + LEASE_SLACK + Duration::from_millis(400));
}

#[tokio::test(start_paused = true)]
async fn a_slow_writer_cannot_replace_a_newer_token() {
    let store = MemoryStore::new();
    let keys = seat(&store, "secret").sealer.keys().clone();
    let ttl = Duration::from_secs(1);
    let Lease::Granted(slow) = store.try_lease(&keys, "slow", ttl, None).await.unwrap() else {
        panic!("free lease refused")
    };
    tokio::time::advance(ttl).await;
    let Lease::Granted(fast) = store.try_lease(&keys, "fast", ttl, None).await.unwrap() else {
        panic!("expired lease not granted")
    };
    crate::store::tests::assert_fences_a_slow_writer(&store, &keys, slow, fast).await;
}

#[tokio::test(start_paused = true)]
async fn a_value_that_does_not_open_reads_as_a_miss() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let seat = seat(&store, "secret");
    let keys = seat.sealer.keys().clone();
    let Lease::Granted(g) = store.try_lease(&keys, "x", HOUR, None).await.unwrap() else {
        panic!()
    };
    store.release(&keys, "x").await.unwrap();
    let other = Sealer::new(
        &Credentials::new("access", "another secret"),
        "http://127.0.0.1:1",
    );
    let foreign = other.seal(
        "token",
        g,
        br#"{"token":"t","account_id":1,"user_id":null}"#,
    );
    assert!(store.publish(&keys, g, foreign, HOUR).await.unwrap());
    let got = obtain(&seat, Want::Demand, &lengow).await.unwrap();
    assert_eq!(
        (got.answer.token.as_str(), got.fetched_here),
        ("token-1", true)
    );
    // Garbled bytes under a newer generation: a miss too.
    let snapshot = store.read(&keys).await.unwrap();
    let StoredToken { generation, .. } = snapshot.token.unwrap();
    assert!(
        store
            .publish(&keys, generation + 1, vec![1, 2, 3], HOUR)
            .await
            .unwrap()
    );
    let got = obtain(&seat, Want::Demand, &lengow).await.unwrap();
    assert_eq!((got.answer.token.as_str(), lengow.calls()), ("token-2", 2));
}

#[tokio::test(start_paused = true)]
async fn two_credentials_share_nothing() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let a = obtain(&seat(&store, "secret a"), Want::Demand, &lengow)
        .await
        .unwrap();
    let b = obtain(&seat(&store, "secret b"), Want::Demand, &lengow)
        .await
        .unwrap();
    assert!(a.fetched_here && b.fetched_here);
    assert_ne!(a.answer.token, b.answer.token);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_fails_leaves_each_process_on_its_own_until_it_is_back() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let (a, b) = (seat(&store, "secret"), seat(&store, "secret"));
    store.set_down(true);
    for seat in [&a, &b] {
        let got = obtain(seat, Want::Demand, &lengow).await.unwrap();
        assert!(got.fetched_here && got.generation == 0);
    }
    assert_eq!(lengow.calls(), 2);
    // Failures are this process's own too, and its backoff.
    let got = a
        .obtain(
            Want::Demand,
            lengow.fetch(Duration::ZERO, Some(rate_limited(3))),
            policy,
        )
        .await;
    assert!(matches!(got, Err(Failure::Fetch { wait, .. }) if wait == Duration::from_secs(3)));
    store.set_down(false);
    tokio::time::sleep(PROBE_EVERY).await;
    for seat in [&a, &b] {
        obtain(seat, Want::Demand, &lengow).await.unwrap();
    }
    assert_eq!(
        lengow.calls(),
        4,
        "one fetch for the fleet once the store is back"
    );
}

/// A store whose `try_lease` comes a second late: another process can take the lease,
/// fetch, publish and release between this one's read and its `try_lease`.
struct LateLease(MemoryStore);

impl TokenStore for LateLease {
    fn read<'a>(&'a self, keys: &'a Keys) -> StoreFuture<'a, Snapshot> {
        self.0.read(keys)
    }

    fn try_lease<'a>(
        &'a self,
        keys: &'a Keys,
        owner: &'a str,
        ttl: Duration,
        floor: Option<Duration>,
    ) -> StoreFuture<'a, Lease> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.0.try_lease(keys, owner, ttl, floor).await
        })
    }

    fn release<'a>(&'a self, keys: &'a Keys, owner: &'a str) -> StoreFuture<'a, ()> {
        self.0.release(keys, owner)
    }

    fn publish<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        value: Vec<u8>,
        life: Duration,
    ) -> StoreFuture<'a, bool> {
        self.0.publish(keys, generation, value, life)
    }

    fn fail<'a>(
        &'a self,
        keys: &'a Keys,
        generation: u64,
        failure: FailureRecord,
    ) -> StoreFuture<'a, ()> {
        self.0.fail(keys, generation, failure)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.0.ping()
    }
}

#[tokio::test(start_paused = true)]
async fn a_forced_refresh_that_finishes_meanwhile_is_adopted_not_refused() {
    let store = MemoryStore::new();
    let lengow = Lengow::default();
    let first = obtain(&seat(&store, "secret"), Want::Demand, &lengow)
        .await
        .unwrap();
    let want = Want::Forced {
        rejected: first.generation,
        floor: Duration::from_secs(10),
    };
    let late = Arc::new(Fleet::new(
        Arc::new(LateLease(store.clone())),
        &Credentials::new("access", "secret"),
        "http://127.0.0.1:1",
        config(),
    ));
    let behind = {
        let lengow = lengow.clone();
        tokio::spawn(async move { obtain(&late, want, &lengow).await })
    };
    tokio::task::yield_now().await;
    let ahead = obtain(&seat(&store, "secret"), want, &lengow)
        .await
        .unwrap();
    let behind = behind.await.unwrap().unwrap();
    assert_eq!(
        (ahead.generation, behind.generation, lengow.calls()),
        (2, 2, 2)
    );
}
