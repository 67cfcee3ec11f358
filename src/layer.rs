//! [`LengowAuthLayer`] and its builder: the settings, their defaults, and the shared token
//! cache every service the layer wraps draws from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error};
use crate::service::LengowAuth;
use crate::stats::Stats;
use crate::token::{Cache, CacheConfig, Clock, Credentials, Fetcher, Redacted, WallClock};

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
    pub(crate) shared: Arc<Shared>,
}

/// What the layer and its services hold. Its drop (the last handle's) stops the refresher.
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
}

/// The token cache and the settings requests need.
pub(crate) struct Core {
    pub(crate) cache: Arc<Cache>,
    pub(crate) origin: Origin,
    pub(crate) refresh_on: Statuses,
    pub(crate) replay_body_limit: usize,
    /// Names the layer in per-thread token copies and in the registry.
    pub(crate) id: u64,
}

/// Every live layer's core by id. A response future holds the id, not a reference count
/// that every request would write; it looks the core up only on its rare paths (a
/// rejection, a forced token's first acceptance).
static REGISTRY: Mutex<BTreeMap<u64, Weak<Core>>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<u64, Weak<Core>>> {
    // Every update is one insert or remove: a panic elsewhere leaves the map whole.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The core of layer `id`, while a handle to the layer is alive.
pub(crate) fn core(id: u64) -> Option<Arc<Core>> {
    registry().get(&id).and_then(Weak::upgrade)
}

impl Drop for Shared {
    fn drop(&mut self) {
        registry().remove(&self.core.id);
        self.core.cache.shutdown();
    }
}

impl Shared {
    fn new(core: Core) -> Self {
        let core = Arc::new(core);
        registry().insert(core.id, Arc::downgrade(&core));
        Self { core }
    }
}

impl std::ops::Deref for Shared {
    type Target = Core;

    #[inline]
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// A set of error statuses (400 to 599), one bit each: what a response future keeps of
/// `refresh_on`, by value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Statuses([u64; 4]);

impl Statuses {
    const FIRST: u16 = 400;
    const LAST: u16 = 599;

    fn new(statuses: &[StatusCode]) -> Result<Self, Error> {
        let mut set = Self::default();
        for status in statuses {
            let code = status.as_u16();
            if !(Self::FIRST..=Self::LAST).contains(&code) {
                return Err(Error::config(format!(
                    "refresh_on takes error statuses (400 to 599), not {code}"
                )));
            }
            let bit = usize::from(code - Self::FIRST);
            set.0[bit / 64] |= 1 << (bit % 64);
        }
        Ok(set)
    }

    #[inline]
    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        let bit = usize::from(status.as_u16().wrapping_sub(Self::FIRST));
        bit <= usize::from(Self::LAST - Self::FIRST) && self.0[bit / 64] & (1 << (bit % 64)) != 0
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The scheme, host and port tokens may be sent to.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// The authority as a request usually spells it: `host` and `host:port` when the port is
    /// the scheme's default, else `host:port` and an empty string, which no authority is.
    spellings: [String; 2],
}

impl Origin {
    fn parse(uri: &Uri) -> Result<Self, Error> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::config(format!(
                    "api_url `{uri}` must start with https:// (or http:// on loopback)"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::config(format!("api_url `{uri}` has no host")))?
            .to_ascii_lowercase();
        if !https && !is_loopback(&host) {
            return Err(Error::config(format!(
                "api_url `{uri}` would send the credentials in clear text: use https:// (http:// is allowed only on loopback)"
            )));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let default_port = port == if https { 443 } else { 80 };
        let with_port = format!("{host}:{port}");
        let spellings = if default_port {
            [host.clone(), with_port]
        } else {
            [with_port, String::new()]
        };
        Ok(Self {
            https,
            host,
            port,
            spellings,
        })
    }

    /// Whether `uri` points at this origin. A path-only URI does.
    #[inline(always)]
    pub(crate) fn matches(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return true;
        };
        // The usual spellings compare as bytes; anything else (another case, a default port
        // spelled out differently) is parsed.
        let authority = authority.as_str().as_bytes();
        if self
            .spellings
            .iter()
            .any(|s| same_bytes(s.as_bytes(), authority))
        {
            return match uri.scheme_str() {
                Some("https") => self.https,
                Some("http") => !self.https,
                Some(_) => false,
                None => true,
            };
        }
        self.matches_parsed(uri)
    }

    #[cold]
    fn matches_parsed(&self, uri: &Uri) -> bool {
        let Some(host) = uri.host() else {
            return true;
        };
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            Some(_) => return false,
            None => self.https,
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        https == self.https && port == self.port && host.eq_ignore_ascii_case(&self.host)
    }
}

/// Byte equality, with an authority's usual 8 to 16 bytes compared as two words.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if !(8..=16).contains(&n) {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
            wall_clock: Clock::System,
        }
    }

    /// The Lengow account id of the current token, fetching a token if none is held.
    pub async fn account_id(&self) -> Result<u64, Error> {
        self.shared.cache.account_id().await
    }

    /// What the layer has done so far: fetches, refreshes, replays.
    pub fn stats(&self) -> Stats {
        self.shared.cache.counters.snapshot()
    }
}

