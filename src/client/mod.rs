//! The client handle: [`ClientInfo`], what a handler sees of its connection, and the plain data
//! it is made of. No I/O here: the connection's live state is in [`state`], which is the only
//! code that changes it; the lifecycle, the I/O wrapper and the layer call its methods.

#[cfg(feature = "proxy-protocol")]
mod proxy_info;
pub(crate) mod state;
mod tls_info;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

#[cfg(feature = "proxy-protocol")]
pub use self::proxy_info::ProxyInfo;
use self::state::State;
pub use self::tls_info::TlsInfo;
use crate::options::Options;

/// A process-wide unique client id. Ids start at 1 and are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(u64);

impl ClientId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ClientId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ClientId {
    /// The id with this number, to look a client up (e.g. from a URL).
    fn from(id: u64) -> Self {
        ClientId(id)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which sides of the connection are closed (amphp's `ClientStatus`): a bit mask.
///
/// [`Status::OPEN`] (no bit) means the connection is open both ways.
///
/// ```
/// use hyper_remote_client::Status;
/// let status = Status::CLOSED_RD | Status::CLOSED_WR;
/// assert_eq!(status, Status::CLOSED_RDWR);
/// assert!(status.contains(Status::CLOSED_RD));
/// assert_eq!(status.bits(), 3);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Status(u8);

impl Status {
    /// Open both ways.
    pub const OPEN: Status = Status(0);
    /// The read side is closed: the peer sent EOF or a read failed.
    pub const CLOSED_RD: Status = Status(1);
    /// The write side is closed: we shut it down or a write failed.
    pub const CLOSED_WR: Status = Status(2);
    /// Both sides are closed.
    pub const CLOSED_RDWR: Status = Status(3);

    /// The mask as a number (amphp's values: 1, 2, 3).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The status with these bits (others are ignored).
    pub const fn from_bits_truncate(bits: u8) -> Status {
        Status(bits & Status::CLOSED_RDWR.0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Status) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set: open both ways.
    pub const fn is_open(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Status {
    type Output = Status;

    fn bitor(self, other: Status) -> Status {
        Status(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for Status {
    fn bitor_assign(&mut self, other: Status) {
        self.0 |= other.0;
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "OPEN",
            1 => "CLOSED_RD",
            2 => "CLOSED_WR",
            _ => "CLOSED_RDWR",
        })
    }
}

/// One end of a connection: an IP socket address, or a unix socket path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 or IPv6 address with its port.
    Inet(SocketAddr),
    /// A unix domain socket; `None` when the socket is unnamed (the usual case for a client).
    Unix(Option<PathBuf>),
}

impl Address {
    /// The IP address, for an IP socket.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Inet(addr) => Some(addr.ip()),
            Address::Unix(_) => None,
        }
    }

    /// The port, for an IP socket.
    pub fn port(&self) -> Option<u16> {
        match self {
            Address::Inet(addr) => Some(addr.port()),
            Address::Unix(_) => None,
        }
    }

    /// The socket path, for a named unix socket.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Address::Unix(path) => path.as_deref(),
            Address::Inet(_) => None,
        }
    }

    /// Whether this is a unix domain socket address.
    pub fn is_unix(&self) -> bool {
        matches!(self, Address::Unix(_))
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Inet(addr)
    }
}

impl fmt::Display for Address {
    /// `ip:port` (`[ip]:port` for IPv6), or the unix path (empty when unnamed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(addr) => addr.fmt(f),
            Address::Unix(Some(path)) => path.display().fmt(f),
            Address::Unix(None) => Ok(()),
        }
    }
}

/// The credentials of the process at the other end of a unix socket, as the kernel reports
/// them (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// The peer's process id, where the platform reports it.
    pub pid: Option<i32>,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

type Callback = Box<dyn FnOnce(&ClientInfo) + Send>;

#[derive(Default)]
struct Callbacks {
    fired: bool,
    /// The first callback, kept inline: a server registers one per connection, and a `Vec`
    /// would allocate room for four.
    first: Option<Callback>,
    rest: Vec<Callback>,
}

pub(crate) struct Inner {
    id: ClientId,
    remote: Address,
    local: Address,
    // Boxed: most connections have neither, and every byte here is per connection.
    tls: Option<Box<TlsInfo>>,
    peer_credentials: Option<PeerCredentials>,
    #[cfg(feature = "proxy-protocol")]
    proxy: Option<Box<ProxyInfo>>,
    options: Arc<Options>,
    pub(crate) state: State,
    callbacks: Mutex<Callbacks>,
}

