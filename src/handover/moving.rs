//! Moving an idle HTTP/1 connection to the process that replaces this one, and its safety
//! rules: the one hook [`RemoteClient`](crate::RemoteClient) calls at a shutdown.
//!
//! At the shutdown event, [`reserve`] decides whether the connection may move, and if so marks
//! it (its I/O then does not shut the socket down when hyper closes it). Once hyper has closed
//! the connection, [`Move::send`] sends it, unless a byte moved since the reservation (hyper was
//! not idle: it finished a response's tail), in which case the connection closes here.

use crate::client::ClientInfo;
use crate::io::ClientIo;

use super::{HandedOver, Sink};

/// Where a shutting-down [`Server`](crate::Server) sends the idle connections a new process
/// takes over (a sink once a new process is ready).
pub(crate) type HandoverSlot = std::sync::Mutex<Option<Sink>>;

/// A connection reserved for a move: where it goes, and the bytes moved on it when it was
/// found idle.
pub(crate) struct Move {
    sink: Sink,
    bytes: (u64, u64),
}

/// Whether the connection may move at the shutdown under way, and if so, its reservation: a
/// plain HTTP/1 connection (no TLS session, no PROXY header, which a new process could not
/// take on) with nothing in flight (no request or response pending, no output waiting on the
/// peer, no request body left unread, which the new process would take for requests). Its
/// socket is kept from being shut down from here on.
pub(crate) fn reserve(client: &ClientInfo, slot: &HandoverSlot) -> Option<Move> {
    let state = client.state();
    let idle = client.pending_requests() == 0
        && client.pending_responses() == 0
        && !client.is_exported()
        && client.tls().is_none()
        && !state.is_write_blocked()
        && !state.has_unread_body()
        && !state.body_limit_hit();
    #[cfg(feature = "proxy-protocol")]
    let idle = idle && client.proxy().is_none();
    if !idle {
        return None;
    }
    let sink = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()?;
    state.set_handing_over();
    Some(Move {
        sink,
        bytes: (client.bytes_read(), client.bytes_written()),
    })
}

impl Move {
    /// Sends the connection of `io` to the new process, with `read` (what hyper had read past
    /// the last request) before the bytes `io` holds unread. `false` if it cannot move (a byte
    /// moved since the reservation, output still held, the socket not duplicable, the new
    /// process gone): the connection then closes here, with a FIN when `io` is dropped.
    pub(crate) fn send<S>(self, io: &ClientIo<S>, read: &[u8]) -> bool {
        let client = io.client();
        if (client.bytes_read(), client.bytes_written()) != self.bytes {
            return false;
        }
        let Some((fd, prefix)) = io.hand_over() else {
            return false;
        };
        let mut unread = bytes::BytesMut::with_capacity(read.len() + prefix.len());
        unread.extend_from_slice(read);
        unread.extend_from_slice(&prefix);
        self.sink
            .send(HandedOver {
                fd,
                unix: client.is_unix(),
                unread: unread.freeze(),
            })
            .is_ok()
    }
}
