//! The TLS acceptor (feature `tls`): handshakes with tokio-rustls, bounded in time, and fills
//! [`TlsInfo`] from the session, and the configurations it runs with.

/// The rustls crate this module builds on (its `ServerConfig`, certificate types...).
pub use rustls;

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni, ServerConnection, WantsServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ConfigBuilder, ProtocolVersion, RootCertStore, ServerConfig};
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
    /// One certificate of [`server_config_with_sni`] was refused: a name that is not a DNS
    /// name, or that the certificate is not valid for, or given twice; a key that does not
    /// match its certificate...
    #[error("{}: {source}", certificate_of(name.as_deref()))]
    Certificate {
        /// The SNI name the certificate was given for; `None` for the default certificate.
        name: Option<String>,
        /// What rustls (or this crate) found wrong.
        #[source]
        source: rustls::Error,
    },
    /// A reload from files ([`TlsAcceptor::reload_from_pem_files`],
    /// [`TlsAcceptor::reload_from_files`]) did not finish reading them within its timeout: a
    /// FIFO at the path, a hung NFS or FUSE mount... The configuration in use stays. The read
    /// goes on, on its own thread, and its result is thrown away; until it returns,
    /// further reloads from files of the acceptor are refused ([`TlsError::ReloadInProgress`]).
    #[error(
        "{}: not read within {timeout:?} (a FIFO? a hung network mount?); the TLS configuration in use stays",
        list_paths(paths)
    )]
    ReloadTimedOut {
        /// The files the reload was reading.
        paths: Vec<PathBuf>,
        /// The timeout it was given.
        timeout: Duration,
    },
    /// A reload from files was refused because another one of the same acceptor (or of a
    /// clone) is still reading its files: one still under way, or one that timed out and
    /// whose blocking read has not returned ([`TlsError::ReloadTimedOut`]). Nothing changed.
    #[error(
        "a previous certificate reload is still reading {}; not starting another",
        list_paths(paths)
    )]
    ReloadInProgress {
        /// The files the other reload is reading.
        paths: Vec<PathBuf>,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "its files".to_owned();
    }
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn certificate_of(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("TLS certificate for {name}"),
        None => "default TLS certificate".to_owned(),
    }
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
    let config = config_builder(client_auth)?.with_single_cert(cert_chain, key)?;
    Ok(with_alpn(config))
}

/// The settings [`server_config`] and [`server_config_with_sni`] share, up to the
/// certificates: ring provider, TLS 1.3 and 1.2, client authentication.
fn config_builder(
    client_auth: ClientAuth,
) -> Result<ConfigBuilder<ServerConfig, WantsServerCert>, rustls::Error> {
    config_builder_with(
        rustls::crypto::ring::default_provider(),
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        client_auth,
    )
}

/// [`config_builder`] with another provider and protocol versions (HTTP/3's: TLS 1.3, one
/// suite).
pub(crate) fn config_builder_with(
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_auth: ClientAuth,
) -> Result<ConfigBuilder<ServerConfig, WantsServerCert>, rustls::Error> {
    let provider = Arc::new(provider);
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let verifier = |roots: RootCertStore| {
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
    };
    Ok(match client_auth {
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
    })
}

