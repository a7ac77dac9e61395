//! `ClientLayer` on its own (custom accept loop, direct calls), forging attempts, and
//! `ClientInfo::builder` as a test double.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_remote_client::{
    layer::ScreeningLayer, Address, ClientInfo, ClientIo, ClientLayer, Options, RequestBody,
    Status, TlsInfo,
};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_layer::Layer;

/// Answers "id remote-ip" of the `ClientInfo` it finds.
async fn whoami<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().expect("ClientInfo");
    let ip = client
        .remote_address()
        .ip()
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    Ok(ok(format!("{} {}", client.id(), ip)))
}

#[tokio::test]
async fn request_headers_cannot_forge_the_client() {
    let mut h = serve(Options::default(), tower::service_fn(whoami::<RequestBody>)).await;
    let mut c = h1_client(h.addr).await;
    let client = h.next_client().await;
    let req = Request::builder()
        .uri("/")
        .header("host", "127.0.0.1")
        .header("x-client-id", "999")
        .header("client-id", "999")
        .header("remote-address", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("GET", c.sender.send_request(req)).await.unwrap();
    assert_eq!(body_of(resp).await, format!("{} 127.0.0.1", client.id()));
    assert_ne!(client.id().get(), 999);
    assert!(
        !client.is_encrypted(),
        "forwarded proto=https does not make TLS"
    );
}

#[tokio::test]
async fn client_layer_replaces_a_client_info_already_in_the_extensions() {
    let real = ClientInfo::builder(
        "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
    )
    .build();
    let fake = ClientInfo::builder(
        "6.6.6.6:666".parse::<SocketAddr>().unwrap(),
        "6.6.6.6:80".parse::<SocketAddr>().unwrap(),
    )
    .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let tx = tx.clone();
        async move {
            let seen = req.extensions().get::<ClientInfo>().unwrap().clone();
            tx.send((seen.id(), seen.pending_responses())).unwrap();
            Ok::<_, Infallible>(ok("inner"))
        }
    });
    let service = ClientLayer::new(real.clone()).layer(inner);
    let mut req = Request::new(Full::new(Bytes::from_static(b"body")));
    req.headers_mut().insert("host", "x".parse().unwrap());
    req.extensions_mut().insert(fake.clone());
    let resp = within("call", service.clone().oneshot(req)).await.unwrap();
    let (seen_id, seen_pending) = within("the inner service runs", rx.recv()).await.unwrap();
    assert_eq!(
        seen_id,
        real.id(),
        "the layer's client, not the one in the request"
    );
    assert_ne!(seen_id, fake.id());
    assert_eq!(seen_pending, 1);
    assert_eq!(fake.pending_responses(), 0, "the fake is not counted");
    assert_eq!(
        real.pending_responses(),
        1,
        "response body not consumed yet"
    );
    // The request body was dropped unread by the inner service.
    assert_eq!(real.pending_requests(), 0);
    let body = within("body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "inner");
    assert_eq!(real.pending_responses(), 0, "response body ended");

    // ClientLayer changes no answer: TRACE reaches the service.
    let req = Request::builder()
        .method("TRACE")
        .uri("/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("TRACE", service.clone().oneshot(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(rx.try_recv().is_ok(), "the inner service ran");

    // The screening is a layer of its own, and works without any socket.
    let screened = ScreeningLayer::new(Options::default()).layer(service);
    let req = Request::builder()
        .method("TRACE")
        .uri("/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("TRACE", screened.oneshot(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(rx.try_recv().is_err(), "the inner service did not run");
}

#[tokio::test]
async fn client_layer_with_hyper_builder_and_client_io() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (clients_tx, mut clients) = mpsc::unbounded_channel();
    let accept = tokio::spawn(async move {
        for _ in 0..2 {
            let (stream, remote) = listener.accept().await.unwrap();
            let client = ClientInfo::builder(remote, stream.local_addr().unwrap()).build();
            clients_tx.send(client.clone()).unwrap();
            let service =
                ClientLayer::new(client.clone()).layer(tower::service_fn(whoami::<Incoming>));
            let io = TokioIo::new(ClientIo::new(stream, client));
            tokio::spawn(async move {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, TowerToHyperService::new(service))
                    .await
                    .ok();
            });
        }
    });
    let mut c = h1_client(addr).await;
    let client = within("accepted", clients.recv()).await.unwrap();
    let closed = closed_signal(&client);
    for _ in 0..2 {
        let resp = within("GET", c.sender.send_request(h1_req("GET", "/", "")))
            .await
            .unwrap();
        assert_eq!(body_of(resp).await, format!("{} 127.0.0.1", client.id()));
    }
    assert_eq!(client.remote_port(), Some(c.local.port()));
    assert!(client.bytes_read() > 0 && client.bytes_written() > 0);
    assert_eq!(client.status(), Status::OPEN);
    // The connection ends: dropping the ClientIo closes the client.
    drop(c);
    wait_closed("ClientIo dropped", closed).await;
    assert_eq!(client.status(), Status::CLOSED_RDWR);

    // close() refuses all further I/O on a ClientIo: the next request gets no response, and
    // the peer sees the connection end.
    let mut stream = connect(addr).await;
    let client = within("accepted", clients.recv()).await.unwrap();
    let closed = closed_signal(&client);
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 200);
    client.close();
    wait_closed("close()", closed).await;
    assert!(client.is_closed());
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let rest = read_to_eof(&mut stream).await.unwrap_or_default();
    assert!(
        rest.is_empty(),
        "no response after close(): {:?}",
        String::from_utf8_lossy(&rest)
    );
    within("accept loop", accept).await.unwrap();
}

