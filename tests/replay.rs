//! Bodies replayed over real sockets against a small API that can answer before it reads a
//! request's body, as Lengow's front may: what the first send read is replayed, then the
//! rest of the caller's body.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lengow_auth::{Credentials, LengowAuthLayer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

/// The API: rejects the tokens in `rejected`; answers `x-early: 1` requests with a rejected
/// token before reading their body; echoes the body of every other request.
#[derive(Default)]
struct Api {
    rejected: Mutex<HashSet<String>>,
    /// Each body read to its end, with the token it came with.
    bodies: Mutex<Vec<(String, Bytes)>>,
    /// Notified when an `x-early` request comes with a good token: the replay of one that
    /// was rejected.
    replay_came: Notify,
}

async fn serve(api: Arc<Api>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let api = Arc::clone(&api);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let api = Arc::clone(&api);
                async move { Ok::<_, Infallible>(answer(&api, request).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    origin
}

async fn answer(api: &Api, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let token = request
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let rejected = api.rejected.lock().unwrap().contains(&token);
    let unauthorized = || {
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
    };
    if request.headers().contains_key("x-early") {
        if rejected {
            return unauthorized();
        }
        api.replay_came.notify_one();
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    api.bodies.lock().unwrap().push((token, body.clone()));
    if rejected {
        return unauthorized();
    }
    Response::new(Full::new(body))
}

/// An in-process `get_token` handing out `token-0`, `token-1`, …
fn token_client() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let issued = Arc::new(Mutex::new(0));
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        let issued = Arc::clone(&issued);
        async move {
            let mut n = issued.lock().unwrap();
            let body = format!(r#"{{"token":"token-{n}","account_id":1}}"#);
            *n += 1;
            Ok(Response::new(Full::from(body)))
        }
    })
}

/// A layer whose first token, `token-0`, the API rejects from now on.
async fn with_a_revoked_token(api: &Arc<Api>, origin: &str) -> LengowAuthLayer {
    let layer = LengowAuthLayer::builder(Credentials::new("access", "secret"))
        .api_url(origin.parse().unwrap())
        .build(token_client())
        .unwrap();
    layer.account_id().await.unwrap();
    api.rejected.lock().unwrap().insert("token-0".to_owned());
    layer
}

fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Sends `body` to `origin` through `layer`; the status and the answer's body.
async fn post<B>(layer: &LengowAuthLayer, origin: &str, body: B, early: bool) -> (StatusCode, Bytes)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tower::BoxError>,
{
    let client = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    let mut request = Request::post(format!("{origin}/v3.0/orders/actions/"));
    if early {
        request = request.header("x-early", "1");
    }
    let response = client.oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// One chunk, an exact size hint, and no word of its end: hyper stops reading at the
/// content length and never polls it again.
struct Exact(Option<Bytes>, u64);

impl Body for Exact {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.1)
    }
}

#[tokio::test]
async fn a_body_with_an_exact_size_that_never_reports_its_end_is_replayed() {
    let api = Arc::new(Api::default());
    let origin = serve(Arc::clone(&api)).await;
    let layer = with_a_revoked_token(&api, &origin).await;
    let data = payload(3000);
    let (status, echoed) = post(&layer, &origin, Exact(Some(data.clone()), 3000), false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed, data);
    let bodies = api.bodies.lock().unwrap().clone();
    let expected = vec![("token-0".into(), data.clone()), ("token-1".into(), data)];
    assert_eq!(bodies, expected);
    assert_eq!((layer.stats().fetches, layer.stats().replays), (2, 1));
}

/// A streamed body: its first chunk at once, the rest only once the replay has reached the
/// API, so that the first send is still streaming when its rejection comes.
struct Streamed {
    chunks: Vec<Bytes>,
    api: Arc<Api>,
    wait: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(wait) = self.wait.as_mut() {
            std::task::ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        let chunk = self.chunks.remove(0);
        if self.chunks.len() == 2 {
            let api = Arc::clone(&self.api);
            self.wait = Some(Box::pin(async move { api.replay_came.notified().await }));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

#[tokio::test]
async fn a_streamed_body_rejected_before_it_was_read_is_replayed_whole() {
    let api = Arc::new(Api::default());
    let origin = serve(Arc::clone(&api)).await;
    let layer = with_a_revoked_token(&api, &origin).await;
    let data = payload(3 * 1000);
    let chunks = (0..3)
        .map(|i| data.slice(i * 1000..(i + 1) * 1000))
        .collect();
    let body = Streamed {
        chunks,
        api: Arc::clone(&api),
        wait: None,
    };
    let (status, echoed) = post(&layer, &origin, body, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed, data);
    // The first send was never read; the replay was, whole.
    let bodies = api.bodies.lock().unwrap().clone();
    assert_eq!(bodies, vec![("token-1".into(), data)]);
    assert_eq!((layer.stats().fetches, layer.stats().replays), (2, 1));
}
