//! QUIC across a binary upgrade (unix): both processes serve from one UDP socket, each
//! datagram reaching the process whose connection it belongs to.
//!
//! TCP hands each connection its own socket; QUIC connections share the listener's UDP socket
//! and are told apart by their connection IDs (CIDs), in user space. So each process issues
//! CIDs whose first byte is its *tag* (the first process's is random, each successor's the
//! one of the process it replaced plus one, wrapping), and reads the UDP socket through a
//! [`RoutedSocket`]: a datagram whose CID carries another process's tag goes, with its source
//! address, over a unix `SOCK_SEQPACKET` pair to the process it replaced (an older tag) or to
//! its successor (a newer one). Once replaced, a process stops reading the UDP socket and
//! gets its connections' datagrams from its successor; it still sends on the socket itself.
//! Should the successor go away first (a rollback), it reads the UDP socket again.
//!
//! What takes the tag: the CID in a short-header packet (bytes 1..1+[`CID_LEN`]) and the
//! destination CID of a long-header one when it is [`CID_LEN`] long. A client's first
//! Initial carries a CID of the client's choosing: it is served where it arrives, unless it
//! is [`CID_LEN`] long and its first byte is exactly a neighbour's tag (the client's later
//! Initials of a handshake the other process began); a client whose random CID matches so
//! (one chance in 256, for clients that choose 9-byte CIDs; quinn chooses 20, aioquic 8) is
//! answered by the other process, which is not accepting: its handshake times out and it
//! tries again.
//!
//! Until a process is linked to another, its [`RoutedSocket`] hands the UDP socket's datagrams
//! to quinn untouched (one atomic load per receive).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use rustix::net::{RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendFlags};
use tokio::io::unix::AsyncFd;

/// The length of the CIDs every process issues: its tag, then 8 random bytes.
pub(crate) const CID_LEN: usize = 9;

/// Issues CIDs of [`CID_LEN`] bytes: the tag, then random bytes.
pub(crate) struct TaggedCids {
    tag: u8,
    random: &'static dyn rustls::crypto::SecureRandom,
}

impl TaggedCids {
    pub(crate) fn new(tag: u8) -> TaggedCids {
        TaggedCids {
            tag,
            random: rustls::crypto::ring::default_provider().secure_random,
        }
    }
}

impl ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; CID_LEN];
        if self.random.fill(&mut cid[1..]).is_err() {
            // ring's system random does not fail on the platforms it builds for; should it,
            // a CID from the clock is still unique per process (not unpredictable).
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            cid[1..].copy_from_slice(&(nanos as u64).to_le_bytes());
        }
        cid[0] = self.tag;
        ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A random tag, for a process that replaces none.
pub(crate) fn random_tag() -> u8 {
    let mut tag = [0u8];
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut tag);
    tag[0]
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Here,
    /// To a process this one replaced (directly or not).
    Older,
    /// To the process that replaces this one.
    Newer,
}

/// Where `datagram` goes, for the process tagged `mine` (see the module's documentation).
fn route(datagram: &[u8], mine: u8) -> Route {
    let Some(&first) = datagram.first() else {
        return Route::Here;
    };
    let (tag, exact) = if first & 0x80 != 0 {
        // Long header: version (4 bytes), then the destination CID's length and the CID.
        if datagram.len() < 6 + CID_LEN || usize::from(datagram[5]) != CID_LEN {
            return Route::Here;
        }
        let version = u32::from_be_bytes([datagram[1], datagram[2], datagram[3], datagram[4]]);
        // Initial and 0-RTT (QUIC v1 and its drafts: type bits 0 and 1) may carry the
        // client's own CID.
        let client_chosen = version != 0 && (first >> 4) & 0b11 <= 1;
        (datagram[6], client_chosen)
    } else {
        if datagram.len() < 1 + CID_LEN {
            return Route::Here;
        }
        (datagram[1], false)
    };
    if tag == mine {
        return Route::Here;
    }
    let distance = tag.wrapping_sub(mine) as i8;
    match (distance, exact) {
        (-1, _) => Route::Older,
        (1, _) => Route::Newer,
        (_, true) => Route::Here,
        (distance, false) if distance < 0 => Route::Older,
        (_, false) => Route::Newer,
    }
}

/// The bytes before each datagram on a link: ECN, the source and destination addresses.
const HEADER: usize = 40;

/// A datagram as it came off a link.
struct Received {
    len: usize,
    addr: SocketAddr,
    ecn: Option<quinn::udp::EcnCodepoint>,
    dst_ip: Option<IpAddr>,
}

