//! `ReqwestService` over real sockets against FakeLengow: as the token client, as the API client
//! under the layer, and replaying a POST body byte for byte after a revocation.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use lengow_auth::testing::FakeLengow;
use lengow_auth::{LengowAuth, LengowAuthLayer, ReplayBody, ReqwestService};
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A layer whose token client is reqwest, and the reqwest API client under it.
fn reqwest_stack(fake: &FakeLengow) -> (LengowAuthLayer, LengowAuth<ReqwestService>) {
    let reqwest = ReqwestService::new(reqwest::Client::new());
    let layer = LengowAuthLayer::builder(fake.credentials())
        .api_url(fake.uri())
        .build(reqwest.clone())
        .expect("a loopback origin");
    let client = layer.layer(reqwest);
    (layer, client)
}

/// Sends `request` and reads the whole answer.
async fn send<B>(
    client: &LengowAuth<ReqwestService>,
    request: Request<B>,
) -> Result<(StatusCode, Bytes), BoxError>
where
    B: Body + Send + Sync + Unpin + 'static,
    B::Data: Send + Into<Bytes>,
    B::Error: Into<BoxError>,
{
    let response = client.clone().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[tokio::test]
async fn reqwest_fetches_the_token_and_carries_the_calls() {
    let fake = FakeLengow::start().await;
    let (layer, client) = reqwest_stack(&fake);

    let account_id = layer.account_id().await.unwrap();
    assert_eq!(account_id, fake.account_id());
    for i in 0..5 {
        let request = Request::get(fake.url(&format!("/v3.0/orders?account_id={account_id}")))
            .header("x-request-id", format!("get-{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (status, body) = send(&client, request).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"count":0,"results":[],"next":null}"#);
        assert_eq!(fake.attempts(&format!("get-{i}")), 1);
    }
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.api_requests(), 5);
    assert_eq!(fake.requests_without_token(), 0);
    assert_eq!(fake.rejected_requests(), 0);
    let seen = fake.seen_authorizations();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|token| *token == seen[0]));
    // GETs went without a body.
    assert_eq!(fake.bodies("get-0"), vec![Bytes::new()]);
}

#[tokio::test]
async fn a_post_is_replayed_byte_for_byte_after_a_revocation() {
    let fake = FakeLengow::start().await;
    let (layer, client) = reqwest_stack(&fake);
    layer.account_id().await.unwrap();
    fake.revoke_all_tokens();

    let form = Bytes::from(format!(
        "account_id={}&marketplace_order_id=A-1&action_type=ship&tracking_number=%C3%A9-42",
        fake.account_id()
    ));
    let request = Request::post(fake.url("/v3.0/orders/actions/"))
        .header("x-request-id", "ship-1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(form.clone()))
        .unwrap();
    let (status, echoed) = send(&client, request).await.unwrap();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed, form);
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(fake.attempts("ship-1"), 2);
    assert_eq!(fake.bodies("ship-1"), vec![form.clone(), form]);
    assert_eq!(fake.rejected_requests(), 1);
    let seen = fake.seen_authorizations();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1], "the replay went out with the new token");
    assert_eq!(layer.stats().replays, 1);
}

/// A body sent in chunks of unknown total length (reqwest sends it chunked).
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test]
async fn a_streamed_body_is_replayed_byte_for_byte_too() {
    let fake = FakeLengow::start().await;
    let (layer, client) = reqwest_stack(&fake);
    layer.account_id().await.unwrap();
    fake.revoke_all_tokens();

    let chunks: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i; 1000])).collect();
    let whole: Bytes = chunks.concat().into();
    let request = Request::post(fake.url("/v3.0/orders/moi/"))
        .header("x-request-id", "moi-1")
        .header("content-type", "application/json")
        .body(Chunks(chunks.into()))
        .unwrap();
    let (status, echoed) = send(&client, request).await.unwrap();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed, whole);
    assert_eq!(fake.attempts("moi-1"), 2);
    assert_eq!(fake.bodies("moi-1"), vec![whole.clone(), whole]);
    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test]
async fn a_request_reqwest_cannot_send_fails_before_reaching_the_server() {
    let fake = FakeLengow::start().await;
    let request = Request::get("/v3.0/orders")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let error = ReqwestService::new(reqwest::Client::new())
        .oneshot(request)
        .await
        .expect_err("no scheme, no host");
    assert!(error.is_builder(), "{error:?}");
    assert_eq!(fake.api_requests() + fake.not_found_requests(), 0);
}

#[test]
fn the_bodies_the_layer_hands_on_are_send_and_sync() {
    fn forwardable<B: Send + Sync + 'static>() {}
    forwardable::<ReplayBody<Full<Bytes>>>();
    forwardable::<ReplayBody<Empty<Bytes>>>();
    forwardable::<ReplayBody<String>>();
    forwardable::<ReplayBody<Chunks>>();
}
