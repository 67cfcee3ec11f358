//! What `LengowAuth` costs per request, against what a user would build without it.
//!
//! Every stack wraps the same no-op inner service (200 at once, request dropped unread) and
//! is driven by hand: `poll_ready`, `call`, one poll with a no-op waker, all on the bench
//! thread inside a tokio runtime context. The stacks (built in `support/stacks.rs`, which
//! `tests/allocations.rs` shares to count their allocations):
//!
//! - `bare`: the inner service alone, the figure every overhead is measured from;
//! - `set_header_static`: tower-http's `SetRequestHeader` with a fixed, sensitive value: the floor;
//! - `hand_built`: what a user would write instead of this crate: `SetRequestHeader` reading a
//!   token shared behind an `Arc<RwLock<HeaderValue>>`, under `tower::retry::Retry` with a
//!   policy that clones the request and replays it once on 401;
//! - `lengow_auth`: this crate's layer, holding a valid token.
//!
//! Groups: `hot_get` (bodyless GET, three headers), `hot_post` (POST, 1 KiB `Full` body, left
//! unpolled), `hot_post_drained` (the same, the inner service draining the body), `contention`
//! (1 thread against 2 threads sharing one layer), `cold_start` (N concurrent first requests,
//! one token fetch), `replay` (a 401 and its replay).
//!
//! After criterion's own report, a summary prints each stack's median ns per request, its
//! overhead over `bare`, and the ratios the crate's targets are stated in. See BENCHMARKS.md.
//!
//! `HOT_PATH_PROFILE=hot_get/lengow_auth` (any `<group>/<stack>`) skips the benches and sends
//! requests through one stack for a profiler instead; see [`profile_from_env`].
//!
//! `HOT_PATH_QUICK=hot_post` (any hot group) skips criterion and runs the interleaved pass
//! alone, in about a second, optionally with the stack shifted (`HOT_PATH_SHIFT`); see
//! [`quick_from_env`] and `benches/placements.sh`.

#[path = "support/machine.rs"]
mod machine;
#[path = "support/stacks.rs"]
mod stacks;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Empty, Full};
use tokio::runtime::Runtime;
use tower::{Layer, Service};

use machine::{background_load, handoff_side, load_start, ns_per_handoff, print_background_load};
use stacks::{
    ACTIONS_URL, Drain, Noop, ORDERS_URL, cold_layer, hand_built, runtime, shared_token,
    static_header, static_header_from_static, warm_layer,
};

/// Criterion's settings for every group: short runs, so the whole suite stays near 2 minutes.
const WARM_UP: Duration = Duration::from_secs(1);
const MEASUREMENT: Duration = Duration::from_secs(3);
const SAMPLES: usize = 40;
/// Requests built (untimed) before each timed stretch of single-thread runs.
const CHUNK: u64 = 512;
/// Rounds of the interleaved pass that follows criterion's runs of a group.
const ROUNDS: usize = 15;

// ---------------------------------------------------------------------------------------
// Requests

/// A bodyless GET with three headers, as a user builds it (string literals, so each header
/// value, and the custom header name, owns its bytes).
fn get_request(i: u64) -> Request<Empty<Bytes>> {
    Request::get(ORDERS_URL)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "lengow-auth-bench/1.0")
        .header("x-request-id", if i % 2 == 0 { "even" } else { "odd" })
        .body(Empty::new())
        .expect("a valid request")
}

/// A POST with three headers and a 1 KiB body freshly serialised into a `Vec`.
fn post_request(i: u64) -> Request<Full<Bytes>> {
    let body = vec![b'x'; 1024];
    Request::post(ACTIONS_URL)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "lengow-auth-bench/1.0")
        .header("x-request-id", if i % 2 == 0 { "even" } else { "odd" })
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request")
}

// ---------------------------------------------------------------------------------------
// The replay group's inner service (the others, and the stacks, are in support/stacks.rs)

/// Answers 401 and 200 in turn: every request is rejected once, and its replay accepted.
#[derive(Clone, Debug, Default)]
struct RejectEveryOther(Arc<AtomicBool>);