fn ip_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (4, bytes)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

fn ip_from(family: u8, bytes: &[u8]) -> Option<IpAddr> {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes.get(..16)?);
    match family {
        4 => Some(IpAddr::from([octets[0], octets[1], octets[2], octets[3]])),
        6 => Some(IpAddr::V6(Ipv6Addr::from(octets))),
        _ => None,
    }
}

fn encode(
    addr: SocketAddr,
    ecn: Option<quinn::udp::EcnCodepoint>,
    dst: Option<IpAddr>,
) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[0] = ecn.map_or(0, |ecn| ecn as u8);
    let (family, src) = ip_bytes(addr.ip());
    header[1] = family;
    header[4..6].copy_from_slice(&addr.port().to_be_bytes());
    header[8..24].copy_from_slice(&src);
    if let Some(dst) = dst {
        let (family, dst) = ip_bytes(dst);
        header[2] = family;
        header[24..40].copy_from_slice(&dst);
    }
    header
}

fn decode(header: &[u8; HEADER], len: usize) -> Option<Received> {
    let ip = ip_from(header[1], &header[8..24])?;
    let port = u16::from_be_bytes([header[4], header[5]]);
    Some(Received {
        len,
        addr: SocketAddr::new(ip, port),
        ecn: quinn::udp::EcnCodepoint::from_bits(header[0]),
        dst_ip: ip_from(header[2], &header[24..40]),
    })
}

impl Received {
    /// Field by field: quinn-udp may add fields (it gives a `Default`).
    #[allow(clippy::field_reassign_with_default)]
    fn meta(&self) -> RecvMeta {
        let mut meta = RecvMeta::default();
        meta.addr = self.addr;
        meta.len = self.len;
        meta.stride = self.len;
        meta.ecn = self.ecn;
        meta.dst_ip = self.dst_ip;
        meta
    }
}

/// One end of the `SOCK_SEQPACKET` pair between two processes: datagrams of the other's
/// connections go over it, with their addresses.
pub(crate) struct Link {
    fd: AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Wraps an end (inside a tokio runtime).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Link> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        // `AsyncFd::register` (tokio 1.54) supersedes `new`, whose unsoundness is about a
        // descriptor closed behind its back: this one is owned by the `AsyncFd`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Link { fd })
    }

    /// Sends one datagram; false once the other end is gone. A full link drops it (as a full
    /// UDP socket would: QUIC resends).
    fn send(
        &self,
        datagram: &[u8],
        addr: SocketAddr,
        ecn: Option<quinn::udp::EcnCodepoint>,
        dst: Option<IpAddr>,
    ) -> bool {
        let header = encode(addr, ecn, dst);
        let sent = rustix::net::sendmsg(
            self.fd.get_ref(),
            &[IoSlice::new(&header), IoSlice::new(datagram)],
            &mut SendAncillaryBuffer::default(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
        !matches!(
            sent,
            Err(rustix::io::Errno::PIPE
                | rustix::io::Errno::CONNRESET
                | rustix::io::Errno::NOTCONN)
        )
    }

    /// The next datagram into `buf`: `Ready(None)` once the other end is gone.
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Option<Received>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let mut header = [0u8; HEADER];
            let received = guard.try_io(|fd| {
                rustix::net::recvmsg(
                    fd.get_ref(),
                    &mut [IoSliceMut::new(&mut header), IoSliceMut::new(buf)],
                    &mut RecvAncillaryBuffer::default(),
                    RecvFlags::DONTWAIT,
                )
                .map_err(io::Error::from)
            });
            match received {
                Ok(Ok(message)) if message.bytes == 0 => return Poll::Ready(None),
                Ok(Ok(message)) => {
                    if message.bytes < HEADER
                        || message.flags.contains(rustix::net::ReturnFlags::TRUNC)
                    {
                        continue;
                    }
                    if let Some(received) = decode(&header, message.bytes - HEADER) {
                        return Poll::Ready(Some(received));
                    }
                }
                Ok(Err(_)) => return Poll::Ready(None),
                // Not readable after all: polled again (registers the waker).
                Err(_would_block) => {}
            }
        }
    }
}

/// The links of one QUIC listener's socket to the processes it replaced and that replace it.
#[derive(Default)]
struct Links {
    older: Option<Arc<Link>>,
    newer: Option<Arc<Link>>,
}

