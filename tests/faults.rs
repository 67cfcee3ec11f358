//! Faults of the auth service (DESIGN §2, §3, §6, §7, §8, §9): cached failures and backoff,
//! `Retry-After`, refused credentials, timeouts, malformed answers, refresh under failure and
//! scrubbing. Each test asserts what the caller saw and how many fetches the auth service saw.
//!
//! Tests over real sockets (against FakeLengow) use real time: a paused clock auto-advances
//! while sockets idle and would fire the fetch timeout falsely. Waits are kept short through
//! the builder; the backoff start (1 s) is fixed, so the backoff tests take a few seconds.
//! Tests named `in_process_*` use a token client without sockets, so they run on a paused
//! clock and can cover schedules that are minutes long (the 60 s cap, the default timeout
//! and cooldown).

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant, SystemTime};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use lengow_auth::testing::{FakeLengow, TokenFailure};
use lengow_auth::{Credentials, LengowAuthLayer};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// An authenticated route that answers 200 with a valid token.
const ORDERS: &str = "/v3.0/orders";
/// "Fast" for a cached error (the contract says well under 100 ms).
const FAST: Duration = Duration::from_millis(100);
/// Room for scheduling on a loaded machine in upper bounds that are not the contract's.
const SLACK: Duration = Duration::from_millis(400);

type Sent = Result<(Response<()>, Bytes), BoxError>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One GET of [`ORDERS`], timed.
async fn timed(client: &Authed<Full<Bytes>>, fake: &FakeLengow) -> (Sent, Duration) {
    let start = StdInstant::now();
    let sent = send(client, get(fake, ORDERS)).await;
    (sent, start.elapsed())
}

/// `n` GETs of [`ORDERS`] at once, each timed.
async fn wave(client: &Authed<Full<Bytes>>, fake: &FakeLengow, n: usize) -> Vec<(Sent, Duration)> {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (client, request) = (client.clone(), get(fake, ORDERS));
        tasks.spawn(async move {
            let start = StdInstant::now();
            let sent = send(&client, request).await;
            (sent, start.elapsed())
        });
    }
    tasks.join_all().await
}

/// The crate error a request failed with; panics if it succeeded or failed otherwise.
fn error_of(sent: Sent) -> lengow_auth::Error {
    match sent {
        Ok((response, _)) => panic!("expected an error, got {}", response.status()),
        Err(e) => lengow_error(&e).clone(),
    }
}

/// The status of a request that must not have failed.
fn status_of(sent: &Sent) -> StatusCode {
    match sent {
        Ok((response, _)) => response.status(),
        Err(e) => panic!("expected a response, got an error: {e}"),
    }
}

/// Asserts `low <= value <= high`.
#[track_caller]
fn assert_within(what: &str, value: Duration, low: Duration, high: Duration) {
    assert!(
        low <= value && value <= high,
        "{what}: {value:?} is not within [{low:?}, {high:?}]"
    );
}

/// Sends a GET every `every` until one succeeds; each error is checked with `check` and must
/// have come fast. Panics if no request succeeds within `limit`. Returns how many failed.
async fn until_ok(
    client: &Authed<Full<Bytes>>,
    fake: &FakeLengow,
    every: Duration,
    limit: Duration,
    mut check: impl FnMut(&lengow_auth::Error),
) -> usize {
    let start = StdInstant::now();
    let mut failed = 0;
    loop {
        let (sent, took) = timed(client, fake).await;
        match sent {
            Ok((response, _)) => {
                assert_eq!(response.status(), StatusCode::OK);
                return failed;
            }
            Err(e) => {
                let e = lengow_error(&e);
                check(e);
                assert!(took < FAST, "a cached error took {took:?}: {e}");
                failed += 1;
            }
        }
        assert!(start.elapsed() < limit, "no success within {limit:?}");
        tokio::time::sleep(every).await;
    }
}

/// One scripted answer of the in-process token client.
#[derive(Clone)]
enum Answer {
    /// Answer this status and body at once.
    Status(u16, &'static str),
    /// Never answer.
    Hang,
}

/// A token client with no socket: answers from a script, then with a token. Lets tests of
/// long schedules run on a paused clock.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Scripted {
    fn new(answers: impl IntoIterator<Item = Answer>) -> (Recording<Scripted>, Scripted, FetchLog) {
        let scripted = Scripted {
            script: Arc::new(Mutex::new(answers.into_iter().collect())),
        };
        let (client, log) = recording(scripted.clone());
        (client, scripted, log)
    }

    fn push(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }
}

impl tower::Service<Request<Full<Bytes>>> for Scripted {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
        let next = self.script.lock().unwrap().pop_front();
        Box::pin(async move {
            let (status, body) = match next {
                Some(Answer::Hang) => std::future::pending().await,
                Some(Answer::Status(status, body)) => (status, body),
                None => (
                    200,
                    r#"{"token":"0f8fad5b-d9cb-469f-a165-70867728950e","account_id":12345}"#,
                ),
            };
            let response = Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            Ok(response)
        })
    }
}

/// A layer over the in-process token client (no socket is ever opened).
fn in_process_layer(token_client: Recording<Scripted>) -> LengowAuthLayer {
    LengowAuthLayer::builder(Credentials::new("access-key", "secret-value"))
        .build(token_client)
        .unwrap()
}

