//! The core contract over real sockets: a hyper-util client with the layer against FakeLengow.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use lengow_auth::LengowAuthLayer;
use lengow_auth::TokenRejected;
use lengow_auth::testing::FakeLengow;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_costs_one_fetch() {
    let fake = FakeLengow::builder()
        .token_delay(Duration::from_millis(50))
        .start()
        .await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let (client, request) = (client.clone(), get(&fake, "/v3.0/orders"));
        tasks.spawn(async move { send(&client, request).await });
    }
    while let Some(result) = tasks.join_next().await {
        let (response, _) = result.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.max_concurrent_fetches(), 1);
    assert_eq!(fake.api_requests(), 500);
    assert_eq!(fake.requests_without_token(), 0);
    let seen = fake.seen_authorizations();
    assert_eq!(seen.len(), 500);
    assert!(
        seen.iter()
            .all(|a| a == &seen[0] && !a.starts_with("Bearer"))
    );
    assert_eq!(layer.stats().fetches, 1);
}

#[tokio::test]
async fn bearer_is_sent_only_when_asked() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).bearer(true).build(token_client()).unwrap();
    let (response, _) = send(&client(&layer), get(&fake, "/v3.0/orders"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(fake.seen_authorizations()[0].starts_with("Bearer "));
}

/// A GET to a second FakeLengow (another origin) through a layer for `fake`, after one to
/// `fake` itself when `warm`: it goes out untouched, without a token. Gives both fakes and the
/// layer.
async fn to_another_origin(warm: bool) -> (FakeLengow, FakeLengow, LengowAuthLayer) {
    let fake = FakeLengow::start().await;
    let other = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    if warm {
        send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    }
    let (response, _) = send(&client, get(&other, "/v3.0/orders")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.requests_without_token(), 1);
    assert_eq!(other.token_fetches(), 0);
    (fake, other, layer)
}

#[tokio::test]
async fn the_token_never_leaves_the_origin() {
    let (fake, _other, _layer) = to_another_origin(true).await;
    assert_eq!(fake.token_fetches(), 1);
}

#[tokio::test]
async fn a_request_to_another_origin_neither_waits_for_nor_fetches_a_token() {
    // The hot path looks the token up before it reads the request's origin: a layer with no
    // token yet must still send a request to another origin at once, untouched.
    let (fake, _other, layer) = to_another_origin(false).await;
    let stats = layer.stats();
    assert_eq!(stats.token_waits, 0);
    assert_eq!(stats.fetches, 0);
    assert_eq!(fake.token_fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_costs_one_fetch_and_replays_bodies_byte_for_byte() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    layer.account_id().await.unwrap();
    fake.revoke_all_tokens();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let request = post(
            &fake,
            "/v3.0/orders/actions/",
            &format!("r{i}"),
            payload(i, 1024),
        );
        let client = client.clone();
        tasks.spawn(async move { send(&client, request).await });
    }
    while let Some(result) = tasks.join_next().await {
        let (response, _) = result.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(fake.token_fetches(), 2);
    for i in 0..200 {
        let id = format!("r{i}");
        let attempts = fake.attempts(&id);
        assert!((1..=2).contains(&attempts), "{id}: {attempts} attempts");
        for body in fake.bodies(&id) {
            assert_eq!(body, payload(i, 1024), "{id}");
        }
    }
    let stats = layer.stats();
    assert_eq!(stats.forced_refreshes, 1);
    assert_eq!(stats.replays, fake.rejected_requests() as u64);
}

/// A route that rejects every token costs one forced fetch and one replay, once: then it is
/// known, and its rejections come back at once, marked, without a fetch.
#[tokio::test]
async fn a_route_that_always_rejects_is_learnt_after_one_forced_fetch() {
    let fake = FakeLengow::start().await;
    fake.set_route_status("/v3.0/always-401", StatusCode::UNAUTHORIZED);
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    for i in 0..50 {
        let id = format!("a{i}");
        let request = http::Request::get(url(&fake, "/v3.0/always-401"))
            .header("x-request-id", &id)
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let rejected = response.extensions().get::<TokenRejected>().unwrap();
        assert_eq!(rejected.replayed(), i == 0, "{id}: {rejected}");
        assert_eq!(rejected.known_route(), i > 0, "{id}: {rejected}");
        assert_eq!(fake.attempts(&id), if i == 0 { 2 } else { 1 }, "{id}");
    }
    assert_eq!(fake.token_fetches(), 2);
    let stats = layer.stats();
    assert_eq!(
        (stats.routes_learnt, stats.rejected_on_known_routes),
        (1, 49)
    );
    // Other routes still work, with the token the forced fetch brought.
    let (response, _) = send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test]
async fn a_streamed_body_within_the_limit_is_replayed_byte_for_byte() {
    let fake = FakeLengow::start().await;
    fake.add_route("/v3.0/echo");
    let layer = builder(&fake).build(token_client()).unwrap();
    let streaming = client::<StreamedBody>(&layer);
    layer.account_id().await.unwrap();
    fake.revoke_all_tokens();
    let small = payload(1, 32 * 1024);
    let request = http::Request::post(url(&fake, "/v3.0/echo"))
        .header("x-request-id", "small")
        .body(StreamedBody::new(small.clone(), 1000))
        .unwrap();
    let (response, echoed) = send(&streaming, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(echoed, small);
    assert_eq!(fake.bodies("small"), vec![small.clone(), small]);
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(layer.stats().replays, 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_sent_once_and_its_rejection_returned() {
    let fake = FakeLengow::start().await;
    fake.add_route("/v3.0/echo");
    let layer = builder(&fake).build(token_client()).unwrap();
    let streaming = client::<StreamedBody>(&layer);
    layer.account_id().await.unwrap();
    fake.revoke_all_tokens();
    let large = payload(2, 200 * 1024);
    let request = http::Request::post(url(&fake, "/v3.0/echo"))
        .header("x-request-id", "large")
        .body(StreamedBody::new(large.clone(), 4096))
        .unwrap();
    let (response, _) = send(&streaming, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fake.attempts("large"), 1);
    assert_eq!(fake.bodies("large"), vec![large]);
    assert_eq!(layer.stats().replays_skipped, 1);

    // The rejection still refreshed the token: the next request goes out with a good one.
    let (response, _) = send(&client::<Full<Bytes>>(&layer), get(&fake, "/v3.0/orders"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test]
async fn dropping_every_handle_stops_fetching() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake)
        .token_lifetime(Duration::from_millis(400))
        .refresh_ahead(Duration::from_millis(200))
        .build(token_client())
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);
    send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let while_alive = fake.token_fetches();
    assert!(while_alive >= 2, "the refresher ran: {while_alive}");
    drop((layer, client));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let at_drop = fake.token_fetches();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fake.token_fetches(), at_drop);
}

/// A future keeps what it needs to finish: a rejection that arrives after the last handle
/// is gone is still cured by one fetch and one replay.
#[tokio::test]
async fn a_rejection_after_the_last_handle_is_dropped_is_still_replayed() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    fake.revoke_all_tokens();
    drop(layer);
    // `oneshot` drops the service (the last handle) once it has made the call.
    let request = Request::get(url(&fake, "/v3.0/orders"))
        .header("x-request-id", "orphan")
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.attempts("orphan"), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test]
async fn plain_http_off_loopback_fails_to_build_and_debug_hides_secrets() {
    let credentials = lengow_auth::Credentials::new("access-1234", "secret-5678");
    let e = lengow_auth::LengowAuthLayer::builder(credentials.clone())
        .api_url("http://api.lengow.io".parse().unwrap())
        .build(token_client())
        .unwrap_err();
    assert!(e.is_config(), "{e}");

    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    let token = fake.seen_authorizations()[0].clone();
    let secret = fake.credentials().secret().to_owned();
    let shown = format!(
        "{credentials:?} {layer:?} {client:?} {:?}",
        fake.credentials()
    );
    for needle in [
        token.as_str(),
        secret.as_str(),
        "secret-5678",
        "access-1234",
    ] {
        assert!(!shown.contains(needle), "{needle} in {shown}");
    }
}

/// A body that streams `data` in chunks of `chunk` bytes, with no size hint.
pub struct StreamedBody {
    data: Bytes,
    chunk: usize,
}

impl StreamedBody {
    fn new(data: Bytes, chunk: usize) -> Self {
        Self { data, chunk }
    }
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.data.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.chunk.min(self.data.len());
        let chunk = self.data.split_to(n);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_across_short_tokens_never_sends_an_expired_one() {
    let fake = FakeLengow::builder()
        .token_lifetime(Duration::from_secs(2))
        .token_delay(Duration::from_millis(300))
        .start()
        .await;
    let layer = builder(&fake)
        .token_lifetime(Duration::from_secs(2))
        .refresh_ahead(Duration::from_millis(800))
        .build(token_client())
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);
    layer.account_id().await.unwrap();
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, fake) = (client.clone(), fake.addr());
        tasks.spawn(async move {
            let mut sent = 0;
            while started.elapsed() < Duration::from_secs(7) {
                let request = http::Request::get(format!("http://{fake}/v3.0/orders"))
                    .body(Full::default())
                    .unwrap();
                let (response, _) = send(&client, request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(n) = tasks.join_next().await {
        sent += n.unwrap();
    }
    assert!(sent > 100, "{sent}");
    assert_eq!(fake.expired_tokens_used(), 0);
    assert_eq!(fake.rejected_requests(), 0);
    let fetches = fake.token_fetches();
    assert!((4..=8).contains(&fetches), "{fetches} fetches");
    // Only the first fetch made anyone wait; every refresh happened in the background.
    let stats = layer.stats();
    assert_eq!(stats.token_waits, 0);
    assert_eq!(stats.background_refreshes as usize, fetches - 1);
}

/// Over real sockets: a route the account has no right to, called beside normal traffic,
/// costs one forced fetch in all. A revocation inside the floor that fetch set is returned
/// at once, marked, and no attempt goes out again with the token it was rejected with.
/// (`tests/timing.rs` follows the same route for hours, and a revocation past the floor.)
#[tokio::test]
async fn a_forbidden_route_beside_normal_traffic_then_a_revocation_inside_the_floor() {
    let fake = FakeLengow::start().await;
    fake.set_forbidden_route("/v3.0/forbidden");
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    for i in 0..100 {
        let request = http::Request::get(fake.url("/v3.0/forbidden"))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let rejected = response.extensions().get::<TokenRejected>().unwrap();
        assert_eq!(rejected.replayed(), i == 0, "{i}: {rejected}");
        assert_eq!(rejected.known_route(), i > 0, "{i}: {rejected}");
        let (response, _) = send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(fake.forbidden_requests(), 101);

    fake.revoke_all_tokens();
    let seen = fake.seen_authorizations().len();
    let request = post(&fake, "/v3.0/orders/actions/", "revoked", payload(3, 100));
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let rejected = response.extensions().get::<TokenRejected>().unwrap();
    assert!(
        !rejected.replayed() && !rejected.known_route(),
        "{rejected}"
    );
    assert!(
        rejected.to_string().contains("min_refresh_interval"),
        "{rejected}"
    );
    assert_eq!(fake.attempts("revoked"), 1);
    assert_eq!(fake.seen_authorizations().len(), seen + 1);
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(layer.stats().rejected_within_floor, 1);
}
