//! HTTP/3 (feature `http3`): a real quinn + h3 client over UDP on 127.0.0.1 against a `Server`
//! with a `QuicListener`: the `ClientInfo` of its requests, bodies and limits, pending counts,
//! close from a handler and by id, admission shared with TCP, graceful shutdown.
#![cfg(feature = "http3")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::{eventually, within};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_remote_client::http3::{PeerAddress, QuicListener};
use hyper_remote_client::tls::rustls::{self, pki_types};
use hyper_remote_client::{ClientInfo, Options, RequestBody, Server, ServerHandle, Status};
use tokio::sync::{mpsc, Mutex};

/// A self-signed certificate for `localhost`.
struct Cert {
    der: pki_types::CertificateDer<'static>,
    key: pki_types::PrivateKeyDer<'static>,
}

fn cert() -> Cert {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        der: certified.cert.der().clone(),
        key: pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(
            certified.key_pair.serialize_der(),
        )),
    }
}

/// The HTTP/3 configuration of the crate (one TLS 1.3 suite: the cipher is known).
fn quic_config(cert: &Cert) -> Arc<rustls::ServerConfig> {
    Arc::new(
        hyper_remote_client::http3::server_config(
            vec![cert.der.clone()],
            cert.key.clone_key(),
            hyper_remote_client::tls::ClientAuth::None,
        )
        .unwrap(),
    )
}

/// A running server with one QUIC listener (and, if asked, one TCP listener).
struct Running {
    handle: ServerHandle,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    cert: Cert,
    served: tokio::task::JoinHandle<()>,
}

async fn start<S, B>(options: Options, with_tcp: bool, service: S) -> Running
where
    S: hyper_remote_client::layer::Handler<B>,
    B: hyper_remote_client::layer::HandlerBody,
{
    start_with(options, with_tcp, |quic| quic, service).await
}

/// [`start`], with the QUIC listener set up by `setup`.
async fn start_with<S, B>(
    options: Options,
    with_tcp: bool,
    setup: impl FnOnce(QuicListener) -> QuicListener,
    service: S,
) -> Running
where
    S: hyper_remote_client::layer::Handler<B>,
    B: hyper_remote_client::layer::HandlerBody,
{
    let cert = cert();
    let quic = QuicListener::bind("127.0.0.1:0".parse().unwrap(), quic_config(&cert)).unwrap();
    let quic = setup(quic);
    let udp = quic.local_addr().unwrap();
    let mut server = Server::new(options).quic(quic);
    let mut tcp = None;
    if with_tcp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tcp = Some(listener.local_addr().unwrap());
        server = server.listener(listener);
    }
    let handle = server.handle();
    let served = tokio::spawn(server.serve(service));
    within("listening", handle.listening()).await;
    Running {
        handle,
        udp,
        tcp,
        cert,
        served,
    }
}

/// An HTTP/3 client: one QUIC connection, and the h3 driver polled on a task.
struct H3Client {
    /// Kept with its connection.
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    authority: String,
}

thread_local! {
    /// Set on a test's thread: the clients it connects then PING this often.
    static PING_EVERY: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

async fn try_connect(
    addr: SocketAddr,
    cert: &Cert,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    if let Some(every) = PING_EVERY.with(|every| every.get()) {
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(every));
        config.transport_config(Arc::new(transport));
    }
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(addr, "localhost").unwrap();
    Ok((endpoint, within("QUIC handshake", connecting).await?))
}

async fn connect(addr: SocketAddr, cert: &Cert) -> H3Client {
    let (endpoint, connection) = try_connect(addr, cert).await.expect("QUIC connection");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
        .await
        .unwrap();
    let driver =
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    H3Client {
        _endpoint: endpoint,
        connection,
        send,
        driver,
        authority: format!("localhost:{}", addr.port()),
    }
}

/// A response as the client got it.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl H3Client {
    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
    }

    /// Sends `req` with `body` (none if empty), reads the whole answer.
    async fn send(
        &mut self,
        req: Request<()>,
        body: &[u8],
    ) -> Result<Answer, h3::error::StreamError> {
        let mut stream = self.send.send_request(req).await?;
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body)).await?;
        }
        stream.finish().await?;
        let response = stream.recv_response().await?;
        let mut bytes = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                bytes.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: Bytes::from(bytes),
        })
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = self.request("GET", path).body(()).unwrap();
        within(path, self.send(req, b"")).await.expect("GET")
    }

    /// The QUIC connection's end, as the client sees it.
    async fn closed(&self) -> quinn::ConnectionError {
        within("QUIC connection closed", self.connection.closed()).await
    }
}

fn text(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::new(Full::new(body.into()))
}

fn client_of<B>(req: &Request<B>) -> ClientInfo {
    req.extensions()
        .get::<ClientInfo>()
        .expect("ClientInfo in every request")
        .clone()
}

#[tokio::test]
async fn get_sees_the_quic_client_info() {
    let server = start(Options::default(), false, tower::service_fn(|req: Request<RequestBody>| async move {
        let client = client_of(&req);
        let tls = client.tls().expect("TLS details");
        let peer = req.extensions().get::<PeerAddress>().expect("PeerAddress");
        let response = Response::builder()
            // Connection-specific fields are not HTTP/3's: dropped.
            .header("connection", "keep-alive, x-hop")
            .header("keep-alive", "timeout=5")
            .header("x-hop", "1")
            .header("x-kept", "1");
        Ok::<_, Infallible>(response.body(Full::new(Bytes::from(format!(
            "version={:?}\nclient_version={:?}\nremote={}\npeer={}\nlocal={}\nencrypted={}\nunix={}\nprotocol={}\ncipher={} {}\nalpn={}\nsni={}\ncerts={}\n",
            req.version(),
            client.http_version(),
            client.remote_address(),
            peer.0,
            client.local_address(),
            client.is_encrypted(),
            client.is_unix(),
            tls.protocol(),
            tls.cipher_name(),
            tls.cipher_bits(),
            String::from_utf8_lossy(tls.alpn_protocol().unwrap_or_default()),
            tls.server_name().unwrap_or("-"),
            tls.peer_certificates().len(),
        )))).unwrap())
    }))
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    let answer = client.get("/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers.get("x-kept").unwrap(), "1");
    for hop in ["connection", "keep-alive", "x-hop"] {
        assert!(
            answer.headers.get(hop).is_none(),
            "{hop}: {:?}",
            answer.headers
        );
    }
    let text = answer.text();
    let local_port = server.udp.port();
    for expected in [
        "version=HTTP/3.0\n".to_string(),
        "client_version=Some(HTTP/3.0)\n".to_string(),
        format!("local=127.0.0.1:{local_port}\n"),
        "encrypted=true\n".to_string(),
        "unix=false\n".to_string(),
        "protocol=TLSv1.3\n".to_string(),
        "cipher=TLS13_AES_128_GCM_SHA256 128\n".to_string(),
        "alpn=h3\n".to_string(),
        "sni=localhost\n".to_string(),
        "certs=0\n".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in:\n{text}");
    }
    // The remote address is the client's UDP socket.
    let socket = client_socket(&server.handle).await;
    assert!(text.contains(&format!("remote={socket}\n")), "{text}");
    assert!(text.contains(&format!("peer={socket}\n")), "{text}");
    assert_eq!(socket.ip(), std::net::Ipv4Addr::LOCALHOST);
}

/// The remote address of the one client the server has.
async fn client_socket(handle: &ServerHandle) -> SocketAddr {
    let clients = handle.clients();
    assert_eq!(clients.len(), 1, "{clients:?}");
    match clients[0].remote_address() {
        hyper_remote_client::Address::Inet(addr) => *addr,
        other => panic!("not an IP client: {other:?}"),
    }
}

#[tokio::test]
async fn the_remote_port_is_the_client_sockets() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            Ok::<_, Infallible>(text(format!("{:?}", client_of(&req).remote_port())))
        }),
    )
    .await;
    // A client socket of our own, so its port is known.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.cert.der.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let connection = within(
        "handshake",
        endpoint.connect(server.udp, "localhost").unwrap(),
    )
    .await
    .unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .unwrap();
    let _drive =
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let req = Request::get(format!("https://localhost:{}/", server.udp.port()))
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let response = within("response", stream.recv_response()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    while let Some(chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(chunk.chunk());
    }
    assert_eq!(String::from_utf8(body).unwrap(), format!("Some({port})"));
}