impl<B> Service<Request<B>> for RejectEveryOther {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        drop(request);
        let accepted = self.0.fetch_xor(true, Ordering::Relaxed);
        let mut response = Response::new(Empty::new());
        if !accepted {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

// ---------------------------------------------------------------------------------------
// Driving

/// `poll_ready`, `call` and one poll, with a no-op waker; every stack here answers at once.
#[inline(always)]
fn drive<S, R, T>(service: &mut S, request: R) -> T
where
    S: Service<R, Response = T>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the stack is not ready: {other:?}"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(e)) => panic!("the stack failed: {e:?}"),
        Poll::Pending => panic!("the stack did not answer at once"),
    }
}

/// Like [`drive`], but a future that waits (a token fetch) is finished on `runtime`.
fn drive_or_block<S, R, T>(runtime: &Runtime, service: &mut S, request: R) -> T
where
    S: Service<R, Response = T>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    if service.poll_ready(&mut cx).is_pending() {
        runtime
            .block_on(std::future::poll_fn(|cx| service.poll_ready(cx)))
            .expect("the stack is ready");
    }
    let mut future = pin!(service.call(request));
    let outcome = match future.as_mut().poll(&mut cx) {
        Poll::Ready(outcome) => outcome,
        Poll::Pending => runtime.block_on(future.as_mut()),
    };
    outcome.expect("the stack answers")
}

/// Sends `iters` requests one after another on this thread; only the sending is timed, the
/// requests are built beforehand, `CHUNK` at a time.
fn run_sequential<S, B, T>(service: &mut S, make: fn(u64) -> Request<B>, iters: u64) -> Duration
where
    S: Service<Request<B>, Response = T>,
    S::Error: std::fmt::Debug,
{
    let mut batch = Vec::with_capacity(CHUNK as usize);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = CHUNK.min(iters - done);
        batch.extend((done..done + n).map(make));
        let start = Instant::now();
        for request in batch.drain(..) {
            black_box(drive(service, request));
        }
        total += start.elapsed();
        done += n;
    }
    total
}

/// Work for a [`Workers`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// Long-lived threads for the contention runs: the same threads (and so the same allocator
/// arenas and thread-locals) serve every run, rather than fresh threads each time.
struct Workers {
    queues: Vec<mpsc::Sender<Job>>,
}

impl Workers {
    fn start(n: usize) -> Self {
        let queues = (0..n)
            .map(|_| {
                let (queue, jobs) = mpsc::channel::<Job>();
                std::thread::spawn(move || {
                    for job in jobs {
                        job();
                    }
                });
                queue
            })
            .collect();
        Self { queues }
    }
}

/// Nanoseconds for one hand-off of a cache line between the two worker threads (an atomic
/// passed back and forth). On a VM it depends on where the host puts the two vCPUs; every
/// contended atomic on the hot path pays about this much.
// Not end_to_end's: the two sides run on the contention runs' own worker threads.
fn handoff_ns(workers: &Workers) -> f64 {
    let ball = Arc::new(AtomicU64::new(0));
    let (done, finished) = mpsc::channel();
    for (side, queue) in workers.queues.iter().enumerate().take(2) {
        let ball = Arc::clone(&ball);
        let done = done.clone();
        let job: Job = Box::new(move || {
            let _ = done.send(handoff_side(&ball, side as u64));
        });
        queue
            .send(job)
            .expect("the worker threads live as long as the bench");
    }
    let slowest = (0..2)
        .map(|_| finished.recv().expect("both sides finish"))
        .max()
        .unwrap_or_default();
    ns_per_handoff(slowest)
}