/// Calls `account_id()` every `every` (on the paused clock) until it succeeds; every error is
/// checked with `check`. Returns how many failed.
async fn in_process_until_ok(
    layer: &LengowAuthLayer,
    every: Duration,
    limit: Duration,
    check: impl Fn(&lengow_auth::Error),
) -> usize {
    let start = Instant::now();
    let mut failed = 0;
    loop {
        match layer.account_id().await {
            Ok(id) => {
                assert_eq!(id, 12345);
                return failed;
            }
            Err(e) => {
                check(&e);
                failed += 1;
            }
        }
        assert!(start.elapsed() < limit, "no success within {limit:?}");
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cached failures and backoff (§6)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_is_served_fast_until_the_backoff_ends() {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR));
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake).build(token_client).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let first = error_of(send(&client, get(&fake, ORDERS)).await);
    let failed_at = StdInstant::now();
    assert!(first.is_unavailable(), "{first}");
    assert_eq!(first.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(first.server_message(), Some("Internal Server Error"));
    assert_eq!(fake.token_fetches(), 1);

    // Right after: 30 requests in a row, 50 at once and account_id() get that error, fast.
    for _ in 0..30 {
        let (sent, took) = timed(&client, &fake).await;
        let e = error_of(sent);
        assert_eq!(e.to_string(), first.to_string());
        assert!(took < FAST, "a cached error took {took:?}");
    }
    for (sent, took) in wave(&client, &fake, 50).await {
        assert_eq!(error_of(sent).to_string(), first.to_string());
        assert!(took < FAST, "a cached error took {took:?}");
    }
    let e = layer.account_id().await.unwrap_err();
    assert_eq!(e.to_string(), first.to_string());
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.api_requests(), 0);

    // The backoff is at least half of 1 s: still the cached error at 0.4 s.
    let elapsed = failed_at.elapsed();
    if elapsed < Duration::from_millis(400) {
        tokio::time::sleep(Duration::from_millis(400) - elapsed).await;
        let (sent, took) = timed(&client, &fake).await;
        assert_eq!(error_of(sent).to_string(), first.to_string());
        assert!(took < FAST, "a cached error took {took:?}");
        assert_eq!(fake.token_fetches(), 1);
    }

    // At most 1 s: after it, the next request fetches again, and succeeds.
    tokio::time::sleep_until((failed_at + Duration::from_millis(1050)).into()).await;
    let (sent, _) = timed(&client, &fake).await;
    assert_eq!(status_of(&sent), StatusCode::OK);
    assert_eq!(fake.token_fetches(), 2);
    assert!(
        log.gaps()[0] >= Duration::from_millis(500),
        "{:?}",
        log.gaps()
    );
    assert_eq!(fake.api_requests(), 1);
    assert_eq!(fake.requests_without_token(), 0);
    let stats = layer.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_one_fetch_share_one_failure() {
    let fake = FakeLengow::builder()
        .token_delay(Duration::from_millis(200))
        .start()
        .await;
    fake.push_token_failure(
        TokenFailure::status(StatusCode::BAD_GATEWAY).body(r#"{"detail": "upstream down"}"#),
    );
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let (results, account) = tokio::join!(wave(&client, &fake, 100), layer.account_id());
    let account = account.unwrap_err();
    let errors: Vec<_> = results
        .into_iter()
        .map(|(sent, _)| error_of(sent))
        .collect();
    for e in errors.iter().chain([&account]) {
        assert!(e.is_unavailable(), "{e}");
        assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(e.server_message(), Some("upstream down"));
        assert_eq!(e.to_string(), account.to_string());
    }
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.max_concurrent_fetches(), 1);
    assert_eq!(fake.api_requests(), 0);
    let stats = layer.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (1, 1));
}