#[tokio::test]
async fn post_with_a_body_reaches_the_handler() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            Ok::<_, Infallible>(text(format!(
                "{} {} bytes: {}",
                parts.method,
                bytes.len(),
                String::from_utf8_lossy(&bytes)
            )))
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    let req = client
        .request("POST", "/echo")
        .header("content-length", "11")
        .body(())
        .unwrap();
    let answer = within("POST", client.send(req, b"hello world"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "POST 11 bytes: hello world");
    // Without a length too.
    let req = client.request("PUT", "/echo").body(()).unwrap();
    let answer = within("PUT", client.send(req, b"abc")).await.unwrap();
    assert_eq!(answer.text(), "PUT 3 bytes: abc");
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let options = Options::default().with_body_size_limit(16);
    let server = start(
        options,
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            match req.into_body().collect().await {
                Ok(bytes) => Ok::<_, Infallible>(text(format!("read {}", bytes.to_bytes().len()))),
                Err(error) => {
                    let over = error
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some();
                    let mut response = text(format!("limit error: {over}"));
                    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                    Ok(response)
                }
            }
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    // Announced: the screening answers, the handler never runs.
    let req = client
        .request("POST", "/")
        .header("content-length", "100")
        .body(())
        .unwrap();
    let answer = within("announced", client.send(req, &[b'x'; 100]))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body, Bytes::new());
    // Not announced: the body fails past the limit, in the handler.
    let req = client.request("POST", "/").body(()).unwrap();
    let answer = within("streamed", client.send(req, &[b'x'; 100]))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.text(), "limit error: true");
    // Under the limit: read.
    let req = client.request("POST", "/").body(()).unwrap();
    let answer = within("small", client.send(req, b"0123456789"))
        .await
        .unwrap();
    assert_eq!(answer.text(), "read 10");
}

/// A handler that tells the test it runs (with its client), then waits to be let go.
#[derive(Clone)]
struct Gate {
    entered: mpsc::UnboundedSender<ClientInfo>,
    release: Arc<Mutex<mpsc::UnboundedReceiver<()>>>,
}

fn gate() -> (
    Gate,
    mpsc::UnboundedReceiver<ClientInfo>,
    mpsc::UnboundedSender<()>,
) {
    let (entered, entered_rx) = mpsc::unbounded_channel();
    let (release_tx, release) = mpsc::unbounded_channel();
    (
        Gate {
            entered,
            release: Arc::new(Mutex::new(release)),
        },
        entered_rx,
        release_tx,
    )
}

impl Gate {
    async fn pass(&self, client: ClientInfo) {
        let _ = self.entered.send(client);
        let _ = self.release.lock().await.recv().await;
    }
}

#[tokio::test]
async fn pending_counts_while_a_handler_waits() {
    let (gate, mut entered, release) = gate();
    let server = start(
        Options::default(),
        false,
        tower::service_fn(move |req: Request<RequestBody>| {
            let gate = gate.clone();
            async move {
                let client = client_of(&req);
                let mut body = req.into_body();
                // The first chunk of the body (if any), then wait.
                let first = body.frame().await;
                gate.pass(client).await;
                let mut n = first
                    .and_then(|frame| frame.ok())
                    .and_then(|frame| frame.into_data().ok())
                    .map_or(0, |data| data.len());
                while let Some(frame) = body.frame().await {
                    n += frame
                        .ok()
                        .and_then(|f| f.into_data().ok())
                        .map_or(0, |d| d.len());
                }
                Ok::<_, Infallible>(text(format!("{n}")))
            }
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;

    // A GET: its response is pending, no body is.
    let req = client.request("GET", "/").body(()).unwrap();
    let mut stream = client.send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let info = within("handler entered", entered.recv()).await.unwrap();
    assert_eq!(info.pending_responses(), 1);
    assert_eq!(info.pending_requests(), 0);
    assert!(info.is_waiting_on_response());
    release.send(()).unwrap();
    let response = within("response", stream.recv_response()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    while within("body", stream.recv_data()).await.unwrap().is_some() {}
    eventually("response done", || info.pending_responses() == 0).await;

    // A POST whose body is still coming: its body is pending too.
    let req = client.request("POST", "/").body(()).unwrap();
    let mut stream = client.send.send_request(req).await.unwrap();
    stream
        .send_data(Bytes::from_static(b"first"))
        .await
        .unwrap();
    let info = within("handler entered", entered.recv()).await.unwrap();
    assert_eq!(info.pending_responses(), 1);
    assert_eq!(info.pending_requests(), 1);
    assert!(!info.is_waiting_on_response());
    release.send(()).unwrap();
    stream
        .send_data(Bytes::from_static(b"second"))
        .await
        .unwrap();
    stream.finish().await.unwrap();
    let response = within("response", stream.recv_response()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    while let Some(chunk) = within("body", stream.recv_data()).await.unwrap() {
        body.extend_from_slice(chunk.chunk());
    }
    assert_eq!(body, b"11");
    eventually("all done", || {
        info.pending_responses() == 0 && info.pending_requests() == 0
    })
    .await;
}

#[tokio::test]
async fn close_from_a_handler_ends_the_connection() {
    let fired = Arc::new(AtomicUsize::new(0));
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let counter = fired.clone();
    let server = start(
        Options::default(),
        false,
        tower::service_fn(move |req: Request<RequestBody>| {
            let counter = counter.clone();
            let seen_tx = seen_tx.clone();
            async move {
                let client = client_of(&req);
                if req.uri().path() == "/close" {
                    client.on_close(move |_| {
                        counter.fetch_add(1, Ordering::SeqCst);
                    });
                    let _ = seen_tx.send(client.clone());
                    client.close();
                    // A second close changes nothing.
                    client.close();
                    assert_eq!(client.status(), Status::CLOSED_RDWR);
                    // Never answered: the connection is gone.
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(text("open"))
            }
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.text(), "open");
    let req = client.request("GET", "/close").body(()).unwrap();
    let result = within("closing request", client.send(req, b"")).await;
    assert!(result.is_err(), "{result:?}");
    match client.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0x100));
        }
        other => panic!("not closed by the server: {other:?}"),
    }
    let info = within("the handler's client", seen.recv()).await.unwrap();
    within("closed()", info.closed()).await;
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert!(info.is_closed());
    eventually("unregistered", || server.handle.clients().is_empty()).await;
    assert_eq!(server.handle.stats().closed, 1);
    assert_eq!(server.handle.connection_count(), 0);
}

#[tokio::test]
async fn the_registry_lists_http3_clients_and_closes_them_by_id() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(
            |_req: Request<RequestBody>| async move { Ok::<_, Infallible>(text("hi")) },
        ),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.text(), "hi");
    let clients = server.handle.clients();
    assert_eq!(clients.len(), 1);
    let info = &clients[0];
    assert_eq!(info.http_version(), Some(http::Version::HTTP_3));
    assert!(info.is_encrypted());
    assert_eq!(info.status(), Status::OPEN);
    assert!(
        info.bytes_read() > 0 && info.bytes_written() > 0,
        "{info:?}"
    );
    assert!(server.handle.close(info.id()));
    match client.closed().await {
        quinn::ConnectionError::ApplicationClosed(_) => {}
        other => panic!("not closed by the server: {other:?}"),
    }
    within("closed()", info.closed()).await;
    assert!(server.handle.clients().is_empty());
    assert!(!server.handle.close(info.id()));
}

#[tokio::test]
async fn a_handler_panic_or_error_fails_that_request_only() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            match req.uri().path() {
                "/panic" => panic!("handler panicked on purpose"),
                "/error" => Err(std::io::Error::other("handler failed on purpose")),
                "/body-error" => {
                    // Head sent, then the body fails: the stream must be reset, not finished.
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
                        Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
                        Err(std::io::Error::other("body failed")),
                    ]));
                    Ok(Response::new(http_body_util::Either::Right(body)))
                }
                _ => Ok(Response::new(http_body_util::Either::Left(Full::new(
                    Bytes::from_static(b"fine"),
                )))),
            }
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    for path in ["/panic", "/error", "/body-error"] {
        let req = client.request("GET", path).body(()).unwrap();
        let result = within(path, client.send(req, b"")).await;
        assert!(result.is_err(), "{path}: answered as if whole: {result:?}");
        // The connection goes on.
        assert_eq!(client.get("/").await.text(), "fine", "after {path}");
    }
    assert_eq!(server.handle.clients().len(), 1);
}

