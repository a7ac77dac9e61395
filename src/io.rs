//! [`ClientIo`], the stream wrapper that tracks a connection's state.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::{ClientInfo, CloseGuard, Status};

/// A connection's stream, wrapped so the client's state follows the I/O.
///
/// It sets the [`Status`] bits on EOF, errors and shutdown, counts bytes, refuses all I/O once
/// [`ClientInfo::close`] has been called, and when it is dropped (together with the task serving
/// it) the client is closed and its `on_close` callbacks run. After an HTTP upgrade it lives on
/// inside hyper's `Upgraded` and then in user code, and the client stays open until it is dropped.
///
/// Bytes put back with [`unread`](Self::unread) (the sniffed HTTP/2 preface, the rest of a PROXY
/// protocol read) are served before the stream is read again.
pub struct ClientIo<S> {
    stream: S,
    prefix: Bytes,
    write_blocked: bool,
    /// The export has been seen and the socket duplicated for `close()`.
    export_seen: bool,
    /// The peer's EOF, held back until the response is written (HTTP/1 half-close).
    eof_deferred: bool,
    /// While the EOF is held back and a request body is pending: `State::body_polls` when its
    /// reader was asked to look again. Once it has found nothing since, the body ends early
    /// and hyper gets the EOF.
    eof_probe: Option<u32>,
    /// HTTP/1 under `RemoteClient`: responses to a pipelined burst are gathered in `out` and
    /// written together (see [`coalesce_writes`](Self::coalesce_writes)).
    coalesce: bool,
    /// Output gathered and not yet written to the stream.
    out: Vec<u8>,
    /// The last read would block (or found the end): no further request is on its way.
    read_drained: bool,
    /// A flush was held back, and nothing was read or gathered since.
    held: bool,
    socket: SocketFn<S>,
    guard: Arc<CloseGuard>,
}

type SocketFn<S> = for<'a> fn(&'a S) -> Option<BorrowedSocket<'a>>;

/// The OS socket under a stream: a file descriptor (`BorrowedFd`) on unix, a `BorrowedSocket`
/// on Windows.
#[cfg(unix)]
pub type BorrowedSocket<'a> = std::os::fd::BorrowedFd<'a>;
/// The OS socket under a stream: a file descriptor (`BorrowedFd`) on unix, a `BorrowedSocket`
/// on Windows.
#[cfg(windows)]
pub type BorrowedSocket<'a> = std::os::windows::io::BorrowedSocket<'a>;

/// A stream with (maybe) an OS socket under it.
///
/// [`ClientInfo::close`] on an exported (upgraded) client shuts that socket down, because
/// user code owns the stream then and may not be polling it. Streams without a socket (an
/// in-memory pipe) return `None`; closing them only makes further I/O fail.
pub trait StreamSocket {
    /// The socket under this stream.
    fn socket(&self) -> Option<BorrowedSocket<'_>>;
}

#[cfg(unix)]
fn borrow<T: std::os::fd::AsFd>(stream: &T) -> Option<BorrowedSocket<'_>> {
    Some(stream.as_fd())
}

#[cfg(windows)]
fn borrow<T: std::os::windows::io::AsSocket>(stream: &T) -> Option<BorrowedSocket<'_>> {
    Some(stream.as_socket())
}

impl StreamSocket for tokio::net::TcpStream {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        borrow(self)
    }
}

#[cfg(unix)]
impl StreamSocket for tokio::net::UnixStream {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        borrow(self)
    }
}

#[cfg(feature = "tls")]
impl<S: StreamSocket> StreamSocket for tokio_rustls::server::TlsStream<S> {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        self.get_ref().0.socket()
    }
}

impl<T: StreamSocket + ?Sized> StreamSocket for Box<T> {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        (**self).socket()
    }
}

