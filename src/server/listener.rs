//! [`Listener`]: where a server accepts connections (TCP or unix), and the steps each
//! connection goes through before HTTP (PROXY protocol, TLS, your own: [`Accept`]).

use std::io;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::accept::{Accept, Pipeline};
use crate::client::Address;

/// A socket a [`Server`](super::Server) accepts connections on (TCP or unix), and the steps
/// before HTTP: [`with_proxy_protocol`](Self::with_proxy_protocol) then
/// [`with_tls`](Self::with_tls), or a chain of your own with [`acceptor`](Self::acceptor).
///
/// ```no_run
/// # #[cfg(all(feature = "tls", feature = "proxy-protocol"))]
/// # async fn run(config: std::sync::Arc<hyper_remote_client::tls::rustls::ServerConfig>) -> std::io::Result<()> {
/// use hyper_remote_client::{Listener, accept::Accept, proxy::ProxyProtocol, tls::TlsAcceptor};
///
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// // Behind a load balancer: its PROXY header first, then TLS, then HTTP.
/// let proxy = ProxyProtocol::required(["10.0.0.0/8".parse().unwrap()]);
/// let listener = Listener::tcp(tcp).acceptor(proxy.then(TlsAcceptor::new(config)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    pub(crate) kind: Kind,
    /// In a binary upgrade: serve this inherited socket with other steps than the old process
    /// did, on purpose.
    steps_change_allowed: bool,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Tcp {
        listener: TcpListener,
        steps: Steps<TcpStream>,
    },
    #[cfg(unix)]
    Unix {
        listener: tokio::net::UnixListener,
        steps: Steps<tokio::net::UnixStream>,
    },
}

/// The steps of a listener, as set: the crate's two, or a chain of the user's.
#[derive(Debug)]
pub(crate) struct Steps<I> {
    #[cfg(feature = "proxy-protocol")]
    proxy: Option<crate::proxy::ProxyProtocol>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
    custom: Option<Arc<dyn Pipeline<I>>>,
}

impl<I> Steps<I> {
    /// What these steps are, as a binary upgrade tells them to the next process.
    #[cfg(unix)]
    fn describe(&self) -> crate::handover::ListenerSteps {
        let mut described = crate::handover::ListenerSteps::default();
        if self.custom.is_some() {
            described.custom = true;
            return described;
        }
        #[cfg(feature = "tls")]
        {
            described.tls = self.tls.is_some();
        }
        #[cfg(feature = "proxy-protocol")]
        if let Some(proxy) = &self.proxy {
            described.proxy_protocol = match proxy.mode() {
                crate::proxy::ProxyMode::Required => Some(crate::handover::ProxyHeader::Required),
                crate::proxy::ProxyMode::Optional => Some(crate::handover::ProxyHeader::Optional),
                _ => None,
            };
        }
        described
    }
}

impl<I> Default for Steps<I> {
    fn default() -> Self {
        Steps {
            #[cfg(feature = "proxy-protocol")]
            proxy: None,
            #[cfg(feature = "tls")]
            tls: None,
            custom: None,
        }
    }
}

impl Steps<TcpStream> {
    /// The chain to run: `None` for plain HTTP.
    pub(crate) fn pipeline(self) -> Option<Arc<dyn Pipeline<TcpStream>>> {
        if self.custom.is_some() {
            return self.custom;
        }
        #[cfg(all(feature = "proxy-protocol", feature = "tls"))]
        if let (Some(proxy), Some(tls)) = (&self.proxy, &self.tls) {
            return Some(Arc::new(proxy.clone().then(tls.clone())));
        }
        #[cfg(feature = "proxy-protocol")]
        if let Some(proxy) = self.proxy {
            return Some(Arc::new(proxy));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            return Some(Arc::new(tls));
        }
        None
    }
}

#[cfg(unix)]
impl Steps<tokio::net::UnixStream> {
    /// The chain to run: `None` for plain HTTP.
    pub(crate) fn pipeline(self) -> Option<Arc<dyn Pipeline<tokio::net::UnixStream>>> {
        if self.custom.is_some() {
            return self.custom;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            return Some(Arc::new(tls));
        }
        None
    }
}

impl Listener {
    /// A TCP listener.
    pub fn tcp(listener: TcpListener) -> Listener {
        Listener {
            kind: Kind::Tcp {
                listener,
                steps: Steps::default(),
            },
            steps_change_allowed: false,
        }
    }