#[tokio::test]
async fn the_connection_limit_is_shared_with_tcp() {
    let options = Options::default().with_connection_limit(1);
    let server = start(
        options,
        true,
        tower::service_fn(
            |_req: Request<RequestBody>| async move { Ok::<_, Infallible>(text("hi")) },
        ),
    )
    .await;
    // A TCP connection takes the one slot: QUIC is refused.
    let tcp = tokio::net::TcpStream::connect(server.tcp.unwrap())
        .await
        .unwrap();
    eventually("TCP admitted", || server.handle.connection_count() == 1).await;
    let refused = try_connect(server.udp, &server.cert).await;
    match refused {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        other => panic!("QUIC not refused: {other:?}"),
    }
    assert_eq!(server.handle.stats().rejected_connection_limit, 1);
    drop(tcp);
    eventually("TCP slot given back", || {
        server.handle.connection_count() == 0
    })
    .await;

    // And the other way: a QUIC connection takes it, TCP is closed at once.
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.text(), "hi");
    let mut tcp = tokio::net::TcpStream::connect(server.tcp.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let read = within("TCP refused", tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(server.handle.stats().rejected_connection_limit, 2);
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let (gate, mut entered, release) = gate();
    let server = start(
        Options::default(),
        false,
        tower::service_fn(move |req: Request<RequestBody>| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/slow" {
                    gate.pass(client_of(&req)).await;
                    return Ok::<_, Infallible>(text("finished"));
                }
                Ok(text("quick"))
            }
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    let req = client.request("GET", "/slow").body(()).unwrap();
    let mut stream = client.send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let info = within("handler entered", entered.recv()).await.unwrap();
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(10)));
    // Once the GOAWAY is in effect, new requests are refused (by the server, or by the client
    // that saw it); until then they are answered.
    within("GOAWAY", async {
        loop {
            let req = client.request("GET", "/probe").body(()).unwrap();
            if client.send(req, b"").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!info.is_closed());
    release.send(()).unwrap();
    let response = within("response", stream.recv_response()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    while let Some(chunk) = within("body", stream.recv_data()).await.unwrap() {
        body.extend_from_slice(chunk.chunk());
    }
    assert_eq!(body, b"finished");
    drop(stream);
    // The client closes once it has its answer (its last SendRequest dropped); the server
    // then returns.
    drop(client.send);
    within("server returned", server.served).await.unwrap();
    within("closed()", info.closed()).await;
    assert!(info.is_closed());
    let _ = within("client driver", client.driver).await;
}

fn hello() -> impl hyper_remote_client::layer::Handler<Full<Bytes>> {
    tower::service_fn(|req: Request<RequestBody>| async move {
        Ok::<_, Infallible>(text(format!("hello {}", client_of(&req).id())))
    })
}

#[tokio::test]
async fn a_header_section_over_the_limit_gets_431() {
    let options = Options::default().with_header_size_limit(1024);
    let server = start(options, false, hello()).await;
    let mut client = connect(server.udp, &server.cert).await;
    let req = client
        .request("GET", "/")
        .header("x-big", "y".repeat(4096))
        .body(())
        .unwrap();
    let answer = within("big head", client.send(req, b"")).await.unwrap();
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The connection goes on.
    assert!(client.get("/").await.text().starts_with("hello"));
}

#[tokio::test]
async fn the_per_ip_limit_applies_to_quic() {
    let options = Options::default()
        .with_connections_per_ip(1)
        .with_per_ip_limit_on_loopback(true);
    let server = start(options, false, hello()).await;
    let mut first = connect(server.udp, &server.cert).await;
    assert!(first.get("/").await.text().starts_with("hello"));
    match try_connect(server.udp, &server.cert).await {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        other => panic!("second QUIC connection not refused: {other:?}"),
    }
    let stats = server.handle.stats();
    assert_eq!(stats.rejected_per_ip_limit, 1, "{stats:?}");
    assert_eq!(stats.rejected_connection_limit, 0, "{stats:?}");
}

#[tokio::test]
async fn retry_validates_addresses_and_serves_as_usual() {
    let server = start_with(
        Options::default(),
        false,
        |quic| quic.with_retry(true),
        hello(),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    assert!(client.get("/").await.text().starts_with("hello"));
    // The Retry round trip is not a connection: one accepted, one client.
    let stats = server.handle.stats();
    assert_eq!(stats.accepted, 1, "{stats:?}");
    assert_eq!(server.handle.clients().len(), 1);
}

#[tokio::test]
async fn the_idle_timeout_is_http2_timeout() {
    let options = Options::default().with_http2_timeout(Duration::from_millis(300));
    let server = start(options, false, hello()).await;
    let mut client = connect(server.udp, &server.cert).await;
    assert!(client.get("/").await.text().starts_with("hello"));
    let info = server.handle.clients().pop().unwrap();
    let started = std::time::Instant::now();
    within("closed by the idle timeout", info.closed()).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    match client.closed().await {
        quinn::ConnectionError::TimedOut | quinn::ConnectionError::ApplicationClosed(_) => {}
        other => panic!("{other:?}"),
    }
    assert!(server.handle.clients().is_empty());
}

#[tokio::test]
async fn a_shutdown_closes_what_remains_at_its_deadline_then_the_endpoint() {
    let (gate, mut entered, _release) = gate();
    let options = Options::default().with_shutdown_timeout(Duration::from_millis(300));
    let server = start(
        options,
        false,
        tower::service_fn(move |req: Request<RequestBody>| {
            let gate = gate.clone();
            async move {
                // Never let go.
                gate.pass(client_of(&req)).await;
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(text("never"))
            }
        }),
    )
    .await;
    let client = connect(server.udp, &server.cert).await;
    let req = client.request("GET", "/").body(()).unwrap();
    let mut send = client.send.clone();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let info = within("handler entered", entered.recv()).await.unwrap();
    server
        .handle
        .graceful_shutdown(Some(Duration::from_millis(300)));
    within("server returned", server.served).await.unwrap();
    assert!(info.is_closed());
    assert!(stream.recv_response().await.is_err());
    match client.closed().await {
        quinn::ConnectionError::ApplicationClosed(_) => {}
        other => panic!("{other:?}"),
    }
    // The endpoint is closed: a new connection gets no answer.
    let late = tokio::time::timeout(
        Duration::from_millis(500),
        try_connect(server.udp, &server.cert),
    )
    .await;
    assert!(
        !matches!(late, Ok(Ok(_))),
        "a new connection was accepted after the shutdown"
    );
}

#[tokio::test]
async fn alt_svc_on_tls_answers_and_the_tcp_tls_config_serves_quic() {
    use hyper_remote_client::tls::{server_config, ClientAuth, TlsAcceptor};
    use hyper_util::rt::TokioIo;
    let cert = cert();
    // The TCP listeners' configuration as it is (ALPN h2 and http/1.1, TLS 1.2 and 1.3).
    let config = Arc::new(
        server_config(
            vec![cert.der.clone()],
            cert.key.clone_key(),
            ClientAuth::None,
        )
        .unwrap(),
    );
    let quic = QuicListener::bind("127.0.0.1:0".parse().unwrap(), config.clone()).unwrap();
    let udp = quic.local_addr().unwrap();
    let alt_svc = quic.alt_svc().unwrap();
    assert_eq!(
        alt_svc,
        format!("h3=\":{}\"; ma=86400", udp.port()).as_str()
    );
    let tls_tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_tcp.local_addr().unwrap();
    let plain_tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain_tcp.local_addr().unwrap();
    let server = Server::new(Options::default().with_alt_svc(alt_svc.clone()))
        .quic(quic)
        .listener(hyper_remote_client::Listener::tcp(tls_tcp).with_tls(TlsAcceptor::new(config)))
        .listener(plain_tcp);
    let handle = server.handle();
    let _served = tokio::spawn(server.serve(tower::service_fn(
        |req: Request<RequestBody>| async move {
            let client = client_of(&req);
            let tls = client.tls().map(|tls| {
                format!(
                    "{} {} {:?}",
                    tls.protocol(),
                    tls.cipher_name(),
                    tls.alpn_protocol().map(String::from_utf8_lossy)
                )
            });
            Ok::<_, Infallible>(text(format!("{:?} {tls:?}", req.version())))
        },
    )));
    let listening = within("listening", handle.listening()).await;
    assert!(
        listening.contains(&hyper_remote_client::Address::Inet(udp)),
        "{listening:?}"
    );

    // HTTP/3 with that configuration: ALPN h3; the cipher is not known (several suites).
    let mut h3 = connect(udp, &cert).await;
    let answer = h3.get("/").await;
    assert_eq!(
        answer.text(),
        "HTTP/3.0 Some(\"TLSv1.3  Some(\\\"h3\\\")\")"
    );
    assert!(
        answer.headers.get("alt-svc").is_none(),
        "{:?}",
        answer.headers
    );

    // HTTPS over TCP: advertised.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
        .connect(pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = within(
        "HTTPS",
        sender.send_request(common::h1_req("GET", "/", Bytes::new())),
    )
    .await
    .unwrap();
    assert_eq!(response.headers().get("alt-svc"), Some(&alt_svc));
    let body = common::body_of(response).await;
    assert!(
        body.starts_with(b"HTTP/1.1 Some(\"TLSv1.3 TLS13_"),
        "{body:?}"
    );

    // Plain HTTP: not advertised.
    let mut plain = common::h1_client(plain_addr).await;
    let response = within(
        "HTTP",
        plain
            .sender
            .send_request(common::h1_req("GET", "/", Bytes::new())),
    )
    .await
    .unwrap();
    assert!(response.headers().get("alt-svc").is_none());
}

/// Starts the inspector (examples/serve.rs) with `--https 127.0.0.1:0`: it, the UDP address it
/// serves HTTP/3 at (checked to be the HTTPS address), and the path of its generated CA.
async fn inspector() -> (common::example::Example, SocketAddr, std::path::PathBuf) {
    inspector_with(&["--https", "127.0.0.1:0"]).await
}

/// [`inspector`] with `args`.
async fn inspector_with(
    args: &[&str],
) -> (common::example::Example, SocketAddr, std::path::PathBuf) {
    let inspector = common::example::Example::start("serve", args).await;
    let https: SocketAddr = inspector
        .first_line
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("first line: {:?}", inspector.first_line))
        .trim()
        .parse()
        .unwrap();
    let mut udp = None;
    let ca = loop {
        let line = within("inspector lines", inspector.next_line()).await;
        assert!(
            !line.is_empty(),
            "the inspector stopped printing before its CA line"
        );
        if let Some(addr) = line.strip_prefix("HTTP/3 on udp://") {
            udp = Some(addr.trim().parse::<SocketAddr>().unwrap());
        }
        if let Some((_, path)) = line.split_once("its CA: ") {
            break std::path::PathBuf::from(path.trim());
        }
    };
    let udp = udp.expect("an `HTTP/3 on udp://` line before the CA line");
    assert_eq!(udp, https, "HTTP/3 at the HTTPS address");
    (inspector, udp, ca)
}

/// The inspector (examples/serve.rs), built with `http3`: `--https ADDR` also serves HTTP/3 on
/// UDP at the same address, and `GET /` tells HTTP/3.0 and the QUIC details.
#[tokio::test]
async fn the_inspector_serves_http3_beside_https() {
    use rustls::pki_types::pem::PemObject;
    let (_inspector, udp, ca) = inspector().await;
    let ca = Cert {
        der: pki_types::CertificateDer::from_pem_file(&ca).unwrap(),
        // Not used: the client only trusts the CA.
        key: cert().key,
    };
    let mut client = connect(udp, &ca).await;
    let answer = client.get("/").await;
    assert_eq!(answer.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["http_version"], "HTTP/3.0", "{json}");
    assert_eq!(json["is_encrypted"], true, "{json}");
    assert_eq!(json["crypto"]["protocol"], "TLSv1.3", "{json}");
    assert_eq!(json["crypto"]["alpn_protocol"], "h3", "{json}");
    assert_eq!(json["crypto"]["server_name"], "localhost", "{json}");
    assert_eq!(json["quic"]["peer_port"], json["remote_port"], "{json}");
    assert_eq!(json["local_port"], udp.port(), "{json}");
    // Metrics: the request over HTTP/3, the QUIC handshake as a TLS 1.3 one (no TCP client
    // came: these are the QUIC connection's).
    let metrics = client.get("/metrics").await.text();
    let has = |name: &str, label: &str| {
        metrics
            .lines()
            .any(|line| line.starts_with(name) && line.contains(label))
    };
    assert!(
        has(
            "http_server_request_duration_seconds_count",
            "network_protocol_version=\"3\""
        ),
        "{metrics}"
    );
    assert!(
        has(
            "hyper_remote_client_tls_handshake_duration_seconds_count",
            "tls_protocol_version=\"1.3\""
        ),
        "{metrics}"
    );
    // The QUIC connection among the active connections, by transport.
    assert!(
        metrics
            .lines()
            .any(|line| line
                == "hyper_remote_client_active_connections{network_transport=\"quic\"} 1"),
        "{metrics}"
    );
}

/// The Python that has aioquic, for tests/aioquic/h3get.py (another HTTP/3 stack than quinn +
/// h3): `H3_PYTHON` names the interpreter (default `python3`). None where it has no aioquic
/// (the test says so and passes), unless `H3_REQUIRE_AIOQUIC` is set (`.ci/run` sets it after
/// installing aioquic): then a missing aioquic fails the test.
fn aioquic_python() -> Option<String> {
    let python = std::env::var("H3_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has_aioquic = std::process::Command::new(&python)
        .args(["-c", "import aioquic"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_aioquic {
        assert!(
            std::env::var_os("H3_REQUIRE_AIOQUIC").is_none(),
            "H3_REQUIRE_AIOQUIC is set, but {python} has no aioquic"
        );
        eprintln!("skipped: no aioquic for {python} (pip install aioquic, or set H3_PYTHON)");
        return None;
    }
    Some(python)
}

/// `GET path` at `addr` with aioquic: its stdout (headers, a blank line, the body).
async fn aioquic_get(python: &str, addr: SocketAddr, path: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aioquic/h3get.py");
    let output = within(
        "aioquic",
        tokio::process::Command::new(python)
            .args([
                script,
                &addr.ip().to_string(),
                &addr.port().to_string(),
                path,
            ])
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Another HTTP/3 stack than quinn + h3: aioquic's.
#[tokio::test]
async fn an_aioquic_client_gets_an_answer() {
    let Some(python) = aioquic_python() else {
        return;
    };
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            let client = client_of(&req);
            Ok::<_, Infallible>(text(format!(
                "{:?} from port {:?} alpn {:?}",
                req.version(),
                client.remote_port(),
                client
                    .tls()
                    .and_then(|tls| tls.alpn_protocol())
                    .map(String::from_utf8_lossy),
            )))
        }),
    )
    .await;
    let stdout = aioquic_get(&python, server.udp, "/").await;
    assert!(stdout.contains(":status: 200"), "{stdout}");
    assert!(stdout.contains("HTTP/3.0 from port Some("), "{stdout}");
    assert!(stdout.contains("alpn Some(\"h3\")"), "{stdout}");
    // The client closed with H3_NO_ERROR: the server lets go of it.
    eventually("client gone", || server.handle.clients().is_empty()).await;
    assert_eq!(server.handle.stats().closed, 1);
}

/// aioquic fetches `GET /` from the inspector: its JSON says HTTP/3.0 and the QUIC details.
#[tokio::test]
async fn an_aioquic_client_reads_http3_in_the_inspectors_json() {
    let Some(python) = aioquic_python() else {
        return;
    };
    let (_inspector, udp, _) = inspector().await;
    let stdout = aioquic_get(&python, udp, "/").await;
    assert!(stdout.starts_with(":status: 200\n"), "{stdout}");
    let (_, body) = stdout.split_once("\n\n").expect("headers, then the body");
    let json: serde_json::Value = serde_json::from_str(body.trim()).expect(body);
    assert_eq!(json["http_version"], "HTTP/3.0", "{json}");
    assert_eq!(json["crypto"]["protocol"], "TLSv1.3", "{json}");
    assert_eq!(json["crypto"]["alpn_protocol"], "h3", "{json}");
    assert_eq!(json["crypto"]["server_name"], "localhost", "{json}");
    assert_eq!(json["quic"]["peer_port"], json["remote_port"], "{json}");
    assert_eq!(json["local_port"], udp.port(), "{json}");
}

#[tokio::test]
async fn detach_says_http3_cannot_be_detached() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|mut req: Request<RequestBody>| async move {
            let error = hyper_remote_client::detach(&mut req).await.err();
            Ok::<_, Infallible>(text(format!("{error:?}")))
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.text(), "Some(Http3)");
}

#[tokio::test]
async fn no_body_goes_with_head_204_or_304_answers() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            let mut response = text("a body");
            match req.uri().path() {
                "/204" => *response.status_mut() = StatusCode::NO_CONTENT,
                "/304" => *response.status_mut() = StatusCode::NOT_MODIFIED,
                _ => {}
            }
            Ok::<_, Infallible>(response)
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    let req = client.request("HEAD", "/").body(()).unwrap();
    let answer = within("HEAD", client.send(req, b"")).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, Bytes::new());
    for (path, status) in [
        ("/204", StatusCode::NO_CONTENT),
        ("/304", StatusCode::NOT_MODIFIED),
    ] {
        let answer = client.get(path).await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.body, Bytes::new(), "{path}");
    }
    assert_eq!(client.get("/").await.text(), "a body");
}

/// A client that moves to another UDP socket (connection migration): `ClientInfo` keeps the
/// handshake's address, the request's `PeerAddress` tells the new one.
#[tokio::test]
async fn a_migrated_client_is_seen_at_its_new_address() {
    let server = start(
        Options::default(),
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            let client = client_of(&req);
            let peer = req.extensions().get::<PeerAddress>().expect("PeerAddress");
            Ok::<_, Infallible>(text(format!("{} {}", client.remote_address(), peer.0)))
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    let before = client._endpoint.local_addr().unwrap();
    assert_eq!(client.get("/").await.text(), format!("{before} {before}"));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let after = socket.local_addr().unwrap();
    client._endpoint.rebind(socket).unwrap();
    // The server follows once it has seen (and validated) the new path.
    let mut answer = String::new();
    for _ in 0..50 {
        answer = client.get("/").await.text();
        if answer == format!("{before} {after}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer, format!("{before} {after}"));
}

#[tokio::test]
async fn client_certificates_reach_client_info() {
    use hyper_remote_client::tls::ClientAuth;
    // A CA, a server certificate and a client certificate it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (
            cert.der().clone(),
            pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("client.test");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = hyper_remote_client::http3::server_config(
        vec![server_cert],
        server_key,
        ClientAuth::Require(roots.clone()),
    )
    .unwrap();
    let quic = QuicListener::bind("127.0.0.1:0".parse().unwrap(), Arc::new(config)).unwrap();
    let udp = quic.local_addr().unwrap();
    let server = Server::new(Options::default()).quic(quic);
    let _served = tokio::spawn(server.serve(tower::service_fn(
        |req: Request<RequestBody>| async move {
            let client = client_of(&req);
            let certs = client.tls().map(|tls| tls.peer_certificates().to_vec());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                certs.unwrap_or_default().concat(),
            ))))
        },
    )));
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![client_cert.clone()], client_key)
    .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    if let Some(every) = PING_EVERY.with(|every| every.get()) {
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(every));
        config.transport_config(Arc::new(transport));
    }
    endpoint.set_default_client_config(config);
    let connection = within("handshake", endpoint.connect(udp, "localhost").unwrap())
        .await
        .unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .unwrap();
    let _drive =
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let req = Request::get(format!("https://localhost:{}/", udp.port()))
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    let response = within("response", stream.recv_response()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    while let Some(chunk) = within("body", stream.recv_data()).await.unwrap() {
        body.extend_from_slice(chunk.chunk());
    }
    assert_eq!(body, client_cert.as_ref(), "the client's certificate, DER");
}

