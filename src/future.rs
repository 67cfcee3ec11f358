//! [`ResponseFuture`]: waits for a token when none is usable, sends the request, and after a
//! rejection refreshes once and replays once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::BoxError;
use crate::head::Head;
use crate::layer::{Core, Shared, Statuses};
use crate::replay::{ReplayBody, Source};
use crate::stats::Counters;
use crate::token::Token;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Outcome = Result<Arc<Token>, crate::Error>;

pin_project! {
    /// The response future of [`LengowAuth`](crate::LengowAuth).
    #[project = Projection]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, B>,
        service: S,
        // The layer by id, not by reference count: a request that is not rejected writes
        // no counter the layer's other requests share. Its core is looked up on rejection.
        layer: u64,
        refresh_on: Statuses,
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
            request: Option<Box<Request<B>>>,
            core: Arc<Core>,
        },
        // The first send.
        First {
            #[pin]
            future: F,
        },
        // Rejected: waiting for the token to replay with.
        Refresh {
            token: BoxFuture<Outcome>,
            request: Option<Box<Request<ReplayBody<B>>>>,
            core: Arc<Core>,
        },
        // Waiting for the inner service to be ready for the replay.
        Ready {
            request: Option<Box<Request<ReplayBody<B>>>>,
            core: Arc<Core>,
        },
        // The replay.
        Second {
            #[pin]
            future: F,
            core: Arc<Core>,
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

/// Injects the token into `$request`, keeps what a replay needs and makes the first call;
/// gives the state and the plan.
///
/// A macro, not a function: the request is changed in place and wrapped in its replayable
/// body as it is handed to the call, so it is built where the call takes it, while passing
/// it to a function first costs one more copy of its head, the largest thing on the hot path
/// (41 of the 1 506 instructions a GET cost, by callgrind). The head is copied before the body
/// is looked at, so a body too large to keep wastes that copy.
///
/// The request is taken apart and put together again (`into_parts`, `from_parts`) rather
/// than mapped: `Request::map` copied the whole request (256 bytes with a `Full` body) and
/// then its head (224) out of that copy, and each wide load of the second copy spanned two
/// stores of the first, so it waited for them to reach the cache. Now both copies move the
/// head alone, each load matching a store.
macro_rules! send {
    ($service:expr, $core:expr, $request:ident, $header:expr) => {{
        let core: &Core = $core;
        let replays = !core.refresh_on.is_empty();
        let head = if replays { Head::copy(&$request) } else { None };
        $request
            .headers_mut()
            .insert(header::AUTHORIZATION, $header);
        let mut source = None;
        let (parts, body) = $request.into_parts();
        let future = $service.call(Request::from_parts(
            parts,
            if !replays {
                ReplayBody::passthrough(body)
            } else {
                ReplayBody::capture_into(body, core.replay_body_limit, &mut source)
            },
        ));
        let plan = match (head, source) {
            (Some(head), Some(source)) => Plan::Replay(head, source),
            _ => Plan::NoReplay,
        };
        (State::First { future }, plan)
    }};
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    /// Never inlined, so that it works on the request where the caller passed it: inlined
    /// into `LengowAuth::call`, it took a 224-byte copy of the request first and read the
    /// URI back from that copy at once, before the copy's stores had landed.
    #[inline(never)]
    pub(crate) fn new(mut service: S, shared: &Shared, mut request: Request<B>) -> Self {
        let core: &Core = shared;
        // The token is looked up before the request is read: the caller has usually just
        // written the request, and while the first reads of it wait for those writes to land,
        // the lookup (which reads nothing of it) goes on. A request to another origin wastes
        // the lookup.
        let wall = core.cache.clock().wall();
        let sending = crate::local::token(core.id, core.cache.slot(), wall);
        if !core.origin.matches(request.uri()) {
            let future = service.call(request.map(ReplayBody::passthrough));
            return Self::with(State::First { future }, service, core, Plan::Passthrough);
        }
        match sending {
            Some(sending) => {
                let (state, plan) = send!(service, core, request, sending.header);
                let mut future = Self::with(state, service, core, plan);
                future.generation = sending.generation;
                future.unproven = sending.unproven;
                future
            }
            None => {
                tracing::trace!("no usable token: waiting for one");
                Counters::bump(&core.cache.counters.token_waits);
                let state = State::Token {
                    token: core.cache.token(),
                    request: Some(Box::new(request)),
                    core: Arc::clone(&shared.core),
                };
                Self::with(state, service, core, Plan::NoReplay)
            }
        }
    }

    /// The future in `state`; `generation` and `unproven` are set once a token is sent.
    #[inline]
    fn with(state: State<S::Future, B>, service: S, core: &Core, plan: Plan) -> Self {
        Self {
            state,
            service,
            layer: core.id,
            refresh_on: core.refresh_on,
            plan,
            generation: 0,
            unproven: false,
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<R>, BoxError>;

    /// The first response of a request that was not waiting for a token is handled inline;
    /// everything else (a wait for a token, a rejection, the replay) out of line.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let StateProj::First { future } = this.state.as_mut().project() {
            let response = ready!(future.poll(cx)).map_err(Into::into)?;
            let passes = matches!(this.plan, Plan::Passthrough)
                || !this.refresh_on.contains(response.status());
            if passes && !*this.unproven {
                return Poll::Ready(Ok(response));
            }
            if let Some(response) = Self::first_response(&mut this, response) {
                return Poll::Ready(Ok(response));
            }
        }
        Self::poll_states(this, cx)
    }
}

impl<S, B, R> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    /// Drives the states until the response is in.
    #[inline(never)]
    fn poll_states(
        mut this: Projection<'_, S, B>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<R>, BoxError>> {
        loop {
            match this.state.as_mut().project() {
                StateProj::Token {
                    token,
                    request,
                    core,
                } => {
                    let token = ready!(token.as_mut().poll(cx))?;
                    let mut request = *take(request);
                    let (state, plan) = send!(this.service, core, request, token.header.clone());
                    *this.plan = plan;
                    *this.generation = token.generation;
                    *this.unproven = token.unproven_forced();
                    this.state.set(state);
                }
                StateProj::First { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if let Some(response) = Self::first_response(&mut this, response) {
                        return Poll::Ready(Ok(response));
                    }
                }
                StateProj::Refresh {
                    token,
                    request,
                    core,
                } => {
                    let token = ready!(token.as_mut().poll(cx))?;
                    let mut request = take(request);
                    request
                        .headers_mut()
                        .insert(header::AUTHORIZATION, token.header.clone());
                    *this.generation = token.generation;
                    *this.unproven = token.unproven_forced();
                    let core = Arc::clone(core);
                    this.state.set(State::Ready {
                        request: Some(request),
                        core,
                    });
                }
                StateProj::Ready { request, core } => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    Counters::bump(&core.cache.counters.replays);
                    tracing::debug!(generation = *this.generation, "replaying the request");
                    let future = this.service.call(*take(request));
                    let core = Arc::clone(core);
                    this.state.set(State::Second { future, core });
                }
                StateProj::Second { future, core } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if this.refresh_on.contains(response.status()) {
                        Counters::bump(&core.cache.counters.rejected_after_replay);
                        tracing::debug!(
                            status = response.status().as_u16(),
                            "replay rejected too: returning the rejection"
                        );
                    } else if *this.unproven {
                        accepted(core, *this.generation);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }

    /// What follows the first response: `Some` to return it, `None` when the request was
    /// rejected and the state moved on to the refresh its replay waits for.
    #[inline(never)]
    fn first_response(
        this: &mut Projection<'_, S, B>,
        response: Response<R>,
    ) -> Option<Response<R>> {
        if matches!(this.plan, Plan::Passthrough) {
            return Some(response);
        }
        if !this.refresh_on.contains(response.status()) {
            if *this.unproven {
                if let Some(core) = crate::layer::core(*this.layer) {
                    accepted(&core, *this.generation);
                }
            }
            return Some(response);
        }
        let Some(core) = crate::layer::core(*this.layer) else {
            tracing::debug!(
                status = response.status().as_u16(),
                "request rejected after the last handle to the layer was dropped: \
                 not replayed"
            );
            return Some(response);
        };
        let (head, source) = match std::mem::replace(this.plan, Plan::NoReplay) {
            Plan::Passthrough => return Some(response),
            Plan::NoReplay => {
                skipped(
                    &core,
                    *this.generation,
                    "not kept: the body is over the replay limit, or the method over 64 KiB",
                );
                return Some(response);
            }
            Plan::Replay(head, source) => (head, source),
        };
        let Some(body) = source.replay() else {
            skipped(&core, *this.generation, "the body was not captured whole");
            return Some(response);
        };
        tracing::debug!(
            status = response.status().as_u16(),
            generation = *this.generation,
            "request rejected: refreshing the token to replay it"
        );
        drop(response);
        let token = core.cache.after_rejection(*this.generation);
        this.state.set(State::Refresh {
            token,
            request: Some(Box::new(head.into_request(body))),
            core,
        });
        None
    }
}

/// The value a state holds until it moves on; a state is polled past it only once.
fn take<T>(slot: &mut Option<T>) -> T {
    match slot.take() {
        Some(value) => value,
        None => panic!("ResponseFuture polled after it moved on"),
    }
}

/// The API accepted a token fetched after a rejection: it is proven, so the forced-refresh
/// floor resets.
fn accepted(core: &Core, generation: u64) {
    if let Some(token) = core.cache.slot().load_full() {
        if token.generation == generation {
            token.mark_accepted();
        }
    }
}

/// A rejection returned as is. The token is still refreshed (under the same rules as for a
/// replay) so that the next request goes out with a good one.
fn skipped(core: &Core, generation: u64, why: &'static str) {
    Counters::bump(&core.cache.counters.replays_skipped);
    tracing::debug!(why, "request rejected: not replayed");
    // The fetch runs in its own task; nobody needs to wait for it here.
    drop(core.cache.after_rejection(generation));
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
