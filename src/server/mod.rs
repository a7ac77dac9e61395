//! [`Server`]: a hardened accept loop over [`RemoteClient`]: listeners (TCP, unix, either
//! under TLS), admission limits, a live client registry, counters, graceful shutdown.

mod admission;
mod listener;
#[cfg(feature = "http3")]
mod quic;
mod registry;
mod stats;
#[cfg(unix)]
mod upgrade;

pub use listener::Listener;
pub use stats::Stats;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use self::admission::{Admission, Rejection, Slot, Transport};
use self::listener::Kind;
use self::registry::Registry;
use self::stats::Counters;
#[cfg(unix)]
use self::upgrade::Handover;
use crate::accept::{AcceptError, Accepted, Pipeline};
use crate::client::{Address, ClientId, ClientInfo, ClientInfoBuilder};
use crate::driver::{DefaultHttpDriverFactory, HttpDriverFactory};
use crate::io::StreamSocket;
use crate::lifecycle::TimeoutKind;
use crate::options::Options;
use crate::remote::{CloseReason, Handler, HandlerBody, HandoverSlot, RemoteClient};

/// A server: accepts on its [`Listener`]s and serves every connection as a [`RemoteClient`]
/// with one tower service, under [`Options`].
///
/// - Admission, before any byte is read: over [`Options::connection_limit`] or
///   [`Options::connections_per_ip`] a connection is closed at once and counted. A slot is
///   given back when its client closes (an exported client keeps it until then).
/// - A live registry ([`ServerHandle::clients`], [`ServerHandle::client`],
///   [`ServerHandle::close`]) and counters ([`ServerHandle::stats`]).
/// - Graceful shutdown ([`ServerHandle::graceful_shutdown`], or the signal of
///   [`serve_with_shutdown`](Self::serve_with_shutdown)): stop accepting, let in-flight
///   responses finish (HTTP/2: GOAWAY), close idle connections at once, force-close whatever
///   remains after the deadline ([`Options::shutdown_timeout`] for the signal; exported
///   clients included).
/// - `tracing`: a `client` span (INFO) per connection with its id, addresses, protocol and TLS
///   version and ALPN, which the connection's work (its handlers, HTTP/2 streams included)
///   runs in; debug events for accept, reject, timeout and close (with the reason); nothing
///   per request.
///
/// ```no_run
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use hyper_remote_client::{ClientInfo, Options, RequestBody, Server};
///
/// async fn hello(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
///     let client = req.extensions().get::<ClientInfo>().expect("inserted by the server");
///     Ok(Response::new(format!("hello, {}\n", client.remote_address())))
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let server = Server::new(Options::default())
///     .listener(tokio::net::TcpListener::bind("127.0.0.1:8080").await?);
/// let handle = server.handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     // In-flight responses finish; what remains after 10 s is closed.
///     handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
/// });
/// server.serve(tower::service_fn(hello)).await;
/// # Ok(())
/// # }
/// ```
pub struct Server {
    options: Arc<Options>,
    drivers: Arc<dyn HttpDriverFactory>,
    listeners: Vec<Listener>,
    /// HTTP/3 listeners, and their endpoints once served (closed at the end of `serve`).
    #[cfg(feature = "http3")]
    quic: Vec<crate::http3::QuicListener>,
    #[cfg(feature = "http3")]
    quic_endpoints: Vec<quinn::Endpoint>,
    /// The routers of the HTTP/3 listeners once served, and each one's position among the UDP
    /// sockets taken over (if it was), in the order they were published.
    #[cfg(all(unix, feature = "http3"))]
    quic_routes: Vec<(Arc<crate::http3::routing::Router>, Option<usize>)>,
    shared: Arc<Shared>,
    /// Where a new process may take the listeners over.
    #[cfg(unix)]
    upgrade: Option<crate::handover::Publisher>,
    /// The process this one replaces, to tell when ready and take idle connections from.
    #[cfg(unix)]
    takeover: Option<crate::handover::Takeover>,
}