/// Bodies larger than QUIC's flow-control windows, both ways: the answer waits for the peer
/// to read, and arrives whole.
#[tokio::test]
async fn large_bodies_both_ways() {
    const SIZE: usize = 4 << 20;
    let options = Options::default().with_body_size_limit(SIZE);
    let server = start(
        options,
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            if req.method() == http::Method::POST {
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                return Ok::<_, Infallible>(text(format!("{} {sum}", body.len())));
            }
            let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
            Ok(text(body))
        }),
    )
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    let answer = within("big GET", async { client.get("/big").await }).await;
    assert_eq!(answer.body.len(), SIZE);
    assert!(answer
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8));
    let upload: Vec<u8> = (0..SIZE).map(|i| (i % 7) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    let req = client.request("POST", "/").body(()).unwrap();
    let answer = within("big POST", client.send(req, &upload)).await.unwrap();
    assert_eq!(answer.text(), format!("{SIZE} {sum}"));
    let info = server.handle.clients().pop().unwrap();
    assert!(info.bytes_read() > SIZE as u64, "{}", info.bytes_read());
}

/// `concurrent_stream_limit` is QUIC's limit of request streams: over it, a client waits.
#[tokio::test]
async fn the_concurrent_stream_limit_holds_requests_back() {
    let (gate, mut entered, release) = gate();
    let options = Options::default().with_concurrent_stream_limit(1);
    let server = start(
        options,
        false,
        tower::service_fn(move |req: Request<RequestBody>| {
            let gate = gate.clone();
            async move {
                gate.pass(client_of(&req)).await;
                Ok::<_, Infallible>(text(req.uri().path().to_owned()))
            }
        }),
    )
    .await;
    let client = connect(server.udp, &server.cert).await;
    let mut first_send = client.send.clone();
    let mut second_send = client.send.clone();
    let first = client.request("GET", "/first").body(()).unwrap();
    let second = client.request("GET", "/second").body(()).unwrap();
    let first = tokio::spawn(async move {
        let mut stream = first_send.send_request(first).await.unwrap();
        stream.finish().await.unwrap();
        stream.recv_response().await.unwrap().status()
    });
    let info = within("first handler", entered.recv()).await.unwrap();
    let second = tokio::spawn(async move {
        let mut stream = second_send.send_request(second).await.unwrap();
        stream.finish().await.unwrap();
        stream.recv_response().await.unwrap().status()
    });
    // No event tells that a stream is *not* opened: a bounded wait instead.
    let early = tokio::time::timeout(Duration::from_millis(300), entered.recv()).await;
    assert!(early.is_err(), "a second stream was opened over the limit");
    assert_eq!(info.pending_responses(), 1);
    release.send(()).unwrap();
    assert_eq!(within("first", first).await.unwrap(), StatusCode::OK);
    within("second handler", entered.recv()).await.unwrap();
    release.send(()).unwrap();
    assert_eq!(within("second", second).await.unwrap(), StatusCode::OK);
}