/// Hand-off times measured before and after the contention group, for the summary.
static HANDOFF: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// Sends `iters` requests in all from `threads` worker threads at once, each with its own
/// clone of `service`, each building its requests as it goes. Returns the wall time, so the
/// time per iteration is the time per request of the whole process.
fn run_parallel<S, B, T>(
    workers: &Workers,
    runtime: &Runtime,
    service: &S,
    make: fn(u64) -> Request<B>,
    threads: u64,
    iters: u64,
) -> Duration
where
    S: Service<Request<B>, Response = T> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    B: 'static,
{
    let start_line = Arc::new(Barrier::new(threads as usize + 1));
    let (done, finished) = mpsc::channel();
    for t in 0..threads {
        let mut service = service.clone();
        let share = iters / threads + u64::from(t < iters % threads);
        let start_line = Arc::clone(&start_line);
        let handle = runtime.handle().clone();
        let done = done.clone();
        let job: Job = Box::new(move || {
            let _runtime = handle.enter();
            start_line.wait();
            for i in 0..share {
                black_box(drive(&mut service, make(i)));
            }
            let _ = done.send(());
        });
        workers.queues[t as usize]
            .send(job)
            .expect("the worker threads live as long as the bench");
    }
    start_line.wait();
    let start = Instant::now();
    for _ in 0..threads {
        finished.recv().expect("every worker reports back");
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// What was measured, for the summary

/// Every (iterations, time) criterion asked for, by bench id, warm-up first.
static RUNS: Mutex<BTreeMap<String, Vec<(u64, Duration)>>> = Mutex::new(BTreeMap::new());

fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    RUNS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(id.to_owned())
        .or_default()
        .push((iters, elapsed));
    elapsed
}

/// Median ns per iteration over criterion's measurement samples (the last `SAMPLES` runs).
fn median_ns(id: &str) -> Option<f64> {
    let runs = RUNS.lock().unwrap_or_else(PoisonError::into_inner);
    let runs = runs.get(id)?;
    if runs.len() < SAMPLES {
        return None;
    }
    let mut per_iter: Vec<f64> = runs[runs.len() - SAMPLES..]
        .iter()
        .map(|(iters, elapsed)| elapsed.as_nanos() as f64 / *iters as f64)
        .collect();
    per_iter.sort_by(f64::total_cmp);
    Some(per_iter[SAMPLES / 2])
}

// ---------------------------------------------------------------------------------------
// Background load: the machine is shared, and other processes skew every figure

/// The share of the machine other processes kept busy while a group ran, by group.
static BACKGROUND: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

/// Runs `f` and records how busy other processes kept the machine meanwhile.
fn watching_load(group: &str, f: impl FnOnce()) {
    let start = load_start();
    f();
    let Some((seconds, load)) = background_load(start) else {
        return;
    };
    if seconds < 1.0 {
        return; // filtered out: nothing ran
    }
    BACKGROUND
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((group.to_owned(), load));
}

// ---------------------------------------------------------------------------------------
// Benches

/// Something that sends `iters` requests and says how long that took.
type Runner<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Benches each runner with criterion, under `group/name`.
fn bench_runners(c: &mut Criterion, group: &str, runners: &mut [(String, Runner<'_>)]) {
    let mut g = c.benchmark_group(group);
    for (name, runner) in runners.iter_mut() {
        let id = format!("{group}/{name}");
        g.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| record(&id, iters, runner(iters)))
        });
    }
    g.finish();
}

/// Medians of the interleaved pass, by bench id.
static INTERLEAVED: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());
/// The interleaved pass's ratios of `lengow_auth`'s overhead to another stack's, one per
/// round, by `<group>/<other stack>`.
static ROUND_RATIOS: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Runs every runner of `group` in turn, `ROUNDS` rounds of `per_round` requests, each round
/// starting one runner further on, so that a drift in the machine's speed hits every stack
/// alike.
fn interleave(group: &str, runners: &mut [(String, Runner<'_>)], per_round: u64) {
    let mut times: Vec<Vec<f64>> = runners.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for k in 0..runners.len() {
            let i = (round + k) % runners.len();
            let elapsed = (runners[i].1)(per_round);
            times[i].push(elapsed.as_nanos() as f64 / per_round as f64);
        }
    }
    let round = |stack: &str| {
        let i = runners.iter().position(|(name, _)| name == stack)?;
        Some(&times[i])
    };
    if let (Some(bare), Some(lengow)) = (round("bare"), round("lengow_auth")) {
        let mut ratios = ROUND_RATIOS.lock().unwrap_or_else(PoisonError::into_inner);
        for other in ["set_header_static", "hand_built"] {
            let Some(other_times) = round(other) else {
                continue;
            };
            // One ratio per round, from the four stacks timed back to back in it.
            let per_round: Vec<f64> = (0..ROUNDS)
                .filter_map(|r| {
                    let below = other_times[r] - bare[r];
                    (below > 0.0).then(|| (lengow[r] - bare[r]) / below)
                })
                .collect();
            ratios.insert(format!("{group}/{other}"), per_round);
        }
    }
    let mut results = INTERLEAVED.lock().unwrap_or_else(PoisonError::into_inner);
    for ((name, _), mut t) in runners.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        results.insert(format!("{group}/{name}"), t[t.len() / 2]);
    }
}

