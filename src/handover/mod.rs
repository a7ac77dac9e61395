//! Zero-downtime restarts (unix): a new process takes the listening sockets (and the idle
//! HTTP/1.1 connections) of the running one over a unix socket, or inherits its listeners from
//! systemd socket activation.
//!
//! The exchange on the upgrade socket, one frame at a time (`kind: u8, fd count: u8, 0, 0,
//! payload length: u32 LE, payload`, file descriptors attached to the frame's first bytes with
//! `SCM_RIGHTS`):
//!
//! 1. old → new `LISTENERS`: every listening socket, in the order the old server had them;
//!    payload: two bytes per socket, its transport (0 TCP, 1 unix) and the steps the old
//!    process ran on its connections ([`ListenerSteps`] as bits: TLS, PROXY optional, PROXY
//!    required, an acceptor of its own). (One byte per socket, the transport alone: an older
//!    process, whose steps are not known.)
//!    With the flag `QUIC_FOLLOWS` (the header's third byte), a `QUIC` frame follows: the UDP
//!    sockets of the old process's HTTP/3 listeners, each with one end of a fresh unix
//!    `SOCK_SEQPACKET` pair (descriptors: socket, link, socket, link...); payload: the old
//!    process's CID tag for each (see `crate::http3::routing`).
//! 2. new → old `QUIC_READY` (only after a `QUIC` frame): one byte per UDP socket, 1 where the
//!    new process reads it now (the old one then reads its link end only, and sends on the
//!    socket as before), 0 where it does not (the old one keeps it until it exits).
//!    new → old `READY`: the new process accepts on them now. The old one stops accepting
//!    (it keeps its listening sockets) and drains.
//! 3. old → new `CONNECTION`, any number: an idle HTTP/1 connection; payload: its transport
//!    byte, then the bytes the old process had read past the last request (a pipelined start).
//! 4. old → new `DONE`: the old process has drained.
//! 5. new → old `HEALTHY`, once the new process has served for its probation
//!    ([`Options::upgrade_probation`](crate::Options::upgrade_probation)): the old process
//!    exits. Should the new process's end of the stream close before (it crashed, or was
//!    killed), the old process accepts again: a rollback.
//!
//! The upgrade socket serves its peers concurrently: each gets the listeners, the first to say
//! `READY` takes over, and a peer must send a frame it has begun within
//! [`FRAME_TIMEOUT`].

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

mod moving;
pub(crate) use moving::{reserve, HandoverSlot};

const LISTENERS: u8 = 1;
const READY: u8 = 2;
const CONNECTION: u8 = 3;
const DONE: u8 = 4;
const HEALTHY: u8 = 5;
const QUIC: u8 = 6;
const QUIC_READY: u8 = 7;

/// The `LISTENERS` frame's flag (third header byte, ignored by older processes): a `QUIC`
/// frame follows.
const QUIC_FOLLOWS: u8 = 1;

const TCP: u8 = 0;
const UNIX: u8 = 1;

const HEADER: usize = 8;
/// How long a taker waits for the listeners.
const LISTENERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a taker may hold the listeners before it says it accepts on them.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// A frame begun must be complete within this long.
pub(crate) const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long an old process waits for its successor's `HEALTHY` (beyond it, it takes the
/// successor for healthy and exits, with a warning).
const HEALTHY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// At most this many descriptors in one frame (Linux's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;
/// A frame's payload is at most this long (a pipelined start is at most a request head).
const MAX_PAYLOAD: usize = 1 << 20;

/// A listening socket a process inherited: from the process it replaces ([`Takeover`]) or from
/// systemd ([`listen_fds`]). Add it to a [`Server`](crate::Server) as it is, or through
/// [`Listener`](crate::Listener) to put TLS or the PROXY protocol on it.
#[derive(Debug)]
#[non_exhaustive]
pub enum InheritedListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix stream listener.
    Unix(UnixListener),
}

impl InheritedListener {
    /// Wraps a listening socket: TCP or unix, as its address family says; an error for
    /// anything else (a datagram socket, a socket not listening).
    fn from_fd(fd: OwnedFd) -> io::Result<InheritedListener> {
        use rustix::net::AddressFamily;
        check_listening(fd.as_fd())?;
        rustix::io::ioctl_fioclex(&fd)?;
        let family = rustix::net::getsockname(&fd)?.address_family();
        if family == AddressFamily::UNIX {
            let listener = std::os::unix::net::UnixListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(InheritedListener::Unix(UnixListener::from_std(listener)?))
        } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(InheritedListener::Tcp(TcpListener::from_std(listener)?))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a TCP or unix socket",
            ))
        }
    }
}