#[tokio::test]
async fn backoff_starts_at_1s_doubles_and_a_success_resets_it() {
    let fake = FakeLengow::start().await;
    for _ in 0..2 {
        fake.push_token_failure(TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    let (token_client, log) = recording_token_client();
    // A short life, so that a background refresh comes soon after the success.
    let layer = builder(&fake)
        .token_lifetime(Duration::from_secs(4))
        .refresh_ahead(Duration::from_secs(3))
        .build(token_client)
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let failed = until_ok(
        &client,
        &fake,
        Duration::from_millis(20),
        Duration::from_secs(5),
        |e| {
            assert!(e.is_unavailable(), "{e}");
            assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        },
    )
    .await;
    assert!(
        failed >= 20,
        "only {failed} requests failed during 1.5 s or more of backoff"
    );
    assert_eq!(fake.token_fetches(), 3);
    let gaps = log.gaps();
    // 1 s, then 2 s; jitter shortens a wait by at most half.
    assert_within(
        "first wait",
        gaps[0],
        Duration::from_millis(500),
        Duration::from_secs(1) + SLACK,
    );
    assert_within(
        "second wait",
        gaps[1],
        Duration::from_secs(1),
        Duration::from_secs(2) + SLACK,
    );

    // The background refresh (at 0.7–1 s) fails once: after a success the backoff is back
    // to 1 s (a wait of 0.5–1 s), not the 4 s that a third failure in a row would get.
    fake.push_token_failure(TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR));
    let success = StdInstant::now();
    while log.count() < 5 {
        assert!(
            success.elapsed() < Duration::from_secs(3),
            "no refresh: {:?}",
            log.gaps()
        );
        let (sent, _) = timed(&client, &fake).await;
        assert_eq!(status_of(&sent), StatusCode::OK, "the token is still valid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gaps = log.gaps();
    assert_within(
        "wait after a reset",
        gaps[3],
        Duration::from_millis(500),
        Duration::from_secs(1) + SLACK,
    );
    // The log holds the fifth fetch once it is sent; the fake counts it once it arrives.
    let sent = StdInstant::now();
    while fake.token_fetches() < 5 && sent.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fake.token_fetches(), 5);
    assert_eq!(layer.stats().fetch_failures, 3);
    assert_eq!(fake.requests_without_token(), 0);
}

#[tokio::test(start_paused = true)]
async fn in_process_backoff_doubles_up_to_60s_and_jitter_shortens_by_at_most_half() {
    let (token_client, scripted, log) =
        Scripted::new(std::iter::repeat_n(Answer::Status(500, "down"), 9));
    let layer = in_process_layer(token_client);
    let poll = Duration::from_millis(10);
    let failed = in_process_until_ok(&layer, poll, Duration::from_secs(600), |e| {
        assert!(e.is_unavailable(), "{e}");
    })
    .await;
    assert!(failed > 9);
    assert_eq!(log.count(), 10);
    let nominal = [1, 2, 4, 8, 16, 32, 60, 60, 60].map(Duration::from_secs);
    for (i, (gap, nominal)) in log.gaps().into_iter().zip(nominal).enumerate() {
        assert_within(&format!("wait {}", i + 1), gap, nominal / 2, nominal + poll);
    }

    // A success resets the backoff: the background refresh (about 50 min later) fails once
    // and is retried within 1 s, not 60 s.
    scripted.push(Answer::Status(500, "down"));
    tokio::time::sleep(Duration::from_secs(3100)).await;
    assert_eq!(log.count(), 12);
    let gaps = log.gaps();
    assert_within(
        "refresh",
        gaps[9],
        Duration::from_secs(2940),
        Duration::from_secs(3000),
    );
    assert_within(
        "wait after a reset",
        gaps[10],
        Duration::from_millis(500),
        Duration::from_secs(1),
    );
    let stats = layer.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (12, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_500s_under_waves_of_10_every_50ms() {
    let fake = FakeLengow::start().await;
    for _ in 0..3 {
        fake.push_token_failure(TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake).build(token_client).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let start = StdInstant::now();
    let mut tasks = JoinSet::new();
    let mut results = Vec::new();
    let mut recovered: Option<Duration> = None;
    let mut waves_after = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while waves_after < 5 {
        ticks.tick().await;
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no recovery within 15 s"
        );
        if recovered.is_some() {
            waves_after += 1;
        }
        for _ in 0..10 {
            let (client, request) = (client.clone(), get(&fake, ORDERS));
            tasks.spawn(async move {
                let sent_at = start.elapsed();
                let sent = send(&client, request).await;
                (sent_at, sent, start.elapsed() - sent_at)
            });
        }
        while let Some(done) = tasks.try_join_next() {
            let (sent_at, sent, took) = done.unwrap();
            if sent.is_ok() && recovered.is_none() {
                recovered = Some(sent_at + took);
            }
            results.push((sent_at, sent, took));
        }
    }
    results.extend(tasks.join_all().await);
    let recovered = recovered.unwrap();

    let mut failures = 0;
    let mut successes = 0;
    for (sent_at, sent, took) in results {
        match sent {
            Ok((response, _)) => {
                assert_eq!(response.status(), StatusCode::OK);
                successes += 1;
            }
            Err(e) => {
                let e = lengow_error(&e);
                assert!(e.is_unavailable(), "{e}");
                assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
                assert!(
                    took < Duration::from_millis(500),
                    "a failing request took {took:?}"
                );
                assert!(
                    sent_at < recovered,
                    "a request sent after the recovery failed: {e}"
                );
                failures += 1;
            }
        }
    }
    assert!(failures >= 30, "{failures} failures");
    assert!(successes >= 50, "{successes} successes");
    assert!(
        recovered < Duration::from_secs(15),
        "recovered after {recovered:?}"
    );
    // Three failures and one success: 4 fetches (the check allows 5), at least 0.5 s apart.
    assert_eq!(fake.token_fetches(), 4);
    for (i, gap) in log.gaps().into_iter().enumerate() {
        let nominal = Duration::from_secs(1 << i);
        assert!(gap >= nominal / 2, "wait {}: {gap:?}", i + 1);
        assert!(gap >= Duration::from_millis(500));
    }
    assert_eq!(fake.max_concurrent_fetches(), 1);
    assert_eq!(fake.api_requests(), successes);
    assert_eq!(fake.requests_without_token(), 0);
}

// ---------------------------------------------------------------------------------------------
// Retry-After on 429 and 503 (§6)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_429_with_retry_after_2_blocks_fetches_for_2s() {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::rate_limited(2));
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake).build(token_client).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let first = error_of(send(&client, get(&fake, ORDERS)).await);
    assert!(first.is_rate_limited(), "{first}");
    assert_eq!(first.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(first.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let failed = until_ok(
        &client,
        &fake,
        Duration::from_millis(50),
        Duration::from_secs(4),
        |e| {
            assert!(e.is_rate_limited(), "{e}");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        },
    )
    .await;
    assert!(failed >= 10, "{failed}");
    assert_eq!(fake.token_fetches(), 2);
    let gap = log.gaps()[0];
    assert!(
        gap >= Duration::from_secs(2),
        "the second fetch came {gap:?} after the first"
    );
    assert!(gap <= Duration::from_secs(2) + SLACK, "{gap:?}");
    assert_eq!(fake.api_requests(), 1);
}

/// A 503 is `Unavailable` (DESIGN §7, `is_rate_limited()` is documented as "answered 429"),
/// but its `Retry-After` is obeyed and reported by `retry_after()` all the same.
#[tokio::test]
async fn a_503_with_retry_after_2_blocks_fetches_for_2s() {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::status(StatusCode::SERVICE_UNAVAILABLE).retry_after("2"));
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake).build(token_client).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let first = error_of(send(&client, get(&fake, ORDERS)).await);
    assert_eq!(first.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(first.retry_after(), Some(Duration::from_secs(2)));
    let failed = until_ok(
        &client,
        &fake,
        Duration::from_millis(50),
        Duration::from_secs(4),
        |e| {
            assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{e}");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        },
    )
    .await;
    assert!(failed >= 10, "{failed}");
    assert_eq!(fake.token_fetches(), 2);
    assert!(log.gaps()[0] >= Duration::from_secs(2), "{:?}", log.gaps());
}

/// A `Retry-After` HTTP date about 3 s ahead (whole seconds, so 2–3 s): no fetch before it.
async fn retry_after_date_is_obeyed(status: StatusCode, check: impl Fn(&lengow_auth::Error)) {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    let not_before = httpdate::parse_http_date(&date).unwrap();
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::status(status).retry_after(date));
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake).build(token_client).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let first = error_of(send(&client, get(&fake, ORDERS)).await);
    assert_eq!(first.status(), Some(status));
    let wait = first
        .retry_after()
        .expect("the error tells how long to wait");
    assert_within(
        "retry_after()",
        wait,
        Duration::from_millis(1500),
        Duration::from_secs(3),
    );
    check(&first);
    let failed = until_ok(
        &client,
        &fake,
        Duration::from_millis(50),
        Duration::from_secs(5),
        |e| {
            assert_eq!(e.retry_after(), Some(wait), "{e}");
            check(e);
        },
    )
    .await;
    assert!(failed >= 10, "{failed}");
    assert_eq!(fake.token_fetches(), 2);
    let second = log.walls()[1];
    assert!(
        second + Duration::from_millis(10) >= not_before,
        "the second fetch came {:?} before the Retry-After date",
        not_before.duration_since(second).unwrap_or_default()
    );
}

#[tokio::test]
async fn a_429_with_retry_after_as_an_http_date_is_obeyed() {
    retry_after_date_is_obeyed(StatusCode::TOO_MANY_REQUESTS, |e| {
        assert!(e.is_rate_limited(), "{e}");
    })
    .await;
}

#[tokio::test]
async fn a_503_with_retry_after_as_an_http_date_is_obeyed() {
    retry_after_date_is_obeyed(StatusCode::SERVICE_UNAVAILABLE, |e| {
        assert!(e.is_unavailable(), "{e}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Refused credentials (§6, §7, §8)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_costs_one_fetch_for_150_requests() {
    let fake = FakeLengow::start().await;
    let secret = "wrong-secret-7f3a9c41";
    let credentials = Credentials::new(fake.credentials().access_token(), secret);
    let layer = LengowAuthLayer::builder(credentials)
        .api_url(fake.uri())
        .build(token_client())
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let mut errors = Vec::new();
    for (sent, _) in wave(&client, &fake, 100).await {
        errors.push(sent.expect_err("a wrong secret cannot succeed"));
    }
    for _ in 0..50 {
        let (sent, took) = timed(&client, &fake).await;
        errors.push(sent.expect_err("a wrong secret cannot succeed"));
        assert!(took < FAST, "a cached error took {took:?}");
    }
    assert_eq!(errors.len(), 150);
    for error in &errors {
        let e = lengow_error(error);
        assert!(e.is_invalid_credentials(), "{e}");
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(e.server_message(), Some("Invalid credentials"));
        let shown = format!(
            "{error} {error:?} {e} {e:?} {:?}",
            std::error::Error::source(e)
        );
        assert!(!shown.contains(secret), "{shown}");
    }
    // The cooldown is 60 s by default: one fetch, whatever the traffic.
    assert_eq!(
        lengow_auth::DEFAULT_INVALID_CREDENTIALS_COOLDOWN,
        Duration::from_secs(60)
    );
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.api_requests(), 0);
    assert_eq!(layer.stats().fetches, 1);
    assert!(!format!("{layer:?}").contains(secret));
}

#[tokio::test]
async fn refused_credentials_400_401_403_cool_down_without_fetching() {
    let fake = FakeLengow::start().await;
    let refusals = [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
    ];
    for status in refusals {
        fake.push_token_failure(TokenFailure::status(status));
    }
    let cooldown = Duration::from_millis(500);
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake)
        .invalid_credentials_cooldown(cooldown)
        .build(token_client)
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let mut seen = Vec::new();
    let failed = until_ok(
        &client,
        &fake,
        Duration::from_millis(20),
        Duration::from_secs(4),
        |e| {
            assert!(e.is_invalid_credentials(), "{e}");
            let status = e.status().unwrap();
            assert_eq!(e.server_message(), status.canonical_reason());
            if seen.last() != Some(&status) {
                seen.push(status);
            }
        },
    )
    .await;
    assert_eq!(seen, refusals);
    assert!(failed >= 30, "{failed}");
    // One fetch per refusal, then one that succeeds: none during a cooldown.
    assert_eq!(fake.token_fetches(), 4);
    for (i, gap) in log.gaps().into_iter().enumerate() {
        assert_within(
            &format!("cooldown {}", i + 1),
            gap,
            cooldown,
            cooldown + SLACK,
        );
    }
    assert_eq!(fake.api_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_process_refused_credentials_cool_down_60s_by_default() {
    let (token_client, _, log) = Scripted::new([Answer::Status(
        401,
        r#"{"error":{"code":401,"message":"Invalid credentials"}}"#,
    )]);
    let layer = in_process_layer(token_client);
    let poll = Duration::from_millis(100);
    let failed = in_process_until_ok(&layer, poll, Duration::from_secs(120), |e| {
        assert!(e.is_invalid_credentials(), "{e}");
        assert_eq!(log.count(), 1);
    })
    .await;
    assert!(failed >= 600, "{failed}");
    assert_eq!(log.count(), 2);
    assert_within(
        "cooldown",
        log.gaps()[0],
        Duration::from_secs(60),
        Duration::from_secs(60) + poll,
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts (§6)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_auth_endpoint_never_holds_a_request_past_the_fetch_timeout() {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::status(StatusCode::OK).delay(Duration::from_secs(60)));
    let timeout = Duration::from_millis(300);
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake)
        .fetch_timeout(timeout)
        .build(token_client)
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);

    // Waves at 0, 100 and 200 ms all wait on the one hung fetch, and none past its deadline.
    let start = StdInstant::now();
    let mut tasks = JoinSet::new();
    for wave in 0..3 {
        tokio::time::sleep_until((start + Duration::from_millis(100 * wave)).into()).await;
        for _ in 0..10 {
            let (client, request) = (client.clone(), get(&fake, ORDERS));
            tasks.spawn(async move {
                let sent = send(&client, request).await;
                (wave, sent, start.elapsed())
            });
        }
    }
    for (wave, sent, done_at) in tasks.join_all().await {
        let e = error_of(sent);
        assert!(e.is_timeout(), "{e}");
        assert!(
            done_at <= timeout + SLACK,
            "answered {done_at:?} after the first request"
        );
        if wave == 0 {
            assert!(
                done_at >= timeout - Duration::from_millis(50),
                "{done_at:?}"
            );
        }
    }
    assert_eq!(fake.token_fetches(), 1);

    // The timeout is a failure like any other: cached, fast, then backed off.
    let (sent, took) = timed(&client, &fake).await;
    let e = error_of(sent);
    assert!(e.is_timeout(), "{e}");
    assert!(took < FAST, "a cached error took {took:?}");
    assert_eq!(fake.token_fetches(), 1);
    let failed = until_ok(
        &client,
        &fake,
        Duration::from_millis(50),
        Duration::from_secs(3),
        |e| assert!(e.is_timeout(), "{e}"),
    )
    .await;
    assert!(failed >= 3, "{failed}");
    assert_eq!(fake.token_fetches(), 2);
    assert!(
        log.gaps()[0] >= timeout + Duration::from_millis(500),
        "{:?}",
        log.gaps()
    );
    assert_eq!(fake.api_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_process_a_fetch_times_out_after_10s_by_default() {
    assert_eq!(lengow_auth::DEFAULT_FETCH_TIMEOUT, Duration::from_secs(10));
    let (token_client, _, log) = Scripted::new([Answer::Hang]);
    let layer = in_process_layer(token_client);
    let start = Instant::now();
    let (a, b) = tokio::join!(layer.account_id(), async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        layer.account_id().await
    });
    let waited = start.elapsed();
    for e in [a.unwrap_err(), b.unwrap_err()] {
        assert!(e.is_timeout(), "{e}");
    }
    assert_within(
        "deadline",
        waited,
        Duration::from_secs(10),
        Duration::from_millis(10_010),
    );
    assert!(layer.account_id().await.unwrap_err().is_timeout());
    assert_eq!(log.count(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(layer.account_id().await.unwrap(), 12345);
    assert_eq!(log.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Malformed answers (§6, §7): a clear error, never a panic, cached like any failure
// ---------------------------------------------------------------------------------------------

/// What a bad answer must turn into.
enum Expect {
    Malformed,
    Unavailable(u16),
    MalformedOrUnavailable,
}

/// The first fetch answers `failure`: the caller gets a clear error of the expected kind, the
/// next requests get it again fast (it counts as a failure for the backoff), and neither the
/// API nor the auth service sees another request.
async fn a_bad_answer_is_a_cached_failure(
    failure: TokenFailure,
    expect: Expect,
) -> lengow_auth::Error {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(failure);
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);

    let e = error_of(send(&client, get(&fake, ORDERS)).await);
    match expect {
        Expect::Malformed => assert!(e.is_malformed_response(), "{e}"),
        Expect::Unavailable(status) => {
            assert!(e.is_unavailable(), "{e}");
            assert_eq!(e.status().map(|s| s.as_u16()), Some(status), "{e}");
        }
        Expect::MalformedOrUnavailable => {
            assert!(e.is_malformed_response() || e.is_unavailable(), "{e}");
        }
    }
    // A panic in the fetch task would surface as a cancelled fetch.
    assert!(!e.to_string().contains("cancelled"), "{e}");
    assert!(e.retry_after().is_none());
    for _ in 0..5 {
        let (sent, took) = timed(&client, &fake).await;
        assert_eq!(error_of(sent).to_string(), e.to_string());
        assert!(took < FAST, "a cached error took {took:?}");
    }
    assert_eq!(
        layer.account_id().await.unwrap_err().to_string(),
        e.to_string()
    );
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.api_requests(), 0);
    let stats = layer.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (1, 1));
    e
}

#[tokio::test]
async fn malformed_not_json() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200("<html><body>Maintenance</body></html>"),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_json_that_is_not_an_object() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"["0f8fad5b-d9cb-469f-a165-70867728950e", 12345]"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_json_without_token() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"account_id": 12345, "user_id": 678}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_token_that_is_not_a_string() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"token": 42, "account_id": 12345}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_empty_token() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"token": "", "account_id": 12345}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_blank_token() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"token": "   ", "account_id": 12345}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_token_that_would_inject_a_header() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"token": "abc\r\nX-Injected: 1", "account_id": 12345}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_token_that_is_not_ascii() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"token": "t\u00f6ken-\u2603", "account_id": 12345}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_missing_account_id() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(
            r#"{"token": "0f8fad5b-d9cb-469f-a165-70867728950e", "user_id": 678}"#,
        ),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_non_numeric_account_id() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(
            r#"{"token": "0f8fad5b-d9cb-469f-a165-70867728950e", "account_id": "acme"}"#,
        ),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn malformed_null_account_id() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(
            r#"{"token": "0f8fad5b-d9cb-469f-a165-70867728950e", "account_id": null}"#,
        ),
        Expect::Malformed,
    )
    .await;
}

