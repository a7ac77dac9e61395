//! [`RemoteClient`]: one accepted connection, served with hyper until it closes.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::client::ClientInfo;
use crate::driver::{HttpDriverFactory, Protocol, Protocols};
use crate::io::{ClientIo, StreamSocket};
use crate::layer::{ClientLayer, RequestBody};
use crate::options::Options;
use crate::BoxError;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A tower service that serves a client's requests: what [`RemoteClient::start`] and
/// [`Server::serve`](crate::Server::serve) take. Implemented for every service that fits
/// (a `service_fn`, an axum `Router`, a tower-http stack); not to be implemented by hand.
pub trait Handler<B>:
    Service<
        Request<RequestBody>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Handler<B> for S where
    S: Service<
            Request<RequestBody>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body a [`Handler`] may answer with: implemented for every body that fits.
pub trait HandlerBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> HandlerBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// How a connection ended, as returned by [`RemoteClient::start`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the connection, or HTTP ended it (`Connection: close`, keep-alive off).
    Finished,
    /// [`ClientInfo::close`] was called.
    Closed,
    /// [`ClientInfo::shutdown`] was called, and the connection finished its work.
    Shutdown,
    /// A timeout fired.
    Timeout(TimeoutKind),
    /// The connection was handed over after an HTTP upgrade; the client stays open until the
    /// upgraded I/O is dropped.
    Upgraded,
    /// An I/O error or an HTTP protocol error ended the connection.
    Error(BoxError),
}

/// Which timeout closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// No progress within [`Options::http1_timeout`] (also: nothing sent at all, an idle
    /// keep-alive connection, a request head that took longer than that).
    Http1,
    /// No progress within [`Options::http2_timeout`].
    Http2,
}

/// One accepted connection and its [`ClientInfo`] (amphp's `RemoteClient`).
///
/// [`start`](Self::start) serves it with hyper until it closes. People with their own accept
/// loop use it directly; it is all a server needs per connection:
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use http::{Request, Response};
/// use hyper_remote_client::{ClientInfo, DefaultHttpDriverFactory, Options, RemoteClient, RequestBody};
///
/// async fn hello(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
///     let client = req.extensions().get::<ClientInfo>().expect("inserted by ClientLayer");
///     Ok(Response::new(format!("you are {}\n", client.remote_address())))
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let options = Arc::new(Options::default());
/// let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let Ok(client) = RemoteClient::tcp(stream, options.clone()) else { continue };
///     let drivers = drivers.clone();
///     tokio::spawn(async move {
///         client.start(&*drivers, tower::service_fn(hello)).await;
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct RemoteClient<S> {
    io: ClientIo<S>,
}

impl RemoteClient<TcpStream> {
    /// Wraps an accepted TCP stream: captures both addresses and sets `TCP_NODELAY`.
    pub fn tcp(stream: TcpStream, options: Arc<Options>) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let client = ClientInfo::builder_for_tcp(&stream)?
            .options(options)
            .build();
        Ok(RemoteClient::new(stream, client))
    }
}

#[cfg(unix)]
impl RemoteClient<tokio::net::UnixStream> {
    /// Wraps an accepted unix stream: captures both paths and the peer's credentials.
    pub fn unix(stream: tokio::net::UnixStream, options: Arc<Options>) -> io::Result<Self> {
        let client = ClientInfo::builder_for_unix(&stream)?
            .options(options)
            .build();
        Ok(RemoteClient::new(stream, client))
    }
}

