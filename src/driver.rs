//! [`HttpDriver`] and [`HttpDriverFactory`]: which HTTP version serves a connection, and how.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::Body;
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioTimer;
use pin_project_lite::pin_project;
use tracing::Instrument;

use crate::client::ClientInfo;
use crate::lifecycle::Protocol;
use crate::options::Options;
use crate::BoxError;

/// The executor of hyper's HTTP/2 builder.
///
/// Inside a connection served by this crate (or wrapped in [`InlineStreams`]), each new
/// stream is first polled on the connection's own task, once hyper's poll of the connection
/// that accepted it returns (with the other streams that poll accepted): a stream whose
/// response is ready at once (a handler that does not wait) is queued there without a task of
/// its own, and the connection writes the responses of such a batch together at its next poll.
/// A stream that has to wait is then spawned on tokio (as hyper-util's `TokioExecutor` does)
/// and goes on there, so slow handlers still run concurrently and on any worker; tokio polls
/// it again at once, so the wakers it registered in its first poll are replaced (a future that
/// keeps only the first waker it was given, against the `Future` contract, would not be
/// woken). A panic in that first poll ends that stream alone, as it would in a task of its
/// own; a panic in hyper's poll of the connection ends that connection (its task), and the
/// streams it had accepted are spawned.
///
/// The first polls of one batch are bounded: at the first stream whose first poll took over
/// 50 µs (synchronous work before its first wait), or once 500 µs are spent on the batch, the
/// rest of the batch is spawned without being polled here; a connection whose batches run over
/// three times in a row spawns every stream for the next 64 batches, then tries again. So one
/// connection carrying CPU-heavy streams (a gRPC client or a proxy multiplexing onto it) does
/// not run them all on one worker.
///
/// Elsewhere (a connection of your own, not wrapped in [`InlineStreams`]), each stream is
/// spawned. Either way a spawned stream runs in the `tracing` span of its connection, so that
/// a handler's log lines carry the connection's span over HTTP/2 as they do over HTTP/1.
///
/// [`Options::http2_inline_streams`] off (or [`StreamExecutor::spawning`]): every stream is
/// spawned.
#[derive(Clone, Copy, Debug)]
pub struct StreamExecutor {
    inline: bool,
}

impl StreamExecutor {
    /// The executor that polls a new stream on its connection's task first (the default).
    pub fn inline() -> Self {
        StreamExecutor { inline: true }
    }

    /// The executor that spawns every stream on a task of its own.
    pub fn spawning() -> Self {
        StreamExecutor { inline: false }
    }
}

impl Default for StreamExecutor {
    fn default() -> Self {
        Self::inline()
    }
}

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// Whether a connection of this crate is being polled on this thread: its new streams wait
    /// in `STREAMS` for their first poll.
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
    static STREAMS: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        if self.inline && COLLECTING.get() {
            let future: Stream = Box::pin(future);
            STREAMS.with_borrow_mut(|streams| streams.push(future));
        } else {
            spawn(future);
        }
    }
}

fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if tracing::level_filters::LevelFilter::current() == tracing::level_filters::LevelFilter::OFF {
        // No subscriber enables anything: no span to carry (and no lookup per stream).
        tokio::spawn(future);
        return;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        tokio::spawn(future);
    } else {
        tokio::spawn(future.instrument(span));
    }
}

/// A stream whose first poll takes longer than this is heavy: the rest of its batch is
/// spawned without being polled here.
const HEAVY_STREAM: Duration = Duration::from_micros(50);
/// At most this long is spent on the first polls of one batch on the connection's task; the
/// rest of the batch is spawned.
const BATCH_BUDGET: Duration = Duration::from_micros(500);
/// After this many batches in a row that ran over, a connection spawns every stream...
const STRIKES: u8 = 3;
/// ...for this many batches, then tries inline again.
const SPAWNED_BATCHES: u16 = 64;

/// How a connection's new streams get their first poll: on its task, within a time budget.
///
/// Inline first polls batch the answers of a connection's light streams into one write and
/// spare them a task each; but they serialize the synchronous work of one connection's streams
/// on its task. So a batch stops polling inline at the first heavy stream (over
/// [`HEAVY_STREAM`]) or once [`BATCH_BUDGET`] is spent, and spawns the rest at once, where the
/// runtime's workers run them in parallel; a connection whose batches keep running over spawns
/// all its streams for a while, then tries again.
#[derive(Debug, Default)]
pub(crate) struct InlinePolicy {
    strikes: u8,
    spawning: u16,
}

