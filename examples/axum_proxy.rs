//! The layer inside an axum app: a `GET /orders` handler calls Lengow through the authenticated
//! client the app holds in its state, and passes Lengow's answer on.
//!
//! It runs on its own: it starts an in-process FakeLengow, serves the app on 127.0.0.1, calls
//! the app a few times with a plain hyper client, and prints what came back and how many
//! tokens FakeLengow handed out (one). `RUST_LOG=lengow_auth=debug` shows the layer's logs.
//!
//! Against the real API, build the layer with `LengowAuthLayer::from_env()` and the client with
//! `lengow_auth::client::https()` (feature `client`); the rest of the app is the same.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lengow_auth::testing::FakeLengow;
use lengow_auth::{LengowAuth, LengowAuthLayer, ReplayBody};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The authenticated client: hyper-util's client under the layer. With the `client` feature,
/// `lengow_auth::client::LengowClient<Empty<Bytes>>` names the HTTPS one.
type Lengow = LengowAuth<Client<HttpConnector, ReplayBody<Empty<Bytes>>>>;

/// What every handler gets. Cloning it is cheap: the client's pool and the layer's token
/// cache are shared by every clone, so all requests to the app share one token.
#[derive(Clone)]
struct AppState {
    lengow: Lengow,
    /// The orders URL for this account, built once at startup.
    orders_url: Arc<str>,
}

/// How many requests the demo sends to the app at once.
const CALLS: usize = 5;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let fake = FakeLengow::start().await;
    println!("FakeLengow listening on {}", fake.addr());

    // The layer and the client it wraps, built once for the whole app.
    let layer = LengowAuthLayer::builder(fake.credentials())
        .api_url(fake.uri())
        .build(Client::builder(TokioExecutor::new()).build_http())?;
    let lengow: Lengow = layer.layer(Client::builder(TokioExecutor::new()).build_http());

    // Fetch the first token before serving: bad credentials then stop the app at startup
    // rather than failing its first requests, and the account id is known from here on.
    let account_id = layer.account_id().await?;
    let state = AppState {
        lengow,
        orders_url: fake
            .url(&format!("/v3.0/orders?account_id={account_id}"))
            .into(),
    };

    let app = Router::new()
        .route("/orders", get(orders))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("app listening on {app_addr}");

    // Call the app the way its own users would: plain HTTP, no Lengow credentials.
    let users = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let request = Request::get(format!("http://{app_addr}/orders")).body(Empty::new())?;
        let users = users.clone();
        calls.spawn(async move {
            let response = users.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, body))
        });
    }
    let mut ok = 0;
    while let Some(call) = calls.join_next().await {
        let (status, body) = call??;
        println!("GET /orders -> {status} {}", String::from_utf8_lossy(&body));
        ok += usize::from(status == StatusCode::OK);
    }
    println!(
        "{ok}/{CALLS} calls succeeded; FakeLengow token fetches: {}; API requests: {}",
        fake.token_fetches(),
        fake.api_requests()
    );
    println!("layer stats: {:?}", layer.stats());

    drop(users);
    let _ = stop.send(());
    server.await??;

    if ok != CALLS || fake.token_fetches() != 1 {
        return Err("the axum example did not go as expected".into());
    }
    Ok(())
}

/// `GET /orders`: the account's first page of orders, straight from Lengow.
async fn orders(State(state): State<AppState>) -> Response {
    let request = match Request::get(&*state.orders_url).body(Empty::new()) {
        Ok(request) => request,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    // `oneshot` waits for the client to be ready, then sends; the clone shares the pool.
    match state.lengow.clone().oneshot(request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            // The layer already refreshed and replayed once: a rejection now is Lengow
            // refusing this app, not something the app's caller can fix.
            if matches!(
                parts.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                let message = format!("lengow refused the request ({})", parts.status);
                return (StatusCode::BAD_GATEWAY, message).into_response();
            }
            // Stream Lengow's body through, with its status and content type.
            let mut out = Response::new(Body::new(body));
            *out.status_mut() = parts.status;
            if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
                out.headers_mut().insert(CONTENT_TYPE, content_type.clone());
            }
            out
        }
        Err(e) => upstream_error(&e),
    }
}

/// The response for a call that got no answer from Lengow.
///
/// A token the layer could not get comes back as a `lengow_auth::Error`: a temporary one
/// (rate limit, outage, timeout) is a 503 with Lengow's `Retry-After` when known; refused
/// credentials are this app's fault, a 500. Anything else (connection refused, reset) is 502.
fn upstream_error(error: &BoxError) -> Response {
    let Some(auth) = error.downcast_ref::<lengow_auth::Error>() else {
        return (
            StatusCode::BAD_GATEWAY,
            format!("lengow unreachable: {error}"),
        )
            .into_response();
    };
    if auth.is_rate_limited() || auth.is_unavailable() || auth.is_timeout() {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, auth.to_string()).into_response();
        if let Some(wait) = auth.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        }
        return response;
    }
    (StatusCode::INTERNAL_SERVER_ERROR, auth.to_string()).into_response()
}