/// `bind_acceptor`: a certificate reloaded into the TCP listener's acceptor is the one new
/// QUIC connections get; a connection already open keeps its own.
#[tokio::test]
async fn a_reloaded_certificate_reaches_new_quic_connections() {
    use hyper_remote_client::tls::{server_config, ClientAuth, TlsAcceptor};
    let first = cert();
    let second = cert();
    let config = |cert: &Cert| {
        Arc::new(
            server_config(
                vec![cert.der.clone()],
                cert.key.clone_key(),
                ClientAuth::None,
            )
            .unwrap(),
        )
    };
    let acceptor = TlsAcceptor::new(config(&first));
    let quic = QuicListener::bind_acceptor("127.0.0.1:0".parse().unwrap(), &acceptor).unwrap();
    let udp = quic.local_addr().unwrap();
    let server = Server::new(Options::default()).quic(quic);
    let handle = server.handle();
    let _served = tokio::spawn(server.serve(hello()));
    within("listening", handle.listening()).await;
    let server_cert = |connection: &quinn::Connection| {
        connection
            .peer_identity()
            .and_then(|identity| {
                identity
                    .downcast::<Vec<pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .map(|chain| chain[0].clone())
            .expect("the server's certificate")
    };
    let mut before = connect(udp, &first).await;
    assert_eq!(server_cert(&before.connection), first.der);
    acceptor.reload(config(&second));
    let mut after = connect(udp, &second).await;
    assert_eq!(server_cert(&after.connection), second.der);
    assert!(after.get("/").await.text().starts_with("hello"));
    // The connection made before goes on with its own.
    assert!(before.get("/").await.text().starts_with("hello"));
}

/// Garbage on the UDP port: 2 000 datagrams of 1 to 1 400 pseudo-random bytes from 20 source
/// ports, half of them shaped as QUIC v1 long-header (Initial) packets. None becomes a
/// connection (nothing decrypts), none is counted, and a real client is served after them.
#[tokio::test]
async fn garbage_datagrams_are_dropped_and_clients_still_served() {
    let server = start(Options::default(), false, hello()).await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: the same garbage every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sockets: Vec<_> = (0..20)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for i in 0..2_000usize {
        let len = 1 + (next() % 1_400) as usize;
        let mut datagram: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && len > 6 {
            // Long header, Initial, version 1, then garbage.
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        let _ = sockets[i % sockets.len()].send_to(&datagram, server.udp);
    }
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    let stats = server.handle.stats();
    assert_eq!(stats.accepted, 1, "{stats:?}");
    assert_eq!(stats.tls_handshake_failures, 0, "{stats:?}");
    assert_eq!(server.handle.clients().len(), 1);
}

/// A flood of real Initials, each connection from its own UDP port, past the connection limit:
/// the connections inside the limit are served; every one past it is refused
/// (CONNECTION_REFUSED) and counted; once the first ones go, a new client is served.
#[tokio::test]
async fn an_initial_flood_from_many_ports_is_held_to_the_connection_limit() {
    const LIMIT: usize = 4;
    const FLOOD: usize = 40;
    let server = start(
        Options::default().with_connection_limit(LIMIT),
        false,
        hello(),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(connect(server.udp, &server.cert).await);
    }
    let attempts = (0..FLOOD).map(|_| {
        let udp = server.udp;
        let cert = Cert {
            der: server.cert.der.clone(),
            key: server.cert.key.clone_key(),
        };
        tokio::spawn(async move { try_connect(udp, &cert).await })
    });
    let mut refused = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        match attempt.await.unwrap() {
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1
            }
            other => panic!("not refused: {other:?}"),
        }
    }
    assert_eq!(refused, FLOOD);
    let stats = server.handle.stats();
    assert_eq!(stats.rejected_connection_limit, FLOOD as u64, "{stats:?}");
    assert_eq!(stats.accepted, (LIMIT + FLOOD) as u64, "{stats:?}");
    for client in &mut held {
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }
    drop(held);
    eventually("the held connections closed", || {
        server.handle.connection_count() == 0
    })
    .await;
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
}

/// A request whose QPACK field section refers to the dynamic table, which the server never
/// allowed (capacity 0), on a raw QUIC stream: the request never reaches the handler, its
/// stream or connection is ended with an error, and another client is served.
#[tokio::test]
async fn a_malicious_qpack_block_never_reaches_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let server = start(
        Options::default(),
        false,
        tower::service_fn(move |_req: Request<RequestBody>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(text("hi")) }
        }),
    )
    .await;
    let (_endpoint, connection) = try_connect(server.udp, &server.cert).await.unwrap();
    let (mut send, mut recv) = within("a stream", connection.open_bi()).await.unwrap();
    // HEADERS (type 0x01), 3 bytes: Required Insert Count 1 (a dynamic table entry), Delta
    // Base 0, then an indexed field line into the dynamic table.
    let frame = [0x01, 0x03, 0x01, 0x00, 0x80];
    send.write_all(&frame).await.unwrap();
    let _ = send.finish();
    let answer = within("the server's verdict", recv.read_to_end(64 * 1024)).await;
    assert!(
        answer.is_err(),
        "an answer to a malformed header block: {answer:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Others are served.
    let mut client = connect(server.udp, &server.cert).await;
    assert_eq!(client.get("/").await.text(), "hi");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A peer that asks for a large answer and never reads it: the response waits on QUIC flow
/// control, other clients are served meanwhile, and a shutdown closes it at its deadline
/// (before the response clock's grace has passed).
#[tokio::test]
async fn a_peer_that_never_reads_holds_only_its_own_stream() {
    let options = Options::default().with_shutdown_timeout(Duration::from_millis(500));
    let server = start(
        options,
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            let body = if req.uri().path() == "/big" {
                Bytes::from(vec![b'x'; 8 << 20])
            } else {
                Bytes::from_static(b"hi")
            };
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }),
    )
    .await;
    let mut stuck = connect(server.udp, &server.cert).await;
    let req = stuck.request("GET", "/big").body(()).unwrap();
    let mut stream = within("request", stuck.send.send_request(req))
        .await
        .unwrap();
    within("finish", stream.finish()).await.unwrap();
    let response = within("response head", stream.recv_response())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Never read the body: the handler's answer is pending on flow control.
    eventually("the answer is pending", || {
        server
            .handle
            .clients()
            .iter()
            .any(|client| client.pending_responses() == 1)
    })
    .await;
    let mut other = connect(server.udp, &server.cert).await;
    assert_eq!(other.get("/").await.text(), "hi");
    drop(other);
    // A graceful shutdown ends it at its deadline: `serve` returns.
    server
        .handle
        .graceful_shutdown(Some(Duration::from_millis(500)));
    within("serve returns", server.served).await.unwrap();
    let closed = stuck.closed().await;
    assert!(
        !matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
}