/// Polls an HTTP/2 connection, then gives each stream it accepted meanwhile its first poll on
/// this task (within `policy`'s budget); the ones that wait are spawned.
fn poll_http2<T>(
    cx: &mut Context<'_>,
    policy: &mut InlinePolicy,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    let collecting = Collecting {
        outer: COLLECTING.replace(true),
    };
    let result = poll(cx);
    let outer = collecting.outer;
    drop(collecting);
    if outer {
        // An enclosing connection on this task gives them their first poll.
        return result;
    }
    let mut streams = STREAMS.with_borrow_mut(std::mem::take);
    if streams.is_empty() {
        STREAMS.with_borrow_mut(|spare| *spare = streams);
        return result;
    }
    if policy.spawning > 0 {
        policy.spawning -= 1;
        streams.drain(..).for_each(spawn);
    } else {
        let started = Instant::now();
        let mut last = started;
        let mut over = false;
        for mut stream in streams.drain(..) {
            if over {
                spawn(stream);
                continue;
            }
            let poll = catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll(cx)));
            if let Ok(Poll::Pending) = poll {
                spawn(stream);
            } else {
                // Answered, or panicked (hyper's h2 resets the stream once it is dropped):
                // dropped here, a panic in a drop caught too, as tokio does for a task of its
                // own.
                let _ = catch_unwind(AssertUnwindSafe(move || drop(stream)));
            }
            let now = Instant::now();
            over = now.duration_since(last) > HEAVY_STREAM
                || now.duration_since(started) > BATCH_BUDGET;
            last = now;
        }
        if !over {
            policy.strikes = 0;
        } else if policy.strikes + 1 >= STRIKES {
            policy.strikes = 0;
            policy.spawning = SPAWNED_BATCHES;
        } else {
            policy.strikes += 1;
        }
    }
    STREAMS.with_borrow_mut(|spare| {
        if spare.capacity() < streams.capacity() {
            *spare = streams;
        }
    });
    result
}

pin_project! {
    /// A connection future of your own accept loop (hyper's or hyper-util's, built with a
    /// [`StreamExecutor`]) whose new HTTP/2 streams get their first poll on this future's task,
    /// as inside `RemoteClient` and `Server`: a stream whose response is ready at once is
    /// answered without a task of its own, one that waits is spawned (see
    /// [`StreamExecutor`] for what that trades). Without this wrapper, a `StreamExecutor`
    /// spawns every stream, as hyper-util's `TokioExecutor` does.
    ///
    /// ```rust,no_run
    /// # async fn run(io: hyper_util::rt::TokioIo<tokio::net::TcpStream>) {
    /// use hyper_remote_client::{driver::{InlineStreams, StreamExecutor}};
    /// use hyper_util::server::conn::auto;
    ///
    /// let service = hyper::service::service_fn(|_req| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
    /// });
    /// let builder = auto::Builder::new(StreamExecutor::default());
    /// let _ = InlineStreams::new(builder.serve_connection_with_upgrades(io, service)).await;
    /// # }
    /// ```
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct InlineStreams<F> {
        #[pin]
        connection: F,
        policy: InlinePolicy,
    }
}

impl<F> InlineStreams<F> {
    /// Wraps `connection`.
    pub fn new(connection: F) -> Self {
        InlineStreams {
            connection,
            policy: InlinePolicy::default(),
        }
    }

    /// The wrapped connection future (for example to start its graceful shutdown).
    pub fn connection(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().connection
    }
}

impl<F: Future> Future for InlineStreams<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let connection = this.connection;
        poll_http2(cx, this.policy, |cx| connection.poll(cx))
    }
}

/// Restores `COLLECTING` when a connection's poll ends, by a panic too (tokio goes on running
/// other tasks on this thread); then the streams that poll accepted are spawned, not dropped
/// while unwinding.
struct Collecting {
    outer: bool,
}

impl Drop for Collecting {
    fn drop(&mut self) {
        COLLECTING.set(self.outer);
        if !self.outer && std::thread::panicking() {
            for stream in STREAMS.with_borrow_mut(std::mem::take) {
                spawn(stream);
            }
        }
    }
}

/// The HTTP versions a driver serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocols {
    /// HTTP/1.x only.
    Http1,
    /// HTTP/2 only (TLS with ALPN `h2`, or h2c prior knowledge).
    Http2,
    /// HTTP/1.x, or HTTP/2 when the connection starts with the HTTP/2 preface (h2c prior
    /// knowledge). The first bytes are read under the HTTP/1 timeout.
    Auto,
}

