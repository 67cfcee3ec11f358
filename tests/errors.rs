//! `Error::find`: the layer's error is found in the `BoxError` a client returns, through the
//! layers that wrap the authenticated service (`tower::timeout`, `tower::buffer`) and down any
//! source chain; other failures are not mistaken for it.

mod common;

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::testing::{FakeLengow, TokenFailure};
use lengow_auth::{Credentials, Error, LengowAuthLayer};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Sends one GET of `/v3.0/orders` through `service` and returns its error.
async fn error_of<S>(service: S, fake: &FakeLengow) -> BoxError
where
    S: Service<Request<Full<Bytes>>, Error = BoxError>,
    S::Response: fmt::Debug,
{
    let request = Request::get(fake.url("/v3.0/orders"))
        .body(Full::default())
        .expect("a valid request");
    service
        .oneshot(request)
        .await
        .expect_err("the token fetch was made to fail")
}

#[tokio::test]
async fn found_through_a_timeout_layer() {
    let fake = FakeLengow::start().await;
    let layer = LengowAuthLayer::builder(Credentials::new("unknown", "wrong"))
        .api_url(fake.uri())
        .build(token_client())
        .unwrap();
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http());

    let error = error_of(service, &fake).await;
    let found = Error::find(error.as_ref()).expect("the layer's error");
    assert!(found.is_invalid_credentials(), "{found}");
    assert_eq!(found.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.api_requests(), 0);
}

#[tokio::test]
async fn found_through_a_buffer_and_a_timeout() {
    let fake = FakeLengow::start().await;
    fake.push_token_failure(TokenFailure::status(StatusCode::SERVICE_UNAVAILABLE).retry_after("7"));
    let layer = builder(&fake).build(token_client()).unwrap();
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .buffer(4)
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http());

    let error = error_of(service, &fake).await;
    let found = Error::find(error.as_ref()).expect("the layer's error");
    assert!(found.is_unavailable(), "{found}");
    assert_eq!(found.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(found.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.api_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_layers_fetch_timeout_is_found_but_an_outer_timeout_is_not_the_layers() {
    let fake = FakeLengow::builder()
        .token_delay(Duration::from_secs(5))
        .start()
        .await;

    // The layer gives up on the fetch first: its own timeout error, through `Timeout`.
    let layer = builder(&fake)
        .fetch_timeout(Duration::from_secs(1))
        .build(token_client())
        .unwrap();
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let error = error_of(service, &fake).await;
    let found = Error::find(error.as_ref()).expect("the layer's error");
    assert!(found.is_timeout(), "{found}");
    assert_eq!(fake.token_fetches(), 1);

    // The outer timeout elapses first: `Elapsed`, which is not the layer's error.
    let layer = builder(&fake).build(token_client()).unwrap();
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let error = error_of(service, &fake).await;
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error:?}");
    assert!(Error::find(error.as_ref()).is_none());
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(fake.api_requests(), 0);
}

/// A service that is never ready: its readiness fails with `error`.
#[derive(Clone)]
struct NeverReady(Error);

impl Service<Request<Full<Bytes>>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(self.0.clone().into()))
    }

    fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
        unreachable!("never ready, never called")
    }
}

/// An application's own error, keeping the cause as its source.
#[derive(Debug)]
struct AppError(BoxError);

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the call to lengow failed")
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// A configuration error, the one kind of `Error` a test can make without a server.
fn config_error() -> Error {
    LengowAuthLayer::builder(Credentials::new("key", "secret"))
        .api_url(http::Uri::from_static("http://api.lengow.io"))
        .build(token_client())
        .expect_err("plain http is refused off loopback")
}

#[tokio::test]
async fn found_down_a_source_chain() {
    // A buffer whose service failed wraps the failure in its own error type: the layer's
    // error is its source, not the error itself.
    let fake = FakeLengow::start().await;
    let buffered = ServiceBuilder::new()
        .buffer(1)
        .service(NeverReady(config_error()));
    let error = error_of(buffered, &fake).await;
    assert!(error.downcast_ref::<Error>().is_none(), "{error:?}");
    let found = Error::find(error.as_ref()).expect("found under the buffer's error");
    assert!(found.is_config(), "{found}");

    // Two levels down: an application's error around the buffer's.
    let wrapped = AppError(error);
    let found = Error::find(&wrapped).expect("found two levels down");
    assert!(found.is_config(), "{found}");

    // Nothing of the layer's in a chain: none.
    let io = AppError(std::io::Error::other("connection refused").into());
    assert!(Error::find(&io).is_none());
    assert_eq!(fake.api_requests() + fake.token_fetches(), 0);
}
