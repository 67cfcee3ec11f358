//! The comparison stacks shared by `benches/hot_path.rs` (time per request) and
//! `tests/allocations.rs` (allocations per request): the no-op inner services, tower-http's
//! `SetRequestHeader` with a fixed token, the hand-built stack a user would write instead of
//! this crate, and a `LengowAuthLayer` whose token client answers at once.
//!
//! Included by path (`#[path = "..."] mod stacks;`), not a crate: each includer uses a part
//! (the test, say, never builds a cold layer), hence the `allow` below.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Empty, Full};
use lengow_auth::{Credentials, LengowAuthLayer};
use tokio::runtime::Runtime;
use tower::retry::{Policy, Retry, RetryLayer};
use tower::{Layer, Service, ServiceBuilder};
use tower_http::set_header::{MakeHeaderValue, SetRequestHeader, SetRequestHeaderLayer};

pub const TOKEN: &str = "0a1b2c3d-0000-4abc-8def-0123456789ab";
pub const TOKEN_ANSWER: &str = r#"{"token":"0a1b2c3d-0000-4abc-8def-0123456789ab","account_id":1}"#;
pub const API_URL: &str = "http://127.0.0.1:1";
pub const ORDERS_URL: &str = "http://127.0.0.1:1/v3.0/orders?account_id=1";
pub const ACTIONS_URL: &str = "http://127.0.0.1:1/v3.0/orders/actions/";

// ---------------------------------------------------------------------------------------
// Inner services

/// Answers 200 at once and drops the request unread.
#[derive(Clone, Copy, Debug)]
pub struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        drop(request);
        ready(Ok(Response::new(Empty::new())))
    }
}

/// Reads the request body to its end (a quick poll loop; the bodies here are always ready),
/// then answers 200.
#[derive(Clone, Copy, Debug)]
pub struct Drain;

impl<B: Body> Service<Request<B>> for Drain {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut body = pin!(request.into_body());
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
            black_box(frame);
        }
        ready(Ok(Response::new(Empty::new())))
    }
}

// ---------------------------------------------------------------------------------------
// The stacks

/// Whether `STATIC_HEADER=from_static` asks for the floor's value to be made with
/// `HeaderValue::from_static`.
pub fn static_header_from_static() -> bool {
    std::env::var("STATIC_HEADER").is_ok_and(|v| v == "from_static")
}

/// The floor: a fixed token, made at run time (a token is never a `&'static str`), sensitive.
///
/// With `STATIC_HEADER=from_static` in the environment the value is made with
/// `HeaderValue::from_static` instead: its clones and drops then touch no reference count,
/// which lowers the floor by two atomic operations a request.
pub fn static_header<S>(inner: S) -> SetRequestHeader<S, HeaderValue> {
    let mut value = if static_header_from_static() {
        HeaderValue::from_static(TOKEN)
    } else {
        HeaderValue::from_str(TOKEN).expect("a valid header value")
    };
    value.set_sensitive(true);
    SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(inner)
}

/// The token a hand-built stack shares between its services and its refresher.
pub type SharedToken = Arc<RwLock<HeaderValue>>;

pub fn shared_token() -> SharedToken {
    let mut value = HeaderValue::from_str(TOKEN).expect("a valid header value");
    value.set_sensitive(true);
    Arc::new(RwLock::new(value))
}

/// Reads the shared token for every request.
#[derive(Clone, Debug)]
pub struct ReadToken(SharedToken);

impl<B> MakeHeaderValue<Request<B>> for ReadToken {
    fn make_header_value(&mut self, _: &Request<B>) -> Option<HeaderValue> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Keeps a clone of each request and sends it again, once, after a 401. A real stack would
/// refresh the shared token in `retry`; here the token stays valid, so it only says "go".
#[derive(Clone, Debug, Default)]
pub struct ReplayOnce {
    replayed: bool,
}

impl<B: Clone, R, E> Policy<Request<B>, Response<R>, E> for ReplayOnce {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Self::Future> {
        let rejected = matches!(result, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
        if rejected && !self.replayed {
            self.replayed = true;
            Some(ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.replayed {
            return None;
        }
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

pub type HandBuilt<S> = Retry<ReplayOnce, SetRequestHeader<S, ReadToken>>;

/// What a user would build instead of this crate: `SetRequestHeader` reading `token`, under
/// `Retry` replaying once on 401.
pub fn hand_built<S>(inner: S, token: &SharedToken) -> HandBuilt<S> {
    ServiceBuilder::new()
        .layer(RetryLayer::new(ReplayOnce::default()))
        .layer(SetRequestHeaderLayer::overriding(
            AUTHORIZATION,
            ReadToken(Arc::clone(token)),
        ))
        .service(inner)
}

/// A layer whose token client answers a valid token at once, warmed so it holds that token.
pub fn warm_layer(runtime: &Runtime) -> LengowAuthLayer {
    let layer = cold_layer();
    let account_id = runtime
        .block_on(layer.account_id())
        .expect("the token client answers a token");
    assert_eq!(account_id, 1);
    layer
}

/// A layer that holds no token yet; its token client answers a valid one at once. The replay
/// body limit is the default, 64 KiB: a 1 KiB POST is kept for a replay.
pub fn cold_layer() -> LengowAuthLayer {
    let token_client = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(TOKEN_ANSWER.as_bytes())))
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    LengowAuthLayer::builder(Credentials::new("bench-access-token", "bench-secret"))
        .api_url(API_URL.parse().expect("a valid uri"))
        .build(token_client)
        .expect("valid settings")
}

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