/// hyper's HTTP/1 and HTTP/2 connection builders, configured from [`Options`], and the versions
/// to serve with them. Hyper's timer is set on both builders, so hyper's own timeouts work.
///
/// From `Options`: the HTTP/1 builder gets `max_header_size = header_size_limit` (the clocks
/// are `RemoteClient`'s; HTTP/1 half-close is [`ClientIo`](crate::ClientIo)'s); the HTTP/2
/// builder gets
/// `max_concurrent_streams = concurrent_stream_limit` and
/// `max_header_list_size = header_size_limit`. Tune anything else through
/// [`http1`](Self::http1) and [`http2`](Self::http2).
///
/// A connection is served under its own client's [`Options`]
/// ([`ClientInfo::options`](crate::ClientInfo::options)): where they differ from the ones the
/// driver was built with, the connection gets a copy of the builders with those three limits
/// from the client's options, and [`Options::http2_inline_streams`] and
/// [`Options::http2_cleartext`] are the client's too. One connection never mixes the limits of
/// two `Options`.
#[derive(Clone, Debug)]
pub struct HttpDriver {
    http1: http1::Builder,
    http2: http2::Builder<StreamExecutor>,
    protocols: Protocols,
    /// The option values the builders were configured with: a connection whose client runs
    /// under other [`Options`] gets builders configured from its own.
    header_size_limit: usize,
    concurrent_stream_limit: u32,
}

impl HttpDriver {
    /// A driver for connections without TLS: HTTP/1.1, plus HTTP/2 with prior knowledge when
    /// [`Options::http2_cleartext`] is on.
    pub fn new(options: &Options) -> Self {
        let protocols = if options.http2_cleartext() {
            Protocols::Auto
        } else {
            Protocols::Http1
        };
        Self::with_protocols(options, protocols)
    }

    /// A driver that serves `protocols`.
    pub fn with_protocols(options: &Options, protocols: Protocols) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The request-head deadline is enforced by `RemoteClient` (without a timer per
            // request); hyper's own would default to 30 s once a timer is set.
            .header_read_timeout(None)
            .max_header_size(options.header_size_limit());
        // Not `pipeline_flush(true)`: it holds back the `101` of an upgrade whose first bytes
        // arrive with the request head (the upgrade never completes) and a fast response
        // behind a slow one. `RemoteClient` batches pipelined responses in `ClientIo` instead.
        // Inline or not is decided per connection, from its client's options (see `serve`).
        let mut http2 = http2::Builder::new(StreamExecutor::inline());
        http2.timer(TokioTimer::new());
        configure_http2(&mut http2, options);
        HttpDriver {
            http1,
            http2,
            protocols,
            header_size_limit: options.header_size_limit(),
            concurrent_stream_limit: options.concurrent_stream_limit(),
        }
    }

    /// The HTTP versions this driver serves.
    pub fn protocols(&self) -> Protocols {
        self.protocols
    }

    /// hyper's HTTP/1 builder, to tune. Keep its timer set.
    pub fn http1(&mut self) -> &mut http1::Builder {
        &mut self.http1
    }

    /// hyper's HTTP/2 builder, to tune. Keep its timer set.
    pub fn http2(&mut self) -> &mut http2::Builder<StreamExecutor> {
        &mut self.http2
    }

    /// Serves `io` with `protocol`, under `options` (the client's): the builders' limits come
    /// from them (the builders are copied and reconfigured when they differ from the options
    /// this driver was built with), and so does whether HTTP/2 streams are polled inline.
    pub(crate) fn serve<I, S, B>(
        &self,
        protocol: Protocol,
        io: I,
        service: S,
        options: &Options,
    ) -> Connection<I, S>
    where
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<BoxError>,
        I: Read + Write + Unpin + Send + 'static,
        B: Body + 'static,
        B::Error: Into<BoxError>,
        StreamExecutor: Http2ServerConnExec<S::Future, B>,
    {
        let header_size_limit = options.header_size_limit();
        match protocol {
            Protocol::Http1 => {
                let conn = if header_size_limit == self.header_size_limit {
                    self.http1.serve_connection(io, service)
                } else {
                    let mut http1 = self.http1.clone();
                    http1.max_header_size(header_size_limit);
                    http1.serve_connection(io, service)
                };
                Connection::Http1 {
                    conn: Some(conn.with_upgrades()),
                }
            }
            Protocol::Http2 => {
                let conn = if header_size_limit == self.header_size_limit
                    && options.concurrent_stream_limit() == self.concurrent_stream_limit
                {
                    self.http2.serve_connection(io, service)
                } else {
                    let mut http2 = self.http2.clone();
                    configure_http2(&mut http2, options);
                    http2.serve_connection(io, service)
                };
                Connection::Http2 {
                    conn,
                    inline: options.http2_inline_streams().then(InlinePolicy::default),
                }
            }
        }
    }
}

