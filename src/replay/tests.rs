use std::collections::VecDeque;
use std::task::Waker;

use http_body_util::Full;

use super::*;

/// A body of given frames, each ready at once.
struct Chunks {
    frames: VecDeque<Result<Frame<Bytes>, std::io::Error>>,
}

impl Chunks {
    fn new(chunks: &[&[u8]], trailers: Option<HeaderMap>) -> Self {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
        Self { frames }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.frames.pop_front())
    }
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    trailers
}

/// Polls `body` to its end: the data, and the trailers.
fn drain<B>(body: B) -> (Vec<u8>, Option<HeaderMap>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut body = body;
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Poll::Ready(None) => return (data, trailers),
            Poll::Ready(Some(Err(e))) => panic!("body failed: {e}"),
            Poll::Pending => panic!("body pending"),
        }
    }
}

#[test]
fn replays_byte_for_byte_with_trailers() {
    let (first, replay) = ReplayBody::keep(Chunks::new(&[b"ab", b"cd"], Some(trailers())), 64);
    let replay = replay.unwrap();
    assert_eq!(drain(first), (b"abcd".to_vec(), Some(trailers())));
    let second = replay.body().unwrap();
    assert!(!second.is_end_stream());
    assert_eq!(second.size_hint().exact(), None);
    assert_eq!(drain(second), (b"abcd".to_vec(), Some(trailers())));
}

#[test]
fn kept_chunks_are_shared_not_copied() {
    let data = Bytes::from(vec![7; 100]);
    let (mut first, replay) = ReplayBody::keep(Full::new(data.clone()), 1000);
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut first).poll_frame(&mut cx) else {
        panic!("no frame");
    };
    assert_eq!(frame.data_ref().unwrap().as_ptr(), data.as_ptr());
    drop(first);
    let mut second = replay.unwrap().body().unwrap();
    let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut second).poll_frame(&mut cx) else {
        panic!("no frame");
    };
    assert_eq!(frame.data_ref().unwrap().as_ptr(), data.as_ptr());
}

#[test]
fn a_body_over_the_limit_streams_through_and_is_not_replayed() {
    // Over the limit by its size hint: not kept at all.
    let (first, replay) = ReplayBody::keep(Full::new(Bytes::from_static(b"0123456789")), 4);
    assert!(replay.is_none());
    assert_eq!(drain(first).0, b"0123456789");
    // Over the limit as it streams: kept until then, let go after.
    let (first, replay) = ReplayBody::keep(Chunks::new(&[b"012", b"345", b"6"], None), 4);
    let replay = replay.unwrap();
    assert!(replay.body().is_some());
    assert_eq!(drain(first).0, b"0123456");
    assert!(replay.body().is_none());
}

#[test]
fn an_empty_body_replays_empty() {
    let (first, replay) = ReplayBody::keep(Full::new(Bytes::new()), 0);
    assert!(first.is_end_stream());
    let second = replay.unwrap().body().unwrap();
    assert!(second.is_end_stream());
    assert_eq!(drain(second), (Vec::new(), None));
}

#[test]
fn a_replay_goes_on_reading_where_the_first_send_stopped() {
    let (mut first, replay) = ReplayBody::keep(Chunks::new(&[b"ab", b"cd", b"ef"], None), 64);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        Pin::new(&mut first).poll_frame(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    // The server answered after one chunk: the replay sends it, then the rest.
    drop(first);
    let second = replay.unwrap().body().unwrap();
    assert_eq!(second.size_hint().exact(), None);
    assert_eq!(drain(second).0, b"abcdef");
}

#[test]
fn a_replay_waits_for_the_first_send_to_let_go() {
    let (mut first, replay) = ReplayBody::keep(Chunks::new(&[b"ab", b"cd"], None), 64);
    let mut cx = Context::from_waker(Waker::noop());
    let _ = Pin::new(&mut first).poll_frame(&mut cx);
    let mut second = replay.unwrap().body().unwrap();
    assert!(Pin::new(&mut second).poll_frame(&mut cx).is_pending());
    drop(first);
    assert_eq!(drain(second).0, b"abcd");
}

#[test]
fn a_body_that_fails_is_not_replayed() {
    let mut failing = Chunks::new(&[b"ab"], None);
    failing.frames.push_back(Err(std::io::Error::other("cut")));
    let (mut first, replay) = ReplayBody::keep(failing, 64);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        Pin::new(&mut first).poll_frame(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    assert!(matches!(
        Pin::new(&mut first).poll_frame(&mut cx),
        Poll::Ready(Some(Err(_)))
    ));
    assert!(replay.unwrap().body().is_none());
}

#[test]
fn default_is_the_inner_default() {
    let body: ReplayBody<Full<Bytes>> = ReplayBody::default();
    assert!(body.is_end_stream());
}

proptest::proptest! {
    #[test]
    fn any_split_within_the_limit_replays_byte_for_byte(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
        cut in 1usize..50,
        limit in 0usize..250,
    ) {
        let chunks: Vec<&[u8]> = data.chunks(cut).collect();
        let (first, replay) = ReplayBody::keep(Chunks::new(&chunks, None), limit);
        proptest::prop_assert_eq!(drain(first).0, data.clone());
        let replay = replay.expect("no size hint: always kept at first");
        match replay.body() {
            Some(second) => {
                proptest::prop_assert!(data.len() <= limit);
                proptest::prop_assert_eq!(drain(second).0, data);
            }
            None => proptest::prop_assert!(data.len() > limit),
        }
    }
}
