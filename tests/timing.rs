//! Behaviour over time on a paused tokio clock, against an in-process auth service and API
//! (no sockets, so tokio's auto-advance cannot race real I/O). Every figure is a count or an
//! instant on the paused clock, so these tests are exact and do not depend on machine load.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use lengow_auth::testing::ManualClock;
use lengow_auth::{LengowAuthBuilder, LengowAuthLayer, ReplayBody, TokenRejected};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// One scripted answer of the mock `get_token`.
#[derive(Clone)]
enum Answer {
    Token,
    Status(u16, Option<&'static str>),
}

#[derive(Default)]
struct Mock {
    /// When each `get_token` call came, on tokio's clock.
    fetches: Vec<Instant>,
    script: Vec<Answer>,
    issued: HashMap<String, Instant>,
    lifetime: Option<Duration>,
    /// API requests and the ones rejected.
    requests: usize,
    rejected: usize,
    always_reject: bool,
    /// Paths that answer 403 to every token, as a route the account has no right to.
    forbidden: Vec<&'static str>,
    /// `get_token` answers 503 between these instants.
    outage: Option<(Instant, Instant)>,
    /// API requests that carried a token past its lifetime.
    expired_used: usize,
}

#[derive(Clone, Default)]
struct Lengow(Arc<Mutex<Mock>>);

impl Lengow {
    fn new(lifetime: Duration) -> Self {
        let lengow = Self::default();
        lengow.0.lock().unwrap().lifetime = Some(lifetime);
        lengow
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.0.lock().unwrap().script.extend(answers);
    }

    fn fetches(&self) -> Vec<Instant> {
        self.0.lock().unwrap().fetches.clone()
    }

    /// When each token fetch was made, in milliseconds after `start`.
    fn fetched_after(&self, start: Instant) -> Vec<u128> {
        let fetches = self.fetches();
        fetches.iter().map(|t| (*t - start).as_millis()).collect()
    }

    fn rejected(&self) -> usize {
        self.0.lock().unwrap().rejected
    }

    fn revoke(&self) {
        self.0.lock().unwrap().issued.clear();
    }

