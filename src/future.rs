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
        state: State<S::Future, B>,
        service: S,
        shared: Arc<Shared>,
        plan: Plan<B>,
        // The token the request was last sent with.
        generation: u64,
        // That token was fetched after a rejection and is not yet known to be accepted.
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
// The head is kept inline: the future is as large as it anyway, and a box would cost every
// request an allocation.
#[allow(clippy::large_enum_variant)]
enum Plan<B> {
    /// Not a Lengow request: no token, no replay.
    Passthrough,
    /// Rejections are returned as they are: no `refresh_on` status, or a body too large.
    NoReplay,
    /// What it takes to send the request again.
    Replay { head: Head, body: Replay<B> },
}

/// The head of a request, cloned before the token goes in, to build its replay.
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
    pub(crate) fn new(mut service: S, shared: Arc<Shared>, request: Request<B>) -> Self {
        let (mut parts, body) = request.into_parts();
        if !shared.origin.admits(&mut parts.uri, &parts.headers) {
            tracing::debug!(uri = %parts.uri, "request to another origin: sent without a token");
            let request = Request::from_parts(parts, ReplayBody::passthrough(body));
            let future = service.call(request);
            return Self::with(State::First { future }, service, shared, Plan::Passthrough);
        }
        let request = Request::from_parts(parts, body);
        match shared.cache.sending() {
            Some(sending) => {
                let (future, plan) = send(&mut service, &shared, request, sending.header);
                let mut future = Self::with(State::First { future }, service, shared, plan);
                future.generation = sending.generation;
                future.unproven = sending.unproven;
                future
            }
            None => {
                tracing::trace!("no usable token: waiting for one");
                Counters::bump(&shared.cache.counters.token_waits);
                let state = State::Token {
                    token: shared.cache.token(),
                    request: Some(request),
                };
                Self::with(state, service, shared, Plan::NoReplay)
            }
        }
    }

    fn with(state: State<S::Future, B>, service: S, shared: Arc<Shared>, plan: Plan<B>) -> Self {
        Self {
            state,
            service,
            shared,
            plan,
            generation: 0,
            unproven: false,
        }
    }
}

/// Sends `request` with the token `header`, keeping what a replay needs.
fn send<S, B>(
    service: &mut S,
    shared: &Shared,
    mut request: Request<B>,
    header: HeaderValue,
) -> (S::Future, Plan<B>)
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    let head = (!shared.refresh_on.is_empty()).then(|| Head::of(&request));
    request.headers_mut().insert(header::AUTHORIZATION, header);
    let (parts, body) = request.into_parts();
    let (body, plan) = match head {
        None => (ReplayBody::passthrough(body), Plan::NoReplay),
        Some(head) => match ReplayBody::keep(body, shared.replay_body_limit) {
            (body, Some(replay)) => (body, Plan::Replay { head, body: replay }),
            (body, None) => (body, Plan::NoReplay),
        },
    };
    (service.call(Request::from_parts(parts, body)), plan)
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
                    let header = token.header.clone();
                    let (future, plan) = send(this.service, this.shared, request, header);
                    *this.plan = plan;
                    *this.generation = token.generation;
                    *this.unproven = token.unproven_forced();
                    this.state.set(State::First { future });
                }
                StateProj::First { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let shared: &Shared = this.shared;
                    if matches!(this.plan, Plan::Passthrough) {
                        return Poll::Ready(Ok(response));
                    }
                    if !shared.refresh_on.contains(&response.status()) {
                        if *this.unproven {
                            shared.cache.accepted(*this.generation);
                        }
                        return Poll::Ready(Ok(response));
                    }
                    let replay = match std::mem::replace(this.plan, Plan::NoReplay) {
                        Plan::Replay { head, body } => body.body().map(|b| head.into_request(b)),
                        _ => None,
                    };
                    let Some(request) = replay else {
                        Counters::bump(&shared.cache.counters.replays_skipped);
                        tracing::debug!(
                            status = response.status().as_u16(),
                            "request rejected: not replayed, its body was not kept"
                        );
                        // The token is still refreshed, under the same rules as for a
                        // replay, so that the next request goes out with a good one; the
                        // fetch runs in its own task.
                        drop(shared.cache.after_rejection(*this.generation));
                        return Poll::Ready(Ok(response));
                    };
                    tracing::debug!(
                        status = response.status().as_u16(),
                        generation = *this.generation,
                        "request rejected: refreshing the token to replay it"
                    );
                    let token = shared.cache.after_rejection(*this.generation);
                    this.state.set(State::Refresh {
                        token,
                        request: Some(request),
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
                    let shared: &Shared = this.shared;
                    if shared.refresh_on.contains(&response.status()) {
                        Counters::bump(&shared.cache.counters.rejected_after_replay);
                        tracing::debug!(
                            status = response.status().as_u16(),
                            "replay rejected too: returning the rejection"
                        );
                    } else if *this.unproven {
                        shared.cache.accepted(*this.generation);
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
