//! Heap allocations per request, a figure and not a budget: `cargo bench --bench allocations`
//! prints one table (see BENCHMARKS.md).
//!
//! The stacks of `benches/hot_path.rs` (`support/stacks.rs`), each sending 10 000 requests
//! after a warm-up, on a current-thread runtime so that nothing but the bench thread allocates.
//! Requests are built before counting starts: only what the stack and the inner service
//! allocate is counted (`alloc`, `alloc_zeroed` and `realloc` calls).

#[path = "support/stacks.rs"]
mod stacks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Request;
use tower::{Layer, Service};

use stacks::{
    Drain, Noop, drive, get_request, hand_built, post_request, shared_token, static_header,
    warm_layer,
};

const WARM_UP: u64 = 100;
const MEASURED: u64 = 10_000;

// ---------------------------------------------------------------------------------------
// The counting allocator. Implementing `GlobalAlloc` takes `unsafe`: it is the only `unsafe`
// in the repository, kept to this shim, which passes every call on to the system allocator
// unchanged and counts it. The crate's `#![forbid(unsafe_code)]` does not reach bench binaries.

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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

/// Average allocations per request through `service`, the requests built beforehand.
fn per_request<S, B>(mut service: S, make: fn() -> Request<B>) -> f64
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..WARM_UP {
        drive(&mut service, make());
    }
    let requests: Vec<_> = (0..MEASURED).map(|_| make()).collect();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for request in requests {
        black_box(drive(&mut service, request));
    }
    let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
    made as f64 / MEASURED as f64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let _context = runtime.enter();

    println!("allocations per request (the requests are built beforehand)");
    println!(
        "{:<32} {:>6} {:>14} {:>11} {:>12}",
        "", "bare", "static_header", "hand_built", "lengow_auth"
    );
    let row = |label: &str, figures: [f64; 4]| {
        let [bare, fixed, hand, ours] = figures;
        println!("{label:<32} {bare:>6.2} {fixed:>14.2} {hand:>11.2} {ours:>12.2}");
    };
    row(
        "GET, 3 headers, unread",
        [
            per_request(Noop, get_request),
            per_request(static_header(Noop), get_request),
            per_request(hand_built(Noop, &token), get_request),
            per_request(layer.layer(Noop), get_request),
        ],
    );
    row(
        "POST, 3 headers, 1 KiB body read",
        [
            per_request(Drain, post_request),
            per_request(static_header(Drain), post_request),
            per_request(hand_built(Drain, &token), post_request),
            per_request(layer.layer(Drain), post_request),
        ],
    );
    assert_eq!(layer.stats().fetches, 1, "the layer held its one token");
}
