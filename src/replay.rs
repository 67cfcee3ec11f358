//! [`ReplayBody`]: the body the inner service is handed, kept as it streams so that a
//! rejected request can be sent again byte for byte (trailers too), up to a limit.
//!
//! The first send and its replay share one state behind an `Arc<Mutex<…>>`: the chunks read
//! so far (shared handles, never copies), the trailers, and the rest of the caller's body.
//! The first send holds the state from the start; when it is dropped, the state goes to the
//! shared slot, and the replay takes it on its first poll: it sends what was kept,
//! then goes on reading the caller's body where the first send stopped. That is how a body
//! the server answered before reading (an early 401), or one whose exact size let the client
//! stop before it reported its end, is still replayed whole.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::BoxError;

pin_project! {
    /// The request body the inner service receives.
    ///
    /// On the first send it streams the caller's body through unchanged, keeping a shared
    /// handle on each chunk while the total stays within `replay_body_limit`; a larger body
    /// lets go of what it kept and streams through unbuffered. On a replay it yields the kept
    /// chunks and trailers again, then whatever of the caller's body the first send left
    /// unread.
    ///
    /// It is `Default` where `B` is, so that tower-http's `FollowRedirect` can sit inside
    /// the layer.
    ///
    /// # Errors
    ///
    /// The caller's body's errors, boxed. A replay whose body turns out not to be replayable
    /// after all (it went over the limit while the first send was still streaming it when
    /// the rejection came) fails rather than send a truncated body.
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        /// Nothing to send, nothing to keep.
        Empty,
        /// Streams through without being kept: another origin, no replays, or a body too
        /// large by its size hint.
        Passthrough {
            #[pin]
            body: B,
        },
        /// The first send or the replay of a kept body.
        Kept {
            copy: Attempt<B>,
        },
    }
}

/// One of the two sends of a kept body.
struct Attempt<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// The state, while this copy holds it: the first send from the start, the replay from
    /// its first poll; either until its drop.
    state: Option<State<B>>,
    /// This copy is the replay: it yields the kept chunks before reading on.
    replay: bool,
    /// How many kept chunks this copy has yielded.
    sent_chunks: usize,
    sent_trailers: bool,
}

/// What the two sends share.
pub(crate) struct Shared<B> {
    /// `None` while a copy holds it.
    state: Option<State<B>>,
    /// The replay waiting for the first send to let go of the state.
    waiting: Option<Waker>,
    /// The body went over the limit or failed: it cannot be replayed.
    capped: bool,
    /// The caller's body's size hint before anything was read.
    size_hint: SizeHint,
}

struct State<B> {
    /// The chunks kept so far: shared handles on what was sent.
    kept: Vec<Bytes>,
    kept_len: usize,
    trailers: Option<HeaderMap>,
    /// What is left of the caller's body; `None` once it has ended.
    rest: Option<Pin<Box<B>>>,
    limit: usize,
}

