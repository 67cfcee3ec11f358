//! The scripts against a real `redis-server`, started here on a free port.

use super::*;
use crate::testing::RedisServer;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn the_scripts_lease_fence_and_expire() {
    let Some(server) = RedisServer::start_or_skip() else {
        return;
    };
    let store = RedisStore::open(&server.url()).unwrap();
    let keys = Keys::new("tag");
    let empty = store.read(&keys).await.unwrap();
    assert!(empty.token.is_none() && empty.failure.is_none() && !empty.leased);

    let ttl = Duration::from_millis(60);
    let Lease::Granted(slow) = store.try_lease(&keys, "slow", ttl, None).await.unwrap() else {
        panic!("a free lease was refused")
    };
    assert_eq!(
        store.try_lease(&keys, "fast", ttl, None).await.unwrap(),
        Lease::Busy
    );
    // Only its owner ends a lease early.
    store.release(&keys, "fast").await.unwrap();
    assert!(store.read(&keys).await.unwrap().leased);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let Lease::Granted(fast) = store.try_lease(&keys, "fast", HOUR, None).await.unwrap() else {
        panic!("an expired lease was not granted")
    };
    // The slow writer, its lease gone, can neither replace the token, nor record a failure
    // over it, nor end the new holder's lease.
    let token = crate::store::tests::assert_fences_a_slow_writer(&store, &keys, slow, fast).await;
    assert!(token.remaining > HOUR - Duration::from_secs(5) && token.remaining <= HOUR);
    store.release(&keys, "fast").await.unwrap();

    // A newer generation's failure is recorded, held, and cleared by the next token.
    let Lease::Granted(next) = store.try_lease(&keys, "a", HOUR, None).await.unwrap() else {
        panic!()
    };
    let failure = FailureRecord {
        value: b"x".to_vec(),
        streak: 1,
        hold: Duration::from_secs(5),
        keep: HOUR,
    };
    store.fail(&keys, next, failure).await.unwrap();
    let held = store.read(&keys).await.unwrap().failure.unwrap();
    assert_eq!(held.streak, 1);
    assert!(held.hold > Duration::ZERO && held.hold <= Duration::from_secs(5));
    store.release(&keys, "a").await.unwrap();

    // The floor: a forced lease, then none within it (a plain lease still is).
    let floor = Some(Duration::from_secs(30));
    let Lease::Granted(forced) = store.try_lease(&keys, "b", HOUR, floor).await.unwrap() else {
        panic!()
    };
    assert!(
        store
            .publish(&keys, forced, b"forced".to_vec(), HOUR)
            .await
            .unwrap()
    );
    assert!(store.read(&keys).await.unwrap().failure.is_none());
    store.release(&keys, "b").await.unwrap();
    assert_eq!(
        store.try_lease(&keys, "c", HOUR, floor).await.unwrap(),
        Lease::FloorHolds
    );
    assert!(matches!(
        store.try_lease(&keys, "c", HOUR, None).await.unwrap(),
        Lease::Granted(g) if g > forced
    ));
}

#[tokio::test]
async fn calls_fail_fast_while_redis_is_down_and_work_once_it_is_back() {
    let Some(mut server) = RedisServer::start_or_skip() else {
        return;
    };
    let store = RedisStore::open(&server.url()).unwrap();
    let keys = Keys::new("tag");
    store.ping().await.unwrap();
    server.kill();
    assert!(store.read(&keys).await.is_err());
    assert!(store.ping().await.is_err());
    server.restart().unwrap();
    // The scripts are gone with the old server: they are loaded again.
    let mut answered = false;
    for _ in 0..20 {
        if store.read(&keys).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered);
    assert!(matches!(
        store.try_lease(&keys, "x", HOUR, None).await.unwrap(),
        Lease::Granted(_)
    ));
}

#[test]
fn urls_are_checked_and_never_repeated() {
    let e = RedisStore::open("http://user:hunter2@127.0.0.1/").unwrap_err();
    assert!(e.is_config() && !e.to_string().contains("hunter2"), "{e}");
    let store = RedisStore::open("rediss://:hunter2@redis.example:6380/0").unwrap();
    assert!(!format!("{store:?}").contains("hunter2"));
    RedisStore::open("redis://127.0.0.1:6379/").unwrap();
}

#[tokio::test]
async fn rediss_speaks_tls() {
    let Some(server) = RedisServer::start_or_skip() else {
        return;
    };
    // TLS to a plain server: the handshake fails, as an error (a crypto provider is found,
    // the client config is built, no panic).
    let url = format!("rediss://127.0.0.1:{}/", server.port());
    let store = RedisStore::open(&url).unwrap();
    let e = store.ping().await.unwrap_err().to_string();
    assert!(!e.contains("provider") && !e.contains("feature"), "{e}");
    assert!(store.read(&Keys::new("tag")).await.is_err());
}

#[tokio::test]
async fn a_password_in_the_url_is_used_and_never_shown() {
    let Some(server) = RedisServer::start_or_skip() else {
        return;
    };
    assert_eq!(
        server
            .command("CONFIG SET requirepass hunter2-pass")
            .unwrap(),
        "+OK"
    );
    let with = RedisStore::open(&format!(
        "redis://:hunter2-pass@127.0.0.1:{}/",
        server.port()
    ))
    .unwrap();
    with.ping().await.unwrap();
    assert!(!format!("{with:?}").contains("hunter2"));
    let without = RedisStore::open(&server.url()).unwrap();
    let e = without.ping().await.unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}
