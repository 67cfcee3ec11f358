//! [`LengowAuthLayer`] and its builder: the settings, their defaults, and the shared token
//! cache every service the layer wraps draws from.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error};
use crate::rejection::Routes;
use crate::service::LengowAuth;
use crate::shared::{Handle, Origin, Shared};
use crate::stats::Stats;
use crate::token::{Cache, CacheConfig, Clock, Credentials, Fetcher, Redacted, WallClock};
#[cfg(feature = "redis")]
use crate::token::{Fleet, FleetConfig};

/// Lengow's production API origin.
pub const DEFAULT_API_URL: &str = "https://api.lengow.io";
/// Lengow documents a one-hour token; the answer carries no expiry.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Refresh 10 minutes early: Lengow's own connectors reuse a token for 3000 s of its 3600.
pub const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(600);
/// Bodies up to 64 KiB are kept to be replayed: orders actions and MOI bodies are far smaller.
pub const DEFAULT_REPLAY_BODY_LIMIT: usize = 64 * 1024;
/// At least 10 s between two refreshes forced by rejections, so a route that always answers
/// 403 cannot hammer the auth service.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Lengow's connectors give a call 10 s to connect and 10–20 s to answer.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// After refused credentials, no token is requested for a minute: retrying them only brings
/// the IP closer to a ban.
pub const DEFAULT_INVALID_CREDENTIALS_COOLDOWN: Duration = Duration::from_secs(60);

/// A tower [`Layer`] that authenticates every request to the Lengow API.
///
/// Every service it wraps, and every clone of it, shares one token cache: one `get_token` at
/// a time, one token reused for its life, refreshed in the background ahead of expiry.
/// Build it with [`LengowAuthLayer::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use lengow_auth::{Credentials, LengowAuthLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let layer = LengowAuthLayer::builder(Credentials::from_env()?)
///     .build(Client::builder(TokioExecutor::new()).build_http())?; // the client for get_token
/// let client = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service(Client::builder(TokioExecutor::new()).build_http());
///
/// let account_id = layer.account_id().await?;
/// let uri = format!("https://api.lengow.io/v3.0/orders?account_id={account_id}");
/// let response = client.oneshot(http::Request::get(uri).body(Empty::<Bytes>::new())?).await?;
/// # let _ = response;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LengowAuthLayer {
    handle: Arc<Handle>,
}

impl LengowAuthLayer {
    /// Starts building a layer for these credentials, with the defaults of this crate's
    /// `DEFAULT_*` constants.
    pub fn builder(credentials: Credentials) -> LengowAuthBuilder {
        LengowAuthBuilder {
            credentials,
            api_url: Uri::from_static(DEFAULT_API_URL),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            refresh_ahead: DEFAULT_REFRESH_AHEAD,
            replay_body_limit: DEFAULT_REPLAY_BODY_LIMIT,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            invalid_credentials_cooldown: DEFAULT_INVALID_CREDENTIALS_COOLDOWN,
            refresh_on: vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
            bearer: false,
            wall_clock: Clock::default(),
            #[cfg(feature = "redis")]
            store: None,
        }
    }

    /// The Lengow account id of the current token, fetching a token if none is held.
    pub async fn account_id(&self) -> Result<u64, Error> {
        self.handle.0.cache.account_id().await
    }

    /// The API origin the layer was built for: tokens are fetched from it and sent only to
    /// it, and path-only request URIs are resolved against it.
    pub fn api_url(&self) -> &Uri {
        &self.handle.0.api_url
    }

    /// What the layer has done so far: fetches, refreshes, replays.
    pub fn stats(&self) -> Stats {
        self.handle.0.cache.counters.snapshot()
    }
}

impl<S> Layer<S> for LengowAuthLayer {
    type Service = LengowAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LengowAuth::new(inner, Arc::clone(&self.handle))
    }
}

impl fmt::Debug for LengowAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LengowAuthLayer")
            .field("api_url", self.api_url())
            .field("token", &Redacted)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a [`LengowAuthLayer`]; see [`LengowAuthLayer::builder`].
