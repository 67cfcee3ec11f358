//! One token for a fleet of processes: worker processes against one FakeLengow and a local
//! `redis-server`, with and without the shared store, then the fetches per hour a fleet of
//! N processes makes, beside the one-row-no-lock scheme of Lengow's own connectors.
//!
//! ```text
//! cargo run --release --example fleet --features redis
//! ```
//!
//! Part 1 runs real processes (this example again, as `fleet worker …`) and needs
//! `redis-server` on the PATH; without it, it says how to get it and goes on to part 2.
//! Part 2 runs on tokio's paused clock in this process: 24 simulated hours in a second or
//! so, the same layer code, the fleet sharing a `MemoryStore` (the algorithm `RedisStore`
//! runs, on an in-process store), the token endpoint an in-process service answering after
//! 300 ms.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::store::{MemoryStore, RedisStore};
use lengow_auth::testing::{FakeLengow, INSTALL_HINT, RedisServer};
use lengow_auth::{Credentials, LengowAuthLayer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Processes in the cold burst of part 1.
const BURST_PROCESSES: usize = 8;
/// Requests each of them sends at once.
const BURST_REQUESTS: usize = 20;
/// How long `get_token` takes, in both parts.
const TOKEN_DELAY: Duration = Duration::from_millis(300);
/// Simulated hours in part 2.
const HOURS: u64 = 24;
/// In part 2, each connector process calls the API this often (and looks at the row first).
const CONNECTOR_CALL_EVERY: Duration = Duration::from_secs(1);
/// Lengow's connectors reuse a token for 3000 s.
const CONNECTOR_REUSE: Duration = Duration::from_secs(3000);

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return tokio::runtime::Runtime::new()?.block_on(worker(&args[2..]));
    }
    tokio::runtime::Runtime::new()?.block_on(processes())?;
    let mut rows = Vec::new();
    for n in [1, 4, 16] {
        let per_hour = |fetches: usize| fetches as f64 / HOURS as f64;
        let with_store = simulated(n, Scheme::Store)?;
        let alone = simulated(n, Scheme::Alone)?;
        let connectors = simulated(n, Scheme::Connectors)?;
        rows.push((
            n,
            per_hour(with_store),
            per_hour(alone),
            per_hour(connectors),
        ));
    }
    println!();
    println!(
        "Part 2: token fetches per hour, averaged over {HOURS} simulated hours (cold start included)"
    );
    println!("  (defaults: 1 h lifetime, refresh 10 min ahead; get_token takes {TOKEN_DELAY:?};");
    println!(
        "   a connector process calls the API every {CONNECTOR_CALL_EVERY:?} and reuses the row's token for {CONNECTOR_REUSE:?})"
    );
    println!(
        "| processes | one store (fleet) | a layer per process | connectors: one row, no lock |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for (n, store, alone, connectors) in rows {
        println!("| {n} | {store:.2} | {alone:.2} | {connectors:.2} |");
    }
    Ok(())
}

// ---- Part 1: real processes ------------------------------------------------------------

async fn processes() -> Result<(), BoxError> {
    let Some(redis) = RedisServer::start()? else {
        println!("Part 1 skipped: redis-server is not installed; {INSTALL_HINT}");
        return Ok(());
    };
    let lengow = FakeLengow::builder().token_delay(TOKEN_DELAY).start().await;
    println!(
        "Part 1: {BURST_PROCESSES} processes start cold at once, {BURST_REQUESTS} requests each; get_token takes {TOKEN_DELAY:?}"
    );
    for store in [Some(redis.url()), None] {
        lengow.reset_counters();
        let waits = burst(&lengow, store.as_deref()).await?;
        let label = if store.is_some() {
            "with RedisStore"
        } else {
            "without a store"
        };
        println!(
            "  {label:16} get_token calls: {}, requests answered: {}",
            lengow.token_fetches(),
            lengow.api_requests()
        );
        if store.is_some() {
            let (fetcher, others): (Vec<_>, Vec<_>) =
                waits.iter().partition(|(fetched, _)| *fetched);
            let ms = |w: &(bool, Duration)| w.1.as_secs_f64() * 1000.0;
            let mut others: Vec<f64> = others.iter().map(ms).collect();
            others.sort_by(f64::total_cmp);
            if let (Some(fetcher), Some(first), Some(last)) =
                (fetcher.first(), others.first(), others.last())
            {
                println!(
                    "  cold wait for a token: {:.0} ms in the process that fetched, {first:.0} to {last:.0} ms (median {:.0}) in the {} that waited for it",
                    ms(fetcher),
                    others[others.len() / 2],
                    others.len()
                );
            }
        }
    }
    Ok(())
}

