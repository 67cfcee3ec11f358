//! The crate's one error type, [`Error`], and its kinds.
//! Every kind says what happened and what to do; server messages are kept, with secrets scrubbed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// A boxed error, as tower uses.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a token could not be had, or why the layer could not be built.
///
/// The kind is read with the `is_*` predicates. The error is cheap to clone: every request
/// that waited on one failed token fetch gets the same error.
///
/// ```
/// # async fn run(layer: lengow_auth::LengowAuthLayer) {
/// match layer.account_id().await {
///     Ok(id) => println!("account {id}"),
///     Err(e) if e.is_invalid_credentials() => eprintln!("fix the credentials: {e}"),
///     Err(e) if e.is_rate_limited() => eprintln!("wait {:?}: {e}", e.retry_after()),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    /// The server's own words, scrubbed of tokens and secrets.
    message: Option<String>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `get_token` answered 400, 401 or 403.
    InvalidCredentials { status: StatusCode },
    /// `get_token` answered 429.
    RateLimited { retry_after: Option<Duration> },
    /// `get_token` answered another error status, or could not be reached.
    Unavailable {
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
    },
    /// `get_token` did not answer within the fetch timeout.
    Timeout { after: Duration },
    /// `get_token` answered something that is not a token.
    MalformedResponse,
    /// The layer's configuration is wrong (a build error or missing environment).
    Config,
    /// The layer was used outside a tokio runtime.
    NoRuntime,
    /// The tokio runtime was built without its timer driver.
    NoTimers,
    /// A forced refresh refused: the floor holds (in this process or in the fleet) and no
    /// newer token exists. It never reaches the caller: the rejection that asked for it is
    /// returned, marked.
    FloorHolds,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Self::build(kind, None, None)
    }

    pub(crate) fn build(kind: Kind, message: Option<String>, source: Option<BoxError>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message,
                source,
            }),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::build(Kind::Config, Some(message.into()), None)
    }

    /// The kind, for code that passes an error on in another form (a fleet's store).
    #[cfg(feature = "redis")]
    pub(crate) fn kind(&self) -> Kind {
        self.inner.kind
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::build(Kind::MalformedResponse, Some(message.into()), None)
    }

    /// The auth service was not reached, or its answer was not read to its end.
    pub(crate) fn unavailable(message: impl Into<String>, source: Option<BoxError>) -> Self {
        let kind = Kind::Unavailable {
            status: None,
            retry_after: None,
        };
        Self::build(kind, Some(message.into()), source)
    }

    /// The fetch task went away with its runtime before it answered.
    pub(crate) fn cancelled() -> Self {
        Self::unavailable("the token fetch was cancelled: its runtime shut down", None)
    }

    /// The token fetch's task did not finish: it panicked (in the token client, or in tokio
    /// for want of timers) or its runtime shut down.
    pub(crate) fn from_join(error: tokio::task::JoinError) -> Self {
        if !error.is_panic() {
            return Self::cancelled();
        }
        let panic = error.into_panic();
        let text = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or_default();
        // tokio says so when a timer is made on a runtime without its time driver.
        if text.contains("timers are disabled") {
            return Self::new(Kind::NoTimers);
        }
        // The panic's own text is not kept: it may quote whatever the token client held.
        Self::unavailable("the token client panicked", None)
    }

    pub(crate) fn floor() -> Self {
        Self::new(Kind::FloorHolds)
    }

    /// A forced refresh refused because the floor between forced refreshes holds.
    pub(crate) fn is_floor(&self) -> bool {
        matches!(self.inner.kind, Kind::FloorHolds)
    }

    /// The credentials were refused by `get_token` (400, 401 or 403). No token is requested
    /// again until the cooldown ends: fix the credentials.
    pub fn is_invalid_credentials(&self) -> bool {
        matches!(self.inner.kind, Kind::InvalidCredentials { .. })
    }

    /// The auth service answered 429: no token is requested before [`Error::retry_after`].
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.inner.kind, Kind::RateLimited { .. })
    }

    /// The auth service answered another error status (5xx, Lengow's 530/540, …) or could
    /// not be reached; token requests back off exponentially.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.inner.kind, Kind::Unavailable { .. })
    }

    /// The token request did not finish within the fetch timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner.kind, Kind::Timeout { .. })
    }

    /// The auth service answered something that is not a token (not JSON, no `token`, no
    /// numeric `account_id`, too large, cut short).
    pub fn is_malformed_response(&self) -> bool {
        matches!(self.inner.kind, Kind::MalformedResponse)
    }

    /// The layer is misconfigured: a bad `api_url`, a missing environment variable, or use
    /// outside a tokio runtime or in one built without timers.
    pub fn is_config(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::Config | Kind::NoRuntime | Kind::NoTimers
        )
    }

    /// How long the auth service asked us to wait (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner.kind {
            Kind::RateLimited { retry_after } | Kind::Unavailable { retry_after, .. } => {
                retry_after
            }
            _ => None,
        }
    }

    /// The HTTP status `get_token` answered, where it answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self.inner.kind {
            Kind::InvalidCredentials { status } => Some(status),
            Kind::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            Kind::Unavailable { status, .. } => status,
            _ => None,
        }
    }

    /// The server's message, with any token or secret replaced by `** redacted **`.
    pub fn server_message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// Finds the crate's error in `error` or anywhere down its [source](std::error::Error::source)
    /// chain: in the `tower::BoxError` a [`LengowAuth`](crate::LengowAuth) service returns, and
    /// through the layers that wrap it (`tower::timeout`, `tower::buffer`, an error of your own
    /// whose `source()` leads to it). `None` if the failure is not the layer's: the inner
    /// service's own error (a refused connection), a timeout that elapsed, a buffer closed.
    ///
    /// ```
    /// use http::StatusCode;
    /// use lengow_auth::Error;
    ///
    /// /// The status an app answers when its call to Lengow failed.
    /// fn status_of(error: &tower::BoxError) -> StatusCode {
    ///     match Error::find(error.as_ref()) {
    ///         Some(e) if e.is_rate_limited() || e.is_unavailable() || e.is_timeout() => {
    ///             StatusCode::SERVICE_UNAVAILABLE // with `Retry-After` from `e.retry_after()`
    ///         }
    ///         Some(_) => StatusCode::BAD_GATEWAY, // credentials refused, an answer not a token
    ///         None => StatusCode::BAD_GATEWAY,    // the API call itself failed
    ///     }
    /// }
    ///
    /// // A layer refuses to build for a plain-http origin that is not loopback.
    /// let token_client = tower::service_fn(|_: http::Request<_>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    /// });
    /// let error = lengow_auth::LengowAuthLayer::builder(lengow_auth::Credentials::new("key", "secret"))
    ///     .api_url(http::Uri::from_static("http://api.lengow.io"))
    ///     .build(token_client)
    ///     .unwrap_err();
    /// let boxed: tower::BoxError = error.into();
    /// assert!(Error::find(boxed.as_ref()).is_some_and(Error::is_config));
    /// assert_eq!(status_of(&boxed), StatusCode::BAD_GATEWAY);
    ///
    /// let elapsed: tower::BoxError = tower::timeout::error::Elapsed::new().into();
    /// assert!(Error::find(elapsed.as_ref()).is_none());
    /// ```
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<Error>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.kind {
            Kind::InvalidCredentials { status } => write!(
                f,
                "lengow refused the credentials ({}): check the access token and secret; no token is requested again until the cooldown ends",
                status.as_u16()
            ),
            Kind::RateLimited { .. } => {
                f.write_str("lengow's auth service is rate limiting token requests")
            }
            Kind::Unavailable {
                status: Some(status),
                ..
            } => write!(
                f,
                "lengow's auth service failed with status {}",
                status.as_u16()
            ),
            Kind::Unavailable { status: None, .. } => {
                f.write_str("the connection to lengow's auth service failed")
            }
            Kind::Timeout { after } => write!(
                f,
                "lengow's auth service did not answer within {}ms",
                after.as_millis()
            ),
            Kind::MalformedResponse => {
                f.write_str("lengow's auth service answered something that is not a token")
            }
            Kind::Config => f.write_str("lengow-auth is misconfigured"),
            Kind::NoRuntime => {
                f.write_str("lengow-auth needs a tokio runtime: call it from within one")
            }
            Kind::FloorHolds => {
                f.write_str("no newer token: the floor between forced refreshes holds")
            }
            Kind::NoTimers => f.write_str(
                "lengow-auth needs tokio's timers: build the runtime with enable_time() or enable_all()",
            ),
        }?;
        // What happens to token requests next, where the kind alone does not say.
        match (self.inner.kind, self.retry_after()) {
            (_, Some(wait)) => write!(f, ": no token is requested for {}s", wait.as_secs())?,
            (Kind::Unavailable { .. } | Kind::Timeout { .. }, None) => {
                f.write_str(": token requests back off and retry")?
            }
            _ => {}
        }
        if let Some(message) = &self.inner.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(message) = &self.inner.message {
            d.field("message", message);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner.source.as_deref()?)
    }
}

