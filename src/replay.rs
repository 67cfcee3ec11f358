//! [`ReplayBody`]: the body the inner service is handed, captured as it streams so that a
//! rejected request can be sent again byte for byte (trailers too), up to a limit.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::local::Pool;

/// A body as it was first sent, complete, ready to be sent again.
#[derive(Default)]
pub(crate) struct Captured {
    // Most bodies come in one chunk: it is kept inline, and the vector allocates only for
    // the second.
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    // Boxed: trailers are rare, and the body is moved with every request.
    trailers: Option<Box<HeaderMap>>,
}

/// Where a replay gets its body from.
pub(crate) enum Source {
    /// The body was empty: the replay is empty too.
    Empty,
    /// Filled once the first body has streamed to its end within the limit.
    Capture(Cell),
}

/// The cell a captured body is published in, shared by the body and the response future.
/// Most requests are not replayed, so the cell goes back to its thread's pool when the future
/// is done with it and the body has gone: the next request takes it instead of allocating.
pub(crate) struct Cell(Option<Arc<OnceLock<Captured>>>);

thread_local! {
    /// Empty cells, taken by the next captured request instead of allocating.
    static CELLS: Pool<Arc<OnceLock<Captured>>> = const { Pool::new() };
}

impl Cell {
    /// An empty cell, from this thread's pool when it has one.
    fn new() -> Self {
        let pooled = crate::local::take(&CELLS);
        Self(Some(pooled.unwrap_or_default()))
    }

    fn get(&self) -> Option<&Captured> {
        self.0.as_ref()?.get()
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        let Some(mut cell) = self.0.take() else {
            return;
        };
        // Still held by a body somewhere: it is freed with the last handle.
        let Some(captured) = Arc::get_mut(&mut cell) else {
            return;
        };
        // The kept chunks go now; the empty cell waits for the next request.
        drop(captured.take());
        crate::local::give(&CELLS, cell);
    }
}

impl Source {
    /// The body for the replay, if the first one was captured whole.
    pub(crate) fn replay<B>(&self) -> Option<ReplayBody<B>> {
        let state = match self {
            Source::Empty => State::Empty,
            Source::Capture(cell) => {
                let captured = cell.get()?;
                State::Replay {
                    chunks: captured
                        .first
                        .iter()
                        .chain(&captured.rest)
                        .cloned()
                        .collect::<Vec<_>>()
                        .into_iter(),
                    trailers: captured.trailers.clone(),
                }
            }
        };
        Some(ReplayBody { state })
    }
}