/// What a process ran on the connections of a listener before HTTP, as the process it replaces
/// tells in a binary upgrade ([`Server::take_over`](crate::Server::take_over) compares it with
/// what the new process would run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ListenerSteps {
    /// A TLS handshake ([`Listener::with_tls`](crate::Listener::with_tls)).
    pub tls: bool,
    /// A PROXY protocol header, optional or required
    /// ([`Listener::with_proxy_protocol`](crate::Listener::with_proxy_protocol)).
    pub proxy_protocol: Option<ProxyHeader>,
    /// An acceptor of the application's own ([`Listener::acceptor`](crate::Listener::acceptor)):
    /// whatever it does, it is not the same steps as none.
    pub custom: bool,
}

/// Whether a listener takes PROXY protocol headers optionally or requires them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyHeader {
    /// Taken when a trusted peer sends one.
    Optional,
    /// Required from every connection.
    Required,
}

impl ListenerSteps {
    const TLS: u8 = 1;
    const PROXY_OPTIONAL: u8 = 2;
    const PROXY_REQUIRED: u8 = 4;
    const CUSTOM: u8 = 8;

    pub(crate) fn to_bits(self) -> u8 {
        let mut bits = 0;
        if self.tls {
            bits |= Self::TLS;
        }
        match self.proxy_protocol {
            Some(ProxyHeader::Optional) => bits |= Self::PROXY_OPTIONAL,
            Some(ProxyHeader::Required) => bits |= Self::PROXY_REQUIRED,
            None => {}
        }
        if self.custom {
            bits |= Self::CUSTOM;
        }
        bits
    }

    fn from_bits(bits: u8) -> ListenerSteps {
        ListenerSteps {
            tls: bits & Self::TLS != 0,
            proxy_protocol: if bits & Self::PROXY_REQUIRED != 0 {
                Some(ProxyHeader::Required)
            } else if bits & Self::PROXY_OPTIONAL != 0 {
                Some(ProxyHeader::Optional)
            } else {
                None
            },
            custom: bits & Self::CUSTOM != 0,
        }
    }
}

impl std::fmt::Display for ListenerSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps = Vec::new();
        match self.proxy_protocol {
            Some(ProxyHeader::Optional) => steps.push("PROXY header (optional)"),
            Some(ProxyHeader::Required) => steps.push("PROXY header (required)"),
            None => {}
        }
        if self.tls {
            steps.push("TLS");
        }
        if self.custom {
            steps.push("an acceptor of its own");
        }
        if steps.is_empty() {
            f.write_str("plain HTTP")
        } else {
            f.write_str(&steps.join(", then "))
        }
    }
}

/// Why [`Server::take_over`](crate::Server::take_over) refused to take over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeoverError {
    /// A listener would be served with other steps than the old process ran on it (for
    /// example plain HTTP on the socket the old process served TLS on). Give the new server's
    /// listener the same steps, or allow the change with
    /// [`Listener::allow_steps_change`](crate::Listener::allow_steps_change).
    #[error(
        "listener #{index} ({address}): the old process served it with {old}, this one would serve it with {new}"
    )]
    StepsDiffer {
        /// The listener's position in what the old process handed over.
        index: usize,
        /// Its address.
        address: String,
        /// What the old process ran.
        old: ListenerSteps,
        /// What this process would run.
        new: ListenerSteps,
    },
    /// A listener's socket could not be looked at.
    #[error("listener #{index}: {source}")]
    Io {
        /// The listener's position in the new server.
        index: usize,
        /// What failed.
        source: io::Error,
    },
}

/// The identity of an open socket (its device and inode): the same in both processes.
pub(crate) fn socket_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::fstat(fd)?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

/// The listening sockets systemd (or `systemfd`, `catflap`...) passed to this process by
/// socket activation: `LISTEN_FDS` descriptors from 3 on, if `LISTEN_PID` is this process.
/// Empty when the variables are not set for this process, and on any call after the first
/// (the descriptors are taken once; the variables are left as they are, since changing the
/// environment is unsound while other threads may read it).
///
/// Each descriptor is checked before it is taken: an error names the first that is not an
/// open listening TCP or unix stream socket, and no descriptor is closed then (one that is not
/// a socket may be something else of this process's, e.g. after an `exec` that kept the pid).
pub fn listen_fds() -> io::Result<Vec<InheritedListener>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: i32 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=1024).contains(n))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("LISTEN_FDS={count:?} is not a number of descriptors"),
            )
        })?;
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    const FIRST: i32 = 3;
    let descriptors = FIRST..FIRST + count;
    // Checked through borrows first: nothing is owned (and so closed) unless all are sockets
    // listening for streams.
    for raw in descriptors.clone() {
        // SAFETY: the descriptor is only borrowed for the checks below, each of which fails
        // cleanly (EBADF, ENOTSOCK) on a descriptor that is not open or not a socket.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        check_listening(fd).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("LISTEN_FDS descriptor {raw}: {error}"),
            )
        })?;
    }
    descriptors
        .map(|raw| {
            // SAFETY: by the socket activation protocol, descriptors 3..3+LISTEN_FDS are given
            // to this process (LISTEN_PID) to own; each was just checked to be an open listening
            // socket; `TAKEN` makes sure they are wrapped once.
            #[allow(unsafe_code)]
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            InheritedListener::from_fd(fd)
        })
        .collect()
}

