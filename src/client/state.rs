//! [`State`]: the live state of one connection, as atomics, and the only code that writes it.
//!
//! Everything [`ClientInfo`](crate::ClientInfo) reports that changes while the connection
//! lives (pending counts, status bits, byte counts, flags) is here, and changes only through
//! the methods below: the I/O wrapper, the request and response guards and the watch call them.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

use atomic_waker::AtomicWaker;
use http::Version;
use tokio::sync::Notify;

use super::Status;

/// Three counts packed in one word, so they change together: pending requests (bodies being
/// read), pending responses (requests handed to the service, response not written), and
/// responses owed by the peer (HTTP/2: a response body hyper does not ask for, because the
/// peer's flow-control window is closed).
const FIELD: u32 = 21;
const MASK: u64 = (1 << FIELD) - 1;
pub(crate) const REQUEST: u64 = 1;
pub(crate) const RESPONSE: u64 = 1 << FIELD;
pub(crate) const OWED: u64 = 1 << (2 * FIELD);

/// `close()` was called: refuse all I/O from now on.
const CLOSING: u16 = 1;
/// `shutdown()` was called: finish in-flight requests, take no new ones.
const SHUTDOWN: u16 = 1 << 1;
/// The connection was handed over after an upgrade.
const EXPORTED: u16 = 1 << 2;
/// A `ClientIo` owns the stream: the client finishes when it is dropped.
const ATTACHED: u16 = 1 << 3;
/// The last owner of the connection is gone: closed for good, callbacks run.
const FINISHED: u16 = 1 << 4;
/// A request body went over the body size limit: HTTP/1 closes after the response.
const BODY_LIMIT: u16 = 1 << 5;
/// The detached idle clock closed the connection.
const DETACHED_TIMEOUT: u16 = 1 << 6;
/// HTTP/1 half-close: the peer's EOF came after a complete request, and is held back from
/// hyper until the response is written.
const EOF_DEFERRED: u16 = 1 << 7;
/// The `on_close` callbacks have run: `closed()` waiters may go on.
const CALLBACKS_RUN: u16 = 1 << 8;
/// A request asked for an upgrade (HTTP/1 `Upgrade`, `CONNECT`): hyper keeps the upgrade
/// pending to the end of the connection, and at its end hands the I/O to the upgrade (and
/// drops it if the upgrade was declined) instead of shutting it down: no output may be held
/// back from then on.
const UPGRADE_ASKED: u16 = 1 << 9;

/// A snapshot of what the watch decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) work: u64,
    pub(crate) requests: u64,
    pub(crate) bodies_waiting: u32,
    pub(crate) write_blocked: bool,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) body_read: u64,
    pub(crate) body_written: u64,
    /// HTTP/1: the peer's EOF is held back (a half-close, or a peer gone).
    pub(crate) eof_deferred: bool,
    /// HTTP/2: streams wait for the connection's budget of unwritten answers.
    pub(crate) budget_waiting: bool,
}

impl Snapshot {
    pub(crate) fn pending_requests(&self) -> u64 {
        self.work & MASK
    }

    pub(crate) fn pending_responses(&self) -> u64 {
        (self.work >> FIELD) & MASK
    }

    pub(crate) fn owed(&self) -> u64 {
        (self.work >> (2 * FIELD)) & MASK
    }
}