pub struct LengowAuthBuilder {
    credentials: Credentials,
    api_url: Uri,
    token_lifetime: Duration,
    refresh_ahead: Duration,
    replay_body_limit: usize,
    min_refresh_interval: Duration,
    fetch_timeout: Duration,
    invalid_credentials_cooldown: Duration,
    refresh_on: Vec<StatusCode>,
    bearer: bool,
    wall_clock: Clock,
    #[cfg(feature = "redis")]
    store: Option<Arc<dyn crate::store::TokenStore>>,
}

impl LengowAuthBuilder {
    /// The API origin tokens are fetched from and sent to (default [`DEFAULT_API_URL`];
    /// pre-production is `https://api.lengow.net`). A path is kept as a prefix of
    /// `/access/get_token`.
    pub fn api_url(mut self, api_url: Uri) -> Self {
        self.api_url = api_url;
        self
    }

    /// How long a token is assumed to live (default [`DEFAULT_TOKEN_LIFETIME`]).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// How long before the assumed expiry the background refresh starts (default
    /// [`DEFAULT_REFRESH_AHEAD`]).
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }

    /// The most body bytes kept to replay a rejected request (default
    /// [`DEFAULT_REPLAY_BODY_LIMIT`]); larger bodies stream through and are not replayed.
    pub fn replay_body_limit(mut self, limit: usize) -> Self {
        self.replay_body_limit = limit;
        self
    }

    /// The floor between two refreshes forced by rejections (default
    /// [`DEFAULT_MIN_REFRESH_INTERVAL`]); it doubles, up to the token lifetime, while forced
    /// tokens are accepted by no request (then the fault is not the token).
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// The deadline of one `get_token` call (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// How long no token is requested after the credentials were refused (default
    /// [`DEFAULT_INVALID_CREDENTIALS_COOLDOWN`]).
    pub fn invalid_credentials_cooldown(mut self, cooldown: Duration) -> Self {
        self.invalid_credentials_cooldown = cooldown;
        self
    }

    /// The API statuses that mean "token rejected": refresh once and replay (default 401
    /// and 403, as Lengow's connectors do). Error statuses only (400 to 599): `build` refuses
    /// any other; an empty set turns replays off.
    pub fn refresh_on(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.refresh_on = statuses.into_iter().collect();
        self
    }

    /// Send `Authorization: Bearer <token>` instead of Lengow's raw token (default off).
    pub fn bearer(mut self, bearer: bool) -> Self {
        self.bearer = bearer;
        self
    }

    /// The wall clock expiry is also judged by (default [`SystemClock`](crate::SystemClock)).
    pub fn wall_clock(mut self, clock: impl WallClock) -> Self {
        self.wall_clock = Clock::new(clock);
        self
    }

    /// Shares one token with every process that uses the same store and credentials (a
    /// [`RedisStore`](crate::store::RedisStore) for a fleet): one `get_token` at a time for
    /// all of them, failures and backoff obeyed by all. Requests still read the token from
    /// this process's memory; the store is asked only when a token is needed or due.
    /// Without a store (the default), the layer is on its own.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn store(mut self, store: impl crate::store::TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Builds the layer; `token_client` is used only for `POST /access/get_token`.
    ///
    /// Fails if the `api_url` is not https (plain http is allowed only on loopback) or has
    /// no host, or if the durations do not fit together.
    pub fn build<C, B>(self, token_client: C) -> Result<LengowAuthLayer, Error>
    where
        C: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let origin = Origin::parse(&self.api_url)?;
        // Longer than a day is a unit mistake, not a Lengow token (which lives an hour).
        let day = Duration::from_secs(24 * 3600);
        for (name, value) in [
            ("token_lifetime", self.token_lifetime),
            ("fetch_timeout", self.fetch_timeout),
            ("min_refresh_interval", self.min_refresh_interval),
            (
                "invalid_credentials_cooldown",
                self.invalid_credentials_cooldown,
            ),
        ] {
            if value.is_zero() && name != "min_refresh_interval" {
                return Err(Error::config(format!("{name} must be more than zero")));
            }
            if value > day {
                return Err(Error::config(format!(
                    "{name} ({value:?}) must be at most a day"
                )));
            }
        }
        if self.refresh_ahead >= self.token_lifetime {
            return Err(Error::config(format!(
                "refresh_ahead ({:?}) must be shorter than token_lifetime ({:?})",
                self.refresh_ahead, self.token_lifetime
            )));
        }
        if self.credentials.access_token.is_empty() || self.credentials.secret.is_empty() {
            return Err(Error::config(
                "the access token and the secret must not be empty",
            ));
        }
        if let Some(status) = self
            .refresh_on
            .iter()
            .find(|s| !s.is_client_error() && !s.is_server_error())
        {
            return Err(Error::config(format!(
                "refresh_on takes error statuses (400 to 599), not {}",
                status.as_u16()
            )));
        }
        let endpoint = token_endpoint(&self.api_url)?;
        #[cfg(feature = "redis")]
        let fleet = self.store.map(|store| {
            let config = FleetConfig {
                lifetime: self.token_lifetime,
                refresh_ahead: self.refresh_ahead,
                fetch_timeout: self.fetch_timeout,
            };
            let origin = endpoint.to_string();
            Arc::new(Fleet::new(store, &self.credentials, &origin, config))
        });
        let fetcher = Fetcher::new(token_client, endpoint, self.credentials, self.fetch_timeout);
        let cache = Cache::new(
            CacheConfig {
                lifetime: self.token_lifetime,
                refresh_ahead: self.refresh_ahead,
                min_refresh_interval: self.min_refresh_interval,
                invalid_credentials_cooldown: self.invalid_credentials_cooldown,
                bearer: self.bearer,
                clock: self.wall_clock,
                #[cfg(feature = "redis")]
                fleet,
            },
            fetcher,
        );
        let shared = Shared {
            cache: Arc::new(cache),
            api_url: self.api_url,
            origin,
            refresh_on: self.refresh_on,
            replay_body_limit: self.replay_body_limit,
            routes: Routes::new(self.token_lifetime),
        };
        Ok(LengowAuthLayer {
            handle: Arc::new(Handle(Arc::new(shared))),
        })
    }
}

