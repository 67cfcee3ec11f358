//! What `LengowAuth` adds to a request, beside what a user would use instead:
//! `cargo bench --bench hot_path` (about two and a half minutes).
//!
//! Every stack (`support/stacks.rs`) wraps an inner service that answers 200 at once:
//!
//! - `bare`: the inner service alone, from which every overhead is counted;
//! - `static_header`: tower-http's `SetRequestHeader` with one fixed token;
//! - `hand_built`: `SetRequestHeader` reading a token shared in an `ArcSwap`, under
//!   `tower::retry` with a policy that copies every request (head and `Bytes` body);
//! - `lengow_auth`: the layer, holding a valid token.
//!
//! Groups `get` (no body, dropped unread) and `post` (1 KiB body, read to its end by the inner
//! service): one thread sends the requests by hand (`poll_ready`, `call`, one poll); they are
//! built outside the timed part. Group `two_threads`: a two-worker runtime, one task or two
//! tasks sending `get` requests (built as they go) through clones of one service.
//!
//! Criterion times each stack; then an alternating pass sends `ROUNDS` rounds through every
//! stack of a group in turn, so that load from other processes falls on all of them alike, and
//! prints the medians and the ratios BENCHMARKS.md gives, and what the two clock reads the
//! layer makes per request take by themselves.

#[path = "support/stacks.rs"]
mod stacks;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use http::Request;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

use stacks::{
    Drain, Noop, drive, get_request, hand_built, post_request, shared_token, static_header,
    warm_layer,
};

/// Requests built ahead of each timed stretch of a single-thread run.
const BATCH: usize = 1024;
/// Rounds of the alternating pass, and requests per stack per round.
const ROUNDS: usize = 15;
const SEQUENTIAL_PER_ROUND: u64 = 50_000;
const THREADED_PER_ROUND: u64 = 100_000;

/// A stack under test: its name, and a function that sends `n` requests and times them.
type Stack<'a> = (&'static str, Box<dyn FnMut(u64) -> Duration + 'a>);

/// Sends `n` requests one after another, built `BATCH` at a time outside the timed part.
fn sequential<S, B>(service: &mut S, make: fn() -> Request<B>, n: u64) -> Duration
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let mut batch = Vec::with_capacity(BATCH);
    let mut total = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let take = left.min(BATCH as u64);
        batch.extend((0..take).map(|_| make()));
        let start = Instant::now();
        for request in batch.drain(..) {
            black_box(drive(service, request));
        }
        total += start.elapsed();
        left -= take;
    }
    total
}

