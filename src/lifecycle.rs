//! The lifecycle of a served connection: its phases, and the clock of each.
//!
//! | phase | clock | the peer keeps the connection by |
//! |---|---|---|
//! | waiting for the first bytes, idle between requests (HTTP/1) | [`Options::http1_timeout`] from the start of the wait | sending a request |
//! | reading a request head (HTTP/1) | [`Options::http1_timeout`] from the head's first byte | finishing the head |
//! | no stream open (HTTP/2) | [`Options::http2_timeout`]; control frames are not activity | opening a stream |
//! | in service, handler working or service not ready | none: never the peer's fault | — |
//! | in service, a handler waits for request body bytes | [`Options::min_request_body_rate`], over the time spent waiting | sending at that rate |
//! | in service, a response waits on the peer (write blocked, HTTP/2 window at 0) | [`Options::min_response_rate`], over the time spent waiting | reading at that rate |
//! | in service after the peer's EOF (HTTP/1 half-close, or a peer gone) | [`Options::half_close_timeout`] from the EOF | — (the answer must be ready in time) |
//!
//! A half-closed connection (the peer sent EOF after a complete request) stays in service
//! until it is answered, under [`Options::half_close_timeout`] (a peer gone altogether sends
//! the same EOF) and the response clock. Detached connections are watched by
//! [`RemoteClient`](crate::RemoteClient) with [`Options::detached_timeout`].
//!
//! The [`Watch`] reads the connection's state (see `client::state`) after every poll of the
//! connection, which costs a few atomic loads; the clock is read only when the phase changes
//! or while a rate clock runs, and one deadline is armed per connection. A deadline that moved
//! later is not re-armed at once: the timer fires early, once, and is re-armed then.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::client::state::{Snapshot, State, Watching};
use crate::options::{MinDataRate, Options};

/// The HTTP version a connection turned out to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Which clock closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// Nothing to do for too long: no first byte, idle between HTTP/1 requests, or no HTTP/2
    /// stream open ([`Options::http1_timeout`], [`Options::http2_timeout`]).
    Idle,
    /// An HTTP/1 request head took longer than [`Options::http1_timeout`] from its first byte.
    RequestHead,
    /// A handler waited for request body bytes that came slower than
    /// [`Options::min_request_body_rate`].
    RequestBody,
    /// A response waited on a peer that took it slower than [`Options::min_response_rate`].
    Response,
    /// An HTTP/1 peer sent its EOF after a complete request, and its answer was not ready
    /// within [`Options::half_close_timeout`].
    HalfClose,
}

/// What interrupts serving a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Closed,
    Shutdown,
    TimedOut(TimeoutKind),
}

/// What a look at the connection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Quiet,
    /// The timer was armed for an earlier deadline: poll it to register.
    Rearmed,
    TimedOut(TimeoutKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Service,
}

/// A minimum-rate clock, as a bucket of waiting time: it starts with `grace` in it, every byte
/// the peer moves adds `1 / rate` seconds, every second spent waiting on the peer takes one
/// out, and it holds at most [`CREDIT`] times `grace`. Empty while waiting: the peer is too slow.
/// So a peer must average the rate over the time it is waited on, and credit earned by a fast
/// start cannot buy a long stall later (a drip after a burst is cut too).
#[derive(Debug, Default)]
pub(crate) struct RateClock {
    running: bool,
    waiting: bool,
    last: Option<Instant>,
    bytes: u64,
    credit: Duration,
}

/// How many graces of credit a fast peer can bank.
const CREDIT: u32 = 4;

impl RateClock {
    pub(crate) fn stop(&mut self) {
        *self = RateClock::default();
    }

    pub(crate) fn update(&mut self, rate: &MinDataRate, now: Instant, waiting: bool, bytes: u64) {
        if !self.running {
            if !waiting {
                return;
            }
            self.running = true;
            self.bytes = bytes;
            self.credit = rate.grace();
        } else {
            let moved = bytes.saturating_sub(self.bytes);
            self.bytes = bytes;
            let mut credit = self.credit.saturating_add(rate.allowance_of(moved));
            if let (true, Some(last)) = (self.waiting, self.last) {
                credit = credit.saturating_sub(now.saturating_duration_since(last));
            }
            self.credit = credit.min(rate.grace().saturating_mul(CREDIT));
        }
        self.waiting = waiting;
        self.last = Some(now);
    }

    /// When the bucket runs dry if nothing more moves, while waiting on the peer.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if !self.running || !self.waiting {
            return None;
        }
        let last = self.last?;
        last.checked_add(bounded(self.credit))
    }
}

/// The longest clock taken literally: longer ones would overflow `Instant`.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