/// Replaces every occurrence of `secrets` and every uuid-like run (Lengow's token shape) in
/// `text` with `** redacted **`, and caps its length.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    const MAX: usize = 512;
    const REDACTED: &str = "** redacted **";
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, REDACTED);
    }
    let out = scrub_uuids(&out, REDACTED);
    if out.len() > MAX {
        let mut end = MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &out[..end])
    } else {
        out
    }
}

/// Replaces every uuid (`8-4-4-4-12` hex digits) that does not follow a hex digit.
fn scrub_uuids(text: &str, with: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !bytes[i - 1].is_ascii_hexdigit();
        if boundary && starts_with_uuid(&bytes[i..]) {
            out.push_str(&text[copied..i]);
            out.push_str(with);
            i += UUID_LEN;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

const UUID_LEN: usize = 36;

fn starts_with_uuid(bytes: &[u8]) -> bool {
    let Some(head) = bytes.get(..UUID_LEN) else {
        return false;
    };
    head.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_uuid_and_secrets() {
        let s = scrub(
            "Token: 0a1b2c3d-0000-4abc-8def-0123456789ab is expired, secret s3cr3t!",
            &["s3cr3t!"],
        );
        assert_eq!(s, "Token: ** redacted ** is expired, secret ** redacted **");
    }

    #[test]
    fn scrub_keeps_plain_text_and_caps_length() {
        assert_eq!(scrub("Invalid credentials", &[]), "Invalid credentials");
        let long = "x".repeat(2000);
        assert!(scrub(&long, &[]).chars().count() <= 513);
    }

    #[test]
    fn scrub_finds_uuids_anywhere_but_inside_hex_runs() {
        let id = "0A1B2C3D-0000-4abc-8def-0123456789ab";
        assert_eq!(scrub_uuids(id, "*"), "*");
        assert_eq!(scrub_uuids(&format!("é{id} {id}."), "*"), "é* *.");
        assert_eq!(scrub_uuids(&format!("{id}{id}"), "*"), format!("*{id}"));
        assert_eq!(scrub_uuids(&format!("f{id}"), "*"), format!("f{id}"));
        assert_eq!(scrub_uuids(&id[..35], "*"), &id[..35]);
        assert_eq!(
            scrub_uuids(&id.replace('-', "_"), "*"),
            id.replace('-', "_")
        );
    }

    #[test]
    fn display_says_what_token_requests_do_next() {
        let secs = |n| Some(Duration::from_secs(n));
        let cases = [
            (
                Error::new(Kind::RateLimited {
                    retry_after: secs(2),
                }),
                "lengow's auth service is rate limiting token requests: no token is requested for 2s",
            ),
            (
                Error::new(Kind::RateLimited { retry_after: None }),
                "lengow's auth service is rate limiting token requests",
            ),
            (
                Error::new(Kind::Unavailable {
                    status: Some(StatusCode::SERVICE_UNAVAILABLE),
                    retry_after: None,
                }),
                "lengow's auth service failed with status 503: token requests back off and retry",
            ),
            (
                Error::build(
                    Kind::Unavailable {
                        status: None,
                        retry_after: secs(5),
                    },
                    Some("reset".into()),
                    None,
                ),
                "the connection to lengow's auth service failed: no token is requested for 5s: reset",
            ),
            (
                Error::new(Kind::Timeout {
                    after: Duration::from_secs(10),
                }),
                "lengow's auth service did not answer within 10000ms: token requests back off and retry",
            ),
            (
                Error::floor(),
                "no newer token: the floor between forced refreshes holds",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn display_is_lowercase_without_trailing_punctuation() {
        let errors = [
            Error::new(Kind::InvalidCredentials {
                status: StatusCode::UNAUTHORIZED,
            }),
            Error::new(Kind::RateLimited {
                retry_after: Some(Duration::from_secs(2)),
            }),
            Error::new(Kind::Unavailable {
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                retry_after: None,
            }),
            Error::new(Kind::Timeout {
                after: Duration::from_secs(10),
            }),
            Error::malformed("missing `token`"),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
