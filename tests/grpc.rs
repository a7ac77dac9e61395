//! gRPC under `Server` (issue 25): tonic's `Routes` is a tower service `Server` serves as it is,
//! over h2c (HTTP/2 prior knowledge, what tonic's client speaks on `http://`), and a tonic
//! handler or interceptor finds `ClientInfo` in the request's extensions. tonic-health's
//! pre-generated `grpc.health.v1.Health` service stands in for an application's (no protoc).
//! The last test serves the same service with tonic's own server and `ClientIo`, to show what
//! `ClientInfo` lacks there. Real sockets on 127.0.0.1, bounded waits.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use hyper_remote_client::{ClientId, ClientInfo, ClientIo, Options, Server, ServerHandle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `fut`, or a panic naming `what` after 10 s.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
}

/// A tonic channel (one HTTP/2 connection, h2c) to `addr`.
async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    within("connect", endpoint.connect()).await.unwrap()
}

/// `Health/Check` for `service` ("" is the server as a whole).
async fn check(client: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, Status> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let response = within("Health/Check", client.check(request)).await?;
    Ok(response.into_inner().status())
}

/// What a gRPC handler saw of its `ClientInfo`.
#[derive(Debug)]
struct Seen {
    id: ClientId,
    remote_ip: Option<IpAddr>,
    http_version: Option<Version>,
    pending_responses: usize,
}

impl Seen {
    fn of(extensions: &http::Extensions) -> Seen {
        let client = extensions
            .get::<ClientInfo>()
            .expect("ClientInfo in the gRPC request's extensions");
        Seen {
            id: client.id(),
            remote_ip: client.remote_address().ip(),
            http_version: client.http_version(),
            pending_responses: client.pending_responses(),
        }
    }
}

/// Serves `routes` under `Server` with default options on 127.0.0.1:0: the three lines of the
/// README's "gRPC (tonic)" (the listener, the server, `serve`), plus the handle to stop it.
async fn serve_under_server(
    routes: tonic::service::Routes,
) -> (SocketAddr, ServerHandle, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(routes));
    (addr, handle, serving)
}

/// tonic-health's stock service, as `Routes`, under `Server`: a tonic client's `Check` is
/// answered SERVING for the server ("") and for the service set serving, NOT_FOUND for an
/// unknown one, all on one HTTP/2 connection that `Server` tracks as a client.
#[tokio::test]
async fn tonic_health_under_server_is_serving() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("app.Orders", tonic_health::ServingStatus::Serving)
        .await;
    let (addr, handle, serving) = serve_under_server(tonic::service::Routes::new(health)).await;

    let mut client = HealthClient::new(channel(addr).await);
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&mut client, "app.Orders").await.unwrap(),
        ServingStatus::Serving
    );
    reporter
        .set_service_status("app.Orders", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        check(&mut client, "app.Orders").await.unwrap(),
        ServingStatus::NotServing
    );
    let unknown = check(&mut client, "app.Unknown").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let clients = handle.clients();
    assert_eq!(clients.len(), 1, "one HTTP/2 connection for every call");
    assert_eq!(clients[0].http_version(), Some(Version::HTTP_2));
    assert_eq!(clients[0].remote_address().ip(), Some(LOCALHOST));
    assert_eq!(handle.stats().accepted, 1);

    handle.shutdown();
    within("serve returns", serving).await.unwrap();
}

/// A gRPC service of the application's own (here `Health`, implemented by hand): its handler
/// reads `ClientInfo` from `request.extensions()`.
struct Inspecting {
    seen: mpsc::UnboundedSender<Seen>,
}

#[tonic::async_trait]
impl Health for Inspecting {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.seen.send(Seen::of(request.extensions())).unwrap();
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// The handler of a tonic service under `Server` sees, during the call: its client (the one
/// `Server` lists), from 127.0.0.1, over HTTP/2, with its own response pending. Two calls on
/// one channel are two streams of one client.
#[tokio::test]
async fn grpc_handler_reads_client_info() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let routes = tonic::service::Routes::new(HealthServer::new(Inspecting { seen: tx }));
    let (addr, handle, serving) = serve_under_server(routes).await;

    let mut client = HealthClient::new(channel(addr).await);
    for _ in 0..2 {
        assert_eq!(
            check(&mut client, "").await.unwrap(),
            ServingStatus::Serving
        );
    }
    let first = seen.recv().await.unwrap();
    let second = seen.recv().await.unwrap();
    for call in [&first, &second] {
        assert_eq!(call.http_version, Some(Version::HTTP_2), "{call:?}");
        assert_eq!(call.remote_ip, Some(LOCALHOST), "{call:?}");
        assert!(call.pending_responses >= 1, "{call:?}");
    }
    assert_eq!(first.id, second.id, "one connection, one client");
    let clients = handle.clients();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].id(), first.id);

    handle.shutdown();
    within("serve returns", serving).await.unwrap();
}

/// A tonic interceptor in front of a service it does not own (tonic-health's stock
/// `HealthService`) reads `ClientInfo` the same way, from `request.extensions()`.
#[tokio::test]
async fn grpc_interceptor_reads_client_info() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let reporter = HealthReporter::new();
    let health = HealthServer::with_interceptor(
        HealthService::from_health_reporter(reporter),
        move |request: Request<()>| {
            tx.send(Seen::of(request.extensions())).unwrap();
            Ok(request)
        },
    );
    let (addr, handle, serving) = serve_under_server(tonic::service::Routes::new(health)).await;

    let mut client = HealthClient::new(channel(addr).await);
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving
    );
    let call = seen.recv().await.unwrap();
    assert_eq!(call.http_version, Some(Version::HTTP_2), "{call:?}");
    assert_eq!(call.remote_ip, Some(LOCALHOST), "{call:?}");
    assert!(call.pending_responses >= 1, "{call:?}");
    assert_eq!(handle.clients()[0].id(), call.id);

    handle.shutdown();
    within("serve returns", serving).await.unwrap();
}

/// `ClientIo` as the I/O of tonic's own server: `Connected` hands tonic the `ClientInfo`,
/// which tonic puts in every request's extensions.
struct TonicIo(ClientIo<TcpStream>);

impl Connected for TonicIo {
    type ConnectInfo = ClientInfo;

    fn connect_info(&self) -> ClientInfo {
        self.0.client().clone()
    }
}

impl AsyncRead for TonicIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TonicIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Under tonic's own `serve_with_incoming` (its hyper loop, not `RemoteClient`), a handler
/// still gets a `ClientInfo` with the connection's addresses, but nothing that the server
/// side fills in: `http_version()` stays `None` and `pending_responses()` 0 during the call.
#[tokio::test]
async fn tonic_serve_with_incoming_lacks_version_and_pending() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = Box::pin(client_ios(listener));
    let (tx, mut seen) = mpsc::unbounded_channel();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(Inspecting { seen: tx }))
            .serve_with_incoming(incoming),
    );

    let mut client = HealthClient::new(channel(addr).await);
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving
    );
    let call = seen.recv().await.unwrap();
    assert_eq!(call.remote_ip, Some(LOCALHOST), "{call:?}");
    assert_eq!(call.http_version, None, "{call:?}");
    assert_eq!(call.pending_responses, 0, "{call:?}");

    serving.abort();
}

/// Accepted connections of `listener`, each as a `ClientIo` of its own.
fn client_ios(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<TonicIo>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await;
        Some((
            accepted.map(|(stream, _)| TonicIo(ClientIo::tcp(stream))),
            listener,
        ))
    })
}