/// The ALPN protocols every configuration of this crate offers: `h2`, then `http/1.1`.
fn with_alpn(mut config: ServerConfig) -> ServerConfig {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A rustls server configuration with one certificate per server name, chosen by the name
/// the client sends in the TLS SNI extension; otherwise as [`server_config`] (ring provider,
/// TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`, `client_auth`).
///
/// `certs` are `(DNS name, certificate chain, private key)`: each name is matched exactly
/// (case-insensitively; no wildcards: give `*.example.com` certificates once per name), and
/// each certificate must be valid for its name. The same chain may serve several names.
///
/// A client that sends no SNI (one that connects by IP address, say), or a name not in
/// `certs`, gets the `default` certificate if there is one; without a default, its
/// handshake is refused (rustls sends an `access_denied` alert; the acceptor returns
/// [`TlsError::Handshake`], and a [`Server`](crate::Server) counts a failed handshake).
///
/// Errors: [`TlsError::Certificate`] names the certificate that was refused (a name that is
/// not a DNS name, that its certificate is not valid for, or that is given twice; a key that
/// does not match its certificate); [`TlsError::Config`] if there are no certificates at all.
///
/// To reload, build a new configuration and hand it to [`TlsAcceptor::reload`].
///
/// ```no_run
/// # fn run() -> Result<(), hyper_remote_client::tls::TlsError> {
/// use std::sync::Arc;
/// use hyper_remote_client::tls::{
///     cert_and_key_from_pem, server_config_with_sni, ClientAuth, TlsAcceptor,
/// };
///
/// let (a_chain, a_key) = cert_and_key_from_pem("a.example.pem", "a.example.key")?;
/// let (b_chain, b_key) = cert_and_key_from_pem("b.example.pem", "b.example.key")?;
/// let config = server_config_with_sni(
///     [
///         ("a.example".to_owned(), a_chain, a_key),
///         ("b.example".to_owned(), b_chain, b_key),
///     ],
///     None, // no default: a client without SNI, or with another name, is refused
///     ClientAuth::None,
/// )?;
/// let acceptor = TlsAcceptor::new(Arc::new(config));
/// // Listener::tcp(tcp_listener).with_tls(acceptor.clone())
/// # Ok(())
/// # }
/// ```
pub fn server_config_with_sni<I>(
    certs: I,
    default: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    client_auth: ClientAuth,
) -> Result<ServerConfig, TlsError>
where
    I: IntoIterator<Item = (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
{
    let builder = config_builder(client_auth).map_err(TlsError::Config)?;
    let provider = builder.crypto_provider().clone();
    let refused = |name: Option<&str>, source| TlsError::Certificate {
        name: name.map(str::to_owned),
        source,
    };
    let mut by_name = ResolvesServerCertUsingSni::new();
    let mut names = HashSet::new();
    for (name, chain, key) in certs {
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| refused(Some(&name), e))?;
        by_name
            .add(&name, certified)
            .map_err(|e| refused(Some(&name), e))?;
        // `add` checked that it is a DNS name; rustls lowercases names, here and in hellos.
        if !names.insert(name.to_ascii_lowercase()) {
            let twice = rustls::Error::General("the name is given twice".to_owned());
            return Err(refused(Some(&name), twice));
        }
    }
    let resolver: Arc<dyn ResolvesServerCert> = match default {
        Some((chain, key)) => Arc::new(SniOrDefault {
            by_name,
            names,
            default: Arc::new(
                CertifiedKey::from_der(chain, key, &provider).map_err(|e| refused(None, e))?,
            ),
        }),
        None if names.is_empty() => {
            return Err(TlsError::Config(rustls::Error::General(
                "no certificate: every handshake would be refused".to_owned(),
            )))
        }
        None => Arc::new(by_name),
    };
    Ok(with_alpn(builder.with_cert_resolver(resolver)))
}

/// [`ResolvesServerCertUsingSni`], with a certificate for hellos without a known name.
#[derive(Debug)]
struct SniOrDefault {
    by_name: ResolvesServerCertUsingSni,
    /// The names `by_name` knows (lowercase, as rustls has them).
    names: HashSet<String>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniOrDefault {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match client_hello.server_name() {
            Some(name) if self.names.contains(name) => self.by_name.resolve(client_hello),
            _ => Some(self.default.clone()),
        }
    }
}

/// [`server_config`] from PEM files: `cert` holds the certificate chain (end entity first),
/// `key` the private key (PKCS#8, PKCS#1 or SEC1). Errors name the file that failed.
///
/// ```no_run
/// # fn run() -> Result<(), hyper_remote_client::tls::TlsError> {
/// use std::sync::Arc;
/// use hyper_remote_client::{Listener, tls::{server_config_from_pem, ClientAuth, TlsAcceptor}};
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
    let (chain, key) = cert_and_key_from_pem(cert, key)?;
    server_config(chain, key, client_auth).map_err(TlsError::Config)
}

