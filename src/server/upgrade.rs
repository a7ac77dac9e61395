//! The server's side of a binary upgrade (unix): what it publishes, how it takes over from
//! the process it replaces, and how it hands over to (or takes back from) its successor. The
//! protocol itself is `crate::handover`'s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Acceptor, Server, ServerHandle, Stop};
use crate::handover::{Published, Successor};
use crate::remote::{Handler, HandlerBody};

/// The task that receives the old process's idle connections and, after the probation, tells
/// it this process is healthy: aborted when dropped, so that a server whose `serve` is dropped
/// (or returns) never tells the old process it is healthy, and closes its end of the stream
/// (the old process then takes its listeners back).
pub(super) struct Receiving(JoinHandle<()>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a hand-over to a successor ended.
pub(super) enum Handover {
    /// The successor said it is healthy (or the server is shutting down anyway), and this
    /// server's connections are drained.
    Done,
    /// The successor went away before it said it is healthy: this server accepts again.
    RolledBack,
}

impl Server {
    /// What a new process would take: duplicates of the listening sockets, all of them (a
    /// new process tells them apart by their order) or none, with the steps run on each.
    pub(super) fn publishable(&mut self) -> Option<Arc<Published>> {
        self.upgrade.as_ref()?;
        let listeners = self
            .listeners
            .iter()
            .map(|listener| {
                let (fd, unix, steps, _) = listener.handover_view();
                Ok((fd.try_clone_to_owned()?, unix, steps))
            })
            .collect::<std::io::Result<Vec<_>>>();
        #[cfg(feature = "http3")]
        let quic = self
            .quic
            .iter()
            .map(crate::http3::QuicListener::publishable)
            .collect::<std::io::Result<Vec<_>>>();
        #[cfg(not(feature = "http3"))]
        let quic: std::io::Result<Vec<_>> = Ok(Vec::new());
        match listeners.and_then(|listeners| Ok((listeners, quic?))) {
            Ok((listeners, quic)) => Some(Arc::new(Published::new(listeners, quic))),
            Err(error) => {
                tracing::error!(%error, "upgrade socket: the listeners cannot be published");
                self.upgrade = None;
                None
            }
        }
    }

    /// After a rollback: the upgrade socket again at its path (the successor that went away
    /// had put its own there), so that this process can be upgraded again.
    pub(super) fn republish(&mut self) {
        let Some(publisher) = self.upgrade.as_ref() else {
            return;
        };
        match publisher.rebind() {
            Ok(publisher) => self.upgrade = Some(publisher),
            Err(error) => {
                tracing::error!(%error, "upgrade socket: could not be put back at its path after the rollback");
            }
        }
    }

    /// Taking over: once accepting, tell the old process to drain, take the upgrade socket's
    /// path, and receive its idle connections (a later upgrade of this process waits until
    /// they have all come, and this process's probation has passed).
    pub(super) async fn finish_takeover<S, B>(&mut self, service: S) -> Option<Receiving>
    where
        S: Handler<B>,
        B: HandlerBody,
    {
        let Some(mut takeover) = self.takeover.take() else {
            self.publish();
            return None;
        };
        // The UDP sockets taken over that this server reads now.
        #[cfg(feature = "http3")]
        let quic_served: Vec<usize> = self
            .quic_routes
            .iter()
            .filter_map(|(_, inherited)| *inherited)
            .collect();
        #[cfg(not(feature = "http3"))]
        let quic_served: Vec<usize> = Vec::new();
        if let Err(error) = takeover.ready(&quic_served).await {
            tracing::error!(
                %error,
                "takeover: the old process could not be told to drain; both serve"
            );
            return None;
        }
        let acceptor = Arc::new(self.acceptor());
        let probation = self.options.upgrade_probation();
        let receiving = tokio::spawn(takeover.receive(probation, move |handed| {
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move { acceptor.adopt(handed, service).await });
        }));
        self.publish();
        Some(Receiving(receiving))
    }

    /// The next process to take the listeners over (never, without an upgrade socket).
    pub(super) async fn next_successor(
        &self,
        published: Option<Arc<Published>>,
        receiving: &mut Option<Receiving>,
    ) -> Successor {
        if let Some(receiving) = receiving.as_mut() {
            let _ = (&mut receiving.0).await;
        }
        *receiving = None;
        match (&self.upgrade, published) {
            (Some(publisher), Some(published)) => publisher.wait_for_taker(published).await,
            _ => std::future::pending().await,
        }
    }

    /// A successor accepts on the listeners: this server stops accepting (it keeps the
    /// sockets), drains (its idle HTTP/1 connections move), and waits for the successor's
    /// word. Should the successor go away first, this server accepts again at once.
    pub(super) async fn hand_over<F: Future<Output = ()>>(
        &self,
        successor: Successor,
        signal: &mut Pin<&mut F>,
    ) -> Handover {
        #[cfg(feature = "http3")]
        let mut successor = successor;
        // The successor reads the UDP sockets it said it serves: this server gets its
        // connections' datagrams from it (before it stops accepting: no new
        // connection is left waiting here).
        #[cfg(feature = "http3")]
        for ((router, _), link) in self.quic_routes.iter().zip(successor.take_quic_links()) {
            let Some(link) = link else { continue };
            match crate::http3::routing::Link::new(link) {
                Ok(link) => router.replaced_by(link),
                Err(error) => {
                    tracing::error!(%error, "upgrade: the link to the new process for QUIC failed");
                }
            }
        }
        let shared = &self.shared;
        shared
            .replaced
            .store(true, std::sync::atomic::Ordering::Release);
        shared.paused.send_replace(true);
        let (sender, health) = successor.split();
        let (sink, connections) = tokio::sync::mpsc::unbounded_channel();
        *self.lock_handover() = Some(sink);
        let sending = tokio::spawn(sender.send_connections(connections));
        let mut health = tokio::spawn(health.confirmed());
        ServerHandle {
            shared: shared.clone(),
        }
        .stop(Some(self.options.shutdown_timeout()));
        let mut shutdown = shared.shutdown.subscribe();
        let confirmed = {
            let drain = self.drain_connections(&mut shutdown);
            tokio::pin!(drain);
            let mut drained = false;
            let confirmed = loop {
                tokio::select! {
                    confirmed = &mut health => break confirmed.unwrap_or(false),
                    () = &mut drain, if !drained => {
                        drained = true;
                        // Every connection has closed or moved: the successor is told.
                        self.lock_handover().take();
                    }
                    () = signal.as_mut(), if drained => break true,
                }
            };
            let stop_asked = shared.stop_asked.load(std::sync::atomic::Ordering::Acquire);
            if (confirmed || stop_asked) && !drained {
                drain.await;
                self.lock_handover().take();
            }
            confirmed
        };
        // A shutdown asked for meanwhile stands: no rollback then, whatever the successor did.
        let stop_asked = shared.stop_asked.load(std::sync::atomic::Ordering::Acquire);
        if confirmed || stop_asked {
            let _ = tokio::time::timeout(self.options.shutdown_timeout(), sending).await;
            info!("upgrade: the new process is healthy; this one exits");
            return Handover::Done;
        }
        // Rollback: the connections being drained go on ending by themselves; new ones are
        // served here again.
        warn!("upgrade: the new process went away before it said it is healthy; accepting again");
        #[cfg(feature = "http3")]
        for (router, _) in &self.quic_routes {
            router.rolled_back();
        }
        self.lock_handover().take();
        sending.abort();
        shared.registry.resume();
        shared.forced.send_replace(false);
        shared.shutdown.send_replace(Stop::Running);
        shared
            .replaced
            .store(false, std::sync::atomic::Ordering::Release);
        shared.paused.send_replace(false);
        Handover::RolledBack
    }
}

