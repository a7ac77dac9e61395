//! PROXY protocol v1 and v2 (feature `proxy-protocol`): behind HAProxy, nginx's stream proxy,
//! AWS NLB or Envoy, the original client's address, from trusted load balancers only.
//!
//! The header is read before anything else (before the TLS handshake on a TLS listener),
//! without reading a byte past it, within [`ProxyProtocol::timeout`]. It is parsed with the
//! `ppp` crate. [`ClientInfo::remote_address`](crate::ClientInfo::remote_address) and
//! [`local_address`](crate::ClientInfo::local_address) then report what the proxy says, and
//! [`ClientInfo::proxy`](crate::ClientInfo::proxy) keeps the proxy's own address, the
//! version and the v2 TLVs.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ppp::v2;
use ppp::HeaderResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::accept::{Accept, AcceptError, Accepted};
pub use crate::client::ProxyInfo;
use crate::client::{Address, ClientInfo, ClientInfoBuilder};

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// The largest v2 header accepted: addresses plus a few KiB of TLVs.
const V2_MAX: usize = V2_FIXED + 4096;

/// Whether a listener takes PROXY protocol headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyMode {
    /// No PROXY protocol: the socket's addresses are the client's (the default).
    #[default]
    Off,
    /// Trusted peers may send a header; connections without one are served as they are.
    Optional,
    /// Every connection must start with a header from a trusted peer.
    Required,
}

/// A listener's PROXY protocol settings: the mode, the trusted networks, the deadline.
///
/// A header from a peer outside `trusted`, a malformed header, a header that does not arrive
/// in time, or a missing one where required: the connection is closed (and counted by a
/// [`Server`](crate::Server)).
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    mode: ProxyMode,
    trusted: Arc<[IpNet]>,
    timeout: Duration,
}

impl Accept<TcpStream> for ProxyProtocol {
    type Stream = TcpStream;
    type Future = Pin<Box<dyn Future<Output = Result<Accepted<TcpStream>, AcceptError>> + Send>>;

    /// Reads the header (see [`read_header`](Self::read_header)); the client gets the
    /// addresses it names, and keeps its options.
    fn accept(&self, accepted: Accepted<TcpStream>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Accepted {
                mut stream, client, ..
            } = accepted;
            let (found, unread) = this.read_header(&mut stream).await?;
            let found = match client.options_ref() {
                Some(options) => found.options(options.clone()),
                None => found,
            };
            Ok(Accepted {
                stream,
                client: found,
                unread,
            })
        })
    }

    /// A trusted proxy carries many clients: the per-IP limit waits for the header.
    fn reports_other_address(&self, peer: IpAddr) -> bool {
        self.mode != ProxyMode::Off && self.is_trusted(peer)
    }
}

