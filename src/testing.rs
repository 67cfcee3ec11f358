//! `FakeLengow`: an in-process Lengow API (the `get_token` endpoint and authenticated routes)
//! served over real sockets on 127.0.0.1, with knobs to script failures and counters to assert on.
//!
//! It mimics what Lengow does, as the crate's design records it: a form-encoded
//! `POST /access/get_token` answering `{"token": "<uuid>", "account_id": …, "user_id": …}`,
//! the raw token in `Authorization` on the API routes, 401 on most routes and 403 (quoting
//! the token) on `/v3.0/orders/actions/` and `/v3.0/orders/moi/` for a bad, expired or revoked
//! token, and 404 for a path it does not know. Token lifetimes are judged on tokio's clock, so
//! tests with a paused clock can expire a token with `tokio::time::advance`.
//!
//! [`RedisServer`] starts a throwaway `redis-server` for tests of a fleet sharing a store.
//!
//! ```rust
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use lengow_auth::testing::FakeLengow;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let fake = FakeLengow::start().await;
//!     let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
//!
//!     let credentials = fake.credentials();
//!     let form = form_urlencoded::Serializer::new(String::new())
//!         .append_pair("access_token", credentials.access_token())
//!         .append_pair("secret", credentials.secret())
//!         .finish();
//!     let request = http::Request::post(fake.url("/access/get_token"))
//!         .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
//!         .body(Full::from(form))?;
//!     let response = client.request(request).await?;
//!     assert_eq!(response.status(), http::StatusCode::OK);
//!     let body = response.into_body().collect().await?.to_bytes();
//!     let json: serde_json::Value = serde_json::from_slice(&body)?;
//!     assert_eq!(json["account_id"], fake.account_id());
//!     assert_eq!(fake.token_fetches(), 1);
//!     Ok(())
//! }
//! ```

mod redis_server;

#[doc(inline)]
pub use redis_server::{INSTALL_HINT, RedisServer};

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};

/// The access token `FakeLengow` accepts unless the builder is told otherwise.
const DEFAULT_ACCESS_TOKEN: &str = "fake-access-token";
/// The secret `FakeLengow` accepts unless the builder is told otherwise.
const DEFAULT_SECRET: &str = "fake-secret";
/// The account id in `get_token` answers; any number would do, this one is easy to spot.
const DEFAULT_ACCOUNT_ID: u64 = 12345;
/// The user id in `get_token` answers (Lengow sends one; clients must ignore it).
const USER_ID: u64 = 678;
/// Lengow's token lifetime: one hour, per its help pages and connectors.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Most `Authorization` values kept by [`FakeLengow::seen_authorizations`].
const MAX_SEEN_AUTHORIZATIONS: usize = 10_000;
/// The `Content-Length` announced by [`TokenFailure::reset_mid_body`].
const RESET_ANNOUNCED_LENGTH: u64 = 1000;
/// How many bytes of its body [`TokenFailure::reset_mid_body`] sends before the reset.
const RESET_SENT_BYTES: usize = 10;

/// Lengow's token endpoint.
const TOKEN_PATH: &str = "/access/get_token";
/// The order list route, answered with an empty page.
const ORDERS_PATH: &str = "/v3.0/orders";
/// The API routes the fake knows, besides those a test adds: the ones the crate's docs,
/// examples and tests call. Every other path answers 404, as Lengow does.
const ROUTES: [&str; 6] = [
    ORDERS_PATH,
    "/v3.0/orders/actions/",
    "/v3.0/orders/moi/",
    "/v3.0/marketplaces",
    "/v3.0/me",
    "/rate-limits",
];
/// Routes that reject a token with 403 (quoting the token) instead of 401.
const FORBIDDEN_PREFIXES: [&str; 2] = ["/v3.0/orders/actions", "/v3.0/orders/moi"];
/// The header whose value groups API attempts in [`FakeLengow::attempts`].
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The header carrying the byte length of an echoed body.
const BODY_LEN: HeaderName = HeaderName::from_static("x-body-len");
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
const JSON_CONTENT_TYPE: &str = "application/json";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// An in-process Lengow: the token endpoint and authenticated routes, on `127.0.0.1:<ephemeral port>`.
///
/// Start it with [`FakeLengow::start`] (defaults) or [`FakeLengow::builder`], build the layer
/// with [`api_url(fake.uri())`](FakeLengow::uri) and [`credentials`](FakeLengow::credentials),
/// send requests to [`fake.url("/v3.0/orders")`](FakeLengow::url), then turn its knobs and
/// assert on its counters. Every knob takes `&self` and applies to the next request. Dropping
/// it stops the server and closes its connections.
///
/// Routes:
/// - `POST /access/get_token`: form-encoded `access_token` and `secret`, no `Authorization`
///   header (400 if there is one); 200 `{"token": "<uuid v4>", "account_id": 12345, "user_id": 678}`,
///   401 `{"error": {"code": 401, "message": "Invalid credentials"}}` for anything else, unless
///   a [`TokenFailure`] was scripted. Other methods get 405.
/// - the API routes `/v3.0/orders`, `/v3.0/orders/actions/`, `/v3.0/orders/moi/`,
///   `/v3.0/marketplaces`, `/v3.0/me` and `/rate-limits` (a trailing slash or its absence does
///   not matter), any route added with [`add_route`](FakeLengow::add_route), and any route
///   given a status with [`set_route_status`](FakeLengow::set_route_status) or
///   [`set_forbidden_route`](FakeLengow::set_forbidden_route). They want
///   `Authorization: <token>` (`Bearer <token>` is accepted too). A missing, unknown, revoked or
///   expired token gets 403 `{"error": {"code": 403, "message": "Token: <token> is expired"}}`
///   on `/v3.0/orders/actions/` and `/v3.0/orders/moi/`, and 401
///   `{"error": {"code": 401, "message": "Unauthorized access"}}` elsewhere. With a valid token,
///   `GET /v3.0/orders` answers an empty page and any other request is echoed: same body, same
///   `content-type`, and `x-body-len: <bytes>`.
/// - any other path answers 404 `{"error": {"code": 404, "message": "Not Found"}}`, whatever
///   the token, before looking at it (Lengow checks the token only on routes it has), and counts
///   only in [`not_found_requests`](FakeLengow::not_found_requests). A path that starts with `//`
///   (an origin joined to a path with one slash too many) is one of them.
pub struct FakeLengow {
    state: Arc<State>,
    addr: SocketAddr,
    uri: Uri,
    server: JoinHandle<()>,
}

