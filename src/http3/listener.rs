//! [`QuicListener`]: a UDP socket a [`Server`](crate::Server) serves HTTP/3 on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::options::Options;
use crate::tls::TlsAcceptor;

/// Why a [`QuicListener`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicListenerError {
    /// The UDP socket could not be bound or set up.
    #[error("QUIC socket: {0}")]
    Io(#[from] std::io::Error),
    /// The rustls configuration cannot serve QUIC: its crypto provider lacks the TLS 1.3
    /// suite QUIC's Initial packets need (`TLS13_AES_128_GCM_SHA256`), or it offers no TLS 1.3.
    #[error("the TLS configuration cannot serve QUIC: {0}")]
    Tls(String),
}

/// A UDP socket on which a [`Server`](crate::Server) serves HTTP/3 (QUIC by quinn, HTTP/3 by
/// h3), beside its TCP and unix [`Listener`](crate::Listener)s, with the same service and
/// [`Options`]. Add it with [`Server::quic`](crate::Server::quic).
///
/// The TLS configuration is the one of your TCP listeners, as it is: a copy is made for QUIC
/// with ALPN `h3` only and no 0-RTT (early data); certificates, client authentication and
/// SNI resolution are the same. QUIC always runs TLS 1.3. Made with
/// [`bind_acceptor`](Self::bind_acceptor), it follows a [`TlsAcceptor`]'s reloads.
///
/// The QUIC transport follows the [`Options`] of the server:
///
/// | option | QUIC / HTTP/3 |
/// |---|---|
/// | [`http2_timeout`](Options::http2_timeout) | the QUIC idle timeout (no packet at all), the longest time with no request in flight (PINGs do not count), and the longest a request head may take |
/// | [`min_request_body_rate`](Options::min_request_body_rate), [`min_response_rate`](Options::min_response_rate) | per request stream, as over TCP (see [`http3`](crate::http3)) |
/// | [`concurrent_stream_limit`](Options::concurrent_stream_limit) | concurrent request streams (`max_concurrent_bidi_streams`): over it, a client waits |
/// | [`header_size_limit`](Options::header_size_limit) | `SETTINGS_MAX_FIELD_SECTION_SIZE`; over it, h3 answers 431 |
/// | [`body_size_limit`](Options::body_size_limit) | as over TCP: 413 for a `Content-Length` over it, [`RequestBody`](crate::RequestBody) fails past it |
/// | [`tls_setup_timeout`](Options::tls_setup_timeout) | the QUIC handshake's deadline |
/// | [`connection_limit`](Options::connection_limit), [`connections_per_ip`](Options::connections_per_ip) | shared with TCP: one count for both |
///
/// ```no_run
/// # async fn run(tls: std::sync::Arc<hyper_remote_client::tls::rustls::ServerConfig>) -> Result<(), Box<dyn std::error::Error>> {
/// use hyper_remote_client::{http3::QuicListener, tls::TlsAcceptor, Listener, Options, Server};
///
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// let server = Server::new(Options::default())
///     .listener(Listener::tcp(tcp).with_tls(TlsAcceptor::new(tls.clone())))
///     // HTTP/3 on UDP port 443.
///     .quic(QuicListener::bind("0.0.0.0:443".parse()?, tls)?);
/// # Ok(())
/// # }
/// ```
pub struct QuicListener {
    pub(crate) endpoint: quinn::Endpoint,
    /// Routes datagrams between this process and the ones it replaces or that replace it.
    #[cfg(unix)]
    pub(crate) router: Arc<super::routing::Router>,
    /// A duplicate of the UDP socket, for a binary upgrade.
    #[cfg(unix)]
    socket: std::os::fd::OwnedFd,
    /// Its position among the UDP sockets taken over, if it was.
    #[cfg(unix)]
    pub(crate) inherited: Option<usize>,
    /// The TLS configuration new connections get, made from `source`'s current one.
    tls: Mutex<QuicTls>,
    /// Where a reloaded configuration comes from, if anywhere.
    source: Option<TlsAcceptor>,
    retry: bool,
}

/// The QUIC side of a rustls configuration.
#[derive(Clone)]
pub(crate) struct QuicTls {
    /// The rustls configuration it was made from (to tell a reload).
    from: Arc<rustls::ServerConfig>,
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    /// The suite [`TlsInfo`](crate::TlsInfo) reports, when the configuration allows one only.
    cipher: Option<(String, u16)>,
}

impl QuicTls {
    /// A copy of `tls` for QUIC: ALPN `h3`, no 0-RTT.
    fn new(tls: Arc<rustls::ServerConfig>) -> Result<QuicTls, QuicListenerError> {
        let cipher = only_suite(&tls);
        let mut copy = (*tls).clone();
        copy.alpn_protocols = vec![b"h3".to_vec()];
        // QUIC allows 0 or u32::MAX; 0-RTT requests could be replayed.
        copy.max_early_data_size = 0;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(copy)
            .map_err(|error| QuicListenerError::Tls(error.to_string()))?;
        Ok(QuicTls {
            from: tls,
            crypto: Arc::new(crypto),
            cipher,
        })
    }