/// The handle of one connection: who is connected, over what, how busy the connection is, and
/// whether it is closed; with [`on_close`](Self::on_close) to be told when it closes and
/// [`close`](Self::close) to close it.
///
/// [`ClientLayer`](crate::ClientLayer) puts a `ClientInfo` into the extensions of every request,
/// so a handler gets it with `req.extensions().get::<ClientInfo>()`. Cloning is cheap (one
/// `Arc`), and every clone is the same client.
///
/// Mirrors amphp's `Amp\Http\Server\Driver\Client`.
///
/// # Testing handlers
///
/// A handler that reads a `ClientInfo` can be tested without a socket: build one with
/// [`ClientInfo::builder`] and insert it into the request yourself.
///
/// ```
/// use hyper_remote_client::ClientInfo;
///
/// let client = ClientInfo::builder("203.0.113.7:50000".parse::<std::net::SocketAddr>().unwrap(),
///                                  "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap())
///     .build();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(client);
/// let seen = req.extensions().get::<ClientInfo>().unwrap();
/// assert_eq!(seen.remote_port(), Some(50000));
/// ```
#[derive(Clone)]
pub struct ClientInfo {
    pub(crate) inner: Arc<Inner>,
}

/// Builds a [`ClientInfo`]: the addresses are required, the rest is optional.
#[derive(Debug)]
pub struct ClientInfoBuilder {
    remote: Address,
    local: Address,
    tls: Option<TlsInfo>,
    peer_credentials: Option<PeerCredentials>,
    #[cfg(feature = "proxy-protocol")]
    proxy: Option<ProxyInfo>,
    options: Option<Arc<Options>>,
}

impl ClientInfoBuilder {
    /// The options the connection runs under (default: [`Options::default`]).
    pub fn options(mut self, options: impl Into<Arc<Options>>) -> Self {
        self.options = Some(options.into());
        self
    }

    /// The TLS session of the connection.
    pub fn tls(mut self, tls: TlsInfo) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The credentials of the peer process of a unix socket.
    pub fn peer_credentials(mut self, credentials: PeerCredentials) -> Self {
        self.peer_credentials = Some(credentials);
        self
    }

    /// The PROXY protocol header the connection came with (its addresses are the builder's).
    #[cfg(feature = "proxy-protocol")]
    pub fn proxy(mut self, proxy: ProxyInfo) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// The peer's IP address, for an IP connection.
    pub fn remote_ip(&self) -> Option<IpAddr> {
        self.remote.ip()
    }

    /// The peer's address.
    pub fn remote_address(&self) -> &Address {
        &self.remote
    }

    /// The options set so far, if any.
    pub fn options_ref(&self) -> Option<&Arc<Options>> {
        self.options.as_ref()
    }

    /// Builds the handle, with a new [`ClientId`].
    pub fn build(self) -> ClientInfo {
        ClientInfo {
            inner: Arc::new(Inner {
                id: ClientId::next(),
                remote: self.remote,
                local: self.local,
                tls: self.tls.map(Box::new),
                peer_credentials: self.peer_credentials,
                #[cfg(feature = "proxy-protocol")]
                proxy: self.proxy.map(Box::new),
                options: self.options.unwrap_or_default(),
                state: State::default(),
                callbacks: Mutex::new(Callbacks::default()),
            }),
        }
    }
}

impl ClientInfo {
    /// Starts building a handle for a connection between `remote` (the peer) and `local` (us).
    ///
    /// Servers get their handles from [`RemoteClient`](crate::RemoteClient); build one yourself
    /// for your own accept loop or to test a handler.
    pub fn builder(remote: impl Into<Address>, local: impl Into<Address>) -> ClientInfoBuilder {
        ClientInfoBuilder {
            remote: remote.into(),
            local: local.into(),
            tls: None,
            peer_credentials: None,
            #[cfg(feature = "proxy-protocol")]
            proxy: None,
            options: None,
        }
    }

    /// Starts building the handle of an accepted TCP stream, with its addresses.
    pub fn builder_for_tcp(stream: &tokio::net::TcpStream) -> std::io::Result<ClientInfoBuilder> {
        Ok(Self::builder(stream.peer_addr()?, stream.local_addr()?))
    }

