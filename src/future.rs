//! [`ResponseFuture`]: waits for a token when none is usable, sends the request, and after a
//! rejection refreshes once and replays once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version, header,
};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::error::BoxError;
use crate::layer::Shared;
use crate::replay::{ReplayBody, Source};
use crate::stats::Counters;
use crate::token::Token;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Outcome = Result<Arc<Token>, crate::Error>;

pin_project! {
    /// The response future of [`LengowAuth`](crate::LengowAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, B>,
        service: S,
        shared: Arc<Shared>,
        plan: Plan,
        // The token the request was sent with.
        generation: u64,
        // The token was fetched after a rejection and is not yet known to be accepted.
        unproven: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        // No usable token when called: waiting for one.
        Token {
            token: BoxFuture<Outcome>,
            request: Option<Request<B>>,
        },
        // The first send.
        First {
            #[pin]
            future: F,
        },
        // Rejected: waiting for the token to replay with.
        Refresh {
            token: BoxFuture<Outcome>,
            request: Option<Request<ReplayBody<B>>>,
        },
        // Waiting for the inner service to be ready for the replay.
        Ready {
            request: Option<Request<ReplayBody<B>>>,
        },
        // The replay.
        Second {
            #[pin]
            future: F,
        },
    }
}

/// What the future may do after a rejection.
enum Plan {
    /// Not a Lengow request: no token, no replay.
    Passthrough,
    /// Rejections are returned as they are (body too large, or no `refresh_on` status).
    NoReplay,
    /// Enough to send the request again.
    Replay(Head, Source),
}

/// The request head kept for a replay.
///
/// The headers are copied as bytes into one buffer rather than cloned: cloning a header value
/// built at run time (`HeaderValue::from_str`, `try_from(String)`) allocates to share its
/// bytes, once per value, while the buffer costs one allocation for the whole head. Names and
/// values are rebuilt from it only if a replay happens.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderBytes,
    extensions: Extensions,
}

impl Head {
    fn copy(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: HeaderBytes::copy(&parts.headers),
            extensions: parts.extensions.clone(),
        }
    }

    fn into_request<B>(self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.into_map();
        *request.extensions_mut() = self.extensions;
        request
    }
}

/// Header names and values laid end to end: for each one, the name's length (2 bytes), the
/// name, the value's length (4 bytes), the value, and whether it is sensitive (1 byte).
/// `Authorization` is left out: a replay gets a fresh one.
struct HeaderBytes(Vec<u8>);

impl HeaderBytes {
    fn copy(headers: &HeaderMap) -> Self {
        let kept = || {
            headers
                .iter()
                .filter(|(name, _)| *name != header::AUTHORIZATION)
        };
        let len = kept().map(|(n, v)| 7 + n.as_str().len() + v.len()).sum();
        let mut buf = Vec::with_capacity(len);
        for (name, value) in kept() {
            // A header name is at most 64 KiB by http's own limit; a value fits 4 GiB.
            buf.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(value.as_bytes());
            buf.push(u8::from(value.is_sensitive()));
        }
        Self(buf)
    }

    /// The headers again, in their order; the values share one buffer.
    fn into_map(self) -> HeaderMap {
        let mut rest = Bytes::from(self.0);
        let mut map = HeaderMap::new();
        while !rest.is_empty() {
            let name_len = usize::from(rest.get_u16_le());
            let name = rest.split_to(name_len);
            let value_len = rest.get_u32_le() as usize;
            let value = rest.split_to(value_len);
            let sensitive = rest.get_u8() == 1;
            // Every name and value came from a valid header, so both parse again.
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(&name),
                HeaderValue::from_maybe_shared(value),
            ) {
                value.set_sensitive(sensitive);
                map.append(name, value);
            }
        }
        map
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    pub(crate) fn new(mut service: S, shared: &Arc<Shared>, request: Request<B>) -> Self {
        let shared = Arc::clone(shared);
        if !shared.origin.matches(request.uri()) {
            let future = service.call(request.map(ReplayBody::passthrough));
            return Self::with(State::First { future }, service, shared, Plan::Passthrough);
        }
        let token = {
            let cache = &shared.cache;
            let now = Instant::now();
            let wall = cache.clock().now();
            let current = cache.slot().load();
            match current.as_ref().filter(|t| t.is_usable(now, wall)) {
                Some(token) => Ok(Self::send(&mut service, &shared, request, token)),
                None => Err(request),
            }
        };
        match token {
            Ok((state, plan, generation, unproven)) => Self {
                state,
                service,
                shared,
                plan,
                generation,
                unproven,
            },
            Err(request) => {
                tracing::trace!("no usable token: waiting for one");
                Counters::bump(&shared.cache.counters.token_waits);
                let token = shared.cache.token();
                let state = State::Token {
                    token,
                    request: Some(request),
                };
                Self::with(state, service, shared, Plan::NoReplay)
            }
        }
    }

    fn with(state: State<S::Future, B>, service: S, shared: Arc<Shared>, plan: Plan) -> Self {
        Self {
            state,
            service,
            shared,
            plan,
            generation: 0,
            unproven: false,
        }
    }

