//! A fleet of real processes sharing one token through a real `redis-server`.
//!
//! Each test starts its own `redis-server` (a free loopback port, no persistence) and one
//! `FakeLengow`, then runs worker processes: this test binary again, with
//! `LENGOW_FLEET_WORKER` set, running only [`worker_process`]. A worker builds a layer from
//! its environment, prints `ready`, then obeys commands read from stdin (`burst N`,
//! `run MS N`, `exit`) and answers each with one `done …` line of counts.
//!
//! Without `redis-server` the tests say how to install it and pass, except under `CI=true`,
//! where they fail.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::LengowAuthLayer;
use lengow_auth::store::RedisStore;
use lengow_auth::testing::{FakeLengow, RedisServer, TokenFailure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---- The worker: runs in a child process -------------------------------------------------

/// The worker's entry point; a no-op in the test process itself.
#[test]
fn worker_process() {
    if std::env::var_os("LENGOW_FLEET_WORKER").is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = runtime.block_on(worker()) {
        println!("fleet: error {e}");
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(env(name).parse().unwrap_or(default))
}

async fn worker() -> Result<(), BoxError> {
    let api = env("FLEET_API");
    let mut builder = LengowAuthLayer::builder(lengow_auth::Credentials::new(
        env("FLEET_ACCESS"),
        env("FLEET_SECRET"),
    ))
    .api_url(api.parse()?)
    .token_lifetime(env_ms("FLEET_LIFETIME_MS", 3_600_000))
    .refresh_ahead(env_ms("FLEET_AHEAD_MS", 600_000))
    .fetch_timeout(env_ms("FLEET_FETCH_TIMEOUT_MS", 10_000))
    .invalid_credentials_cooldown(env_ms("FLEET_COOLDOWN_MS", 60_000));
    let redis = env("FLEET_REDIS");
    if !redis.is_empty() {
        builder = builder.store(RedisStore::open(&redis)?);
    }
    let layer = builder.build(Client::builder(TokioExecutor::new()).build_http())?;
    let client = layer.layer(
        Client::builder(TokioExecutor::new()).build_http::<lengow_auth::ReplayBody<Empty<Bytes>>>(),
    );
    let uri = format!("{api}/v3.0/orders");
    println!("fleet: ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (ms, loops) = match words.as_slice() {
            ["burst", n] => (0, n.parse()?),
            ["run", ms, n] => (ms.parse()?, n.parse()?),
            _ => return Ok(()),
        };
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let waits_before = layer.stats().token_waits;
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut tasks = Vec::new();
        for _ in 0..loops {
            let (client, uri, ok, failed) =
                (client.clone(), uri.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let request = http::Request::get(uri.as_str()).body(Empty::new());
                    let answer = match request {
                        Ok(request) => client.clone().oneshot(request).await.ok(),
                        Err(_) => None,
                    };
                    match answer {
                        Some(response) if response.status() == 200 => {
                            let _ = response.into_body().collect().await;
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    if tokio::time::Instant::now() >= until {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(20..=60))).await;
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        println!(
            "fleet: done ok={} failed={} waits={}",
            ok.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst),
            layer.stats().token_waits - waits_before
        );
    }
    Ok(())
}

// ---- The test process: redis-server, FakeLengow, the workers ------------------------------

/// How the workers are set up.
#[derive(Clone)]
struct Setup {
    api: String,
    access: String,
    secret: String,
    redis: String,
    lifetime_ms: u64,
    ahead_ms: u64,
    fetch_timeout_ms: u64,
    cooldown_ms: u64,
}

impl Setup {
    fn new(fake: &FakeLengow, redis: &RedisServer) -> Self {
        let credentials = fake.credentials();
        Self {
            api: fake.uri().to_string().trim_end_matches('/').to_owned(),
            access: credentials.access_token().to_owned(),
            secret: credentials.secret().to_owned(),
            redis: redis.url(),
            lifetime_ms: 3_600_000,
            ahead_ms: 600_000,
            fetch_timeout_ms: 10_000,
            cooldown_ms: 60_000,
        }
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Counts a worker reported for one command.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Done {
    ok: u64,
    failed: u64,
    waits: u64,
}

impl std::ops::AddAssign for Done {
    fn add_assign(&mut self, other: Self) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.waits += other.waits;
    }
}

impl Worker {
    fn spawn(setup: &Setup) -> Worker {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([
                "worker_process",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("LENGOW_FLEET_WORKER", "1")
            .env("FLEET_API", &setup.api)
            .env("FLEET_ACCESS", &setup.access)
            .env("FLEET_SECRET", &setup.secret)
            .env("FLEET_REDIS", &setup.redis)
            .env("FLEET_LIFETIME_MS", setup.lifetime_ms.to_string())
            .env("FLEET_AHEAD_MS", setup.ahead_ms.to_string())
            .env("FLEET_FETCH_TIMEOUT_MS", setup.fetch_timeout_ms.to_string())
            .env("FLEET_COOLDOWN_MS", setup.cooldown_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("a worker process");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Worker {
            child,
            stdin,
            lines,
        }
    }

    /// The worker's next `fleet: …` line.
    async fn line(&mut self) -> String {
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("worker output") {
                // libtest prints `test worker_process ... ` before the first line.
                if let Some((_, line)) = line.split_once("fleet: ") {
                    return line.to_owned();
                }
            }
            panic!("the worker exited")
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("a worker answered within 60 s")
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("worker stdin");
    }

    async fn done(&mut self) -> Done {
        let line = self.line().await;
        let mut done = Done::default();
        for field in line
            .strip_prefix("done ")
            .unwrap_or_else(|| panic!("{line}"))
            .split(' ')
        {
            let (name, value) = field.split_once('=').expect("name=value");
            let value = value.parse().expect("a count");
            match name {
                "ok" => done.ok = value,
                "failed" => done.failed = value,
                "waits" => done.waits = value,
                _ => {}
            }
        }
        done
    }
}

/// `n` workers, each ready.
async fn fleet(setup: &Setup, n: usize) -> Vec<Worker> {
    let mut workers: Vec<Worker> = (0..n).map(|_| Worker::spawn(setup)).collect();
    for worker in &mut workers {
        assert_eq!(worker.line().await, "ready");
    }
    workers
}

/// Sends `command` to every worker at once and adds up their answers.
async fn all(workers: &mut [Worker], command: &str) -> Done {
    for worker in workers.iter_mut() {
        worker.send(command).await;
    }
    let mut total = Done::default();
    for worker in workers.iter_mut() {
        total += worker.done().await;
    }
    total
}

/// Every key name in Redis, and every key's content (string or hash fields).
async fn dump(redis: &RedisServer) -> Vec<(String, Vec<u8>)> {
    let client = redis::Client::open(redis.url()).expect("a redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("a redis connection");
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .expect("KEYS");
    let mut out = Vec::new();
    for name in names {
        let kind: String = redis::cmd("TYPE")
            .arg(&name)
            .query_async(&mut c)
            .await
            .expect("TYPE");
        let value: Vec<u8> = if kind == "hash" {
            let fields: Vec<Vec<u8>> = redis::cmd("HGETALL")
                .arg(&name)
                .query_async(&mut c)
                .await
                .expect("HGETALL");
            fields.concat()
        } else {
            redis::cmd("GET")
                .arg(&name)
                .query_async(&mut c)
                .await
                .unwrap_or_default()
        };
        out.push((name, value));
    }
    out
}

/// The pid in the lease's owner (`<pid>-<random>`), if someone holds it.
async fn lease_holder(redis: &RedisServer) -> Option<u32> {
    dump(redis)
        .await
        .into_iter()
        .find(|(name, _)| name.ends_with(":lease"))
        .and_then(|(_, owner)| String::from_utf8(owner).ok())
        .and_then(|owner| owner.split('-').next()?.parse().ok())
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not reached within 10 s");
}

// ---- The tests --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_cold_processes_fetch_once_and_redis_holds_nothing_readable() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::builder()
        .token_delay(Duration::from_millis(200))
        .start()
        .await;
    let setup = Setup::new(&fake, &redis);
    let mut workers = fleet(&setup, 8).await;
    let done = all(&mut workers, "burst 50").await;
    assert_eq!(done.ok, 400, "{done:?}");
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.requests_without_token(), 0);

    let tokens: HashSet<String> = fake.seen_authorizations().into_iter().collect();
    assert_eq!(tokens.len(), 1);
    let keys = dump(&redis).await;
    assert!(
        keys.len() >= 2,
        "{:?}",
        keys.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    for (name, value) in &keys {
        for secret in tokens.iter().chain([&setup.access, &setup.secret]) {
            assert!(
                !name.contains(secret.as_str()),
                "a key name holds a secret: {name}"
            );
            let found = value.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "the value of {name} holds a secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lifetimes_cost_one_fetch_per_refresh_for_the_fleet() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::builder()
        .token_lifetime(Duration::from_secs(3))
        .start()
        .await;
    let setup = Setup {
        lifetime_ms: 3_000,
        ahead_ms: 1_000,
        ..Setup::new(&fake, &redis)
    };
    let mut workers = fleet(&setup, 8).await;
    assert_eq!(all(&mut workers, "burst 5").await.ok, 40);
    assert_eq!(fake.token_fetches(), 1);
    let done = all(&mut workers, "run 20000 3").await;
    assert_eq!((done.failed, done.waits), (0, 0), "{done:?}");
    assert!(done.ok > 8 * 3 * 200, "{done:?}");
    assert_eq!(fake.expired_tokens_used(), 0);
    assert_eq!(fake.requests_without_token(), 0);
    // A token is refreshed 1 s (less up to 10% jitter) before its 3 s end: one fetch every
    // 1.9 to 2 s for the whole fleet, 10 or 11 in 20 s; each process alone would make 80.
    let refreshes = fake.token_fetches() - 1;
    assert!(
        (9..=12).contains(&refreshes),
        "{refreshes} refreshes in 20 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_fetch_costs_one_more_fetch() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::builder()
        .token_delay(Duration::from_millis(1500))
        .start()
        .await;
    let setup = Setup {
        fetch_timeout_ms: 2_000,
        ..Setup::new(&fake, &redis)
    };
    let mut workers = fleet(&setup, 4).await;
    for worker in &mut workers {
        worker.send("burst 10").await;
    }
    wait_for(|| fake.token_fetches() == 1).await;
    let mut holder = None;
    for _ in 0..100 {
        holder = lease_holder(&redis).await;
        if holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let holder = holder.expect("someone holds the lease");
    let at = workers
        .iter()
        .position(|w| w.child.id() == Some(holder))
        .expect("the holder is a worker");
    let mut killed = workers.remove(at);
    killed.child.kill().await.expect("kill the holder");

    let mut total = Done::default();
    for worker in &mut workers {
        total += worker.done().await;
    }
    assert_eq!(total.ok, 30, "{total:?}");
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_seen_by_every_process_forces_one_fetch() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::start().await;
    let setup = Setup::new(&fake, &redis);
    let mut workers = fleet(&setup, 6).await;
    assert_eq!(all(&mut workers, "burst 3").await.ok, 18);
    fake.revoke_all_tokens();
    let done = all(&mut workers, "burst 10").await;
    assert_eq!(
        done.ok, 60,
        "every rejected request was replayed with the new token"
    );
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_costs_one_fetch_per_cooldown_for_the_fleet() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::start().await;
    let setup = Setup {
        secret: "not-the-secret".to_owned(),
        cooldown_ms: 2_000,
        ..Setup::new(&fake, &redis)
    };
    let mut workers = fleet(&setup, 6).await;
    let done = all(&mut workers, "run 5000 2").await;
    assert_eq!(done.ok, 0);
    // Fetches at 0, 2 and 4 s (a fourth if the run starts late); 18 or more alone.
    let fetches = fake.token_fetches();
    assert!((3..=4).contains(&fetches), "{fetches} fetches in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_fetches_before_retry_after() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::rate_limited(3));
    let setup = Setup::new(&fake, &redis);
    let mut workers = fleet(&setup, 6).await;
    for worker in &mut workers {
        worker.send("run 4500 2").await;
    }
    wait_for(|| fake.token_fetches() == 1).await;
    // The 429 came back after this count went up: 2.5 s later, the 3 s still hold.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fake.token_fetches(),
        1,
        "a process fetched before Retry-After"
    );
    let mut total = Done::default();
    for worker in &mut workers {
        total += worker.done().await;
    }
    assert_eq!(fake.token_fetches(), 2);
    assert!(total.ok > 0 && total.failed > 0, "{total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_a_hung_redis_and_a_redis_restart_lose_no_request() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    let fake = FakeLengow::builder()
        .token_lifetime(Duration::from_secs(3))
        .start()
        .await;
    let setup = Setup {
        lifetime_ms: 3_000,
        ahead_ms: 1_000,
        fetch_timeout_ms: 2_000,
        ..Setup::new(&fake, &redis)
    };
    let mut workers = fleet(&setup, 6).await;
    assert_eq!(all(&mut workers, "burst 3").await.ok, 18);
    for worker in &mut workers {
        worker.send("run 11000 3").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(redis.command("FLUSHALL").expect("FLUSHALL"), "+OK");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Hung: calls go unanswered.
    redis.pause().expect("SIGSTOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.resume().expect("SIGCONT");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Gone, then back empty.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.restart().expect("redis-server restarted");
    let mut total = Done::default();
    for worker in &mut workers {
        total += worker.done().await;
    }
    assert_eq!(total.failed, 0, "{total:?}");
    assert!(total.ok > 6 * 3 * 100, "{total:?}");
    assert_eq!(fake.expired_tokens_used(), 0);
    assert_eq!(fake.requests_without_token(), 0);
    // Back in the fleet: Redis holds a token again.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let keys = dump(&redis).await;
    assert!(
        keys.iter().any(|(name, _)| name.ends_with(":token")),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_credentials_share_no_key() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let a = FakeLengow::builder()
        .credentials("access-a", "secret-a")
        .start()
        .await;
    let b = FakeLengow::builder()
        .credentials("access-b", "secret-b")
        .start()
        .await;
    let mut tags = Vec::new();
    for fake in [&a, &b] {
        let layer = LengowAuthLayer::builder(fake.credentials())
            .api_url(fake.uri())
            .store(RedisStore::open(&redis.url()).expect("a redis url"))
            .build(Client::builder(TokioExecutor::new()).build_http())
            .expect("a layer");
        layer.account_id().await.expect("a token");
        let before: HashSet<String> = tags.iter().flatten().cloned().collect();
        let now: HashSet<String> = dump(&redis)
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        tags.push(now.difference(&before).cloned().collect::<HashSet<_>>());
    }
    let tag = |names: &HashSet<String>| -> HashSet<String> {
        names
            .iter()
            .map(|n| n.split('}').next().unwrap_or_default().to_owned())
            .collect()
    };
    let (ta, tb) = (tag(&tags[0]), tag(&tags[1]));
    assert_eq!((ta.len(), tb.len()), (1, 1), "{tags:?}");
    assert!(ta.is_disjoint(&tb));
    assert_eq!((a.token_fetches(), b.token_fetches()), (1, 1));
}

// ---- Several layers in this process, sharing a MemoryStore, on a paused clock ------------

/// An in-process `get_token` (no sockets, so tokio's paused clock cannot race real I/O): a
/// fresh token after 300 ms, counted.
fn counted_token_client(
    fetches: Arc<AtomicU64>,
) -> impl tower::Service<
    http::Request<http_body_util::Full<Bytes>>,
    Response = http::Response<http_body_util::Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |_| {
        let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let body = format!(r#"{{"token":"token-{n}","account_id":1}}"#);
            Ok(http::Response::new(http_body_util::Full::new(Bytes::from(
                body,
            ))))
        }
    })
}

fn layers(
    n: usize,
    store: Option<&lengow_auth::store::MemoryStore>,
    fetches: &Arc<AtomicU64>,
) -> Vec<LengowAuthLayer> {
    (0..n)
        .map(|_| {
            let builder = LengowAuthLayer::builder(lengow_auth::Credentials::new("a", "s"));
            let builder = match store {
                Some(store) => builder.store(store.clone()),
                None => builder,
            };
            builder
                .build(counted_token_client(Arc::clone(fetches)))
                .expect("a layer")
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_day_of_sixteen_layers_sharing_a_store_costs_what_one_layer_costs() {
    for (shared, most) in [(true, 30), (false, 16 * 30)] {
        let fetches = Arc::new(AtomicU64::new(0));
        let store = lengow_auth::store::MemoryStore::new();
        let layers = layers(16, shared.then_some(&store), &fetches);
        for layer in &layers {
            layer.account_id().await.expect("a token");
        }
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        // One cold fetch, then one every 50 to 51 minutes (an hour less 10 minutes ahead,
        // less up to a minute of jitter): 29 in a day for one layer.
        let n = fetches.load(Ordering::SeqCst);
        let one_layer = 29;
        let expected = if shared { one_layer } else { 16 * one_layer };
        assert!(
            (expected - 1..=most).contains(&n),
            "shared {shared}: {n} fetches"
        );
        for layer in &layers {
            layer.account_id().await.expect("a token after a day");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn layers_whose_store_is_down_fetch_on_their_own_then_rejoin() {
    let fetches = Arc::new(AtomicU64::new(0));
    let store = lengow_auth::store::MemoryStore::new();
    store.set_down(true);
    let layers = layers(4, Some(&store), &fetches);
    for layer in &layers {
        layer.account_id().await.expect("a token without the store");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 4);
    store.set_down(false);
    // Past the probe, and past the tokens' refresh: one refresh for the four.
    tokio::time::sleep(Duration::from_secs(3600 - 300)).await;
    let after_refresh = fetches.load(Ordering::SeqCst);
    assert_eq!(
        after_refresh, 5,
        "one refresh for the fleet once the store is back"
    );
    for layer in &layers {
        layer.account_id().await.expect("a token");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), after_refresh);
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("the log buffer")
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_the_store_is_logged_once_and_its_end_once() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fetches = Arc::new(AtomicU64::new(0));
    let store = lengow_auth::store::MemoryStore::new();
    let layer = LengowAuthLayer::builder(lengow_auth::Credentials::new(
        "access-5c1e7a",
        "secret-93bd20f1",
    ))
    .token_lifetime(Duration::from_secs(60))
    .refresh_ahead(Duration::from_secs(10))
    .store(store.clone())
    .build(counted_token_client(Arc::clone(&fetches)))
    .expect("a layer");
    store.set_down(true);
    layer.account_id().await.expect("a token without the store");
    // Five refreshes while the store is down, each fetched alone.
    tokio::time::sleep(Duration::from_secs(5 * 55)).await;
    assert!(fetches.load(Ordering::SeqCst) >= 5);
    store.set_down(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.set_down(true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    layer.account_id().await.expect("a token");

    let text = String::from_utf8(logs.0.lock().expect("the log buffer").clone()).expect("utf-8");
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("token store unreachable"), 2, "two outages");
    assert_eq!(count("token store answers again"), 1);
    for secret in ["access-5c1e7a", "secret-93bd20f1", "token-1"] {
        assert!(!text.contains(secret), "{secret} in the logs");
    }
}