    /// Starts building the handle of an accepted unix stream, with its paths and the peer's
    /// credentials (where the platform gives them).
    #[cfg(unix)]
    pub fn builder_for_unix(stream: &tokio::net::UnixStream) -> std::io::Result<ClientInfoBuilder> {
        let path = |addr: tokio::net::unix::SocketAddr| addr.as_pathname().map(Path::to_path_buf);
        let builder = Self::builder(
            Address::Unix(path(stream.peer_addr()?)),
            Address::Unix(path(stream.local_addr()?)),
        );
        Ok(match stream.peer_cred() {
            Ok(cred) => builder.peer_credentials(PeerCredentials {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
            }),
            Err(_) => builder,
        })
    }

    /// The unique id of this client: unique in this process, never reused.
    pub fn id(&self) -> ClientId {
        self.inner.id
    }

    /// The options this connection runs under.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The peer's address: an IP socket address, or a unix socket path.
    pub fn remote_address(&self) -> &Address {
        &self.inner.remote
    }

    /// The peer's port; `None` for unix sockets.
    pub fn remote_port(&self) -> Option<u16> {
        self.inner.remote.port()
    }

    /// Our side's address.
    pub fn local_address(&self) -> &Address {
        &self.inner.local
    }

    /// Our side's port; `None` for unix sockets.
    pub fn local_port(&self) -> Option<u16> {
        self.inner.local.port()
    }

    /// Whether the client is connected over a unix domain socket.
    pub fn is_unix(&self) -> bool {
        self.inner.local.is_unix()
    }

    /// Whether the connection is encrypted (TLS).
    pub fn is_encrypted(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The TLS session: protocol, cipher, ALPN, SNI, peer certificates. `None` without TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.inner.tls.as_deref()
    }