pub(crate) fn bounded(timeout: Duration) -> Duration {
    timeout.min(LONGEST)
}

fn earliest(
    a: Option<(Instant, TimeoutKind)>,
    b: Option<(Instant, TimeoutKind)>,
) -> Option<(Instant, TimeoutKind)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Watches a connection for `close()`, `shutdown()` and its clocks, while it is served.
pub(crate) struct Watch<'a> {
    state: &'a State,
    options: &'a Options,
    protocol: Protocol,
    sleep: Pin<Box<Sleep>>,
    /// The task the armed timer wakes (it has been polled since it was armed): while the
    /// connection's task polls again with the same waker and the timer has not gone off, the
    /// timer is not polled again (once per poll of the connection otherwise).
    timer_waker: Option<Waker>,
    armed: Option<Instant>,
    phase: Phase,
    since: Instant,
    /// Requests handed over, at the last look.
    requests: u64,
    /// Bytes read when the connection went idle: more means a request head has begun.
    read_base: u64,
    body: RateClock,
    response: RateClock,
    /// When the watch first saw the peer's EOF held back (HTTP/1 half-close).
    half_closed: Option<Instant>,
    shutdown_seen: bool,
}

impl<'a> Watch<'a> {
    /// A watch for a connection that starts now, waiting for its first bytes.
    pub(crate) fn new(state: &'a State, options: &'a Options, protocol: Protocol) -> Self {
        state.set_watched();
        let now = Instant::now();
        let mut watch = Watch {
            state,
            options,
            protocol,
            sleep: Box::pin(tokio::time::sleep_until(now)),
            timer_waker: None,
            armed: None,
            phase: Phase::Idle,
            since: now,
            requests: 0,
            read_base: 0,
            body: RateClock::default(),
            response: RateClock::default(),
            half_closed: None,
            shutdown_seen: false,
        };
        let deadline = watch.phase_deadline();
        watch.arm(deadline.map(|(at, _)| at));
        watch
    }

    /// The connection turned out to speak `protocol` (after the sniff).
    pub(crate) fn set_protocol(&mut self, protocol: Protocol) {
        if self.protocol != protocol {
            self.protocol = protocol;
            let deadline = self.phase_deadline();
            self.arm(deadline.map(|(at, _)| at));
        }
    }

    pub(crate) fn shutdown_seen(&self) -> bool {
        self.shutdown_seen
    }

