//! [`ResponseFuture`]: waits for a token when none is usable, sends the request, and after a
//! rejection refreshes once and replays once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;
use crate::rejection::{TokenRejected, Why};
use crate::replay::{Replay, ReplayBody};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::token::{BoxFuture, Outcome};

pin_project! {
    /// The response future of [`LengowAuth`](crate::LengowAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, B, S::Response>,
        service: S,
        shared: Arc<Shared>,
        // The request's head before the token went in: `None` for a request to another
        // origin, or when replays are off.
        head: Option<Head>,
        // What the replay's body is made from: `None` when the body was not kept.
        replay: Option<Replay<B>>,
        // The token the request was last sent with.
        generation: u64,
        // That token was forced by a rejection and is not yet known to be accepted.
        unproven: bool,
        // The request was sent a second time.
        replayed: bool,
    }
}

pin_project! {
    // Only `Called` is on the hot path; what the other states hold is boxed, so that the
    // future every request moves around stays small.
    #[project = StateProj]
    enum State<F, B, T> {
        // No usable token when called: waiting for one.
        Token {
            token: BoxFuture<Outcome>,
            request: Option<Box<Request<B>>>,
        },
        // Sent, the first time or the second.
        Called {
            #[pin]
            future: F,
        },
        // Rejected: waiting for a newer token to replay with.
        Refresh {
            token: BoxFuture<Outcome>,
            request: Option<Box<Request<ReplayBody<B>>>>,
            rejection: Option<Box<T>>,
        },
        // Waiting for the inner service to be ready for the replay.
        Ready {
            request: Option<Box<Request<ReplayBody<B>>>>,
        },
    }
}

/// The head of a request, cloned before the token goes in, to build its replay.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl Head {
    fn of<B>(request: &Request<B>) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
        }
    }

    fn into_request<B>(self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    pub(crate) fn new(mut service: S, shared: Arc<Shared>, mut request: Request<B>) -> Self {
        if !shared.origin.admits(&mut request) {
            let uri = request.uri();
            tracing::debug!(%uri, "request to another origin: sent without a token");
            let future = service.call(request.map(ReplayBody::passthrough));
            return Self::with(State::Called { future }, service, shared);
        }
        let Some(sending) = shared.cache.sending() else {
            tracing::trace!("no usable token: waiting for one");
            Counters::bump(&shared.cache.counters.token_waits);
            let state = State::Token {
                token: shared.cache.token(),
                request: Some(Box::new(request)),
            };
            return Self::with(state, service, shared);
        };
        let (future, head, replay) = send(&mut service, &shared, request, sending.header);
        Self {
            state: State::Called { future },
            service,
            shared,
            head,
            replay,
            generation: sending.generation,
            unproven: sending.unproven,
            replayed: false,
        }
    }

    fn with(state: State<S::Future, B, S::Response>, service: S, shared: Arc<Shared>) -> Self {
        Self {
            state,
            service,
            shared,
            head: None,
            replay: None,
            generation: 0,
            unproven: false,
            replayed: false,
        }
    }
}

/// Sends `request` with the token `header`; gives the call's future and what a replay
/// needs: the head (unless replays are off) and the body's replay (unless not kept).
fn send<S, B>(
    service: &mut S,
    shared: &Shared,
    mut request: Request<B>,
    header: HeaderValue,
) -> (S::Future, Option<Head>, Option<Replay<B>>)
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    let head = (!shared.refresh_on.is_empty()).then(|| Head::of(&request));
    request.headers_mut().insert(header::AUTHORIZATION, header);
    let (parts, body) = request.into_parts();
    let (body, replay) = match head {
        Some(_) => ReplayBody::keep(body, shared.replay_body_limit),
        None => (ReplayBody::passthrough(body), None),
    };
    (service.call(Request::from_parts(parts, body)), head, replay)
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
                    let request = *take(request);
                    let header = token.header.clone();
                    let (future, head, replay) = send(this.service, this.shared, request, header);
                    (*this.head, *this.replay) = (head, replay);
                    *this.generation = token.generation;
                    *this.unproven = token.unproven_forced();
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let shared: &Shared = this.shared;
                    // A request to another origin, or replays off: the response as it is.
                    let Some(head) = this.head.as_ref() else {
                        return Poll::Ready(Ok(response));
                    };
                    if !shared.refresh_on.contains(&response.status()) {
                        if *this.unproven {
                            shared.cache.accepted(*this.generation);
                        }
                        shared.routes.accepted(&head.method, &head.uri);
                        return Poll::Ready(Ok(response));
                    }
                    let counters = &shared.cache.counters;
                    if *this.replayed {
                        Counters::bump(&counters.rejected_after_replay);
                        Counters::bump(&counters.routes_learnt);
                        shared.routes.learn(&head.method, &head.uri);
                        return Poll::Ready(Ok(returned(response, Why::ReplayRejected)));
                    }
                    if shared.routes.rejects(&head.method, &head.uri) {
                        Counters::bump(&counters.rejected_on_known_routes);
                        return Poll::Ready(Ok(returned(response, Why::KnownRoute)));
                    }
                    let body = this.replay.take().and_then(|replay| replay.body());
                    let token = shared.cache.after_rejection(*this.generation);
                    let Some(body) = body else {
                        // The token is still refreshed, under the same rules, so that the
                        // next request goes out with a good one: the fetch runs in its own
                        // task, and nobody needs to wait for it here.
                        drop(token);
                        Counters::bump(&counters.replays_skipped);
                        return Poll::Ready(Ok(returned(response, Why::BodyNotKept)));
                    };
                    tracing::debug!(
                        status = response.status().as_u16(),
                        generation = *this.generation,
                        "request rejected: waiting for a newer token to replay it"
                    );
                    let request = head.clone().into_request(body);
                    this.state.set(State::Refresh {
                        token,
                        request: Some(Box::new(request)),
                        rejection: Some(Box::new(response)),
                    });
                }
                StateProj::Refresh {
                    token,
                    request,
                    rejection,
                } => {
                    let token = match ready!(token.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(e) => {
                            let counters = &this.shared.cache.counters;
                            let why = if e.is_floor() {
                                Counters::bump(&counters.rejected_within_floor);
                                Why::Floor
                            } else {
                                Counters::bump(&counters.rejected_without_token);
                                Why::NoToken
                            };
                            return Poll::Ready(Ok(returned(*take(rejection), why)));
                        }
                    };
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
                    let future = this.service.call(*take(request));
                    *this.replayed = true;
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// A rejection returned to the caller as it is, marked with why.
fn returned<R>(mut response: Response<R>, why: Why) -> Response<R> {
    tracing::debug!(
        status = response.status().as_u16(),
        why = ?why,
        "request rejected: returning the rejection"
    );
    response.extensions_mut().insert(TokenRejected::new(why));
    response
}

/// The value a state holds until it moves on; a state is polled past it only once.
fn take<T>(slot: &mut Option<T>) -> T {
    match slot.take() {
        Some(value) => value,
        None => panic!("ResponseFuture polled after it moved on"),
    }
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
