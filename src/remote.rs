//! [`RemoteClient`]: one accepted connection, served with hyper until it closes.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::Instrument;

use crate::client::ClientInfo;
use crate::driver::{Connection, HttpDriverFactory, Protocols};
use crate::io::{ClientIo, StreamSocket};
use crate::layer::Serve;
use crate::lifecycle::{Event, Protocol, TimeoutKind, Watch};
use crate::options::Options;
use crate::BoxError;
use crate::RequestBody;

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
    /// A clock of the connection's lifecycle ran out (see [`TimeoutKind`]).
    Timeout(TimeoutKind),
    /// The connection was handed over after an HTTP upgrade; the client stays open until the
    /// upgraded I/O is dropped.
    Upgraded,
    /// The connection was idle when its server was replaced by a new process
    /// ([`Server::upgrade_socket`](crate::Server::upgrade_socket)), and now belongs to that
    /// process; this one closed its copy without ending it.
    HandedOver,
    /// An I/O error or an HTTP protocol error ended the connection.
    Error(BoxError),
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
/// use hyper_remote_client::{ClientInfo, Options, RemoteClient, RequestBody, driver::DefaultHttpDriverFactory};
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
    pub fn tcp(stream: TcpStream, options: impl Into<Arc<Options>>) -> io::Result<Self> {
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
    pub fn unix(
        stream: tokio::net::UnixStream,
        options: impl Into<Arc<Options>>,
    ) -> io::Result<Self> {
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

    /// Serves the connection with the driver `factory` selects and `service` (every request
    /// screened, counted and given its [`ClientInfo`], as [`ClientLayer`](crate::ClientLayer)
    /// does), until it ends, [`ClientInfo::close`] is called, a clock of its lifecycle runs out
    /// (see [`Options`]), or a [`ClientInfo::shutdown`] has finished.
    ///
    /// The client is closed (and its `on_close` callbacks have run) when this returns, unless
    /// the connection was upgraded: then it closes when the upgraded I/O is dropped, or when
    /// [`Options::detached_timeout`] passes without a byte either way.
    ///
    /// The connection is served in a `tracing` span `client` (INFO level) with its `id`,
    /// `remote` and `local` addresses, its `protocol` once known (`http/1.1`, `h2`) and, over
    /// TLS, `tls` (the protocol version) and `alpn`: whatever the connection and its handlers
    /// log (HTTP/2 streams included) carries it.
    pub async fn start<F, Svc, B>(self, factory: &F, service: Svc) -> CloseReason
    where
        F: HttpDriverFactory + ?Sized,
        Svc: Handler<B>,
        B: HandlerBody,
    {
        let span = connection_span(self.client());
        self.serve(factory, service, None).instrument(span).await
    }

    /// [`start`](Self::start), in the caller's span; an idle HTTP/1 connection goes to
    /// `handover` at a shutdown, if it holds a sink then.
    pub(crate) fn serve<'a, F, Svc, B>(
        self,
        factory: &'a F,
        service: Svc,
        handover: Option<&'a HandoverSlot>,
    ) -> impl Future<Output = CloseReason> + Send + 'a
    where
        F: HttpDriverFactory + ?Sized,
        Svc: Handler<B>,
        B: HandlerBody,
    {
        // The I/O goes to `serve_io` by value: an `async fn` of `self` would keep a second copy
        // of it (its argument's room beside the local it is moved into) in every connection's
        // task.
        serve_io(self.io, factory, service, handover)
    }
}

