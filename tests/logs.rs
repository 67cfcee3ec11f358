//! Every log line at trace level, through fetches, refreshes, replays and failures, is free of
//! tokens and secrets.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use lengow_auth::testing::{FakeLengow, TokenFailure};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_or_secret_reaches_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeLengow::builder()
        .credentials("access-7f3a9c", "secret-b81d44e0")
        .token_lifetime(Duration::from_millis(1200))
        .start()
        .await;
    let layer = builder(&fake)
        .token_lifetime(Duration::from_millis(1200))
        .refresh_ahead(Duration::from_millis(600))
        .min_refresh_interval(Duration::from_millis(1))
        .build(token_client())
        .unwrap();
    let client = client::<Full<Bytes>>(&layer);

    // A fetch, a background refresh, a replay after a revocation (on a route whose 403 quotes
    // the token), and a failed fetch whose error body quotes the secret.
    send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    fake.revoke_all_tokens();
    let (response, _) = send(
        &client,
        post(&fake, "/v3.0/orders/actions/", "a", payload(0, 64)),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Past the (1 ms) floor between forced refreshes.
    tokio::time::sleep(Duration::from_millis(10)).await;
    fake.revoke_all_tokens();
    fake.push_token_failure(
        TokenFailure::status(StatusCode::INTERNAL_SERVER_ERROR)
            .body("secret-b81d44e0 was sent by access-7f3a9c"),
    );
    // The forced refresh fails: the rejection comes back as it is, marked.
    let (response, _) = send(
        &client,
        post(&fake, "/v3.0/orders/actions/", "b", payload(1, 64)),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let rejected = response.extensions().get::<lengow_auth::TokenRejected>();
    assert!(rejected.is_some_and(|r| !r.replayed()));

    let stats = layer.stats();
    assert!(stats.fetches >= 4 && stats.background_refreshes >= 1 && stats.replays >= 1);
    assert_eq!(stats.fetch_failures, 1);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("lengow_auth"), "the layer logged nothing");
    assert!(text.contains("token fetch failed"));
    let tokens = fake.seen_authorizations();
    assert!(tokens.len() >= 3);
    // The failed fetch's error is in the warning, with the server's message scrubbed.
    assert!(text.contains("was sent by"), "{text}");
    let shown = text;
    for secret in tokens
        .iter()
        .map(String::as_str)
        .chain(["secret-b81d44e0", "access-7f3a9c"])
    {
        assert!(!shown.contains(secret), "{secret} appears in:\n{shown}");
    }
}