/// An open socket listening for streams, or why not.
fn check_listening(fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{sockopt, SocketType};
    if sockopt::socket_type(fd)? != SocketType::STREAM || !sockopt::socket_acceptconn(fd)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening stream socket",
        ));
    }
    Ok(())
}

/// Whether a peer of the upgrade socket may take the listeners: only a process of this user.
pub(crate) fn peer_allowed(peer_uid: u32) -> bool {
    peer_uid == rustix::process::getuid().as_raw()
}

/// One frame on the upgrade socket.
struct Frame {
    kind: u8,
    /// The header's third byte (`QUIC_FOLLOWS`).
    flags: u8,
    fds: Vec<OwnedFd>,
    payload: Vec<u8>,
}

async fn send_frame(
    stream: &UnixStream,
    kind: u8,
    fds: &[BorrowedFd<'_>],
    payload: &[u8],
) -> io::Result<()> {
    send_flagged(stream, kind, 0, fds, payload).await
}

async fn send_flagged(
    stream: &UnixStream,
    kind: u8,
    flags: u8,
    fds: &[BorrowedFd<'_>],
    payload: &[u8],
) -> io::Result<()> {
    let fd_count = u8::try_from(fds.len())
        .ok()
        .filter(|n| usize::from(*n) <= MAX_FDS)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|n| (*n as usize) <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "payload too long"))?;
    let mut header = [kind, fd_count, flags, 0, 0, 0, 0, 0];
    header[4..].copy_from_slice(&length.to_le_bytes());
    let mut frame = header.to_vec();
    frame.extend_from_slice(payload);
    // The descriptors go with the first bytes; the rest, if the socket took less, after.
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::other("control buffer too small"));
            }
            rustix::net::sendmsg(
                stream,
                &[IoSlice::new(&frame)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        })
        .await?;
    let mut rest = &frame[sent..];
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The next frame; `None` at EOF before a frame starts. Once its first bytes have come, the
/// rest must come within [`FRAME_TIMEOUT`].
async fn recv_frame<R>(stream: &mut R) -> io::Result<Option<Frame>>
where
    R: tokio::io::AsyncRead + AsRef<UnixStream> + Unpin,
{
    let mut header = [0u8; HEADER];
    let mut fds = Vec::new();
    let socket: &UnixStream = (*stream).as_ref();
    let received = socket
        .async_io(Interest::READABLE, || {
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let message = rustix::net::recvmsg(
                socket,
                &mut [IoSliceMut::new(&mut header)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            Ok(message.bytes)
        })
        .await?;
    if received == 0 {
        return Ok(None);
    }
    let rest = async {
        stream.read_exact(&mut header[received..]).await?;
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if length > MAX_PAYLOAD || fds.len() != usize::from(header[1]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed frame on the upgrade socket",
            ));
        }
        let mut payload = vec![0; length];
        stream.read_exact(&mut payload).await?;
        Ok(payload)
    };
    let payload = tokio::time::timeout(FRAME_TIMEOUT, rest)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("a frame on the upgrade socket not complete within {FRAME_TIMEOUT:?}"),
            )
        })??;
    Ok(Some(Frame {
        kind: header[0],
        flags: header[2],
        fds,
        payload,
    }))
}

