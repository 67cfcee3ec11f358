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
    format!("http://{}{path}", fake.addr())
}

pub const SHORT: Duration = Duration::from_millis(5);