/// A binary upgrade with an HTTP/3 listener (two `Server`s in this process, the real upgrade
/// socket between them): the new server reads the UDP socket from then on and serves every
/// new connection; a request the old server was answering on a connection it had finishes
/// there, its packets passed on by the new server; the old server drains and returns.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_hands_the_udp_socket_over_and_old_connections_finish_there() {
    use hyper_remote_client::upgrade::Takeover;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let options = Options::default()
        .with_shutdown_timeout(Duration::from_secs(20))
        .with_upgrade_probation(Duration::from_millis(300));
    let cert = cert();

    // The old server: `/echo` says it began, then answers the body it reads.
    let (began, mut waiting) = mpsc::unbounded_channel::<()>();
    let quic = QuicListener::bind("127.0.0.1:0".parse().unwrap(), quic_config(&cert)).unwrap();
    let udp = quic.local_addr().unwrap();
    let old = Server::new(options.clone())
        .quic(quic)
        .upgrade_socket(&path)
        .unwrap();
    let old_handle = old.handle();
    let old_served = tokio::spawn(old.serve(tower::service_fn(
        move |req: Request<RequestBody>| {
            let began = began.clone();
            async move {
                if req.uri().path() == "/echo" {
                    let _ = began.send(());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut answer = b"old: ".to_vec();
                    answer.extend_from_slice(&body);
                    return Ok::<_, Infallible>(text(answer));
                }
                Ok(text("old"))
            }
        },
    )));
    within("old listening", old_handle.listening()).await;

    let mut a = connect(udp, &cert).await;
    assert_eq!(a.get("/").await.text(), "old");
    // A request the old server is reading when the new one takes over: its body comes after.
    let req = a.request("POST", "/echo").body(()).unwrap();
    let mut stream = a.send.send_request(req).await.unwrap();
    within("the old server's handler began", waiting.recv())
        .await
        .unwrap();

    // The new server takes the UDP socket over.
    let mut takeover = within("takeover", Takeover::connect(&path)).await.unwrap();
    assert!(takeover.take_listeners().is_empty(), "no TCP listener");
    let mut sockets = takeover.take_quic_sockets();
    assert_eq!(sockets.len(), 1);
    let socket = sockets.pop().unwrap();
    assert_eq!(socket.local_addr().unwrap(), udp);
    let quic = QuicListener::inherit(socket, quic_config(&cert)).unwrap();
    let new = Server::new(options)
        .quic(quic)
        .take_over(takeover)
        .expect("same steps")
        .upgrade_socket(&path)
        .unwrap();
    let new_handle = new.handle();
    let new_served = tokio::spawn(new.serve(tower::service_fn(
        |_req: Request<RequestBody>| async { Ok::<_, Infallible>(text("new")) },
    )));
    within("new listening", new_handle.listening()).await;

    // Once the old server was told, every new connection is the new server's (the old one
    // no longer reads the socket: were both reading it, some would go there, and fail or
    // answer "old").
    let mut fresh = 0;
    let mut answers = Vec::new();
    for _ in 0..40 {
        let mut client = connect(udp, &cert).await;
        let answer = client.get("/").await.text();
        fresh = if answer == "new" { fresh + 1 } else { 0 };
        answers.push(answer);
        if fresh == 8 {
            break;
        }
    }
    assert_eq!(
        fresh, 8,
        "8 new connections in a row to the new server: {answers:?}"
    );

    // The old server's request in flight finishes there: its client's packets (the body, its
    // acknowledgements) come to the new server, which passes them on.
    stream
        .send_data(Bytes::from_static(b"passed on"))
        .await
        .unwrap();
    stream.finish().await.unwrap();
    let response = within("the old request's answer", stream.recv_response())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Vec::new();
    while let Some(mut chunk) = within("body", stream.recv_data()).await.unwrap() {
        while chunk.has_remaining() {
            let part = chunk.chunk().to_vec();
            chunk.advance(part.len());
            body.extend_from_slice(&part);
        }
    }
    assert_eq!(String::from_utf8_lossy(&body), "old: passed on");
    drop(stream);
    drop(a);

    // The old server drains (its client gone) and returns once the new one says it is
    // healthy; the new one goes on serving, on the socket it now reads alone.
    within("the old server returns", old_served).await.unwrap();
    let mut client = connect(udp, &cert).await;
    assert_eq!(client.get("/").await.text(), "new");
    new_handle.graceful_shutdown(Some(Duration::from_secs(5)));
    within("the new server returns", new_served).await.unwrap();
}