/// A unix stream split in its halves, each usable for frames.
struct Halves {
    read: tokio::net::unix::OwnedReadHalf,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl From<UnixStream> for Halves {
    fn from(stream: UnixStream) -> Halves {
        let (read, write) = stream.into_split();
        Halves { read, write }
    }
}

/// An idle connection on its way to the new process: a duplicate of its socket, and the bytes
/// read past its last request.
#[derive(Debug)]
pub(crate) struct HandedOver {
    pub(crate) fd: OwnedFd,
    pub(crate) unix: bool,
    pub(crate) unread: Bytes,
}

impl HandedOver {
    /// The connection as a tokio stream (TCP or unix), non-blocking.
    pub(crate) fn into_stream<T: FromHanded>(self) -> Option<T> {
        T::from_handed(self.fd)
    }
}

/// A tokio stream a handed-over descriptor becomes.
pub(crate) trait FromHanded: Sized {
    fn from_handed(fd: OwnedFd) -> Option<Self>;
}

impl FromHanded for tokio::net::TcpStream {
    fn from_handed(fd: OwnedFd) -> Option<Self> {
        let stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(true).ok()?;
        tokio::net::TcpStream::from_std(stream).ok()
    }
}

impl FromHanded for UnixStream {
    fn from_handed(fd: OwnedFd) -> Option<Self> {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true).ok()?;
        UnixStream::from_std(stream).ok()
    }
}

/// Where a shutting-down server sends its idle connections once a new process took over.
pub(crate) type Sink = mpsc::UnboundedSender<HandedOver>;

/// A server's upgrade socket. Bound at a temporary name next to its path, and renamed to the
/// path once published: a new process that binds its own does not take the path from the
/// running one until it has taken over.
#[derive(Debug)]
pub(crate) struct Publisher {
    listener: UnixListener,
    path: PathBuf,
    temporary: PathBuf,
    published: bool,
    /// The socket file's device and inode: removed on drop only if it is still this one (the
    /// next process renames its own over the path).
    file: (u64, u64),
}

impl Publisher {
    /// Binds the upgrade socket for `path`, mode 0600 (not published yet).
    pub(crate) fn bind(path: &Path) -> io::Result<Publisher> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.new", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        let listener = UnixListener::bind(&temporary)?;
        // Restricted before anyone can find it at `path`; the peer's uid is checked as well.
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        let meta = std::fs::symlink_metadata(&temporary)?;
        Ok(Publisher {
            listener,
            path: path.to_owned(),
            temporary,
            published: false,
            file: (meta.dev(), meta.ino()),
        })
    }

    /// A new upgrade socket for the same path, put at the path at once (over the socket file a
    /// successor that went away left there): after a rollback, this process is upgradable
    /// again.
    pub(crate) fn rebind(&self) -> io::Result<Publisher> {
        let mut publisher = Publisher::bind(&self.path)?;
        publisher.publish()?;
        Ok(publisher)
    }

    /// Moves the socket to its path (over a stale socket, or the one of the process this one
    /// replaced).
    pub(crate) fn publish(&mut self) -> io::Result<()> {
        if self.published {
            return Ok(());
        }
        std::fs::rename(&self.temporary, &self.path)?;
        self.published = true;
        Ok(())
    }

    /// Waits for a process of this user to take the listeners; hands them over and waits for
    /// its `READY`. Returns the stream to send idle connections on. Peers are served
    /// concurrently, each with the listeners: the first to say `READY` takes over. Peers of
    /// another user, peers that go away before `READY` or do not say it within 60 s, and peers
    /// that leave a frame unfinished for [`FRAME_TIMEOUT`] are dropped; none of them holds up
    /// another.
    pub(crate) async fn wait_for_taker(&self, listeners: std::sync::Arc<Published>) -> Successor {
        let mut peers = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        peers.spawn(offer(stream, listeners.clone()));
                    }
                    Err(error) => {
                        // EMFILE and the like: waited out, not spun on.
                        warn!(%error, "upgrade socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(done) = peers.join_next() => {
                    if let Ok(Some(successor)) = done {
                        // The other peers are dropped with the set.
                        return successor;
                    }
                }
            }
        }
    }
}

/// The listening sockets as a new process receives them: duplicates, and the `LISTENERS`
/// payload (transport and steps of each).
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) payload: Vec<u8>,
    /// The UDP sockets of the HTTP/3 listeners, with the CID tag of this process on each.
    quic: Vec<(OwnedFd, u8)>,
}

impl Published {
    pub(crate) fn new(
        listeners: Vec<(OwnedFd, bool, ListenerSteps)>,
        quic: Vec<(OwnedFd, u8)>,
    ) -> Published {
        let mut payload = Vec::with_capacity(2 * listeners.len());
        let mut fds = Vec::with_capacity(listeners.len());
        for (fd, unix, steps) in listeners {
            payload.push(kind(unix));
            payload.push(steps.to_bits());
            fds.push(fd);
        }
        Published { fds, payload, quic }
    }
}