/// A stream of a type this crate does not know (another crate's TLS stream, say
/// `tokio_openssl::SslStream<TcpStream>`), with the function that finds its socket: a
/// [`StreamSocket`] without a newtype of your own (the orphan rule forbids implementing the
/// trait for a foreign type).
///
/// ```
/// use std::os::fd::AsFd;
/// use hyper_remote_client::{Socketed, StreamSocket};
///
/// # async fn run(tcp: tokio::net::TcpStream) {
/// // A stream type of another crate, here tokio's `BufStream`, over a TCP stream.
/// let stream = Socketed::new(tokio::io::BufStream::new(tcp), |s| Some(s.get_ref().as_fd()));
/// assert!(stream.socket().is_some());
/// # }
/// ```
#[cfg(unix)]
pub struct Socketed<S> {
    stream: S,
    socket: SocketFn<S>,
}

#[cfg(unix)]
impl<S> Socketed<S> {
    /// Wraps `stream`; `socket` finds the socket under it (or `None`).
    pub fn new(stream: S, socket: for<'a> fn(&'a S) -> Option<BorrowedSocket<'a>>) -> Self {
        Socketed { stream, socket }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The wrapped stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

#[cfg(unix)]
impl<S: fmt::Debug> fmt::Debug for Socketed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Socketed").field(&self.stream).finish()
    }
}

#[cfg(unix)]
impl<S> StreamSocket for Socketed<S> {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        (self.socket)(&self.stream)
    }
}

#[cfg(unix)]
impl<S: AsyncRead + Unpin> AsyncRead for Socketed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

#[cfg(unix)]
impl<S: AsyncWrite + Unpin> AsyncWrite for Socketed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl StreamSocket for tokio::io::DuplexStream {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        None
    }
}

impl<S: fmt::Debug> fmt::Debug for ClientIo<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIo")
            .field("stream", &self.stream)
            .field("client", self.client())
            .field("buffered", &self.prefix.len())
            .finish()
    }
}

impl<S: StreamSocket> ClientIo<S> {
    /// Wraps `stream` as the I/O of `client`.
    ///
    /// Create exactly one `ClientIo` per client: dropping it closes the client.
    pub fn new(stream: S, client: ClientInfo) -> Self {
        client.state().attach();
        ClientIo {
            stream,
            prefix: Bytes::new(),
            write_blocked: false,
            export_seen: false,
            eof_deferred: false,
            eof_probe: None,
            coalesce: false,
            out: Vec::new(),
            read_drained: true,
            held: false,
            socket: S::socket,
            guard: Arc::new(CloseGuard(client)),
        }
    }
}

impl ClientIo<tokio::net::TcpStream> {
    /// Wraps an accepted TCP stream with a new client of its own (its addresses, default
    /// [`Options`](crate::Options)): what an existing hyper accept loop needs to give its
    /// handlers a [`ClientInfo`] (see [`ClientService`](crate::ClientService)).
    ///
    /// Never fails: if the peer is already gone (reset between `accept` and here, so its
    /// address cannot be read), the client starts closed, with unspecified addresses
    /// (`0.0.0.0:0`), and the connection ends at its first read.
    pub fn tcp(stream: tokio::net::TcpStream) -> Self {
        match ClientInfo::builder_for_tcp(&stream) {
            Ok(client) => ClientIo::new(stream, client.build()),
            Err(_) => {
                let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                ClientIo::gone(
                    stream,
                    ClientInfo::builder(unspecified, unspecified).build(),
                )
            }
        }
    }
}

#[cfg(unix)]
impl ClientIo<tokio::net::UnixStream> {
    /// Wraps an accepted unix stream with a new client of its own (its paths, the peer's
    /// credentials, default [`Options`](crate::Options)). Never fails: as
    /// [`tcp`](ClientIo::tcp), a peer already gone gives a closed client with unnamed paths.
    pub fn unix(stream: tokio::net::UnixStream) -> Self {
        match ClientInfo::builder_for_unix(&stream) {
            Ok(client) => ClientIo::new(stream, client.build()),
            Err(_) => {
                let unnamed = crate::client::Address::Unix(None);
                ClientIo::gone(
                    stream,
                    ClientInfo::builder(unnamed.clone(), unnamed).build(),
                )
            }
        }
    }
}

impl<S: StreamSocket> ClientIo<S> {
    /// The stream of a peer already gone: its client starts closed.
    fn gone(stream: S, client: ClientInfo) -> Self {
        let io = ClientIo::new(stream, client);
        io.client().close();
        io
    }
}