impl<S> RemoteClient<S>
where
    S: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
{
    /// Wraps `stream`, the connection of `client`.
    pub fn new(stream: S, client: ClientInfo) -> Self {
        RemoteClient {
            io: ClientIo::new(stream, client),
        }
    }

    /// The handle of this connection.
    pub fn client(&self) -> &ClientInfo {
        self.io.client()
    }

    /// The wrapped stream, for bytes read before HTTP (see [`ClientIo::unread`]).
    pub fn io_mut(&mut self) -> &mut ClientIo<S> {
        &mut self.io
    }

    /// Serves the connection with the driver `factory` selects and `service` behind a
    /// [`ClientLayer`], until it ends, [`ClientInfo::close`] is called, a timeout fires, or a
    /// [`ClientInfo::shutdown`] has finished.
    ///
    /// The client is closed (and its `on_close` callbacks have run) when this returns, unless
    /// the connection was upgraded: then it closes when the upgraded I/O is dropped.
    pub async fn start<F, Svc, B>(self, factory: &F, service: Svc) -> CloseReason
    where
        F: HttpDriverFactory + ?Sized,
        Svc: Handler<B>,
        B: HandlerBody,
    {
        let client = self.io.client().clone();
        // Keeps the client open while the connection is served, even once hyper has let go of
        // the I/O, so `on_close` runs after everything the connection owned has been dropped.
        let _open = self.io.guard();
        let mut io = self.io;
        let options = client.options();
        let driver = factory.select(&client);
        let mut watch = Watch::new(&client, options.http1_timeout);

        let protocol = match driver.protocols() {
            Protocols::Http1 => Protocol::Http1,
            Protocols::Http2 => Protocol::Http2,
            Protocols::Auto => {
                let mut sniff = pin!(sniff(&mut io));
                match watch.run(sniff.as_mut()).await {
                    Err(event) => return event.reason(),
                    Ok(Ok(Some(protocol))) => protocol,
                    Ok(Ok(None)) => return CloseReason::Finished,
                    Ok(Err(error)) => return CloseReason::Error(error.into()),
                }
            }
        };
        if protocol == Protocol::Http2 {
            watch.set_timeout(options.http2_timeout, TimeoutKind::Http2);
        }

        let service = TowerToHyperService::new(ClientLayer::new(client.clone()).layer(service));
        let mut conn = pin!(driver.serve(protocol, TokioIo::new(io), service));
        loop {
            let result = watch.run(conn.as_mut()).await;
            if client.inner.closed.load(Ordering::Acquire) {
                // hyper may have noticed first: the I/O refuses everything after close().
                return CloseReason::Closed;
            }
            match result {
                Err(Event::Shutdown) => conn.as_mut().graceful_shutdown(),
                Err(event) => return event.reason(),
                Ok(Ok(())) if client.is_exported() => return CloseReason::Upgraded,
                Ok(Ok(())) if watch.shutdown_seen => return CloseReason::Shutdown,
                Ok(Ok(())) => return CloseReason::Finished,
                Ok(Err(error)) if error.is_timeout() => return CloseReason::Timeout(watch.kind),
                Ok(Err(error)) => return CloseReason::Error(error.into()),
            }
        }
    }
}

/// Reads until the HTTP/2 preface is seen or ruled out, and puts the bytes back.
/// `None`: the peer closed before sending anything.
async fn sniff<S: AsyncRead + Unpin>(io: &mut ClientIo<S>) -> io::Result<Option<Protocol>> {
    let mut buf = [0; H2_PREFACE.len()];
    let mut filled = 0;
    let protocol = loop {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            break Protocol::Http1;
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            break Protocol::Http1;
        }
        if filled == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    io.unread(&buf[..filled]);
    Ok(Some(protocol))
}

/// The longest timeout taken literally: longer ones (`Duration::MAX` for "never") would
/// overflow the clock.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn bounded(timeout: Duration) -> Duration {
    timeout.min(LONGEST)
}

/// How often progress is sampled: a quarter of the timeout, at least every millisecond.
fn tick(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(1))
}

/// What interrupts serving a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Closed,
    Shutdown,
    TimedOut(TimeoutKind),
}

impl Event {
    fn reason(self) -> CloseReason {
        match self {
            Event::Closed => CloseReason::Closed,
            Event::Shutdown => CloseReason::Shutdown,
            Event::TimedOut(kind) => CloseReason::Timeout(kind),
        }
    }
}

