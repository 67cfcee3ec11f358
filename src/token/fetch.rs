//! The `POST /access/get_token` call: the request, its deadline and reading the answer.
//! The token client is type-erased here so the layer carries no type parameter.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tower::ServiceExt;
use tower_service::Service;

use super::response::{self, MAX_ANSWER_BYTES, TokenAnswer};
use super::{BoxFuture, Clock, Credentials};
use crate::error::{BoxError, Error, Kind, scrub};

/// What the token client answered, its body read whole (up to the limit).
type RawAnswer = Response<Result<Bytes, BoxError>>;

type CallFn = dyn Fn(Request<Full<Bytes>>) -> BoxFuture<Result<RawAnswer, BoxError>> + Send + Sync;

/// The `User-Agent` of every token request.
const USER_AGENT: &str = concat!("lengow-auth/", env!("CARGO_PKG_VERSION"));

/// Makes `get_token` calls through the user's token client.
pub(crate) struct Fetcher {
    call: Arc<CallFn>,
    endpoint: Uri,
    form: Bytes,
    /// The credentials as they may come back quoted in an error: raw and form-encoded.
    secret_spellings: Vec<String>,
    timeout: Duration,
}

impl Fetcher {
    pub(crate) fn new<C, B>(
        client: C,
        endpoint: Uri,
        credentials: Credentials,
        timeout: Duration,
    ) -> Self
    where
        C: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let call = move |request: Request<Full<Bytes>>| -> BoxFuture<Result<RawAnswer, BoxError>> {
            let client = client.clone();
            Box::pin(async move {
                let response = client.oneshot(request).await.map_err(Into::into)?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map(|collected| collected.to_bytes());
                Ok(Response::from_parts(parts, body))
            })
        };
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", &credentials.access_token)
            .append_pair("secret", &credentials.secret)
            .finish();
        let mut secret_spellings = Vec::new();
        for raw in [&credentials.secret, &credentials.access_token] {
            let encoded: String = form_urlencoded::byte_serialize(raw.as_bytes()).collect();
            let percent_spaces = encoded.replace('+', "%20");
            secret_spellings.extend([raw.clone(), encoded, percent_spaces]);
        }
        // The longest first, so that no spelling is left half replaced.
        secret_spellings.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secret_spellings.dedup();
        Self {
            call: Arc::new(call),
            endpoint,
            form: Bytes::from(form),
            secret_spellings,
            timeout,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.form.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.endpoint.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        request
    }

    /// One `get_token` call, bounded by the fetch timeout.
    pub(crate) async fn fetch(&self, clock: &Clock) -> Result<TokenAnswer, Error> {
        let secrets: Vec<&str> = self.secret_spellings.iter().map(String::as_str).collect();
        let failed = |what: &str, e: BoxError| {
            let text = scrub(&e.to_string(), &secrets);
            Error::unavailable(format!("{what}{text}"), Some(e))
        };
        let timeout = self.timeout;
        let answer = tokio::time::timeout(timeout, (self.call)(self.request()))
            .await
            .map_err(|_| Error::new(Kind::Timeout { after: timeout }))?
            .map_err(|e| failed("", e))?;
        let (parts, body) = answer.into_parts();
        let body = body.map_err(|e| {
            if e.is::<LengthLimitError>() {
                let kib = MAX_ANSWER_BYTES / 1024;
                Error::malformed(format!("the answer is longer than {kib} KiB"))
            } else {
                failed("the answer was cut short: ", e)
            }
        })?;
        response::parse(parts.status, &parts.headers, &body, &secrets, clock.now())
    }
}
