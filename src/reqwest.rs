//! [`ReqwestService`]: a `reqwest::Client` as a tower service over `http::Request<B>`, so that it
//! can fetch the layer's tokens and carry the API calls under it. Feature `reqwest`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;

/// A [`reqwest::Client`] as a tower [`Service`] taking `http::Request<B>` and answering
/// `http::Response<reqwest::Body>`: the token client of a [`LengowAuthLayer`] and the API
/// client under it.
///
/// reqwest has its own request type and its client is a tower service only over that one;
/// this turns an `http::Request` into it (method, URI, version, headers, extensions, and the
/// body streamed as it is, never collected), and reqwest's answer back into an
/// `http::Response`. Clones share the client and its connection pool.
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use http_body_util::{BodyExt, Empty};
/// use lengow_auth::{LengowAuthLayer, ReqwestService, testing::FakeLengow};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let lengow = FakeLengow::start().await; // an in-process Lengow on 127.0.0.1
/// let reqwest = ReqwestService::new(reqwest::Client::new());
/// let layer = LengowAuthLayer::builder(lengow.credentials())
///     .api_url(lengow.uri())
///     .build(reqwest.clone())?; // the token client
/// let client = ServiceBuilder::new().layer(layer.clone()).service(reqwest); // the API client
///
/// let account_id = layer.account_id().await?;
/// let uri = lengow.url(&format!("/v3.0/orders?account_id={account_id}"));
/// let response = client.oneshot(http::Request::get(uri).body(Empty::<bytes::Bytes>::new())?).await?;
/// assert_eq!(response.status(), 200);
/// assert_eq!(lengow.token_fetches(), 1);
/// # let _ = response.into_body().collect().await?;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "test-util"))]
/// # fn main() {}
/// ```
///
/// # Bodies
///
/// reqwest sends only bodies that are `Send + Sync`, so `B` must be both. `Full`, `Empty`,
/// `String`, `Vec<u8>` and `http_body_util::combinators::BoxBody` are; `UnsyncBoxBody` is not,
/// and neither is axum's `Body`, which is built on it: an axum handler that forwards its
/// request's body through this service collects it first (`axum::body::to_bytes`) and sends
/// the bytes in a `Full`. Under the layer, the body reaches this service as a
/// [`ReplayBody<B>`](crate::ReplayBody), which is `Send + Sync` where `B` is.
///
/// # Errors
///
/// `reqwest::Error`: a failed connection, a timeout set on the client, or a request reqwest
/// cannot send, such as one whose URI has no scheme and host (under the layer, the body's
/// error comes back the same way, as the error's source).
///
/// [`LengowAuthLayer`]: crate::LengowAuthLayer
#[derive(Clone, Debug, Default)]
pub struct ReqwestService {
    client: ::reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`; build it with the timeouts, proxies and TLS settings you want
    /// (Lengow's own connectors give a call 10 s to connect and 10 to 20 s in all).
    pub fn new(client: ::reqwest::Client) -> Self {
        Self { client }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &::reqwest::Client {
        &self.client
    }

    /// The wrapped client, taken back.
    pub fn into_inner(self) -> ::reqwest::Client {
        self.client
    }
}

impl From<::reqwest::Client> for ReqwestService {
    fn from(client: ::reqwest::Client) -> Self {
        Self::new(client)
    }
}

impl<B> Service<Request<B>> for ReqwestService
where
    B: Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<::reqwest::Body>;
    type Error = ::reqwest::Error;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<::reqwest::Request>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = match ::reqwest::Request::try_from(request.map(::reqwest::Body::wrap)) {
            Ok(request) => State::Sending {
                future: self.client.call(request),
            },
            Err(error) => State::Refused {
                error: std::future::ready(Err(error)),
            },
        };
        ReqwestFuture { state }
    }
}

pin_project! {
    /// The future of a [`ReqwestService`] call: reqwest's own, its answer turned into an
    /// `http::Response`.
    pub struct ReqwestFuture {
        #[pin]
        state: State,
    }
}

/// reqwest's future: the type its tower `Service` impl names.
type Sending = <::reqwest::Client as Service<::reqwest::Request>>::Future;

pin_project! {
    #[project = StateProj]
    enum State {
        Sending { #[pin] future: Sending },
        // The request could not be made a reqwest request.
        Refused { error: std::future::Ready<Result<::reqwest::Response, ::reqwest::Error>> },
    }
}

impl Future for ReqwestFuture {
    type Output = Result<Response<::reqwest::Body>, ::reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project().state.project() {
            StateProj::Sending { future } => ready!(future.poll(cx)),
            StateProj::Refused { error } => ready!(Pin::new(error).poll(cx)),
        };
        Poll::Ready(response.map(Response::from))
    }
}

impl fmt::Debug for ReqwestFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestFuture").finish_non_exhaustive()
    }
}