impl<S> ClientIo<S> {
    /// Unwraps the stream. The client counts as closed from here on (its `on_close`
    /// callbacks run once nothing else holds the connection), though the stream stays open.
    /// Bytes still [`buffered`](Self::buffered) are not in the stream: take them first.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// The client this stream belongs to.
    pub fn client(&self) -> &ClientInfo {
        &self.guard.0
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The wrapped stream, mutably. Bytes read or written through it are not counted.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.prefix = if self.prefix.is_empty() {
            Bytes::copy_from_slice(bytes)
        } else {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(bytes);
            joined.extend_from_slice(&self.prefix);
            joined.freeze()
        };
    }

    /// Bytes put back with [`unread`](Self::unread) that have not been read yet.
    pub fn buffered(&self) -> &[u8] {
        &self.prefix
    }

    /// A duplicate of the socket and the bytes not read yet: what a new process needs to go
    /// on serving the connection.
    #[cfg(unix)]
    pub(crate) fn hand_over(&self) -> Option<(std::os::fd::OwnedFd, Bytes)> {
        if !self.out.is_empty() {
            return None;
        }
        let fd = (self.socket)(&self.stream)?.try_clone_to_owned().ok()?;
        Some((fd, self.prefix.clone()))
    }

    pub(crate) fn guard(&self) -> Arc<CloseGuard> {
        self.guard.clone()
    }

    fn closed(&self) -> bool {
        self.client().state().is_closing()
    }

    /// Once the connection is exported, keeps a duplicate of its socket where `close()` finds
    /// it. Checked on writes: hyper writes the `101` after the export is marked.
    fn check_export(&mut self) {
        if self.export_seen || !self.client().is_exported() {
            return;
        }
        self.export_seen = true;
        let duplicate = (self.socket)(&self.stream).and_then(|s| s.try_clone_to_owned().ok());
        if let Some(socket) = duplicate {
            self.client()
                .state()
                .keep_export_socket(socket2::Socket::from(socket));
        }
    }

    fn count_written(&mut self, n: usize) {
        let state = self.guard.0.state();
        state.written(n);
        if self.write_blocked {
            self.write_blocked = false;
            state.set_write_blocked(false);
        }
    }