struct Shared {
    registry: Registry,
    admission: Arc<Admission>,
    counters: Counters,
    /// Whether a shutdown was asked for, and with which deadline.
    shutdown: watch::Sender<Stop>,
    /// The listeners' addresses, once the server accepts on them.
    listening: watch::Sender<Option<Vec<Address>>>,
    /// `true` once the shutdown deadline passed: TLS handshakes still running are cut.
    forced: watch::Sender<bool>,
    /// Once a new process took the listeners over: where idle connections go.
    handover: HandoverSlot,
    /// A new process took the listeners over.
    replaced: std::sync::atomic::AtomicBool,
    /// The accept loops take no connection while `true` (a successor accepts on the same
    /// sockets during its probation).
    paused: watch::Sender<bool>,
    /// A shutdown was asked for through the handle (or the signal): a rolled-back hand-over
    /// must not undo it.
    stop_asked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Server");
        debug
            .field("options", &self.options)
            .field("listeners", &self.listeners);
        #[cfg(feature = "http3")]
        debug.field("quic", &self.quic);
        debug.field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl Shared {
    fn stats(&self) -> stats::Stats {
        self.counters.snapshot(self.admission.active())
    }
}

/// Where a server is, as its handle asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Running,
    /// A graceful shutdown, with its deadline (`None`: none).
    Graceful(Option<Duration>),
}

