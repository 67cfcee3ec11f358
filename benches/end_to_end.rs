//! The whole round trip over loopback: `cargo bench --bench end_to_end` (about half a minute).
//!
//! A hyper-util legacy `Client` sends `GET /v3.0/orders` to an in-process `FakeLengow`, 16
//! requests in flight, each response read whole, through `LengowAuth` (`lengow_auth`) or
//! through tower-http's `SetRequestHeader` with a token fetched once and fixed
//! (`fixed_header`: no refresh, no replay). Each stack has its own client and connections;
//! both talk to one server on one two-worker tokio runtime.
//!
//! Criterion times each stack; then an alternating pass sends `ROUNDS` rounds through both in
//! turn, so that load from other processes falls on both alike, and prints the medians and the
//! throughput ratio BENCHMARKS.md gives.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::LengowAuthLayer;
use lengow_auth::testing::FakeLengow;
use tokio::runtime::Runtime;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_http::set_header::SetRequestHeaderLayer;

/// Requests in flight at once.
const IN_FLIGHT: u64 = 16;
/// Rounds of the alternating pass, and requests per stack per round.
const ROUNDS: usize = 40;
const PER_ROUND: u64 = 2_000;

fn orders_request(uri: &Uri) -> Request<Empty<Bytes>> {
    Request::get(uri.clone())
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "lengow-auth-bench/1.0")
        .body(Empty::new())
        .expect("a valid request")
}

/// Sends `n` requests from `IN_FLIGHT` tasks, each reading its responses whole; returns the
/// wall time.
fn run<S>(runtime: &Runtime, service: &S, uri: &Uri, n: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    runtime.block_on(async {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..IN_FLIGHT {
            let share = n / IN_FLIGHT + u64::from(t < n % IN_FLIGHT);
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
                    black_box(body.to_bytes());
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a sender task finished");
        }
        start.elapsed()
    })
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
    let body = response.into_body().collect().await.expect("a body");
    let answer: serde_json::Value = serde_json::from_slice(&body.to_bytes()).expect("json");
    let token = answer["token"].as_str().expect("a token");
    let mut value = HeaderValue::from_str(token).expect("a valid header value");
    value.set_sensitive(true);
    value
}

fn median(mut values: Vec<f64>) -> f64 {
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

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
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

    let lengow_auth = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    let token = runtime.block_on(fetch_token(&fake));
    let fixed_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, token)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    // Open both pools' connections before measuring.
    run(&runtime, &fixed_header, &uri, 100 * IN_FLIGHT);
    run(&runtime, &lengow_auth, &uri, 100 * IN_FLIGHT);

    let mut g = c.benchmark_group("round_trip");
    g.bench_function("fixed_header", |b| {
        b.iter_custom(|n| run(&runtime, &fixed_header, &uri, n))
    });
    g.bench_function("lengow_auth", |b| {
        b.iter_custom(|n| run(&runtime, &lengow_auth, &uri, n))
    });
    g.finish();

    if measuring() {
        let (mut fixed, mut ours) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let mut fixed_round = || {
                let elapsed = run(&runtime, &fixed_header, &uri, PER_ROUND);
                fixed.push(elapsed.as_nanos() as f64 / PER_ROUND as f64);
            };
            if round % 2 == 0 {
                fixed_round();
            }
            let elapsed = run(&runtime, &lengow_auth, &uri, PER_ROUND);
            ours.push(elapsed.as_nanos() as f64 / PER_ROUND as f64);
            if round % 2 == 1 {
                fixed_round();
            }
        }
        let ratios: Vec<f64> = fixed.iter().zip(&ours).map(|(f, o)| f / o).collect();
        let (fixed, ours) = (median(fixed), median(ours));
        println!(
            "round_trip: GET over loopback, {IN_FLIGHT} in flight, wall ns per request \
             (medians of {ROUNDS} alternating rounds of {PER_ROUND})"
        );
        println!(
            "  fixed_header {fixed:>8.0}   ({:.0} requests/s)",
            1e9 / fixed
        );
        println!(
            "  lengow_auth  {ours:>8.0}   ({:.0} requests/s)",
            1e9 / ours
        );
        println!(
            "  throughput lengow_auth / fixed_header, round by round: median {:.3}",
            median(ratios)
        );
    }

    c.final_summary();
    assert_eq!(fake.requests_without_token(), 0);
    assert_eq!(fake.rejected_requests(), 0);
    assert_eq!(layer.stats().fetches, 1, "one token for the whole run");
}