    /// Drives `fut` until it completes, or until an event interrupts it.
    pub(crate) async fn run<T>(
        &mut self,
        mut fut: Pin<&mut impl Future<Output = T>>,
    ) -> Result<T, Event> {
        poll_fn(|cx| {
            if let Poll::Ready(event) = self.poll_event(cx) {
                return Poll::Ready(Err(event));
            }
            let output = {
                let _watching = Watching::enter(self.state);
                fut.as_mut().poll(cx)
            };
            if output.is_pending() && self.evaluate(false) == Verdict::Rearmed {
                if let Poll::Ready(event) = self.poll_timer(cx) {
                    return Poll::Ready(Err(event));
                }
            }
            output.map(Ok)
        })
        .await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        self.state.register(cx.waker());
        if self.state.is_closing() {
            return Poll::Ready(Event::Closed);
        }
        if !self.shutdown_seen && self.state.is_shutdown() {
            self.shutdown_seen = true;
            return Poll::Ready(Event::Shutdown);
        }
        self.poll_timer(cx)
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        while self.armed.is_some() {
            if !self.sleep.is_elapsed()
                && self
                    .timer_waker
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                // Registered with this task, not gone off: it wakes the task when it does.
                return Poll::Pending;
            }
            // A task out of its coop budget gets `Pending` from the timer without the timer
            // taking its waker (tokio wakes the task to poll again instead): only a poll made
            // with budget left registered the waker.
            let registers = tokio::task::coop::has_budget_remaining();
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.timer_waker = registers.then(|| cx.waker().clone());
                return Poll::Pending;
            }
            self.armed = None;
            self.timer_waker = None;
            if let Verdict::TimedOut(kind) = self.evaluate(true) {
                return Poll::Ready(Event::TimedOut(kind));
            }
        }
        Poll::Pending
    }

    /// Arms the timer for `deadline` if that is earlier than what is armed; whether it did.
    fn arm(&mut self, deadline: Option<Instant>) -> bool {
        match deadline {
            Some(at) if self.armed.is_none_or(|armed| at < armed) => {
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
                self.timer_waker = None;
                true
            }
            _ => false,
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        match self.protocol {
            Protocol::Http1 => self.options.http1_timeout(),
            Protocol::Http2 => self.options.http2_timeout(),
        }
    }

    /// The deadline of the idle and head phases.
    fn phase_deadline(&self) -> Option<(Instant, TimeoutKind)> {
        let (timeout, kind) = match self.phase {
            Phase::Idle => (self.idle_timeout(), TimeoutKind::Idle),
            Phase::Head => (self.options.http1_timeout(), TimeoutKind::RequestHead),
            Phase::Service => return None,
        };
        let at = self.since.checked_add(bounded(timeout?))?;
        Some((at, kind))
    }

    /// Looks at the connection's state: moves to its phase, runs the rate clocks, arms the
    /// timer. With `fired` (the timer went off), also says whether a clock ran out.
    fn evaluate(&mut self, fired: bool) -> Verdict {
        let snap = self.state.snapshot();
        let mut now = fired.then(Instant::now);
        let output_waiting = snap.write_blocked || snap.owed() > 0 || snap.budget_waiting;
        let input_waiting = snap.bodies_waiting > 0;
        let busy = snap.pending_responses() > 0 || snap.pending_requests() > 0 || output_waiting;
        // Requests came (and maybe went) since the last look.
        let restarted = snap.requests != self.requests;
        self.requests = snap.requests;
        let phase = if busy {
            // The bytes of the requests being served are theirs: only bytes that come after
            // the last look in this phase begin a new request head.
            self.read_base = snap.bytes_read;
            Phase::Service
        } else if !restarted
            && self.protocol == Protocol::Http1
            && snap.bytes_read != self.read_base
        {
            Phase::Head
        } else {
            Phase::Idle
        };
        let mut changed = false;
        if phase != self.phase || (restarted && phase == Phase::Idle) {
            self.phase = phase;
            changed = true;
            // Only the idle and head clocks count from the phase's start (the service phase
            // has none, and its rate clocks read the time themselves).
            if phase != Phase::Service {
                self.since = *now.get_or_insert_with(Instant::now);
            }
            if phase == Phase::Idle {
                self.read_base = snap.bytes_read;
            }
            if phase != Phase::Service {
                self.body.stop();
                self.response.stop();
            }
        }
        let deadline = match self.phase {
            Phase::Service => self.rate_deadline(&snap, &mut now, input_waiting, output_waiting),
            _ if changed || fired => self.phase_deadline(),
            _ => return Verdict::Quiet,
        };
        if let (true, Some((at, kind)), Some(now)) = (fired, deadline, now) {
            if at <= now {
                return Verdict::TimedOut(kind);
            }
        }
        if self.arm(deadline.map(|(at, _)| at)) {
            Verdict::Rearmed
        } else {
            Verdict::Quiet
        }
    }

    fn rate_deadline(
        &mut self,
        snap: &Snapshot,
        now: &mut Option<Instant>,
        input_waiting: bool,
        output_waiting: bool,
    ) -> Option<(Instant, TimeoutKind)> {
        let mut deadline = None;
        if let (true, Some(timeout)) = (snap.eof_deferred, self.options.half_close_timeout()) {
            let since = *self
                .half_closed
                .get_or_insert_with(|| *now.get_or_insert_with(Instant::now));
            let at = since.checked_add(bounded(timeout));
            deadline = at.map(|at| (at, TimeoutKind::HalfClose));
        }
        if let Some(rate) = self.options.min_request_body_rate() {
            if snap.pending_requests() == 0 && !input_waiting {
                self.body.stop();
            } else if input_waiting || self.body.running {
                let at = *now.get_or_insert_with(Instant::now);
                // HTTP/2: body bytes only; PING, SETTINGS and WINDOW_UPDATE are not progress.
                let bytes = match self.protocol {
                    Protocol::Http1 => snap.bytes_read,
                    Protocol::Http2 => snap.body_read,
                };
                self.body.update(&rate, at, input_waiting, bytes);
                let body = self.body.deadline();
                deadline = earliest(deadline, body.map(|at| (at, TimeoutKind::RequestBody)));
            }
        }
        if let Some(rate) = self.options.min_response_rate() {
            if snap.pending_responses() == 0 && !output_waiting {
                self.response.stop();
            } else if output_waiting || self.response.running {
                let at = *now.get_or_insert_with(Instant::now);
                let bytes = match self.protocol {
                    Protocol::Http1 => snap.bytes_written,
                    Protocol::Http2 => snap.body_written,
                };
                self.response.update(&rate, at, output_waiting, bytes);
                let response = self.response.deadline();
                deadline = earliest(deadline, response.map(|at| (at, TimeoutKind::Response)));
            }
        }
        deadline
    }
}