/// The HTTP/2 builder's settings that come from [`Options`].
fn configure_http2(http2: &mut http2::Builder<StreamExecutor>, options: &Options) {
    http2
        .max_concurrent_streams(options.concurrent_stream_limit())
        .max_header_list_size(u32::try_from(options.header_size_limit()).unwrap_or(u32::MAX));
}

/// Chooses the [`HttpDriver`] for each client (amphp's `HttpDriverFactory`).
pub trait HttpDriverFactory: Send + Sync {
    /// The driver that serves `client`.
    fn select(&self, client: &ClientInfo) -> &HttpDriver;
}

impl HttpDriverFactory for HttpDriver {
    fn select(&self, _client: &ClientInfo) -> &HttpDriver {
        self
    }
}

/// amphp's `DefaultHttpDriverFactory`: over TLS, ALPN `h2` selects HTTP/2 and anything else
/// (`http/1.1`, or no ALPN) HTTP/1.1; without TLS, HTTP/1.1 plus h2c prior knowledge when
/// [`Options::http2_cleartext`] is on.
#[derive(Clone, Debug)]
pub struct DefaultHttpDriverFactory {
    cleartext: HttpDriver,
    http1: HttpDriver,
    http2: HttpDriver,
}

impl DefaultHttpDriverFactory {
    /// The drivers for `options`.
    pub fn new(options: &Options) -> Self {
        DefaultHttpDriverFactory {
            cleartext: HttpDriver::new(options),
            http1: HttpDriver::with_protocols(options, Protocols::Http1),
            http2: HttpDriver::with_protocols(options, Protocols::Http2),
        }
    }
}

impl Default for DefaultHttpDriverFactory {
    fn default() -> Self {
        Self::new(&Options::default())
    }
}

impl HttpDriverFactory for DefaultHttpDriverFactory {
    fn select(&self, client: &ClientInfo) -> &HttpDriver {
        match client.tls() {
            None => &self.cleartext,
            Some(tls) if tls.alpn_protocol() == Some(b"h2") => &self.http2,
            Some(_) => &self.http1,
        }
    }
}

pin_project! {
    /// A hyper connection of either version.
    #[project = ConnectionProj]
    pub(crate) enum Connection<I, S>
    where
        S: HttpService<Incoming>,
    {
        // Not pinned (it is `Unpin`): a connection handed over to a new process is taken out
        // for its I/O and read buffer.
        Http1 { conn: Option<http1::UpgradeableConnection<I, S>> },
        Http2 {
            #[pin]
            conn: http2::Connection<I, S, StreamExecutor>,
            // `None`: every stream spawned (`Options::http2_inline_streams` off).
            inline: Option<InlinePolicy>,
        },
    }
}

impl<I, S, B> Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    S: Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    StreamExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// Takes no new requests, finishes the ones in flight (HTTP/2: GOAWAY), then ends.
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ConnectionProj::Http1 { conn } => {
                if let Some(conn) = conn.as_mut() {
                    Pin::new(conn).graceful_shutdown();
                }
            }
            ConnectionProj::Http2 { conn, .. } => conn.graceful_shutdown(),
        }
    }

    /// An HTTP/1 connection that has ended without an upgrade: its I/O and the bytes hyper
    /// read past the last request.
    pub(crate) fn take_parts(self: Pin<&mut Self>) -> Option<(I, bytes::Bytes)> {
        match self.project() {
            ConnectionProj::Http1 { conn } => conn
                .take()
                .and_then(http1::UpgradeableConnection::into_parts)
                .map(|parts| (parts.io, parts.read_buf)),
            ConnectionProj::Http2 { .. } => None,
        }
    }
}

impl<I, S, B> Future for Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    S: Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    StreamExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ConnectionProj::Http1 { conn } => match conn.as_mut() {
                Some(conn) => Pin::new(conn).poll(cx),
                None => Poll::Ready(Ok(())),
            },
            ConnectionProj::Http2 {
                conn,
                inline: Some(policy),
            } => poll_http2(cx, policy, |cx| conn.poll(cx)),
            // Not collecting: the executor spawns every stream.
            ConnectionProj::Http2 { conn, inline: None } => conn.poll(cx),
        }
    }
}