/// Watches a connection for `close()`, `shutdown()` and lack of progress.
///
/// Progress is the byte counters of the client's I/O, sampled every quarter of the timeout, so
/// an idle connection is closed between 1 and 1.25 timeouts after its last byte; the I/O itself
/// pays no clock reads.
struct Watch<'a> {
    client: &'a ClientInfo,
    timeout: Duration,
    kind: TimeoutKind,
    tick: Duration,
    sleep: Pin<Box<Sleep>>,
    progress: u64,
    idle_since: Instant,
    /// HTTP/1 request heads: requests started and bytes read at the last sample, and since
    /// when bytes have been arriving without a request starting.
    requests_seen: u64,
    read_seen: u64,
    head_since: Option<Instant>,
    shutdown_seen: bool,
}

impl<'a> Watch<'a> {
    fn new(client: &'a ClientInfo, timeout: Duration) -> Self {
        let now = Instant::now();
        let timeout = bounded(timeout);
        let tick = tick(timeout);
        Watch {
            client,
            timeout,
            kind: TimeoutKind::Http1,
            tick,
            sleep: Box::pin(tokio::time::sleep_until(now + tick)),
            progress: 0,
            idle_since: now,
            requests_seen: 0,
            read_seen: 0,
            head_since: None,
            shutdown_seen: false,
        }
    }

    fn set_timeout(&mut self, timeout: Duration, kind: TimeoutKind) {
        self.timeout = bounded(timeout);
        self.kind = kind;
        self.tick = tick(self.timeout);
        let deadline = Instant::now() + self.tick;
        self.sleep.as_mut().reset(deadline);
    }

    /// Drives `fut` until it completes, or until an event interrupts it.
    async fn run<T>(&mut self, mut fut: Pin<&mut impl Future<Output = T>>) -> Result<T, Event> {
        poll_fn(|cx| {
            if let Poll::Ready(event) = self.poll_event(cx) {
                return Poll::Ready(Err(event));
            }
            fut.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Whether a request head has been arriving for longer than the timeout (slowloris:
    /// bytes trickle in, so the connection is never idle, but no request ever starts). This
    /// replaces hyper's `header_read_timeout`, which costs a timer allocation and registration
    /// per request.
    fn head_too_slow(&mut self, now: Instant) -> bool {
        let inner = &self.client.inner;
        let requests = inner.requests_started.load(Ordering::Relaxed);
        let read = self.client.bytes_read();
        if requests != self.requests_seen {
            self.requests_seen = requests;
            self.head_since = None;
        } else if self.client.pending_responses() != 0 {
            self.head_since = None;
        } else if read != self.read_seen && self.head_since.is_none() {
            self.head_since = Some(now);
        }
        self.read_seen = read;
        self.head_since
            .is_some_and(|since| now.duration_since(since) >= self.timeout)
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let inner = &self.client.inner;
        inner.waker.register(cx.waker());
        if inner.closed.load(Ordering::Acquire) {
            return Poll::Ready(Event::Closed);
        }
        if !self.shutdown_seen && inner.shutdown.load(Ordering::Acquire) {
            self.shutdown_seen = true;
            return Poll::Ready(Event::Shutdown);
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let progress = self.client.bytes_read() + self.client.bytes_written();
            if progress != self.progress {
                self.progress = progress;
                self.idle_since = now;
            } else if now.duration_since(self.idle_since) >= self.timeout {
                // Idle is the peer's doing: no request in flight, or a handler waiting for
                // request body bytes that do not come, or a response the peer does not read.
                // A handler busy with its response (read the body or not) is not idle.
                let waiting_on_peer = self.client.pending_responses() == 0
                    || inner.bodies_waiting.load(Ordering::Acquire) > 0
                    || inner.write_blocked.load(Ordering::Relaxed);
                if waiting_on_peer {
                    return Poll::Ready(Event::TimedOut(self.kind));
                }
            }
            if self.kind == TimeoutKind::Http1 && self.head_too_slow(now) {
                return Poll::Ready(Event::TimedOut(self.kind));
            }
            self.sleep.as_mut().reset(now + self.tick);
        }
        Poll::Pending
    }
}
