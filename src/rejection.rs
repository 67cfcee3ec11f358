//! Rejections the layer hands back to the caller: [`TokenRejected`], the mark that says why
//! no (further) replay was made, and the routes known to reject even a fresh token.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{Method, Uri};
use tokio::time::Instant;

/// The response extension on a rejection (a `refresh_on` status, 401 or 403 by default) that
/// the layer returns to the caller: it says why the request was not sent again.
///
/// ```
/// # fn check<B>(response: &http::Response<B>) {
/// use lengow_auth::TokenRejected;
///
/// if let Some(rejected) = response.extensions().get::<TokenRejected>() {
///     eprintln!("lengow rejected the request: {rejected}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRejected {
    why: Why,
}

/// Why a rejection was returned as it is; `Display` says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    ReplayRejected,
    Floor,
    NoToken,
    BodyNotKept,
    KnownRoute,
}

impl TokenRejected {
    pub(crate) fn new(why: Why) -> Self {
        Self { why }
    }

    /// The request was sent again with a newer token, and that was rejected too.
    pub fn replayed(&self) -> bool {
        self.why == Why::ReplayRejected
    }

    /// The route is known to reject fresh tokens (a route the account has no right to):
    /// nothing was refreshed and the request was not sent again.
    pub fn known_route(&self) -> bool {
        self.why == Why::KnownRoute
    }
}

impl fmt::Display for TokenRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.why {
            Why::ReplayRejected => "the replay with a newer token was rejected too",
            Why::Floor => {
                "not replayed: no newer token, the last forced refresh is too recent (min_refresh_interval)"
            }
            Why::NoToken => "not replayed: no newer token could be fetched",
            Why::BodyNotKept => {
                "not replayed: the body was over replay_body_limit or could not be kept"
            }
            Why::KnownRoute => {
                "not replayed: this route rejected a fresh token before, so the token is not the cause"
            }
        })
    }
}

/// The most routes remembered; the one remembered longest ago makes room for a new one.
const MAX_ROUTES: usize = 64;

/// Routes (method and path) that rejected a freshly fetched token, each until it accepts a
/// token again or a token lifetime has passed: their rejections force no refresh.
pub(crate) struct Routes {
    known: Mutex<HashMap<(Method, String), Instant>>,
    /// Whether `known` is not empty, so that an accepted request looks no further when no
    /// route is remembered (nearly always).
    any: AtomicBool,
    memory: Duration,
}

impl Routes {
    pub(crate) fn new(memory: Duration) -> Self {
        Self {
            known: Mutex::default(),
            any: AtomicBool::new(false),
            memory,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(Method, String), Instant>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the route of `method` and `uri` is remembered as rejecting fresh tokens.
    /// Routes whose memory has run out are forgotten on the way.
    pub(crate) fn rejects(&self, method: &Method, uri: &Uri) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let mut known = self.lock();
        let now = Instant::now();
        known.retain(|_, until| now < *until);
        self.any.store(!known.is_empty(), Ordering::Relaxed);
        known.contains_key(&(method.clone(), uri.path().to_owned()))
    }

    /// Remembers that the route rejected a fresh token.
    pub(crate) fn learn(&self, method: &Method, uri: &Uri) {
        let mut known = self.lock();
        if known.len() >= MAX_ROUTES {
            let oldest = known.iter().min_by_key(|(_, until)| **until);
            if let Some(oldest) = oldest.map(|(key, _)| key.clone()) {
                known.remove(&oldest);
            }
        }
        tracing::debug!(
            method = %method,
            path = uri.path(),
            "route rejected a fresh token: its rejections force no refresh for a token lifetime"
        );
        known.insert(
            (method.clone(), uri.path().to_owned()),
            Instant::now() + self.memory,
        );
        self.any.store(true, Ordering::Relaxed);
    }

    /// Forgets the route: it accepted a token.
    pub(crate) fn accepted(&self, method: &Method, uri: &Uri) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut known = self.lock();
        known.remove(&(method.clone(), uri.path().to_owned()));
        self.any.store(!known.is_empty(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn routes_are_forgotten_on_acceptance_or_after_their_memory() {
        let routes = Routes::new(Duration::from_secs(60));
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert!(!routes.rejects(&Method::GET, &uri("/v3.0/x")));
        routes.learn(&Method::GET, &uri("/v3.0/x?a=1"));
        assert!(routes.rejects(&Method::GET, &uri("/v3.0/x?b=2")));
        assert!(!routes.rejects(&Method::POST, &uri("/v3.0/x")));
        routes.accepted(&Method::GET, &uri("/v3.0/x"));
        assert!(!routes.rejects(&Method::GET, &uri("/v3.0/x")));
        routes.learn(&Method::GET, &uri("/v3.0/x"));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!routes.rejects(&Method::GET, &uri("/v3.0/x")));
        assert!(!routes.any.load(Ordering::Relaxed));
        // A lookup forgets every route whose memory ran out, not only the one asked about.
        routes.learn(&Method::GET, &uri("/v3.0/a"));
        tokio::time::advance(Duration::from_secs(61)).await;
        routes.learn(&Method::GET, &uri("/v3.0/b"));
        assert!(routes.rejects(&Method::GET, &uri("/v3.0/b")));
        assert_eq!(routes.lock().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let routes = Routes::new(Duration::from_secs(60));
        for i in 0..MAX_ROUTES + 10 {
            routes.learn(&Method::GET, &format!("/r/{i}").parse().unwrap());
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(routes.lock().len(), MAX_ROUTES);
        assert!(!routes.rejects(&Method::GET, &"/r/0".parse().unwrap()));
        let last = format!("/r/{}", MAX_ROUTES + 9).parse().unwrap();
        assert!(routes.rejects(&Method::GET, &last));
    }
}