    /// The credentials of the peer process, for a unix socket where the platform gives them.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.inner.peer_credentials
    }

    /// The PROXY protocol header the connection came with: the proxy's own address, the
    /// version, the v2 TLVs. `None` without one. The remote and local addresses above are
    /// the ones the proxy reported.
    #[cfg(feature = "proxy-protocol")]
    pub fn proxy(&self) -> Option<&ProxyInfo> {
        self.inner.proxy.as_deref()
    }

    /// Requests whose body is still being read: counted from the moment the connection hands
    /// the request over until its body has been read to the end or dropped. A request without
    /// a body is never pending.
    pub fn pending_requests(&self) -> usize {
        self.inner.state.pending_requests()
    }

    /// Requests handed over whose response is not done: counted from the moment the connection
    /// has read the request head (also while the service is not ready yet) until the response
    /// body has ended (its last frame handed to hyper, which may still be writing it) or is
    /// dropped (also when the service fails). A response with an empty body is done once its
    /// head is handed over.
    pub fn pending_responses(&self) -> usize {
        self.inner.state.pending_responses()
    }

    /// `pending_responses() > pending_requests()`: a handler is producing or writing a response.
    pub fn is_waiting_on_response(&self) -> bool {
        self.inner.state.is_waiting_on_response()
    }

    /// Whether the connection has been handed over to user code after an HTTP upgrade.
    pub fn is_exported(&self) -> bool {
        self.inner.state.is_exported()
    }

    /// Which sides of the connection are closed.
    pub fn status(&self) -> Status {
        self.inner.state.status()
    }

    /// Whether the connection is closed both ways (`status() == CLOSED_RDWR`).
    pub fn is_closed(&self) -> bool {
        self.status() == Status::CLOSED_RDWR
    }

    /// The HTTP version the connection speaks: `HTTP_2` (or `HTTP_3` over QUIC), or the
    /// version of the latest HTTP/1 request (`HTTP_11`, `HTTP_10`). `None` until it is known.
    pub fn http_version(&self) -> Option<http::Version> {
        self.inner.state.version()
    }

    /// Bytes read from the peer so far (after TLS decryption, where there is TLS).
    pub fn bytes_read(&self) -> u64 {
        self.inner.state.bytes_read()
    }

    /// Bytes written to the peer so far (before TLS encryption, where there is TLS).
    pub fn bytes_written(&self) -> u64 {
        self.inner.state.bytes_written()
    }

    /// Resolves once the connection is closed for good: its socket closed, and then its
    /// `on_close` callbacks run (what a callback did is visible once this resolves). Any
    /// number of tasks may wait; nothing is allocated per waiter.
    ///
    /// An HTTP/1 peer that shuts its write side after a complete request is still answered
    /// (a half-close), and a peer gone altogether sends the same EOF: the handler sees it at
    /// once as [`Status::CLOSED_RD`], and the connection closes (and this resolves) at the
    /// next write the peer refuses, or when [`Options::half_close_timeout`] runs out.
    ///
    /// ```
    /// # async fn run(client: hyper_remote_client::ClientInfo) {
    /// let watcher = client.clone();
    /// tokio::spawn(async move {
    ///     watcher.closed().await;
    ///     println!("client {} is gone", watcher.id());
    /// });
    /// # }
    /// ```
    pub async fn closed(&self) {
        self.inner.state.finished().await;
    }

    /// Runs `callback` once, when the connection closes, whoever closes it. If the connection
    /// is already closed, runs it at once, on this thread.
    ///
    /// The connection counts as closed when its socket is: when the task serving it has let go
    /// of it, or, for a detached connection, when user code drops the stream. Callbacks are
    /// kept until then: register one per connection (for example where you accept it), not
    /// one per request, or await [`closed`](Self::closed) instead.
    ///
    /// Callbacks run on the thread that closes the connection: keep them short and do not block.
    /// A callback that panics is logged and does not keep the others from running.
    pub fn on_close<F>(&self, callback: F)
    where
        F: FnOnce(&ClientInfo) + Send + 'static,
    {
        let mut callbacks = self.lock_callbacks();
        if callbacks.fired {
            drop(callbacks);
            callback(self);
        } else {
            let callback: Callback = Box::new(callback);
            match callbacks.first {
                None => callbacks.first = Some(callback),
                Some(_) => callbacks.rest.push(callback),
            }
        }
    }

    /// Closes the connection at once: no more bytes are read, the task serving it drops it
    /// (the peer sees the connection end; a request in progress gets no response).
    /// Idempotent. [`status`](Self::status) says `CLOSED_RDWR` from here on.
    ///
    /// Over HTTP/1, the answers already produced for earlier pipelined requests are written
    /// first (within the response clock's allowance), then the socket is closed. Over HTTP/2
    /// the connection is cut at once; use [`shutdown`](Self::shutdown) to let the other
    /// streams finish. Over HTTP/3 (feature `http3`), CONNECTION_CLOSE is sent at once.
    ///
    /// The [`on_close`](Self::on_close) callbacks run once the socket is closed: right after
    /// this for a connection being served, when user code drops the stream for a detached one
    /// (whose socket is shut down here, so the peer sees the end and reads fail now), and here
    /// for a handle that never had a connection (one built for a test).
    ///
    /// Works from any thread and from inside a handler of this very connection, also with
    /// hyper's builders in your own loop (the stream wakes the connection's pending read).
    pub fn close(&self) {
        let state = &self.inner.state;
        if state.close() && !state.is_attached() {
            self.finish();
        }
    }

    /// Starts a graceful shutdown of the connection: requests in flight are finished, no new
    /// ones are taken (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), and the
    /// connection then closes. An idle connection closes at once. Use [`close`](Self::close) to
    /// cut it off.
    pub fn shutdown(&self) {
        self.inner.state.shutdown();
    }

    pub(crate) fn state(&self) -> &State {
        &self.inner.state
    }

    /// The last owner of the connection is gone: the connection is closed for good.
    pub(crate) fn finish(&self) {
        if self.inner.state.finish() {
            self.fire_callbacks();
            self.inner.state.callbacks_run();
        }
    }

    fn lock_callbacks(&self) -> std::sync::MutexGuard<'_, Callbacks> {
        // A panicking callback runs outside the lock, so poisoning cannot leave the list in a
        // broken state.
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn fire_callbacks(&self) {
        let list = {
            let mut callbacks = self.lock_callbacks();
            callbacks.fired = true;
            (callbacks.first.take(), std::mem::take(&mut callbacks.rest))
        };
        for callback in list.0.into_iter().chain(list.1) {
            // One panicking callback must not skip the others, nor unwind into whoever closed
            // the connection (a drop, the server's shutdown).
            let run = std::panic::AssertUnwindSafe(|| callback(self));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(id = %self.id(), "an on_close callback panicked");
            }
        }
    }
}

impl fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInfo")
            .field("id", &self.id())
            .field("remote_address", self.remote_address())
            .field("local_address", self.local_address())
            .field("tls", &self.tls())
            .field("pending_requests", &self.pending_requests())
            .field("pending_responses", &self.pending_responses())
            .field("is_exported", &self.is_exported())
            .field("status", &self.status())
            .finish()
    }
}

/// Held by every owner of the connection (the I/O, and the task serving it); when the last one
/// is dropped the client is closed and its callbacks run.
#[derive(Debug)]
pub(crate) struct CloseGuard(pub(crate) ClientInfo);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.finish();
    }
}