    /// Whether both were made from the same rustls configuration.
    pub(crate) fn same(&self, other: &QuicTls) -> bool {
        Arc::ptr_eq(&self.from, &other.from)
    }

    /// The cipher suite reported for its connections, if the configuration allows one only.
    pub(crate) fn cipher(&self) -> Option<(&str, u16)> {
        self.cipher
            .as_ref()
            .map(|(name, bits)| (name.as_str(), *bits))
    }
}

impl std::fmt::Debug for QuicListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicListener")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("reloads", &self.source.is_some())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl QuicListener {
    /// Binds a UDP socket at `address` for HTTP/3 with the rustls configuration `tls` (see
    /// above). Call it inside a tokio runtime (outside one it fails with
    /// [`QuicListenerError::Io`]).
    pub fn bind(
        address: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<QuicListener, QuicListenerError> {
        QuicListener::from_socket(std::net::UdpSocket::bind(address)?, tls)
    }

    /// [`bind`](Self::bind) with the configuration of a TCP listener's [`TlsAcceptor`], and
    /// its reloads ([`TlsAcceptor::reload`] and the `reload_from_*` methods): each new QUIC
    /// connection gets the configuration the acceptor has then (connections already open keep
    /// theirs), as a new TCP handshake does.
    pub fn bind_acceptor(
        address: SocketAddr,
        acceptor: &TlsAcceptor,
    ) -> Result<QuicListener, QuicListenerError> {
        let mut listener = QuicListener::bind(address, acceptor.config())?;
        listener.source = Some(acceptor.clone());
        Ok(listener)
    }

    /// [`bind`](Self::bind) on a UDP socket you bound yourself.
    pub fn from_socket(
        socket: std::net::UdpSocket,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<QuicListener, QuicListenerError> {
        #[cfg(unix)]
        return QuicListener::routed(socket, tls, super::routing::random_tag(), None);
        #[cfg(not(unix))]
        {
            in_runtime()?;
            let tls = QuicTls::new(tls)?;
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )?;
            Ok(QuicListener {
                endpoint,
                tls: Mutex::new(tls),
                source: None,
                retry: false,
            })
        }
    }

    /// The UDP socket of an HTTP/3 listener of the process this one takes over from
    /// ([`Takeover::take_quic_sockets`](crate::upgrade::Takeover::take_quic_sockets)), served
    /// with the rustls configuration `tls` (see [`bind`](Self::bind)). Once this server serves
    /// it (and [`Server::take_over`](crate::Server::take_over) told the old process), this
    /// process reads the socket, and the datagrams of the connections the old process still
    /// drains are passed on to it: they stay there until they end. See the README's
    /// "Zero-downtime restarts" for what this covers.
    #[cfg(unix)]
    pub fn inherit(
        socket: InheritedQuic,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<QuicListener, QuicListenerError> {
        let handed = socket.handed;
        in_runtime()?;
        let link = super::routing::Link::new(handed.link)?;
        let mut listener =
            QuicListener::routed(handed.socket, tls, handed.tag.wrapping_add(1), Some(link))?;
        listener.inherited = Some(handed.index);
        Ok(listener)
    }

    /// [`inherit`](Self::inherit) with the configuration of a [`TlsAcceptor`], and its
    /// reloads (as [`bind_acceptor`](Self::bind_acceptor)).
    #[cfg(unix)]
    pub fn inherit_acceptor(
        socket: InheritedQuic,
        acceptor: &TlsAcceptor,
    ) -> Result<QuicListener, QuicListenerError> {
        let mut listener = QuicListener::inherit(socket, acceptor.config())?;
        listener.source = Some(acceptor.clone());
        Ok(listener)
    }

    /// An endpoint on `socket` that issues CIDs tagged `tag` and reads through a router
    /// (linked to the process replaced, if any).
    #[cfg(unix)]
    fn routed(
        socket: std::net::UdpSocket,
        tls: Arc<rustls::ServerConfig>,
        tag: u8,
        older: Option<super::routing::Link>,
    ) -> Result<QuicListener, QuicListenerError> {
        use quinn::Runtime;
        in_runtime()?;
        let tls = QuicTls::new(tls)?;
        let duplicate = std::os::fd::OwnedFd::from(socket.try_clone()?);
        let router = super::routing::Router::new(tag, older);
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let socket = super::routing::RoutedSocket::new(inner, router.clone());
        let mut config = quinn::EndpointConfig::default();
        config.cid_generator(move || Box::new(super::routing::TaggedCids::new(tag)));
        // No server configuration until the server serves: the options are not known yet, and
        // a handshake must not start before there is an accept loop.
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            config,
            None,
            Arc::new(socket),
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(QuicListener {
            endpoint,
            router,
            socket: duplicate,
            inherited: None,
            tls: Mutex::new(tls),
            source: None,
            retry: false,
        })
    }

    /// A duplicate of the UDP socket and this process's CID tag on it, for a successor.
    #[cfg(unix)]
    pub(crate) fn publishable(&self) -> std::io::Result<(std::os::fd::OwnedFd, u8)> {
        Ok((self.socket.try_clone()?, self.router.tag()))
    }

    /// Address validation against spoofed source addresses (an Initial flood that names a
    /// victim, or that fills the per-IP counts of someone else's address): each new client is
    /// first sent a QUIC Retry, and is admitted (and counted under its IP) only once it comes
    /// back with the token, from the address it claims. Costs one round trip per connection.
    /// Off by default.
    pub fn with_retry(mut self, retry: bool) -> QuicListener {
        self.retry = retry;
        self
    }

    /// Whether address validation (Retry) is on.
    pub fn retry(&self) -> bool {
        self.retry
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The `Alt-Svc` value that advertises this listener to the clients of the TLS listeners
    /// on the same host: `h3=":PORT"; ma=86400`. Give it to
    /// [`Options::with_alt_svc`](crate::Options::with_alt_svc).
    pub fn alt_svc(&self) -> std::io::Result<http::HeaderValue> {
        let port = self.local_addr()?.port();
        http::HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400"))
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    }

    /// The TLS configuration for a new connection: the acceptor's current one (made anew
    /// after a reload, once), or the one given.
    pub(crate) fn tls(&self) -> QuicTls {
        let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(source) = &self.source {
            let current = source.config();
            if !Arc::ptr_eq(&current, &tls.from) {
                match QuicTls::new(current) {
                    Ok(reloaded) => *tls = reloaded,
                    // The old configuration stays in use, as a reload that fails leaves it.
                    Err(error) => {
                        tracing::warn!(%error, "QUIC: the reloaded TLS configuration cannot serve QUIC");
                    }
                }
            }
        }
        tls.clone()
    }

    /// The quinn server configuration under `options`, with `tls`.
    pub(crate) fn server_config(&self, tls: &QuicTls, options: &Options) -> quinn::ServerConfig {
        let mut transport = quinn::TransportConfig::default();
        let idle = options
            .http2_timeout()
            .and_then(|timeout| quinn::IdleTimeout::try_from(timeout).ok());
        transport
            .max_idle_timeout(idle)
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(options.concurrent_stream_limit()))
            // The peer's control and QPACK streams, and some room for grease.
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
        let mut config = quinn::ServerConfig::with_crypto(tls.crypto.clone());
        config.transport_config(Arc::new(transport));
        config
    }
}

/// An error outside a tokio runtime (quinn's endpoint needs one).
fn in_runtime() -> Result<(), QuicListenerError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(QuicListenerError::Io(std::io::Error::other(
            "QuicListener: no tokio runtime (bind it inside one)",
        )));
    }
    Ok(())
}

