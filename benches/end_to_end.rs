//! End to end over loopback: a hyper-util legacy `Client` sends `GET /v3.0/orders` to an
//! in-process `FakeLengow`, 16 requests in flight, through `LengowAuth` or through tower-http's
//! `SetRequestHeader` with the same token fixed (the floor: no refresh, no replay).
//!
//! Each stack has its own client and connection pool; both talk to one server on the same
//! two-worker tokio runtime. Criterion measures each on its own; then a ratio pass alternates
//! the two stacks in short rounds, so that a change in background load hits both alike, and
//! prints the throughput ratio. See BENCHMARKS.md.

#[path = "support/machine.rs"]
mod machine;

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::LengowAuthLayer;
use lengow_auth::testing::FakeLengow;
use tokio::runtime::Runtime;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_http::set_header::SetRequestHeaderLayer;

use machine::{
    LoadStart, background_load, handoff_side, load_start, ns_per_handoff, print_background_load,
};

/// Requests in flight at once.
const IN_FLIGHT: u64 = 16;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASUREMENT: Duration = Duration::from_secs(4);
const SAMPLES: usize = 20;
/// The ratio pass: this many rounds, each stack sending `ROUND_REQUESTS` per round.
const ROUNDS: usize = 30;
const ROUND_REQUESTS: u64 = 4_000;

fn orders_request(uri: &Uri) -> Request<Empty<Bytes>> {
    Request::get(uri.clone())
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "lengow-auth-bench/1.0")
        .body(Empty::new())
        .expect("a valid request")
}

