//! Starts an in-process FakeLengow, puts the layer in front of a hyper-util client, and shows
//! what the layer does: one token for a burst, a refresh in the background, a replay after a
//! revocation. No credentials, no network. `RUST_LOG=lengow_auth=debug` shows the layer's logs.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::LengowAuthLayer;
use lengow_auth::testing::FakeLengow;
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let lengow = FakeLengow::start().await;
    println!("FakeLengow listening on {}", lengow.addr());

    // Lengow's tokens live an hour and the layer refreshes them 10 minutes ahead; here the
    // layer is told they live 3 s and to refresh 2 s ahead, so that a refresh shows at once.
    let lifetime = Duration::from_secs(3);
    let ahead = Duration::from_secs(2);
    println!(
        "Token lifetimes shortened to show a refresh: the layer assumes a token lives {}s (Lengow's live 3600s) \
         and refreshes it {}s before its end, so the first refresh comes about {}s after the first fetch \
         (up to 10% of {}s earlier: jitter)",
        lifetime.as_secs(),
        ahead.as_secs(),
        (lifetime - ahead).as_secs(),
        ahead.as_secs(),
    );
    let layer = LengowAuthLayer::builder(lengow.credentials())
        .api_url(lengow.uri())
        .token_lifetime(lifetime)
        .refresh_ahead(ahead)
        .build(Client::builder(TokioExecutor::new()).build_http())?;
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(Client::builder(TokioExecutor::new()).build_http());

    let account_id = layer.account_id().await?;
    let orders = lengow.url(&format!("/v3.0/orders?account_id={account_id}"));
    let get = |uri: &str| http::Request::get(uri).body(Full::<Bytes>::default());

    // 1. A burst on a warm layer: every request reuses the one token.
    let burst = (0..100).map(|_| {
        client
            .clone()
            .oneshot(get(&orders).expect("a valid request"))
    });
    let responses = futures_join_all(burst).await;
    let ok = responses
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status() == 200))
        .count();
    println!(
        "1. {ok}/100 concurrent requests succeeded; token fetches so far: {}",
        lengow.token_fetches()
    );

    // 2. The token is refreshed in the background before it expires: 1.5 s is past the
    //    refresh (about 1 s in) and before the first token's end (3 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = client.clone().oneshot(get(&orders)?).await?;
    println!(
        "2. 1.5 s later, past the refresh due {}s after the fetch: status {}, token fetches: {} \
         (one background refresh, no request waited)",
        (lifetime - ahead).as_secs(),
        response.status(),
        lengow.token_fetches()
    );

    // 3. Lengow revokes every token: the next request is refreshed and replayed once.
    lengow.revoke_all_tokens();
    let request = http::Request::post(lengow.url("/v3.0/orders/actions/"))
        .header("x-request-id", "action-1")
        .body(Full::from(format!(
            "account_id={account_id}&action_type=ship"
        )))?;
    let response = client.clone().oneshot(request).await?;
    let status = response.status();
    let echoed = response.into_body().collect().await?.to_bytes();
    println!(
        "3. after a revocation: status {status}, {} attempts, body replayed byte for byte: {}, token fetches: {}",
        lengow.attempts("action-1"),
        lengow.bodies("action-1").iter().all(|b| *b == echoed),
        lengow.token_fetches()
    );

    println!("layer stats: {:?}", layer.stats());
    if ok != 100 || status != 200 {
        return Err("the quickstart did not go as expected".into());
    }
    Ok(())
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("the task ran"));
    }
    out
}