impl From<ProxyError> for AcceptError {
    fn from(error: ProxyError) -> AcceptError {
        AcceptError::Proxy(Box::new(error))
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The peer is not in the trusted networks, but sent a header (or one is required).
    #[error("PROXY header from an untrusted peer {0}")]
    Untrusted(IpAddr),
    /// A header is required and the connection did not start with one.
    #[error("PROXY header missing")]
    Missing,
    /// The header is not valid PROXY protocol v1 or v2: `what` is wrong, and `source` is the
    /// parser's error where there is one.
    #[error("malformed PROXY header: {what}")]
    Malformed {
        /// What is wrong with it.
        what: &'static str,
        /// The parser's error.
        #[source]
        source: Option<crate::BoxError>,
    },
    /// The header did not arrive within the deadline.
    #[error("PROXY header timed out")]
    Timeout,
    /// Reading the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyProtocol {
    /// Headers are optional, accepted from `trusted` networks.
    pub fn optional(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self::new(ProxyMode::Optional, trusted)
    }

    /// Headers are required, accepted from `trusted` networks.
    pub fn required(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self::new(ProxyMode::Required, trusted)
    }

    /// Settings for `mode` (`Off` turns the PROXY protocol off).
    pub fn new(mode: ProxyMode, trusted: impl IntoIterator<Item = IpNet>) -> Self {
        ProxyProtocol {
            mode,
            trusted: trusted.into_iter().collect::<Vec<_>>().into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// How long the header may take to arrive (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The mode.
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// The trusted networks.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether `ip` is in a trusted network.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// Reads the PROXY header at the start of an accepted TCP stream (nothing past it) and
    /// starts the client's handle with the addresses it gives: for your own accept loop. A
    /// [`Server`](crate::Server) takes it as a step of its listener instead
    /// ([`Listener::with_proxy_protocol`](crate::Listener::with_proxy_protocol), [`Accept`]).
    ///
    /// Also returns bytes read while looking for a header that turned out not to be one (in
    /// `Optional` mode): put them back with [`ClientIo::unread`](crate::ClientIo::unread)
    /// before serving the stream.
    pub async fn read_header(
        &self,
        stream: &mut TcpStream,
    ) -> Result<(ClientInfoBuilder, Bytes), ProxyError> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        if self.mode == ProxyMode::Off {
            return Ok((ClientInfo::builder(peer, local), Bytes::new()));
        }
        let trusted = self.is_trusted(peer.ip());
        if !trusted && self.mode == ProxyMode::Required {
            return Err(ProxyError::Untrusted(peer.ip()));
        }
        let found = tokio::time::timeout(self.timeout, read_header(stream))
            .await
            .map_err(|_| ProxyError::Timeout)??;
        match found {
            Found::Header(bytes) if trusted => {
                let info = parse(&bytes, peer, local)?;
                let (remote, local) = info.addresses.unwrap_or((peer, local));
                let builder = ClientInfo::builder(remote, local).proxy(info.info);
                Ok((builder, Bytes::new()))
            }
            Found::Header(_) => Err(ProxyError::Untrusted(peer.ip())),
            Found::None(_) if self.mode == ProxyMode::Required => Err(ProxyError::Missing),
            Found::None(unread) => Ok((ClientInfo::builder(peer, local), unread)),
        }
    }
}

fn malformed(
    what: &'static str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> ProxyError {
    ProxyError::Malformed {
        what,
        source: Some(Box::new(error)),
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address), the trusted
/// proxies of a [`ProxyProtocol`]. Parse it from a string.
///
/// ```
/// use hyper_remote_client::proxy::IpNet;
/// let net: IpNet = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!("not a network".parse::<IpNet>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// Why a string is not an IP network.
#[derive(Debug, thiserror::Error)]
#[error("not an IP network in CIDR notation (such as 10.0.0.0/8): {0:?}")]
pub struct IpNetParseError(String);

impl std::str::FromStr for IpNet {
    type Err = IpNetParseError;

    /// `a.b.c.d/n`, `ipv6/n`, or a single address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(IpNet(net));
        }
        s.parse::<IpAddr>()
            .map(|ip| IpNet(ipnet::IpNet::from(ip)))
            .map_err(|_| IpNetParseError(s.to_owned()))
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the start of a connection held.
#[derive(Debug)]
enum Found {
    /// A complete header (consumed from the stream).
    Header(Vec<u8>),
    /// No header; these bytes were read on the way and belong to the connection.
    None(Bytes),
}

/// What `bytes` (the start of a connection) are, as far as they go.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A header of this many bytes.
    Header(usize),
    /// Maybe a header: more bytes needed.
    NeedMore,
    /// Not a PROXY header.
    NotProxy,
    /// A header that can only be malformed.
    Invalid(&'static str),
}

fn scan(bytes: &[u8]) -> Scan {
    let starts_like = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        !bytes.is_empty() && bytes[..n] == signature[..n]
    };
    if bytes.is_empty() {
        Scan::NeedMore
    } else if starts_like(V2_SIGNATURE) {
        if bytes.len() < V2_FIXED {
            return Scan::NeedMore;
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if len > V2_MAX {
            Scan::Invalid("v2 header too large")
        } else if bytes.len() < len {
            Scan::NeedMore
        } else {
            Scan::Header(len)
        }
    } else if starts_like(V1_SIGNATURE) {
        match bytes.windows(2).position(|w| w == b"\r\n") {
            Some(end) if end + 2 <= V1_MAX => Scan::Header(end + 2),
            Some(_) => Scan::Invalid("v1 header too long"),
            None if bytes.len() >= V1_MAX => Scan::Invalid("v1 header too long"),
            None => Scan::NeedMore,
        }
    } else {
        Scan::NotProxy
    }
}

/// Reads a PROXY header off `stream`, never a byte past it: peeks at what has arrived, reads
/// exactly the header once it is complete, and consumes only bytes that belong to it before.
async fn read_header(stream: &mut TcpStream) -> Result<Found, ProxyError> {
    let mut consumed = Vec::new();
    let mut peeked = [0u8; 512];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Ok(Found::None(Bytes::from(consumed)));
        }
        let mut seen = consumed.clone();
        seen.extend_from_slice(&peeked[..n]);
        match scan(&seen) {
            Scan::Header(len) => {
                let start = consumed.len();
                consumed.resize(len, 0);
                stream.read_exact(&mut consumed[start..]).await?;
                return Ok(Found::Header(consumed));
            }
            Scan::NeedMore => {
                // All of it belongs to the header so far: consume it, then wait for more.
                stream.read_exact(&mut peeked[..n]).await?;
                consumed.extend_from_slice(&peeked[..n]);
            }
            Scan::NotProxy => return Ok(Found::None(Bytes::from(consumed))),
            Scan::Invalid(what) => return Err(ProxyError::Malformed { what, source: None }),
        }
    }
}

struct Parsed {
    info: ProxyInfo,
    /// The original client and destination, where the header carries IP addresses.
    addresses: Option<(SocketAddr, SocketAddr)>,
}

fn parse(header: &[u8], peer: SocketAddr, local: SocketAddr) -> Result<Parsed, ProxyError> {
    let info = |version, local_command, tlvs| ProxyInfo {
        version,
        local_command,
        peer: Address::Inet(peer),
        socket_local: Address::Inet(local),
        tlvs,
    };
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(header)) => {
            let addresses = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Parsed {
                info: info(1, false, Vec::new()),
                addresses,
            })
        }
        HeaderResult::V2(Ok(header)) => {
            let mut tlvs = Vec::new();
            for tlv in header.tlvs() {
                let tlv = tlv.map_err(|e| malformed("a v2 TLV", e))?;
                tlvs.push((tlv.kind, Bytes::copy_from_slice(&tlv.value)));
            }
            let local_command = header.command == v2::Command::Local;
            let addresses = match header.addresses {
                _ if local_command => None,
                v2::Addresses::IPv4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                v2::Addresses::IPv6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
            };
            Ok(Parsed {
                info: info(2, local_command, tlvs),
                addresses,
            })
        }
        HeaderResult::V1(Err(error)) => Err(malformed("the v1 header", error)),
        HeaderResult::V2(Err(error)) => Err(malformed("the v2 header", error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V1: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";

    fn v2_header() -> Vec<u8> {
        let addresses: v2::Addresses = (
            "192.0.2.1:56324".parse::<SocketAddr>().unwrap(),
            "198.51.100.2:443".parse::<SocketAddr>().unwrap(),
        )
            .into();
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        )
        .write_tlv(v2::Type::Authority, b"example.com")
        .unwrap()
        .write_tlv(v2::Type::UniqueId, b"id-1")
        .unwrap()
        .build()
        .unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.9:1234".parse().unwrap()
    }

    #[test]
    fn scan_finds_the_end_of_complete_headers_only() {
        let mut with_payload = V1.to_vec();
        with_payload.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(scan(&with_payload), Scan::Header(V1.len()));
        for cut in 1..V1.len() {
            assert_eq!(scan(&V1[..cut]), Scan::NeedMore, "cut at {cut}");
        }
        let v2 = v2_header();
        for cut in 1..v2.len() {
            assert_eq!(scan(&v2[..cut]), Scan::NeedMore, "cut at {cut}");
        }
        assert_eq!(scan(&v2), Scan::Header(v2.len()));
        assert_eq!(scan(b"GET / HTTP/1.1\r\n"), Scan::NotProxy);
        assert_eq!(scan(b"\x16\x03\x01"), Scan::NotProxy);
        assert_eq!(scan(b"PUT"), Scan::NotProxy);
        assert!(matches!(
            scan(&[b"PROXY ".as_slice(), &[b'1'; 200]].concat()),
            Scan::Invalid(_)
        ));
    }

    #[test]
    fn parses_v1_and_v2_with_tlvs() {
        let local = "127.0.0.1:8080".parse().unwrap();
        let parsed = parse(V1, peer(), local).unwrap();
        assert_eq!(parsed.info.version(), 1);
        assert_eq!(
            parsed.addresses.unwrap().0,
            "192.0.2.1:56324".parse().unwrap()
        );
        let parsed = parse(&v2_header(), peer(), local).unwrap();
        assert_eq!(parsed.info.version(), 2);
        assert_eq!(
            parsed.addresses.unwrap().1,
            "198.51.100.2:443".parse().unwrap()
        );
        assert_eq!(parsed.info.authority(), Some("example.com"));
        assert_eq!(parsed.info.unique_id(), Some(b"id-1".as_slice()));
        assert_eq!(parsed.info.peer_address(), &Address::Inet(peer()));
    }

    #[test]
    fn local_command_and_unknown_keep_the_socket_addresses() {
        let local_cmd = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let parsed = parse(&local_cmd, peer(), peer()).unwrap();
        assert!(parsed.info.is_local());
        assert!(parsed.addresses.is_none());
        let parsed = parse(b"PROXY UNKNOWN\r\n", peer(), peer()).unwrap();
        assert!(parsed.addresses.is_none());
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            b"PROXY TCP4 999.0.2.1 198.51.100.2 56324 443\r\n".as_slice(),
            b"PROXY TCP9 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1\r\n",
        ] {
            assert!(
                parse(bad, peer(), peer()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut v2 = v2_header();
        v2[12] = 0x31; // version 3
        assert!(parse(&v2, peer(), peer()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = scan(&bytes);
            let _ = parse(&bytes, peer(), peer());
        }

        #[test]
        fn arbitrary_bytes_after_a_signature_never_panic(
            v2 in any::<bool>(),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { V1_SIGNATURE.to_vec() };
            bytes.extend_from_slice(&rest);
            if let Scan::Header(len) = scan(&bytes) {
                prop_assert!(len <= bytes.len());
                let _ = parse(&bytes[..len], peer(), peer());
            }
        }
    }
}
