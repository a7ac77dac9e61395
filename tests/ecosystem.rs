//! The crate in the ecosystem around it: a plain hyper accept loop gaining `ClientInfo` in a
//! few lines, an axum `Router` (its `ConnectInfo<SocketAddr>` and our `ClientInfo`) under
//! `Server` and `RemoteClient`, handlers awaiting `ClientInfo::closed`, and the
//! `ServerHandle` verbs (`listening`, `connection_count`, `graceful_shutdown`, `shutdown`).
//! Real sockets on 127.0.0.1, bounded waits.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{body_of, eventually, h1_client, h1_req, h2_client, h2_req, within};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_remote_client::{
    Address, ClientId, ClientInfo, ClientIo, ClientService, Options, RequestBody, Server,
    ServerHandle,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Aborts a background task (an accept loop) when the test ends, however it ends.
struct Background(JoinHandle<std::io::Result<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A plain hyper application's accept loop (hyper-util's `auto` builder, hyper's
/// `service_fn`, a `Request<Incoming>` handler), with the lines `examples/hello_hyper.rs`
/// adds marked `// +`. Serves `handler` on 127.0.0.1:0.
async fn hyper_app<F, Fut>(handler: F) -> (SocketAddr, Background)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<String>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await?;
            let io = ClientIo::tcp(stream); // +
            let service = ClientService::new(service_fn(handler.clone()), io.client().clone()); // +
            let io = TokioIo::new(io); // +
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                // + `service` on the next line (was: `service_fn(handler)`)
                let _ = builder.serve_connection_with_upgrades(io, service).await;
            });
        }
    });
    (addr, Background(accept))
}

/// What a handler saw of its client, as it answers it (`hello`).
#[derive(Debug, PartialEq)]
struct Seen {
    id: u64,
    remote: SocketAddr,
    version: String,
    pending_responses: usize,
}

fn seen(body: &[u8]) -> Seen {
    let body = std::str::from_utf8(body).unwrap();
    let fields: Vec<&str> = body.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{body}");
    Seen {
        id: fields[0].parse().unwrap(),
        remote: fields[1].parse().unwrap(),
        version: fields[2].to_owned(),
        pending_responses: fields[3].parse().unwrap(),
    }
}

/// The application's handler: answers with what it sees of its client; on `/close`, closes
/// the connection (the answer is never written).
async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        return Ok(Response::new("no client info".to_owned()));
    };
    if req.uri().path() == "/close" {
        client.close();
    }
    Ok(Response::new(format!(
        "{} {} {:?} {}",
        client.id(),
        client.remote_address(),
        client.http_version(),
        client.pending_responses(),
    )))
}