/// What the response future keeps to make the replay body: empty, or the shared state.
pub(crate) enum Replay<B> {
    Empty,
    Kept(Arc<Mutex<Shared<B>>>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under this lock is one step: a panic cannot leave it half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for its first send, keeping up to `limit` bytes of it for a replay.
    /// `None` for the replay means the body is too large by its size hint to be kept.
    pub(crate) fn keep(body: B, limit: usize) -> (Self, Option<Replay<B>>) {
        if body.is_end_stream() {
            return (Self { kind: Kind::Empty }, Some(Replay::Empty));
        }
        let size_hint = body.size_hint();
        if size_hint.lower() > limit as u64 {
            return (Self::passthrough(body), None);
        }
        let shared = Arc::new(Mutex::new(Shared {
            state: None,
            waiting: None,
            capped: false,
            size_hint,
        }));
        // The first send holds the state from the start: it hands it over when dropped.
        let state = State {
            kept: Vec::new(),
            kept_len: 0,
            trailers: None,
            rest: Some(Box::pin(body)),
            limit,
        };
        let first = Attempt::new(Arc::clone(&shared), Some(state));
        (
            Self {
                kind: Kind::Kept { copy: first },
            },
            Some(Replay::Kept(shared)),
        )
    }

    /// Wraps `body` to stream through without being kept.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }
}

impl<B> Replay<B> {
    /// The body for the replay, unless the first send went over the limit or failed.
    pub(crate) fn body(&self) -> Option<ReplayBody<B>> {
        let kind = match self {
            Replay::Empty => Kind::Empty,
            Replay::Kept(shared) => {
                if lock(shared).capped {
                    return None;
                }
                Kind::Kept {
                    copy: Attempt::new(Arc::clone(shared), None),
                }
            }
        };
        Some(ReplayBody { kind })
    }
}

impl<B> Attempt<B> {
    /// The first send, holding the state, or the replay, which takes it on its first poll.
    fn new(shared: Arc<Mutex<Shared<B>>>, state: Option<State<B>>) -> Self {
        Self {
            shared,
            replay: state.is_none(),
            state,
            sent_chunks: 0,
            sent_trailers: false,
        }
    }
}

impl<B> Attempt<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Attempt {
            shared,
            state,
            replay,
            sent_chunks,
            sent_trailers,
        } = self;
        if state.is_none() {
            let mut shared = lock(shared);
            if *replay && shared.capped {
                return Poll::Ready(Some(Err(NotReplayable.into())));
            }
            match shared.state.take() {
                Some(taken) => *state = Some(taken),
                None => {
                    // The first send still holds it: it wakes this replay as it lets go.
                    shared.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let Some(state) = state.as_mut() else {
            return Poll::Pending;
        };
        if *replay {
            if let Some(chunk) = state.kept.get(*sent_chunks) {
                *sent_chunks += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
            }
        }
        let Some(rest) = state.rest.as_mut() else {
            // The caller's body has ended: a replay ends with the kept trailers.
            if *replay && !*sent_trailers {
                *sent_trailers = true;
                if let Some(trailers) = &state.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                }
            }
            return Poll::Ready(None);
        };
        let frame = match ready!(rest.as_mut().poll_frame(cx)) {
            None => {
                state.rest = None;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                state.rest = None;
                state.cap(shared);
                return Poll::Ready(Some(Err(e.into())));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let chunk = data.copy_to_bytes(data.remaining());
                state.keep(&chunk, shared);
                // This copy has now sent every kept chunk.
                *sent_chunks = state.kept.len();
                Frame::data(chunk)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    state.trailers = Some(trailers.clone());
                    *sent_trailers = true;
                    Frame::trailers(trailers)
                }
                // A frame kind this crate does not know can be neither passed on nor replayed.
                Err(_) => {
                    state.cap(shared);
                    return Poll::Ready(None);
                }
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<B> Attempt<B> {
    fn is_end_stream(&self) -> bool {
        match &self.state {
            Some(state) => {
                state.rest.is_none()
                    && (!self.replay
                        || (self.sent_chunks == state.kept.len()
                            && (self.sent_trailers || state.trailers.is_none())))
            }
            None => false,
        }
    }
}

impl<B: Body> Attempt<B> {
    fn size_hint(&self) -> SizeHint {
        let Some(state) = &self.state else {
            // A replay not started: the whole body is still to come.
            return lock(&self.shared).size_hint;
        };
        let unsent = state.kept.get(self.sent_chunks..).unwrap_or_default();
        let kept: u64 = match self.replay {
            true => unsent.iter().map(|c| c.len() as u64).sum(),
            false => 0,
        };
        match &state.rest {
            None => SizeHint::with_exact(kept),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + kept);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + kept);
                }
                hint
            }
        }
    }
}

impl<B> State<B> {
    /// Keeps a chunk of the first send while the body stays within the limit.
    fn keep(&mut self, chunk: &Bytes, shared: &Mutex<Shared<B>>) {
        if self.kept_len > self.limit {
            return;
        }
        self.kept_len += chunk.len();
        if self.kept_len <= self.limit {
            self.kept.push(chunk.clone());
        } else {
            tracing::trace!(
                limit = self.limit,
                "body over the replay limit: streaming it through"
            );
            self.cap(shared);
        }
    }

    /// Marks the body as not replayable and lets go of what was kept.
    fn cap(&mut self, shared: &Mutex<Shared<B>>) {
        self.kept = Vec::new();
        self.kept_len = usize::MAX;
        lock(shared).capped = true;
    }
}

impl<B> Drop for Attempt<B> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let mut shared = lock(&self.shared);
            shared.state = Some(state);
            if let Some(waker) = shared.waiting.take() {
                waker.wake();
            }
        }
    }
}

/// The error a replay's body fails with when it went over the limit after the replay was
/// decided: better no request than a truncated one.
#[derive(Debug)]
struct NotReplayable;

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body went over the replay limit: it cannot be sent again")
    }
}

impl std::error::Error for NotReplayable {}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Passthrough { body } => match body.poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                ))),
            },
            KindProj::Kept { copy } => copy.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Kept { copy } => copy.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Kept { copy } => copy.size_hint(),
        }
    }
}

impl<B: Default> Default for ReplayBody<B> {
    fn default() -> Self {
        Self {
            kind: Kind::Passthrough { body: B::default() },
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Passthrough { .. } => "passthrough",
            Kind::Kept { copy } if copy.replay => "replay",
            Kind::Kept { .. } => "kept",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests;