/// The UDP socket of an HTTP/3 listener of the process this one takes over from
/// ([`Takeover::take_quic_sockets`](crate::upgrade::Takeover::take_quic_sockets)): serve it
/// with [`QuicListener::inherit`] (or [`QuicListener::inherit_acceptor`]). Dropped, the old
/// process keeps reading it until it exits.
#[cfg(unix)]
#[derive(Debug)]
pub struct InheritedQuic {
    handed: crate::handover::HandedQuic,
}

#[cfg(unix)]
impl InheritedQuic {
    pub(crate) fn new(handed: crate::handover::HandedQuic) -> InheritedQuic {
        InheritedQuic { handed }
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.handed.socket.local_addr()
    }
}

/// The one TLS 1.3 suite `tls` allows, with its key size; `None` if it allows several.
fn only_suite(tls: &rustls::ServerConfig) -> Option<(String, u16)> {
    let mut suites = tls
        .crypto_provider()
        .cipher_suites
        .iter()
        .filter(|suite| suite.tls13().is_some());
    let suite = suites.next()?;
    if suites.next().is_some() {
        return None;
    }
    let name = suite.suite().as_str()?.to_owned();
    let bits = crate::tls::cipher_bits(&name);
    Some((name, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_and_cert() -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()),
        );
        (certified.cert.der().clone(), key)
    }

    /// The TCP listeners' kind of configuration: several TLS 1.3 suites.
    fn tcp_config() -> Arc<rustls::ServerConfig> {
        let (cert, key) = key_and_cert();
        let config =
            crate::tls::server_config(vec![cert], key, crate::tls::ClientAuth::None).unwrap();
        Arc::new(config)
    }

    #[test]
    fn outside_a_runtime_bind_fails_instead_of_panicking() {
        let error = QuicListener::bind("127.0.0.1:0".parse().unwrap(), tcp_config()).unwrap_err();
        assert!(matches!(error, QuicListenerError::Io(_)), "{error}");
    }

    #[tokio::test]
    async fn the_cipher_is_reported_only_when_one_suite_is_allowed() {
        let several = QuicListener::bind("127.0.0.1:0".parse().unwrap(), tcp_config()).unwrap();
        assert_eq!(several.tls().cipher(), None);
        let (cert, key) = key_and_cert();
        let one =
            crate::http3::server_config(vec![cert], key, crate::tls::ClientAuth::None).unwrap();
        let one = QuicListener::bind("127.0.0.1:0".parse().unwrap(), Arc::new(one)).unwrap();
        assert_eq!(one.tls().cipher(), Some(("TLS13_AES_128_GCM_SHA256", 128)));
    }
}