/// Controls a running [`Server`] from anywhere: the live clients, the counters, shutdown.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// The live clients, oldest first.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.shared.registry.list()
    }

    /// The live client with this id.
    pub fn client(&self, id: ClientId) -> Option<ClientInfo> {
        self.shared.registry.get(id)
    }

    /// Closes the live client with this id at once; `false` if there is none.
    pub fn close(&self, id: ClientId) -> bool {
        match self.client(id) {
            Some(client) => {
                client.close();
                true
            }
            None => false,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Starts a graceful shutdown (axum-server's verb): stop accepting, let requests in flight
    /// finish (HTTP/2: GOAWAY), close idle connections at once, and close whatever remains
    /// after `timeout` (`None`: wait as long as it takes). [`Server::serve`] returns once every
    /// connection is closed. Called again with a shorter deadline, the shorter one applies;
    /// deadlines count from the start of the shutdown, not from the call.
    pub fn graceful_shutdown(&self, timeout: Option<Duration>) {
        self.shared
            .stop_asked
            .store(true, std::sync::atomic::Ordering::Release);
        self.stop(timeout);
    }

    /// Starts a graceful shutdown (of the connections: a hand-over to a successor does this
    /// too, without it counting as a shutdown the user asked for).
    fn stop(&self, timeout: Option<Duration>) {
        self.shared.shutdown.send_modify(|stop| {
            *stop = match (*stop, timeout) {
                (Stop::Graceful(Some(old)), Some(new)) => Stop::Graceful(Some(old.min(new))),
                (Stop::Graceful(Some(old)), None) => Stop::Graceful(Some(old)),
                (_, timeout) => Stop::Graceful(timeout),
            }
        });
    }

    /// Shuts down at once: stop accepting and close every connection now (detached ones
    /// included), as `graceful_shutdown(Some(Duration::ZERO))`.
    pub fn shutdown(&self) {
        self.graceful_shutdown(Some(Duration::ZERO));
    }

    /// Waits until the server accepts connections; the addresses of its listeners.
    pub async fn listening(&self) -> Vec<Address> {
        let mut listening = self.shared.listening.subscribe();
        let addresses = match listening.wait_for(Option::is_some).await {
            Ok(addresses) => addresses.clone().unwrap_or_default(),
            // The sender lives in `Shared`, which this handle holds.
            Err(_) => Vec::new(),
        };
        addresses
    }

    /// Connections open now: clients being served (detached ones included) and handshakes in
    /// progress. At most [`Options::connection_limit`] sockets are kept; while connections over
    /// the limit are being refused, the count may briefly read a little more.
    pub fn connection_count(&self) -> usize {
        self.shared.admission.active()
    }

    /// Whether a new process took this server's listeners over through its
    /// [`upgrade_socket`](Server::upgrade_socket) (then the shutdown under way is that
    /// handover's, and files the listeners use, such as a unix socket's path, are the new
    /// process's: do not remove them).
    pub fn was_replaced(&self) -> bool {
        self.shared
            .replaced
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.shared.shutdown.borrow() != Stop::Running
    }
}

impl Server {
    /// A server with `options` (an `Options`, or an `Arc<Options>` shared with other servers
    /// and [`RemoteClient`]s) and no listener yet.
    pub fn new(options: impl Into<Arc<Options>>) -> Server {
        let options: Arc<Options> = options.into();
        let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
        Server {
            shared: Arc::new(Shared {
                registry: Registry::default(),
                admission: Admission::new(&options),
                counters: Counters::default(),
                shutdown: watch::Sender::new(Stop::Running),
                listening: watch::Sender::new(None),
                forced: watch::Sender::new(false),
                handover: HandoverSlot::default(),
                replaced: std::sync::atomic::AtomicBool::new(false),
                paused: watch::Sender::new(false),
                stop_asked: std::sync::atomic::AtomicBool::new(false),
            }),
            options,
            drivers,
            listeners: Vec::new(),
            #[cfg(feature = "http3")]
            quic: Vec::new(),
            #[cfg(feature = "http3")]
            quic_endpoints: Vec::new(),
            #[cfg(all(unix, feature = "http3"))]
            quic_routes: Vec::new(),
            #[cfg(unix)]
            upgrade: None,
            #[cfg(unix)]
            takeover: None,
        }
    }

    /// Publishes the listeners on a unix socket at `path` (created mode 0600, a stale socket
    /// file replaced), for a binary upgrade: a new process of the same user (checked with
    /// `SO_PEERCRED`) connects with [`Takeover::connect`](crate::upgrade::Takeover::connect), receives
    /// the listening sockets (`SCM_RIGHTS`) and accepts on them; once it says it is ready
    /// (within 60 s of taking them; otherwise this server goes on and waits for another),
    /// this server stops accepting (it keeps the sockets) and shuts down gracefully with
    /// [`Options::shutdown_timeout`] as the deadline, and [`serve`](Self::serve) returns once
    /// the new process says it is healthy ([`Options::upgrade_probation`]). Should the new
    /// process go away before that, this server accepts again, puts its upgrade socket back at
    /// `path`, and can be upgraded again. Nothing is refused meanwhile: both processes share
    /// the sockets. Peers of the upgrade socket are served concurrently.
    ///
    /// Connections move as well when they can: a plain HTTP/1 connection (no TLS, no PROXY
    /// header, no acceptor of your own) with no request in flight (idle between requests, or
    /// with a request head only partly read) is handed to the new process with the bytes read
    /// of it, and served there. HTTP/2, TLS, and busy connections drain here as in any
    /// graceful shutdown (an HTTP/1 response in flight is sent with `Connection: close`).
    ///
    /// The socket is at `path` when this returns, unless [`take_over`](Self::take_over) was
    /// called before: then it replaces the old process's at `path` only once this server
    /// accepts and the old one was told to drain (so that a new process that fails before
    /// that leaves the old one upgradable). Call `take_over` first.
    #[cfg(unix)]
    pub fn upgrade_socket(mut self, path: impl AsRef<std::path::Path>) -> std::io::Result<Server> {
        let mut publisher = crate::handover::Publisher::bind(path.as_ref())?;
        if self.takeover.is_none() {
            publisher.publish()?;
        }
        self.upgrade = Some(publisher);
        Ok(self)
    }

    /// Takes over from the process `takeover` connected to: once this server accepts on its
    /// listeners (add the inherited ones first, see [`Takeover`](crate::upgrade::Takeover)), it tells
    /// that process to drain, and serves the idle connections it hands over.
    ///
    /// Listeners not taken out of `takeover` with
    /// [`take_listeners`](crate::upgrade::Takeover::take_listeners) are added here as they are (plain):
    /// the old process stops accepting on all of them.
    ///
    /// Each listener that came from the old process must be served with the steps the old
    /// process ran on it (TLS, a PROXY header, an acceptor of its own: see
    /// [`Takeover::steps`](crate::upgrade::Takeover::steps)); otherwise this refuses with
    /// [`TakeoverError::StepsDiffer`](crate::upgrade::TakeoverError::StepsDiffer), and the old process
    /// goes on serving (it is told nothing; drop the server). A change wanted on purpose is
    /// allowed per listener with [`Listener::allow_steps_change`]. So a new binary that
    /// forgets to wrap the TLS listener in TLS does not serve plain HTTP on the TLS port.
    #[cfg(unix)]
    pub fn take_over(
        mut self,
        mut takeover: crate::handover::Takeover,
    ) -> Result<Server, crate::handover::TakeoverError> {
        for listener in takeover.take_listeners() {
            self = self.listener(listener);
        }
        let views: Vec<_> = self
            .listeners
            .iter()
            .map(|listener| {
                let (fd, _, steps, allowed) = listener.handover_view();
                let address = listener
                    .local_addr()
                    .map_or_else(|_| String::from("?"), |address| address.to_string());
                (fd, steps, allowed, address)
            })
            .collect();
        takeover.check(&views)?;
        drop(views);
        self.takeover = Some(takeover);
        Ok(self)
    }

    /// Adds a listener (a `TcpListener`, a `UnixListener`, or a [`Listener`] with TLS).
    pub fn listener(mut self, listener: impl Into<Listener>) -> Server {
        self.listeners.push(listener.into());
        self
    }

    /// Adds an HTTP/3 listener (a UDP socket): its connections are served with the same
    /// service and options as the others, under the same admission limits (one count for TCP
    /// and QUIC), listed in the same registry. See [`http3`](crate::http3).
    #[cfg(feature = "http3")]
    pub fn quic(mut self, listener: crate::http3::QuicListener) -> Server {
        self.quic.push(listener);
        self
    }

    /// Uses `drivers` to choose each client's HTTP driver (default:
    /// [`DefaultHttpDriverFactory`] for the server's options).
    pub fn drivers(mut self, drivers: impl HttpDriverFactory + 'static) -> Server {
        self.drivers = Arc::new(drivers);
        self
    }

    /// The listeners, as added.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// A handle to the live clients, the counters and shutdown, usable before and while the
    /// server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves every connection with `service` until a shutdown started through the
    /// [`ServerHandle`] has finished.
    pub async fn serve<S, B>(self, service: S)
    where
        S: Handler<B>,
        B: HandlerBody,
    {
        self.serve_with_shutdown(service, std::future::pending())
            .await;
    }

    /// Serves until `signal` completes (then shuts down gracefully, with
    /// [`Options::shutdown_timeout`] as the deadline) or a shutdown is started through the
    /// [`ServerHandle`], and returns once every connection is closed.
    ///
    /// With an [`upgrade_socket`](Self::upgrade_socket), a new process may take the listeners
    /// over: this server stops accepting (it keeps the sockets), drains, and returns once the
    /// new process says it is healthy ([`Options::upgrade_probation`]); if the new process
    /// goes away before that, this server accepts again and waits for the next one.
    pub async fn serve_with_shutdown<S, B, F>(mut self, service: S, signal: F)
    where
        S: Handler<B>,
        B: HandlerBody,
        F: Future<Output = ()>,
    {
        #[cfg(feature = "metrics")]
        crate::telemetry::known_series();
        #[cfg(unix)]
        let published = self.publishable();
        let mut accepting = self.start_accepting(&service);
        #[cfg(unix)]
        let mut receiving = {
            let finishing = self.finish_takeover(service.clone());
            tokio::pin!(finishing);
            tokio::select! {
                receiving = &mut finishing => receiving,
                never = accepting.run() => match never {},
            }
        };
        tokio::pin!(signal);
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut drained = false;
        loop {
            #[cfg(unix)]
            let successor = self.next_successor(published.clone(), &mut receiving);
            #[cfg(not(unix))]
            let successor = std::future::pending::<()>();
            let successor = tokio::select! {
                () = &mut signal => {
                    self.handle().graceful_shutdown(Some(self.options.shutdown_timeout()));
                    None
                }
                _ = shutdown.wait_for(|stop| *stop != Stop::Running) => None,
                successor = successor => Some(successor),
                never = accepting.run() => match never {},
            };
            #[cfg(unix)]
            if let Some(successor) = successor {
                match self.hand_over(successor, &mut signal).await {
                    Handover::RolledBack => {
                        self.republish();
                        continue;
                    }
                    Handover::Done => drained = true,
                }
            }
            #[cfg(not(unix))]
            let _ = successor;
            break;
        }
        // Stop accepting: the listeners close with their loops.
        drop(accepting);
        if !drained {
            self.drain_connections(&mut shutdown).await;
        }
        #[cfg(feature = "http3")]
        self.close_quic().await;
        #[cfg(unix)]
        drop(receiving);
        #[cfg(unix)]
        drop(self.upgrade.take());
        info!("shut down");
    }

    /// An accept loop per listener; the addresses are [`listening`](ServerHandle::listening).
    fn start_accepting<S, B>(&mut self, service: &S) -> Accepting
    where
        S: Handler<B>,
        B: HandlerBody,
    {
        let mut loops = Vec::new();
        let mut addresses = Vec::new();
        for listener in std::mem::take(&mut self.listeners) {
            if let Ok(address) = listener.local_addr() {
                addresses.push(address);
            }
            let run: Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(self.acceptor().run(listener, service.clone()));
            loops.push(run);
        }
        #[cfg(feature = "http3")]
        for listener in std::mem::take(&mut self.quic) {
            if let Ok(address) = listener.local_addr() {
                addresses.push(Address::Inet(address));
            }
            self.quic_endpoints.push(listener.endpoint.clone());
            #[cfg(unix)]
            self.quic_routes
                .push((listener.router.clone(), listener.inherited));
            let run: Pin<Box<dyn Future<Output = ()> + Send>> =
                Box::pin(self.acceptor().accept_quic(listener, service.clone()));
            loops.push(run);
        }
        self.shared.listening.send_replace(Some(addresses));
        Accepting { loops }
    }

    /// Closes the HTTP/3 endpoints (their connections are closed by now) and waits, briefly,
    /// for their last packets to go out.
    #[cfg(feature = "http3")]
    async fn close_quic(&mut self) {
        for endpoint in std::mem::take(&mut self.quic_endpoints) {
            endpoint.close(quinn::VarInt::from_u32(0x100), b"shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    fn acceptor(&self) -> Acceptor {
        Acceptor {
            shared: self.shared.clone(),
            options: self.options.clone(),
            drivers: self.drivers.clone(),
        }
    }

    /// Graceful shutdown of every connection, as asked: shut down, wait until the deadline,
    /// then close the rest (and wait once more for the detached ones user code holds).
    async fn drain_connections(&self, shutdown: &mut watch::Receiver<Stop>) {
        let clients = self.shared.registry.begin_shutdown();
        info!(clients = clients.len(), "shutting down");
        for client in &clients {
            client.shutdown();
        }
        if self.drain(shutdown).await {
            return;
        }
        // From here on, clients registering late (a handshake finishing) are closed at once,
        // and handshakes and PROXY headers still being read are cut.
        let left = self.shared.registry.force();
        info!(
            clients = left.len(),
            "shutdown deadline passed: closing the rest"
        );
        self.shared.forced.send_replace(true);
        for client in left {
            client.close();
        }
        // Served connections close at once. A detached one closes when user code drops its
        // stream (its socket is shut down already, so reads and writes fail); code that holds
        // it regardless gets one more `shutdown_timeout` before `serve` returns anyway.
        let grace = self.options.shutdown_timeout();
        if tokio::time::timeout(grace, self.shared.admission.wait_idle())
            .await
            .is_err()
        {
            warn!(
                open = self.shared.admission.active(),
                "shutdown: detached connections still held by user code"
            );
        }
    }

    /// Puts the upgrade socket at its path, if there is one.
    #[cfg(unix)]
    fn publish(&mut self) {
        if let Some(publisher) = self.upgrade.as_mut() {
            if let Err(error) = publisher.publish() {
                tracing::error!(%error, "upgrade socket: could not be put at its path");
            }
        }
    }

    #[cfg(unix)]
    fn lock_handover(&self) -> std::sync::MutexGuard<'_, Option<crate::handover::Sink>> {
        self.shared
            .handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for every connection to close, until the shutdown's deadline (which a later call
    /// may shorten); whether they all closed in time.
    async fn drain(&self, shutdown: &mut watch::Receiver<Stop>) -> bool {
        let started = tokio::time::Instant::now();
        let idle = self.shared.admission.wait_idle();
        tokio::pin!(idle);
        loop {
            let deadline = match *shutdown.borrow_and_update() {
                Stop::Graceful(Some(timeout)) => started.checked_add(timeout),
                _ => None,
            };
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut idle => return true,
                () = expired => return false,
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// Whether a TLS refusal is the handshake's timeout.
fn is_tls_timeout(error: &crate::BoxError) -> bool {
    #[cfg(feature = "tls")]
    if let Some(crate::tls::TlsError::Timeout) = error.downcast_ref::<crate::tls::TlsError>() {
        return true;
    }
    let _ = error;
    false
}

/// The accept loops of a server, run inside [`Server::serve_with_shutdown`]'s own future
/// rather than spawned, as hyper's and axum's loops are: a connection's task is then allocated
/// on the thread that awaits the server (with `#[tokio::main]`, the main thread, not a worker).
/// With glibc's malloc this keeps the connections' task memory out of the workers' arenas,
/// where it would break up the holes hyper's read buffers leave when they grow: measured at
/// +3.7 KiB RSS per idle connection for connections arriving one after another (issue 24).
struct Accepting {
    loops: Vec<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Accepting {
    /// Runs the loops until they are dropped (a loop that ends, an HTTP/3 endpoint closed,
    /// is let go).
    async fn run(&mut self) -> std::convert::Infallible {
        std::future::poll_fn(|cx| {
            self.loops
                .retain_mut(|accept| accept.as_mut().poll(cx).is_pending());
            Poll::Pending
        })
        .await
    }
}

/// The next accepted connection, once the server is not paused (a successor accepts on the
/// same sockets meanwhile); a pause that begins while waiting drops the wait (`accept` is
/// cancel-safe) and waits for the pause to end.
async fn accept_unless_paused<T, F>(
    paused: &mut watch::Receiver<bool>,
    mut accept: impl FnMut() -> F,
) -> T
where
    F: Future<Output = T>,
{
    loop {
        let _ = paused.wait_for(|paused| !*paused).await;
        tokio::select! {
            accepted = accept() => return accepted,
            _ = paused.wait_for(|paused| *paused) => {}
        }
    }
}

/// What an accept loop and its connections share.
struct Acceptor {
    shared: Arc<Shared>,
    options: Arc<Options>,
    drivers: Arc<dyn HttpDriverFactory>,
}

impl Acceptor {
    async fn run<S, B>(self, listener: Listener, service: S)
    where
        S: Handler<B>,
        B: HandlerBody,
    {
        let this = Arc::new(self);
        match listener.kind {
            Kind::Tcp { listener, steps } => this.accept_tcp(listener, steps, service).await,
            #[cfg(unix)]
            Kind::Unix { listener, steps } => this.accept_unix(listener, steps, service).await,
        }
    }

    async fn accept_tcp<S, B>(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        steps: listener::Steps<tokio::net::TcpStream>,
        service: S,
    ) where
        S: Handler<B>,
        B: HandlerBody,
    {
        let pipeline = steps.pipeline();
        // The local address of a listener bound to one IP is every connection's: no
        // getsockname per connection then.
        let fixed_local = listener
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().is_unspecified());
        let mut paused = self.shared.paused.subscribe();
        loop {
            let (stream, remote) =
                match accept_unless_paused(&mut paused, || listener.accept()).await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_error(error).await;
                        continue;
                    }
                };
            // A trusted proxy carries many clients: the per-IP limit waits for the address
            // its header names.
            let ip = Some(remote.ip()).filter(|ip| {
                !pipeline
                    .as_ref()
                    .is_some_and(|p| p.reports_other_address(*ip))
            });
            let Some(slot) = self.admit(ip, Transport::Tcp) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Ok(local) = fixed_local.map_or_else(|| stream.local_addr(), Ok) else {
                continue;
            };
            let client = ClientInfo::builder(remote, local).options(self.options.clone());
            self.spawn_client(stream, client, pipeline.as_ref(), slot, &service);
        }
    }

    #[cfg(unix)]
    async fn accept_unix<S, B>(
        self: Arc<Self>,
        listener: tokio::net::UnixListener,
        steps: listener::Steps<tokio::net::UnixStream>,
        service: S,
    ) where
        S: Handler<B>,
        B: HandlerBody,
    {
        let pipeline = steps.pipeline();
        let mut paused = self.shared.paused.subscribe();
        loop {
            let stream = match accept_unless_paused(&mut paused, || listener.accept()).await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(None, Transport::Unix) else {
                continue;
            };
            let Ok(client) = ClientInfo::builder_for_unix(&stream) else {
                continue;
            };
            let client = client.options(self.options.clone());
            self.spawn_client(stream, client, pipeline.as_ref(), slot, &service);
        }
    }

    /// Spawns the task serving an accepted client, after the listener's steps (if any).
    ///
    /// The task's future is `serve`'s own (or the steps', boxed: they are large, and a plain
    /// connection's task should not carry their room), not an `async` block around it: a block
    /// would keep its captures beside the future they were moved into, per connection.
    fn spawn_client<I, S, B>(
        self: &Arc<Self>,
        stream: I,
        client: ClientInfoBuilder,
        pipeline: Option<&Arc<dyn Pipeline<I>>>,
        slot: Slot,
        service: &S,
    ) where
        I: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
        S: Handler<B>,
        B: HandlerBody,
    {
        match pipeline {
            None => {
                let client = RemoteClient::new(stream, client.build());
                tokio::spawn(self.clone().serve(client, slot, service.clone(), true));
            }
            Some(pipeline) => {
                tokio::spawn(Box::pin(self.clone().serve_after_steps(
                    stream,
                    client,
                    pipeline.clone(),
                    slot,
                    service.clone(),
                )));
            }
        }
    }

    /// Runs the steps (cut when a shutdown passes its deadline; refusals counted), applies the
    /// per-IP limit to the address they found, then serves the client.
    async fn serve_after_steps<I, S, B>(
        self: Arc<Self>,
        stream: I,
        client: ClientInfoBuilder,
        pipeline: Arc<dyn Pipeline<I>>,
        mut slot: Slot,
        service: S,
    ) where
        I: Send + 'static,
        S: Handler<B>,
        B: HandlerBody,
    {
        let mut forced = self.shared.forced.subscribe();
        let result = tokio::select! {
            result = pipeline.accept(Accepted::new(stream, client)) => result,
            _ = forced.wait_for(|forced| *forced) => return,
        };
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(error) => {
                self.count_refusal(&error);
                debug!(%error, "connection refused before HTTP");
                return;
            }
        };
        if let Some(ip) = accepted.client.remote_ip() {
            if let Err(rejection) = self.shared.admission.limit_ip(&mut slot, ip) {
                self.count_rejection(rejection, Some(ip));
                return;
            }
        }
        let mut client = RemoteClient::new(accepted.stream, accepted.client.build());
        client.io_mut().unread(&accepted.unread);
        self.serve(client, slot, service, false).await;
    }

    fn count_refusal(&self, error: &AcceptError) {
        let counters = &self.shared.counters;
        let counter = match error {
            AcceptError::Tls(error) if is_tls_timeout(error) => &counters.tls_handshake_timeouts,
            AcceptError::Tls(_) => &counters.tls_handshake_failures,
            AcceptError::Proxy(_) => &counters.proxy_rejected,
            _ => &counters.acceptor_refused,
        };
        Counters::add(counter);
        #[cfg(feature = "metrics")]
        {
            let reason = match error {
                // Counted by the TLS handshake metrics.
                AcceptError::Tls(_) => return,
                AcceptError::Proxy(_) => "proxy_protocol",
                _ => "acceptor",
            };
            metrics::counter!(crate::telemetry::REJECTED_CONNECTIONS, "reason" => reason)
                .increment(1);
        }
    }

    fn admit(&self, ip: Option<IpAddr>, transport: Transport) -> Option<Slot> {
        Counters::add(&self.shared.counters.accepted);
        match self.shared.admission.admit(ip, transport) {
            Ok(slot) => Some(slot),
            Err(rejection) => {
                self.count_rejection(rejection, ip);
                None
            }
        }
    }

    fn count_rejection(&self, rejection: Rejection, ip: Option<IpAddr>) {
        let counter = match rejection {
            Rejection::ConnectionLimit => &self.shared.counters.rejected_connection_limit,
            Rejection::PerIpLimit => &self.shared.counters.rejected_per_ip_limit,
        };
        Counters::add(counter);
        #[cfg(feature = "metrics")]
        {
            let reason = match rejection {
                Rejection::ConnectionLimit => "connection_limit",
                Rejection::PerIpLimit => "per_ip_limit",
            };
            metrics::counter!(crate::telemetry::REJECTED_CONNECTIONS, "reason" => reason)
                .increment(1);
        }
        debug!(?ip, ?rejection, "connection rejected");
    }

    /// Registers the client and serves it until it closes (or, `movable` and idle at a
    /// handover, moves to the new process).
    ///
    /// A function returning the future rather than an `async fn`: the future holds what the
    /// connection's serving needs once (an `async fn` would keep its arguments beside the
    /// futures they are moved into).
    fn serve<T, S, B>(
        self: Arc<Self>,
        client: RemoteClient<T>,
        slot: Slot,
        service: S,
        movable: bool,
    ) -> impl Future<Output = ()>
    where
        T: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
        S: Handler<B>,
        B: HandlerBody,
    {
        let info = client.client().clone();
        let span = crate::remote::connection_span(&info);
        self.register(&info, slot);
        async move {
            debug!("accepted");
            let reason = client
                .serve(
                    &*self.drivers,
                    service,
                    movable.then_some(&self.shared.handover),
                )
                .await;
            self.count_end(&info, &reason);
            debug!(?reason, "connection ended");
        }
        .in_span(span)
    }

    /// Puts a client into the registry (shut down or closed at once if the server is), and
    /// gives its slot back when it closes.
    fn register(&self, info: &ClientInfo, slot: Slot) {
        let shared = self.shared.clone();
        info.on_close(move |client| {
            shared.registry.remove(client.id());
            Counters::add(&shared.counters.closed);
            if client.is_exported() {
                Counters::add(&shared.counters.exported_closed);
            }
            if client.state().detached_timed_out() {
                Counters::add(&shared.counters.detached_timeouts);
            }
            // Runs once the socket is closed: the number of open sockets never exceeds the
            // connection limit.
            drop(slot);
        });
        match self.shared.registry.insert(info) {
            registry::State::Running => {}
            registry::State::ShuttingDown => info.shutdown(),
            registry::State::Forced => info.close(),
        }
    }

    /// Counts how a connection ended.
    fn count_end(&self, info: &ClientInfo, reason: &CloseReason) {
        let counters = &self.shared.counters;
        if let CloseReason::Timeout(kind) = reason {
            let by_phase = match kind {
                TimeoutKind::Idle => &counters.idle_timeouts,
                TimeoutKind::RequestHead => &counters.request_head_timeouts,
                TimeoutKind::RequestBody => &counters.request_body_timeouts,
                TimeoutKind::Response => &counters.response_timeouts,
                TimeoutKind::HalfClose => &counters.half_close_timeouts,
            };
            Counters::add(by_phase);
            let by_protocol = match info.http_version() {
                Some(http::Version::HTTP_2) => &counters.http2_timeouts,
                Some(http::Version::HTTP_3) => &counters.http3_timeouts,
                _ => &counters.http1_timeouts,
            };
            Counters::add(by_protocol);
        }
        if let CloseReason::HandedOver = reason {
            Counters::add(&counters.handed_over);
            #[cfg(feature = "metrics")]
            metrics::counter!(crate::telemetry::HANDED_OVER_CONNECTIONS).increment(1);
        }
        // Counted from the same flag as `exported_closed`, whatever the close reason.
        if info.is_exported() {
            Counters::add(&counters.exported);
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's future in its span, or without one when no subscriber takes the span
    /// (no span to enter and leave at every poll).
    #[project = InSpanProj]
    enum InSpan<F> {
        Plain { #[pin] future: F },
        Spanned { #[pin] future: tracing::instrument::Instrumented<F> },
    }
}

trait InSpanExt: Future + Sized {
    fn in_span(self, span: tracing::Span) -> InSpan<Self> {
        if span.is_disabled() {
            InSpan::Plain { future: self }
        } else {
            InSpan::Spanned {
                future: self.instrument(span),
            }
        }
    }
}

impl<F: Future> InSpanExt for F {}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.project() {
            InSpanProj::Plain { future } => future.poll(cx),
            InSpanProj::Spanned { future } => future.poll(cx),
        }
    }
}

/// Accepting failed. An error about one connection (it was reset or aborted before we took it)
/// is retried at once, as hyper's and axum's loops do; any other (too many open files, out of
/// memory) is logged and waited out briefly instead of spinning.
async fn accept_error(error: std::io::Error) {
    if is_connection_error(&error) {
        debug!(%error, "accept: connection gone before it was taken");
        return;
    }
    warn!(%error, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// An accept error about one connection only (hyper's and axum's list).
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    #[test]
    fn per_connection_accept_errors_are_retried_at_once() {
        for kind in [ErrorKind::ConnectionAborted, ErrorKind::ConnectionReset] {
            assert!(super::is_connection_error(&Error::from(kind)));
        }
        // EMFILE: waited out, not spun on.
        assert!(!super::is_connection_error(&Error::from_raw_os_error(24)));
    }
}