impl<S> Layer<S> for LengowAuthLayer {
    type Service = LengowAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LengowAuth::new(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for LengowAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LengowAuthLayer")
            .field("origin", &self.shared.origin)
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
    /// [`DEFAULT_MIN_REFRESH_INTERVAL`]); it doubles, up to the token lifetime, each time a
    /// fresh token is rejected at once.
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
        self.wall_clock = Clock::Custom(Arc::new(clock));
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
        if self.token_lifetime.is_zero() {
            return Err(Error::config("token_lifetime must be more than zero"));
        }
        if self.refresh_ahead >= self.token_lifetime {
            return Err(Error::config(format!(
                "refresh_ahead ({:?}) must be shorter than token_lifetime ({:?})",
                self.refresh_ahead, self.token_lifetime
            )));
        }
        if self.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout must be more than zero"));
        }
        if self.credentials.access_token.is_empty() || self.credentials.secret.is_empty() {
            return Err(Error::config(
                "the access token and the secret must not be empty",
            ));
        }
        let refresh_on = Statuses::new(&self.refresh_on)?;
        let endpoint = token_endpoint(&self.api_url)?;
        let fetcher = Fetcher::new(token_client, endpoint, self.credentials, self.fetch_timeout);
        let cache = Cache::new(
            CacheConfig {
                lifetime: self.token_lifetime,
                refresh_ahead: self.refresh_ahead,
                min_refresh_interval: self.min_refresh_interval,
                invalid_credentials_cooldown: self.invalid_credentials_cooldown,
                bearer: self.bearer,
                clock: self.wall_clock,
            },
            fetcher,
        );
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(LengowAuthLayer {
            shared: Arc::new(Shared::new(Core {
                cache: Arc::new(cache),
                origin,
                refresh_on,
                replay_body_limit: self.replay_body_limit,
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            })),
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
    fn statuses_hold_error_statuses_only() {
        let set = Statuses::new(&[StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]).unwrap();
        assert!(set.contains(StatusCode::UNAUTHORIZED) && set.contains(StatusCode::FORBIDDEN));
        for other in [200, 399, 400, 402, 404, 500, 599, 600, 999] {
            assert!(
                !set.contains(StatusCode::from_u16(other).unwrap()),
                "{other}"
            );
        }
        let edges = [400, 463, 464, 527, 528, 599].map(|c| StatusCode::from_u16(c).unwrap());
        let set = Statuses::new(&edges).unwrap();
        for code in 100..1000 {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(set.contains(status), edges.contains(&status), "{code}");
        }
        assert!(Statuses::new(&[]).unwrap().is_empty() && !set.is_empty());
        for refused in [200, 302, 399, 600] {
            let e = Statuses::new(&[StatusCode::from_u16(refused).unwrap()]).unwrap_err();
            assert!(
                e.is_config() && e.to_string().contains(&refused.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn origin_matching() {
        let origin = Origin::parse(&Uri::from_static("https://api.lengow.io")).unwrap();
        for yes in [
            "/v3.0/orders",
            "https://api.lengow.io/v3.0/orders",
            "https://API.lengow.io:443/x",
        ] {
            assert!(origin.matches(&yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "http://api.lengow.io/v3.0/orders",
            "https://api.lengow.io:8443/x",
            "https://evil.example/x",
            "https://api.lengow.io.evil.example/x",
        ] {
            assert!(!origin.matches(&no.parse().unwrap()), "{no}");
        }
        // Authorities of every length the byte comparison treats apart: under 8, 8 to 16
        // (two words), over 16; a difference at each end and in the middle.
        for (api, yes, no) in [
            ("https://a.io", "https://a.io/x", "https://b.io/x"),
            (
                "https://api.lengow.io",
                "https://api.lengow.io/",
                "https://api.lenXow.io/",
            ),
            (
                "http://127.0.0.1:1",
                "http://127.0.0.1:1/",
                "http://127.0.0.2:1/",
            ),
            (
                "http://127.0.0.1:40123",
                "http://127.0.0.1:40123/",
                "http://127.0.0.1:40124/",
            ),
            (
                "https://api.lengow.io:8443",
                "https://api.lengow.io:8443/",
                "https://xpi.lengow.io:8443/",
            ),
            (
                "http://localhost:8080",
                "http://LOCALHOST:8080/",
                "http://localhost:8081/",
            ),
        ] {
            let origin = Origin::parse(&api.parse().unwrap()).unwrap();
            assert!(origin.matches(&yes.parse().unwrap()), "{api} {yes}");
            assert!(!origin.matches(&no.parse().unwrap()), "{api} {no}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:1",
            "https://x.example",
        ] {
            assert!(Origin::parse(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.lengow.io",
            "http://10.0.0.1",
            "ftp://x",
            "/path",
        ] {
            let e = Origin::parse(&bad.parse().unwrap()).unwrap_err();
            assert!(e.is_config(), "{bad}");
        }
    }

    #[test]
    fn token_endpoint_keeps_the_prefix() {
        let e = token_endpoint(&Uri::from_static("https://api.lengow.io")).unwrap();
        assert_eq!(e, "https://api.lengow.io/access/get_token");
        let e = token_endpoint(&Uri::from_static("http://127.0.0.1:9/proxy/")).unwrap();
        assert_eq!(e, "http://127.0.0.1:9/proxy/access/get_token");
    }
}