/// The four stacks of a hot group, each sending requests made by `make` to a no-op inner
/// service (one that drains the body when `drained`).
fn hot_runners<'a, B>(
    layer: &lengow_auth::LengowAuthLayer,
    token: &stacks::SharedToken,
    make: fn(u64) -> Request<B>,
    drained: bool,
) -> Vec<(String, Runner<'a>)>
where
    B: Body + Clone + Send + 'static,
    B::Error: Into<tower::BoxError>,
    B::Data: Send,
{
    fn runner<'a, S, B, T>(mut service: S, make: fn(u64) -> Request<B>) -> Runner<'a>
    where
        S: Service<Request<B>, Response = T> + 'a,
        S::Error: std::fmt::Debug,
        B: 'a,
    {
        Box::new(move |iters| run_sequential(&mut service, make, iters))
    }
    if drained {
        vec![
            ("bare".into(), runner(Drain, make)),
            (
                "set_header_static".into(),
                runner(static_header(Drain), make),
            ),
            ("hand_built".into(), runner(hand_built(Drain, token), make)),
            ("lengow_auth".into(), runner(layer.layer(Drain), make)),
        ]
    } else {
        vec![
            ("bare".into(), runner(Noop, make)),
            (
                "set_header_static".into(),
                runner(static_header(Noop), make),
            ),
            ("hand_built".into(), runner(hand_built(Noop, token), make)),
            ("lengow_auth".into(), runner(layer.layer(Noop), make)),
        ]
    }
}

fn hot_group<B>(c: &mut Criterion, group: &str, make: fn(u64) -> Request<B>, drained: bool)
where
    B: Body + Clone + Send + 'static,
    B::Error: Into<tower::BoxError>,
    B::Data: Send,
{
    let runtime = runtime();
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let _context = runtime.enter();
    let mut runners = hot_runners(&layer, &token, make, drained);
    bench_runners(c, group, &mut runners);
    // Only when criterion ran every runner of the group (no filter left one out, not in
    // test mode).
    let measured = runners
        .iter()
        .all(|(name, _)| median_ns(&format!("{group}/{name}")).is_some());
    if measured {
        interleave(group, &mut runners, 20_000);
    }
    drop(runners);
    assert_eq!(layer.stats().fetches, 1, "the warm layer fetched again");
}

fn hot_get(c: &mut Criterion) {
    hot_group(c, "hot_get", get_request, false);
}

fn hot_post(c: &mut Criterion) {
    hot_group(c, "hot_post", post_request, false);
}

fn hot_post_drained(c: &mut Criterion) {
    hot_group(c, "hot_post_drained", post_request, true);
}

fn contention(c: &mut Criterion) {
    let runtime = runtime();
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let workers = Workers::start(2);
    let handoff_before = handoff_ns(&workers);

    fn runners<'a, S>(
        workers: &'a Workers,
        runtime: &'a Runtime,
        name: &str,
        service: S,
    ) -> impl Iterator<Item = (String, Runner<'a>)>
    where
        S: Service<Request<Empty<Bytes>>> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
    {
        [1_u64, 2].into_iter().map(move |threads| {
            let service = service.clone();
            let runner: Runner<'a> = Box::new(move |iters| {
                run_parallel(workers, runtime, &service, get_request, threads, iters)
            });
            (format!("{name}/{threads}"), runner)
        })
    }
    let (w, rt) = (&workers, &runtime);
    let mut all: Vec<(String, Runner<'_>)> = Vec::new();
    all.extend(runners(w, rt, "bare", Noop));
    all.extend(runners(w, rt, "set_header_static", static_header(Noop)));
    all.extend(runners(w, rt, "hand_built", hand_built(Noop, &token)));
    all.extend(runners(w, rt, "lengow_auth", layer.layer(Noop)));
    bench_runners(c, "contention", &mut all);
    interleave("contention", &mut all, 40_000);
    drop(all);
    HANDOFF
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend([handoff_before, handoff_ns(&workers)]);
    assert_eq!(layer.stats().fetches, 1, "the warm layer fetched again");
}