    /// A unix socket listener. Unix clients are exempt from the per-IP limit.
    #[cfg(unix)]
    pub fn unix(listener: tokio::net::UnixListener) -> Listener {
        Listener {
            kind: Kind::Unix {
                listener,
                steps: Steps::default(),
            },
            steps_change_allowed: false,
        }
    }

    /// Serves TLS on this listener (after the PROXY header, where there is one): every
    /// connection's handshake runs in its own task, bounded by
    /// [`Options::tls_setup_timeout`](crate::Options::tls_setup_timeout).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, acceptor: crate::tls::TlsAcceptor) -> Listener {
        match &mut self.kind {
            Kind::Tcp { steps, .. } => steps.tls = Some(acceptor),
            #[cfg(unix)]
            Kind::Unix { steps, .. } => steps.tls = Some(acceptor),
        }
        self
    }

    /// Takes PROXY protocol headers on this TCP listener (before the TLS handshake, where there
    /// is TLS). The per-IP limit then applies to the original client's address; connections
    /// from trusted proxies are exempt from it at accept time. No effect on a unix listener.
    #[cfg(feature = "proxy-protocol")]
    pub fn with_proxy_protocol(mut self, proxy: crate::proxy::ProxyProtocol) -> Listener {
        if let Kind::Tcp { steps, .. } = &mut self.kind {
            steps.proxy = Some(proxy).filter(|p| p.mode() != crate::proxy::ProxyMode::Off);
        }
        self
    }

    /// Runs every connection of this TCP listener through `acceptor` (a step of your own, or a
    /// chain made with [`Accept::then`]) before HTTP, instead of the steps set with
    /// [`with_proxy_protocol`](Self::with_proxy_protocol) and [`with_tls`](Self::with_tls).
    pub fn acceptor<A: Accept<TcpStream>>(mut self, acceptor: A) -> Listener {
        if let Kind::Tcp { steps, .. } = &mut self.kind {
            steps.custom = Some(Arc::new(acceptor));
        }
        self
    }

    /// [`acceptor`](Self::acceptor) for a unix listener.
    #[cfg(unix)]
    pub fn unix_acceptor<A: Accept<tokio::net::UnixStream>>(mut self, acceptor: A) -> Listener {
        if let Kind::Unix { steps, .. } = &mut self.kind {
            steps.custom = Some(Arc::new(acceptor));
        }
        self
    }

    /// In a binary upgrade ([`Server::take_over`](super::Server::take_over)): this listener is
    /// an inherited socket that is to be served with other steps than the old process ran on
    /// it (TLS added or dropped, a PROXY header now required...). Without this, `take_over`
    /// refuses such a change, so that a new binary cannot, say, serve plain HTTP on the TLS
    /// port by mistake.
    pub fn allow_steps_change(mut self) -> Listener {
        self.steps_change_allowed = true;
        self
    }

    /// The listening socket, the steps run on its connections, and whether a change of them
    /// is allowed at a takeover.
    #[cfg(unix)]
    pub(crate) fn handover_view(
        &self,
    ) -> (
        std::os::fd::BorrowedFd<'_>,
        bool,
        crate::handover::ListenerSteps,
        bool,
    ) {
        use std::os::fd::AsFd;
        match &self.kind {
            Kind::Tcp { listener, steps } => (
                listener.as_fd(),
                false,
                steps.describe(),
                self.steps_change_allowed,
            ),
            Kind::Unix { listener, steps } => (
                listener.as_fd(),
                true,
                steps.describe(),
                self.steps_change_allowed,
            ),
        }
    }

    /// The address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<Address> {
        match &self.kind {
            Kind::Tcp { listener, .. } => listener.local_addr().map(Address::Inet),
            #[cfg(unix)]
            Kind::Unix { listener, .. } => listener
                .local_addr()
                .map(|addr| Address::Unix(addr.as_pathname().map(|p| p.to_path_buf()))),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::tcp(listener)
    }
}

#[cfg(unix)]
impl From<tokio::net::UnixListener> for Listener {
    fn from(listener: tokio::net::UnixListener) -> Listener {
        Listener::unix(listener)
    }
}

#[cfg(unix)]
impl From<crate::handover::InheritedListener> for Listener {
    fn from(listener: crate::handover::InheritedListener) -> Listener {
        match listener {
            crate::handover::InheritedListener::Tcp(listener) => Listener::tcp(listener),
            crate::handover::InheritedListener::Unix(listener) => Listener::unix(listener),
        }
    }
}
