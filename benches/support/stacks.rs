//! What `benches/hot_path.rs` times and `benches/allocations.rs` counts: the requests, two
//! inner services that answer 200 at once, and the stacks compared with `LengowAuth`.
//!
//! Included by path (`#[path = "support/stacks.rs"] mod stacks;`), not a crate.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Empty, Full};
use lengow_auth::{Credentials, LengowAuthLayer};
use tokio::runtime::Runtime;
use tower::retry::{Policy, Retry, RetryLayer};
use tower::{Layer, Service, ServiceBuilder};
use tower_http::set_header::{MakeHeaderValue, SetRequestHeader, SetRequestHeaderLayer};

const TOKEN: &str = "0a1b2c3d-0000-4abc-8def-0123456789ab";
const TOKEN_ANSWER: &str = r#"{"token":"0a1b2c3d-0000-4abc-8def-0123456789ab","account_id":1}"#;
const API_URL: &str = "http://127.0.0.1:1";

// ---------------------------------------------------------------------------------------
// Requests, as a user builds them: header values from string literals own their bytes.

/// `GET /v3.0/orders` with three headers and no body.
pub fn get_request() -> Request<Empty<Bytes>> {
    Request::get("http://127.0.0.1:1/v3.0/orders?account_id=1")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "lengow-auth-bench/1.0")
        .header("x-request-id", "0001")
        .body(Empty::new())
        .expect("a valid request")
}

/// `POST /v3.0/orders/actions/` with three headers and a 1 KiB body made from a `Vec`.
pub fn post_request() -> Request<Full<Bytes>> {
    Request::post("http://127.0.0.1:1/v3.0/orders/actions/")
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "lengow-auth-bench/1.0")
        .header("x-request-id", "0001")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .expect("a valid request")
}

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

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// Reads the request body to its end (its frames are all ready), then answers 200 at once:
/// what a client does with a POST body, without the network.
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

/// tower-http's `SetRequestHeader` with one fixed token (made at run time and sensitive, as a
/// token is): the floor, with no refresh and no replay.
pub fn static_header<S>(inner: S) -> SetRequestHeader<S, HeaderValue> {
    let mut value = HeaderValue::from_str(TOKEN).expect("a valid header value");
    value.set_sensitive(true);
    SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(inner)
}

/// The token a hand-built stack shares between its services and the task that refreshes it.
pub type SharedToken = Arc<ArcSwap<HeaderValue>>;

pub fn shared_token() -> SharedToken {
    let mut value = HeaderValue::from_str(TOKEN).expect("a valid header value");
    value.set_sensitive(true);
    Arc::new(ArcSwap::from_pointee(value))
}

/// Reads the shared token for every request: one lock-free load, one header clone.
#[derive(Clone, Debug)]
pub struct ReadToken(SharedToken);

impl<B> MakeHeaderValue<Request<B>> for ReadToken {
    fn make_header_value(&mut self, _: &Request<B>) -> Option<HeaderValue> {
        Some(HeaderValue::clone(&self.0.load()))
    }
}

/// Keeps a copy of every request (its head and its `Bytes` body) and sends it again, once,
/// after a 401. A real stack would refresh the shared token before the replay; here the token
/// stays valid and no request is rejected, so only the copy is paid.
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
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

pub type HandBuilt<S> = Retry<ReplayOnce, SetRequestHeader<S, ReadToken>>;

/// What a user would write instead of this crate: `SetRequestHeader` reading the shared token,
/// under `tower::retry` replaying once after a 401.
pub fn hand_built<S>(inner: S, token: &SharedToken) -> HandBuilt<S> {
    ServiceBuilder::new()
        .layer(RetryLayer::new(ReplayOnce::default()))
        .layer(SetRequestHeaderLayer::overriding(
            AUTHORIZATION,
            ReadToken(Arc::clone(token)),
        ))
        .service(inner)
}

/// A layer holding a valid token, fetched from a token client that answers at once.
pub fn warm_layer(runtime: &Runtime) -> LengowAuthLayer {
    let token_client = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let response = Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(TOKEN_ANSWER.as_bytes())))
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    let layer = LengowAuthLayer::builder(Credentials::new("bench-access-token", "bench-secret"))
        .api_url(API_URL.parse().expect("a valid uri"))
        .build(token_client)
        .expect("valid settings");
    let account_id = runtime
        .block_on(layer.account_id())
        .expect("the token client answers a token");
    assert_eq!(account_id, 1);
    layer
}

/// Sends one request through `service`: `poll_ready`, `call` and one poll with a no-op waker.
/// Every stack here answers at once (the layer holds a valid token); anything else panics.
pub fn drive<S, R>(service: &mut S, request: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the stack is not ready: {other:?}"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(e)) => panic!("the stack failed: {e:?}"),
        Poll::Pending => panic!("the stack did not answer at once"),
    }
}
