//! A full client stack around the layer: tracing, a concurrency limit, a deadline, then the
//! Lengow auth layer, over hyper-util's client. The comments on the stack say why each layer
//! sits where it does.
//!
//! It runs against an in-process FakeLengow: a burst of calls through the limit on one token,
//! then a revoked token refreshed and the call replayed inside one span, one permit and one
//! deadline. The trace layer logs each call at INFO; `RUST_LOG=debug` shows more.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::LengowAuthLayer;
use lengow_auth::testing::FakeLengow;
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// At most this many calls to Lengow in flight through this stack (clones of the stack share
/// the limit). It bounds the connections a burst opens and slows how fast a burst spends
/// Lengow's budget of about 500 requests a minute per route.
const MAX_IN_FLIGHT: usize = 4;

/// The deadline of one logical call. Lengow's connectors allow a call 10 to 20 s; this one
/// covers the token fetch the call may wait for (itself capped by the layer's `fetch_timeout`,
/// 10 s), the first attempt and, after a rejection, a forced refresh and the replay.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How many calls the burst sends at once.
const BURST: usize = 8;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,tower_http=info,lengow_auth=info".into()),
        )
        .init();

    let fake = FakeLengow::start().await;
    println!("FakeLengow listening on {}", fake.addr());

    let layer = LengowAuthLayer::builder(fake.credentials())
        .api_url(fake.uri())
        .build(Client::builder(TokioExecutor::new()).build_http())?;

    // Requests go down the stack in this order, responses come back up it.
    let lengow = ServiceBuilder::new()
        // 1. Tracing, outermost: one span per logical call, logging what the caller got.
        //    Its latency includes a token fetch the call waited for and a replay; its status
        //    is the replay's, not the rejected attempt's; a deadline that expired is logged
        //    as the call's failure. (The layer logs each token fetch in its own
        //    `lengow_auth::get_token` span: one fetch serves many calls, so it is no single
        //    call's child.) Put a second TraceLayer innermost, just above the client, to see
        //    every attempt on the wire too; the token it would see is marked sensitive, so
        //    even a span that records headers does not print it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        // 2. The concurrency limit, outside the auth layer: a call takes one permit and holds
        //    it through its replay. Inside the auth layer, the replay would have to win a
        //    second permit, queueing behind other calls while it holds a fresh token and a
        //    caller waits. The permit is taken in `poll_ready`, before the deadline starts,
        //    so waiting for it does not count against the call's deadline (wrap the whole
        //    call in `tokio::time::timeout` to bound that too).
        .layer(ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        // 3. The deadline, outside the auth layer: it bounds the whole logical call, token
        //    fetch and replay included, so the caller has one number to reason about. Inside
        //    it would give each attempt its own budget and a call could take twice as long
        //    plus the refresh. It is tower's `TimeoutLayer`, which fails the call with an
        //    `Elapsed` error. tower-http's `TimeoutLayer` is for servers: it answers a
        //    made-up 408 Request Timeout, which in a client would look like Lengow's answer.
        .layer(TimeoutLayer::new(CALL_TIMEOUT))
        // 4. The auth layer, right above the client: it injects the token just before the
        //    request leaves, sees Lengow's 401/403 as sent, and replays the request itself.
        //    Nothing between it and the client may retry or rewrite the request's origin.
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http());

    let account_id = layer.account_id().await?;
    let orders = fake.url(&format!("/v3.0/orders?account_id={account_id}"));

    // 1. A burst through the limit: every call reuses the one token.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let call = lengow
            .clone()
            .oneshot(Request::get(&orders).body(Full::<Bytes>::default())?);
        burst.spawn(async move {
            let response = call.await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        });
    }
    let mut ok = 0;
    while let Some(status) = burst.join_next().await {
        ok += usize::from(status?? == StatusCode::OK);
    }
    println!(
        "1. burst: {ok}/{BURST} calls succeeded ({MAX_IN_FLIGHT} in flight at most); token fetches: {}",
        fake.token_fetches()
    );

    // 2. Lengow revokes the token: the call is rejected, refreshed and replayed, inside one
    //    trace span, one permit and one deadline.
    fake.revoke_all_tokens();
    let ship = Request::post(fake.url("/v3.0/orders/actions/"))
        .header("x-request-id", "ship-1")
        .body(Full::from(format!(
            "account_id={account_id}&action_type=ship"
        )))?;
    let response = lengow.clone().oneshot(ship).await?;
    let status = response.status();
    response.into_body().collect().await?;
    println!(
        "2. after a revocation: status {status} after {} attempts; token fetches: {}",
        fake.attempts("ship-1"),
        fake.token_fetches()
    );
    println!("layer stats: {:?}", layer.stats());

    if ok != BURST || status != StatusCode::OK || fake.token_fetches() != 2 {
        return Err("the service_builder example did not go as expected".into());
    }
    Ok(())
}