    /// The mock `POST /access/get_token`.
    fn token_client(
        self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let lengow = self;
        tower::service_fn(move |_request: Request<Full<Bytes>>| {
            let lengow = lengow.clone();
            async move {
                let mut mock = lengow.0.lock().unwrap();
                let n = mock.fetches.len();
                mock.fetches.push(Instant::now());
                let down = mock
                    .outage
                    .is_some_and(|(from, to)| (from..to).contains(&Instant::now()));
                let answer = if down {
                    Answer::Status(503, None)
                } else if mock.script.is_empty() {
                    Answer::Token
                } else {
                    mock.script.remove(0)
                };
                let response = match answer {
                    Answer::Token => {
                        let token = format!("token-{n}");
                        mock.issued.insert(token.clone(), Instant::now());
                        Response::new(Full::from(format!(
                            r#"{{"token":"{token}","account_id":7}}"#
                        )))
                    }
                    Answer::Status(status, retry_after) => {
                        let mut response =
                            Response::new(Full::from(r#"{"error":{"code":0,"message":"no"}}"#));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        if let Some(value) = retry_after {
                            response
                                .headers_mut()
                                .insert("retry-after", value.parse().unwrap());
                        }
                        response
                    }
                };
                Ok::<_, Infallible>(response)
            }
        })
    }

    /// The mock API: 200 for a live token, 401 otherwise; the body is not read.
    fn api<B: Send + 'static>(
        self,
    ) -> impl Service<
        Request<ReplayBody<B>>,
        Response = Response<Empty<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        let lengow = self;
        tower::service_fn(move |request: Request<ReplayBody<B>>| {
            let lengow = lengow.clone();
            async move {
                let mut mock = lengow.0.lock().unwrap();
                mock.requests += 1;
                let token = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let lifetime = mock.lifetime.unwrap_or(Duration::MAX);
                let live = mock
                    .issued
                    .get(token)
                    .is_some_and(|issued| issued.elapsed() < lifetime);
                if mock
                    .issued
                    .get(token)
                    .is_some_and(|issued| issued.elapsed() >= lifetime)
                {
                    mock.expired_used += 1;
                }
                let mut response = Response::new(Empty::new());
                if mock.forbidden.contains(&request.uri().path()) {
                    *response.status_mut() = StatusCode::FORBIDDEN;
                } else if !live || mock.always_reject {
                    mock.rejected += 1;
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn builder() -> LengowAuthBuilder {
    LengowAuthLayer::builder(lengow_auth::Credentials::new("access", "secret"))
        .api_url("http://127.0.0.1:1".parse().unwrap())
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/v3.0/orders").body(Empty::new()).unwrap()
}

/// Sends one request; the status, or the layer's error.
async fn status<S>(client: &S) -> Result<StatusCode, lengow_auth::Error>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Empty<Bytes>>, Error = tower::BoxError>
        + Clone,
{
    match client.clone().oneshot(get()).await {
        Ok(response) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(*e
            .downcast::<lengow_auth::Error>()
            .expect("a lengow_auth::Error")),
    }
}

fn gaps(instants: &[Instant]) -> Vec<Duration> {
    instants.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn the_token_is_refreshed_ahead_of_expiry_and_never_sent_expired() {
    let hour = Duration::from_secs(3600);
    let lengow = Lengow::new(hour);
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    // Three hours of one request a second.
    for _ in 0..3 * 3600 {
        assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fetches = lengow.fetches();
    assert_eq!(fetches.len(), 4, "{:?}", gaps(&fetches));
    // Each refresh starts 600 s before the hour, less at most 10% of that as jitter.
    for gap in gaps(&fetches) {
        assert!(
            gap >= Duration::from_secs(2940) && gap <= Duration::from_secs(3000),
            "{gap:?}"
        );
    }
    assert_eq!(lengow.rejected(), 0);
    let stats = layer.stats();
    assert_eq!((stats.background_refreshes, stats.token_waits), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_from_one_second_doubling_with_jitter_and_a_success_resets() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    lengow.script(vec![Answer::Status(500, None); 8]);
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    let mut errors = 0;
    // A request every 10 ms until a token arrives.
    while status(&client).await.is_err() {
        errors += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fetches = lengow.fetches();
    assert_eq!(fetches.len(), 9);
    let ceilings = [1, 2, 4, 8, 16, 32, 60, 60];
    for (gap, ceiling) in gaps(&fetches).into_iter().zip(ceilings) {
        let ceiling = Duration::from_secs(ceiling);
        // Jitter shortens a wait by at most half; requests poll every 10 ms.
        assert!(
            gap >= ceiling / 2 && gap <= ceiling + Duration::from_millis(20),
            "{gap:?} vs {ceiling:?}"
        );
    }
    assert!(errors > 100);
    assert_eq!(layer.stats().fetch_failures, 8);
    // A success reset the backoff: a new failure waits at most 1 s again.
    lengow.revoke();
    lengow.script(vec![Answer::Status(503, None), Answer::Token]);
    tokio::time::sleep(Duration::from_secs(4000)).await; // the token has expired by now
    while status(&client).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fetches = lengow.fetches();
    let last = gaps(&fetches).pop().unwrap();
    assert!(last <= Duration::from_millis(1020), "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_obeyed_and_errors_meanwhile_say_rate_limited() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    lengow.script([Answer::Status(429, Some("30"))]);
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    let mut rate_limited = 0;
    loop {
        match status(&client).await {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK);
                break;
            }
            Err(e) => {
                assert!(e.is_rate_limited(), "{e}");
                assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
                rate_limited += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetches = lengow.fetches();
    assert_eq!(fetches.len(), 2);
    assert!(gaps(&fetches)[0] >= Duration::from_secs(30));
    assert!(rate_limited >= 299, "{rate_limited}");
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_are_not_retried_before_the_cooldown() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    lengow.script([Answer::Status(401, None), Answer::Status(403, None)]);
    let layer = builder()
        .invalid_credentials_cooldown(Duration::from_secs(120))
        .build(lengow.clone().token_client())
        .unwrap();
    let client = layer.layer(lengow.clone().api());
    for _ in 0..500 {
        let e = status(&client).await.unwrap_err();
        assert!(e.is_invalid_credentials(), "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 100 s of requests: one fetch. At 120 s, the second; then another cooldown.
    assert_eq!(lengow.fetches().len(), 1);
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert!(status(&client).await.unwrap_err().is_invalid_credentials());
    assert_eq!(lengow.fetches().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_machine_that_slept_past_expiry_does_not_send_the_dead_token() {
    let lengow = Lengow::new(Duration::MAX);
    let clock = ManualClock::new();
    let layer = builder()
        .wall_clock(clock.clone())
        .build(lengow.clone().token_client())
        .unwrap();
    let client = layer.layer(lengow.clone().api());
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    // Tokio's clock stood still while the machine slept two hours.
    clock.advance(Duration::from_secs(7200));
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    assert_eq!(lengow.fetches().len(), 2);
    assert_eq!(layer.stats().token_waits, 2);
}

/// Rejections on ever new routes that reject every token: each forced token fails to cure
/// the request that forced it, so the floor doubles, and rejections within it come back at
/// once, never replayed with the token they rejected.
#[tokio::test(start_paused = true)]
async fn forced_refreshes_keep_a_doubling_floor_while_fresh_tokens_are_rejected() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    lengow.0.lock().unwrap().always_reject = true;
    let layer = builder()
        .min_refresh_interval(Duration::from_secs(1))
        .build(lengow.clone().token_client())
        .unwrap();
    let client = layer.layer(lengow.clone().api());
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let request = Request::get(format!("/v3.0/route-{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.extensions().get::<TokenRejected>().is_some());
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The cold fetch, then forced ones at 0, 2, 6 and 14 s as the floor doubles from 1 s.
    assert_eq!(lengow.fetched_after(started), vec![0, 0, 2000, 6000, 14000]);
    let stats = layer.stats();
    assert_eq!((stats.forced_refreshes, stats.replays), (4, 4));
    assert_eq!(stats.rejected_after_replay, 4);
    assert_eq!(stats.rejected_within_floor, i - 4);
}

/// A forced token the API accepts on its first send (not on a replay) is recorded as
/// accepted, so the next forced refresh keeps the floor at its minimum instead of doubling it.
#[tokio::test(start_paused = true)]
async fn a_forced_token_accepted_on_its_first_send_keeps_the_floor_at_its_minimum() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let started = Instant::now();
    // No body is kept (limit 0), so a rejection is returned as is, without a replay: only a
    // later request can be the first to send the token the rejection forced.
    let layer = builder()
        .min_refresh_interval(Duration::from_secs(1))
        .replay_body_limit(0)
        .build(lengow.clone().token_client())
        .unwrap();
    let client = layer.layer(lengow.clone().api::<Full<Bytes>>());
    let post = || {
        let request = Request::post("/v3.0/orders/actions/")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        client.clone().oneshot(request)
    };
    layer.account_id().await.unwrap();
    for _ in 0..5 {
        lengow.revoke();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if post().await.unwrap().status() == StatusCode::OK {
                break;
            }
        }
    }
    // The cold fetch, then one forced fetch a second (the floor) after each revocation; a
    // floor doubled each time would give 100, 1100, 3100, 7100, 15100.
    assert_eq!(
        lengow.fetched_after(started),
        vec![0, 100, 1100, 2100, 3100, 4100]
    );
    let stats = layer.stats();
    assert_eq!((stats.forced_refreshes, stats.replays), (5, 0));
}

#[tokio::test(start_paused = true)]
async fn a_revocation_storm_costs_one_fetch() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    layer.account_id().await.unwrap();
    lengow.revoke();
    let all = (0..300).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { status(&client).await })
    });
    for task in all.collect::<Vec<_>>() {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(lengow.fetches().len(), 2);
    assert_eq!(lengow.rejected(), 300);
    assert_eq!(layer.stats().replays, 300);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_ends_when_the_last_handle_is_dropped() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api::<Empty<Bytes>>());
    layer.account_id().await.unwrap();
    drop(client);
    // Here, and in the token client the cache (held by the layer and the refresher) owns.
    assert_eq!(Arc::strong_count(&lengow.0), 2);
    drop(layer);
    tokio::task::yield_now().await;
    assert_eq!(Arc::strong_count(&lengow.0), 1, "the refresher still runs");
    tokio::time::sleep(Duration::from_secs(7200)).await;
    assert_eq!(lengow.fetches().len(), 1);
}

/// 100 000 requests from 100 concurrent callers over 2.8 hours of paused time, across
/// background refreshes, two revocations and a 200 s auth outage at refresh time.
#[tokio::test(start_paused = true)]
async fn soak_no_request_lost_no_expired_token_exact_fetches() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let t0 = Instant::now();
    lengow.0.lock().unwrap().outage = Some((
        t0 + Duration::from_secs(3900),
        t0 + Duration::from_secs(4100),
    ));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    let revoker = {
        let lengow = lengow.clone();
        tokio::spawn(async move {
            for at in [1000, 6000] {
                tokio::time::sleep_until(t0 + Duration::from_secs(at)).await;
                lengow.revoke();
            }
        })
    };
    let callers: Vec<_> = (0..100u64)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(n * 100)).await;
                let mut ok = 0;
                for _ in 0..1000 {
                    if matches!(status(&client).await, Ok(StatusCode::OK)) {
                        ok += 1;
                    }
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for caller in callers {
        ok += caller.await.unwrap();
    }
    revoker.await.unwrap();
    assert_eq!(ok, 100_000);
    let mock = lengow.0.lock().unwrap();
    assert_eq!(mock.expired_used, 0);
    // Tokens: the cold one, one forced per revocation, and two background refreshes (the one
    // at ~3950 s succeeding only once the outage ends at 4100 s).
    let outage_failures = layer.stats().fetch_failures as usize;
    assert!(outage_failures >= 5, "{outage_failures}");
    assert_eq!(mock.fetches.len() - outage_failures, 5);
    let stats = layer.stats();
    assert_eq!(stats.forced_refreshes, 2);
    assert_eq!(stats.replays as usize, mock.rejected);
    assert_eq!(stats.rejected_after_replay, 0);
    assert_eq!(stats.token_waits, 1);
}

#[tokio::test(start_paused = true)]
async fn with_no_traffic_the_refresher_stops_retrying_once_the_token_has_expired() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let t0 = Instant::now();
    // The auth service goes down for good just before the refresh.
    lengow.0.lock().unwrap().outage = Some((
        t0 + Duration::from_secs(2000),
        t0 + Duration::from_secs(1 << 30),
    ));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    layer.account_id().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
    let fetches = lengow.fetches();
    // Retries on the backoff schedule from ~2950 s until the token's usable end (3570 s).
    assert!(fetches.len() > 5, "{}", fetches.len());
    let last = *fetches.last().unwrap() - t0;
    assert!(last < Duration::from_secs(3570), "{last:?}");
}

/// A paused runtime of its own, as a test per runtime has.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A layer kept across runtimes: its refresher dies with the first, and the first request
/// in the next starts it again, so the token is still renewed ahead of expiry and no
/// request waits for `get_token`.
#[test]
fn a_layer_kept_across_runtimes_restarts_its_refresher() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    paused_runtime().block_on(async {
        assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    });
    paused_runtime().block_on(async {
        assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
        assert_eq!(lengow.fetches().len(), 1);
        // Past the refresh (due between 2940 s and 3000 s), before the usable end (3570 s).
        tokio::time::sleep(Duration::from_secs(3300)).await;
        assert_eq!(lengow.fetches().len(), 2, "the refresher did not run");
        assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    });
    let stats = layer.stats();
    assert_eq!((stats.background_refreshes, stats.token_waits), (1, 1));
}

/// Two clock reads per request, no flag set by a timer: one `advance` past the expiry, and
/// the next request waits for a new token instead of sending the dead one.
#[tokio::test(start_paused = true)]
async fn one_advance_past_the_expiry_never_sends_the_expired_token() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    tokio::time::advance(Duration::from_secs(4000)).await;
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    let mock = lengow.0.lock().unwrap();
    assert_eq!((mock.expired_used, mock.rejected), (0, 0));
    assert_eq!(layer.stats().token_waits, 2);
}

/// A token client that panics is a failed fetch like any other: backed off, and the error
/// says what happened.
#[tokio::test(start_paused = true)]
async fn a_token_client_that_panics_is_backed_off() {
    let calls = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&calls);
    let panicking = tower::service_fn(move |_: Request<Full<Bytes>>| {
        *counted.lock().unwrap() += 1;
        async move {
            if true {
                panic!("the token client broke");
            }
            Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::default()))
        }
    });
    let layer = builder().build(panicking).unwrap();
    for _ in 0..20 {
        let e = layer.account_id().await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(!e.to_string().contains("shut down"), "{e}");
    }
    assert_eq!(*calls.lock().unwrap(), 1);
    // Once the backoff (at most 1 s) is over, one more try.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(layer.account_id().await.is_err());
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(layer.stats().fetch_failures, 2);
}

/// A runtime built without timers: the error says to enable them.
#[test]
fn a_runtime_without_timers_gets_an_error_that_says_so() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = runtime.block_on(layer.account_id()).unwrap_err();
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("enable_time"), "{e}");
    assert!(!e.to_string().contains("shut down"), "{e}");
}

/// A route the account has no right to, called every 50 ms for three hours beside normal
/// traffic: a few fetches in all (not one per floor), every normal request succeeds, and a
/// real revocation afterwards is cured by one fetch on the next request.
#[tokio::test(start_paused = true)]
async fn a_forbidden_route_beside_normal_traffic_costs_a_few_fetches() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    lengow.0.lock().unwrap().forbidden.push("/v3.0/forbidden");
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    let send = |path: &str| {
        let request = Request::get(path).body(Empty::<Bytes>::new()).unwrap();
        client.clone().oneshot(request)
    };
    let started = Instant::now();
    let mut replayed = 0;
    while started.elapsed() < Duration::from_secs(3 * 3600) {
        let response = send("/v3.0/forbidden").await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let rejected = response.extensions().get::<TokenRejected>().unwrap();
        replayed += usize::from(rejected.replayed());
        assert_eq!(send("/v3.0/orders").await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cold fetch, the background refreshes (about one every 50 minutes), and one forced
    // fetch each time the route is learnt again (it is forgotten after a token lifetime).
    let fetches = lengow.fetches().len();
    let stats = layer.stats();
    assert_eq!(stats.forced_refreshes as usize, replayed);
    assert!(replayed <= 3, "{replayed} forced fetches");
    assert!(fetches <= 8, "{fetches} fetches: {stats:?}");
    assert_eq!(
        stats.forced_refreshes + stats.background_refreshes + 1,
        fetches as u64
    );

    // A real revocation: the next normal request is cured by one fetch.
    lengow.revoke();
    let response = send("/v3.0/orders").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(lengow.fetches().len(), fetches + 1);
}

/// A second revocation inside the floor: the rejection comes back at once, marked, and no
/// attempt goes out again with the token that was rejected.
#[tokio::test(start_paused = true)]
async fn a_second_revocation_inside_the_floor_is_returned_not_replayed() {
    let lengow = Lengow::new(Duration::from_secs(3600));
    let layer = builder().build(lengow.clone().token_client()).unwrap();
    let client = layer.layer(lengow.clone().api());
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    lengow.revoke();
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    let requests = lengow.0.lock().unwrap().requests;
    lengow.revoke();
    let response = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let rejected = response.extensions().get::<TokenRejected>().unwrap();
    assert!(!rejected.replayed(), "{rejected}");
    assert!(
        rejected.to_string().contains("min_refresh_interval"),
        "{rejected}"
    );
    assert_eq!(lengow.0.lock().unwrap().requests, requests + 1);
    assert_eq!(lengow.fetches().len(), 2);
    // Past the floor, the next rejection forces one fetch and is cured.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(status(&client).await.unwrap(), StatusCode::OK);
    assert_eq!(lengow.fetches().len(), 3);
    assert_eq!(layer.stats().rejected_within_floor, 1);
}
