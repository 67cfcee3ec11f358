//! [`ReplayBody`]: the body the inner service is handed, captured as it streams so that a
//! rejected request can be sent again byte for byte (trailers too), up to a limit.
//!
//! The body and the response future meet in a [`Slot`]: the body writes what it streams into
//! it under the slot's lock, the future reads it back after a rejection. Slots are recycled,
//! never freed, and neither side counts references: taking a slot and letting it go is a
//! load and a store, and a body the inner service never reads makes no atomic
//! read-modify-write at all.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::local::Pool;

/// The most chunk handles a slot's list keeps room for once its request is done; a body of
/// more chunks leaves a list that is freed rather than kept.
const KEPT_CHUNKS_MAX: usize = 16;

/// Where a body's first send is kept for its replay.
///
/// A slot belongs to one request at a time, named by `generation`: the request's response
/// future takes the slot, and lets it go by moving `generation` on. Its body may outlive the
/// future and still be streaming when the slot has moved on to another request; it writes
/// only under the lock, and only while `generation` is still its own, so what a future reads
/// under the lock with its own generation was written by its own body.
pub(crate) struct Slot {
    generation: AtomicU64,
    /// `kept` holds chunks shared with the caller's buffers, or trailers: memory that must
    /// not outlive the request. Whoever lets the slot go then empties it.
    retains: AtomicBool,
    kept: Mutex<Kept>,
}

/// A body as far as it has been kept.
#[derive(Default)]
struct Kept {
    /// The request the bytes below are from.
    generation: u64,
    /// The body streamed to its end within the limit.
    complete: bool,
    /// The body's chunks, by shared handle: never copied.
    shared: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Kept {
    /// Empties what another request left, keeping the chunk list's room.
    fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.complete = false;
        self.let_go();
    }

    /// Lets go of the chunks and trailers, keeping the room of a list of usual length.
    fn let_go(&mut self) {
        if self.shared.capacity() > KEPT_CHUNKS_MAX {
            self.shared = Vec::new();
        } else {
            self.shared.clear();
        }
        self.trailers = None;
    }
}

/// Slots no thread's pool holds: given back to a full pool, or left by a thread that ended.
/// Threads take from it and give to it `SLOT_BATCH` or more at a time, so that requests made
/// on one thread and done on another (a task spawned elsewhere) lock it once per batch.
static SPARE: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

/// The most free slots a thread's pool holds.
const SLOT_POOL: usize = 256;
/// How many slots a thread takes from the spare ones (or makes) when its pool is empty.
const SLOT_BATCH: usize = 32;

thread_local! {
    /// Free slots, taken by the next request with a body.
    static SLOTS: Pool<&'static Slot> = const { Pool::retiring(SLOT_POOL, spare) };
}

fn spare(slots: Vec<&'static Slot>) {
    #[cfg(test)]
    tests::SPARE_LOCKS.fetch_add(1, Ordering::Relaxed);
    lock(&SPARE).extend(slots);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // What is under these locks is consistent at every step: a panic cannot leave it half
    // written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slot {
    /// A free slot, and the generation it is at.
    #[inline]
    fn take() -> (&'static Slot, u64) {
        let slot = crate::local::take(&SLOTS).unwrap_or_else(Slot::refill);
        // Only the slot's owner moves its generation on, and this thread owns it now.
        (slot, slot.generation.load(Ordering::Relaxed))
    }

    /// Fills this thread's empty pool with a batch of spare slots, or of new ones, and takes
    /// one. A new slot lives as long as the process, so there are as many as there were ever
    /// requests with a body in flight at once (rounded up to a batch): about 100 bytes each,
    /// and the room of a list of up to `KEPT_CHUNKS_MAX` chunk handles.
    #[cold]
    fn refill() -> &'static Slot {
        #[cfg(test)]
        tests::SPARE_LOCKS.fetch_add(1, Ordering::Relaxed);
        let mut batch = {
            let mut spare = lock(&SPARE);
            let from = spare.len().saturating_sub(SLOT_BATCH);
            spare.split_off(from)
        };
        let slot = match batch.pop() {
            Some(slot) => slot,
            None => {
                #[cfg(test)]
                tests::SLOTS_MADE.fetch_add(SLOT_BATCH, Ordering::Relaxed);
                let made: &'static [Slot] =
                    Box::leak((0..SLOT_BATCH).map(|_| Slot::new()).collect());
                batch.extend(&made[1..]);
                &made[0]
            }
        };
        // The pool gives a slot back only when it is gone (this thread is ending): those go
        // back to the spare ones, together.
        let unpooled: Vec<_> = batch
            .into_iter()
            .filter_map(|extra| crate::local::give(&SLOTS, extra))
            .collect();
        if !unpooled.is_empty() {
            spare(unpooled);
        }
        slot
    }

    fn new() -> Self {
        Slot {
            generation: AtomicU64::new(1),
            retains: AtomicBool::new(false),
            kept: Mutex::default(),
        }
    }

    /// `kept`, if the slot still belongs to request `generation`.
    fn kept(&self, generation: u64) -> Option<MutexGuard<'_, Kept>> {
        let kept = lock(&self.kept);
        (self.generation.load(Ordering::Acquire) == generation).then_some(kept)
    }
}