impl FakeLengow {
    /// Starts a fake with the defaults: credentials `fake-access-token` / `fake-secret`,
    /// account 12345, tokens valid one hour, no delay.
    ///
    /// The server runs as tasks on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// If 127.0.0.1:0 cannot be bound, or when called outside a tokio runtime.
    pub async fn start() -> FakeLengow {
        Self::builder().start().await
    }

    /// A builder to start a fake with other credentials, account id or timings.
    pub fn builder() -> FakeLengowBuilder {
        FakeLengowBuilder {
            access_token: DEFAULT_ACCESS_TOKEN.to_owned(),
            secret: DEFAULT_SECRET.to_owned(),
            account_id: DEFAULT_ACCOUNT_ID,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            token_delay: Duration::ZERO,
            account_id_as_string: false,
        }
    }

    /// The origin, `http://127.0.0.1:PORT`, for the layer's
    /// [`api_url`](crate::LengowAuthBuilder::api_url).
    ///
    /// An [`http::Uri`] prints an origin with a slash after it (`http://127.0.0.1:PORT/`), so
    /// `format!("{}/v3.0/orders", fake.uri())` makes `//v3.0/orders`, which the fake answers
    /// with 404: join paths with [`url`](FakeLengow::url).
    pub fn uri(&self) -> Uri {
        self.uri.clone()
    }

    /// The absolute URL of `path_and_query` on the fake, with exactly one slash between the
    /// origin and the path (`path_and_query` may start with `/` or not).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let fake = lengow_auth::testing::FakeLengow::start().await;
    /// let url = fake.url("/v3.0/orders?account_id=12345");
    /// assert_eq!(url, format!("http://{}/v3.0/orders?account_id=12345", fake.addr()));
    /// assert_eq!(fake.url("v3.0/me"), format!("http://{}/v3.0/me", fake.addr()));
    /// # }
    /// ```
    pub fn url(&self, path_and_query: &str) -> String {
        format!(
            "http://{}/{}",
            self.addr,
            path_and_query.trim_start_matches('/')
        )
    }

    /// The socket address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The credentials the token endpoint accepts.
    pub fn credentials(&self) -> crate::Credentials {
        crate::Credentials::new(self.state.access_token.clone(), self.state.secret.clone())
    }

    /// The account id the token endpoint answers.
    pub fn account_id(&self) -> u64 {
        self.state.account_id
    }

    /// Sets the lifetime of tokens issued from now on (tokens already issued keep theirs).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.token_lifetime) = lifetime;
    }

    /// Makes the token endpoint wait this long (on tokio's clock) before every answer.
    pub fn set_token_delay(&self, delay: Duration) {
        *lock(&self.state.token_delay) = delay;
    }

    /// Revokes every token issued so far; later tokens are valid as usual.
    pub fn revoke_all_tokens(&self) {
        for issued in lock(&self.state.tokens).values_mut() {
            issued.revoked = true;
        }
    }

    /// Queues a scripted answer: the next `get_token` calls answer the queued failures, first
    /// in first out, instead of checking the credentials.
    pub fn push_token_failure(&self, failure: TokenFailure) {
        lock(&self.state.failures).push_back(failure);
    }

    /// Makes `path` (the path only, no query) a route that answers like the other API routes:
    /// it wants a token and, given a valid one, echoes the request.
    ///
    /// For the Lengow routes a test of yours calls that the fake does not know (it answers 404
    /// to those).
    pub fn add_route(&self, path: &str) {
        lock(&self.state.routes).insert(route_key(path).to_owned());
    }

    /// Makes the API route `path` (the path only, no query) always answer `status`, with a
    /// body `{"error": {"code": N, "message": "<reason>"}}`, whatever the token (valid,
    /// missing or revoked); the route becomes known if it was not.
    ///
    /// The request is still counted and its body recorded first; it does not count as a
    /// [rejected request](FakeLengow::rejected_requests). A 403 counts as a
    /// [forbidden request](FakeLengow::forbidden_requests).
    pub fn set_route_status(&self, path: &str, status: StatusCode) {
        lock(&self.state.route_status).insert(route_key(path).to_owned(), status);
    }

    /// Makes `path` a route the account has no right to: it answers 403
    /// `{"error": {"code": 403, "message": "Forbidden"}}` to every token, fresh or not, as
    /// Lengow does. The same as [`set_route_status`](FakeLengow::set_route_status) with 403;
    /// such answers are counted by [`forbidden_requests`](FakeLengow::forbidden_requests).
    pub fn set_forbidden_route(&self, path: &str) {
        self.set_route_status(path, StatusCode::FORBIDDEN);
    }

    /// Takes back [`set_route_status`](FakeLengow::set_route_status) or
    /// [`set_forbidden_route`](FakeLengow::set_forbidden_route): the route answers as it did
    /// before (404 if it was known only through that status).
    pub fn clear_route_status(&self, path: &str) {
        lock(&self.state.route_status).remove(route_key(path));
    }

    /// How many `POST /access/get_token` requests arrived, whatever their outcome.
    pub fn token_fetches(&self) -> usize {
        self.state.token_fetches.load(Ordering::SeqCst)
    }

    /// The most `get_token` requests that were in flight at once.
    pub fn max_concurrent_fetches(&self) -> usize {
        self.state.max_in_flight_fetches.load(Ordering::SeqCst)
    }

    /// How many requests arrived on API routes (known paths but the token endpoint).
    pub fn api_requests(&self) -> usize {
        self.state.api_requests.load(Ordering::SeqCst)
    }

    /// How many API requests had no `Authorization` header.
    pub fn requests_without_token(&self) -> usize {
        self.state.requests_without_token.load(Ordering::SeqCst)
    }

    /// How many API requests were answered 401 or 403 for a missing, unknown, revoked or
    /// expired token.
    pub fn rejected_requests(&self) -> usize {
        self.state.rejected_requests.load(Ordering::SeqCst)
    }

    /// How many API requests a [forbidden route](FakeLengow::set_forbidden_route) answered 403,
    /// whatever their token. They are not [rejected requests](FakeLengow::rejected_requests).
    pub fn forbidden_requests(&self) -> usize {
        self.state.forbidden_requests.load(Ordering::SeqCst)
    }

    /// How many requests were answered 404 because the fake does not know their path. They
    /// are not [API requests](FakeLengow::api_requests), and nothing else of them is recorded.
    pub fn not_found_requests(&self) -> usize {
        self.state.not_found_requests.load(Ordering::SeqCst)
    }

    /// How many API requests carried `x-request-id: <request_id>`.
    pub fn attempts(&self, request_id: &str) -> usize {
        lock(&self.state.by_request_id)
            .get(request_id)
            .map_or(0, |seen| seen.attempts)
    }

    /// The body of each API request that carried `x-request-id: <request_id>`, in the order
    /// they were read to the end.
    ///
    /// A body cut short by the client is recorded as far as it got.
    pub fn bodies(&self, request_id: &str) -> Vec<Bytes> {
        lock(&self.state.by_request_id)
            .get(request_id)
            .map(|seen| seen.bodies.clone())
            .unwrap_or_default()
    }

    /// Every `Authorization` value received on API routes, as sent (`Bearer ` included if it
    /// was), oldest first; only the last 10 000 are kept.
    pub fn seen_authorizations(&self) -> Vec<String> {
        lock(&self.state.seen_authorizations)
            .iter()
            .cloned()
            .collect()
    }

    /// How many API requests presented a token this fake issued but whose lifetime had run out.
    pub fn expired_tokens_used(&self) -> usize {
        self.state.expired_tokens_used.load(Ordering::SeqCst)
    }

    /// Sets every counter back to zero and forgets the recorded attempts, bodies and
    /// `Authorization` values. Tokens, knobs and scripted failures are kept.
    pub fn reset_counters(&self) {
        let state = &self.state;
        state.token_fetches.store(0, Ordering::SeqCst);
        state.max_in_flight_fetches.store(
            state.in_flight_fetches.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        state.api_requests.store(0, Ordering::SeqCst);
        state.requests_without_token.store(0, Ordering::SeqCst);
        state.rejected_requests.store(0, Ordering::SeqCst);
        state.forbidden_requests.store(0, Ordering::SeqCst);
        state.not_found_requests.store(0, Ordering::SeqCst);
        state.expired_tokens_used.store(0, Ordering::SeqCst);
        lock(&state.by_request_id).clear();
        lock(&state.seen_authorizations).clear();
    }
}

