//! axum: `ClientInfo` as an extractor, a `Router` served as it is, and a handler test with a
//! hand-made `ClientInfo` (no socket).
#![cfg(feature = "axum")]

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_remote_client::{ClientInfo, Options, Server};
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

async fn whoami(client: ClientInfo) -> String {
    format!("{} {}", client.id(), client.remote_address())
}

fn app() -> Router {
    Router::new().route("/", get(whoami))
}

#[tokio::test]
async fn router_served_by_the_server_extracts_client_info() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    tokio::spawn(server.serve(app()));

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", "x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let id = handle.clients()[0].id();
    assert_eq!(body, format!("{id} {local}"));
}

#[tokio::test]
async fn handler_test_with_a_hand_made_client_info() {
    let client = ClientInfo::builder(
        "203.0.113.9:4000".parse::<std::net::SocketAddr>().unwrap(),
        "127.0.0.1:80".parse::<std::net::SocketAddr>().unwrap(),
    )
    .build();
    let mut request = Request::get("/").body(axum::body::Body::empty()).unwrap();
    request.extensions_mut().insert(client.clone());
    let response = app().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{} 203.0.113.9:4000", client.id()));
}

#[tokio::test]
async fn missing_client_info_is_a_500() {
    let request = Request::get("/").body(axum::body::Body::empty()).unwrap();
    let response = app().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn optional_client_info_is_none_without_the_layer() {
    async fn maybe(client: Option<ClientInfo>) -> &'static str {
        if client.is_some() {
            "some"
        } else {
            "none"
        }
    }
    let app = Router::new().route("/", get(maybe));
    let request = Request::get("/").body(axum::body::Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "none");
}