#[derive(Debug)]
pub(crate) struct State {
    work: AtomicU64,
    /// Requests handed over so far.
    requests: AtomicU64,
    /// Request bodies whose handler waits for the peer (the last read returned `Pending`).
    bodies_waiting: AtomicU32,
    /// HTTP/1: reads of a request body that found nothing (see `body_pending`), and the task
    /// of the last one.
    body_polls: AtomicU32,
    body_waker: AtomicWaker,
    /// Bumped at each probe of the body's reader (see `body_pending`).
    probe_gen: AtomicU32,
    status: AtomicU8,
    flags: AtomicU16,
    version: AtomicU8,
    /// The last write returned `Pending`: the peer is not reading.
    write_blocked: AtomicBool,
    /// `RemoteClient`'s watch serves the connection (and keeps its waker registered).
    watched: AtomicBool,
    /// HTTP/2: request body bytes handed to handlers, and response body bytes the peer's
    /// window let through (control frames left out), for the rate clocks.
    body_read: AtomicU64,
    body_written: AtomicU64,
    /// HTTP/2: response body bytes handed to hyper and not yet written to the socket, as far
    /// as the socket's byte count tells (an estimate that errs low: every byte written counts).
    unwritten: AtomicU64,
    /// HTTP/2: streams waiting for `unwritten` to come under the connection's budget.
    budget_waiters: Mutex<Vec<std::task::Waker>>,
    budget_waiting: AtomicBool,
    /// The budget, in bytes (0: none, outside `RemoteClient`).
    budget: AtomicU64,
    /// Written only by the one `ClientIo` that owns the stream.
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// The task serving the connection, woken by `close()`, `shutdown()` and state changes
    /// made on other tasks that start a clock.
    waker: AtomicWaker,
    /// Wakes [`ClientInfo::closed`](crate::ClientInfo::closed) waiters.
    finished: Notify,
    /// A duplicate of the socket of an exported client, so `close()` can shut it down while
    /// user code owns the stream. Ours, so never a descriptor that was closed and reused.
    export_socket: Mutex<Option<socket2::Socket>>,
    /// The connection is being handed over to a new process: hyper's shutdown of its I/O must
    /// not reach the socket.
    handing_over: AtomicBool,
    /// A request body was dropped before its end: the connection's bytes are not all
    /// accounted for, so it cannot move to another process.
    unread_body: AtomicBool,
    /// The request metrics' handles of this connection.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::telemetry::Handles,
    /// HTTP/3: the QUIC connection, which `close()` closes at once (CONNECTION_CLOSE), as it
    /// shuts an exported socket down: no task needs to poll for it.
    #[cfg(feature = "http3")]
    quic: std::sync::OnceLock<quinn::Connection>,
}

impl Default for State {
    fn default() -> Self {
        State {
            work: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bodies_waiting: AtomicU32::new(0),
            body_polls: AtomicU32::new(0),
            body_waker: AtomicWaker::new(),
            probe_gen: AtomicU32::new(0),
            status: AtomicU8::new(0),
            flags: AtomicU16::new(0),
            version: AtomicU8::new(0),
            write_blocked: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            body_read: AtomicU64::new(0),
            body_written: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
            budget_waiters: Mutex::new(Vec::new()),
            budget_waiting: AtomicBool::new(false),
            budget: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            finished: Notify::new(),
            export_socket: Mutex::new(None),
            handing_over: AtomicBool::new(false),
            unread_body: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            metrics: crate::telemetry::Handles::default(),
            #[cfg(feature = "http3")]
            quic: std::sync::OnceLock::new(),
        }
    }
}