/// Where a replay gets its body from.
pub(crate) enum Source {
    /// The body was empty: the replay is empty too.
    Empty,
    /// What the body keeps in its slot as it streams.
    Capture(Ticket),
}

/// A response future's hold on a slot; the slot moves on to the next request when it drops.
pub(crate) struct Ticket {
    slot: &'static Slot,
    generation: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let slot = self.slot;
        if slot.retains.load(Ordering::Acquire) {
            let mut kept = lock(&slot.kept);
            if kept.generation <= self.generation {
                kept.let_go();
                slot.retains.store(false, Ordering::Relaxed);
            }
        }
        slot.generation
            .store(self.generation + 1, Ordering::Release);
        if let Some(slot) = crate::local::give(&SLOTS, slot) {
            spare(vec![slot]);
        }
    }
}

impl Source {
    /// The body for the replay, if the first one was kept whole: the same chunks, shared.
    pub(crate) fn replay<B>(&self) -> Option<ReplayBody<B>> {
        let state = match self {
            Source::Empty => State::Empty,
            Source::Capture(ticket) => {
                let kept = ticket.slot.kept(ticket.generation)?;
                if kept.generation != ticket.generation || !kept.complete {
                    return None;
                }
                State::Replay {
                    chunks: kept.shared.clone().into_iter(),
                    trailers: kept.trailers.clone().map(Box::new),
                }
            }
        };
        Some(ReplayBody { state })
    }
}

/// A body's hold on its request's slot while it is being kept.
struct Keep {
    slot: &'static Slot,
    generation: u64,
    len: usize,
    limit: usize,
}

impl Keep {
    /// Adds a frame of the body to the slot, and whether the body has ended with it; `false`
    /// when the frame is not kept (the body went over the limit, or the slot has moved on as
    /// its future is gone).
    fn add(&mut self, frame: Option<&Frame<Bytes>>, end: bool) -> bool {
        let data = frame.and_then(Frame::data_ref);
        if let Some(data) = data {
            self.len += data.len();
            if self.len > self.limit {
                tracing::trace!(
                    limit = self.limit,
                    "body over the replay limit: streaming it through"
                );
                return false;
            }
        }
        let Some(mut kept) = self.slot.kept(self.generation) else {
            return false;
        };
        if kept.generation != self.generation {
            kept.reset(self.generation);
        }
        if let Some(data) = data {
            kept.shared.push(data.clone());
            self.slot.retains.store(true, Ordering::Release);
        }
        if let Some(trailers) = frame.and_then(Frame::trailers_ref) {
            kept.trailers = Some(trailers.clone());
            self.slot.retains.store(true, Ordering::Release);
        }
        kept.complete = end;
        true
    }

