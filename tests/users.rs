//! What a user of the crate relies on at its edges: the origin the layer reports, path-only
//! request URIs resolved against it through a hyper-util client, and a path-only request whose
//! `Host` header names another host passing through untouched, and tower-http's
//! `FollowRedirect` inside the layer.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::header::{AUTHORIZATION, HOST, LOCATION};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lengow_auth::testing::FakeLengow;
use lengow_auth::{Credentials, DEFAULT_API_URL, LengowAuthLayer, ReplayBody};
use tower::{Layer, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

#[tokio::test]
async fn the_layer_says_which_origin_it_was_built_for() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    assert_eq!(layer.api_url(), &fake.uri());
    assert_eq!(layer.clone().api_url(), &fake.uri());

    let production = LengowAuthLayer::builder(Credentials::new("key", "secret"))
        .build(token_client())
        .unwrap();
    assert_eq!(production.api_url(), &Uri::from_static(DEFAULT_API_URL));
    let preproduction = LengowAuthLayer::builder(Credentials::new("key", "secret"))
        .api_url(Uri::from_static("https://api.lengow.net"))
        .build(token_client())
        .unwrap();
    assert_eq!(preproduction.api_url(), "https://api.lengow.net");
    // Reading it fetches nothing.
    assert_eq!(fake.token_fetches(), 0);
}

#[tokio::test]
async fn a_path_only_request_is_resolved_and_authenticated_through_hyper_util() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    let account_id = layer.account_id().await.unwrap();

    let request = Request::get(format!("/v3.0/orders?account_id={account_id}"))
        .header("x-request-id", "path-only")
        .body(Full::default())
        .unwrap();
    let (response, body) = send(&client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body, r#"{"count":0,"results":[],"next":null}"#);
    assert_eq!(fake.attempts("path-only"), 1);

    // A `Host` header naming the layer's own origin changes nothing.
    let request = Request::get("/v3.0/orders")
        .header(HOST, fake.addr().to_string())
        .header("x-request-id", "own-host")
        .body(Full::default())
        .unwrap();
    let (response, _) = send(&client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.attempts("own-host"), 1);

    // A path-only POST is replayed after a revocation like any other.
    fake.revoke_all_tokens();
    let form = Bytes::from(format!("account_id={account_id}&action_type=ship"));
    let request = Request::post("/v3.0/orders/actions/")
        .header("x-request-id", "path-only-post")
        .body(Full::new(form.clone()))
        .unwrap();
    let (response, echoed) = send(&client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(echoed, form);
    assert_eq!(fake.attempts("path-only-post"), 2);
    assert_eq!(fake.bodies("path-only-post"), vec![form.clone(), form]);

    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(fake.api_requests(), 4);
    assert_eq!(fake.requests_without_token(), 0);
    assert_eq!(fake.not_found_requests(), 0);
}

/// What the inner service was handed: each request's URI and headers.
type Seen = Arc<Mutex<Vec<(Uri, HeaderMap)>>>;

/// An inner service that records what it is handed and answers 200.
fn recorder(
    seen: Seen,
) -> impl tower::Service<
    Request<ReplayBody<Empty<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let seen = Arc::clone(&seen);
        async move {
            let (parts, _body) = request.into_parts();
            seen.lock().unwrap().push((parts.uri, parts.headers));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner"))))
        }
    })
}