/// A well-formed token answer padded to `len` bytes.
fn padded_answer(len: usize) -> String {
    let head = r#"{"token":"0f8fad5b-d9cb-469f-a165-70867728950e","account_id":4242,"pad":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

#[tokio::test]
async fn malformed_answer_over_64_kib() {
    // Well-formed but for its size: the limit is what refuses it.
    let e = a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(padded_answer(64 * 1024 + 1)),
        Expect::Malformed,
    )
    .await;
    assert!(e.to_string().contains("64 KiB"), "{e}");
}

#[tokio::test]
async fn an_answer_of_exactly_64_kib_is_read() {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::status_200(padded_answer(64 * 1024)));
    let layer = builder(&fake).build(token_client()).unwrap();
    assert_eq!(layer.account_id().await.unwrap(), 4242);
    assert_eq!(fake.token_fetches(), 1);
}

#[tokio::test]
async fn malformed_detail_body_with_200() {
    a_bad_answer_is_a_cached_failure(
        TokenFailure::status_200(r#"{"detail": "Authentication credentials were not provided."}"#),
        Expect::Malformed,
    )
    .await;
}

#[tokio::test]
async fn unavailable_detail_body_with_500() {
    let e = a_bad_answer_is_a_cached_failure(
        TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(r#"{"detail": "Internal error, please retry later"}"#),
        Expect::Unavailable(500),
    )
    .await;
    assert_eq!(
        e.server_message(),
        Some("Internal error, please retry later")
    );
}

#[tokio::test]
async fn unavailable_status_530() {
    let e = a_bad_answer_is_a_cached_failure(
        TokenFailure::status(StatusCode::from_u16(530).unwrap()).body("Site is frozen"),
        Expect::Unavailable(530),
    )
    .await;
    assert_eq!(e.server_message(), Some("Site is frozen"));
}

#[tokio::test]
async fn unavailable_status_540() {
    let e = a_bad_answer_is_a_cached_failure(
        TokenFailure::status(StatusCode::from_u16(540).unwrap())
            .body(r#"{"detail": "Temporarily disabled"}"#),
        Expect::Unavailable(540),
    )
    .await;
    assert_eq!(e.server_message(), Some("Temporarily disabled"));
}

#[tokio::test]
async fn connection_reset_mid_body() {
    let e = a_bad_answer_is_a_cached_failure(
        TokenFailure::reset_mid_body(),
        Expect::MalformedOrUnavailable,
    )
    .await;
    assert!(!e.to_string().contains("0f8fad5b"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Refresh under failure (§3, §6, §9)
// ---------------------------------------------------------------------------------------------

/// What `holding_a_token` gives: the fake, the layer, a client through it, the log of token
/// fetches, and when the first fetch was sent.
type Refreshing = (
    FakeLengow,
    LengowAuthLayer,
    Authed<Full<Bytes>>,
    FetchLog,
    tokio::time::Instant,
);

/// A layer holding its first token, whose next `failures` fetches (its background refreshes)
/// will be answered `status`.
async fn holding_a_token(
    lifetime: Duration,
    refresh_ahead: Duration,
    failures: usize,
    status: StatusCode,
) -> Refreshing {
    let fake = FakeLengow::builder().token_lifetime(lifetime).start().await;
    let (token_client, log) = recording_token_client();
    let layer = builder(&fake)
        .token_lifetime(lifetime)
        .refresh_ahead(refresh_ahead)
        .build(token_client)
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);
    let (sent, _) = timed(&client, &fake).await;
    assert_eq!(status_of(&sent), StatusCode::OK);
    let t0 = log.times()[0];
    for _ in 0..failures {
        fake.push_token_failure(TokenFailure::status(status));
    }
    (fake, layer, client, log, t0)
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_token_then_serves_the_error_fast_after_expiry() {
    // Refresh 0.8–1 s in; the layer stops using the token 2.85 s in (5% margin).
    let (fake, layer, client, log, t0) = holding_a_token(
        Duration::from_secs(3),
        Duration::from_secs(2),
        20,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;

    // Until its expiry, every request succeeds with the token it has and never waits for the
    // failing refresh, which is retried with backoff meanwhile (only the refresher can: no
    // request needs a token).
    while t0.elapsed() < Duration::from_millis(2700) {
        let (sent, took) = timed(&client, &fake).await;
        assert_eq!(status_of(&sent), StatusCode::OK, "at {:?}", t0.elapsed());
        assert!(took < FAST, "a request with a valid token took {took:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = fake.seen_authorizations();
    assert!(seen.iter().all(|a| a == &seen[0]), "the token changed");
    assert!(
        log.count() >= 3,
        "the failed refresh was not retried while the token lived: {:?}",
        log.gaps()
    );
    let api_requests = fake.api_requests();

    // After it: the cached error, fast; never a hang, never the expired token.
    tokio::time::sleep_until(t0 + Duration::from_millis(2950)).await;
    let mut failed = 0;
    while t0.elapsed() < Duration::from_millis(3800) {
        let (sent, took) = timed(&client, &fake).await;
        let e = error_of(sent);
        assert!(e.is_unavailable(), "{e}");
        assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(took < FAST, "an error after expiry took {took:?}");
        failed += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed >= 8, "{failed}");
    assert_eq!(fake.api_requests(), api_requests);
    assert_eq!(fake.expired_tokens_used(), 0);
    assert_eq!(fake.requests_without_token(), 0);

    // The refresh, then retries with backoff: 0.5–1 s, then 1–2 s.
    let gaps = log.gaps();
    assert_within(
        "refresh",
        gaps[0],
        Duration::from_millis(750),
        Duration::from_secs(1) + SLACK,
    );
    assert_within(
        "first retry",
        gaps[1],
        Duration::from_millis(500),
        Duration::from_secs(1) + SLACK,
    );
    if let Some(gap) = gaps.get(2) {
        assert_within(
            "second retry",
            *gap,
            Duration::from_secs(1),
            Duration::from_secs(2) + SLACK,
        );
    }
    assert!((3..=4).contains(&log.count()), "{gaps:?}");
    assert_eq!(fake.token_fetches(), log.count());
    let stats = layer.stats();
    assert_eq!(stats.fetch_failures, log.count() as u64 - 1);
    assert!(stats.background_refreshes >= 2);
}

#[tokio::test]
async fn three_503s_at_refresh_time_fail_no_request() {
    // Long enough a life for the refresh to fail three times and still succeed before expiry
    // (0.2–1 s, then waits of at most 1, 2 and 4 s: at most 8 s of the 8.55 s usable).
    let (fake, layer, client, log, t0) = holding_a_token(
        Duration::from_secs(9),
        Duration::from_secs(8),
        3,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    let mut sent = 1;
    loop {
        let (outcome, took) = timed(&client, &fake).await;
        assert_eq!(status_of(&outcome), StatusCode::OK, "at {:?}", t0.elapsed());
        assert!(took < FAST, "a request with a valid token took {took:?}");
        sent += 1;
        let seen = fake.seen_authorizations();
        if log.count() == 5 && seen.last() != seen.first() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(8500),
            "no new token within the old one's life: {:?}",
            log.gaps()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 1 + 3 failed refreshes + 1 that succeeded.
    assert_eq!(fake.token_fetches(), 5);
    let gaps = log.gaps();
    assert_within(
        "refresh",
        gaps[0],
        Duration::from_millis(150),
        Duration::from_secs(1) + SLACK,
    );
    assert!(gaps[1] >= Duration::from_millis(500), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_secs(1), "{gaps:?}");
    assert!(gaps[3] >= Duration::from_secs(2), "{gaps:?}");
    let stats = layer.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (5, 3));
    assert_eq!(stats.background_refreshes, 4);
    assert_eq!(fake.api_requests(), sent);
    assert_eq!(fake.rejected_requests(), 0);
    assert_eq!(fake.expired_tokens_used(), 0);
    assert_eq!(fake.requests_without_token(), 0);
    // One switch, from the first token to the second.
    let seen = fake.seen_authorizations();
    let switch = seen.iter().position(|a| a != &seen[0]).unwrap();
    assert!(seen[switch..].iter().all(|a| a == &seen[switch]));
}

// ---------------------------------------------------------------------------------------------
// Scrubbing (§7, §8)
// ---------------------------------------------------------------------------------------------

const ACCESS_TOKEN: &str = "access-key-5f2e9a";
const SECRET: &str = "s3cr3t-b9d1c7";
const A_TOKEN: &str = "0a1b2c3d-0000-4abc-8def-0123456789ab";

/// Log output, kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures every event of this thread (a current-thread runtime runs every task on it)
    /// until the guard is dropped.
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything the caller and the logs get to see of one failed fetch answering `failure`.
async fn shown_after(failure: TokenFailure, secret: &str) -> (lengow_auth::Error, String) {
    let fake = FakeLengow::builder()
        .credentials(ACCESS_TOKEN, secret)
        .start()
        .await;
    fake.push_token_failure(failure);
    let logs = Logs::default();
    let guard = logs.capture();
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    let error = send(&client, get(&fake, ORDERS)).await.unwrap_err();
    drop(guard);
    let e = lengow_error(&error).clone();
    assert_eq!(fake.token_fetches(), 1);
    let shown = format!(
        "{error} | {error:?} | {e} | {e:?} | {:?} | {layer:?} | {}",
        e.server_message(),
        logs.text()
    );
    assert!(
        logs.text().contains("token fetch failed"),
        "logs were not captured"
    );
    (e, shown)
}

#[tokio::test]
async fn server_messages_quoting_the_token_or_secret_are_scrubbed() {
    let upper = A_TOKEN.to_uppercase();
    let cases = [
        TokenFailure::status(StatusCode::UNAUTHORIZED).body(format!(
            r#"{{"error":{{"code":401,"message":"Invalid credentials: secret {SECRET} does not match"}}}}"#
        )),
        TokenFailure::status(StatusCode::FORBIDDEN).body(format!(
            r#"{{"error":{{"code":403,"message":"Token: {A_TOKEN} is expired"}}}}"#
        )),
        TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR).body(format!(
            r#"{{"detail":"secret {SECRET} rejected for token {upper}"}}"#
        )),
        TokenFailure::status(StatusCode::from_u16(530).unwrap())
            .body(format!("frozen: token={A_TOKEN} secret={SECRET}")),
        TokenFailure::rate_limited(1).body(format!(r#"{{"message":"slow down, {A_TOKEN}"}}"#)),
        TokenFailure::status(StatusCode::BAD_REQUEST).body(format!(
            r#"{{"request":{{"access_token":"{ACCESS_TOKEN}","secret":"{SECRET}"}}}}"#
        )),
    ];
    for failure in cases {
        let (e, shown) = shown_after(failure, SECRET).await;
        let message = e.server_message().expect("the server's message is kept");
        assert!(message.contains("** redacted **"), "{message}");
        for needle in [SECRET, A_TOKEN, upper.as_str()] {
            assert!(!shown.contains(needle), "{needle} shown: {shown}");
        }
    }
}

#[tokio::test]
async fn a_form_encoded_secret_echoed_by_the_server_is_scrubbed() {
    // Base64-like secrets hold '/', '+' and '='; on the wire they are percent-encoded, and
    // that is how a server quoting the request body shows them.
    let secret = "s3cr3t/b9+d1=";
    let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    assert_eq!(encoded, "s3cr3t%2Fb9%2Bd1%3D");
    let (_, shown) = shown_after(
        TokenFailure::status(StatusCode::BAD_REQUEST).body(format!(
            "Bad Request: access_token={ACCESS_TOKEN}&secret={encoded}"
        )),
        secret,
    )
    .await;
    assert!(!shown.contains(&encoded), "{shown}");
    assert!(!shown.contains(secret), "{shown}");
}

#[tokio::test]
async fn no_log_line_holds_a_token_or_the_secret() {
    let fake = FakeLengow::builder()
        .credentials(ACCESS_TOKEN, SECRET)
        .start()
        .await;
    let logs = Logs::default();
    let guard = logs.capture();
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    let (sent, _) = timed(&client, &fake).await;
    assert_eq!(status_of(&sent), StatusCode::OK);
    // A revoked token: the API answers 403 quoting it, the layer refreshes and replays.
    fake.revoke_all_tokens();
    let request = post(
        &fake,
        "/v3.0/orders/actions/",
        "r1",
        Bytes::from_static(b"{}"),
    );
    let (response, _) = send(&client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(guard);
    assert_eq!(fake.token_fetches(), 2);
    let tokens = fake.seen_authorizations();
    assert_eq!(tokens.len(), 3);
    assert_ne!(tokens[0], tokens[2]);
    let text = logs.text();
    assert!(
        text.contains("token fetched"),
        "logs were not captured: {text}"
    );
    for needle in [SECRET, tokens[0].as_str(), tokens[2].as_str()] {
        assert!(!text.contains(needle), "{needle} logged: {text}");
    }
}
