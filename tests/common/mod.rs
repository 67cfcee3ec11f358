//! Helpers shared by the integration tests: a hyper-util client stack over the layer.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lengow_auth::testing::FakeLengow;
use lengow_auth::{LengowAuth, LengowAuthBuilder, LengowAuthLayer, ReplayBody};
use tower::{Layer, ServiceExt};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The token client: a plain hyper-util client.
pub fn token_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A builder pointed at `fake`.
pub fn builder(fake: &FakeLengow) -> LengowAuthBuilder {
    LengowAuthLayer::builder(fake.credentials()).api_url(fake.uri())
}

/// The authenticated client for bodies of type `B`.
pub type Authed<B> = LengowAuth<Client<HttpConnector, ReplayBody<B>>>;

pub fn client<B>(layer: &LengowAuthLayer) -> Authed<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    layer.layer(Client::builder(TokioExecutor::new()).build_http())
}

/// Sends `request` and reads the whole answer.
pub async fn send<B>(
    client: &Authed<B>,
    request: Request<B>,
) -> Result<(Response<()>, Bytes), BoxError>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let response = client.clone().oneshot(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((Response::from_parts(parts, ()), body))
}

pub fn get(fake: &FakeLengow, path: &str) -> Request<Full<Bytes>> {
    Request::get(url(fake, path))
        .body(Full::default())
        .expect("a valid request")
}

pub fn post(fake: &FakeLengow, path: &str, id: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(url(fake, path))
        .header("x-request-id", id)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .expect("a valid request")
}

/// Deterministic bytes for request `i`.
pub fn payload(i: usize, len: usize) -> Bytes {
    (0..len).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
}

/// `path` on `fake`'s origin.
pub fn url(fake: &FakeLengow, path: &str) -> String {
    fake.url(path)
}

pub const SHORT: Duration = Duration::from_millis(5);

// Helpers added for tests/faults.rs.

/// When each `get_token` call was made, by tokio's clock and by the wall clock.
#[derive(Clone, Default)]
pub struct FetchLog(
    std::sync::Arc<std::sync::Mutex<Vec<(tokio::time::Instant, std::time::SystemTime)>>>,
);

impl FetchLog {
    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(tokio::time::Instant, std::time::SystemTime)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many `get_token` calls were made.
    pub fn count(&self) -> usize {
        self.entries().len()
    }

    /// When each call was made, by tokio's clock.
    pub fn times(&self) -> Vec<tokio::time::Instant> {
        self.entries().iter().map(|(at, _)| *at).collect()
    }

    /// When each call was made, by the wall clock.
    pub fn walls(&self) -> Vec<std::time::SystemTime> {
        self.entries().iter().map(|(_, wall)| *wall).collect()
    }

    /// The time between each call and the next.
    pub fn gaps(&self) -> Vec<Duration> {
        self.times().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// A token client that logs every call in a [`FetchLog`], then hands it on.
#[derive(Clone)]
pub struct Recording<S> {
    inner: S,
    log: FetchLog,
}

impl<S, R> tower::Service<R> for Recording<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.log
            .entries()
            .push((tokio::time::Instant::now(), std::time::SystemTime::now()));
        self.inner.call(request)
    }
}

/// Wraps `inner` so that every call is logged.
pub fn recording<S>(inner: S) -> (Recording<S>, FetchLog) {
    let log = FetchLog::default();
    let client = Recording {
        inner,
        log: log.clone(),
    };
    (client, log)
}

/// The plain token client, logging every `get_token` call.
pub fn recording_token_client() -> (Recording<Client<HttpConnector, Full<Bytes>>>, FetchLog) {
    recording(token_client())
}

/// The `lengow_auth::Error` inside a client error; panics naming the error if it is another one.
pub fn lengow_error(error: &BoxError) -> &lengow_auth::Error {
    error
        .downcast_ref::<lengow_auth::Error>()
        .unwrap_or_else(|| panic!("not a lengow_auth::Error: {error:?}"))
}