/// A socket pair for each UDP socket (see `QUIC` above): the ends kept here, and the frame's
/// descriptors and payload.
fn quic_frame(published: &Published) -> io::Result<(Vec<OwnedFd>, Vec<OwnedFd>, Vec<u8>)> {
    let mut kept = Vec::with_capacity(published.quic.len());
    let mut sent = Vec::with_capacity(published.quic.len());
    for _ in &published.quic {
        let (here, there) = link_pair()?;
        kept.push(here);
        sent.push(there);
    }
    let tags = published.quic.iter().map(|(_, tag)| *tag).collect();
    Ok((kept, sent, tags))
}

/// A new `SOCK_SEQPACKET` pair (non-blocking, close-on-exec).
fn link_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// One peer of the upgrade socket: if it is of this user, it gets the listeners; it is the
/// successor if it says `READY` in time.
async fn offer(stream: UnixStream, listeners: std::sync::Arc<Published>) -> Option<Successor> {
    match stream.peer_cred() {
        Ok(cred) if peer_allowed(cred.uid()) => {}
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                "upgrade socket: refused a process of another user"
            );
            return None;
        }
        Err(error) => {
            warn!(%error, "upgrade socket: peer credentials unreadable; refused");
            return None;
        }
    }
    let fds: Vec<BorrowedFd<'_>> = listeners.fds.iter().map(AsFd::as_fd).collect();
    let (links, quic_fds, tags) = match quic_frame(&listeners) {
        Ok(frame) => frame,
        Err(error) => {
            warn!(%error, "upgrade socket: no socket pair for the QUIC sockets");
            return None;
        }
    };
    let flags = if links.is_empty() { 0 } else { QUIC_FOLLOWS };
    let sent = async {
        send_flagged(&stream, LISTENERS, flags, &fds, &listeners.payload).await?;
        if !links.is_empty() {
            let fds: Vec<BorrowedFd<'_>> = listeners
                .quic
                .iter()
                .zip(&quic_fds)
                .flat_map(|((udp, _), link)| [udp.as_fd(), link.as_fd()])
                .collect();
            send_frame(&stream, QUIC, &fds, &tags).await?;
        }
        io::Result::Ok(())
    };
    if let Err(error) = sent.await {
        warn!(%error, "upgrade socket: handing the listeners over failed");
        return None;
    }
    drop(quic_fds);
    let mut halves = Halves::from(stream);
    // Each UDP socket's link end, kept where the new process says it reads the socket.
    let mut links: Vec<Option<OwnedFd>> = links.into_iter().map(Some).collect();
    let mut served: Vec<Option<OwnedFd>> = links.iter().map(|_| None).collect();
    let mut told = false;
    // A taker that never says it is ready must not hold the upgrade socket forever.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let frame = loop {
        let frame = tokio::time::timeout_at(deadline, recv_frame(&mut halves.read)).await;
        match frame {
            Ok(Ok(Some(frame))) if frame.kind == QUIC_READY && !told => {
                told = true;
                served = links
                    .iter_mut()
                    .enumerate()
                    .map(|(index, link)| {
                        link.take().filter(|_| frame.payload.get(index) == Some(&1))
                    })
                    .collect();
            }
            frame => break frame,
        }
    };
    match frame {
        Ok(Ok(Some(frame))) if frame.kind == READY => {
            info!("upgrade: the new process accepts; this one drains");
            Some(Successor {
                halves,
                quic: served,
            })
        }
        Ok(Ok(_)) => {
            warn!("upgrade socket: the taker left before it was ready");
            None
        }
        Ok(Err(error)) => {
            warn!(%error, "upgrade socket: the taker failed");
            None
        }
        Err(_) => {
            warn!("upgrade socket: the taker was not ready within {READY_TIMEOUT:?}; this process goes on");
            None
        }
    }
}

/// The process that took this one's listeners and said it accepts on them.
#[derive(Debug)]
pub(crate) struct Successor {
    halves: Halves,
    /// For each UDP socket published, the link end to the successor if it reads the socket.
    #[cfg_attr(not(feature = "http3"), allow(dead_code))]
    quic: Vec<Option<OwnedFd>>,
}

impl std::fmt::Debug for Halves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Halves")
    }
}

impl Successor {
    /// For each UDP socket published, in order: the link end to the successor, where it reads
    /// the socket now.
    #[cfg_attr(not(feature = "http3"), allow(dead_code))]
    pub(crate) fn take_quic_links(&mut self) -> Vec<Option<OwnedFd>> {
        std::mem::take(&mut self.quic)
    }

    /// Splits the successor's stream: where idle connections go, and its word on its health.
    pub(crate) fn split(self) -> (ConnectionSender, Health) {
        (
            ConnectionSender {
                write: self.halves.write,
            },
            Health {
                read: self.halves.read,
            },
        )
    }
}