impl Acceptor {
    /// Serves a connection the process this one replaces handed over: admitted and
    /// registered as if accepted here, with the bytes that process had read of it.
    pub(super) async fn adopt<S, B>(
        self: Arc<Self>,
        handed: crate::handover::HandedOver,
        service: S,
    ) where
        S: Handler<B>,
        B: HandlerBody,
    {
        let unread = handed.unread.clone();
        if handed.unix {
            let Some(stream) = handed.into_stream::<tokio::net::UnixStream>() else {
                return;
            };
            let Ok(builder) = crate::ClientInfo::builder_for_unix(&stream) else {
                return;
            };
            self.adopt_stream(stream, builder, None, &unread, service)
                .await;
        } else {
            let Some(stream) = handed.into_stream::<tokio::net::TcpStream>() else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let Ok(builder) = crate::ClientInfo::builder_for_tcp(&stream) else {
                return;
            };
            let ip = builder.remote_ip();
            self.adopt_stream(stream, builder, ip, &unread, service)
                .await;
        }
    }

    async fn adopt_stream<T, S, B>(
        self: Arc<Self>,
        stream: T,
        builder: crate::client::ClientInfoBuilder,
        ip: Option<std::net::IpAddr>,
        unread: &[u8],
        service: S,
    ) where
        T: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + crate::io::StreamSocket
            + Unpin
            + Send
            + 'static,
        S: Handler<B>,
        B: HandlerBody,
    {
        // The socket says (a PROXY header may have named other addresses).
        let unix = stream
            .socket()
            .and_then(|socket| socket2::SockRef::from(&socket).local_addr().ok())
            .is_some_and(|local| local.is_unix());
        let transport = if unix {
            super::admission::Transport::Unix
        } else {
            super::admission::Transport::Tcp
        };
        let Some(slot) = self.admit(ip, transport) else {
            return;
        };
        super::Counters::add(&self.shared.counters.taken_over);
        let mut client =
            crate::RemoteClient::new(stream, builder.options(self.options.clone()).build());
        client.io_mut().unread(unread);
        self.serve(client, slot, service, true).await;
    }
}
