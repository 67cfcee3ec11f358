//! Heap allocations per request on the hot path (a valid token, an inner service that answers
//! at once): `LengowAuth` may make at most two more per bodyless GET than tower-http's
//! `SetRequestHeader` with a fixed value.
//!
//! A counting global allocator counts, per thread, every `alloc`, `alloc_zeroed` and `realloc`.
//! Requests are built before counting starts, so only what the middleware (and the inner
//! service) allocate is counted. Run `cargo test --test allocations -- --nocapture` to see
//! the figures.
//!
//! The stacks are those `benches/hot_path.rs` times, from `benches/support/stacks.rs`.

#[path = "../benches/support/stacks.rs"]
mod stacks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Empty, Full};
use lengow_auth::ReplayBody;
use tower::{Layer, Service};

use stacks::{
    ACTIONS_URL, Drain, Noop, ORDERS_URL, hand_built, runtime, shared_token, static_header,
    warm_layer,
};

// ---------------------------------------------------------------------------------------
// The counting allocator

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from inside the allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations made by this thread so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------
// Requests (the inner services and stacks are in benches/support/stacks.rs)

const WARM_UP: u64 = 100;
const MEASURED: u64 = 1000;

/// A bodyless GET with three headers, as a user writes it: string literals, so every header
/// value (and the custom header name) owns its bytes.
fn get_request(i: u64) -> Request<Empty<Bytes>> {
    Request::get(ORDERS_URL)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "lengow-auth-test/1.0")
        .header("x-request-id", if i % 2 == 0 { "even" } else { "odd" })
        .body(Empty::new())
        .expect("a valid request")
}

/// The same GET with `from_static` header names and values, which share their bytes for free.
fn get_request_static(_: u64) -> Request<Empty<Bytes>> {
    Request::get(ORDERS_URL)
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("lengow-auth-test/1.0"))
        .header(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("even"),
        )
        .body(Empty::new())
        .expect("a valid request")
}

/// A POST with three headers and a 1 KiB body.
fn post_request(i: u64) -> Request<Full<Bytes>> {
    Request::post(ACTIONS_URL)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "lengow-auth-test/1.0")
        .header("x-request-id", if i % 2 == 0 { "even" } else { "odd" })
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .expect("a valid request")
}

/// `poll_ready`, `call` and one poll with a no-op waker; the response must be there at once.
fn drive<S, R, T>(service: &mut S, request: R) -> T
where
    S: Service<R, Response = Response<T>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        service.poll_ready(&mut cx).is_ready(),
        "the stack is not ready"
    );
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => {
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body()
        }
        Poll::Ready(Err(e)) => panic!("the stack failed: {e:?}"),
        Poll::Pending => panic!("the stack did not answer at once"),
    }
}

/// Average allocations per request through `service`, after a warm-up, counting only the
/// sending (the requests are built beforehand).
fn per_request<S, B, T>(service: &mut S, make: fn(u64) -> Request<B>) -> f64
where
    S: Service<Request<B>, Response = Response<T>>,
    S::Error: std::fmt::Debug,
{
    for i in 0..WARM_UP {
        drive(service, make(i));
    }
    let requests: Vec<_> = (0..MEASURED).map(make).collect();
    let before = allocations();
    for request in requests {
        drive(service, request);
    }
    let made = allocations() - before;
    made as f64 / MEASURED as f64
}

/// Allocations per request of each stack, in the order bare, static header, hand-built,
/// `LengowAuth`; printed as a table row.
fn measure<B, I>(label: &str, make: fn(u64) -> Request<B>, inner: I) -> [f64; 4]
where
    B: Body + Clone,
    I: Service<Request<B>, Response = Response<Empty<Bytes>>, Error = Infallible>
        + Service<Request<ReplayBody<B>>, Response = Response<Empty<Bytes>>, Error = Infallible>
        + Copy,
{
    let runtime = runtime();
    let layer = warm_layer(&runtime);
    let _context = runtime.enter();
    let row = [
        per_request(&mut inner.clone(), make),
        per_request(&mut static_header(inner), make),
        per_request(&mut hand_built(inner, &shared_token()), make),
        per_request(&mut layer.layer(inner), make),
    ];
    assert_eq!(layer.stats().fetches, 1, "the warm layer fetched again");
    println!(
        "{label:<44} bare {:>5.2}  set_header_static {:>5.2}  hand_built {:>5.2}  lengow_auth {:>5.2}  (lengow_auth - set_header_static = {:+.2})",
        row[0],
        row[1],
        row[2],
        row[3],
        row[3] - row[1]
    );
    row
}

/// The budget the crate is held to: at most this many allocations per bodyless GET beyond
/// what `SetRequestHeader` with a fixed value makes.
const EXTRA_ALLOCATIONS_PER_GET: f64 = 2.0;

#[test]
fn a_bodyless_get_costs_at_most_two_allocations_more_than_set_request_header() {
    let [_, floor, _, ours] = measure("GET, 3 headers from string literals", get_request, Noop);
    assert!(
        ours - floor <= EXTRA_ALLOCATIONS_PER_GET,
        "LengowAuth makes {ours} allocations per bodyless GET, SetRequestHeader {floor}: \
         {} more, over the budget of {EXTRA_ALLOCATIONS_PER_GET}",
        ours - floor
    );
}

#[test]
fn a_bodyless_get_with_static_headers_costs_at_most_two_allocations_more() {
    let [_, floor, _, ours] = measure("GET, 3 headers from_static", get_request_static, Noop);
    assert!(
        ours - floor <= EXTRA_ALLOCATIONS_PER_GET,
        "LengowAuth makes {ours} allocations per bodyless GET (static headers), \
         SetRequestHeader {floor}: {} more, over the budget of {EXTRA_ALLOCATIONS_PER_GET}",
        ours - floor
    );
}

/// The 1 KiB POST, its body left unread or read whole (the figures BENCHMARKS.md and the
/// README give). Unread, the layer allocates no more than the static header. Read, its one
/// chunk is kept for a replay by shared handle, not copied: a chunk built from a `Vec` is
/// moved to a shared buffer the first time it is shared, one allocation, and nothing else.
#[test]
fn post_allocations_are_reported() {
    let unread = measure("POST 1 KiB, body unread", post_request, Noop);
    let drained = measure("POST 1 KiB, body drained", post_request, Drain);
    assert!(unread[3] <= unread[1], "unread: {unread:?}");
    assert!(drained[3] <= drained[1] + 1.0, "drained: {drained:?}");
}
