//! [`ProxyInfo`]: the PROXY protocol header a connection came with; plain data.

use bytes::Bytes;

use super::Address;

/// The PROXY header a connection came with: amphp has no equivalent; see
/// [`ClientInfo::proxy`](crate::ClientInfo::proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    pub(crate) version: u8,
    pub(crate) local_command: bool,
    pub(crate) peer: Address,
    pub(crate) socket_local: Address,
    pub(crate) tlvs: Vec<(u8, Bytes)>,
}

impl ProxyInfo {
    /// The protocol version: 1 (text) or 2 (binary).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whether the header was a v2 `LOCAL` command (a health check from the proxy itself):
    /// the socket's own addresses are kept.
    pub fn is_local(&self) -> bool {
        self.local_command
    }

    /// The actual socket peer: the proxy.
    pub fn peer_address(&self) -> &Address {
        &self.peer
    }

    /// The actual socket's local address.
    pub fn socket_local_address(&self) -> &Address {
        &self.socket_local
    }

    /// The v2 type-length-values, in order (empty for v1).
    pub fn tlvs(&self) -> &[(u8, Bytes)] {
        &self.tlvs
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_ref())
    }

    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (e.g. SNI).
    pub fn authority(&self) -> Option<&str> {
        self.tlv(0x02).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `PP2_TYPE_UNIQUE_ID`: the proxy's id for the connection.
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(0x05)
    }

    /// `PP2_TYPE_ALPN`: the protocol the client negotiated with the proxy.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(0x01)
    }
}
