//! [`TlsInfo`]: the TLS session of a connection (amphp's crypto context); plain data.

use bytes::Bytes;

/// The TLS session of a connection: amphp's `getCryptoContext()`, plus the client certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsInfo {
    protocol: String,
    cipher_name: String,
    cipher_bits: u16,
    alpn_protocol: Option<Bytes>,
    server_name: Option<String>,
    peer_certificates: Vec<Bytes>,
}

impl std::fmt::Debug for TlsInfo {
    /// Short enough for a log line: the certificates are counted, not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsInfo")
            .field("protocol", &self.protocol)
            .field("cipher_name", &self.cipher_name)
            .field("cipher_bits", &self.cipher_bits)
            .field(
                "alpn_protocol",
                &self.alpn_protocol.as_deref().map(String::from_utf8_lossy),
            )
            .field("server_name", &self.server_name)
            .field("peer_certificates", &self.peer_certificates.len())
            .finish()
    }
}

impl TlsInfo {
    /// A session with `protocol` (e.g. `"TLSv1.3"`) and a cipher suite of `cipher_bits` bits.
    pub fn new(
        protocol: impl Into<String>,
        cipher_name: impl Into<String>,
        cipher_bits: u16,
    ) -> Self {
        TlsInfo {
            protocol: protocol.into(),
            cipher_name: cipher_name.into(),
            cipher_bits,
            alpn_protocol: None,
            server_name: None,
            peer_certificates: Vec::new(),
        }
    }

    /// Sets the negotiated ALPN protocol.
    pub fn with_alpn_protocol(mut self, alpn: impl Into<Bytes>) -> Self {
        self.alpn_protocol = Some(alpn.into());
        self
    }

    /// Sets the server name the client asked for (SNI).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Sets the peer's certificate chain (DER, end entity first).
    pub fn with_peer_certificates(mut self, chain: Vec<Bytes>) -> Self {
        self.peer_certificates = chain;
        self
    }

    /// The protocol version: `"TLSv1.3"` or `"TLSv1.2"`.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The cipher suite's IANA name, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub fn cipher_name(&self) -> &str {
        &self.cipher_name
    }

    /// The cipher's key size in bits.
    pub fn cipher_bits(&self) -> u16 {
        self.cipher_bits
    }

    /// The negotiated ALPN protocol (`b"h2"`, `b"http/1.1"`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn_protocol.as_deref()
    }

    /// The server name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The certificate chain the client presented (DER, end entity first); empty without a
    /// client certificate.
    pub fn peer_certificates(&self) -> &[Bytes] {
        &self.peer_certificates
    }
}
