//! Ready HTTPS clients for Lengow (hyper-util over rustls with aws-lc-rs and Mozilla's roots) and
//! [`LengowAuthLayer::from_env`]: from the environment to an authenticated client. Feature `client`.
//!
//! The common case, credentials from `LENGOW_ACCESS_TOKEN` and `LENGOW_SECRET` to a first
//! authenticated call:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use lengow_auth::{LengowAuthLayer, client};
//! use tower::{Layer, ServiceExt};
//!
//! let layer = LengowAuthLayer::from_env()?;
//! let lengow: client::LengowClient<Empty<Bytes>> = layer.layer(client::https());
//! let account_id = layer.account_id().await?;
//! let uri = format!("https://api.lengow.io/v3.0/orders?account_id={account_id}");
//! let response = lengow.oneshot(http::Request::get(uri).body(Empty::new())?).await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```
//!
//! Every piece is also usable alone: [`token_client`] for a layer built with other settings,
//! [`https`] for the API client under any stack, [`connector`] for a hyper-util client with
//! pool settings of your own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::Full;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::{Credentials, Error, LengowAuth, LengowAuthLayer, ReplayBody};

/// Lengow's own connectors give a connection 10 s to open.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle pooled connections are closed after 30 s: under the 60 s idle timeout common to load
/// balancers, so the client usually drops an idle connection before the server side does,
/// rather than writing a request to a socket the server is closing.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A hyper-util client over [`connector`], sending bodies of type `B`: what [`https`] and
/// [`token_client`] return.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// An [`https`] client behind a [`LengowAuthLayer`], taking requests with bodies of type `B`.
///
/// The name to give the authenticated client where it is stored, as in a struct field or an
/// axum state:
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use lengow_auth::{LengowAuthLayer, client::{self, LengowClient}};
/// use tower::Layer;
///
/// #[derive(Clone)]
/// struct AppState {
///     layer: LengowAuthLayer,
///     lengow: LengowClient<Full<Bytes>>,
/// }
///
/// # fn run() -> Result<(), lengow_auth::Error> {
/// let layer = LengowAuthLayer::from_env()?;
/// let state = AppState { lengow: layer.layer(client::https()), layer };
/// # let _ = state;
/// # Ok(())
/// # }
/// ```
pub type LengowClient<B> = LengowAuth<HttpsClient<ReplayBody<B>>>;

/// The connector under [`https`] and [`token_client`]: TLS by rustls with the aws-lc-rs provider
/// and Mozilla's root certificates (webpki-roots), HTTP/1.1, [`DEFAULT_CONNECT_TIMEOUT`] to
/// connect, `TCP_NODELAY` on.
///
/// `https://` URIs go over TLS. `http://` ones are let through in clear, so that the same
/// client reaches an in-process fake in tests: the layer never sends credentials or a token
/// over plain http except to a loopback address, since it refuses to build for any other
/// `http://` origin and injects the token only on its own origin's scheme, host and port.
///
/// The crypto provider is named here rather than taken from rustls' process-wide default, so
/// nothing needs installing first, and a program that also links ring, or installs another
/// default, is not affected.
///
/// Use it for a client with settings of your own:
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::{TokioExecutor, TokioTimer};
///
/// let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
///     .pool_max_idle_per_host(4)
///     .pool_idle_timeout(Duration::from_secs(20))
///     .pool_timer(TokioTimer::new())
///     .build(lengow_auth::client::connector());
/// # let _ = client;
/// ```
pub fn connector() -> HttpsConnector<HttpConnector> {
    let mut tcp = HttpConnector::new();
    // The TLS wrapper hands https:// URIs down to the TCP connector, which must accept them.
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
    tcp.set_nodelay(true);
    HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}

/// rustls with the aws-lc-rs provider (rustls' default, with post-quantum key exchange
/// preferred), its safe default protocol versions (TLS 1.3 and 1.2) and
/// Mozilla's roots; no client certificate.
fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Fails only for a provider without cipher suites for TLS 1.2 or 1.3; aws-lc-rs has both.
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .with_webpki_roots()
        .with_no_client_auth()
}