async fn serve_io<S, F, Svc, B>(
    mut io: ClientIo<S>,
    factory: &F,
    service: Svc,
    handover: Option<&HandoverSlot>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
    F: HttpDriverFactory + ?Sized,
    Svc: Handler<B>,
    B: HandlerBody,
{
    let client = io.client().clone();
    // Keeps the client open while the connection is served, even once hyper has let go of
    // the I/O, so `on_close` runs after everything the connection owned has been dropped.
    let _open = io.guard();
    let options = client.options();
    let driver = factory.select(&client);
    let state = client.state();

    // The client's options rule the connection (the driver may have been built from
    // others): h2c prior knowledge only if they allow it.
    let (protocol, sniffing) = match driver.protocols() {
        Protocols::Http1 => (Protocol::Http1, false),
        Protocols::Http2 => (Protocol::Http2, false),
        Protocols::Auto => (Protocol::Http1, options.http2_cleartext()),
    };
    let mut watch = Watch::new(state, options, protocol);
    let protocol = if sniffing {
        match sniff_protocol(&mut io, &mut watch, handover).await {
            Ok(protocol) => protocol,
            Err(reason) => return reason,
        }
    } else {
        protocol
    };
    watch.set_protocol(protocol);
    if protocol == Protocol::Http2 {
        state.set_version(http::Version::HTTP_2);
        state.set_budget(options.http2_buffered_response_limit());
    }
    tracing::Span::current().record(
        "protocol",
        match protocol {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
        },
    );
    if protocol == Protocol::Http1 {
        io.coalesce_writes();
    }
    let service = Serve::new(service, client.clone());
    let conn = pin!(driver.serve(protocol, TokioIo::new(io), service, options));
    drive(conn, &mut watch, &client, protocol, handover).await
}

/// Reads the first bytes (under the idle clock) to tell HTTP/2 prior knowledge from HTTP/1;
/// the connection's end if it ends meanwhile (a connection waiting for its first bytes at a
/// handover moves whole).
async fn sniff_protocol<S>(
    io: &mut ClientIo<S>,
    watch: &mut Watch<'_>,
    handover: Option<&HandoverSlot>,
) -> Result<Protocol, CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[cfg(not(unix))]
    let _ = handover;
    let mut sniffed = Sniffed::default();
    let result = {
        let mut sniff = pin!(sniff(io, &mut sniffed));
        watch.run(sniff.as_mut()).await
    };
    match result {
        #[cfg(unix)]
        Err(Event::Shutdown) if handover.is_some() => {
            io.unread(&sniffed.buf[..sniffed.filled]);
            let client = io.client().clone();
            let moving = handover.and_then(|slot| crate::handover::reserve(&client, slot));
            Err(if moving.is_some_and(|moving| moving.send(io, &[])) {
                CloseReason::HandedOver
            } else {
                CloseReason::Shutdown
            })
        }
        Err(event) => Err(reason(event)),
        Ok(Ok(Some(protocol))) => Ok(protocol),
        Ok(Ok(None)) => Err(CloseReason::Finished),
        Ok(Err(error)) => Err(CloseReason::Error(error.into())),
    }
}