impl fmt::Debug for FakeLengow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeLengow")
            .field("addr", &self.addr)
            .field("account_id", &self.state.account_id)
            .field("token_fetches", &self.token_fetches())
            .field("max_concurrent_fetches", &self.max_concurrent_fetches())
            .field("api_requests", &self.api_requests())
            .field("requests_without_token", &self.requests_without_token())
            .field("rejected_requests", &self.rejected_requests())
            .field("forbidden_requests", &self.forbidden_requests())
            .field("not_found_requests", &self.not_found_requests())
            .field("expired_tokens_used", &self.expired_tokens_used())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeLengow {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

/// Configures a [`FakeLengow`] before it starts; from [`FakeLengow::builder`].
pub struct FakeLengowBuilder {
    access_token: String,
    secret: String,
    account_id: u64,
    token_lifetime: Duration,
    token_delay: Duration,
    account_id_as_string: bool,
}

impl FakeLengowBuilder {
    /// The credentials the token endpoint accepts (default `fake-access-token` / `fake-secret`).
    pub fn credentials(
        mut self,
        access_token: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.access_token = access_token.into();
        self.secret = secret.into();
        self
    }

    /// The account id the token endpoint answers (default 12345).
    pub fn account_id(mut self, id: u64) -> Self {
        self.account_id = id;
        self
    }

    /// The lifetime of issued tokens (default one hour, as Lengow).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// How long the token endpoint waits before every answer (default none).
    pub fn token_delay(mut self, delay: Duration) -> Self {
        self.token_delay = delay;
        self
    }

    /// Answer `"account_id": "12345"` (a numeric string, as Lengow sometimes does) instead of
    /// a number.
    pub fn account_id_as_string(mut self, yes: bool) -> Self {
        self.account_id_as_string = yes;
        self
    }

    /// Binds 127.0.0.1 on an ephemeral port and starts serving on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// If 127.0.0.1:0 cannot be bound, or when called outside a tokio runtime.
    pub async fn start(self) -> FakeLengow {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("FakeLengow: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("FakeLengow: cannot read the bound address");
        let uri = format!("http://{addr}")
            .parse()
            .expect("a socket address makes a valid URI authority");
        let state = Arc::new(State {
            access_token: self.access_token,
            secret: self.secret,
            account_id: self.account_id,
            account_id_as_string: self.account_id_as_string,
            token_lifetime: Mutex::new(self.token_lifetime),
            token_delay: Mutex::new(self.token_delay),
            tokens: Mutex::new(HashMap::new()),
            failures: Mutex::new(VecDeque::new()),
            routes: Mutex::new(
                ROUTES
                    .iter()
                    .map(|path| route_key(path).to_owned())
                    .collect(),
            ),
            route_status: Mutex::new(HashMap::new()),
            by_request_id: Mutex::new(HashMap::new()),
            seen_authorizations: Mutex::new(VecDeque::new()),
            token_fetches: AtomicUsize::new(0),
            in_flight_fetches: AtomicUsize::new(0),
            max_in_flight_fetches: AtomicUsize::new(0),
            api_requests: AtomicUsize::new(0),
            requests_without_token: AtomicUsize::new(0),
            rejected_requests: AtomicUsize::new(0),
            forbidden_requests: AtomicUsize::new(0),
            not_found_requests: AtomicUsize::new(0),
            expired_tokens_used: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        FakeLengow {
            state,
            addr,
            uri,
            server,
        }
    }
}

impl fmt::Debug for FakeLengowBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeLengowBuilder")
            .field("credentials", &format_args!("** redacted **"))
            .field("account_id", &self.account_id)
            .field("token_lifetime", &self.token_lifetime)
            .field("token_delay", &self.token_delay)
            .field("account_id_as_string", &self.account_id_as_string)
            .finish()
    }
}

/// A scripted answer of the token endpoint, queued with [`FakeLengow::push_token_failure`].
///
/// A body that parses as JSON is sent as `application/json`, any other as `text/plain`.
#[derive(Debug, Clone)]
pub struct TokenFailure {
    /// The status to answer.
    pub status: StatusCode,
    /// The body to answer.
    pub body: String,
    /// A `Retry-After` value to send, verbatim (skipped if it is not a valid header value).
    pub retry_after: Option<String>,
    /// How long to wait (on tokio's clock) before answering, after the endpoint's own delay.
    pub delay: Duration,
    /// Announce 1000 bytes, send a few, then close the connection.
    reset_mid_body: bool,
}

impl TokenFailure {
    /// Answers `status` with `{"error": {"code": N, "message": "<reason>"}}`.
    pub fn status(status: StatusCode) -> Self {
        Self {
            status,
            body: error_json(status, status.canonical_reason().unwrap_or("Error")),
            retry_after: None,
            delay: Duration::ZERO,
            reset_mid_body: false,
        }
    }

    /// Answers 429 with `Retry-After: <retry_after_secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::status(StatusCode::TOO_MANY_REQUESTS).retry_after(retry_after_secs.to_string())
    }

    /// Answers this raw body instead (not JSON, huge, `{"detail": …}`, a token-less object…).
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends this `Retry-After` value, verbatim.
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Waits this long before answering; a very long delay simulates a hung auth service.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answers 200 with this (malformed) body.
    pub fn status_200(body: impl Into<String>) -> Self {
        Self::status(StatusCode::OK).body(body)
    }

    /// Answers 200 with `content-length: 1000`, sends a few bytes of a token, then closes the
    /// connection.
    pub fn reset_mid_body() -> Self {
        Self {
            reset_mid_body: true,
            ..Self::status_200(r#"{"token": "0f8fad5b-d9cb-469f-a165-70867728950e"}"#)
        }
    }
}

/// Everything the server tasks and the handle share.
struct State {
    access_token: String,
    secret: String,
    account_id: u64,
    account_id_as_string: bool,
    token_lifetime: Mutex<Duration>,
    token_delay: Mutex<Duration>,
    tokens: Mutex<HashMap<String, Issued>>,
    failures: Mutex<VecDeque<TokenFailure>>,
    /// Known API routes, as [`route_key`]s.
    routes: Mutex<HashSet<String>>,
    /// Statuses forced on routes, by [`route_key`].
    route_status: Mutex<HashMap<String, StatusCode>>,
    by_request_id: Mutex<HashMap<String, Seen>>,
    seen_authorizations: Mutex<VecDeque<String>>,
    token_fetches: AtomicUsize,
    in_flight_fetches: AtomicUsize,
    max_in_flight_fetches: AtomicUsize,
    api_requests: AtomicUsize,
    requests_without_token: AtomicUsize,
    rejected_requests: AtomicUsize,
    forbidden_requests: AtomicUsize,
    not_found_requests: AtomicUsize,
    expired_tokens_used: AtomicUsize,
}

/// A token the fake issued.
struct Issued {
    at: Instant,
    lifetime: Duration,
    revoked: bool,
}

/// What the fake saw of one `x-request-id`.
#[derive(Default)]
struct Seen {
    attempts: usize,
    bodies: Vec<Bytes>,
}

/// How an API request's token was judged.
enum Verdict {
    Valid,
    /// Missing, unknown, revoked or expired; holds the presented token, if any.
    Rejected(Option<String>),
}

impl State {
    fn issue_token(&self) -> String {
        let lifetime = *lock(&self.token_lifetime);
        let mut tokens = lock(&self.tokens);
        let mut token = uuid_v4();
        while tokens.contains_key(&token) {
            token = uuid_v4();
        }
        tokens.insert(
            token.clone(),
            Issued {
                at: Instant::now(),
                lifetime,
                revoked: false,
            },
        );
        token
    }

    /// Whether `path` is an API route: one of [`ROUTES`], added, or given a status.
    fn knows(&self, path: &str) -> bool {
        let key = route_key(path);
        lock(&self.routes).contains(key) || lock(&self.route_status).contains_key(key)
    }

    fn judge(&self, token: &str) -> Verdict {
        let now = Instant::now();
        let valid = match lock(&self.tokens).get(token) {
            None => false,
            Some(issued) => {
                let expired = now.saturating_duration_since(issued.at) >= issued.lifetime;
                if expired {
                    self.expired_tokens_used.fetch_add(1, Ordering::SeqCst);
                }
                !expired && !issued.revoked
            }
        };
        if valid {
            Verdict::Valid
        } else {
            Verdict::Rejected(Some(token.to_owned()))
        }
    }
}

/// Counts a `get_token` request as in flight until dropped.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let now = state.in_flight_fetches.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight_fetches.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight_fetches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test must not cascade into every other one).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The accept loop: one task per connection, all owned by a `JoinSet` that dies with this task.
async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::debug!(%error, "FakeLengow: accept failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::trace!(%error, "FakeLengow: cannot set TCP_NODELAY");
        }
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { handle(&state, request).await }
            });
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::trace!(%error, "FakeLengow: connection ended with an error");
            }
        });
    }
}