    /// Injects the token, keeps what a replay needs and makes the first call.
    fn send(
        service: &mut S,
        shared: &Shared,
        request: Request<B>,
        token: &Token,
    ) -> (State<S::Future, B>, Plan, u64, bool) {
        let (mut parts, body) = request.into_parts();
        let (body, source) = if shared.refresh_on.is_empty() {
            (ReplayBody::passthrough(body), None)
        } else {
            ReplayBody::capture(body, shared.replay_body_limit)
        };
        let plan = match source {
            Some(source) => Plan::Replay(Head::copy(&parts), source),
            None => Plan::NoReplay,
        };
        parts
            .headers
            .insert(header::AUTHORIZATION, token.header.clone());
        let future = service.call(Request::from_parts(parts, body));
        (
            State::First { future },
            plan,
            token.generation,
            token.unproven_forced(),
        )
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Token { token, request } => {
                    let token = ready!(token.as_mut().poll(cx))?;
                    let request = take(request);
                    let (state, plan, generation, unproven) =
                        Self::send(this.service, this.shared, request, &token);
                    *this.plan = plan;
                    *this.generation = generation;
                    *this.unproven = unproven;
                    this.state.set(state);
                }
                StateProj::First { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let rejected = this.shared.rejects(response.status());
                    let plan = std::mem::replace(this.plan, Plan::NoReplay);
                    let (head, source) = match plan {
                        Plan::Passthrough => return Poll::Ready(Ok(response)),
                        _ if !rejected => {
                            accepted(this.shared, *this.generation, *this.unproven);
                            return Poll::Ready(Ok(response));
                        }
                        Plan::NoReplay => {
                            skipped(
                                this.shared,
                                *this.generation,
                                "the body is over the replay limit",
                            );
                            return Poll::Ready(Ok(response));
                        }
                        Plan::Replay(head, source) => (head, source),
                    };
                    let Some(body) = source.replay() else {
                        skipped(
                            this.shared,
                            *this.generation,
                            "the body was not captured whole",
                        );
                        return Poll::Ready(Ok(response));
                    };
                    tracing::debug!(
                        status = response.status().as_u16(),
                        generation = *this.generation,
                        "request rejected: refreshing the token to replay it"
                    );
                    drop(response);
                    let token = this.shared.cache.after_rejection(*this.generation);
                    this.state.set(State::Refresh {
                        token,
                        request: Some(head.into_request(body)),
                    });
                }
                StateProj::Refresh { token, request } => {
                    let token = ready!(token.as_mut().poll(cx))?;
                    let mut request = take(request);
                    request
                        .headers_mut()
                        .insert(header::AUTHORIZATION, token.header.clone());
                    *this.generation = token.generation;
                    *this.unproven = token.unproven_forced();
                    this.state.set(State::Ready {
                        request: Some(request),
                    });
                }
                StateProj::Ready { request } => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    Counters::bump(&this.shared.cache.counters.replays);
                    tracing::debug!(generation = *this.generation, "replaying the request");
                    let future = this.service.call(take(request));
                    this.state.set(State::Second { future });
                }
                StateProj::Second { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if this.shared.rejects(response.status()) {
                        Counters::bump(&this.shared.cache.counters.rejected_after_replay);
                        tracing::debug!(
                            status = response.status().as_u16(),
                            "replay rejected too: returning the rejection"
                        );
                    } else {
                        accepted(this.shared, *this.generation, *this.unproven);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// The value a state holds until it moves on; a state is polled past it only once.
fn take<T>(slot: &mut Option<T>) -> T {
    match slot.take() {
        Some(value) => value,
        None => panic!("ResponseFuture polled after it moved on"),
    }
}

/// The API accepted the token: a forced one is proven, so the forced-refresh floor resets.
fn accepted(shared: &Shared, generation: u64, unproven: bool) {
    if unproven {
        if let Some(token) = shared.cache.slot().load().as_ref() {
            if token.generation == generation {
                token.mark_accepted();
            }
        }
    }
}

/// A rejection returned as is. The token is still refreshed (under the same rules as for a
/// replay) so that the next request goes out with a good one.
fn skipped(shared: &Shared, generation: u64, why: &'static str) {
    Counters::bump(&shared.cache.counters.replays_skipped);
    tracing::debug!(why, "request rejected: not replayed");
    // The fetch runs in its own task; nobody needs to wait for it here.
    drop(shared.cache.after_rejection(generation));
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_round_trip_every_value_in_order_but_authorization() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.append("x-custom", HeaderValue::from_str("one").unwrap());
        headers.append("x-custom", HeaderValue::from_bytes(b"two \xff").unwrap());
        let mut secret = HeaderValue::from_static("cookie-value");
        secret.set_sensitive(true);
        headers.insert(header::COOKIE, secret);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("old-token"));
        headers.insert("x-empty", HeaderValue::from_static(""));

        let copy = HeaderBytes::copy(&headers).into_map();
        headers.remove(header::AUTHORIZATION);
        assert_eq!(copy, headers);
        let values: Vec<_> = copy.get_all("x-custom").iter().collect();
        assert_eq!(
            values,
            [
                &HeaderValue::from_static("one"),
                &HeaderValue::from_bytes(b"two \xff").unwrap()
            ]
        );
        assert!(copy[header::COOKIE].is_sensitive());
        assert!(!copy[header::ACCEPT].is_sensitive());
        assert!(HeaderBytes::copy(&HeaderMap::new()).into_map().is_empty());
    }
}