/// Sends `n` GET requests from `tasks` tasks at once, each with its own clone of `service`;
/// returns the wall time.
fn threaded<S>(runtime: &Runtime, service: &S, tasks: u64, n: u64) -> Duration
where
    S: Service<Request<http_body_util::Empty<bytes::Bytes>>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    S::Response: Send,
{
    runtime.block_on(async {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let share = n / tasks + u64::from(t < n % tasks);
            let mut service = service.clone();
            set.spawn(async move {
                for _ in 0..share {
                    let ready = service.ready().await.expect("the stack is ready");
                    black_box(ready.call(get_request()).await.expect("answered"));
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("a sender task finished");
        }
        start.elapsed()
    })
}

/// Reads tokio's clock and the wall clock `n` times, as the layer does once per request to
/// judge its token; returns the time taken.
fn clock_reads(n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        black_box((tokio::time::Instant::now(), std::time::SystemTime::now()));
    }
    start.elapsed()
}

/// Times every stack with criterion under `group`, then runs the alternating pass and returns
/// each stack's ns per request round by round, in the order given (nothing when not measuring).
fn compare(
    c: &mut Criterion,
    group: &str,
    stacks: &mut [Stack<'_>],
    per_round: u64,
) -> Vec<Vec<f64>> {
    let mut g = c.benchmark_group(group);
    for (name, run) in stacks.iter_mut() {
        g.bench_function(*name, |b| b.iter_custom(&mut *run));
    }
    g.finish();
    if !measuring() {
        return Vec::new();
    }
    let mut times = vec![Vec::new(); stacks.len()];
    for round in 0..ROUNDS {
        for k in 0..stacks.len() {
            let i = (round + k) % stacks.len();
            let elapsed = (stacks[i].1)(per_round);
            times[i].push(elapsed.as_nanos() as f64 / per_round as f64);
        }
    }
    times
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Whether this is a measuring run (`cargo bench`), not `cargo test --benches` or a profile.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--test" || a.starts_with("--profile-time"))
}

/// Prints each stack's time and overhead over `bare` (the first), and the layer's overhead
/// over each peer's (`lengow_auth` last).
fn print_overheads(group: &str, names: &[&str], rounds: &[Vec<f64>]) {
    let medians: Vec<f64> = rounds.iter().map(|r| median(r)).collect();
    let Some((&bare, rest)) = medians.split_first() else {
        return;
    };
    println!("{group}: ns per request (median of {ROUNDS} alternating rounds)");
    for (name, t) in names.iter().zip(&medians) {
        println!("  {name:<14} {t:>7.1}   overhead {:>6.1}", t - bare);
    }
    let ours = rest[rest.len() - 1] - bare;
    for (name, t) in names[1..names.len() - 1].iter().zip(rest) {
        println!(
            "  lengow_auth overhead / {name} overhead = {:.2}",
            ours / (t - bare)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let layer = warm_layer(&runtime);
    let token = shared_token();
    let names = ["bare", "static_header", "hand_built", "lengow_auth"];

    {
        let _context = runtime.enter();
        let (mut bare, mut fixed) = (Noop, static_header(Noop));
        let (mut hand, mut ours) = (hand_built(Noop, &token), layer.layer(Noop));
        let mut get: Vec<Stack<'_>> = vec![
            ("bare", Box::new(|n| sequential(&mut bare, get_request, n))),
            (
                "static_header",
                Box::new(|n| sequential(&mut fixed, get_request, n)),
            ),
            (
                "hand_built",
                Box::new(|n| sequential(&mut hand, get_request, n)),
            ),
            (
                "lengow_auth",
                Box::new(|n| sequential(&mut ours, get_request, n)),
            ),
        ];
        let get_rounds = compare(&mut c, "get", &mut get, SEQUENTIAL_PER_ROUND);
        drop(get);

        let (mut bare, mut fixed) = (Drain, static_header(Drain));
        let (mut hand, mut ours) = (hand_built(Drain, &token), layer.layer(Drain));
        let mut post: Vec<Stack<'_>> = vec![
            ("bare", Box::new(|n| sequential(&mut bare, post_request, n))),
            (
                "static_header",
                Box::new(|n| sequential(&mut fixed, post_request, n)),
            ),
            (
                "hand_built",
                Box::new(|n| sequential(&mut hand, post_request, n)),
            ),
            (
                "lengow_auth",
                Box::new(|n| sequential(&mut ours, post_request, n)),
            ),
        ];
        let post_rounds = compare(&mut c, "post", &mut post, SEQUENTIAL_PER_ROUND);
        drop(post);
        print_overheads("get (3 headers, no body)", &names, &get_rounds);
        if measuring() {
            let reads: Vec<f64> = (0..ROUNDS)
                .map(|_| clock_reads(SEQUENTIAL_PER_ROUND).as_nanos() as f64)
                .map(|ns| ns / SEQUENTIAL_PER_ROUND as f64)
                .collect();
            println!(
                "  of which the layer's two clock reads (tokio's, the wall clock's) {:.1}",
                median(&reads)
            );
        }
        print_overheads("post (3 headers, 1 KiB read)", &names, &post_rounds);
    }

    let (fixed, hand, ours) = (
        static_header(Noop),
        hand_built(Noop, &token),
        layer.layer(Noop),
    );
    let rt = &runtime;
    let mut two_threads: Vec<Stack<'_>> = vec![
        ("static_header/1", Box::new(|n| threaded(rt, &fixed, 1, n))),
        ("static_header/2", Box::new(|n| threaded(rt, &fixed, 2, n))),
        ("hand_built/1", Box::new(|n| threaded(rt, &hand, 1, n))),
        ("hand_built/2", Box::new(|n| threaded(rt, &hand, 2, n))),
        ("lengow_auth/1", Box::new(|n| threaded(rt, &ours, 1, n))),
        ("lengow_auth/2", Box::new(|n| threaded(rt, &ours, 2, n))),
    ];
    let rounds = compare(&mut c, "two_threads", &mut two_threads, THREADED_PER_ROUND);
    drop(two_threads);
    if !rounds.is_empty() {
        println!(
            "two_threads: wall ns per request, GET built in the loop (medians of {ROUNDS} rounds; \
             throughput = 1 task / 2 tasks, round by round)"
        );
        for (name, pair) in ["static_header", "hand_built", "lengow_auth"]
            .iter()
            .zip(rounds.chunks(2))
        {
            let ratios: Vec<f64> = pair[0].iter().zip(&pair[1]).map(|(a, b)| a / b).collect();
            println!(
                "  {name:<14} 1 task {:>6.1}   2 tasks {:>6.1}   throughput x{:.2}",
                median(&pair[0]),
                median(&pair[1]),
                median(&ratios)
            );
        }
    }

    c.final_summary();
    let stats = layer.stats();
    assert_eq!(stats.fetches, 1, "one token for the whole run");
    assert_eq!(stats.replays, 0);
}
