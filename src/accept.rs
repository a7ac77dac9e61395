//! [`Accept`]: the steps between accepting a connection and serving HTTP on it (PROXY
//! protocol, TLS, your own), in axum-server's shape, composed with [`Accept::then`].

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::ClientInfoBuilder;
use crate::io::StreamSocket;
use crate::BoxError;

/// A connection on its way to being served: its stream, the handle being built for it
/// (addresses, options, and what earlier steps found: TLS session, PROXY header), and bytes an
/// earlier step read past what it needed (served before the stream is read again).
#[derive(Debug)]
#[non_exhaustive]
pub struct Accepted<S> {
    /// The stream.
    pub stream: S,
    /// The client's handle, being built.
    pub client: ClientInfoBuilder,
    /// Bytes read from `stream` and not consumed.
    pub unread: Bytes,
}

impl<S> Accepted<S> {
    /// A connection just accepted, with nothing read from it.
    pub fn new(stream: S, client: ClientInfoBuilder) -> Self {
        Accepted {
            stream,
            client,
            unread: Bytes::new(),
        }
    }

    /// The same connection over another stream (a step that wraps the stream: TLS).
    pub fn map<T>(self, stream: impl FnOnce(S) -> T) -> Accepted<T> {
        Accepted {
            stream: stream(self.stream),
            client: self.client,
            unread: self.unread,
        }
    }
}

/// Why a connection was refused before HTTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The PROXY protocol header was refused: the source is a
    /// [`ProxyError`](crate::proxy::ProxyError) (`error.downcast_ref::<ProxyError>()`).
    #[error(transparent)]
    Proxy(BoxError),
    /// The TLS handshake failed or timed out: the source is a
    /// [`TlsError`](crate::tls::TlsError) (`error.downcast_ref::<TlsError>()`).
    #[error(transparent)]
    Tls(BoxError),
    /// Reading or writing the socket failed.
    #[error("accepting the connection: {0}")]
    Io(#[from] io::Error),
    /// An acceptor of your own refused the connection.
    #[error("refused by the acceptor: {0}")]
    Refused(#[source] BoxError),
}

/// One step between accepting a connection and serving HTTP on it (axum-server's `Accept`):
/// it gets the connection as it is so far and hands it on, maybe over another stream.
///
/// The crate's steps are [`ProxyProtocol`](crate::proxy::ProxyProtocol) (on TCP) and
/// [`TlsAcceptor`](crate::tls::TlsAcceptor); chain steps with [`then`](Self::then) (PROXY first,
/// then TLS) and give the chain to [`Listener::acceptor`](crate::Listener::acceptor).
/// Implement it for a step of your own (a handshake of another protocol, a check of the
/// peer). Each step runs in the connection's own task, so a slow one delays nobody else; a
/// [`Server`](crate::Server) counts refusals and cuts steps still running when a shutdown
/// passes its deadline.
///
/// ```
/// use std::future::{ready, Ready};
/// use hyper_remote_client::{accept::{Accept, AcceptError, Accepted}};
/// use tokio::net::TcpStream;
///
/// /// Refuses peers outside 10.0.0.0/8.
/// struct InternalOnly;
///
/// impl Accept<TcpStream> for InternalOnly {
///     type Stream = TcpStream;
///     type Future = Ready<Result<Accepted<TcpStream>, AcceptError>>;
///
///     fn accept(&self, accepted: Accepted<TcpStream>) -> Self::Future {
///         let internal = matches!(accepted.client.remote_ip(),
///             Some(std::net::IpAddr::V4(ip)) if ip.octets()[0] == 10);
///         ready(if internal {
///             Ok(accepted)
///         } else {
///             Err(AcceptError::Refused("not an internal address".into()))
///         })
///     }
/// }
/// ```
pub trait Accept<I>: Send + Sync + 'static {
    /// The stream this step hands on.
    type Stream: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static;
    /// What [`accept`](Self::accept) returns.
    type Future: Future<Output = Result<Accepted<Self::Stream>, AcceptError>> + Send + 'static;

    /// Takes the connection one step further.
    fn accept(&self, accepted: Accepted<I>) -> Self::Future;

    /// Whether connections from `peer` will report another client's address (a trusted
    /// proxy): a server then applies its per-IP limit to that address, once known, instead
    /// of to `peer`.
    fn reports_other_address(&self, peer: IpAddr) -> bool {
        let _ = peer;
        false
    }

    /// This step, then `next`: a step that hands on what `next` makes of the connection.
    fn then<B>(self, next: B) -> impl Accept<I, Stream = B::Stream>
    where
        Self: Sized,
        B: Accept<Self::Stream>,
    {
        Chain {
            first: self,
            next: Arc::new(next),
        }
    }
}

/// Two steps, one after the other: what [`Accept::then`] makes.
#[derive(Debug)]
struct Chain<A, B> {
    first: A,
    next: Arc<B>,
}

impl<I, A, B> Accept<I> for Chain<A, B>
where
    A: Accept<I>,
    B: Accept<A::Stream>,
{
    type Stream = B::Stream;
    type Future = BoxFuture<Result<Accepted<B::Stream>, AcceptError>>;

    fn accept(&self, accepted: Accepted<I>) -> Self::Future {
        let first = self.first.accept(accepted);
        let next = self.next.clone();
        Box::pin(async move { next.accept(first.await?).await })
    }

    fn reports_other_address(&self, peer: IpAddr) -> bool {
        self.first.reports_other_address(peer)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The stream of an accepted connection, whatever the steps made of it.
pub(crate) trait Io: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static {}

impl<T> Io for T where T: AsyncRead + AsyncWrite + StreamSocket + Unpin + Send + 'static {}

pub(crate) type BoxIo = Box<dyn Io>;

/// A chain of steps of any type, for a listener to hold.
pub(crate) trait Pipeline<I>: Send + Sync {
    fn accept(&self, accepted: Accepted<I>) -> BoxFuture<Result<Accepted<BoxIo>, AcceptError>>;

    fn reports_other_address(&self, peer: IpAddr) -> bool;
}

impl<I, A: Accept<I>> Pipeline<I> for A {
    fn accept(&self, accepted: Accepted<I>) -> BoxFuture<Result<Accepted<BoxIo>, AcceptError>> {
        let future = Accept::accept(self, accepted);
        Box::pin(async move {
            let accepted = future.await?;
            Ok(accepted.map(|stream| Box::new(stream) as BoxIo))
        })
    }

    fn reports_other_address(&self, peer: IpAddr) -> bool {
        Accept::reports_other_address(self, peer)
    }
}

impl<I> std::fmt::Debug for dyn Pipeline<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}
