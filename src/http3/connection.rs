//! One QUIC connection: its [`ClientInfo`], and HTTP/3 over it until it ends (GOAWAY at a
//! shutdown, CONNECTION_CLOSE at `close()`).

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use http::Version;
use tokio::task::JoinSet;
use tracing::{debug, Instrument};

use crate::client::{ClientInfo, ClientInfoBuilder, CloseGuard, TlsInfo};
use crate::layer::{Handler, HandlerBody, Serve};

/// How a QUIC connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// After a GOAWAY (ours at a shutdown, or the peer's), every request answered.
    Drained,
    /// [`ClientInfo::close`] closed it.
    Closed,
    /// The peer closed it, QUIC's idle timeout ran out, or the connection failed.
    Gone(String),
    /// One of its clocks ran out (see `super::clocks`).
    TimedOut(crate::TimeoutKind),
}

/// The TLS details of an established QUIC connection. `cipher`: the suite to report, when the
/// configuration allows only one (quinn 0.11 does not tell which one was negotiated).
pub(crate) fn tls_info(connection: &quinn::Connection, cipher: Option<(&str, u16)>) -> TlsInfo {
    let (name, bits) = cipher.unwrap_or(("", 0));
    let mut info = TlsInfo::new("TLSv1.3", name, bits);
    let handshake = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
    if let Some(handshake) = handshake {
        if let Some(alpn) = handshake.protocol {
            info = info.with_alpn_protocol(Bytes::from(alpn));
        }
        if let Some(name) = handshake.server_name {
            info = info.with_server_name(name);
        }
    }
    let chain = connection.peer_identity().and_then(|identity| {
        identity
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    if let Some(chain) = chain {
        info = info.with_peer_certificates(
            chain
                .iter()
                .map(|cert| Bytes::copy_from_slice(cert.as_ref()))
                .collect(),
        );
    }
    info
}

/// The handle of an established QUIC connection: `builder` holds its addresses and options.
pub(crate) fn client_info(
    builder: ClientInfoBuilder,
    connection: &quinn::Connection,
    cipher: Option<(&str, u16)>,
) -> ClientInfo {
    let client = builder.tls(tls_info(connection, cipher)).build();
    let state = client.state();
    state.set_version(Version::HTTP_3);
    // `close()` closes the QUIC connection itself; the client finishes when this task lets go.
    state.attach();
    state.set_quic(connection.clone());
    client
}

/// Serves HTTP/3 on `connection` until it ends. The client's `on_close` callbacks run when
/// this returns (the connection is closed by then).
pub(crate) async fn serve<S, B>(
    connection: quinn::Connection,
    client: ClientInfo,
    service: S,
) -> End
where
    S: Handler<B>,
    B: HandlerBody,
{
    let _open = CloseGuard(client.clone());
    let state = client.state();
    let options = client.options();
    let header_limit = u64::try_from(options.header_size_limit()).unwrap_or(u64::MAX);
    // The futures of the phases that come once (set-up, GOAWAY, the last wait) are boxed: in
    // line, each would take room in every connection's task for its whole life (an idle
    // connection's memory).
    let built = Box::pin(
        h3::server::builder()
            .max_field_section_size(header_limit)
            .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone())),
    )
    .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(error) => {
            super::close_now(&connection);
            return if state.is_closing() {
                End::Closed
            } else {
                End::Gone(error.to_string())
            };
        }
    };

    let clocks = super::clocks::Clocks::new(connection.clone(), options);
    // No request for `http2_timeout` (control frames and PINGs are not requests): closed.
    let idle_timeout = options.http2_timeout().map(crate::lifecycle::bounded);
    let idle = tokio::time::sleep(idle_timeout.unwrap_or_default());
    tokio::pin!(idle);
    let mut idle_armed = false;
    // The requests' tasks: aborted when the connection ends, as hyper drops its streams.
    let mut requests = JoinSet::new();
    let mut shutting_down = false;
    // Wakes on `shutdown()` (the server's graceful shutdown, or the user's).
    let asked = || {
        poll_fn(|cx| {
            state.register(cx.waker());
            if state.is_shutdown() || state.is_closing() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    };
    let end = loop {
        // The idle clock runs from the moment no request is in flight.
        match (requests.is_empty(), idle_timeout) {
            (true, Some(timeout)) if !idle_armed => {
                idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                idle_armed = true;
            }
            (false, _) => idle_armed = false,
            _ => {}
        }
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let request = super::request::serve(
                        resolver,
                        Serve::new(service.clone(), client.clone()),
                        connection.clone(),
                        clocks.clone(),
                        idle_timeout,
                    );
                    // Boxed: the task then moves a pointer, not the request's whole future
                    // (tokio copies a task's future into its cell and its stages).
                    requests.spawn(Box::pin(request).in_current_span());
                }
                Ok(None) => break End::Drained,
                Err(_) if state.is_closing() => break End::Closed,
                Err(_) if clocks.fired().is_some() => {
                    break End::TimedOut(clocks.fired().unwrap_or(crate::TimeoutKind::Idle))
                }
                Err(error) => break End::Gone(error.to_string()),
            },
            () = &mut idle, if idle_armed && clocks.fired().is_none() && !shutting_down => {
                clocks.time_out(crate::TimeoutKind::Idle);
            }
            () = asked(), if !shutting_down => {
                if state.is_closing() {
                    break End::Closed;
                }
                shutting_down = true;
                debug!("HTTP/3: GOAWAY");
                // Streams above the last one accepted are refused (H3_REQUEST_REJECTED, which
                // a client may retry); `accept` ends once the accepted ones are answered.
                if let Err(error) = Box::pin(h3.shutdown(0)).await {
                    break End::Gone(error.to_string());
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    };
    if let End::Drained = end {
        // The last answers may still be on their way: closing now could discard them (a peer
        // may drop what it has not read at CONNECTION_CLOSE). A client closes once it has them;
        // one that does not is closed after the shutdown timeout.
        let _ = Box::pin(tokio::time::timeout(
            options.shutdown_timeout(),
            connection.closed(),
        ))
        .await;
    }
    drop(requests);
    drop(h3);
    super::close_now(&connection);
    debug!(?end, "HTTP/3 connection ended");
    end
}
