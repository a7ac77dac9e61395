//! The HTTP/3 accept loop: admission of each new QUIC connection, its handshake, then its
//! [`ClientInfo`] and HTTP/3 (see [`crate::http3`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, Instrument};

use super::admission::Slot;
use super::stats::Counters;
use super::{accept_unless_paused, Acceptor};
use crate::client::ClientInfo;
use crate::http3::{End, QuicListener, QuicTls};
use crate::remote::{Handler, HandlerBody};

/// Stops new handshakes on an endpoint when the accept loop ends (a shutdown aborts it), while
/// its connections go on.
struct StopHandshakes(quinn::Endpoint);

impl Drop for StopHandshakes {
    fn drop(&mut self) {
        self.0.set_server_config(None);
    }
}

impl Acceptor {
    pub(super) async fn accept_quic<S, B>(self, listener: QuicListener, service: S)
    where
        S: Handler<B>,
        B: HandlerBody,
    {
        let this = Arc::new(self);
        let endpoint = listener.endpoint.clone();
        let mut tls = listener.tls();
        let mut config = Arc::new(listener.server_config(&tls, &this.options));
        endpoint.set_server_config(Some((*config).clone()));
        let _stop = StopHandshakes(endpoint.clone());
        let local = endpoint.local_addr().ok();
        let mut paused = this.shared.paused.subscribe();
        loop {
            let Some(incoming) = accept_unless_paused(&mut paused, || endpoint.accept()).await
            else {
                // The endpoint was closed.
                return;
            };
            if listener.retry() && !incoming.remote_address_validated() {
                // The client comes back with the token (a new `Incoming`), if its address is
                // its own. Not counted: nothing was accepted yet.
                if let Err(error) = incoming.retry() {
                    error.into_incoming().ignore();
                }
                continue;
            }
            let remote = incoming.remote_address();
            let Some(slot) = this.admit(Some(remote.ip()), super::admission::Transport::Quic)
            else {
                incoming.refuse();
                continue;
            };
            let local = match (incoming.local_ip(), local) {
                (Some(ip), Some(bound)) => Some(SocketAddr::new(ip, bound.port())),
                (None, bound) => bound,
                (Some(_), None) => None,
            };
            let Some(local) = local else {
                incoming.refuse();
                continue;
            };
            // A reloaded certificate (`bind_acceptor`) serves this handshake and the next ones
            // (an `Incoming` keeps the configuration of its arrival otherwise).
            let now = listener.tls();
            if !now.same(&tls) {
                tls = now;
                config = Arc::new(listener.server_config(&tls, &this.options));
                endpoint.set_server_config(Some((*config).clone()));
            }
            tokio::spawn(this.clone().serve_quic(
                incoming,
                remote,
                local,
                (config.clone(), tls.clone()),
                slot,
                service.clone(),
            ));
        }
    }

    /// The handshake (bounded by the TLS setup timeout, cut when a shutdown passes its
    /// deadline), then the client, registered, served until its connection ends.
    async fn serve_quic<S, B>(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        remote: SocketAddr,
        local: SocketAddr,
        (config, tls): (Arc<quinn::ServerConfig>, QuicTls),
        slot: Slot,
        service: S,
    ) where
        S: Handler<B>,
        B: HandlerBody,
    {
        let connecting = match incoming.accept_with(config) {
            Ok(connecting) => connecting,
            Err(error) => {
                Counters::add(&self.shared.counters.tls_handshake_failures);
                debug!(%remote, %error, "QUIC connection refused");
                return;
            }
        };
        let mut forced = self.shared.forced.subscribe();
        // The TLS handshake metrics, as for TCP (cut by a shutdown: `cancelled`).
        #[cfg(feature = "metrics")]
        let metric = crate::telemetry::Handshake::start();
        let handshake = async {
            match self.options.tls_setup_timeout() {
                Some(timeout) => tokio::time::timeout(timeout, connecting).await.ok(),
                None => Some(connecting.await),
            }
        };
        let connection = tokio::select! {
            connection = handshake => connection,
            _ = forced.wait_for(|forced| *forced) => return,
        };
        let connection = match connection {
            Some(Ok(connection)) => {
                #[cfg(feature = "metrics")]
                metric.succeeded("TLSv1.3");
                connection
            }
            Some(Err(error)) => {
                #[cfg(feature = "metrics")]
                metric.failed("error");
                Counters::add(&self.shared.counters.tls_handshake_failures);
                debug!(%remote, %error, "QUIC handshake failed");
                return;
            }
            None => {
                #[cfg(feature = "metrics")]
                metric.failed("timeout");
                Counters::add(&self.shared.counters.tls_handshake_timeouts);
                debug!(%remote, "QUIC handshake timed out");
                return;
            }
        };
        let builder = ClientInfo::builder(remote, local).options(self.options.clone());
        let info = crate::http3::client_info(builder, &connection, tls.cipher());
        drop(tls);
        let span = crate::remote::connection_span(&info);
        span.record("protocol", "h3");
        self.register(&info, slot);
        async move {
            debug!("accepted");
            let end = crate::http3::serve(connection, info.clone(), service).await;
            let reason = match end {
                End::Closed => crate::remote::CloseReason::Closed,
                End::Drained if info.state().is_shutdown() => crate::remote::CloseReason::Shutdown,
                End::Drained => crate::remote::CloseReason::Finished,
                End::Gone(error) => {
                    debug!(%error, "QUIC connection gone");
                    crate::remote::CloseReason::Finished
                }
                End::TimedOut(kind) => crate::remote::timed_out(kind),
            };
            self.count_end(&info, &reason);
        }
        .instrument(span)
        .await;
    }
}