/// A new server that goes away before its probation has passed: the old one reads the UDP
/// socket again and serves new connections.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_the_old_server_reads_the_udp_socket_again() {
    use hyper_remote_client::upgrade::Takeover;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let options = Options::default()
        .with_shutdown_timeout(Duration::from_secs(20))
        .with_upgrade_probation(Duration::from_secs(60));
    let cert = cert();
    let quic = QuicListener::bind("127.0.0.1:0".parse().unwrap(), quic_config(&cert)).unwrap();
    let udp = quic.local_addr().unwrap();
    let old = Server::new(options.clone())
        .quic(quic)
        .upgrade_socket(&path)
        .unwrap();
    let old_handle = old.handle();
    let old_served = tokio::spawn(old.serve(tower::service_fn(
        |_req: Request<RequestBody>| async { Ok::<_, Infallible>(text("old")) },
    )));
    within("old listening", old_handle.listening()).await;

    let mut takeover = within("takeover", Takeover::connect(&path)).await.unwrap();
    let socket = takeover.take_quic_sockets().pop().unwrap();
    let new = Server::new(options)
        .quic(QuicListener::inherit(socket, quic_config(&cert)).unwrap())
        .take_over(takeover)
        .unwrap();
    let new_handle = new.handle();
    let new_served = tokio::spawn(new.serve(tower::service_fn(
        |_req: Request<RequestBody>| async { Ok::<_, Infallible>(text("new")) },
    )));
    within("new listening", new_handle.listening()).await;

    /// Answers of fresh connections until `want` came `times` in a row (at most 40; a
    /// connection may fail meanwhile).
    async fn in_a_row(udp: SocketAddr, cert: &Cert, want: &str, times: usize) -> Vec<String> {
        let mut answers = Vec::new();
        let mut row = 0;
        for _ in 0..40 {
            let answer = tokio::time::timeout(Duration::from_secs(3), async {
                let (_endpoint, connection) = try_connect(udp, cert).await.ok()?;
                let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection))
                    .await
                    .ok()?;
                tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
                let req = Request::get(format!("https://localhost:{}/", udp.port()))
                    .body(())
                    .unwrap();
                let mut stream = send.send_request(req).await.ok()?;
                stream.finish().await.ok()?;
                stream.recv_response().await.ok()?;
                let mut body = Vec::new();
                while let Some(mut chunk) = stream.recv_data().await.ok()? {
                    let part = chunk.copy_to_bytes(chunk.remaining());
                    body.extend_from_slice(&part);
                }
                Some(String::from_utf8_lossy(&body).into_owned())
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "failed".to_owned());
            row = if answer == want { row + 1 } else { 0 };
            answers.push(answer);
            if row == times {
                return answers;
            }
        }
        panic!("never {times} times {want:?} in a row: {answers:?}");
    }
    in_a_row(udp, &cert, "new", 4).await;

    // The new server goes away (as a process that crashes would, its sockets closed).
    new_served.abort();
    let _ = new_served.await;
    drop(new_handle);
    in_a_row(udp, &cert, "old", 6).await;
    assert!(!old_served.is_finished(), "the old server goes on");
    old_handle.graceful_shutdown(Some(Duration::from_secs(5)));
    within("the old server returns", old_served).await.unwrap();
}

