//! The real Lengow API over TLS: lists the first page of orders of the account behind the
//! credentials in `LENGOW_ACCESS_TOKEN` and `LENGOW_SECRET`.
//!
//! ```text
//! LENGOW_ACCESS_TOKEN=… LENGOW_SECRET=… cargo run --example hyper_client --features client
//! ```
//!
//! Without credentials it says which variables to set and exits with status 2.
//! `RUST_LOG=lengow_auth=debug` shows the token fetch.

use bytes::Bytes;
use http::StatusCode;
use http::header::{ACCEPT, HeaderValue};
use http_body_util::{BodyExt, Empty};
use lengow_auth::client::{self, LengowClient};
use lengow_auth::{DEFAULT_API_URL, LengowAuthLayer};
use serde_json::Value;
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many orders of the first page to print.
const SHOWN: usize = 5;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // Credentials from the environment; the layer fetches tokens with its own HTTPS client.
    let layer = match LengowAuthLayer::from_env() {
        Ok(layer) => layer,
        Err(e) if e.is_config() => {
            eprintln!("error: {e}");
            eprintln!();
            eprintln!("This example calls the real Lengow API. Set your API credentials first:");
            eprintln!("    export LENGOW_ACCESS_TOKEN=<your access token>");
            eprintln!("    export LENGOW_SECRET=<your secret>");
            std::process::exit(2);
        }
        Err(e) => return Err(e.into()),
    };
    // The API client: a pooled HTTPS hyper-util client under the layer.
    let lengow: LengowClient<Empty<Bytes>> = layer.layer(client::https());

    // The first call fetches the token; the layer keeps it and refreshes it from here on.
    let account_id = match layer.account_id().await {
        Ok(id) => id,
        Err(e) if e.is_invalid_credentials() => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        Err(e) => return Err(e.into()),
    };
    println!("account {account_id}");

    let uri = format!("{DEFAULT_API_URL}/v3.0/orders?account_id={account_id}");
    let request = http::Request::get(uri)
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .body(Empty::new())?;
    let response = lengow.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "GET /v3.0/orders answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }

    let page: Value = serde_json::from_slice(&body)?;
    let results = page["results"].as_array().map_or(&[][..], Vec::as_slice);
    match page["count"].as_u64() {
        Some(count) => println!("{count} orders; the first page holds {}", results.len()),
        None => println!("the first page holds {} orders", results.len()),
    }
    for order in results.iter().take(SHOWN) {
        println!(
            "  {:<24} {:<20} {}",
            text(&order["marketplace_order_id"]),
            text(&order["marketplace"]),
            text(&order["lengow_status"]),
        );
    }
    if results.len() > SHOWN {
        println!("  … and {} more on this page", results.len() - SHOWN);
    }
    if let Some(next) = page["next"].as_str() {
        println!("next page: {next}");
    }
    println!("layer stats: {:?}", layer.stats());
    Ok(())
}

/// A JSON value as a short string: strings unquoted, a dash for a missing field.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
