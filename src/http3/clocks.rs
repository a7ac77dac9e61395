//! The clocks of an HTTP/3 connection, as over TCP (see `crate::lifecycle`), where they
//! apply to QUIC: no request for [`Options::http2_timeout`] (PINGs and other control frames do
//! not count), a request head not complete within it, a request body the handler waits for
//! coming slower than [`Options::min_request_body_rate`], a response the peer takes slower than
//! [`Options::min_response_rate`]. A clock that runs out closes the QUIC connection
//! (CONNECTION_CLOSE, `H3_NO_ERROR`, reason `timeout`), as it closes a TCP connection; the
//! close is counted by its [`TimeoutKind`].
//!
//! [`Options::http2_timeout`]: crate::Options::http2_timeout
//! [`Options::min_request_body_rate`]: crate::Options::min_request_body_rate
//! [`Options::min_response_rate`]: crate::Options::min_response_rate

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use crate::lifecycle::RateClock;
use crate::options::{MinDataRate, Options};
use crate::TimeoutKind;

/// What the streams of one QUIC connection share: the connection, its rates, and the clock
/// that ran out, if one did.
#[derive(Debug)]
pub(crate) struct Clocks {
    connection: quinn::Connection,
    fired: OnceLock<TimeoutKind>,
    body: Option<MinDataRate>,
    response: Option<MinDataRate>,
}

impl Clocks {
    pub(crate) fn new(connection: quinn::Connection, options: &Options) -> Arc<Clocks> {
        Arc::new(Clocks {
            connection,
            fired: OnceLock::new(),
            body: options.min_request_body_rate(),
            response: options.min_response_rate(),
        })
    }

    /// Closes the connection for `kind` (the first clock to run out is the one told).
    pub(crate) fn time_out(&self, kind: TimeoutKind) {
        if self.fired.set(kind).is_ok() {
            tracing::debug!(?kind, "HTTP/3: a clock ran out; connection closed");
            self.connection
                .close(quinn::VarInt::from_u32(0x100), b"timeout");
        }
    }

    /// The clock that ran out, if one did.
    pub(crate) fn fired(&self) -> Option<TimeoutKind> {
        self.fired.get().copied()
    }

    /// The request body's clock of one stream (none without a rate).
    pub(crate) fn body_clock(self: &Arc<Self>) -> Option<BodyClock> {
        Some(BodyClock {
            rate: self.body?,
            clocks: self.clone(),
            clock: RateClock::default(),
            bytes: 0,
            sleep: None,
        })
    }

    /// The response's clock of one stream (none without a rate).
    pub(crate) fn response_clock(self: &Arc<Self>) -> Option<ResponseClock> {
        Some(ResponseClock {
            rate: self.response?,
            clocks: self.clone(),
            clock: RateClock::default(),
            bytes: 0,
        })
    }
}

/// Whether `deadline` has passed; else arms `sleep` for it (made at the first use).
fn expired(
    sleep: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    now: Instant,
    cx: &mut Context<'_>,
) -> bool {
    if deadline <= now {
        return true;
    }
    let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() != deadline {
        sleep.as_mut().reset(deadline);
    }
    sleep.as_mut().poll(cx).is_ready()
}

/// A request body's clock: runs while the handler waits for the body's bytes.
#[derive(Debug)]
pub(crate) struct BodyClock {
    rate: MinDataRate,
    clocks: Arc<Clocks>,
    clock: RateClock,
    bytes: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl BodyClock {
    /// After a poll of the body that gave `bytes` (`Some`), or is waiting (`None`): whether
    /// the peer has been too slow (the connection is being closed then).
    pub(crate) fn polled(&mut self, cx: &mut Context<'_>, bytes: Option<u64>) -> bool {
        let now = Instant::now();
        match bytes {
            Some(bytes) => {
                self.bytes = self.bytes.saturating_add(bytes);
                self.clock.update(&self.rate, now, false, self.bytes);
                false
            }
            None => {
                self.clock.update(&self.rate, now, true, self.bytes);
                let Some(deadline) = self.clock.deadline() else {
                    return false;
                };
                if expired(&mut self.sleep, deadline, now, cx) {
                    self.clocks.time_out(TimeoutKind::RequestBody);
                    return true;
                }
                false
            }
        }
    }
}

/// The largest write a response's clock times as one: longer DATA are sent in parts of this
/// size, so that a peer that stops reading is seen within this many bytes.
pub(crate) const CHUNK: usize = 16 * 1024;

/// A response's clock: runs while a write of the response waits on the peer.
#[derive(Debug)]
pub(crate) struct ResponseClock {
    rate: MinDataRate,
    clocks: Arc<Clocks>,
    clock: RateClock,
    bytes: u64,
}

impl ResponseClock {
    /// Runs `write` (of `len` bytes of the response, at most [`CHUNK`]): `None` if the peer
    /// took it too slowly (the connection is being closed then). The bytes of a write count
    /// once it is done (quinn takes them as the peer's flow control allows, that is as the peer
    /// reads); the write in progress is allowed its own size at the rate on top of the credit.
    pub(crate) async fn run<F: Future>(&mut self, len: u64, write: F) -> Option<F::Output> {
        let mut write = std::pin::pin!(write);
        // Most writes go into quinn's buffer at once: no clock read for them.
        let first = write
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()));
        if let Poll::Ready(done) = first {
            self.bytes = self.bytes.saturating_add(len);
            return Some(done);
        }
        let now = Instant::now();
        self.clock.update(&self.rate, now, true, self.bytes);
        let deadline = self
            .clock
            .deadline()
            .and_then(|at| at.checked_add(crate::lifecycle::bounded(self.rate.allowance_of(len))));
        let done = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, write).await.ok(),
            None => Some(write.await),
        };
        let Some(done) = done else {
            self.clocks.time_out(TimeoutKind::Response);
            return None;
        };
        self.bytes = self.bytes.saturating_add(len);
        self.clock
            .update(&self.rate, Instant::now(), false, self.bytes);
        Some(done)
    }
}
