//! [`LengowAuth`]: the service that injects the token, keeps what a replay needs and hands
//! the inner service a replayable body.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::error::BoxError;
use crate::future::ResponseFuture;
use crate::replay::ReplayBody;
use crate::shared::Handle;

/// Authenticates every request to the Lengow origin; built by
/// [`LengowAuthLayer`](crate::LengowAuthLayer).
///
/// A request to the configured origin (or with a path-only URI) gets `Authorization: <token>`;
/// a request to any other origin passes through untouched. A response whose status is in
/// `refresh_on` is answered by one refresh and one replay. Errors are `tower::BoxError`s holding
/// the inner service's error or a [`lengow_auth::Error`](crate::Error).
///
/// A response future keeps what it needs to finish, replay included, after the last layer
/// and service handle is dropped (as `oneshot` on the only handle does); the background
/// refresher stops with that last handle.
pub struct LengowAuth<S> {
    inner: S,
    handle: Arc<Handle>,
}

impl<S> LengowAuth<S> {
    pub(crate) fn new(inner: S, handle: Arc<Handle>) -> Self {
        Self { inner, handle }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for LengowAuth<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LengowAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LengowAuth")
            .field("inner", &self.inner)
            .field("token", &crate::token::Redacted)
            .finish()
    }
}

impl<S, B, R> Service<Request<B>> for LengowAuth<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Keep the service that was driven ready; the clone waits for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(ready, Arc::clone(&self.handle.0), request)
    }
}