/// A pooled HTTPS client for the Lengow API, to put under a [`LengowAuthLayer`].
///
/// hyper-util's legacy client over [`connector`], on tokio, closing idle connections after
/// [`DEFAULT_POOL_IDLE_TIMEOUT`]. It has no per-call deadline: put a
/// `tower::timeout::TimeoutLayer` in the stack for that (Lengow's connectors allow a call
/// 10 to 20 s). Building it needs no runtime; using it needs tokio. Clones share the pool.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use lengow_auth::{Credentials, LengowAuthLayer, client};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let layer = LengowAuthLayer::builder(Credentials::from_env()?)
///     .api_url("https://api.lengow.net".parse()?) // pre-production
///     .build(client::token_client())?;
/// let lengow = ServiceBuilder::new()
///     .timeout(Duration::from_secs(30))
///     .layer(layer.clone())
///     .service(client::https()); // the body type is inferred from the requests
///
/// let account_id = layer.account_id().await?;
/// let uri = format!("https://api.lengow.net/v3.0/orders?account_id={account_id}");
/// let response = lengow.oneshot(http::Request::get(uri).body(Full::<Bytes>::default())?).await?;
/// # let _ = response;
/// # Ok(())
/// # }
/// ```
pub fn https<B>() -> HttpsClient<B>
where
    B: Body + Send,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(DEFAULT_POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector())
}

/// The client a [`LengowAuthLayer`] uses for `POST /access/get_token`: [`https`] with the
/// body type the layer sends.
///
/// It is a separate client from the API one (the body types differ), so a token fetch never
/// queues behind API calls for a pooled connection.
///
/// ```
/// use lengow_auth::{Credentials, LengowAuthLayer, client};
///
/// let layer = LengowAuthLayer::builder(Credentials::new("access-token", "secret"))
///     .build(client::token_client())?;
/// # let _ = layer;
/// # Ok::<(), lengow_auth::Error>(())
/// ```
pub fn token_client() -> HttpsClient<Full<Bytes>> {
    https()
}

#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
impl LengowAuthLayer {
    /// A layer for the production API (`https://api.lengow.io`), with the credentials of
    /// [`Credentials::from_env`] (`LENGOW_ACCESS_TOKEN` and `LENGOW_SECRET`), every other
    /// setting at its default, and [`client::token_client`](token_client) to fetch tokens.
    ///
    /// Fails with a [configuration error](Error::is_config) naming the variable that is
    /// missing or empty. Building needs no runtime, and makes no request: the first token is
    /// fetched on first use. For pre-production or other settings, use
    /// [`LengowAuthLayer::builder`] with [`token_client`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use lengow_auth::{LengowAuthLayer, client};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// let layer = match LengowAuthLayer::from_env() {
    ///     Ok(layer) => layer,
    ///     Err(e) if e.is_config() => {
    ///         eprintln!("{e}");
    ///         std::process::exit(2);
    ///     }
    ///     Err(e) => return Err(e.into()),
    /// };
    /// let lengow = ServiceBuilder::new()
    ///     .layer(layer.clone())
    ///     .service(client::https());
    /// let account_id = layer.account_id().await?;
    /// let uri = format!("https://api.lengow.io/v3.0/orders?account_id={account_id}");
    /// let response = lengow.oneshot(http::Request::get(uri).body(Empty::<Bytes>::new())?).await?;
    /// # let _ = response;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        Self::builder(Credentials::from_env()?).build(token_client())
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt, Empty};
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::testing::FakeLengow;

    #[tokio::test]
    async fn both_clients_work_under_the_layer_on_loopback() {
        let fake = FakeLengow::start().await;
        let layer = LengowAuthLayer::builder(fake.credentials())
            .api_url(fake.uri())
            .build(token_client())
            .unwrap();
        let lengow: LengowClient<Empty<Bytes>> = layer.layer(https());
        let account_id = layer.account_id().await.unwrap();
        for _ in 0..3 {
            let uri = fake.url(&format!("/v3.0/orders?account_id={account_id}"));
            let request = http::Request::get(uri).body(Empty::new()).unwrap();
            let response = lengow.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, r#"{"count":0,"results":[],"next":null}"#);
        }
        assert_eq!(account_id, fake.account_id());
        assert_eq!(fake.token_fetches(), 1);
        assert_eq!(fake.api_requests(), 3);
        assert_eq!(fake.requests_without_token(), 0);
    }

    #[tokio::test]
    async fn https_uris_go_over_tls() {
        // The fake speaks plain HTTP: a TLS handshake with it must fail, and it must see no
        // request (a client that ignored the scheme would get a 401 from it instead).
        let fake = FakeLengow::start().await;
        let uri = format!("https://{}/v3.0/orders", fake.addr());
        let request = http::Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
        let result = https().oneshot(request).await;
        assert!(result.is_err(), "{result:?}");
        assert_eq!(fake.api_requests(), 0);
    }

    #[test]
    fn building_needs_no_runtime() {
        let _connector = connector();
        let _client = https::<Full<Bytes>>();
        let layer = LengowAuthLayer::builder(Credentials::new("a", "s")).build(token_client());
        assert!(layer.is_ok());
    }
}