/// Joins futures without spawning them: polls every unfinished one on each wake-up.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn cold_start(c: &mut Criterion) {
    let runtime = runtime();
    let mut g = c.benchmark_group("cold_start");
    for n in [1_u64, 16, 64] {
        let id = format!("cold_start/lengow_auth/{n}");
        g.bench_function(BenchmarkId::new("lengow_auth", n), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let id = id.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let layer = cold_layer();
                        let service = layer.layer(Noop);
                        let requests: Vec<_> = (0..n).map(get_request).collect();
                        let start = Instant::now();
                        let calls: Vec<_> = requests
                            .into_iter()
                            .map(|request| {
                                let mut service = service.clone();
                                async move {
                                    std::future::poll_fn(|cx| {
                                        Service::<Request<Empty<Bytes>>>::poll_ready(
                                            &mut service,
                                            cx,
                                        )
                                    })
                                    .await?;
                                    service.call(request).await
                                }
                            })
                            .collect();
                        let responses = join_all(calls).await;
                        total += start.elapsed();
                        assert!(
                            responses
                                .iter()
                                .all(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
                        );
                        assert_eq!(layer.stats().fetches, 1, "one fetch for {n} first requests");
                    }
                    record(&id, iters, total)
                }
            })
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let runtime = runtime();
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let _context = runtime.enter();
    let mut g = c.benchmark_group("replay");

    // The inner service alone, called twice: the work every stack below does.
    let id = "replay/bare_twice";
    let mut inner = RejectEveryOther::default();
    g.bench_function("bare_twice", |b| {
        b.iter_custom(|iters| {
            let mut batch = Vec::with_capacity(2 * CHUNK as usize);
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = CHUNK.min(iters - done);
                batch.extend((2 * done..2 * (done + n)).map(get_request));
                let start = Instant::now();
                for request in batch.drain(..) {
                    black_box(drive(&mut inner, request));
                }
                total += start.elapsed();
                done += n;
            }
            record(id, iters, total)
        })
    });

    macro_rules! bench {
        ($name:literal, $service:expr) => {{
            let id = format!("replay/{}", $name);
            let mut service = $service;
            g.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    let mut batch = Vec::with_capacity(CHUNK as usize);
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = CHUNK.min(iters - done);
                        batch.extend((done..done + n).map(get_request));
                        let start = Instant::now();
                        for request in batch.drain(..) {
                            let response = drive_or_block(&runtime, &mut service, request);
                            assert_eq!(
                                response.status(),
                                StatusCode::OK,
                                "the replay was not sent"
                            );
                        }
                        total += start.elapsed();
                        done += n;
                    }
                    record(&id, iters, total)
                })
            });
        }};
    }
    bench!(
        "hand_built",
        hand_built(RejectEveryOther::default(), &token)
    );
    bench!("lengow_auth", layer.layer(RejectEveryOther::default()));
    g.finish();
    let stats = layer.stats();
    if stats.replays > 0 {
        println!(
            "replay: lengow_auth fetched {} token(s) ({} forced) for {} replays",
            stats.fetches, stats.forced_refreshes, stats.replays
        );
    }
}

// ---------------------------------------------------------------------------------------
// Summary