/// Reads a certificate chain and its private key from PEM files, as
/// [`server_config_from_pem`] does: `cert` holds the chain (end entity first), `key` the
/// private key (PKCS#8, PKCS#1 or SEC1). Errors ([`TlsError::File`], [`TlsError::Pem`])
/// name the file that failed. For [`server_config_with_sni`], or a [`server_config`] of
/// one's own.
pub fn cert_and_key_from_pem(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
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
    Ok((chain, key_der))
}

/// Accepts TLS on any stream (TCP, unix) and makes a [`RemoteClient`] of it, with the
/// session's [`TlsInfo`] in its [`ClientInfo`](crate::ClientInfo).
///
/// The handshake is bounded by [`Options::tls_setup_timeout`]. Run it in the connection's
/// own task, not in the accept loop, so a slow handshake delays nobody else.
///
/// The configuration can be replaced while serving, without a restart: the acceptor's clones
/// share one current configuration, and [`reload`](Self::reload) (or
/// [`reload_from_pem_files`](Self::reload_from_pem_files), which reads the files off the
/// runtime, bounded in time) through any of them swaps it for all. New handshakes use the new
/// configuration; connections already set up keep the session (and certificate) they have.
/// Keep a clone when handing the acceptor to a listener:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use hyper_remote_client::{Listener, tls::{server_config_from_pem, ClientAuth, TlsAcceptor}};
///
/// let acceptor = TlsAcceptor::new(Arc::new(server_config_from_pem(
///     "cert.pem",
///     "key.pem",
///     ClientAuth::None,
/// )?));
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// let listener = Listener::tcp(tcp).with_tls(acceptor.clone());
/// // ... serve `listener`; later, once the files are renewed (on SIGHUP, say):
/// let reload = acceptor.reload_from_pem_files(
///     "cert.pem",
///     "key.pem",
///     ClientAuth::None,
///     TlsAcceptor::RELOAD_TIMEOUT,
/// );
/// if let Err(error) = reload.await {
///     eprintln!("certificate not reloaded, the old one stays in use: {error}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    /// The configuration new handshakes use, shared by the clones. A handshake takes it with
    /// a read lock and an `Arc` clone; a reload holds the write lock for a pointer swap.
    config: Arc<RwLock<Arc<ServerConfig>>>,
    /// The files a reload from files is reading on its thread (`None`: none is),
    /// shared by the clones: one such read at a time, so that reloads repeated against a
    /// path that never answers do not pile up stuck threads.
    reading: Arc<Mutex<Option<Vec<PathBuf>>>>,
}

/// The claim of a reload from files on its acceptor's `reading` slot; moved into the reading
/// thread, so that the slot is given back when the read returns (or panics), whether or not
/// anybody still waits for it.
struct ReadingFiles(Arc<Mutex<Option<Vec<PathBuf>>>>);

impl ReadingFiles {
    fn claim(
        slot: &Arc<Mutex<Option<Vec<PathBuf>>>>,
        files: &[PathBuf],
    ) -> Result<ReadingFiles, TlsError> {
        let mut reading = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(paths) = &*reading {
            return Err(TlsError::ReloadInProgress {
                paths: paths.clone(),
            });
        }
        *reading = Some(files.to_vec());
        Ok(ReadingFiles(slot.clone()))
    }
}