/// Sends `total` requests from `IN_FLIGHT` tasks at once, each reading its response whole;
/// returns the wall time.
async fn run<S>(service: &S, uri: &Uri, total: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..IN_FLIGHT {
        let share = total / IN_FLIGHT + u64::from(t < total % IN_FLIGHT);
        let service = service.clone();
        let uri = uri.clone();
        tasks.spawn(async move {
            for _ in 0..share {
                let response = service
                    .clone()
                    .oneshot(orders_request(&uri))
                    .await
                    .map_err(Into::into)
                    .expect("the request is answered");
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.expect("a body");
                std::hint::black_box(body.to_bytes());
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a sender task finished");
    }
    start.elapsed()
}

/// Asks the fake for a token the way the layer does, for the fixed-header stack.
async fn fetch_token(fake: &FakeLengow) -> HeaderValue {
    let credentials = fake.credentials();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("access_token", credentials.access_token())
        .append_pair("secret", credentials.secret())
        .finish();
    let request = Request::post(format!("http://{}/access/get_token", fake.addr()))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .expect("a valid request");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.expect("the fake answers");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let token = answer["token"].as_str().expect("a token");
    let mut value = HeaderValue::from_str(token).expect("a valid header value");
    value.set_sensitive(true);
    value
}

/// Nanoseconds for one hand-off of a cache line between two threads (an atomic passed back
/// and forth): on a VM it changes with where the host puts the vCPUs, and every atomic the
/// two tokio workers contend on costs about this much.
// Not hot_path's: that one runs the two sides on its contention runs' long-lived workers.
fn handoff_ns() -> f64 {
    let ball = AtomicU64::new(0);
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let sides: Vec<_> = (0..2_u64)
            .map(|side| {
                let ball = &ball;
                scope.spawn(move || handoff_side(ball, side))
            })
            .collect();
        sides
            .into_iter()
            .map(|side| side.join().expect("a side finished"))
            .collect()
    });
    let slowest = times.into_iter().max().unwrap_or_default();
    ns_per_handoff(slowest)
}

/// Prints how busy other processes kept the machine since `start`.
fn report_load(what: &str, start: LoadStart) {
    if let Some((_, load)) = background_load(start) {
        print_background_load(what, load);
    }
}

/// Median ns per request of each sample criterion took, by bench name (last `SAMPLES`).
static RUNS: Mutex<Vec<(&'static str, u64, Duration)>> = Mutex::new(Vec::new());

fn record(name: &'static str, iters: u64, elapsed: Duration) -> Duration {
    RUNS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((name, iters, elapsed));
    elapsed
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

fn criterion_median(name: &str) -> Option<f64> {
    let runs = RUNS.lock().unwrap_or_else(PoisonError::into_inner);
    let per_iter: Vec<f64> = runs
        .iter()
        .filter(|(n, _, _)| *n == name)
        .map(|(_, iters, elapsed)| elapsed.as_nanos() as f64 / *iters as f64)
        .collect();
    if per_iter.len() < SAMPLES {
        return None;
    }
    median(per_iter[per_iter.len() - SAMPLES..].to_vec())
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLES)
        .configure_from_args();
    let runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let fake = runtime.block_on(FakeLengow::start());
    let layer = LengowAuthLayer::builder(fake.credentials())
        .api_url(fake.uri())
        .build(Client::builder(TokioExecutor::new()).build_http())
        .expect("valid settings");
    let account_id = runtime
        .block_on(layer.account_id())
        .expect("the fake answers a token");
    let uri: Uri = format!("http://{}/v3.0/orders?account_id={account_id}", fake.addr())
        .parse()
        .expect("a valid uri");

    let with_layer = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    let token = runtime.block_on(fetch_token(&fake));
    let with_static_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, token)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    // Open both pools' connections, and fill the fake's bounded logs, before measuring.
    runtime.block_on(run(&with_static_header, &uri, 10 * IN_FLIGHT * 100));
    runtime.block_on(run(&with_layer, &uri, 10 * IN_FLIGHT * 100));

    let criterion_start = load_start();
    let mut g = c.benchmark_group("end_to_end");
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("static_header", |b| {
        b.iter_custom(|iters| {
            let elapsed = runtime.block_on(run(&with_static_header, &uri, iters));
            record("static_header", iters, elapsed)
        })
    });
    g.bench_function("lengow_auth", |b| {
        b.iter_custom(|iters| {
            let elapsed = runtime.block_on(run(&with_layer, &uri, iters));
            record("lengow_auth", iters, elapsed)
        })
    });
    g.finish();
    c.final_summary();

    println!("\n=== summary: loopback GET /v3.0/orders, {IN_FLIGHT} in flight ===");
    if let (Some(fixed), Some(ours)) = (
        criterion_median("static_header"),
        criterion_median("lengow_auth"),
    ) {
        println!(
            "criterion medians: static_header {fixed:.0} ns/request ({:.0} req/s), \
             lengow_auth {ours:.0} ns/request ({:.0} req/s): throughput ratio {:.3}",
            1e9 / fixed,
            1e9 / ours,
            fixed / ours
        );
    }
    // `cargo test --benches` (or `--test`) runs every bench once: no ratio pass then.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test") {
        return;
    }
    report_load("the criterion runs", criterion_start);

    // Alternate the stacks, each round in the other order, and compare medians.
    let handoff_before = handoff_ns();
    let ratio_start = load_start();
    let mut fixed = Vec::new();
    let mut ours = Vec::new();
    for round in 0..ROUNDS {
        let mut once = |layer_first: bool| {
            if layer_first {
                ours.push(runtime.block_on(run(&with_layer, &uri, ROUND_REQUESTS)));
            } else {
                fixed.push(runtime.block_on(run(&with_static_header, &uri, ROUND_REQUESTS)));
            }
        };
        once(round % 2 == 0);
        once(round % 2 != 0);
    }
    let per_request = |d: &Vec<Duration>| {
        d.iter()
            .map(|d| d.as_nanos() as f64 / ROUND_REQUESTS as f64)
            .collect()
    };
    if let (Some(fixed), Some(ours)) = (median(per_request(&fixed)), median(per_request(&ours))) {
        println!(
            "ratio pass ({ROUNDS} alternating rounds of {ROUND_REQUESTS}): static_header {fixed:.0} ns/request, \
             lengow_auth {ours:.0} ns/request: throughput ratio {:.3} (target >= 0.97)",
            fixed / ours
        );
    }
    report_load("the ratio pass", ratio_start);
    println!(
        "a cache line passes between two threads in {handoff_before:.0} ns before the ratio pass, {:.0} ns after",
        handoff_ns()
    );
    let stats = layer.stats();
    println!(
        "fake: {} API requests, {} without a token, {} rejected; layer: {} fetch(es), {} replay(s)",
        fake.api_requests(),
        fake.requests_without_token(),
        fake.rejected_requests(),
        stats.fetches,
        stats.replays
    );
    assert_eq!(fake.requests_without_token(), 0);
    assert_eq!(fake.rejected_requests(), 0);
    assert_eq!(stats.fetches, 1, "one token for the whole run");
}