    /// Stops keeping and lets go of what was kept: the body cannot be replayed.
    fn abandon(keep: &mut Option<Self>) {
        let Some(keeping) = keep.take() else {
            return;
        };
        if let Some(mut kept) = keeping.slot.kept(keeping.generation) {
            if kept.generation == keeping.generation {
                kept.reset(keeping.generation);
            }
        }
    }
}

pin_project! {
    /// The request body the inner service receives.
    ///
    /// On the first send it streams the caller's body through unchanged, keeping a shared
    /// handle on each chunk (never a copy) while the total stays within
    /// `replay_body_limit`; a larger body is let go and streams through
    /// unbuffered. On a replay it yields the kept chunks and trailers again. It is `Send`,
    /// and `Unpin` when the caller's body is.
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
            // `None` once over the limit, or when not keeping.
            keep: Option<Keep>,
        },
        Replay {
            chunks: std::vec::IntoIter<Bytes>,
            trailers: Option<Box<HeaderMap>>,
        },
    }
}

impl<B: Body> ReplayBody<B> {
    /// [`capture_into`](Self::capture_into), with the source handed back beside the body.
    #[cfg(test)]
    pub(crate) fn capture(body: B, limit: usize) -> (Self, Option<Source>) {
        let mut source = None;
        let body = Self::capture_into(body, limit, &mut source);
        (body, source)
    }

    /// Wraps `body` for its first send, capturing it for a replay when `limit` allows, and
    /// writes to `source` what the replay is made from (`None` is left for a body too large
    /// by its size hint, which is not captured at all).
    ///
    /// The body alone is returned, so that it is built where the request takes it: returned
    /// in a pair with its source, it was written to memory and read back at once, before the
    /// writes had landed. Always inlined: called, it wrote the wrapper field by field and the
    /// caller moved it on in wider loads, which waited for those writes the same way.
    #[inline(always)]
    pub(crate) fn capture_into(body: B, limit: usize, source: &mut Option<Source>) -> Self {
        if body.is_end_stream() {
            *source = Some(Source::Empty);
            return Self {
                state: State::Empty,
            };
        }
        if body.size_hint().lower() > limit as u64 {
            return Self::passthrough(body);
        }
        let (slot, generation) = Slot::take();
        *source = Some(Source::Capture(Ticket { slot, generation }));
        Self {
            state: State::Live {
                body,
                keep: Some(Keep {
                    slot,
                    generation,
                    len: 0,
                    limit,
                }),
            },
        }
    }

