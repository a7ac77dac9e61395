//! The server's counters, and [`Stats`], a snapshot of them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a server's counters. All are totals since the server started, but `active`
/// and `exported_active`, which are current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted from the listeners (admitted or not).
    pub accepted: u64,
    /// Clients open now (exported ones included), plus TLS handshakes in progress.
    pub active: u64,
    /// Connections closed at once because the connection limit was reached.
    pub rejected_connection_limit: u64,
    /// Connections closed at once because their IP had reached the per-IP limit.
    pub rejected_per_ip_limit: u64,
    /// TLS handshakes that failed.
    pub tls_handshake_failures: u64,
    /// TLS handshakes that did not finish within the TLS setup timeout.
    pub tls_handshake_timeouts: u64,
    /// Connections closed because of their PROXY protocol header: untrusted, malformed,
    /// missing where required, or late.
    pub proxy_rejected: u64,
    /// Connections refused by an acceptor of your own ([`AcceptError::Refused`](crate::accept::AcceptError::Refused),
    /// or its I/O failing).
    pub acceptor_refused: u64,
    /// HTTP/1 connections closed by a clock (any of the four below).
    pub http1_timeouts: u64,
    /// HTTP/2 connections closed by a clock (any of the four below).
    pub http2_timeouts: u64,
    /// HTTP/3 (QUIC) connections closed by a clock (idle, request head, body, response; see
    /// the `http3` module). Feature `http3`; always 0 without it.
    pub http3_timeouts: u64,
    /// Connections closed for sitting idle: no first byte, no request, no HTTP/2 stream.
    pub idle_timeouts: u64,
    /// HTTP/1 connections closed because a request head took too long.
    pub request_head_timeouts: u64,
    /// Connections closed because a request body came slower than the minimum rate.
    pub request_body_timeouts: u64,
    /// Connections closed because the peer took a response slower than the minimum rate.
    pub response_timeouts: u64,
    /// Connections closed by the half-close clock ([`Options::half_close_timeout`](crate::Options::half_close_timeout)).
    pub half_close_timeouts: u64,
    /// Detached connections closed by [`Options::detached_timeout`](crate::Options::detached_timeout).
    pub detached_timeouts: u64,
    /// Connections handed over after an upgrade.
    pub exported: u64,
    /// Exported connections still open.
    pub exported_active: u64,
    /// Clients closed (each client once, however it closed).
    pub closed: u64,
    /// Idle HTTP/1 connections handed to the process that took this server's listeners over
    /// ([`Server::upgrade_socket`](crate::Server::upgrade_socket)); counted in `closed` too.
    pub handed_over: u64,
    /// Connections this server took from the process it replaced
    /// ([`Server::take_over`](crate::Server::take_over)); counted in `accepted` too.
    pub taken_over: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected_connection_limit: AtomicU64,
    pub(crate) rejected_per_ip_limit: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    pub(crate) tls_handshake_timeouts: AtomicU64,
    pub(crate) proxy_rejected: AtomicU64,
    pub(crate) acceptor_refused: AtomicU64,
    pub(crate) http1_timeouts: AtomicU64,
    pub(crate) http2_timeouts: AtomicU64,
    pub(crate) http3_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) request_head_timeouts: AtomicU64,
    pub(crate) request_body_timeouts: AtomicU64,
    pub(crate) response_timeouts: AtomicU64,
    pub(crate) half_close_timeouts: AtomicU64,
    pub(crate) detached_timeouts: AtomicU64,
    pub(crate) exported: AtomicU64,
    pub(crate) exported_closed: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) handed_over: AtomicU64,
    pub(crate) taken_over: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, active: usize) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let exported = get(&self.exported);
        Stats {
            accepted: get(&self.accepted),
            active: active as u64,
            rejected_connection_limit: get(&self.rejected_connection_limit),
            rejected_per_ip_limit: get(&self.rejected_per_ip_limit),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            tls_handshake_timeouts: get(&self.tls_handshake_timeouts),
            proxy_rejected: get(&self.proxy_rejected),
            acceptor_refused: get(&self.acceptor_refused),
            http1_timeouts: get(&self.http1_timeouts),
            http2_timeouts: get(&self.http2_timeouts),
            http3_timeouts: get(&self.http3_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            request_head_timeouts: get(&self.request_head_timeouts),
            request_body_timeouts: get(&self.request_body_timeouts),
            response_timeouts: get(&self.response_timeouts),
            half_close_timeouts: get(&self.half_close_timeouts),
            detached_timeouts: get(&self.detached_timeouts),
            exported,
            exported_active: exported.saturating_sub(get(&self.exported_closed)),
            closed: get(&self.closed),
            handed_over: get(&self.handed_over),
            taken_over: get(&self.taken_over),
        }
    }
}