impl Drop for ReadingFiles {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor for `config` (see [`server_config`] and [`server_config_with_sni`]; a
    /// config of your own needs its ALPN protocols set for HTTP/2 to be chosen).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor {
            config: Arc::new(RwLock::new(config)),
            reading: Arc::new(Mutex::new(None)),
        }
    }

    /// A timeout for [`reload_from_pem_files`](Self::reload_from_pem_files) and
    /// [`reload_from_files`](Self::reload_from_files), 10 s: local files are read in
    /// milliseconds, even on a busy machine; a path that has not answered after 10 s (a FIFO,
    /// an NFS server gone) is not going to answer soon. The inspector example uses it.
    pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

    /// The configuration new handshakes use now.
    pub fn config(&self) -> Arc<ServerConfig> {
        // The lock is only held to read or replace an `Arc`, which cannot panic: a poisoned
        // lock still holds a whole value.
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the configuration, for this acceptor and all its clones: handshakes that
    /// start from now on use `config`; connections already set up, and handshakes under way,
    /// keep the one they started with. Any configuration will do: one certificate
    /// ([`server_config`]), several by SNI ([`server_config_with_sni`]), or one's own (with
    /// its ALPN protocols set for HTTP/2 to be chosen).
    pub fn reload(&self, config: Arc<ServerConfig>) {
        let old = std::mem::replace(
            &mut *self.config.write().unwrap_or_else(PoisonError::into_inner),
            config,
        );
        drop(old); // after the lock is released
    }

    /// Reads `cert` and `key` and [`reload`](Self::reload)s with the configuration
    /// [`server_config_from_pem`] makes of them. On error (a file missing or not PEM, a key
    /// that does not match the certificate...) nothing changes: the configuration in use
    /// stays, and the error names the file that failed, as `server_config_from_pem`'s do.
    ///
    /// The files are read on the caller's thread, without a timeout: called from async code,
    /// it blocks a runtime worker for as long as the read takes, and a path that never
    /// answers (a FIFO, a hung NFS or FUSE mount) blocks it for ever, and with it the
    /// connections that worker serves. From async code, use
    /// [`reload_from_pem_files`](Self::reload_from_pem_files), its async twin.
    pub fn reload_from_pem(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_auth: ClientAuth,
    ) -> Result<(), TlsError> {
        let config = server_config_from_pem(cert, key, client_auth)?;
        self.reload(Arc::new(config));
        Ok(())
    }

    /// [`reload_from_pem`](Self::reload_from_pem) off the runtime: reads `cert` and `key` on a
    /// thread of its own (not a runtime worker), waits for it at most `timeout`
    /// ([`RELOAD_TIMEOUT`](Self::RELOAD_TIMEOUT) is a sensible value; [`Duration::MAX`]:
    /// no limit), then [`reload`](Self::reload)s with the configuration
    /// [`server_config_from_pem`] makes of the files.
    ///
    /// The errors are `reload_from_pem`'s (naming the file that failed), plus:
    ///
    /// - [`TlsError::ReloadTimedOut`], naming both files, when they were not read within
    ///   `timeout`. The configuration in use stays. The reading thread may stay stuck in the
    ///   read: a FIFO nobody writes to never returns, a hung mount returns when (if) it
    ///   recovers. That thread is lost (until then), not the server: handshakes and requests
    ///   go on, on the configuration in use, and whatever the read gives in the end is thrown
    ///   away (it can never replace a configuration loaded since). The thread is detached: it
    ///   does not keep the runtime from shutting down nor the process from exiting (a task of
    ///   tokio's blocking pool, [`tokio::task::spawn_blocking`], would: dropping a runtime
    ///   waits for them all).
    /// - [`TlsError::ReloadInProgress`] while such a read (or any other reload from files of
    ///   this acceptor or a clone) has not returned: one read at a time, so that a reload
    ///   repeated against a path that never answers costs one thread, not one per attempt.
    ///   Await one reload before starting the next.
    ///
    /// The returned future owns what it needs (`'static`, [`Send`]): it can be spawned.
    /// Dropping it before it ends changes nothing: no configuration is swapped in after the
    /// future is gone, and the read, if started, ends on its thread as after a timeout. It must
    /// run on a tokio runtime with the time driver enabled (the default runtimes have it), for
    /// the timeout.
    ///
    /// ```no_run
    /// # async fn run(acceptor: hyper_remote_client::tls::TlsAcceptor) {
    /// use hyper_remote_client::{tls::{ClientAuth, TlsAcceptor}};
    ///
    /// let reload = acceptor.reload_from_pem_files(
    ///     "/etc/ssl/example.pem",
    ///     "/etc/ssl/example.key",
    ///     ClientAuth::None,
    ///     TlsAcceptor::RELOAD_TIMEOUT,
    /// );
    /// match reload.await {
    ///     Ok(()) => eprintln!("certificate reloaded"),
    ///     // ReloadTimedOut, ReloadInProgress, or a file that is missing, not PEM...
    ///     Err(error) => eprintln!("certificate not reloaded, the old one stays: {error}"),
    /// }
    /// # }
    /// ```
    pub fn reload_from_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_auth: ClientAuth,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), TlsError>> + Send + 'static {
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        self.reload_from_files([cert.clone(), key.clone()], timeout, move || {
            server_config_from_pem(cert, key, client_auth)
        })
    }

    /// Runs `build` on a thread of its own (not a runtime worker), waits for it at most
    /// `timeout`, and [`reload`](Self::reload)s with the configuration it makes: for a
    /// configuration read from files that [`reload_from_pem_files`](Self::reload_from_pem_files)
    /// does not cover (several certificates for [`server_config_with_sni`], read with
    /// [`cert_and_key_from_pem`]; a client CA file; a configuration of one's own). `files` are
    /// the files `build` reads, for the errors.
    ///
    /// `build`'s error is returned as it is; otherwise the errors, the timeout, the one read
    /// at a time and the future are as for `reload_from_pem_files`
    /// ([`TlsError::ReloadTimedOut`] and [`TlsError::ReloadInProgress`] name `files`). A panic
    /// in `build` is resumed in the caller's task, as if `build` had run there.
    pub fn reload_from_files<F>(
        &self,
        files: impl IntoIterator<Item = PathBuf>,
        timeout: Duration,
        build: F,
    ) -> impl Future<Output = Result<(), TlsError>> + Send + 'static
    where
        F: FnOnce() -> Result<ServerConfig, TlsError> + Send + 'static,
    {
        let files = files.into_iter().collect::<Vec<_>>();
        let acceptor = self.clone();
        async move {
            let claim = ReadingFiles::claim(&acceptor.reading, &files)?;
            let (built, read) = tokio::sync::oneshot::channel();
            // A thread of its own, not tokio's blocking pool: dropping a runtime waits for
            // every task of its pool, and one stuck for ever in `open` would keep the process
            // from exiting. The thread is detached; the process's exit ends it.
            let started = std::thread::Builder::new()
                .name("tls-reload".to_owned())
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(build));
                    drop(claim); // the read returned: another reload may start
                    let _ = built.send(result); // nobody waits after a timeout: thrown away
                });
            let not_read = |kind, why: String| TlsError::File {
                path: files.first().cloned().unwrap_or_default(),
                source: io::Error::new(kind, format!("not read: {why}")),
            };
            if let Err(error) = started {
                let why = format!("no thread to read it on ({error})");
                return Err(not_read(error.kind(), why));
            }
            let config = match tokio::time::timeout(timeout, read).await {
                Ok(Ok(Ok(built))) => built?,
                Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
                // Not expected: the thread sends before it ends (`build`'s panics are caught).
                Ok(Err(_)) => {
                    let why = "the reading thread ended without an answer".to_owned();
                    return Err(not_read(io::ErrorKind::Other, why));
                }
                Err(_) => {
                    return Err(TlsError::ReloadTimedOut {
                        paths: files,
                        timeout,
                    })
                }
            };
            acceptor.reload(Arc::new(config));
            Ok(())
        }
    }

    /// The tokio-rustls acceptor for one handshake, on the current configuration.
    fn current(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
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
        let (stream, client) = handshake(self.current(), stream, client).await?;
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
        let acceptor = self.current();
        Box::pin(async move {
            if !accepted.unread.is_empty() {
                #[cfg(feature = "metrics")]
                crate::telemetry::Handshake::start().failed("error");
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

impl From<TlsError> for AcceptError {
    fn from(error: TlsError) -> AcceptError {
        AcceptError::Tls(Box::new(error))
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
pub(crate) fn cipher_bits(name: &str) -> u16 {
    if name.contains("AES_128") {
        128
    } else if name.contains("AES_256") || name.contains("CHACHA20") {
        256
    } else {
        0
    }
}