pin_project! {
    /// The request body the inner service receives.
    ///
    /// On the first send it streams the caller's body through unchanged, keeping a shared
    /// handle (not a copy) on each chunk while the total stays within `replay_body_limit`;
    /// a larger body is let go and streams through unbuffered. On a replay it yields the kept
    /// chunks and trailers again. It is `Send`, and `Unpin` when the caller's body is.
    pub struct ReplayBody<B> {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B> {
        Empty,
        Live {
            #[pin]
            body: B,
            // The chunks seen so far; `None` once over the limit, or when not capturing.
            kept: Option<Captured>,
            len: usize,
            limit: usize,
            done: Option<Arc<OnceLock<Captured>>>,
        },
        Replay {
            chunks: std::vec::IntoIter<Bytes>,
            trailers: Option<Box<HeaderMap>>,
        },
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for its first send, capturing it for a replay when `limit` allows; the
    /// [`Source`] is what the replay is made from. A body too large by its size hint is not
    /// captured at all.
    pub(crate) fn capture(body: B, limit: usize) -> (Self, Option<Source>) {
        if body.is_end_stream() {
            return (
                Self {
                    state: State::Empty,
                },
                Some(Source::Empty),
            );
        }
        if body.size_hint().lower() > limit as u64 {
            return (Self::passthrough(body), None);
        }
        let cell = Cell::new();
        let state = State::Live {
            body,
            kept: Some(Captured::default()),
            len: 0,
            limit,
            done: cell.0.clone(),
        };
        (Self { state }, Some(Source::Capture(cell)))
    }

    /// Wraps `body` to stream through without being kept.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            state: State::Live {
                body,
                kept: None,
                len: 0,
                limit: 0,
                done: None,
            },
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().state.project() {
            StateProj::Empty => Poll::Ready(None),
            StateProj::Replay { chunks, trailers } => match chunks.next() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t)))),
            },
            StateProj::Live {
                mut body,
                kept,
                len,
                limit,
                done,
            } => {
                let frame = match ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        finish(kept, done);
                        return Poll::Ready(None);
                    }
                    Some(Err(e)) => {
                        // A body that failed cannot be replayed.
                        *kept = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(Ok(frame)) => frame,
                };
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        *len += bytes.len();
                        if *len > *limit {
                            if kept.take().is_some() {
                                tracing::trace!(
                                    limit = *limit,
                                    "body over the replay limit: streaming it through"
                                );
                            }
                        } else if let Some(kept) = kept.as_mut() {
                            match kept.first {
                                None => kept.first = Some(bytes.clone()),
                                Some(_) => kept.rest.push(bytes.clone()),
                            }
                        }
                        Frame::data(bytes)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            if let Some(kept) = kept.as_mut() {
                                kept.trailers = Some(Box::new(trailers.clone()));
                            }
                            Frame::trailers(trailers)
                        }
                        // A frame kind this crate does not know cannot be replayed.
                        Err(_) => {
                            *kept = None;
                            return Poll::Ready(None);
                        }
                    },
                };
                // hyper stops polling once the body says it has ended.
                if body.is_end_stream() {
                    finish(kept, done);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Empty => true,
            State::Live { body, .. } => body.is_end_stream(),
            State::Replay { chunks, trailers } => chunks.len() == 0 && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Empty => SizeHint::with_exact(0),
            State::Live { body, .. } => body.size_hint(),
            State::Replay { chunks, .. } => {
                SizeHint::with_exact(chunks.as_slice().iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}

/// Publishes the kept body once it has streamed whole.
fn finish(kept: &mut Option<Captured>, done: &mut Option<Arc<OnceLock<Captured>>>) {
    if let (Some(captured), Some(cell)) = (kept.take(), done.take()) {
        let _ = cell.set(captured);
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Empty => "empty",
            State::Live { kept: Some(_), .. } => "first send, kept for replay",
            State::Live { kept: None, .. } => "streaming through",
            State::Replay { .. } => "replay",
        };
        f.debug_struct("ReplayBody").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// A body that yields scripted frames, optionally failing after them, and says it has
    /// ended as soon as its last frame is out (as `Full` does, so hyper stops polling).
    struct Scripted {
        frames: VecDeque<Frame<Bytes>>,
        fail: bool,
        tell_end: bool,
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None if self.fail => {
                    self.fail = false;
                    Poll::Ready(Some(Err("broken pipe")))
                }
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.tell_end && self.frames.is_empty() && !self.fail
        }
    }

    /// Drains a body the way hyper does: stops at an error or once it says it has ended.
    fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> (Vec<u8>, Option<HeaderMap>, bool) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut data, mut trailers) = (Vec::new(), None);
        while !body.is_end_stream() {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(_))) => return (data, trailers, true),
                Poll::Ready(None) => break,
                Poll::Pending => unreachable!("scripted bodies are always ready"),
            }
        }
        (data, trailers, false)
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("abc"));
        t
    }

    proptest! {
        #[test]
        fn replays_byte_for_byte_within_the_limit_and_never_beyond(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..12),
            limit in 0usize..4000,
            with_trailers in any::<bool>(),
            fail in any::<bool>(),
            tell_end in any::<bool>(),
        ) {
            let original: Vec<u8> = chunks.concat();
            let mut frames: VecDeque<_> =
                chunks.iter().map(|c| Frame::data(Bytes::from(c.clone()))).collect();
            if with_trailers {
                frames.push_back(Frame::trailers(trailers()));
            }
            let body = Scripted { frames, fail, tell_end };
            let (first, source) = ReplayBody::capture(body, limit);
            let (sent, sent_trailers, failed) = drain(Box::pin(first));
            prop_assert_eq!(&sent, &original);
            prop_assert_eq!(failed, fail);
            prop_assert_eq!(sent_trailers.is_some(), with_trailers);

            let replay = source.as_ref().and_then(|s| s.replay::<Scripted>());
            let empty = chunks.is_empty() && !with_trailers && !fail && tell_end;
            let replayable = !fail && original.len() <= limit;
            prop_assert_eq!(replay.is_some(), replayable || empty);
            if let Some(replay) = replay {
                prop_assert_eq!(replay.size_hint().exact(), Some(original.len() as u64));
                let (again, again_trailers, failed) = drain(replay);
                prop_assert!(!failed);
                prop_assert_eq!(again, original);
                prop_assert_eq!(again_trailers.is_some(), with_trailers);
            }
        }
    }

    #[test]
    fn a_body_over_the_limit_by_its_size_hint_is_not_kept_at_all() {
        let body = http_body_util::Full::new(Bytes::from(vec![7u8; 100]));
        let (first, source) = ReplayBody::capture(body, 99);
        assert!(source.is_none());
        assert_eq!(drain(first).0.len(), 100);
    }

    #[test]
    fn bytes_are_shared_not_copied() {
        let chunk = Bytes::from(vec![1u8; 1024]);
        let body = http_body_util::Full::new(chunk.clone());
        let (first, source) = ReplayBody::capture(body, 4096);
        drain(first);
        let replay = source
            .unwrap()
            .replay::<http_body_util::Full<Bytes>>()
            .unwrap();
        let waker = std::task::Waker::noop();
        let mut replay = Box::pin(replay);
        let Poll::Ready(Some(Ok(frame))) =
            replay.as_mut().poll_frame(&mut Context::from_waker(waker))
        else {
            panic!("a data frame")
        };
        assert_eq!(frame.into_data().unwrap().as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn an_empty_body_replays_empty() {
        let (first, source) = ReplayBody::capture(http_body_util::Empty::<Bytes>::new(), 0);
        assert!(first.is_end_stream());
        let replay = source.unwrap().replay::<http_body_util::Empty<Bytes>>();
        assert!(replay.is_some_and(|r| r.is_end_stream()));
    }

    fn cell_of(source: &Option<Source>) -> *const OnceLock<Captured> {
        match source {
            Some(Source::Capture(cell)) => Arc::as_ptr(cell.0.as_ref().unwrap()),
            _ => panic!("a body within the limit is captured"),
        }
    }

    fn replayed(source: &Option<Source>) -> Option<Vec<u8>> {
        let body = source.as_ref()?.replay::<http_body_util::Full<Bytes>>()?;
        Some(drain(body).0)
    }

    #[test]
    fn a_cell_is_reused_empty_and_only_once_its_body_is_gone() {
        let full = |s: &'static str| http_body_util::Full::new(Bytes::from_static(s.as_bytes()));
        let (body, first) = ReplayBody::capture(full("first"), 64);
        let cell = cell_of(&first);
        drain(body);
        assert_eq!(replayed(&first).as_deref(), Some(&b"first"[..]));
        drop(first);

        // The same cell, empty: nothing to replay until this body has ended.
        let (body, second) = ReplayBody::capture(full("second"), 64);
        assert_eq!(cell_of(&second), cell);
        assert_eq!(replayed(&second), None);
        // Dropped while its body still streams: the cell stays with the body.
        drop(second);
        let (third_body, third) = ReplayBody::capture(full("third"), 64);
        assert_ne!(cell_of(&third), cell);
        drain(body);
        drain(third_body);
        assert_eq!(replayed(&third).as_deref(), Some(&b"third"[..]));
    }
}