/// Sends the idle connections to the successor.
pub(crate) struct ConnectionSender {
    write: tokio::net::unix::OwnedWriteHalf,
}

/// The successor's word on its health.
pub(crate) struct Health {
    read: tokio::net::unix::OwnedReadHalf,
}

impl Health {
    /// Whether the successor said `HEALTHY`; `false` if its end closed first (it crashed or
    /// was killed: this process takes the listeners back). A successor that says nothing for
    /// 10 minutes is taken for healthy (a warning says so).
    pub(crate) async fn confirmed(mut self) -> bool {
        let word = async {
            loop {
                match recv_frame(&mut self.read).await {
                    Ok(Some(frame)) if frame.kind == HEALTHY => return true,
                    Ok(Some(_)) => warn!("upgrade: unexpected frame from the new process"),
                    Ok(None) => return false,
                    Err(error) => {
                        warn!(%error, "upgrade: the new process's stream failed");
                        return false;
                    }
                }
            }
        };
        match tokio::time::timeout(HEALTHY_TIMEOUT, word).await {
            Ok(confirmed) => confirmed,
            Err(_) => {
                warn!("upgrade: the new process did not say it is healthy within {HEALTHY_TIMEOUT:?}; taken for healthy");
                true
            }
        }
    }
}

impl ConnectionSender {
    /// Sends the idle connections that come through `connections`, then `DONE` once the
    /// channel closes (every connection of the server has closed or moved).
    pub(crate) async fn send_connections(
        self,
        mut connections: mpsc::UnboundedReceiver<HandedOver>,
    ) {
        let stream: &UnixStream = self.write.as_ref();
        let mut moved = 0u64;
        while let Some(connection) = connections.recv().await {
            let mut payload = Vec::with_capacity(1 + connection.unread.len());
            payload.push(if connection.unix { UNIX } else { TCP });
            payload.extend_from_slice(&connection.unread);
            match send_frame(stream, CONNECTION, &[connection.fd.as_fd()], &payload).await {
                Ok(()) => moved += 1,
                // The new process is gone: this connection closes with the old one.
                Err(error) => warn!(%error, "upgrade: an idle connection could not move; closed"),
            }
        }
        let _ = send_frame(stream, DONE, &[], &[]).await;
        info!(moved, "upgrade: idle connections handed over");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let at = if self.published {
            &self.path
        } else {
            &self.temporary
        };
        let ours =
            std::fs::symlink_metadata(at).is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(at);
        }
    }
}

/// The new process's side of a binary upgrade: the listeners taken from the running process
/// at an upgrade socket, and (once [`Server::take_over`](crate::Server::take_over) serves) the
/// idle connections it hands over.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use hyper_remote_client::{Options, Server, upgrade::Takeover};
///
/// let mut takeover = Takeover::connect("/run/app/upgrade.sock").await?;
/// let mut server = Server::new(Options::default());
/// for listener in takeover.take_listeners() {
///     server = server.listener(listener);
/// }
/// // Tell the old process to drain once serving (refused if a listener is served with
/// // other steps than the old process ran on it); publish the listeners in turn, for the
/// // next upgrade (`take_over` first: the path is then taken from the old process only once
/// // this one is ready).
/// let server = server
///     .take_over(takeover)
///     .map_err(std::io::Error::other)?
///     .upgrade_socket("/run/app/upgrade.sock")?;
/// server.serve(tower::service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("new\n")))
/// })).await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Takeover {
    halves: Halves,
    listeners: Vec<InheritedListener>,
    /// Each listener as handed over: its socket's identity, and the steps the old process
    /// ran on it (`None`: an older process that does not say).
    handed: Vec<((u64, u64), Option<ListenerSteps>)>,
    /// The UDP sockets of the old process's HTTP/3 listeners (`None` once taken).
    #[cfg_attr(not(feature = "http3"), allow(dead_code))]
    quic: Vec<Option<HandedQuic>>,
    /// How many UDP sockets came (then the old process is told which are read here).
    quic_count: usize,
}

/// A UDP socket of an HTTP/3 listener of the old process, as handed over.
#[derive(Debug)]
#[cfg_attr(not(feature = "http3"), allow(dead_code))]
pub(crate) struct HandedQuic {
    pub(crate) socket: std::net::UdpSocket,
    /// This end of the link to the old process.
    pub(crate) link: OwnedFd,
    /// The old process's CID tag on it.
    pub(crate) tag: u8,
    /// Its position among the UDP sockets handed over.
    pub(crate) index: usize,
}