/// Drives hyper's connection under the watch until it ends, and says how it ended: after a
/// `close()`, a clock or hyper's error the answers gathered for earlier requests go out
/// first; at a shutdown an idle HTTP/1 connection may move to the process replacing this one.
async fn drive<S, Svc, B>(
    mut conn: std::pin::Pin<&mut Connection<TokioIo<ClientIo<S>>, Serve<Svc>>>,
    watch: &mut Watch<'_>,
    client: &ClientInfo,
    protocol: Protocol,
    handover: Option<&HandoverSlot>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
    Svc: Handler<B>,
    B: HandlerBody,
{
    #[cfg(unix)]
    let mut moving = None;
    #[cfg(not(unix))]
    let _ = (handover, protocol);
    loop {
        let result = watch.run(conn.as_mut()).await;
        if client.state().is_closing() {
            // hyper may have noticed first: the I/O refuses everything after close(). The
            // answers gathered for earlier pipelined requests still go out.
            write_held(conn.as_mut()).await;
            return CloseReason::Closed;
        }
        match result {
            Err(Event::Shutdown) => {
                #[cfg(unix)]
                if moving.is_none() && protocol == Protocol::Http1 {
                    moving = handover.and_then(|slot| crate::handover::reserve(client, slot));
                }
                conn.as_mut().graceful_shutdown();
            }
            Err(event @ Event::TimedOut(TimeoutKind::Response)) => return reason(event),
            Err(event) => {
                // An idle or head clock, or the half-close clock: answers gathered for
                // earlier requests (if the peer takes them) go out first.
                write_held(conn.as_mut()).await;
                return reason(event);
            }
            #[cfg(unix)]
            Ok(Ok(())) if moving.is_some() => {
                // hyper was idle if it closed at once, without a byte moved; its socket was
                // not shut down (`set_handing_over`). Had it finished something first (a
                // response's tail), the connection closes here: dropping the only descriptor
                // ends it with a FIN.
                let moved = match (moving.take(), conn.as_mut().take_parts()) {
                    (Some(moving), Some((io, read))) => moving.send(&io.into_inner(), &read),
                    _ => false,
                };
                return if moved {
                    CloseReason::HandedOver
                } else {
                    CloseReason::Shutdown
                };
            }
            Ok(Ok(())) if client.is_exported() => {
                #[cfg(feature = "metrics")]
                metrics::counter!(crate::telemetry::UPGRADED_CONNECTIONS).increment(1);
                if let Some(timeout) = client.options().detached_timeout() {
                    tokio::spawn(watch_detached(client.clone(), timeout));
                }
                return CloseReason::Upgraded;
            }
            Ok(Ok(())) if watch.shutdown_seen() => return CloseReason::Shutdown,
            Ok(Ok(())) => return CloseReason::Finished,
            Ok(Err(error)) => {
                write_held(conn.as_mut()).await;
                return CloseReason::Error(error.into());
            }
        }
    }
}

/// Before an HTTP/1 connection is let go without hyper's shutdown of its I/O: writes the
/// answers [`ClientIo`] gathered for earlier pipelined requests (see `ClientIo::write_held`).
async fn write_held<S, Svc, B>(
    conn: std::pin::Pin<&mut Connection<TokioIo<ClientIo<S>>, Serve<Svc>>>,
) where
    S: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
    Svc: Handler<B>,
    B: HandlerBody,
{
    if let Some((io, _)) = conn.take_parts() {
        // Boxed: the lingering close's future (a read buffer, a timer) is as large as the rest
        // of the connection's task, and every connection would carry its room otherwise.
        let mut io = io.into_inner();
        Box::pin(io.write_held()).await;
    }
}

/// Where a shutting-down [`Server`](crate::Server) sends the idle connections a new process
/// takes over (see `handover::moving`).
#[cfg(unix)]
pub(crate) use crate::handover::HandoverSlot;
/// No handover without unix sockets.
#[cfg(not(unix))]
pub(crate) type HandoverSlot = ();

fn reason(event: Event) -> CloseReason {
    match event {
        Event::Closed => CloseReason::Closed,
        Event::Shutdown => CloseReason::Shutdown,
        Event::TimedOut(kind) => timed_out(kind),
    }
}

/// A close by the clock `kind`, recorded in the metrics.
pub(crate) fn timed_out(kind: TimeoutKind) -> CloseReason {
    #[cfg(feature = "metrics")]
    crate::telemetry::timeout(match kind {
        TimeoutKind::Idle => "idle",
        TimeoutKind::RequestHead => "request_head",
        TimeoutKind::RequestBody => "request_body",
        TimeoutKind::Response => "response",
        TimeoutKind::HalfClose => "half_close",
    });
    CloseReason::Timeout(kind)
}

/// The span a connection is served in: see [`RemoteClient::start`].
pub(crate) fn connection_span(client: &ClientInfo) -> tracing::Span {
    use tracing::field::Empty;
    // A root span, wherever the accept loop runs (inside `Server::serve`'s future, which may
    // be awaited in a span of the caller's).
    let span = tracing::info_span!(
        parent: None,
        "client",
        id = %client.id(),
        remote = %client.remote_address(),
        local = %client.local_address(),
        protocol = Empty,
        tls = Empty,
        alpn = Empty,
    );
    if let Some(tls) = client.tls().filter(|_| !span.is_disabled()) {
        span.record("tls", tls.protocol());
        if let Some(alpn) = tls.alpn_protocol() {
            span.record("alpn", String::from_utf8_lossy(alpn).as_ref());
        }
    }
    span
}

/// The idle clock of a detached connection: closes it once no byte has moved either way for
/// `timeout` (sampled every quarter of it, so between 1 and 1.25 times `timeout` after the
/// last byte). Ends when the client closes.
async fn watch_detached(client: ClientInfo, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(1));
    let progress = |client: &ClientInfo| client.bytes_read() + client.bytes_written();
    let mut last = progress(&client);
    let mut quiet = Duration::ZERO;
    let closed = client.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = progress(&client);
        if now != last {
            last = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += tick;
        if quiet >= timeout {
            client.state().set_detached_timed_out();
            #[cfg(feature = "metrics")]
            crate::telemetry::timeout("detached");
            client.close();
            return;
        }
    }
}

/// Reads until the HTTP/2 preface is seen or ruled out, and puts the bytes back.
/// `None`: the peer closed before sending anything.
/// The bytes [`sniff`] has read: kept outside its future, so that a connection whose sniffing
/// is cut (for a handover) keeps them.
#[derive(Default)]
struct Sniffed {
    buf: [u8; H2_PREFACE.len()],
    filled: usize,
}

async fn sniff<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ClientIo<S>,
    sniffed: &mut Sniffed,
) -> io::Result<Option<Protocol>> {
    let Sniffed { buf, filled } = sniffed;
    let protocol = loop {
        let n = io.read(&mut buf[*filled..]).await?;
        if n == 0 {
            if *filled == 0 {
                return Ok(None);
            }
            break Protocol::Http1;
        }
        *filled += n;
        if buf[..*filled] != H2_PREFACE[..*filled] {
            break Protocol::Http1;
        }
        if *filled == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    io.unread(&buf[..*filled]);
    *filled = 0;
    Ok(Some(protocol))
}