/// What a [`RoutedSocket`] routes by: this process's tag, its links, whether it was replaced.
pub(crate) struct Router {
    tag: u8,
    /// Whether there is any link (else datagrams pass untouched).
    linked: AtomicBool,
    /// Replaced: the successor reads the UDP socket; this process reads its link only.
    replaced: AtomicBool,
    links: Mutex<Links>,
    /// The endpoint's receive task, woken when the links change.
    waker: AtomicWaker,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("tag", &self.tag)
            .field("linked", &self.linked)
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl Router {
    pub(crate) fn new(tag: u8, older: Option<Link>) -> Arc<Router> {
        Arc::new(Router {
            tag,
            linked: AtomicBool::new(older.is_some()),
            replaced: AtomicBool::new(false),
            links: Mutex::new(Links {
                older: older.map(Arc::new),
                newer: None,
            }),
            waker: AtomicWaker::new(),
        })
    }

    /// This process's tag (its successor's is one more).
    pub(crate) fn tag(&self) -> u8 {
        self.tag
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn relink(&self, links: &Links) {
        self.linked.store(
            links.older.is_some() || links.newer.is_some(),
            Ordering::Release,
        );
        self.waker.wake();
    }

    /// The successor reads the UDP socket now: this process reads its link to it only.
    pub(crate) fn replaced_by(&self, successor: Link) {
        let mut links = self.links();
        links.newer = Some(Arc::new(successor));
        self.replaced.store(true, Ordering::Release);
        self.relink(&links);
    }

    /// The successor went away before it said it is healthy: this process reads the UDP
    /// socket again.
    pub(crate) fn rolled_back(&self) {
        let mut links = self.links();
        links.newer = None;
        self.replaced.store(false, Ordering::Release);
        self.relink(&links);
    }

    /// Drops `link` (its other end is gone).
    fn unlink(&self, link: &Arc<Link>) {
        let mut links = self.links();
        if links
            .older
            .as_ref()
            .is_some_and(|older| Arc::ptr_eq(older, link))
        {
            links.older = None;
        }
        if links
            .newer
            .as_ref()
            .is_some_and(|newer| Arc::ptr_eq(newer, link))
        {
            links.newer = None;
            if self.replaced.load(Ordering::Acquire) {
                // The successor is gone: the UDP socket is read here again.
                self.replaced.store(false, Ordering::Release);
            }
        }
        self.relink(&links);
    }
}

/// The UDP socket of a QUIC listener, read through its [`Router`].
#[derive(Debug)]
pub(crate) struct RoutedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    router: Arc<Router>,
}

impl RoutedSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, router: Arc<Router>) -> RoutedSocket {
        RoutedSocket { inner, router }
    }

    /// Forwards the datagrams of `meta` (several with GRO) that belong to another process,
    /// and keeps the others, packed at the start of `buf`.
    fn sort(&self, buf: &mut [u8], meta: &mut RecvMeta, links: &Links) {
        let stride = if meta.stride == 0 {
            meta.len
        } else {
            meta.stride
        };
        let (mut at, mut kept) = (0, 0);
        while at < meta.len {
            let end = (at + stride).min(meta.len);
            let link = match route(&buf[at..end], self.router.tag) {
                Route::Here => None,
                Route::Older => links.older.as_ref(),
                Route::Newer => links.newer.as_ref(),
            };
            let forwarded = link.is_some_and(|link| {
                if !link.send(&buf[at..end], meta.addr, meta.ecn, meta.dst_ip) {
                    self.router.unlink(link);
                }
                true
            });
            if !forwarded {
                buf.copy_within(at..end, kept);
                kept += end - at;
            }
            at = end;
        }
        meta.len = kept;
    }
}