async fn handle(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, hyper::Error> {
    let path = request.uri().path();
    if path == TOKEN_PATH {
        Ok(token_endpoint(state, request).await)
    } else if state.knows(path) {
        api_route(state, request).await
    } else {
        not_found(state, request).await
    }
}

/// A path the fake does not know: 404 whatever the token, as Lengow answers.
async fn not_found(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, hyper::Error> {
    state.not_found_requests.fetch_add(1, Ordering::SeqCst);
    let message = if request.uri().path().starts_with("//") {
        // Not Lengow's words: the fake names the usual cause of such a path.
        "Not Found: the path starts with //, join the origin and the path with one slash"
    } else {
        "Not Found"
    };
    // The body is read first, so the connection stays usable for the next request.
    let (_, read) = read_body(request.into_body()).await;
    read?;
    Ok(error_response(StatusCode::NOT_FOUND, message))
}

/// The form a route is known by: its path without trailing slashes (`/v3.0/orders/actions/`
/// and `/v3.0/orders/actions` are one route).
fn route_key(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

/// `POST /access/get_token`.
async fn token_endpoint(state: &State, request: Request<Incoming>) -> Response<ResponseBody> {
    if request.method() != Method::POST {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    state.token_fetches.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(state);
    let (parts, body) = request.into_parts();
    let (body, read) = read_body(body).await;

    let delay = *lock(&state.token_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let failure = lock(&state.failures).pop_front();
    if let Some(failure) = failure {
        if !failure.delay.is_zero() {
            tokio::time::sleep(failure.delay).await;
        }
        return failure_response(failure);
    }

    if read.is_err() {
        return error_response(StatusCode::BAD_REQUEST, "Unreadable body");
    }
    if parts.headers.contains_key(AUTHORIZATION) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "No Authorization header is expected on get_token",
        );
    }
    if !is_form(&parts.headers) || !credentials_match(state, &body) {
        return error_response(StatusCode::UNAUTHORIZED, "Invalid credentials");
    }
    let token = state.issue_token();
    let account_id = if state.account_id_as_string {
        serde_json::Value::from(state.account_id.to_string())
    } else {
        serde_json::Value::from(state.account_id)
    };
    let body = serde_json::json!({ "token": token, "account_id": account_id, "user_id": USER_ID });
    json_response(StatusCode::OK, body.to_string())
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FORM_CONTENT_TYPE))
}

fn credentials_match(state: &State, form: &[u8]) -> bool {
    let mut access_token = None;
    let mut secret = None;
    for (name, value) in form_urlencoded::parse(form) {
        match &*name {
            "access_token" if access_token.is_none() => access_token = Some(value),
            "secret" if secret.is_none() => secret = Some(value),
            _ => {}
        }
    }
    access_token.is_some_and(|given| given == state.access_token.as_str())
        && secret.is_some_and(|given| given == state.secret.as_str())
}

fn failure_response(failure: TokenFailure) -> Response<ResponseBody> {
    let content_type = if serde_json::from_str::<serde_json::Value>(&failure.body).is_ok() {
        JSON_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    let body = Bytes::from(failure.body);
    let mut response = if failure.reset_mid_body {
        let sent = body.slice(..body.len().min(RESET_SENT_BYTES));
        Response::new(
            ResetMidBody {
                sent: Some(sent),
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(5))),
            }
            .boxed_unsync(),
        )
    } else {
        Response::new(full(body))
    };
    *response.status_mut() = failure.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(retry_after) = failure.retry_after {
        match HeaderValue::try_from(retry_after) {
            Ok(value) => {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            Err(error) => {
                tracing::debug!(%error, "FakeLengow: invalid scripted Retry-After, not sent")
            }
        }
    }
    response
}

/// A known path but the token endpoint.
async fn api_route(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, hyper::Error> {
    state.api_requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();

    let authorization = parts
        .headers
        .get(AUTHORIZATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match &authorization {
        None => {
            state.requests_without_token.fetch_add(1, Ordering::SeqCst);
        }
        Some(value) => {
            let mut seen = lock(&state.seen_authorizations);
            if seen.len() >= MAX_SEEN_AUTHORIZATIONS {
                seen.pop_front();
            }
            seen.push_back(value.clone());
        }
    }

    let request_id = parts
        .headers
        .get(REQUEST_ID)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    if let Some(id) = &request_id {
        lock(&state.by_request_id)
            .entry(id.clone())
            .or_default()
            .attempts += 1;
    }
    let (body, read) = read_body(body).await;
    if let Some(id) = request_id {
        lock(&state.by_request_id)
            .entry(id)
            .or_default()
            .bodies
            .push(body.clone());
    }
    // A body the client broke off: there is no one left to answer; close the connection.
    read?;

    let verdict = match authorization.as_deref() {
        None => Verdict::Rejected(None),
        Some(value) => state.judge(strip_bearer(value)),
    };

    let path = parts.uri.path();
    let forced = lock(&state.route_status).get(route_key(path)).copied();
    if let Some(status) = forced {
        if status == StatusCode::FORBIDDEN {
            state.forbidden_requests.fetch_add(1, Ordering::SeqCst);
        }
        return Ok(error_response(
            status,
            status.canonical_reason().unwrap_or("Error"),
        ));
    }

    match verdict {
        Verdict::Rejected(token) => {
            state.rejected_requests.fetch_add(1, Ordering::SeqCst);
            Ok(rejection(path, token.as_deref()))
        }
        Verdict::Valid if parts.method == Method::GET && route_key(path) == ORDERS_PATH => {
            Ok(json_response(
                StatusCode::OK,
                r#"{"count":0,"results":[],"next":null}"#.to_owned(),
            ))
        }
        Verdict::Valid => {
            let mut response = Response::new(full(body.clone()));
            if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, content_type.clone());
            }
            response
                .headers_mut()
                .insert(BODY_LEN, HeaderValue::from(body.len()));
            Ok(response)
        }
    }
}

/// The token, with an optional `Bearer ` prefix taken off.
fn strip_bearer(value: &str) -> &str {
    match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => &value[7..],
        _ => value,
    }
}

