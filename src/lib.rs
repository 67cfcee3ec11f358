//! A tower middleware that makes every call to the [Lengow] API authenticated.
//!
//! [`LengowAuthLayer`] wraps any tower HTTP client service. It fetches a token from
//! `POST /access/get_token`, sends it as `Authorization: <token>` on every request to the
//! Lengow origin, refreshes it in the background ahead of its one-hour expiry, and replays a
//! request once after the API rejects the token (401 or 403).
//!
//! Lengow bans the IP of clients that ask for too many tokens, so the layer protects the
//! auth service first: one fetch at a time, one token reused for its life, failures cached
//! and backed off, a floor between refreshes forced by rejections.
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use lengow_auth::{LengowAuthLayer, testing::FakeLengow};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let lengow = FakeLengow::start().await; // an in-process Lengow on 127.0.0.1
//! let layer = LengowAuthLayer::builder(lengow.credentials())
//!     .api_url(lengow.uri())
//!     .build(Client::builder(TokioExecutor::new()).build_http())?;
//! let client = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(Client::builder(TokioExecutor::new()).build_http::<_>());
//!
//! let account_id = layer.account_id().await?;
//! let uri = lengow.url(&format!("/v3.0/orders?account_id={account_id}"));
//! let request = http::Request::get(uri).body(Empty::<bytes::Bytes>::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(lengow.token_fetches(), 1);
//! # let _ = response.into_body().collect().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "test-util"))]
//! # fn main() {}
//! ```
//!
//! [Lengow]: https://www.lengow.com

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod future;
mod layer;
mod rejection;
mod replay;
mod service;
mod shared;
mod stats;
mod token;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod store;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[cfg(feature = "reqwest")]
mod reqwest;

// The README's snippets, compiled and run as doc tests (they use every feature).
#[cfg(all(
    doctest,
    feature = "client",
    feature = "redis",
    feature = "reqwest",
    feature = "test-util"
))]
#[doc = include_str!("../README.md")]
mod readme {}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[doc(inline)]
pub use self::reqwest::{ReqwestFuture, ReqwestService};
#[doc(inline)]
pub use error::Error;
#[doc(inline)]
pub use future::ResponseFuture;
#[doc(inline)]
pub use layer::{
    DEFAULT_API_URL, DEFAULT_FETCH_TIMEOUT, DEFAULT_INVALID_CREDENTIALS_COOLDOWN,
    DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_REFRESH_AHEAD, DEFAULT_REPLAY_BODY_LIMIT,
    DEFAULT_TOKEN_LIFETIME, LengowAuthBuilder, LengowAuthLayer,
};
#[doc(inline)]
pub use rejection::TokenRejected;
#[doc(inline)]
pub use replay::ReplayBody;
#[doc(inline)]
pub use service::LengowAuth;
#[doc(inline)]
pub use stats::Stats;
#[doc(inline)]
pub use token::{Credentials, SystemClock, WallClock};
