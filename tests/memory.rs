//! Memory stays bounded by `replay_body_limit`: a 10 MiB body streamed through `LengowAuth`
//! (limit 64 KiB) in 16 KiB chunks raises the peak of live heap bytes by less than 1 MiB.
//!
//! A global allocator tracks the bytes live on the heap and their peak. The body makes each
//! chunk only when polled; the inner service reads it to the end and drops each chunk. If the
//! layer kept the body past its limit, the peak would climb towards 10 MiB.
//!
//! The figures BENCHMARKS.md gives: `cargo test --all-features --test memory -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use lengow_auth::{Credentials, LengowAuthLayer};
use tower::{Layer, Service, ServiceExt};

// ---------------------------------------------------------------------------------------
// The tracking allocator. Implementing `GlobalAlloc` takes `unsafe`, kept to this shim: it
// passes every call on to the system allocator unchanged and adds two counters. The crate's
// `#![forbid(unsafe_code)]` does not reach test binaries.

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(by: usize) {
    LIVE.fetch_sub(by, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---------------------------------------------------------------------------------------
// The body, the inner service, the layer

const TOTAL: usize = 10 * 1024 * 1024;
const CHUNK: usize = 16 * 1024;
const REPLAY_LIMIT: usize = 64 * 1024;
/// The most the peak may rise while the body streams through.
const BUDGET: usize = 1024 * 1024;

/// `TOTAL` bytes in `CHUNK`-byte chunks, each made only when polled; its length may be told
/// in the size hint or left unknown, as a stream's is.
struct Generated {
    left: usize,
    tell_length: bool,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = CHUNK.min(self.left);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0xA5; n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.tell_length {
            SizeHint::with_exact(self.left as u64)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads the request body to its end, one frame at a time, and counts its bytes.
#[derive(Clone, Default)]
struct Drain {
    seen: Arc<AtomicUsize>,
}

impl<B> Service<Request<B>> for Drain
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let seen = Arc::clone(&self.seen);
        Box::pin(async move {
            let mut body = std::pin::pin!(request.into_body());
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    seen.fetch_add(bytes::Buf::remaining(&data), Ordering::Relaxed);
                }
            }
            Ok(Response::new(Empty::new()))
        })
    }
}

fn warm_layer(runtime: &tokio::runtime::Runtime) -> LengowAuthLayer {
    let token_client = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"token":"0a1b2c3d-0000-4abc-8def-0123456789ab","account_id":1}"#,
            )))
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    let layer = LengowAuthLayer::builder(Credentials::new("test-access-token", "test-secret"))
        .api_url("http://127.0.0.1:1".parse().expect("a valid uri"))
        .replay_body_limit(REPLAY_LIMIT)
        .build(token_client)
        .expect("valid settings");
    assert_eq!(runtime.block_on(layer.account_id()).expect("a token"), 1);
    layer
}

/// Streams one generated body through `service` and returns how far the peak of live heap
/// bytes rose above where it stood just before.
fn peak_rise<S>(
    runtime: &tokio::runtime::Runtime,
    service: S,
    seen: &AtomicUsize,
    tell_length: bool,
) -> usize
where
    S: Service<Request<Generated>, Response = Response<Empty<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let request = Request::post("http://127.0.0.1:1/v3.0/orders/actions/")
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(Generated {
            left: TOTAL,
            tell_length,
        })
        .expect("a valid request");
    seen.store(0, Ordering::Relaxed);
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let response = runtime
        .block_on(service.oneshot(request))
        .expect("the stack answers");
    let rise = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen.load(Ordering::Relaxed),
        TOTAL,
        "the whole body reached the inner service"
    );
    rise
}

// One test in this binary, so that no other test allocates while the peak is watched.
#[test]
fn a_10_mib_streamed_body_raises_the_peak_by_less_than_1_mib() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let layer = warm_layer(&runtime);
    let inner = Drain::default();
    let seen = Arc::clone(&inner.seen);

    let bare = peak_rise(&runtime, inner.clone(), &seen, false);
    let stream = peak_rise(&runtime, layer.layer(inner.clone()), &seen, false);
    let sized = peak_rise(&runtime, layer.layer(inner.clone()), &seen, true);
    println!(
        "peak rise streaming {} MiB in {} KiB chunks: no layer {bare} B; LengowAuth (limit {} KiB) \
         {stream} B with an unknown length, {sized} B with an exact size hint; budget {BUDGET} B",
        TOTAL >> 20,
        CHUNK >> 10,
        REPLAY_LIMIT >> 10,
    );
    assert_eq!(layer.stats().fetches, 1);
    assert!(
        stream < BUDGET,
        "streaming {TOTAL} B of unknown length through LengowAuth raised the peak by {stream} B, \
         over the {BUDGET} B budget"
    );
    assert!(
        sized < BUDGET,
        "streaming {TOTAL} B of known length through LengowAuth raised the peak by {sized} B, \
         over the {BUDGET} B budget"
    );
}