/// Lengow's answer to a bad token: 403 quoting the token on the order action routes, 401 elsewhere.
fn rejection(path: &str, token: Option<&str>) -> Response<ResponseBody> {
    if FORBIDDEN_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix))
    {
        let message = match token {
            Some(token) => format!("Token: {token} is expired"),
            None => "No token in headers, you must provide a token".to_owned(),
        };
        error_response(StatusCode::FORBIDDEN, &message)
    } else {
        error_response(StatusCode::UNAUTHORIZED, "Unauthorized access")
    }
}

/// Reads a whole body; on a broken body, what arrived before the break and the error.
async fn read_body(mut body: Incoming) -> (Bytes, Result<(), hyper::Error>) {
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return (buf.freeze(), Ok(())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(error)) => return (buf.freeze(), Err(error)),
        }
    }
}

/// Lengow's error shape: `{"error": {"code": N, "message": "…"}}`.
fn error_json(status: StatusCode, message: &str) -> String {
    serde_json::json!({ "error": { "code": status.as_u16(), "message": message } }).to_string()
}

fn error_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json_response(status, error_json(status, message))
}

fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    response
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A random version 4 UUID in its 8-4-4-4-12 lowercase hex form, like Lengow's tokens.
fn uuid_v4() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// The body of [`TokenFailure::reset_mid_body`]: announces 1000 bytes, sends a few, waits for
/// them to be flushed, then fails, which makes hyper drop the connection.
struct ResetMidBody {
    sent: Option<Bytes>,
    pause: Pin<Box<Sleep>>,
}