#[tokio::test]
async fn a_path_only_request_for_another_host_passes_through_untouched() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let seen = Seen::default();
    let service = layer.layer(recorder(Arc::clone(&seen)));

    for host in ["example.com", "localhost", "127.0.0.2"] {
        let request = Request::get("/v3.0/orders?account_id=1")
            .header(HOST, format!("{host}:{}", fake.addr().port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "inner");
    }
    // The layer's own host on another port is another origin too.
    let request = Request::get("/v3.0/orders")
        .header(HOST, "127.0.0.1:1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    service.clone().oneshot(request).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for (uri, headers) in seen.iter() {
        assert_eq!(uri.scheme(), None, "{uri}");
        assert_eq!(uri.authority(), None, "{uri}");
        assert!(uri.path().starts_with("/v3.0/orders"), "{uri}");
        assert!(headers.get(AUTHORIZATION).is_none(), "{uri}: {headers:?}");
        assert_eq!(headers.len(), 1, "{headers:?}");
    }
    assert_eq!(seen[0].0, "/v3.0/orders?account_id=1");
    assert_eq!(
        seen[0].1[HOST],
        format!("example.com:{}", fake.addr().port())
    );
    // Nothing went to Lengow: no token was fetched for requests that never carry one.
    assert_eq!(fake.token_fetches(), 0);
    assert_eq!(layer.stats().fetches, 0);
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_path_only_request_goes_through_reqwest_too() {
    use lengow_auth::ReqwestService;

    let fake = FakeLengow::start().await;
    let reqwest = ReqwestService::new(reqwest::Client::new());
    let layer = builder(&fake).build(reqwest.clone()).unwrap();
    let client = layer.layer(reqwest);
    let request = Request::get("/v3.0/me")
        .header("x-request-id", "me")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.attempts("me"), 1);
    assert_eq!(fake.token_fetches(), 1);
    assert_eq!(fake.requests_without_token(), 0);
}

#[tokio::test]
async fn stats_serialise_for_a_stats_endpoint() {
    let fake = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let client = client::<Full<Bytes>>(&layer);
    layer.account_id().await.unwrap();
    fake.revoke_all_tokens();
    let (response, _) = send(&client, get(&fake, "/v3.0/orders")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let json = serde_json::to_value(layer.stats()).unwrap();
    assert_eq!(json["fetches"], 2);
    assert_eq!(json["forced_refreshes"], 1);
    assert_eq!(json["replays"], 1);
    assert_eq!(json["fetch_failures"], 0);
    assert_eq!(json.as_object().unwrap().len(), 12, "{json}");
}

/// The API's own client behind a redirect: `/moved` answers 307 to `moved_to`, `/away` to
/// `away`, and every other request goes to the network through hyper-util.
fn redirecting(
    moved_to: String,
    away: String,
) -> impl tower::Service<
    Request<ReplayBody<Empty<Bytes>>>,
    Response = Response<UnsyncBoxBody<Bytes, BoxError>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let api = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>();
    tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let location = match request.uri().path() {
            "/moved" => Some(moved_to.clone()),
            "/away" => Some(away.clone()),
            _ => None,
        };
        let api = api.clone();
        async move {
            if let Some(location) = location {
                let redirect = Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header(LOCATION, location)
                    .body(Empty::new().map_err(Into::into).boxed_unsync())?;
                return Ok(redirect);
            }
            let response = api.oneshot(request).await?;
            Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
        }
    })
}

#[tokio::test]
async fn follow_redirect_sits_inside_the_layer_and_drops_the_token_for_another_origin() {
    let fake = FakeLengow::start().await;
    let elsewhere = FakeLengow::start().await;
    let layer = builder(&fake).build(token_client()).unwrap();
    let account_id = layer.account_id().await.unwrap();
    let orders = format!("/v3.0/orders?account_id={account_id}");
    let client = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .layer(FollowRedirectLayer::new())
        .service(redirecting(fake.url(&orders), elsewhere.url(&orders)));
    let get = |path: &str, id: &str| {
        Request::get(fake.url(path))
            .header("x-request-id", id)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    // Followed on the Lengow origin, with the token.
    let response = client
        .clone()
        .oneshot(get("/moved", "moved"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.attempts("moved"), 1);

    // A rejection after the redirect is replayed through it, with the newer token.
    fake.revoke_all_tokens();
    let response = client
        .clone()
        .oneshot(get("/moved", "again"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.attempts("again"), 2);
    assert_eq!(fake.token_fetches(), 2);
    assert_eq!(fake.requests_without_token(), 0);

    // Followed to another origin without it: tower-http drops `Authorization` on the way.
    let response = client.oneshot(get("/away", "away")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(elsewhere.requests_without_token(), 1);
    assert_eq!(elsewhere.seen_authorizations(), Vec::<String>::new());
    assert_eq!(elsewhere.token_fetches(), 0);
}
