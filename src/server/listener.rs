//! [`Listener`]: where a server accepts connections (TCP or unix, either under TLS).

use std::io;

use tokio::net::TcpListener;

use crate::client::Address;
#[cfg(feature = "tls")]
use crate::tls::TlsAcceptor;

/// A socket a [`Server`](super::Server) accepts connections on: TCP or unix, with or without
/// TLS.
#[derive(Debug)]
pub struct Listener {
    pub(crate) kind: Kind,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsAcceptor>,
    #[cfg(feature = "proxy-protocol")]
    pub(crate) proxy: Option<crate::proxy::ProxyProtocol>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl Listener {
    fn new(kind: Kind) -> Listener {
        Listener {
            kind,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "proxy-protocol")]
            proxy: None,
        }
    }

    /// A TCP listener.
    pub fn tcp(listener: TcpListener) -> Listener {
        Listener::new(Kind::Tcp(listener))
    }

    /// A unix socket listener. Unix clients are exempt from the per-IP limit.
    #[cfg(unix)]
    pub fn unix(listener: tokio::net::UnixListener) -> Listener {
        Listener::new(Kind::Unix(listener))
    }

    /// Serves TLS on this listener: every connection's handshake runs in its own task, bounded
    /// by [`Options::tls_setup_timeout`](crate::Options::tls_setup_timeout).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Listener {
        self.tls = Some(acceptor);
        self
    }

    /// Takes PROXY protocol headers on this TCP listener (before the TLS handshake, where there
    /// is TLS). The per-IP limit then applies to the original client's address; connections
    /// from trusted proxies are exempt from it at accept time.
    #[cfg(feature = "proxy-protocol")]
    pub fn with_proxy_protocol(mut self, proxy: crate::proxy::ProxyProtocol) -> Listener {
        self.proxy = Some(proxy).filter(|p| p.mode() != crate::proxy::ProxyMode::Off);
        self
    }

    /// The address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<Address> {
        match &self.kind {
            Kind::Tcp(listener) => listener.local_addr().map(Address::Inet),
            #[cfg(unix)]
            Kind::Unix(listener) => listener
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