impl Body for ResetMidBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(sent) = self.sent.take() {
            return Poll::Ready(Some(Ok(Frame::data(sent))));
        }
        ready!(self.pause.as_mut().poll(cx));
        let reset = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "FakeLengow: scripted reset mid-body",
        );
        Poll::Ready(Some(Err(reset.into())))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(RESET_ANNOUNCED_LENGTH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    type TestClient = Client<HttpConnector, UnsyncBoxBody<Bytes, BoxError>>;

    fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn body(bytes: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, BoxError> {
        full(bytes.into())
    }

    async fn send(
        client: &TestClient,
        request: Request<UnsyncBoxBody<Bytes, BoxError>>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let response = client.request(request).await.expect("request failed");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body failed").to_bytes();
        (parts.status, parts.headers, bytes)
    }

    fn token_request(
        fake: &FakeLengow,
        access_token: &str,
        secret: &str,
    ) -> Request<UnsyncBoxBody<Bytes, BoxError>> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", access_token)
            .append_pair("secret", secret)
            .finish();
        Request::post(fake.url(TOKEN_PATH))
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(body(form))
            .unwrap()
    }

    async fn fetch_token(fake: &FakeLengow, client: &TestClient) -> String {
        let credentials = fake.credentials();
        let (status, _, bytes) = send(
            client,
            token_request(fake, credentials.access_token(), credentials.secret()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        json["token"].as_str().unwrap().to_owned()
    }

    fn api(
        fake: &FakeLengow,
        method: Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Request<UnsyncBoxBody<Bytes, BoxError>> {
        let mut builder = Request::builder().method(method).uri(fake.url(path));
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(body(Bytes::new())).unwrap()
    }

    fn is_uuid_v4(s: &str) -> bool {
        let groups: Vec<&str> = s.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            && s.as_bytes()[14] == b'4'
            && matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b')
    }

    #[tokio::test]
    async fn token_fetch_answers_lengow_shape() {
        let fake = FakeLengow::start().await;
        let client = client();
        let (status, headers, bytes) = send(
            &client,
            token_request(&fake, "fake-access-token", "fake-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], JSON_CONTENT_TYPE);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let token = json["token"].as_str().unwrap();
        assert!(is_uuid_v4(token), "{token}");
        assert_eq!(json["account_id"], serde_json::json!(12345));
        assert_eq!(json["user_id"], serde_json::json!(678));
        assert_eq!(fake.account_id(), 12345);
        assert_eq!(fake.token_fetches(), 1);
        assert_eq!(fake.max_concurrent_fetches(), 1);
        assert_eq!(fake.api_requests(), 0);

        let second = fetch_token(&fake, &client).await;
        assert_ne!(second, token);
        assert_eq!(fake.token_fetches(), 2);
    }

    #[tokio::test]
    async fn builder_sets_credentials_and_string_account_id() {
        let fake = FakeLengow::builder()
            .credentials("key", "s3cr3t")
            .account_id(7)
            .account_id_as_string(true)
            .start()
            .await;
        let client = client();
        assert_eq!(fake.credentials().access_token(), "key");
        assert_eq!(fake.credentials().secret(), "s3cr3t");
        let (status, _, bytes) = send(&client, token_request(&fake, "key", "s3cr3t")).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["account_id"], serde_json::json!("7"));
        let (status, _, _) = send(
            &client,
            token_request(&fake, "fake-access-token", "fake-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(fake.token_fetches(), 2);
    }

    #[tokio::test]
    async fn bad_token_requests_are_refused() {
        let fake = FakeLengow::start().await;
        let client = client();
        let invalid = r#"{"error":{"code":401,"message":"Invalid credentials"}}"#;

        let (status, headers, bytes) =
            send(&client, token_request(&fake, "fake-access-token", "wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[CONTENT_TYPE], JSON_CONTENT_TYPE);
        assert_eq!(bytes, invalid);

        let form = "access_token=fake-access-token&secret=fake-secret";
        let not_a_form = Request::post(fake.url(TOKEN_PATH))
            .header(CONTENT_TYPE, "application/json")
            .body(body(form))
            .unwrap();
        let (status, _, bytes) = send(&client, not_a_form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(bytes, invalid);

        let mut with_header = token_request(&fake, "fake-access-token", "fake-secret");
        with_header
            .headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("some-token"));
        let (status, _, _) = send(&client, with_header).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, headers, _) = send(&client, api(&fake, Method::GET, TOKEN_PATH, None)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[ALLOW], "POST");

        assert_eq!(fake.token_fetches(), 3);
        assert_eq!(fake.api_requests(), 0);
        assert!(lock(&fake.state.tokens).is_empty());
    }

    #[tokio::test]
    async fn revoked_tokens_get_401_or_403_quoting_the_token() {
        let fake = FakeLengow::start().await;
        let client = client();
        let token = fetch_token(&fake, &client).await;

        let (status, _, bytes) = send(
            &client,
            api(
                &fake,
                Method::GET,
                "/v3.0/orders?account_id=12345",
                Some(&token),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, r#"{"count":0,"results":[],"next":null}"#);

        fake.revoke_all_tokens();
        let (status, _, bytes) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            bytes,
            r#"{"error":{"code":401,"message":"Unauthorized access"}}"#
        );

        let (status, _, bytes) = send(
            &client,
            api(&fake, Method::POST, "/v3.0/orders/actions/", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            bytes,
            format!(r#"{{"error":{{"code":403,"message":"Token: {token} is expired"}}}}"#)
        );

        let fresh = fetch_token(&fake, &client).await;
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some(&fresh)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        assert_eq!(fake.token_fetches(), 2);
        assert_eq!(fake.api_requests(), 4);
        assert_eq!(fake.rejected_requests(), 2);
        assert_eq!(fake.expired_tokens_used(), 0);
        assert_eq!(fake.requests_without_token(), 0);
        assert_eq!(
            fake.seen_authorizations(),
            vec![token.clone(), token.clone(), token, fresh]
        );
    }

    #[tokio::test]
    async fn missing_and_unknown_tokens_are_rejected() {
        let fake = FakeLengow::start().await;
        let client = client();

        let (status, _, bytes) = send(&client, api(&fake, Method::GET, "/v3.0/orders", None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            bytes,
            r#"{"error":{"code":401,"message":"Unauthorized access"}}"#
        );

        let (status, _, bytes) =
            send(&client, api(&fake, Method::POST, "/v3.0/orders/moi/", None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            bytes,
            r#"{"error":{"code":403,"message":"No token in headers, you must provide a token"}}"#
        );

        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some("not-issued")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        assert_eq!(fake.api_requests(), 3);
        assert_eq!(fake.requests_without_token(), 2);
        assert_eq!(fake.rejected_requests(), 3);
        assert_eq!(fake.seen_authorizations(), vec!["not-issued".to_owned()]);
        assert_eq!(fake.token_fetches(), 0);
    }

    #[tokio::test]
    async fn bearer_is_accepted_and_recorded_as_sent() {
        let fake = FakeLengow::start().await;
        let client = client();
        let token = fetch_token(&fake, &client).await;
        let bearer = format!("Bearer {token}");
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some(&bearer)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fake.seen_authorizations(), vec![bearer, token]);
        assert_eq!(fake.rejected_requests(), 0);
    }

    #[tokio::test]
    async fn scripted_failures_answer_in_order_then_credentials_count_again() {
        let fake = FakeLengow::start().await;
        let client = client();
        fake.push_token_failure(TokenFailure::rate_limited(30));
        fake.push_token_failure(
            TokenFailure::status(StatusCode::from_u16(530).unwrap()).body("not json"),
        );
        fake.push_token_failure(TokenFailure::status_200(r#"{"account_id":1}"#));

        let (status, headers, bytes) = send(
            &client,
            token_request(&fake, "fake-access-token", "fake-secret"),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[RETRY_AFTER], "30");
        assert_eq!(
            bytes,
            r#"{"error":{"code":429,"message":"Too Many Requests"}}"#
        );

        let (status, headers, bytes) = send(
            &client,
            token_request(&fake, "fake-access-token", "fake-secret"),
        )
        .await;
        assert_eq!(status.as_u16(), 530);
        assert_eq!(headers[CONTENT_TYPE], TEXT_CONTENT_TYPE);
        assert_eq!(bytes, "not json");

        let (status, _, bytes) =
            send(&client, token_request(&fake, "fake-access-token", "wrong")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, r#"{"account_id":1}"#);

        fetch_token(&fake, &client).await;
        assert_eq!(fake.token_fetches(), 4);
        assert_eq!(lock(&fake.state.tokens).len(), 1);
    }

    #[tokio::test]
    async fn reset_mid_body_breaks_the_response() {
        let fake = FakeLengow::start().await;
        let client = client();
        fake.push_token_failure(TokenFailure::reset_mid_body());
        let response = client
            .request(token_request(&fake, "fake-access-token", "fake-secret"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[http::header::CONTENT_LENGTH], "1000");
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(fake.token_fetches(), 1);
        // The fake still serves after a reset.
        fetch_token(&fake, &client).await;
        assert_eq!(fake.token_fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_on_tokio_clock() {
        let fake = FakeLengow::start().await;
        let client = client();
        fake.set_token_lifetime(Duration::from_secs(10));
        let token = fetch_token(&fake, &client).await;

        tokio::time::advance(Duration::from_secs(9)).await;
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fake.expired_tokens_used(), 0);

        tokio::time::advance(Duration::from_secs(2)).await;
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = send(
            &client,
            api(&fake, Method::POST, "/v3.0/orders/actions/", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        assert_eq!(fake.expired_tokens_used(), 2);
        assert_eq!(fake.rejected_requests(), 2);
        assert_eq!(fake.api_requests(), 3);
        assert_eq!(fake.token_fetches(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn token_delay_overlaps_concurrent_fetches() {
        let fake = FakeLengow::builder()
            .token_delay(Duration::from_secs(5))
            .start()
            .await;
        let client = client();
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            fetch_token(&fake, &client),
            fetch_token(&fake, &client),
            fetch_token(&fake, &client),
        );
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(a != b && b != c && a != c);
        assert_eq!(fake.token_fetches(), 3);
        assert_eq!(fake.max_concurrent_fetches(), 3);

        fake.reset_counters();
        fake.set_token_delay(Duration::ZERO);
        fetch_token(&fake, &client).await;
        assert_eq!(fake.token_fetches(), 1);
        assert_eq!(fake.max_concurrent_fetches(), 1);
    }

    /// A body sent in chunks of unknown total length (so hyper uses chunked encoding).
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    #[tokio::test]
    async fn echoes_bodies_and_records_them_per_request_id() {
        let fake = FakeLengow::start().await;
        let client = client();
        let token = fetch_token(&fake, &client).await;

        for _ in 0..2 {
            let chunks = Chunks(VecDeque::from([
                Bytes::from_static(b"hello "),
                Bytes::from_static(b"chunked "),
                Bytes::from_static(b"world"),
            ]));
            let request = Request::post(fake.url("/v3.0/orders/moi/"))
                .header(AUTHORIZATION, token.as_str())
                .header(CONTENT_TYPE, "application/json")
                .header(REQUEST_ID, "req-1")
                .body(chunks.boxed_unsync())
                .unwrap();
            let (status, headers, bytes) = send(&client, request).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(headers[BODY_LEN], "19");
            assert_eq!(bytes, "hello chunked world");
        }
        assert_eq!(fake.attempts("req-1"), 2);
        assert_eq!(
            fake.bodies("req-1"),
            vec![Bytes::from("hello chunked world"); 2]
        );
        assert_eq!(fake.attempts("other"), 0);
        assert!(fake.bodies("other").is_empty());

        fake.reset_counters();
        assert_eq!(fake.attempts("req-1"), 0);
        assert_eq!(fake.api_requests(), 0);
        assert_eq!(fake.token_fetches(), 0);
        assert!(fake.seen_authorizations().is_empty());
    }

    #[tokio::test]
    async fn route_status_overrides_a_valid_token() {
        let fake = FakeLengow::start().await;
        let client = client();
        let token = fetch_token(&fake, &client).await;
        fake.set_route_status("/v3.0/always-401", StatusCode::UNAUTHORIZED);

        let mut request = api(&fake, Method::GET, "/v3.0/always-401", Some(&token));
        request
            .headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("r"));
        let (status, _, bytes) = send(&client, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(bytes, r#"{"error":{"code":401,"message":"Unauthorized"}}"#);
        assert_eq!(fake.attempts("r"), 1);
        assert_eq!(fake.api_requests(), 1);
        assert_eq!(fake.rejected_requests(), 0);

        let (status, _, _) = send(&client, api(&fake, Method::GET, "/v3.0/me", Some(&token))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fake.forbidden_requests(), 0);
    }

    #[tokio::test]
    async fn unknown_paths_answer_404_whatever_the_token() {
        let fake = FakeLengow::start().await;
        let client = client();
        let token = fetch_token(&fake, &client).await;
        let not_found = r#"{"error":{"code":404,"message":"Not Found"}}"#;

        for authorization in [Some(token.as_str()), None, Some("not-issued")] {
            let (status, headers, bytes) = send(
                &client,
                api(&fake, Method::GET, "/v3.0/other", authorization),
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(headers[CONTENT_TYPE], JSON_CONTENT_TYPE);
            assert_eq!(bytes, not_found);
        }
        // An origin joined to a path with one slash too many: the message says so.
        let request = Request::get(format!("{}/v3.0/orders", fake.uri()))
            .header(AUTHORIZATION, token.as_str())
            .body(body(Bytes::new()))
            .unwrap();
        assert_eq!(request.uri().path(), "//v3.0/orders");
        let (status, _, bytes) = send(&client, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&bytes).contains("starts with //"));
        // A body sent to an unknown path is read, and the connection serves the next request.
        let mut post = api(&fake, Method::POST, "/v3.0/nothing", Some(&token));
        *post.body_mut() = body("x".repeat(100_000));
        let (status, _, _) = send(&client, post).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/orders/", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(
            &client,
            api(&fake, Method::POST, "/v3.0/orders/actions", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        assert_eq!(fake.not_found_requests(), 5);
        assert_eq!(fake.api_requests(), 2);
        assert_eq!(fake.rejected_requests(), 0);
        assert_eq!(fake.requests_without_token(), 0);
        assert_eq!(fake.seen_authorizations(), vec![token.clone(), token]);
    }

    #[tokio::test]
    async fn every_listed_route_is_known_and_added_routes_too() {
        let fake = FakeLengow::start().await;
        let client = client();
        let token = fetch_token(&fake, &client).await;
        for path in ROUTES {
            let (status, _, _) = send(&client, api(&fake, Method::GET, path, Some(&token))).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/catalogs", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        fake.add_route("/v3.0/catalogs/");
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/catalogs", Some(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(&client, api(&fake, Method::GET, "/v3.0/catalogs", None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        assert_eq!(fake.api_requests(), ROUTES.len() + 2);
        assert_eq!(fake.not_found_requests(), 1);
        assert_eq!(fake.rejected_requests(), 1);
    }

    #[tokio::test]
    async fn a_forbidden_route_answers_403_to_every_token_and_counts_apart() {
        let fake = FakeLengow::start().await;
        let client = client();
        let stale = fetch_token(&fake, &client).await;
        fake.revoke_all_tokens();
        let fresh = fetch_token(&fake, &client).await;
        fake.set_forbidden_route("/v3.0/orders/moi/");
        let forbidden = r#"{"error":{"code":403,"message":"Forbidden"}}"#;

        for authorization in [Some(fresh.as_str()), Some(stale.as_str()), None] {
            let (status, _, bytes) = send(
                &client,
                api(&fake, Method::POST, "/v3.0/orders/moi", authorization),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(bytes, forbidden);
        }
        // A route unknown until forbidden is known while it is.
        fake.set_forbidden_route("/v3.0/reports");
        let (status, _, bytes) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/reports", Some(&fresh)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(bytes, forbidden);
        // Other routes still judge the token.
        let (status, _, _) = send(
            &client,
            api(&fake, Method::POST, "/v3.0/orders/actions/", Some(&stale)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        assert_eq!(fake.forbidden_requests(), 4);
        assert_eq!(fake.rejected_requests(), 1);
        assert_eq!(fake.api_requests(), 5);

        fake.clear_route_status("/v3.0/orders/moi/");
        fake.clear_route_status("/v3.0/reports");
        let (status, _, _) = send(
            &client,
            api(&fake, Method::POST, "/v3.0/orders/moi/", Some(&fresh)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(
            &client,
            api(&fake, Method::GET, "/v3.0/reports", Some(&fresh)),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(fake.forbidden_requests(), 4);

        fake.reset_counters();
        assert_eq!(fake.forbidden_requests(), 0);
        assert_eq!(fake.not_found_requests(), 0);
    }

    #[tokio::test]
    async fn url_joins_with_one_slash() {
        let fake = FakeLengow::start().await;
        let origin = format!("http://{}", fake.addr());
        assert_eq!(fake.uri().to_string(), format!("{origin}/"));
        assert_eq!(fake.url("/v3.0/orders"), format!("{origin}/v3.0/orders"));
        assert_eq!(
            fake.url("v3.0/orders?a=1"),
            format!("{origin}/v3.0/orders?a=1")
        );
        assert_eq!(fake.url(""), format!("{origin}/"));
        let parsed: Uri = fake.url("/v3.0/me").parse().unwrap();
        assert_eq!(parsed.path(), "/v3.0/me");
        assert_eq!(parsed.authority(), fake.uri().authority());
    }

    #[tokio::test]
    async fn debug_shows_counters_not_secrets() {
        let fake = FakeLengow::builder()
            .credentials("visible-key", "hidden-secret")
            .start()
            .await;
        let client = client();
        let token = fetch_token(&fake, &client).await;
        let debug = format!("{fake:?}");
        assert!(debug.contains("token_fetches: 1"), "{debug}");
        assert!(debug.contains(&fake.addr().to_string()), "{debug}");
        assert!(
            !debug.contains(&token)
                && !debug.contains("hidden-secret")
                && !debug.contains("visible-key")
        );
        let builder = format!(
            "{:?}",
            FakeLengow::builder().credentials("visible-key", "hidden-secret")
        );
        assert!(
            !builder.contains("hidden-secret") && !builder.contains("visible-key"),
            "{builder}"
        );
    }

    #[tokio::test]
    async fn drop_stops_the_server() {
        let fake = FakeLengow::start().await;
        let addr = fake.addr();
        drop(fake);
        tokio::task::yield_now().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

/// A wall clock that moves only when told: inject it with
/// [`LengowAuthBuilder::wall_clock`](crate::LengowAuthBuilder::wall_clock) to play a machine
/// that slept through a token's expiry (tokio's clock stands still while a machine sleeps).
///
/// ```
/// use std::time::Duration;
/// use lengow_auth::testing::ManualClock;
/// use lengow_auth::WallClock;
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(7200));
/// assert_eq!(clock.now().duration_since(before).unwrap(), Duration::from_secs(7200));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<std::time::SystemTime>>,
}

impl ManualClock {
    /// A clock standing at the system's current time.
    pub fn new() -> Self {
        Self {
            now: Arc::new(Mutex::new(std::time::SystemTime::now())),
        }
    }

    /// Moves the clock forward (every clone sees it).
    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.now);
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::WallClock for ManualClock {
    fn now(&self) -> std::time::SystemTime {
        *lock(&self.now)
    }
}