fn summary() {
    println!("\n=== summary: median ns per request (overhead = stack - bare) ===");
    let floor = if static_header_from_static() {
        "HeaderValue::from_static (STATIC_HEADER=from_static)"
    } else {
        "HeaderValue::from_str, made at run time"
    };
    println!("set_header_static's value: {floor}");
    for (group, load) in BACKGROUND
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        print_background_load(group, *load);
    }
    let interleaved = |id: &str| {
        INTERLEAVED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    };
    type Lookup<'a> = &'a dyn Fn(&str) -> Option<f64>;
    let sources: [(&str, Lookup<'_>); 2] =
        [("criterion", &median_ns), ("interleaved", &interleaved)];
    for group in ["hot_get", "hot_post", "hot_post_drained"] {
        for (source, get) in sources {
            let Some(bare) = get(&format!("{group}/bare")) else {
                continue;
            };
            println!("{group} ({source}): bare {bare:.1} ns");
            let mut overhead = BTreeMap::new();
            for stack in ["set_header_static", "hand_built", "lengow_auth"] {
                if let Some(t) = get(&format!("{group}/{stack}")) {
                    println!("  {stack:<18} {t:>8.1} ns   overhead {:>7.1} ns", t - bare);
                    overhead.insert(stack, t - bare);
                }
            }
            if let (Some(l), Some(h), Some(s)) = (
                overhead.get("lengow_auth"),
                overhead.get("hand_built"),
                overhead.get("set_header_static"),
            ) {
                println!(
                    "  lengow_auth overhead / hand_built overhead = {:.2} (target <= 0.8)",
                    l / h
                );
                println!(
                    "  lengow_auth overhead / set_header_static overhead = {:.2} (target <= 3)",
                    l / s
                );
            }
        }
    }
    for (key, ratios) in ROUND_RATIOS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter_mut()
    {
        let Some((group, other)) = key.split_once('/') else {
            continue;
        };
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        let target = if other == "hand_built" { 0.8 } else { 3.0 };
        println!(
            "{group} (interleaved, round by round): lengow_auth overhead / {other} overhead: \
             median {:.2}, middle half {:.2}-{:.2}, all {:.2}-{:.2} of {} rounds (target <= {target})",
            ratios[ratios.len() / 2],
            ratios[ratios.len() / 4],
            ratios[ratios.len() * 3 / 4],
            ratios[0],
            ratios[ratios.len() - 1],
            ratios.len(),
        );
    }
    if let [before, after] = HANDOFF
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_slice()
    {
        println!(
            "contention: a cache line passes between the two threads in {before:.0} ns before, {after:.0} ns after"
        );
    }
    for (source, get) in sources {
        let mut header = false;
        for stack in ["bare", "set_header_static", "hand_built", "lengow_auth"] {
            let one = get(&format!("contention/{stack}/1"));
            let two = get(&format!("contention/{stack}/2"));
            if let (Some(one), Some(two)) = (one, two) {
                if !header {
                    println!(
                        "contention ({source}; GET, requests built in the loop; wall ns per request):"
                    );
                    header = true;
                }
                let target = if stack == "lengow_auth" {
                    " (target >= 1.8)"
                } else {
                    ""
                };
                println!(
                    "  {stack:<18} 1 thread {one:>7.1} ns   2 threads {two:>7.1} ns   throughput x{:.2}{target}",
                    one / two,
                );
            }
        }
    }
    for n in [1, 16, 64] {
        if let Some(t) = median_ns(&format!("cold_start/lengow_auth/{n}")) {
            println!(
                "cold_start: {n:>2} concurrent first requests, one fetch: {:.1} us ({:.0} ns per request)",
                t / 1000.0,
                t / n as f64
            );
        }
    }
    if let Some(bare) = median_ns("replay/bare_twice") {
        println!("replay (401 then 200): inner called twice {bare:.1} ns");
        let mut overhead = BTreeMap::new();
        for stack in ["hand_built", "lengow_auth"] {
            if let Some(t) = median_ns(&format!("replay/{stack}")) {
                println!("  {stack:<18} {t:>8.1} ns   overhead {:>7.1} ns", t - bare);
                overhead.insert(stack, t - bare);
            }
        }
        if let (Some(l), Some(h)) = (overhead.get("lengow_auth"), overhead.get("hand_built")) {
            println!(
                "  lengow_auth overhead / hand_built overhead = {:.2}",
                l / h
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Profiling one stack (callgrind, perf) instead of benching

/// One request through `service`, never inlined, so a profiler can count just this:
/// `valgrind --tool=callgrind --toggle-collect='hot_path::profiled*'`.
#[inline(never)]
fn profiled<S, R, T>(runtime: &Runtime, service: &mut S, request: R) -> T
where
    S: Service<R, Response = T>,
    S::Error: std::fmt::Debug,
{
    drive_or_block(runtime, service, request)
}

/// Sends `n` requests through `service`, built 500 at a time outside `profiled`.
fn profile_stack<S, B, T>(runtime: &Runtime, mut service: S, make: fn(u64) -> Request<B>, n: u64)
where
    S: Service<Request<B>, Response = T>,
    S::Error: std::fmt::Debug,
{
    for chunk in 0..n.div_ceil(500) {
        let batch: Vec<_> = (chunk * 500..(chunk + 1) * 500).map(make).collect();
        for request in batch {
            black_box(profiled(runtime, &mut service, request));
        }
    }
}

/// With `HOT_PATH_PROFILE=<group>/<stack>` set (groups `hot_get`, `hot_post`,
/// `hot_post_drained`, `replay`; stacks as in the benches), sends `HOT_PATH_PROFILE_N`
/// requests (default 20 000) through that stack and returns true: no benching.
fn profile_from_env() -> bool {
    let Ok(target) = std::env::var("HOT_PATH_PROFILE") else {
        return false;
    };
    let n = std::env::var("HOT_PATH_PROFILE_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let runtime = runtime();
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let _context = runtime.enter();
    let rt = &runtime;
    match target.as_str() {
        "hot_get/bare" => profile_stack(rt, Noop, get_request, n),
        "hot_get/set_header_static" => profile_stack(rt, static_header(Noop), get_request, n),
        "hot_get/hand_built" => profile_stack(rt, hand_built(Noop, &token), get_request, n),
        "hot_get/lengow_auth" => profile_stack(rt, layer.layer(Noop), get_request, n),
        "hot_post/bare" => profile_stack(rt, Noop, post_request, n),
        "hot_post/set_header_static" => profile_stack(rt, static_header(Noop), post_request, n),
        "hot_post/hand_built" => profile_stack(rt, hand_built(Noop, &token), post_request, n),
        "hot_post/lengow_auth" => profile_stack(rt, layer.layer(Noop), post_request, n),
        "hot_post_drained/bare" => profile_stack(rt, Drain, post_request, n),
        "hot_post_drained/set_header_static" => {
            profile_stack(rt, static_header(Drain), post_request, n)
        }
        "hot_post_drained/hand_built" => {
            profile_stack(rt, hand_built(Drain, &token), post_request, n)
        }
        "hot_post_drained/lengow_auth" => profile_stack(rt, layer.layer(Drain), post_request, n),
        "replay/hand_built" => profile_stack(
            rt,
            hand_built(RejectEveryOther::default(), &token),
            get_request,
            n,
        ),
        "replay/lengow_auth" => {
            let mut service = layer.layer(RejectEveryOther::default());
            // The first rejection forces the one fetch; every later one replays at once.
            drive_or_block(rt, &mut service, get_request(0));
            profile_stack(rt, service, get_request, n);
        }
        other => panic!("HOT_PATH_PROFILE: no stack `{other}`"),
    }
    true
}

/// With `HOT_PATH_QUICK=<group>` set (`hot_get`, `hot_post` or `hot_post_drained`), skips
/// criterion: warms each stack of the group up, runs the interleaved pass alone (about one
/// second) and prints the summary, then returns true.
///
/// `HOT_PATH_SHIFT=<0|16|32|48>` runs the pass with the bench thread's stack that many bytes
/// further down. The four shifts put the stacks' requests and futures at each place a 16-byte
/// aligned frame can take in a 64-byte cache line; how a copy's stores and the loads after it
/// fall on cache lines changes what a request costs (BENCHMARKS.md), so one process measures
/// one placement only. `benches/placements.sh` runs all four.
fn quick_from_env() -> bool {
    let Ok(group) = std::env::var("HOT_PATH_QUICK") else {
        return false;
    };
    let shift = std::env::var("HOT_PATH_SHIFT").unwrap_or_default();
    let runtime = runtime();
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let _context = runtime.enter();
    let run = || quick(&group, &layer, &token);
    match shift.as_str() {
        "" | "0" => run(),
        "16" => shifted::<16>(run),
        "32" => shifted::<32>(run),
        "48" => shifted::<48>(run),
        other => panic!("HOT_PATH_SHIFT: `{other}` is not 0, 16, 32 or 48"),
    }
    summary();
    true
}

/// Runs `f` with `N` more bytes of this thread's stack in use.
#[inline(never)]
fn shifted<const N: usize>(f: impl FnOnce()) {
    let pad = [0u8; N];
    black_box(&pad);
    f();
    black_box(&pad);
}

/// The interleaved pass of one hot group, after 100 000 requests through each stack.
fn quick(group: &str, layer: &lengow_auth::LengowAuthLayer, token: &stacks::SharedToken) {
    let mut runners = match group {
        "hot_get" => hot_runners(layer, token, get_request, false),
        "hot_post" => hot_runners(layer, token, post_request, false),
        "hot_post_drained" => hot_runners(layer, token, post_request, true),
        other => panic!("HOT_PATH_QUICK: no group `{other}`"),
    };
    for (_, runner) in runners.iter_mut() {
        runner(100_000);
    }
    interleave(group, &mut runners, 20_000);
}

fn main() {
    if profile_from_env() || quick_from_env() {
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLES)
        .configure_from_args();
    watching_load("hot_get", || hot_get(&mut c));
    watching_load("hot_post", || hot_post(&mut c));
    watching_load("hot_post_drained", || hot_post_drained(&mut c));
    watching_load("contention", || contention(&mut c));
    watching_load("cold_start", || cold_start(&mut c));
    watching_load("replay", || replay(&mut c));
    c.final_summary();
    summary();
}