    /// Wraps `body` to stream through without being kept.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            state: State::Live { body, keep: None },
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
            StateProj::Live { mut body, keep } => {
                let frame = match ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        if let Some(mut keeping) = keep.take() {
                            keeping.add(None, true);
                        }
                        return Poll::Ready(None);
                    }
                    // A body that failed cannot be replayed.
                    Some(Err(e)) => {
                        Keep::abandon(keep);
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(Ok(frame)) => frame,
                };
                let frame = match frame.into_data() {
                    Ok(mut data) => Frame::data(data.copy_to_bytes(data.remaining())),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => Frame::trailers(trailers),
                        // A frame kind this crate does not know cannot be replayed.
                        Err(_) => {
                            Keep::abandon(keep);
                            return Poll::Ready(None);
                        }
                    },
                };
                // hyper stops polling once the body says it has ended.
                let end = body.is_end_stream();
                if let Some(keeping) = keep {
                    if !keeping.add(Some(&frame), end) {
                        Keep::abandon(keep);
                    }
                }
                if end {
                    *keep = None;
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

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Empty => "empty",
            State::Live { keep: Some(_), .. } => "first send, kept for replay",
            State::Live { keep: None, .. } => "streaming through",
            State::Replay { .. } => "replay",
        };
        f.debug_struct("ReplayBody").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    use proptest::prelude::*;

    use super::*;

    /// Times the spare slots were locked, and slots made, by every test of the process.
    pub(super) static SPARE_LOCKS: AtomicUsize = AtomicUsize::new(0);
    pub(super) static SLOTS_MADE: AtomicUsize = AtomicUsize::new(0);

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

    fn first_chunk<B: Body<Data = Bytes> + Unpin>(body: B) -> Bytes {
        let mut body = Box::pin(body);
        let waker = std::task::Waker::noop();
        let Poll::Ready(Some(Ok(frame))) =
            body.as_mut().poll_frame(&mut Context::from_waker(waker))
        else {
            panic!("a data frame")
        };
        frame.into_data().unwrap()
    }

    #[test]
    fn every_chunk_is_shared_not_copied() {
        let from_vec = |len: usize| Bytes::from(vec![1u8; len]);
        let chunks = [
            from_vec(1),
            from_vec(1024),
            from_vec(64 * 1024),
            Bytes::from_static(b"a static chunk"),
        ];
        for chunk in chunks {
            let body = http_body_util::Full::new(chunk.clone());
            let (first, source) = ReplayBody::capture(body, 64 * 1024);
            assert_eq!(first_chunk(first).as_ptr(), chunk.as_ptr(), "sent as it is");
            let replay = source
                .unwrap()
                .replay::<http_body_util::Full<Bytes>>()
                .unwrap();
            let again = first_chunk(replay);
            assert_eq!(again, chunk);
            assert_eq!(again.as_ptr(), chunk.as_ptr(), "replayed as it is");
        }
    }

    #[test]
    fn an_empty_body_replays_empty() {
        let (first, source) = ReplayBody::capture(http_body_util::Empty::<Bytes>::new(), 0);
        assert!(first.is_end_stream());
        let replay = source.unwrap().replay::<http_body_util::Empty<Bytes>>();
        assert!(replay.is_some_and(|r| r.is_end_stream()));
    }

    fn slot_of(source: &Option<Source>) -> *const Slot {
        match source {
            Some(Source::Capture(ticket)) => ticket.slot,
            _ => panic!("a body within the limit is captured"),
        }
    }

    fn replayed(source: &Option<Source>) -> Option<Vec<u8>> {
        let body = source.as_ref()?.replay::<http_body_util::Full<Bytes>>()?;
        Some(drain(body).0)
    }

    fn full(s: &'static str) -> http_body_util::Full<Bytes> {
        http_body_util::Full::new(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn a_slot_moves_on_when_its_future_is_done_and_a_late_body_writes_nothing() {
        let (body, first) = ReplayBody::capture(full("first"), 64);
        let slot = slot_of(&first);
        drain(body);
        assert_eq!(replayed(&first).as_deref(), Some(&b"first"[..]));
        drop(first);

        // The same slot, for the next request: nothing to replay until its body has ended.
        let (body, second) = ReplayBody::capture(full("second"), 64);
        assert_eq!(slot_of(&second), slot);
        assert_eq!(replayed(&second), None);
        // Its future is done while the body still streams: the slot moves on at once.
        drop(second);
        let (third_body, third) = ReplayBody::capture(full("third"), 64);
        assert_eq!(slot_of(&third), slot);
        drain(third_body);
        assert_eq!(replayed(&third).as_deref(), Some(&b"third"[..]));
        // The second body ends late, after the third: it must not overwrite it.
        drain(body);
        assert_eq!(replayed(&third).as_deref(), Some(&b"third"[..]));
    }

    #[test]
    fn shared_chunks_and_trailers_are_let_go_with_the_future() {
        let chunk = Bytes::from(vec![9u8; 100]);
        let mut frames = VecDeque::from([Frame::data(chunk.clone())]);
        frames.push_back(Frame::trailers(trailers()));
        let body = Scripted {
            frames,
            fail: false,
            tell_end: true,
        };
        let (first, source) = ReplayBody::capture(body, 1024);
        drain(Box::pin(first));
        assert!(!chunk.is_unique(), "the slot holds it");
        drop(source);
        assert!(chunk.is_unique(), "let go with the future");
    }

    #[test]
    fn a_slot_keeps_the_room_of_a_usual_chunk_list_and_frees_a_long_one() {
        let chunked = |n: usize| Scripted {
            frames: (0..n)
                .map(|_| Frame::data(Bytes::from_static(b"x")))
                .collect(),
            fail: false,
            tell_end: true,
        };
        for (chunks, kept) in [(KEPT_CHUNKS_MAX, true), (KEPT_CHUNKS_MAX * 4, false)] {
            let (body, source) = ReplayBody::capture(chunked(chunks), 1024);
            let Some(Source::Capture(Ticket { slot, .. })) = &source else {
                panic!("a body within the limit is captured")
            };
            let slot: &'static Slot = slot;
            assert_eq!(drain(body).0.len(), chunks);
            assert_eq!(replayed(&source).map(|r| r.len()), Some(chunks));
            drop(source);
            let kept_room = lock(&slot.kept).shared.capacity();
            assert!(lock(&slot.kept).shared.is_empty(), "chunks let go");
            assert_eq!(
                kept_room >= chunks,
                kept,
                "{chunks} chunks: room {kept_room}"
            );
            assert!(
                kept_room <= KEPT_CHUNKS_MAX,
                "{chunks} chunks: room {kept_room}"
            );
        }
    }

    #[test]
    fn slots_are_recycled_across_threads_and_each_replay_is_its_own_body() {
        // Bodies are drained on another thread, some only after their future is gone, while
        // this thread keeps taking slots again: every replay must be the body it was made for.
        let (to_drain, bodies) = mpsc::channel::<(ReplayBody<_>, mpsc::Sender<()>)>();
        let drainer = std::thread::spawn(move || {
            for (body, done) in bodies {
                drain(Box::pin(body));
                let _ = done.send(());
            }
        });
        let drain_there = |body| {
            let (done, drained) = mpsc::channel();
            to_drain.send((body, done)).unwrap();
            drained.recv().unwrap();
        };
        let mut late = None;
        let mut checked = 0;
        for i in 0..2000u32 {
            let text = format!("request {i}").repeat(1 + (i as usize % 5) * 200);
            let body = http_body_util::Full::new(Bytes::from(text.clone()));
            let (body, source) = ReplayBody::capture(body, 64 * 1024);
            if i % 3 == 0 {
                // Its future is gone before its body streams: the slot moves on under it.
                drop(source);
                late = Some(body);
                continue;
            }
            drain_there(body);
            // The late body streams after the next request's body has ended.
            if let Some(body) = late.take() {
                drain_there(body);
            }
            assert_eq!(replayed(&source).as_deref(), Some(text.as_bytes()), "{i}");
            checked += 1;
        }
        drop(to_drain);
        drainer.join().unwrap();
        assert_eq!(checked, 1333);
    }

    #[test]
    fn slots_taken_on_one_thread_and_let_go_on_another_pass_in_batches() {
        // Every request is made here and done on another thread (as a task spawned elsewhere
        // is): this thread's pool empties and the other's fills, so slots go round through
        // the spare ones. They must go in batches, and be reused, not made again.
        const REQUESTS: usize = 20_000;
        let (done, sources) = mpsc::sync_channel::<Option<Source>>(64);
        let other = std::thread::spawn(move || sources.into_iter().for_each(drop));
        let locks = SPARE_LOCKS.load(Ordering::Relaxed);
        let made = SLOTS_MADE.load(Ordering::Relaxed);
        for _ in 0..REQUESTS {
            let (body, source) = ReplayBody::capture(full("x"), 64);
            drop(body);
            done.send(source).unwrap();
        }
        drop(done);
        other.join().unwrap();
        let locks = SPARE_LOCKS.load(Ordering::Relaxed) - locks;
        let made = SLOTS_MADE.load(Ordering::Relaxed) - made;
        // One lock per batch taken (32 slots) and per pool emptied (255): under one lock per
        // 16 requests. Other tests add a few.
        assert!(locks <= REQUESTS / 16 + 64, "{locks} locks");
        // In flight at once: the channel's 64, the other thread's pool (256), a batch here.
        assert!(made <= 1024, "{made} slots made");
    }
}