impl State {
    // ---- reading -------------------------------------------------------------------------

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            work: self.work.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Relaxed),
            bodies_waiting: self.bodies_waiting.load(Ordering::Acquire),
            write_blocked: self.write_blocked.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            body_read: self.body_read.load(Ordering::Relaxed),
            body_written: self.body_written.load(Ordering::Relaxed),
            eof_deferred: self.flag(EOF_DEFERRED),
            budget_waiting: self.budget_waiting.load(Ordering::Relaxed),
        }
    }

    fn work(&self) -> Snapshot {
        Snapshot {
            work: self.work.load(Ordering::Acquire),
            requests: 0,
            bodies_waiting: 0,
            write_blocked: false,
            bytes_read: 0,
            bytes_written: 0,
            body_read: 0,
            body_written: 0,
            eof_deferred: false,
            budget_waiting: false,
        }
    }

    pub(crate) fn pending_requests(&self) -> usize {
        self.work().pending_requests() as usize
    }

    pub(crate) fn pending_responses(&self) -> usize {
        self.work().pending_responses() as usize
    }

    /// Both counts from one load, so they are consistent with each other.
    pub(crate) fn is_waiting_on_response(&self) -> bool {
        let work = self.work();
        work.pending_responses() > work.pending_requests()
    }

    pub(crate) fn status(&self) -> Status {
        Status::from_bits_truncate(self.status.load(Ordering::Acquire))
    }

    pub(crate) fn bytes_read(&self) -> u64 {
        #[cfg(feature = "http3")]
        if let Some(quic) = self.quic.get() {
            // HTTP/3: the QUIC connection's UDP payload bytes, as of now.
            return quic.stats().udp_rx.bytes;
        }
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes_written(&self) -> u64 {
        #[cfg(feature = "http3")]
        if let Some(quic) = self.quic.get() {
            return quic.stats().udp_tx.bytes;
        }
        self.bytes_written.load(Ordering::Relaxed)
    }

    fn flag(&self, flag: u16) -> bool {
        self.flags.load(Ordering::Acquire) & flag != 0
    }

    /// `close()` was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.flag(CLOSING)
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.flag(SHUTDOWN)
    }

    pub(crate) fn is_exported(&self) -> bool {
        self.flag(EXPORTED)
    }

    pub(crate) fn body_limit_hit(&self) -> bool {
        self.flag(BODY_LIMIT)
    }

    pub(crate) fn detached_timed_out(&self) -> bool {
        self.flag(DETACHED_TIMEOUT)
    }

    pub(crate) fn version(&self) -> Option<Version> {
        match self.version.load(Ordering::Relaxed) {
            1 => Some(Version::HTTP_10),
            2 => Some(Version::HTTP_11),
            3 => Some(Version::HTTP_2),
            4 => Some(Version::HTTP_3),
            _ => None,
        }
    }

    // ---- the serving task ----------------------------------------------------------------

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// The I/O's own registration, for connections nothing else watches (a user's own loop
    /// with hyper's builders): `close()` then still wakes a pending read.
    pub(crate) fn register_unwatched(&self, waker: &std::task::Waker) {
        if !self.watched.load(Ordering::Relaxed) {
            self.waker.register(waker);
        }
    }

    pub(crate) fn set_watched(&self) {
        self.watched.store(true, Ordering::Relaxed);
    }

    /// Waits until the connection is closed for good and its `on_close` callbacks have run.
    pub(crate) async fn finished(&self) {
        loop {
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flag(CALLBACKS_RUN) {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn set_version(&self, version: Version) {
        let code = match version {
            Version::HTTP_10 | Version::HTTP_09 => 1,
            Version::HTTP_11 => 2,
            Version::HTTP_2 => 3,
            Version::HTTP_3 => 4,
            _ => 0,
        };
        if self.version.load(Ordering::Relaxed) != code {
            self.version.store(code, Ordering::Relaxed);
        }
    }

    // ---- requests and responses ----------------------------------------------------------

    /// A request was handed over: its response is pending, and so is its body, if it has one.
    pub(crate) fn request_started(&self, with_body: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let add = if with_body {
            RESPONSE | REQUEST
        } else {
            RESPONSE
        };
        self.work.fetch_add(add, Ordering::AcqRel);
    }

    /// Takes `counts` (a sum of [`REQUEST`], [`RESPONSE`], [`OWED`]) off the pending work.
    pub(crate) fn done(&self, counts: u64) {
        let before = self.work.fetch_sub(counts, Ordering::AcqRel);
        let after = before.wrapping_sub(counts);
        let last = counts & (RESPONSE * MASK) != 0 && (after >> FIELD) & MASK == 0;
        if last && (self.flag(EOF_DEFERRED) || !is_watching(self)) {
            // The last response of a half-closed connection: hand hyper its EOF now. Or the
            // last response ended outside the connection's poll (an HTTP/2 stream's task,
            // whose body hyper drops after it woke the connection): the watch looks again and
            // starts the idle clock.
            self.waker.wake();
        }
    }

    /// The peer sent EOF. Whether to hold it back from hyper: over HTTP/1, while a request
    /// handed to the service has not been answered (a half-close: `shutdown(SHUT_WR)`,
    /// `nc -N`). hyper would end the connection at this EOF, and lose the answer.
    ///
    /// The EOF may also have come inside a request body (the body is then incomplete): while
    /// a body is pending, `ClientIo` asks its reader to look again, and hands hyper the EOF
    /// once the reader waits for bytes that cannot come (see [`body_polls`](Self::body_polls)).
    pub(crate) fn defer_eof(&self) -> bool {
        let work = self.work();
        let http1 = matches!(self.version.load(Ordering::Relaxed), 1 | 2);
        // Only where request bodies are counted (RemoteClient's `Serve`, which the watch
        // runs): under a bare `ClientService` an EOF inside a body would look like this too.
        let deferred = http1
            && self.watched.load(Ordering::Relaxed)
            && !self.is_exported()
            && work.pending_responses() > 0;
        if deferred {
            self.flags.fetch_or(EOF_DEFERRED, Ordering::AcqRel);
            // The half-close clock starts.
            self.waker.wake();
        }
        deferred
    }

    /// Whether a held-back EOF can be handed over: no response is pending any more.
    pub(crate) fn eof_due(&self) -> bool {
        self.work().pending_responses() == 0
    }

    /// How many times a request body's reader found nothing to read (HTTP/1): once the EOF is
    /// held back, a reader that finds nothing more waits for bytes that cannot come.
    pub(crate) fn body_polls(&self) -> u32 {
        self.body_polls.load(Ordering::Acquire)
    }

    /// The probe's generation, read by a request body's reader before it polls the body (see
    /// [`body_pending`](Self::body_pending)).
    pub(crate) fn probe_generation(&self) -> u32 {
        self.probe_gen.load(Ordering::Acquire)
    }

    /// A request body's reader found nothing to read, and will be woken by `waker`. Once the
    /// EOF is held back, that means the body ends early: the serving task is woken to hand
    /// hyper the EOF. Counted only if the poll began under the probe that is current now
    /// (`generation`, read before the poll): a poll that began before the probe (on another
    /// thread, before hyper handed over the body's last bytes) says nothing about the body's
    /// end.
    pub(crate) fn body_pending(&self, waker: &std::task::Waker, generation: u32) {
        self.body_waker.register(waker);
        if generation != self.probe_gen.load(Ordering::Acquire) {
            return;
        }
        self.body_polls.fetch_add(1, Ordering::AcqRel);
        if self.flag(EOF_DEFERRED) {
            self.waker.wake();
        }
    }

    /// Starts a probe: asks a request body's reader that found nothing to look again (see
    /// [`body_pending`](Self::body_pending)); the reads found empty so far, as of this probe.
    pub(crate) fn probe_body_reader(&self) -> u32 {
        self.probe_gen.fetch_add(1, Ordering::AcqRel);
        let polls = self.body_polls.load(Ordering::Acquire);
        self.body_waker.wake();
        polls
    }

    /// Wakes the serving task: a response was dropped before it ended (an HTTP/2 stream reset
    /// on its own task), so the watch looks again (and may start the idle clock).
    pub(crate) fn wake_watch(&self) {
        self.waker.wake();
    }

    /// A response body waits for hyper to ask for more: the peer is not taking it.
    pub(crate) fn owe(&self) {
        self.work.fetch_add(OWED, Ordering::AcqRel);
    }

    /// A request body's handler waits for the peer (or no longer does).
    pub(crate) fn body_waiting(&self, waiting: bool) {
        if waiting {
            if self.bodies_waiting.fetch_add(1, Ordering::AcqRel) == 0 {
                // HTTP/2 bodies are read on other tasks: the watch starts the body clock.
                self.waker.wake();
            }
        } else {
            self.bodies_waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// HTTP/2: `n` request body bytes reached a handler.
    pub(crate) fn body_read(&self, n: usize) {
        self.body_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// HTTP/2: `n` response body bytes went through the peer's window.
    pub(crate) fn body_written(&self, n: usize) {
        self.body_written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A request asked for an upgrade (see [`UPGRADE_ASKED`]).
    pub(crate) fn upgrade_asked(&self) {
        if !self.flag(UPGRADE_ASKED) {
            self.flags.fetch_or(UPGRADE_ASKED, Ordering::AcqRel);
        }
    }

    pub(crate) fn is_upgrade_asked(&self) -> bool {
        self.flag(UPGRADE_ASKED)
    }

    pub(crate) fn hit_body_limit(&self) {
        self.flags.fetch_or(BODY_LIMIT, Ordering::AcqRel);
    }

    // ---- I/O -----------------------------------------------------------------------------

    pub(crate) fn attach(&self) {
        self.flags.fetch_or(ATTACHED, Ordering::AcqRel);
    }

    pub(crate) fn is_attached(&self) -> bool {
        self.flag(ATTACHED)
    }

    pub(crate) fn set_status(&self, status: Status) {
        self.status.fetch_or(status.bits(), Ordering::AcqRel);
    }

    /// `n` bytes read (one writer, the stream's owner: load and store are enough).
    pub(crate) fn read(&self, n: usize) {
        let read = self.bytes_read.load(Ordering::Relaxed);
        self.bytes_read.store(read + n as u64, Ordering::Relaxed);
    }

    /// `n` bytes written (one writer, the stream's owner).
    pub(crate) fn written(&self, n: usize) {
        let written = self.bytes_written.load(Ordering::Relaxed);
        self.bytes_written
            .store(written + n as u64, Ordering::Relaxed);
        if self.unwritten.load(Ordering::Relaxed) != 0 {
            let waiting = self.budget_waiting.load(Ordering::Relaxed);
            let taken = self.unproduced(n as u64);
            if waiting {
                // Answers the peer takes while streams wait for the budget: progress for the
                // response clock, which runs meanwhile (HTTP/2 counts body bytes only; these
                // were body bytes, as far as the estimate tells; control frames written
                // meanwhile count too, leniently).
                self.body_written(taken as usize);
            }
        }
    }

    // ---- HTTP/2 response budget ----------------------------------------------------------

    /// `n` response body bytes were handed to hyper (HTTP/2).
    pub(crate) fn produced(&self, n: u64) {
        self.unwritten.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` of the bytes counted by [`produced`](Self::produced) are gone: written, or dropped
    /// with a reset stream. Wakes the streams waiting for the budget once under it.
    /// Returns how many were still counted.
    pub(crate) fn unproduced(&self, n: u64) -> u64 {
        let before = self
            .unwritten
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or(0);
        if self.budget_waiting.load(Ordering::Acquire) {
            let limit = self.budget_limit();
            if before.saturating_sub(n) <= limit {
                self.wake_budget_waiters();
            }
        }
        before.min(n)
    }

    fn budget_limit(&self) -> u64 {
        // Set once, before any stream: the options of the client (see `set_budget`).
        self.budget.load(Ordering::Relaxed)
    }

    /// The connection's budget of unwritten response bytes (HTTP/2, under `RemoteClient`).
    pub(crate) fn set_budget(&self, limit: usize) {
        self.budget.store(limit as u64, Ordering::Relaxed);
    }

    /// Whether the connection holds more unwritten response bytes than its budget.
    pub(crate) fn over_budget(&self) -> bool {
        let limit = self.budget_limit();
        limit != 0 && self.unwritten.load(Ordering::Acquire) > limit
    }

    /// Whether a new stream may start: the connection holds no more unwritten response bytes
    /// than its budget. If not, `waker` is woken once it does.
    pub(crate) fn poll_budget(&self, waker: &std::task::Waker) -> bool {
        let limit = self.budget_limit();
        if limit == 0 || self.unwritten.load(Ordering::Acquire) <= limit {
            return true;
        }
        {
            let mut waiters = self
                .budget_waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !waiters.iter().any(|w| w.will_wake(waker)) {
                waiters.push(waker.clone());
            }
            if !self.budget_waiting.swap(true, Ordering::AcqRel) {
                // Streams now wait on the peer: the watch starts the response clock, so a
                // peer that does not read (or an estimate that stays high) ends in a cut, not
                // in a connection that waits for ever.
                self.waker.wake();
            }
        }
        // Look again: the bytes may have gone out meanwhile.
        if self.unwritten.load(Ordering::Acquire) <= limit {
            self.wake_budget_waiters();
            return true;
        }
        false
    }

    fn wake_budget_waiters(&self) {
        let waiters = {
            let mut waiters = self
                .budget_waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.budget_waiting.store(false, Ordering::Release);
            std::mem::take(&mut *waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    pub(crate) fn set_write_blocked(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    // ---- closing -------------------------------------------------------------------------

    /// Marks the close; `false` if it was marked already. Wakes the serving task, and shuts
    /// down the socket of an exported client, which user code may not be polling.
    pub(crate) fn close(&self) -> bool {
        if self.flags.fetch_or(CLOSING, Ordering::AcqRel) & CLOSING != 0 {
            return false;
        }
        self.set_status(Status::CLOSED_RDWR);
        self.waker.wake();
        if let Some(socket) = self.lock_export_socket().as_ref() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        #[cfg(feature = "http3")]
        if let Some(quic) = self.quic.get() {
            crate::http3::close_now(quic);
        }
        true
    }

    /// HTTP/3: the QUIC connection `close()` closes (closed at once if `close()` came first).
    #[cfg(feature = "http3")]
    pub(crate) fn set_quic(&self, connection: quinn::Connection) {
        let connection = self.quic.get_or_init(|| connection);
        if self.is_closing() {
            crate::http3::close_now(connection);
        }
    }

    /// Marks the graceful shutdown and wakes the serving task.
    pub(crate) fn shutdown(&self) {
        if self.flags.fetch_or(SHUTDOWN, Ordering::AcqRel) & SHUTDOWN == 0 {
            self.waker.wake();
        }
    }

    pub(crate) fn set_handing_over(&self) {
        self.handing_over.store(true, Ordering::Release);
    }

    pub(crate) fn set_unread_body(&self) {
        self.unread_body.store(true, Ordering::Release);
    }

    pub(crate) fn has_unread_body(&self) -> bool {
        self.unread_body.load(Ordering::Acquire)
    }

    pub(crate) fn is_write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    pub(crate) fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    pub(crate) fn set_exported(&self) {
        self.flags.fetch_or(EXPORTED, Ordering::AcqRel);
    }

    pub(crate) fn set_detached_timed_out(&self) {
        self.flags.fetch_or(DETACHED_TIMEOUT, Ordering::AcqRel);
    }

    /// Keeps a duplicate of an exported client's socket where `close()` finds it.
    pub(crate) fn keep_export_socket(&self, socket: socket2::Socket) {
        let mut slot = self.lock_export_socket();
        if self.is_closing() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        } else {
            *slot = Some(socket);
        }
    }

    fn lock_export_socket(&self) -> std::sync::MutexGuard<'_, Option<socket2::Socket>> {
        self.export_socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The last owner of the connection is gone; `false` if that was marked already.
    pub(crate) fn finish(&self) -> bool {
        drop(self.lock_export_socket().take());
        self.set_status(Status::CLOSED_RDWR);
        let first = self.flags.fetch_or(FINISHED, Ordering::AcqRel) & FINISHED == 0;
        if first {
            self.waker.wake();
        }
        first
    }

    /// The `on_close` callbacks have run (after [`finish`](Self::finish)): wakes the
    /// `closed()` waiters, so that what a callback did is seen by whoever awaited the close.
    pub(crate) fn callbacks_run(&self) {
        self.flags.fetch_or(CALLBACKS_RUN, Ordering::AcqRel);
        self.finished.notify_waiters();
    }
}

thread_local! {
    /// The state of the connection whose watch polls it on this thread, if any.
    static WATCHING: std::cell::Cell<*const State> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Whether `state`'s connection is being polled by its watch on this thread: a change made
/// here is seen by the watch right after the poll, without a wake-up.
pub(crate) fn is_watching(state: &State) -> bool {
    WATCHING.get() == std::ptr::from_ref(state)
}

/// Marks a connection as polled by its watch on this thread, until dropped (a panic too).
pub(crate) struct Watching {
    outer: *const State,
}

impl Watching {
    pub(crate) fn enter(state: &State) -> Self {
        Watching {
            outer: WATCHING.replace(std::ptr::from_ref(state)),
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHING.set(self.outer);
    }
}