impl Takeover {
    /// Connects to the upgrade socket of the running process and receives its listeners.
    ///
    /// The process at the socket must be of this user (`SO_PEERCRED`), and hand the listeners
    /// over within 10 s.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Takeover> {
        let path = path.as_ref();
        let failed = |error: io::Error| {
            io::Error::new(
                error.kind(),
                format!("upgrade socket {}: {error}", path.display()),
            )
        };
        let mut stream = UnixStream::connect(path).await.map_err(failed)?;
        let cred = stream.peer_cred().map_err(failed)?;
        if !peer_allowed(cred.uid()) {
            return Err(failed(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the process there runs as uid {}, not this user",
                    cred.uid()
                ),
            )));
        }
        let frame = tokio::time::timeout(LISTENERS_TIMEOUT, recv_frame(&mut stream))
            .await
            .map_err(|_| {
                failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no listeners handed over in time",
                ))
            })?
            .map_err(failed)?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "upgrade socket {}: closed without handing the listeners over",
                        path.display()
                    ),
                )
            })?;
        let count = frame.fds.len();
        let with_steps = frame.payload.len() == 2 * count;
        if frame.kind != LISTENERS || !(with_steps || frame.payload.len() == count) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upgrade socket: expected the listeners",
            ));
        }
        let mut handed = Vec::with_capacity(count);
        for (index, fd) in frame.fds.iter().enumerate() {
            let steps = with_steps.then(|| ListenerSteps::from_bits(frame.payload[2 * index + 1]));
            handed.push((socket_id(fd.as_fd())?, steps));
        }
        let flags = frame.flags;
        let listeners = frame
            .fds
            .into_iter()
            .map(InheritedListener::from_fd)
            .collect::<io::Result<Vec<_>>>()?;
        let quic = if flags & QUIC_FOLLOWS != 0 {
            let frame = tokio::time::timeout(LISTENERS_TIMEOUT, recv_frame(&mut stream))
                .await
                .map_err(|_| {
                    failed(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no QUIC sockets handed over in time",
                    ))
                })?
                .map_err(failed)?;
            match frame {
                Some(frame) if frame.kind == QUIC && frame.fds.len() == 2 * frame.payload.len() => {
                    Self::quic_sockets(frame)?
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "upgrade socket: expected the QUIC sockets",
                    ))
                }
            }
        } else {
            Vec::new()
        };
        Ok(Takeover {
            halves: Halves::from(stream),
            listeners,
            handed,
            quic_count: quic.len(),
            quic: quic.into_iter().map(Some).collect(),
        })
    }

    /// The UDP sockets and link ends of a `QUIC` frame.
    fn quic_sockets(frame: Frame) -> io::Result<Vec<HandedQuic>> {
        let mut fds = frame.fds.into_iter();
        let mut sockets = Vec::with_capacity(frame.payload.len());
        for (index, &tag) in frame.payload.iter().enumerate() {
            let (Some(socket), Some(link)) = (fds.next(), fds.next()) else {
                break;
            };
            use rustix::net::{sockopt, SocketType};
            if sockopt::socket_type(&socket)? != SocketType::DGRAM
                || sockopt::socket_type(&link)? != SocketType::SEQPACKET
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "upgrade socket: a QUIC socket is not a UDP socket",
                ));
            }
            rustix::io::ioctl_fioclex(&socket)?;
            rustix::io::ioctl_fioclex(&link)?;
            let socket = std::net::UdpSocket::from(socket);
            socket.set_nonblocking(true)?;
            sockets.push(HandedQuic {
                socket,
                link,
                tag,
                index,
            });
        }
        Ok(sockets)
    }

    /// The UDP sockets of the old process's HTTP/3 listeners, in its order (empty once
    /// taken): serve each with [`QuicListener::inherit`](crate::http3::QuicListener::inherit).
    /// Those not served here stay with the old process until it exits (HTTP/3 on them is gone
    /// then).
    #[cfg(feature = "http3")]
    pub fn take_quic_sockets(&mut self) -> Vec<crate::http3::InheritedQuic> {
        self.quic
            .iter_mut()
            .filter_map(Option::take)
            .map(crate::http3::InheritedQuic::new)
            .collect()
    }

    /// What the old process ran on each listener it handed over, in its order (`None` where an
    /// older process did not say).
    pub fn steps(&self) -> Vec<Option<ListenerSteps>> {
        self.handed.iter().map(|(_, steps)| *steps).collect()
    }

    /// Checks that each listener the new server serves that came from the old process is
    /// served with the steps the old process ran on it, unless `allowed` says a change is
    /// wanted for it.
    pub(crate) fn check(
        &self,
        listeners: &[(BorrowedFd<'_>, ListenerSteps, bool, String)],
    ) -> Result<(), TakeoverError> {
        for (position, (fd, new, allowed, address)) in listeners.iter().enumerate() {
            let id = socket_id(*fd).map_err(|source| TakeoverError::Io {
                index: position,
                source,
            })?;
            let Some(index) = self.handed.iter().position(|(handed, _)| *handed == id) else {
                continue;
            };
            if let (Some(old), false) = (self.handed[index].1, *allowed) {
                if old != *new {
                    return Err(TakeoverError::StepsDiffer {
                        index,
                        address: address.clone(),
                        old,
                        new: *new,
                    });
                }
            }
        }
        Ok(())
    }

    /// The listeners, in the order the old process's server had them (empty once taken).
    pub fn take_listeners(&mut self) -> Vec<InheritedListener> {
        std::mem::take(&mut self.listeners)
    }

    /// Tells the old process that this one accepts (and reads the UDP sockets at
    /// `quic_served`, positions among those handed over): it stops accepting and drains.
    pub(crate) async fn ready(&mut self, quic_served: &[usize]) -> io::Result<()> {
        if self.quic_count > 0 {
            let mut served = vec![0u8; self.quic_count];
            for &index in quic_served {
                if let Some(byte) = served.get_mut(index) {
                    *byte = 1;
                }
            }
            send_frame(self.halves.write.as_ref(), QUIC_READY, &[], &served).await?;
        }
        send_frame(self.halves.write.as_ref(), READY, &[], &[]).await
    }

    /// Receives the old process's idle connections until it is done (`deliver` serves each),
    /// and tells it this one is healthy once `probation` has passed since it was told to
    /// drain: it exits then (until then, it takes its listeners back if this process dies).
    pub(crate) async fn receive(
        self,
        probation: std::time::Duration,
        deliver: impl FnMut(HandedOver),
    ) {
        let Halves { mut read, write } = self.halves;
        let healthy = async move {
            tokio::time::sleep(probation).await;
            match send_frame(write.as_ref(), HEALTHY, &[], &[]).await {
                Ok(()) => info!("takeover: probation passed; the old process may exit"),
                Err(error) => warn!(%error, "takeover: the old process could not be told"),
            }
        };
        tokio::join!(healthy, Self::connections(&mut read, deliver));
    }

    async fn connections(
        read: &mut tokio::net::unix::OwnedReadHalf,
        mut deliver: impl FnMut(HandedOver),
    ) {
        loop {
            match recv_frame(read).await {
                Ok(Some(frame)) if frame.kind == CONNECTION => {
                    let (Some(fd), Some((&transport, unread))) =
                        (frame.fds.into_iter().next(), frame.payload.split_first())
                    else {
                        warn!("takeover: malformed connection frame");
                        continue;
                    };
                    deliver(HandedOver {
                        fd,
                        unix: transport == UNIX,
                        unread: Bytes::copy_from_slice(unread),
                    });
                }
                Ok(Some(frame)) if frame.kind == DONE => break,
                Ok(Some(_)) => warn!("takeover: unexpected frame"),
                Ok(None) => break,
                Err(error) => {
                    warn!(%error, "takeover: the upgrade socket failed");
                    break;
                }
            }
        }
        debug!("takeover: the old process is done");
    }
}

/// The transport byte of a listener, for `LISTENERS`.
fn kind(unix: bool) -> u8 {
    if unix {
        UNIX
    } else {
        TCP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_user_may_take_the_listeners() {
        let me = rustix::process::getuid().as_raw();
        assert!(peer_allowed(me));
        assert!(!peer_allowed(me.wrapping_add(1)));
    }

    #[tokio::test]
    async fn frames_carry_descriptors_and_payload() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut b = Halves::from(b);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_frame(&a, LISTENERS, &[listener.as_fd()], &[TCP])
            .await
            .unwrap();
        send_frame(&a, DONE, &[], b"x").await.unwrap();
        let frame = recv_frame(&mut b.read).await.unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.payload.as_slice()),
            (LISTENERS, &[TCP][..])
        );
        let Ok(InheritedListener::Tcp(received)) =
            InheritedListener::from_fd(frame.fds.into_iter().next().unwrap())
        else {
            panic!("not a TCP listener");
        };
        assert_eq!(received.local_addr().unwrap(), addr);
        let frame = recv_frame(&mut b.read).await.unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.fds.len(), frame.payload),
            (DONE, 0, b"x".to_vec())
        );
        drop(a);
        assert!(recv_frame(&mut b.read).await.unwrap().is_none());
    }
}
