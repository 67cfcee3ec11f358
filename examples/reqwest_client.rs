//! The layer over reqwest (feature `reqwest`): one `reqwest::Client` fetches the tokens and
//! carries the API calls, against an in-process FakeLengow (no credentials, no network).
//!
//! ```sh
//! cargo run --example reqwest_client --features reqwest
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use lengow_auth::testing::FakeLengow;
use lengow_auth::{LengowAuthLayer, ReqwestService};
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let lengow = FakeLengow::start().await;
    println!("FakeLengow listening on {}", lengow.addr());

    // One client, with the timeouts Lengow's own connectors use; clones share its pool.
    let reqwest = ReqwestService::new(
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            .build()?,
    );
    let layer = LengowAuthLayer::builder(lengow.credentials())
        .api_url(lengow.uri()) // https://api.lengow.io for real
        .build(reqwest.clone())?; // the token client
    let client = ServiceBuilder::new().layer(layer.clone()).service(reqwest);

    let account_id = layer.account_id().await?;
    let orders = lengow.url(&format!("/v3.0/orders?account_id={account_id}"));
    let response = client
        .clone()
        .oneshot(http::Request::get(&orders).body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status();
    let page = response.into_body().collect().await?.to_bytes();
    println!(
        "1. GET /v3.0/orders: {status} {}",
        String::from_utf8_lossy(&page)
    );

    // Lengow revokes the token: the POST is refreshed and replayed, body and all.
    lengow.revoke_all_tokens();
    let form = format!("account_id={account_id}&marketplace_order_id=A-1&action_type=ship");
    let request = http::Request::post(lengow.url("/v3.0/orders/actions/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-request-id", "ship-1")
        .body(Full::new(Bytes::from(form.clone())))?;
    let response = client.clone().oneshot(request).await?;
    let replayed = response.status();
    println!(
        "2. after a revocation: POST /v3.0/orders/actions/ {replayed}, {} attempts, the server saw the body {} times, token fetches: {}",
        lengow.attempts("ship-1"),
        lengow
            .bodies("ship-1")
            .iter()
            .filter(|body| **body == form.as_bytes())
            .count(),
        lengow.token_fetches()
    );

    if status != 200 || replayed != 200 || lengow.token_fetches() != 2 {
        return Err("the reqwest example did not go as expected".into());
    }
    Ok(())
}
