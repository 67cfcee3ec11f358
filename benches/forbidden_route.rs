//! Token fetches per hour for a route the account has no right to (it answers 403 to every
//! token), called once a second beside steady traffic (one request a second elsewhere), on
//! a paused tokio clock against an in-process auth service and API. A count, not a time:
//! the same on any machine.
//!
//! `cargo bench --bench forbidden_route` (add `-- HOURS` for another span than 6 hours).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use lengow_auth::{Credentials, LengowAuthLayer, ReplayBody};
use tower::{Layer, ServiceExt};

fn main() {
    let hours: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(6);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(run(hours));
}

async fn run(hours: u64) {
    let issued = Arc::new(Mutex::new(0u64));
    let token_client = {
        let issued = Arc::clone(&issued);
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let issued = Arc::clone(&issued);
            async move {
                let mut n = issued.lock().expect("lock");
                *n += 1;
                let body = format!(r#"{{"token":"token-{n}","account_id":1}}"#);
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(body)))
            }
        })
    };
    let api = tower::service_fn(|request: Request<ReplayBody<Empty<Bytes>>>| async move {
        let mut response = Response::new(Empty::<Bytes>::new());
        if request.uri().path() == "/v3.0/forbidden" {
            *response.status_mut() = StatusCode::FORBIDDEN;
        }
        Ok::<_, Infallible>(response)
    });
    let layer = LengowAuthLayer::builder(Credentials::new("access", "secret"))
        .api_url("http://127.0.0.1:1".parse().expect("a uri"))
        .build(token_client)
        .expect("a layer");
    let client = layer.layer(api);
    let send = |path: &'static str| {
        let request = Request::get(path).body(Empty::new()).expect("a request");
        client.clone().oneshot(request)
    };
    for _ in 0..hours * 3600 {
        send("/v3.0/forbidden").await.expect("a response");
        send("/v3.0/orders").await.expect("a response");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats = layer.stats();
    println!(
        "forbidden route once a second beside steady traffic, {hours} h: {} fetches \
         ({:.1} an hour): {} forced, {} background, 1 cold",
        stats.fetches,
        stats.fetches as f64 / hours as f64,
        stats.forced_refreshes,
        stats.background_refreshes,
    );
}