#[tokio::test]
async fn five_line_hyper_app_gets_client_info() {
    let (addr, _app) = hyper_app(hello).await;

    // HTTP/1.1, two keep-alive requests: one client.
    let mut a = h1_client(addr).await;
    let mut a_seen = Vec::new();
    for _ in 0..2 {
        let resp = within("h1 request", a.sender.send_request(h1_req("GET", "/", "")))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        a_seen.push(seen(&body_of(resp).await));
    }
    assert_eq!(a_seen[0], a_seen[1], "same connection, same client");
    assert_eq!(a_seen[0].remote, a.local, "the client's own address");
    assert_eq!(a_seen[0].version, format!("{:?}", Some(Version::HTTP_11)));
    assert_eq!(
        a_seen[0].pending_responses, 1,
        "this response, in the handler"
    );

    // h2c (prior knowledge) through the same auto builder: another client.
    let mut b = h2_client(addr).await;
    let mut b_seen = Vec::new();
    for _ in 0..2 {
        let resp = within(
            "h2 request",
            b.sender.send_request(h2_req(addr, "GET", "/", "")),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        b_seen.push(seen(&body_of(resp).await));
    }
    assert_eq!(b_seen[0], b_seen[1]);
    assert_eq!(b_seen[0].remote, b.local);
    assert_eq!(b_seen[0].version, format!("{:?}", Some(Version::HTTP_2)));
    assert_eq!(b_seen[0].pending_responses, 1);
    assert_ne!(a_seen[0].id, b_seen[0].id, "one client per connection");

    // A handler closing its own connection ends it, over HTTP/1.1 and over HTTP/2; the other
    // connections stay served.
    let mut c = h1_client(addr).await;
    let resp = within(
        "h1 /close",
        c.sender.send_request(h1_req("GET", "/close", "")),
    )
    .await;
    assert!(resp.is_err(), "no response after close(): {resp:?}");
    within("h1 connection ends", c.conn).await.unwrap().ok();
    let mut d = h2_client(addr).await;
    let resp = within(
        "h2 /close",
        d.sender.send_request(h2_req(addr, "GET", "/close", "")),
    )
    .await;
    assert!(resp.is_err(), "no response after close(): {resp:?}");
    within("h2 connection ends", d.conn).await.unwrap().ok();

    let resp = within("h1 again", a.sender.send_request(h1_req("GET", "/", "")))
        .await
        .unwrap();
    assert_eq!(seen(&body_of(resp).await).id, a_seen[0].id);
    let resp = within(
        "h2 again",
        b.sender.send_request(h2_req(addr, "GET", "/", "")),
    )
    .await
    .unwrap();
    assert_eq!(seen(&body_of(resp).await).id, b_seen[0].id);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_connect_info_works_under_server() {
    use std::sync::Arc;

    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::Router;
    use hyper_remote_client::{driver::DefaultHttpDriverFactory, RemoteClient};

    /// A handler written for `into_make_service_with_connect_info::<SocketAddr>()`, plus ours.
    async fn peer(ConnectInfo(peer): ConnectInfo<SocketAddr>, client: ClientInfo) -> String {
        format!("{peer} {} {}", client.remote_address(), client.id())
    }
    let router = Router::new().route("/", get(peer));

    // Under `Server`, over HTTP/1.1.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(router.clone()));
    let mut client = h1_client(addr).await;
    let resp = within(
        "request",
        client.sender.send_request(h1_req("GET", "/", "")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_of(resp).await;
    let id = handle.clients()[0].id();
    assert_eq!(body, format!("{0} {0} {id}", client.local));
    handle.shutdown();
    within("serve returns", serving).await.unwrap();

    // Under `RemoteClient::start` (one connection, own loop), over h2c.
    let options = Arc::new(Options::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = options.clone();
    let served = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let client = RemoteClient::tcp(stream, opts.clone()).unwrap();
        let id = client.client().id();
        client
            .start(&DefaultHttpDriverFactory::new(&opts), router)
            .await;
        id
    });
    let mut client = h2_client(addr).await;
    let resp = within(
        "request",
        client.sender.send_request(h2_req(addr, "GET", "/", "")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_of(resp).await;
    drop(client.sender);
    within("h2 connection ends", client.conn)
        .await
        .unwrap()
        .ok();
    let id = within("served", served).await.unwrap();
    assert_eq!(body, format!("{0} {0} {id}", client.local));
}

/// A handler that, on `/wait`, spawns a task awaiting `client.closed()` which then reports
/// the client's id on `closed`; any other path just answers. Answers with the client's id.
fn closed_waiter<B>(
    closed: mpsc::UnboundedSender<ClientId>,
) -> impl Fn(Request<B>) -> std::future::Ready<Result<Response<String>, Infallible>>
       + Clone
       + Send
       + 'static {
    move |req: Request<B>| {
        let client = req
            .extensions()
            .get::<ClientInfo>()
            .expect("inserted by ClientService")
            .clone();
        let id = client.id();
        if req.uri().path() == "/wait" {
            let closed = closed.clone();
            tokio::spawn(async move {
                client.closed().await;
                let _ = closed.send(client.id());
            });
        }
        std::future::ready(Ok(Response::new(id.to_string())))
    }
}

/// Three waiters on one keep-alive connection: none resolves while it is open, all three
/// once the client disconnects.
async fn three_waiters(addr: SocketAddr, closed: &mut mpsc::UnboundedReceiver<ClientId>) {
    let mut client = h1_client(addr).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let resp = within(
            "/wait",
            client.sender.send_request(h1_req("GET", "/wait", "")),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        ids.push(String::from_utf8(body_of(resp).await.to_vec()).unwrap());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one client: {ids:?}");
    // One more request on the same connection: served after the three waiters were spawned,
    // and none of them has resolved.
    let resp = within("/", client.sender.send_request(h1_req("GET", "/", "")))
        .await
        .unwrap();
    assert_eq!(body_of(resp).await, ids[0]);
    assert_eq!(
        closed.try_recv(),
        Err(mpsc::error::TryRecvError::Empty),
        "closed() resolved on an open connection"
    );

    drop(client.sender);
    within("client disconnects", client.conn)
        .await
        .unwrap()
        .unwrap();
    for n in 0..3 {
        let id = within("closed() resolves", closed.recv()).await.unwrap();
        assert_eq!(id.to_string(), ids[0], "waiter {n}");
    }
}

#[tokio::test]
async fn handler_awaiting_closed() {
    // In a plain hyper loop (ClientIo + ClientService).
    let (tx, mut closed) = mpsc::unbounded_channel();
    let (addr, _app) = hyper_app(closed_waiter::<Incoming>(tx)).await;
    three_waiters(addr, &mut closed).await;

    // Under `Server`.
    let (tx, mut closed) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(tower::service_fn(closed_waiter::<RequestBody>(tx))));
    three_waiters(addr, &mut closed).await;
    handle.shutdown();
    within("serve returns", serving).await.unwrap();
}

/// Starts a server on 127.0.0.1:0 whose `/slow` handler reports on `started` that it runs,
/// then answers once `release` is true; any other path answers at once. Returns the handle,
/// the task running `serve` and the address the listener was bound to.
async fn slow_server(
    started: mpsc::UnboundedSender<()>,
    release: watch::Receiver<bool>,
) -> (ServerHandle, JoinHandle<()>, SocketAddr) {
    let service = tower::service_fn(move |req: Request<RequestBody>| {
        let started = started.clone();
        let mut release = release.clone();
        async move {
            if req.uri().path() == "/slow" {
                let _ = started.send(());
                let _ = release.wait_for(|released| *released).await;
                return Ok::<_, Infallible>(Response::new("slow done".to_owned()));
            }
            Ok(Response::new("quick".to_owned()))
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    (handle, tokio::spawn(server.serve(service)), bound)
}

#[tokio::test]
async fn server_handle_verbs() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    let (handle, serving, addr) = slow_server(started_tx, release_rx).await;

    // listening(): the bound address, once the server accepts.
    let listening = within("listening", handle.listening()).await;
    assert_eq!(listening, vec![Address::Inet(addr)]);

    // connection_count(): three idle keep-alive connections, then none.
    assert_eq!(handle.connection_count(), 0);
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut client = h1_client(addr).await;
        let resp = within("quick", client.sender.send_request(h1_req("GET", "/", "")))
            .await
            .unwrap();
        assert_eq!(body_of(resp).await, "quick");
        idle.push(client);
    }
    eventually("3 connections", || handle.connection_count() == 3).await;
    for client in idle {
        drop(client.sender);
        within("disconnect", client.conn).await.unwrap().unwrap();
    }
    eventually("0 connections", || handle.connection_count() == 0).await;

    // graceful_shutdown(500 ms): the idle connection is closed at once, the slow request in
    // flight is answered, then `serve` returns.
    // (Raw: hyper's client calls an EOF before its first request an IncompleteMessage.)
    let mut idle = common::connect(addr).await;
    let mut busy = h1_client(addr).await;
    let slow = tokio::spawn(busy.sender.send_request(h1_req("GET", "/slow", "")));
    within("slow handler runs", started.recv()).await.unwrap();
    eventually("2 connections", || handle.connection_count() == 2).await;
    assert!(!handle.is_shutting_down());
    handle.graceful_shutdown(Some(Duration::from_millis(500)));
    assert!(handle.is_shutting_down());
    let bytes = common::read_to_eof(&mut idle).await;
    assert_eq!(
        bytes.unwrap(),
        b"",
        "idle connection closed at once, silently"
    );
    assert!(!slow.is_finished() && !serving.is_finished());
    release.send_replace(true);
    let resp = within("slow response", slow).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_of(resp).await, "slow done");
    within("serve returns", serving).await.unwrap();
    assert_eq!(handle.connection_count(), 0);

    // shutdown(): immediate; the slow request in flight gets no response.
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (_never, never_rx) = watch::channel(false);
    let (handle, serving, addr) = slow_server(started_tx, never_rx).await;
    assert_eq!(
        within("listening", handle.listening()).await,
        vec![Address::Inet(addr)]
    );
    let mut busy = h1_client(addr).await;
    let slow = tokio::spawn(busy.sender.send_request(h1_req("GET", "/slow", "")));
    within("slow handler runs", started.recv()).await.unwrap();
    let asked = Instant::now();
    handle.shutdown();
    let resp = within("slow request ends", slow).await.unwrap();
    assert!(resp.is_err(), "no response: {resp:?}");
    within("connection ends", busy.conn).await.unwrap().ok();
    within("serve returns", serving).await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "shutdown() took {:?}",
        asked.elapsed()
    );
    assert_eq!(handle.connection_count(), 0);
}