/// Starts the workers, lets them go at once, and returns each one's (fetched it, cold wait).
async fn burst(
    lengow: &FakeLengow,
    redis: Option<&str>,
) -> Result<Vec<(bool, Duration)>, BoxError> {
    let exe = std::env::current_exe()?;
    let credentials = lengow.credentials();
    let mut workers = Vec::new();
    for _ in 0..BURST_PROCESSES {
        let mut child = Command::new(&exe)
            .args(["worker", &lengow.uri().to_string(), redis.unwrap_or("-")])
            .env("LENGOW_ACCESS_TOKEN", credentials.access_token())
            .env("LENGOW_SECRET", credentials.secret())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        if lines.next_line().await?.as_deref() != Some("ready") {
            return Err("a worker did not start".into());
        }
        workers.push((child, stdin, lines));
    }
    for (_, stdin, _) in &mut workers {
        stdin.write_all(b"go\n").await?;
    }
    let mut waits = Vec::new();
    for (mut child, _, mut lines) in workers {
        let line = lines.next_line().await?.ok_or("a worker exited")?;
        let mut words = line.split_whitespace();
        let fetched = words.next() == Some("fetched");
        let micros: u64 = words.next().ok_or("no wait")?.parse()?;
        waits.push((fetched, Duration::from_micros(micros)));
        child.wait().await?;
    }
    Ok(waits)
}

/// A worker process: builds its layer, says `ready`, waits for `go`, sends its requests at
/// once, and prints whether it fetched the token and how long its first answer took.
async fn worker(args: &[String]) -> Result<(), BoxError> {
    let [api, redis] = args else {
        return Err("usage: fleet worker <api url> <redis url | ->".into());
    };
    let mut builder = LengowAuthLayer::builder(Credentials::from_env()?).api_url(api.parse()?);
    if redis != "-" {
        builder = builder.store(RedisStore::open(redis)?);
    }
    let layer = builder.build(Client::builder(TokioExecutor::new()).build_http())?;
    let client = layer.layer(
        Client::builder(TokioExecutor::new()).build_http::<lengow_auth::ReplayBody<Empty<Bytes>>>(),
    );
    println!("ready");
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;
    let started = Instant::now();
    let mut requests = Vec::new();
    for _ in 0..BURST_REQUESTS {
        let client = client.clone();
        let request =
            Request::get(format!("{}/v3.0/orders", api.trim_end_matches('/'))).body(Empty::new())?;
        requests.push(tokio::spawn(async move {
            let response = client.oneshot(request).await?;
            let waited = started.elapsed();
            if response.status() != 200 {
                return Err(format!("the API answered {}", response.status()).into());
            }
            response.into_body().collect().await?;
            Ok::<_, BoxError>(waited)
        }));
    }
    let mut first = Duration::MAX;
    for request in requests {
        first = first.min(request.await??);
    }
    let fetched = if layer.stats().fetches > 0 {
        "fetched"
    } else {
        "waited"
    };
    println!("{fetched} {}", first.as_micros());
    Ok(())
}

// ---- Part 2: fetches per hour on a paused clock ------------------------------------------

#[derive(Clone, Copy)]
enum Scheme {
    /// Every process's layer shares one store.
    Store,
    /// Every process has its own layer.
    Alone,
    /// Lengow's connectors: one database row, no lock; a process that finds the row's token
    /// older than 3000 s fetches its own and writes it.
    Connectors,
}

/// Token fetches of `n` processes over the simulated hours.
fn simulated(n: usize, scheme: Scheme) -> Result<usize, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    runtime.block_on(async move {
        // An in-process `get_token`: a fresh token after TOKEN_DELAY, counted.
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fetches);
        let token_client = tower::service_fn(move |_request: Request<Full<Bytes>>| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(TOKEN_DELAY).await;
                let body = format!(r#"{{"token":"token-{n}","account_id":1}}"#);
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
            }
        });
        let end = Instant::now() + Duration::from_secs(HOURS * 3600);
        match scheme {
            Scheme::Store | Scheme::Alone => {
                let store = MemoryStore::new();
                let mut layers = Vec::new();
                for _ in 0..n {
                    let builder = LengowAuthLayer::builder(Credentials::new("access", "secret"));
                    let builder = match scheme {
                        Scheme::Store => builder.store(store.clone()),
                        _ => builder,
                    };
                    let layer = builder.build(token_client.clone())?;
                    // First use starts the background refresher, which keeps the token fresh.
                    layer.account_id().await?;
                    layers.push(layer);
                }
                tokio::time::sleep_until(end).await;
            }
            Scheme::Connectors => {
                let row: Arc<tokio::sync::Mutex<Option<Instant>>> = Arc::default();
                let mut processes = Vec::new();
                for i in 0..n {
                    let (row, client) = (Arc::clone(&row), token_client.clone());
                    // Each process calls at its own phase within the second.
                    let phase = CONNECTOR_CALL_EVERY.mul_f64(i as f64 / n as f64);
                    processes.push(tokio::spawn(async move {
                        tokio::time::sleep(phase).await;
                        while Instant::now() < end {
                            let stale = row
                                .lock()
                                .await
                                .is_none_or(|saved| saved.elapsed() >= CONNECTOR_REUSE);
                            if stale {
                                // No lock held while fetching: that is the connectors' scheme.
                                let request = Request::post("http://lengow/access/get_token")
                                    .body(Full::new(Bytes::new()));
                                if let Ok(request) = request {
                                    let _ = client.clone().oneshot(request).await;
                                    *row.lock().await = Some(Instant::now());
                                }
                            }
                            tokio::time::sleep(CONNECTOR_CALL_EVERY).await;
                        }
                    }));
                }
                for process in processes {
                    process.await?;
                }
            }
        }
        Ok(fetches.load(Ordering::SeqCst))
    })
}
