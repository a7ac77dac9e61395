//! Detach: take the raw connection over after an HTTP/1 upgrade (amphp's
//! `Response::upgrade`), with the client still tracked until the connection is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::ClientInfo;
use crate::io::ClientIo;

/// Why a connection could not be detached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetachError {
    /// The request carries no [`ClientInfo`]: it did not come through a
    /// [`ClientLayer`](crate::ClientLayer).
    #[error("the request has no ClientInfo (is ClientLayer in the stack?)")]
    NoClient,
    /// HTTP/2 multiplexes many requests on one connection: it cannot be handed over.
    #[error("an HTTP/2 connection cannot be detached")]
    Http2,
    /// HTTP/3 (QUIC) has no upgrade to hand a connection over with; extended CONNECT and
    /// WebTransport are not offered.
    #[error("an HTTP/3 connection cannot be detached (extended CONNECT and WebTransport are not offered)")]
    Http3,
    /// hyper did not upgrade: the response was not `101` (or `2xx` to `CONNECT`), or the
    /// connection ended first.
    #[error("the connection was not upgraded: {0}")]
    NotUpgraded(#[source] hyper::Error),
}

/// Asks to take over the connection of `req` once the response upgrades it.
///
/// ```no_run
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use hyper_remote_client::{detach, RequestBody};
/// use tokio::io::AsyncWriteExt;
///
/// async fn upgrade(mut req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
///     let on_detach = detach(&mut req);
///     tokio::spawn(async move {
///         // Resolves once hyper has written the 101 and handed the connection over.
///         if let Ok(mut conn) = on_detach.await {
///             let _ = conn.write_all(b"hello, raw bytes\n").await;
///             // Dropping `conn` closes the client; `on_close` callbacks run then.
///         }
///     });
///     let mut response = Response::new(String::new());
///     *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
///     response.headers_mut().insert("connection", "upgrade".parse().unwrap());
///     response.headers_mut().insert("upgrade", "raw".parse().unwrap());
///     Ok(response)
/// }
/// ```
///
/// Answer the request with `101 Switching Protocols` (or `2xx` to `CONNECT`); the returned
/// future resolves to the [`Detached`] connection once hyper has written that response. Await
/// it in a task of its own, not in the handler, which must return the response first. Over
/// HTTP/2 it fails at once with [`DetachError::Http2`], except for a `CONNECT` stream (an
/// extended CONNECT such as WebSocket over HTTP/2, where hyper enables it): that stream is
/// handed over, not the connection, so the client is not exported and the stream does not keep
/// it open.
pub fn detach<B>(req: &mut Request<B>) -> OnDetach {
    let client = req.extensions().get::<ClientInfo>().cloned();
    let state = match client {
        None => Err(DetachError::NoClient),
        Some(_) if req.version() == Version::HTTP_2 && req.method() != Method::CONNECT => {
            Err(DetachError::Http2)
        }
        Some(_) if req.version() == Version::HTTP_3 => Err(DetachError::Http3),
        Some(client) => Ok((client, hyper::upgrade::on(req))),
    };
    OnDetach { state: Some(state) }
}

/// The future [`detach`] returns.
#[derive(Debug)]
#[must_use = "the connection is only handed over to whoever awaits this"]
pub struct OnDetach {
    state: Option<Result<(ClientInfo, OnUpgrade), DetachError>>,
}

impl Future for OnDetach {
    type Output = Result<Detached, DetachError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (client, on_upgrade) = match self.state.as_mut() {
            Some(Ok(pending)) => pending,
            Some(Err(_)) => match self.state.take() {
                Some(Err(error)) => return Poll::Ready(Err(error)),
                _ => unreachable!("just matched"),
            },
            None => panic!("OnDetach polled after completion"),
        };
        let result = std::task::ready!(Pin::new(on_upgrade).poll(cx));
        let client = client.clone();
        self.state = None;
        Poll::Ready(match result {
            Ok(upgraded) => Ok(Detached {
                io: TokioIo::new(upgraded),
                client,
            }),
            Err(error) => Err(DetachError::NotUpgraded(error)),
        })
    }
}

/// A connection handed over after an upgrade (see [`detach`]): the raw bytes both ways (any bytes the peer
/// sent after the request head come first), and its [`ClientInfo`], which reports
/// [`is_exported`](ClientInfo::is_exported).
///
/// The client stays open, in a server's registry and limits, until this is dropped (or its
/// stream, if taken out with [`into_parts`](Self::into_parts)); then `on_close` runs.
/// [`ClientInfo::close`] shuts the socket down even while nobody reads it; reads and writes
/// fail from then on.
#[derive(Debug)]
pub struct Detached {
    io: TokioIo<Upgraded>,
    client: ClientInfo,
}

/// The parts of a [`Detached`] connection: the stream, still wrapped so the client is
/// tracked, and the bytes the peer had already sent.
#[derive(Debug)]
#[non_exhaustive]
pub struct DetachedParts<S> {
    /// The connection's stream (`ClientIo::get_ref` / `get_mut` reach the socket or TLS
    /// stream; `ClientIo::into_inner` unwraps it).
    pub io: ClientIo<S>,
    /// Bytes read from the peer but not yet consumed: read these before `io`.
    pub read_buf: Bytes,
}

impl Detached {
    /// The client this connection belongs to.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// Takes the stream out, if it is an `S` (`TcpStream`, `TlsStream<TcpStream>`,
    /// `UnixStream`...); otherwise gives `self` back.
    pub fn into_parts<S>(self) -> Result<DetachedParts<S>, Detached>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let Detached { io, client } = self;
        match io.into_inner().downcast::<TokioIo<ClientIo<S>>>() {
            Ok(parts) => Ok(DetachedParts {
                io: parts.io.into_inner(),
                read_buf: parts.read_buf,
            }),
            Err(upgraded) => Err(Detached {
                io: TokioIo::new(upgraded),
                client,
            }),
        }
    }
}

impl AsyncRead for Detached {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Detached {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
