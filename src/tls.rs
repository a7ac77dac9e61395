//! The TLS acceptor (feature `tls`): handshakes with tokio-rustls, bounded in time, and fills
//! [`TlsInfo`](crate::TlsInfo) from the session.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::{ProtocolVersion, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::accept::{Accept, AcceptError, Accepted};
use crate::client::{ClientInfoBuilder, TlsInfo};
use crate::io::StreamSocket;
use crate::options::Options;
use crate::remote::RemoteClient;

/// Why a TLS connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The handshake did not finish within [`Options::tls_setup_timeout`].
    #[error("TLS handshake timed out")]
    Timeout,
    /// The handshake failed: not TLS, no shared protocol or cipher, a bad certificate...
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The socket's addresses could not be read.
    #[error("could not read the socket's addresses: {0}")]
    Io(#[source] io::Error),
    /// A certificate or key file could not be read ([`server_config_from_pem`]).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file holds no usable PEM ([`server_config_from_pem`]).
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
        /// The PEM parser's error, where there is one.
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    /// rustls refused the configuration (a key that does not match the certificate...).
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Whether the server asks the client for a certificate.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// Ask for a certificate signed by one of these roots; accept clients without one.
    Request(RootCertStore),
    /// Require a certificate signed by one of these roots.
    Require(RootCertStore),
}

/// A rustls server configuration for `cert_chain` and `key`, using the ring crypto
/// provider, TLS 1.3 and 1.2, offering ALPN `h2` and `http/1.1`, and verifying client
/// certificates as `client_auth` says.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: ClientAuth,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let verifier = |roots: RootCertStore| {
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
    };
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Request(roots) => builder.with_client_cert_verifier(
            verifier(roots)
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        ),
        ClientAuth::Require(roots) => builder.with_client_cert_verifier(
            verifier(roots)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        ),
    };
    let mut config = builder.with_single_cert(cert_chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// [`server_config`] from PEM files: `cert` holds the certificate chain (end entity first),
/// `key` the private key (PKCS#8, PKCS#1 or SEC1). Errors name the file that failed.
///
/// ```no_run
/// # fn run() -> Result<(), hyper_remote_client::TlsError> {
/// use std::sync::Arc;
/// use hyper_remote_client::{server_config_from_pem, ClientAuth, Listener, TlsAcceptor};
///
/// let config = server_config_from_pem("cert.pem", "key.pem", ClientAuth::None)?;
/// let acceptor = TlsAcceptor::new(Arc::new(config));
/// // Listener::tcp(tcp_listener).with_tls(acceptor)
/// # Ok(())
/// # }
/// ```
pub fn server_config_from_pem(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
    client_auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::File {
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |path: &Path, what: &str, source| TlsError::Pem {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
    };
    let (cert, key) = (cert.as_ref(), key.as_ref());
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, "not a PEM certificate chain", Some(e)))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "no certificate found in the file", None));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            pem_error(key, "no private key found in the file", Some(e))
        }
        e => pem_error(key, "not a PEM private key", Some(e)),
    })?;
    server_config(chain, key_der, client_auth).map_err(TlsError::Config)
}

/// Accepts TLS on any stream (TCP, unix) and makes a [`RemoteClient`] of it, with the
/// session's [`TlsInfo`] in its [`ClientInfo`](crate::ClientInfo).
///
/// The handshake is bounded by [`Options::tls_setup_timeout`]. Run it in the connection's
/// own task, not in the accept loop, so a slow handshake delays nobody else.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor for `config` (see [`server_config`]; a config of your own needs its ALPN
    /// protocols set for HTTP/2 to be chosen).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
        }
    }

    /// Runs the handshake on `stream`, then builds the client from `client` (addresses
    /// and options, captured before the handshake) plus the session: for your own accept
    /// loop. A [`Server`](crate::Server) takes the acceptor as a step of its listener instead
    /// ([`Listener::with_tls`](crate::Listener::with_tls), [`Accept`]).
    pub async fn accept_stream<S>(
        &self,
        stream: S,
        client: ClientInfoBuilder,
    ) -> Result<RemoteClient<TlsStream<S>>, TlsError>
    where
        S: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
    {
        let (stream, client) = handshake(self.inner.clone(), stream, client).await?;
        Ok(RemoteClient::new(stream, client.build()))
    }

    /// [`accept`](Self::accept) for an accepted TCP stream: captures its addresses, sets
    /// `TCP_NODELAY`.
    pub async fn accept_tcp(
        &self,
        stream: TcpStream,
        options: impl Into<Arc<Options>>,
    ) -> Result<RemoteClient<TlsStream<TcpStream>>, TlsError> {
        stream.set_nodelay(true).map_err(TlsError::Io)?;
        let client = crate::ClientInfo::builder_for_tcp(&stream).map_err(TlsError::Io)?;
        self.accept_stream(stream, client.options(options)).await
    }

    /// [`accept_stream`](Self::accept_stream) for an accepted unix stream: captures its paths and the
    /// peer's credentials.
    #[cfg(unix)]
    pub async fn accept_unix(
        &self,
        stream: tokio::net::UnixStream,
        options: impl Into<Arc<Options>>,
    ) -> Result<RemoteClient<TlsStream<tokio::net::UnixStream>>, TlsError> {
        let client = crate::ClientInfo::builder_for_unix(&stream).map_err(TlsError::Io)?;
        self.accept_stream(stream, client.options(options)).await
    }
}