    fn note_write_pending(&mut self) {
        if !self.write_blocked {
            self.write_blocked = true;
            self.guard.0.state().set_write_blocked(true);
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the client was closed")
}

/// The longest a connection that ends writes what it gathered and lingers.
const LINGER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Output gathered for one write is at most this long; a larger write goes straight through.
const COALESCE_LIMIT: usize = 16 * 1024;

impl<S> ClientIo<S> {
    /// HTTP/1 (set by `RemoteClient` once it serves the connection with hyper's HTTP/1): the
    /// responses to a pipelined burst are written together, as `pipeline_flush` would, but
    /// without its hazards.
    ///
    /// hyper flushes after every response. Here a flush is held back only while the read side
    /// has more requests to give (its last read returned bytes, not `Pending`), no response
    /// and no request body is in flight (so a fast response never waits behind a slow one, a
    /// streamed body's chunks and a `100 Continue` go out at once), and the connection is not
    /// being upgraded. Held output is written as soon as a read would block, at the next
    /// flush that is not held back, at a second flush with nothing read or gathered since the
    /// first (the first wakes the task), before a shutdown, and, if the socket takes it at once,
    /// when hyper ends the connection with an error.
    pub(crate) fn coalesce_writes(&mut self) {
        self.coalesce = true;
    }

    /// Whether `len` more bytes are gathered instead of written: more input is on its way (or
    /// output is gathered already, to be written at the coming flush), and it fits.
    fn gathers(&self, len: usize) -> bool {
        self.coalesce
            && (!self.read_drained || !self.out.is_empty())
            && self.out.len() + len <= COALESCE_LIMIT
            && !self.ends_elsewhere()
    }

    /// Whether hyper may end this connection without a shutdown of its I/O (an export, or a
    /// request that asked for an upgrade, declined or not: hyper then hands the I/O to the
    /// upgrade at the connection's end, and drops it if nobody takes it): output must not be
    /// held back then.
    fn ends_elsewhere(&self) -> bool {
        let state = self.client().state();
        state.is_exported() || state.is_upgrade_asked()
    }

    /// Whether a flush may wait: see [`coalesce_writes`](Self::coalesce_writes).
    fn holds_flush(&self) -> bool {
        if !self.coalesce || self.read_drained {
            return false;
        }
        let state = self.client().state();
        state.pending_responses() == 0 && state.pending_requests() == 0 && !self.ends_elsewhere()
    }
}

impl<S: AsyncWrite + Unpin> ClientIo<S> {
    /// Writes the gathered output.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => {
                    self.client().state().set_status(Status::CLOSED_WR);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.count_written(n);
                    if n == self.out.len() {
                        // Not kept: an idle connection holds no output buffer.
                        self.out = Vec::new();
                        self.held = false;
                    } else {
                        self.out.drain(..n);
                    }
                }
                Poll::Ready(Err(error)) => {
                    self.client().state().set_status(Status::CLOSED_WR);
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => {
                    self.note_write_pending();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The read side would block: no more requests for now, so the gathered output goes out,
    /// unless a response in flight will flush it anyway. A write that would block has
    /// registered for the task to be woken when it can go on.
    fn read_drained(&mut self, cx: &mut Context<'_>) {
        self.read_drained = true;
        if !self.out.is_empty() {
            let state = self.client().state();
            if state.pending_responses() == 0 || state.pending_requests() > 0 {
                // An error shows at the next write or flush. The flush hyper asked for was
                // answered already: the stream's own is ours to make.
                if let Poll::Ready(Ok(())) = self.poll_out(cx) {
                    let _ = Pin::new(&mut self.stream).poll_flush(cx);
                }
            }
        }
    }
}

impl<S> ClientIo<S> {
    /// With the EOF held back: whether a request body still pending ends early, its reader
    /// waiting for bytes the peer will not send (then hyper must see the EOF, and fail the
    /// body). hyper reads at the EOF both when it needs more of a body and when it has all of
    /// it (looking for the peer's close), possibly before the handler has taken the last
    /// bytes: so the reader is asked to look again, and only a look that finds nothing says
    /// the body is incomplete.
    fn body_ends_early(&mut self) -> bool {
        let (pending, polls) = {
            let state = self.client().state();
            (state.pending_requests(), state.body_polls())
        };
        if pending == 0 {
            self.eof_probe = None;
            return false;
        }
        match self.eof_probe {
            Some(asked) => asked != polls,
            None => {
                self.eof_probe = Some(self.client().state().probe_body_reader());
                false
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed() {
            return Poll::Ready(Err(closed_error()));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            if n == this.prefix.len() {
                // Not `advance`: an empty `Bytes` would keep its storage for the connection's
                // life.
                this.prefix = Bytes::new();
            } else {
                this.prefix.advance(n);
            }
            this.read_drained = false;
            return Poll::Ready(Ok(()));
        }
        if this.eof_deferred {
            // Register first, then look: the last response may end meanwhile.
            this.client().state().register(cx.waker());
            if this.client().state().eof_due() || this.body_ends_early() {
                this.eof_deferred = false;
                this.read_drained(cx);
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
        let wanted = buf.remaining();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 && wanted > 0 {
                    let state = this.client().state();
                    state.set_status(Status::CLOSED_RD);
                    if state.defer_eof() {
                        // hyper would drop the connection at this EOF; the peer only closed
                        // its write side and waits for its answer.
                        state.register(cx.waker());
                        this.eof_deferred = true;
                        this.eof_probe = None;
                        this.read_drained(cx);
                        // Starts the probe if a body is pending (never ends it at once).
                        let _ = this.body_ends_early();
                        return Poll::Pending;
                    }
                    this.read_drained(cx);
                } else {
                    this.client().state().read(n);
                    this.read_drained = false;
                }
            }
            Poll::Ready(Err(_)) => {
                this.client().state().set_status(Status::CLOSED_RD);
                this.read_drained(cx);
            }
            // `close()` wakes whoever waits here, also without `RemoteClient`'s watch (a
            // user's own accept loop): the read then fails and the connection ends.
            Poll::Pending => {
                this.client().state().register_unwatched(cx.waker());
                this.read_drained(cx);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closed() {
            return Poll::Ready(Err(closed_error()));
        }
        this.check_export();
        if this.coalesce {
            if this.gathers(buf.len()) {
                this.out.extend_from_slice(buf);
                this.held = false;
                return Poll::Ready(Ok(buf.len()));
            }
            ready!(this.poll_out(cx))?;
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        match &result {
            Poll::Ready(Ok(n)) => this.count_written(*n),
            Poll::Ready(Err(_)) => this.client().state().set_status(Status::CLOSED_WR),
            Poll::Pending => this.note_write_pending(),
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closed() {
            return Poll::Ready(Err(closed_error()));
        }
        this.check_export();
        if this.coalesce {
            let len = bufs.iter().map(|b| b.len()).sum();
            if this.gathers(len) {
                for b in bufs {
                    this.out.extend_from_slice(b);
                }
                this.held = false;
                return Poll::Ready(Ok(len));
            }
            ready!(this.poll_out(cx))?;
        }
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        match &result {
            Poll::Ready(Ok(n)) => this.count_written(*n),
            Poll::Ready(Err(_)) => this.client().state().set_status(Status::CLOSED_WR),
            Poll::Pending => this.note_write_pending(),
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed() {
            return Poll::Ready(Err(closed_error()));
        }
        if !this.out.is_empty() {
            if !this.held && this.holds_flush() {
                // hyper goes on with the next request it has read. Should it yield instead
                // (one branch of its dispatcher returns without looking at its read buffer
                // again), this wake-up brings it back; a second flush with nothing read or
                // gathered in between writes.
                this.held = true;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_out(cx))?;
        }
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        if let Poll::Ready(Err(_)) = &result {
            this.client().state().set_status(Status::CLOSED_WR);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed() {
            return Poll::Ready(Ok(()));
        }
        if !this.out.is_empty() {
            ready!(this.poll_out(cx))?;
        }
        if this.client().state().is_handing_over() {
            // The socket moves to another process: no FIN from this one.
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut this.stream).poll_shutdown(cx);
        if result.is_ready() {
            this.client().state().set_status(Status::CLOSED_WR);
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientIo<S> {
    /// The connection ends here (`close()`, a clock, hyper's error): the answers gathered for
    /// earlier requests are written first, also after `close()` (nothing new is taken from
    /// hyper once the client is closing, so what is gathered was produced before), within
    /// the response clock's allowance for them ([`Options::min_response_rate`]'s grace plus
    /// their length at its rate), at most 5 s; then the write side is shut down,
    /// and what the peer still sends is read and dropped until its EOF (within the same
    /// bound), so that closing over unread input does not reset the connection under answers
    /// still in flight (nginx's `lingering_close`). Nothing happens when nothing is gathered.
    ///
    /// [`Options::min_response_rate`]: crate::Options::min_response_rate
    pub(crate) async fn write_held(&mut self) {
        if self.out.is_empty() {
            return;
        }
        // At most 5 s in all (nginx's `lingering_timeout`): a closed connection must not hold
        // its task and its slot for the whole allowance of 16 KiB at 240 B/s.
        let limit = match self.client().options().min_response_rate() {
            Some(rate) => rate
                .grace()
                .saturating_add(rate.allowance_of(self.out.len() as u64)),
            None => LINGER_LIMIT,
        }
        .min(LINGER_LIMIT);
        let linger = async {
            if std::future::poll_fn(|cx| self.poll_out(cx)).await.is_err() {
                return;
            }
            let stream = &mut self.stream;
            if std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_flush(cx))
                .await
                .is_err()
            {
                return;
            }
            if std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_shutdown(cx))
                .await
                .is_err()
            {
                return;
            }
            let mut sink = [0u8; 1024];
            loop {
                let mut buf = ReadBuf::new(&mut sink);
                match std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf))
                    .await
                {
                    Ok(()) if !buf.filled().is_empty() => continue,
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(limit, linger).await;
        self.client().state().set_status(Status::CLOSED_WR);
    }
}