/// `{api_url}/access/get_token`, keeping any path prefix of the api url.
fn token_endpoint(api_url: &Uri) -> Result<Uri, Error> {
    let prefix = api_url.path().trim_end_matches('/');
    let path = format!("{prefix}/access/get_token");
    let mut parts = api_url.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(path)
            .map_err(|e| Error::config(format!("api_url `{api_url}` has a bad path: {e}")))?,
    );
    Uri::from_parts(parts).map_err(|e| Error::config(format!("api_url `{api_url}`: {e}")))
}

impl fmt::Debug for LengowAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LengowAuthBuilder")
            .field("credentials", &self.credentials)
            .field("api_url", &self.api_url)
            .field("token_lifetime", &self.token_lifetime)
            .field("refresh_ahead", &self.refresh_ahead)
            .field("replay_body_limit", &self.replay_body_limit)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("refresh_on", &self.refresh_on)
            .field("bearer", &self.bearer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_out_of_range_are_build_errors() {
        let client = tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
        });
        let builder = || LengowAuthLayer::builder(Credentials::new("a", "s"));
        let day = Duration::from_secs(24 * 3600);
        for (builder, named) in [
            (builder().token_lifetime(Duration::ZERO), "token_lifetime"),
            (builder().token_lifetime(day * 2), "token_lifetime"),
            (builder().fetch_timeout(Duration::ZERO), "fetch_timeout"),
            (
                builder().min_refresh_interval(Duration::MAX),
                "min_refresh_interval",
            ),
            (
                builder().invalid_credentials_cooldown(day + Duration::from_secs(1)),
                "invalid_credentials_cooldown",
            ),
            (
                builder().refresh_ahead(Duration::from_secs(3600)),
                "refresh_ahead",
            ),
        ] {
            let e = builder.build(client).unwrap_err();
            assert!(e.is_config() && e.to_string().contains(named), "{e}");
        }
        assert!(
            builder()
                .min_refresh_interval(Duration::ZERO)
                .build(client)
                .is_ok()
        );
    }

    #[test]
    fn token_endpoint_keeps_the_prefix() {
        let e = token_endpoint(&Uri::from_static("https://api.lengow.io")).unwrap();
        assert_eq!(e, "https://api.lengow.io/access/get_token");
        let e = token_endpoint(&Uri::from_static("http://127.0.0.1:9/proxy/")).unwrap();
        assert_eq!(e, "http://127.0.0.1:9/proxy/access/get_token");
    }
}