// A handler as users write it, tested without a socket.
async fn greet(req: Request<Full<Bytes>>) -> Response<String> {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        let mut resp = Response::new(String::new());
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return resp;
    };
    let scheme = if client.is_encrypted() {
        "https"
    } else {
        "http"
    };
    Response::new(format!(
        "{scheme} {} {:?} limit={}",
        client.remote_address(),
        client.remote_port(),
        client.options().body_size_limit()
    ))
}

#[tokio::test]
async fn client_info_builder_as_a_test_double() {
    let mut options = Options::default();
    options = options.with_body_size_limit(77);
    let client = ClientInfo::builder(
        "203.0.113.7:50000".parse::<SocketAddr>().unwrap(),
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
    )
    .options(Arc::new(options))
    .build();
    let mut req = Request::new(Full::new(Bytes::new()));
    req.extensions_mut().insert(client.clone());
    let resp = greet(req).await;
    assert_eq!(resp.body(), "http 203.0.113.7:50000 Some(50000) limit=77");
    // Without a ClientInfo the handler notices.
    let resp = greet(Request::new(Full::new(Bytes::new()))).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // With TLS.
    let tls = TlsInfo::new("TLSv1.3", "TLS13_AES_128_GCM_SHA256", 128)
        .with_alpn_protocol(&b"h2"[..])
        .with_server_name("example.com");
    let secure = ClientInfo::builder(
        "203.0.113.7:50001".parse::<SocketAddr>().unwrap(),
        "127.0.0.1:8443".parse::<SocketAddr>().unwrap(),
    )
    .tls(tls.clone())
    .build();
    assert!(secure.is_encrypted());
    assert_eq!(secure.tls(), Some(&tls));
    assert_eq!(secure.tls().unwrap().alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(secure.tls().unwrap().server_name(), Some("example.com"));
    let mut req = Request::new(Full::new(Bytes::new()));
    req.extensions_mut().insert(secure.clone());
    assert!(greet(req).await.body().starts_with("https "));
    assert!(
        secure.id() > client.id(),
        "each build() gets a new, larger id"
    );
}

#[test]
fn builder_defaults_and_close_without_io() {
    let client = ClientInfo::builder(
        Address::Unix(None),
        Address::Unix(Some(PathBuf::from("/tmp/app.sock"))),
    )
    .build();
    assert!(client.is_unix());
    assert_eq!(client.remote_port(), None);
    assert_eq!(client.local_port(), None);
    assert_eq!(
        client.local_address().unix_path(),
        Some(std::path::Path::new("/tmp/app.sock"))
    );
    assert_eq!(client.local_address().to_string(), "/tmp/app.sock");
    assert_eq!(client.remote_address().to_string(), "");
    assert!(client.tls().is_none());
    assert_eq!(
        client.options().body_size_limit(),
        Options::default().body_size_limit()
    );
    assert_eq!(
        (client.pending_requests(), client.pending_responses()),
        (0, 0)
    );
    assert!(!client.is_waiting_on_response());
    assert_eq!(client.status(), Status::OPEN);
    assert_eq!((client.bytes_read(), client.bytes_written()), (0, 0));
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    client.on_close(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(count.load(Ordering::SeqCst), 0);
    let clone = client.clone();
    clone.close();
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "clones are the same client"
    );
    assert!(client.is_closed());
    client.close();
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// The crate calls a ready service as soon as hyper hands it the request (on the connection's
/// task, where hyper calls a service of its own): a service whose `call` panics fails that
/// request alone. The HTTP/2 connection goes on serving its other streams.
#[tokio::test]
async fn a_service_panicking_in_call_fails_its_request_alone() {
    use hyper_remote_client::{Options, RequestBody};
    let service = tower::service_fn(|req: http::Request<RequestBody>| {
        if req.uri().path() == "/panic" {
            panic!("the service panics in call (expected by this test)");
        }
        async { Ok::<_, std::convert::Infallible>(common::ok("ok")) }
    });
    let harness = common::serve(Options::default(), service).await;
    let mut client = common::h2_client(harness.addr).await;

    let failed = common::within(
        "the panicking request",
        client
            .sender
            .send_request(common::h2_req(harness.addr, "GET", "/panic", "")),
    )
    .await;
    assert!(failed.is_err(), "the stream is reset: {failed:?}");

    for _ in 0..3 {
        let response = common::within(
            "a request after it, on the same connection",
            client
                .sender
                .send_request(common::h2_req(harness.addr, "GET", "/ok", "")),
        )
        .await
        .expect("the connection still serves");
        assert_eq!(response.status(), 200);
        assert_eq!(common::body_of(response).await, "ok");
    }
    assert!(!client.conn.is_finished(), "the connection is still open");
}