/// The inspector upgraded in place (`--upgrade`): the new one serves HTTP/3 on the same UDP
/// socket, the old one hands over and exits.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_hands_its_udp_socket_over_in_an_upgrade() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let path = path.to_str().unwrap();
    let ca_of = |path: &std::path::Path| Cert {
        der: pki_types::CertificateDer::from_pem_file(path).unwrap(),
        // Not used: the client only trusts the CA.
        key: cert().key,
    };
    let (old, udp, old_ca) =
        inspector_with(&["--https", "127.0.0.1:0", "--upgrade-socket", path]).await;
    let mut client = connect(udp, &ca_of(&old_ca)).await;
    let json: serde_json::Value = serde_json::from_slice(&client.get("/").await.body).unwrap();
    assert_eq!(json["http_version"], "HTTP/3.0", "{json}");
    client.connection.close(0u32.into(), b"done");

    let (new, new_udp, new_ca) = inspector_with(&[
        "--upgrade",
        "--upgrade-socket",
        path,
        "--upgrade-probation",
        "0.2",
    ])
    .await;
    assert_eq!(new_udp, udp, "the same UDP address");
    let (lines, exited) = within("the old inspector exits", old.exit()).await;
    assert!(exited, "the old inspector exits with status 0: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|line| line == "handed over to the new process"),
        "{lines:?}"
    );
    // The old inspector is gone: HTTP/3 on that socket is the new one's (its certificate).
    let mut client = connect(udp, &ca_of(&new_ca)).await;
    let json: serde_json::Value = serde_json::from_slice(&client.get("/").await.body).unwrap();
    assert_eq!(json["http_version"], "HTTP/3.0", "{json}");
    assert_eq!(json["local_port"], udp.port(), "{json}");
    drop(new);
}

/// How the server closed a connection by one of its clocks: CONNECTION_CLOSE, `H3_NO_ERROR`,
/// reason `timeout`.
fn closed_by_a_clock(closed: &quinn::ConnectionError) -> bool {
    matches!(closed, quinn::ConnectionError::ApplicationClosed(close)
        if close.error_code == quinn::VarInt::from_u32(0x100) && &close.reason[..] == b"timeout")
}

/// No request for `http2_timeout`: closed, although the client PINGs all along (QUIC's own
/// idle timeout counts every packet; HTTP/2's idle clock, like this one, counts streams).
#[tokio::test]
async fn a_connection_with_no_request_is_closed_at_http2_timeout_whatever_it_pings() {
    let options = Options::default().with_http2_timeout(Duration::from_millis(400));
    let server = start(options, false, hello()).await;
    PING_EVERY.with(|every| every.set(Some(Duration::from_millis(50))));
    let mut client = connect(server.udp, &server.cert).await;
    PING_EVERY.with(|every| every.set(None));
    assert!(client.get("/").await.text().starts_with("hello"));
    let started = std::time::Instant::now();
    let closed = client.closed().await;
    assert!(closed_by_a_clock(&closed), "{closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    eventually("counted", || server.handle.stats().http3_timeouts == 1).await;
    let stats = server.handle.stats();
    assert_eq!(
        (
            stats.idle_timeouts,
            stats.http1_timeouts,
            stats.http2_timeouts
        ),
        (1, 0, 0)
    );
}

/// A request stream whose head never comes: the connection is closed once `http2_timeout`
/// has passed since the stream opened, as a request head timeout.
#[tokio::test]
async fn a_request_head_that_never_comes_closes_the_connection() {
    let options = Options::default().with_http2_timeout(Duration::from_millis(400));
    let server = start(options, false, hello()).await;
    PING_EVERY.with(|every| every.set(Some(Duration::from_millis(50))));
    let (_endpoint, connection) = try_connect(server.udp, &server.cert).await.unwrap();
    PING_EVERY.with(|every| every.set(None));
    let (mut send, _recv) = within("a stream", connection.open_bi()).await.unwrap();
    // The start of a HEADERS frame (type 0x01, length 64), then nothing.
    send.write_all(&[0x01, 0x40, 0x40]).await.unwrap();
    let closed = within("closed", connection.closed()).await;
    assert!(closed_by_a_clock(&closed), "{closed:?}");
    eventually("counted", || {
        server.handle.stats().request_head_timeouts == 1
    })
    .await;
    assert_eq!(server.handle.stats().http3_timeouts, 1);
}

/// A request body that stalls while the handler waits for it: the handler's read fails, the
/// connection is closed at the rate's grace, as a request body timeout.
#[tokio::test]
async fn a_request_body_slower_than_the_minimum_rate_closes_the_connection() {
    let options = Options::default().with_min_request_body_rate(
        hyper_remote_client::MinDataRate::new(1000, Duration::from_millis(300)),
    );
    let (failed, mut failures) = mpsc::unbounded_channel();
    let server = start(
        options,
        false,
        tower::service_fn(move |req: Request<RequestBody>| {
            let failed = failed.clone();
            async move {
                if let Err(error) = req.into_body().collect().await {
                    let _ = failed.send(error.to_string());
                }
                Ok::<_, Infallible>(text("read"))
            }
        }),
    )
    .await;
    let client = connect(server.udp, &server.cert).await;
    let req = client.request("POST", "/").body(()).unwrap();
    let mut send = client.send.clone();
    let mut stream = within("request", send.send_request(req)).await.unwrap();
    stream
        .send_data(Bytes::from_static(b"a first part"))
        .await
        .unwrap();
    // Then nothing: the handler waits.
    let error = within("the handler's read fails", failures.recv())
        .await
        .unwrap();
    assert!(error.contains("minimum rate"), "{error}");
    let closed = client.closed().await;
    assert!(closed_by_a_clock(&closed), "{closed:?}");
    eventually("counted", || {
        server.handle.stats().request_body_timeouts == 1
    })
    .await;
    assert_eq!(server.handle.stats().http3_timeouts, 1);
}

/// A peer that never reads a large answer: closed once the response clock runs out, as a
/// response timeout; another client is served meanwhile.
#[tokio::test]
async fn a_response_the_peer_never_reads_closes_the_connection_at_the_minimum_rate() {
    let options = Options::default().with_min_response_rate(hyper_remote_client::MinDataRate::new(
        100_000,
        Duration::from_millis(300),
    ));
    let server = start(
        options,
        false,
        tower::service_fn(|req: Request<RequestBody>| async move {
            let body = if req.uri().path() == "/big" {
                Bytes::from(vec![b'x'; 8 << 20])
            } else {
                Bytes::from_static(b"hi")
            };
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }),
    )
    .await;
    let stuck = connect(server.udp, &server.cert).await;
    let req = stuck.request("GET", "/big").body(()).unwrap();
    let mut send = stuck.send.clone();
    let mut stream = within("request", send.send_request(req)).await.unwrap();
    within("finish", stream.finish()).await.unwrap();
    let mut other = connect(server.udp, &server.cert).await;
    assert_eq!(other.get("/").await.text(), "hi");
    // Never read: the answer waits on flow control until the clock runs out.
    let closed = stuck.closed().await;
    assert!(closed_by_a_clock(&closed), "{closed:?}");
    eventually("counted", || server.handle.stats().response_timeouts == 1).await;
    assert_eq!(server.handle.stats().http3_timeouts, 1);
    assert_eq!(
        other.get("/").await.text(),
        "hi",
        "the other client goes on"
    );
}