impl AsyncUdpSocket for RoutedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.router.waker.register(cx.waker());
        if !self.router.linked.load(Ordering::Acquire) {
            return self.inner.poll_recv(cx, bufs, meta);
        }
        let (older, newer) = {
            let links = self.router.links();
            (links.older.clone(), links.newer.clone())
        };
        let links = Links { older, newer };
        let mut n = 0;
        // The links first: datagrams another process passed on.
        for (link, from) in [(&links.older, Route::Older), (&links.newer, Route::Newer)] {
            let Some(link) = link else { continue };
            while n < bufs.len() {
                let received = match link.poll_recv(cx, &mut bufs[n]) {
                    Poll::Ready(Some(received)) => received,
                    Poll::Ready(None) => {
                        self.router.unlink(link);
                        break;
                    }
                    Poll::Pending => break,
                };
                let datagram = &bufs[n][..received.len];
                // Passed on along the chain of processes, never back where it came from.
                let onward = match route(datagram, self.router.tag) {
                    Route::Older if from == Route::Newer => links.older.as_ref(),
                    Route::Newer if from == Route::Older => links.newer.as_ref(),
                    _ => None,
                };
                if let Some(onward) = onward {
                    onward.send(datagram, received.addr, received.ecn, received.dst_ip);
                    continue;
                }
                meta[n] = received.meta();
                n += 1;
            }
        }
        if !self.router.replaced.load(Ordering::Acquire) && n < bufs.len() {
            match self.inner.poll_recv(cx, &mut bufs[n..], &mut meta[n..]) {
                Poll::Ready(Ok(count)) => {
                    for i in n..n + count {
                        self.sort(&mut bufs[i], &mut meta[i], &links);
                    }
                    n += count;
                }
                Poll::Ready(Err(error)) if n == 0 => return Poll::Ready(Err(error)),
                // Told at the next receive.
                Poll::Ready(Err(_)) | Poll::Pending => {}
            }
        }
        if n > 0 {
            Poll::Ready(Ok(n))
        } else {
            Poll::Pending
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(tag: u8) -> Vec<u8> {
        let mut packet = vec![0x40, tag];
        packet.extend_from_slice(&[7; CID_LEN - 1]);
        packet.extend_from_slice(&[0; 20]);
        packet
    }

    fn long(kind: u8, cid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xc0 | (kind << 4), 0, 0, 0, 1, cid.len() as u8];
        packet.extend_from_slice(cid);
        packet.extend_from_slice(&[0; 40]);
        packet
    }

    #[test]
    fn short_headers_go_by_their_tag() {
        assert_eq!(route(&short(10), 10), Route::Here);
        assert_eq!(route(&short(9), 10), Route::Older);
        assert_eq!(route(&short(8), 10), Route::Older);
        assert_eq!(route(&short(11), 10), Route::Newer);
        // Wrapping: 255 is older than 0.
        assert_eq!(route(&short(255), 0), Route::Older);
        assert_eq!(route(&short(0), 255), Route::Newer);
        // Too short to carry a CID: here (quinn drops it).
        assert_eq!(route(&[0x40, 9], 10), Route::Here);
        assert_eq!(route(&[], 10), Route::Here);
    }

    #[test]
    fn long_headers_go_by_their_tag_unless_the_client_may_have_chosen_the_cid() {
        let ours = |tag: u8| {
            let mut cid = vec![tag];
            cid.extend_from_slice(&[3; CID_LEN - 1]);
            cid
        };
        // Handshake packets carry the server's CID.
        assert_eq!(route(&long(2, &ours(9)), 10), Route::Older);
        assert_eq!(route(&long(2, &ours(5)), 10), Route::Older);
        assert_eq!(route(&long(2, &ours(10)), 10), Route::Here);
        // Initial and 0-RTT: only a neighbour's exact tag goes there.
        assert_eq!(route(&long(0, &ours(9)), 10), Route::Older);
        assert_eq!(route(&long(0, &ours(11)), 10), Route::Newer);
        assert_eq!(route(&long(0, &ours(5)), 10), Route::Here);
        assert_eq!(route(&long(1, &ours(200)), 10), Route::Here);
        // A client's CID of another length: here.
        assert_eq!(route(&long(0, &[9; 8]), 10), Route::Here);
        assert_eq!(route(&long(2, &[9; 20]), 10), Route::Here);
    }

    #[test]
    fn addresses_survive_the_link_header() {
        for (addr, dst) in [
            (
                "127.0.0.1:4433".parse().unwrap(),
                Some("127.0.0.2".parse().unwrap()),
            ),
            ("[::1]:9".parse().unwrap(), None),
        ] {
            let header = encode(addr, Some(quinn::udp::EcnCodepoint::Ect0), dst);
            let received = decode(&header, 5).unwrap();
            assert_eq!(received.addr, addr);
            assert_eq!(received.dst_ip, dst);
            assert_eq!(received.ecn, Some(quinn::udp::EcnCodepoint::Ect0));
            assert_eq!(received.len, 5);
        }
    }

    #[test]
    fn cids_carry_the_tag() {
        let mut cids = TaggedCids::new(42);
        let (a, b) = (cids.generate_cid(), cids.generate_cid());
        assert_eq!((a.len(), a[0], b[0]), (CID_LEN, 42, 42));
        assert_ne!(a, b);
    }
}