/// The handshake, bounded by the client's `tls_setup_timeout`; the client gains the session.
async fn handshake<S>(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: S,
    client: ClientInfoBuilder,
) -> Result<(TlsStream<S>, ClientInfoBuilder), TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = client.options_ref().map_or_else(
        || Options::default().tls_setup_timeout(),
        |o| o.tls_setup_timeout(),
    );
    #[cfg(feature = "metrics")]
    let metric = crate::telemetry::Handshake::start();
    let handshake = acceptor.accept(stream);
    let result = match deadline {
        Some(deadline) => tokio::time::timeout(deadline, handshake)
            .await
            .map_err(|_| TlsError::Timeout)
            .and_then(|result| result.map_err(TlsError::Handshake)),
        None => handshake.await.map_err(TlsError::Handshake),
    };
    let stream = match result {
        Ok(stream) => stream,
        Err(error) => {
            #[cfg(feature = "metrics")]
            metric.failed(match error {
                TlsError::Timeout => "timeout",
                _ => "error",
            });
            return Err(error);
        }
    };
    let tls = session_info(stream.get_ref().1);
    #[cfg(feature = "metrics")]
    metric.succeeded(tls.protocol());
    Ok((stream, client.tls(tls)))
}

impl<S> Accept<S> for TlsAcceptor
where
    S: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Future = Pin<Box<dyn Future<Output = Result<Accepted<TlsStream<S>>, AcceptError>> + Send>>;

    /// The handshake. Bytes an earlier step read past its part can only be a start that is
    /// not TLS: refused.
    fn accept(&self, accepted: Accepted<S>) -> Self::Future {
        let acceptor = self.inner.clone();
        Box::pin(async move {
            if !accepted.unread.is_empty() {
                return Err(TlsError::Handshake(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the connection does not start with a TLS handshake",
                ))
                .into());
            }
            let (stream, client) = handshake(acceptor, accepted.stream, accepted.client).await?;
            Ok(Accepted::new(stream, client))
        })
    }
}

fn session_info(conn: &ServerConnection) -> TlsInfo {
    let protocol = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let (cipher_name, cipher_bits) = match conn.negotiated_cipher_suite() {
        Some(suite) => {
            let name = suite
                .suite()
                .as_str()
                .map_or_else(|| format!("{:?}", suite.suite()), str::to_owned);
            let bits = cipher_bits(&name);
            (name, bits)
        }
        None => (String::new(), 0),
    };
    let mut info = TlsInfo::new(protocol, cipher_name, cipher_bits);
    if let Some(alpn) = conn.alpn_protocol() {
        info = info.with_alpn_protocol(Bytes::copy_from_slice(alpn));
    }
    if let Some(name) = conn.server_name() {
        info = info.with_server_name(name);
    }
    if let Some(chain) = conn.peer_certificates() {
        info = info.with_peer_certificates(
            chain
                .iter()
                .map(|cert| Bytes::copy_from_slice(cert.as_ref()))
                .collect(),
        );
    }
    info
}

/// The key size of a cipher suite, from its IANA name.
fn cipher_bits(name: &str) -> u16 {
    if name.contains("AES_128") {
        128
    } else if name.contains("AES_256") || name.contains("CHACHA20") {
        256
    } else {
        0
    }
}
