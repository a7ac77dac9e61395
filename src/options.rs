//! [`Options`]: the limits and timeouts a connection runs under.

use std::time::Duration;

use http::Method;

/// The limits and clocks a connection runs under, with amphp's defaults (and Kestrel's for the
/// rate clocks). One `Options` serves a [`Server`](crate::Server) and a
/// [`RemoteClient`](crate::RemoteClient) alike.
///
/// Build it from the defaults with the `with_*` setters; read it with the getters, for example
/// in a handler through [`ClientInfo::options`](crate::ClientInfo::options). The clocks are
/// `Option`s: `None` turns one off.
///
/// ```
/// use std::time::Duration;
/// use hyper_remote_client::Options;
///
/// let options = Options::default()
///     .with_http1_timeout(Duration::from_secs(5))
///     .with_min_response_rate(None) // no rate clock on responses
///     .with_body_size_limit(1024 * 1024);
/// assert_eq!(options.http1_timeout(), Some(Duration::from_secs(5)));
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    connection_limit: usize,
    connections_per_ip: usize,
    per_ip_limit_on_loopback: bool,
    http1_timeout: Option<Duration>,
    http2_timeout: Option<Duration>,
    min_request_body_rate: Option<MinDataRate>,
    min_response_rate: Option<MinDataRate>,
    tls_setup_timeout: Option<Duration>,
    detached_timeout: Option<Duration>,
    half_close_timeout: Option<Duration>,
    header_size_limit: usize,
    body_size_limit: usize,
    concurrent_stream_limit: u32,
    allowed_methods: Vec<Method>,
    shutdown_timeout: Duration,
    http2_cleartext: bool,
    http2_inline_streams: bool,
    http2_buffered_response_limit: usize,
    upgrade_probation: Duration,
    alt_svc: Option<http::HeaderValue>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connection_limit: 10_000,
            connections_per_ip: 30,
            per_ip_limit_on_loopback: false,
            http1_timeout: Some(Duration::from_secs(15)),
            http2_timeout: Some(Duration::from_secs(60)),
            min_request_body_rate: Some(MinDataRate::KESTREL),
            min_response_rate: Some(MinDataRate::KESTREL),
            tls_setup_timeout: Some(Duration::from_secs(5)),
            detached_timeout: None,
            half_close_timeout: Some(Duration::from_secs(10)),
            header_size_limit: 32 * 1024,
            body_size_limit: 128 * 1024,
            concurrent_stream_limit: 256,
            allowed_methods: vec![
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::HEAD,
                Method::OPTIONS,
                Method::DELETE,
            ],
            shutdown_timeout: Duration::from_secs(3),
            http2_cleartext: true,
            http2_inline_streams: true,
            http2_buffered_response_limit: 4 << 20,
            upgrade_probation: Duration::from_secs(5),
            alt_svc: None,
        }
    }
}

impl Options {
    /// Connections a server keeps open at once; over it, new connections are closed at once.
    /// Default 10 000.
    pub fn connection_limit(&self) -> usize {
        self.connection_limit
    }

    /// Sets [`connection_limit`](Self::connection_limit).
    pub fn with_connection_limit(mut self, value: usize) -> Self {
        self.connection_limit = value;
        self
    }

    /// Connections from one IP (IPv4 /32, IPv6 /56) a server keeps open at once. Default 30.
    /// Unix sockets are exempt, and so is loopback unless `per_ip_limit_on_loopback` is on.
    pub fn connections_per_ip(&self) -> usize {
        self.connections_per_ip
    }

    /// Sets [`connections_per_ip`](Self::connections_per_ip).
    pub fn with_connections_per_ip(mut self, value: usize) -> Self {
        self.connections_per_ip = value;
        self
    }

    /// Apply `connections_per_ip` to loopback addresses (127.0.0.0/8, ::1) too. Default off.
    pub fn per_ip_limit_on_loopback(&self) -> bool {
        self.per_ip_limit_on_loopback
    }

    /// Sets [`per_ip_limit_on_loopback`](Self::per_ip_limit_on_loopback).
    pub fn with_per_ip_limit_on_loopback(mut self, value: bool) -> Self {
        self.per_ip_limit_on_loopback = value;
        self
    }

    /// HTTP/1 timeout (nginx's `keepalive_timeout` and `client_header_timeout`, Go's
    /// `IdleTimeout` and `ReadHeaderTimeout`): how long an HTTP/1 connection may wait for its
    /// first byte or sit idle between requests, and how long a request head may take from its
    /// first byte to its last. `None`: no limit. Default 15 s (amphp's).
    pub fn http1_timeout(&self) -> Option<Duration> {
        self.http1_timeout
    }

    /// Sets [`http1_timeout`](Self::http1_timeout).
    pub fn with_http1_timeout(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.http1_timeout = value.into();
        self
    }

    /// HTTP/2 timeout: how long an HTTP/2 connection may have no stream open. Control frames
    /// (`PING`, `SETTINGS`, `WINDOW_UPDATE`) are not activity. `None`: no limit. Default 60 s
    /// (amphp's).
    pub fn http2_timeout(&self) -> Option<Duration> {
        self.http2_timeout
    }

    /// Sets [`http2_timeout`](Self::http2_timeout).
    pub fn with_http2_timeout(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.http2_timeout = value.into();
        self
    }

    /// While a handler waits for request body bytes, the peer must send them at this rate
    /// (Kestrel's `MinRequestBodyDataRate`). Time the handler spends on other work does not
    /// count. `None`: no limit. Default 240 bytes/s after a 5 s grace.
    pub fn min_request_body_rate(&self) -> Option<MinDataRate> {
        self.min_request_body_rate
    }

    /// Sets [`min_request_body_rate`](Self::min_request_body_rate).
    pub fn with_min_request_body_rate(mut self, value: impl Into<Option<MinDataRate>>) -> Self {
        self.min_request_body_rate = value.into();
        self
    }

    /// While a response waits on the peer (a write that does not go through, or an HTTP/2
    /// flow-control window held at 0), the peer must take it at this rate (Kestrel's
    /// `MinResponseDataRate`, nginx's `send_timeout`). A handler slow to produce its response
    /// is not the peer's fault and is never cut. `None`: no limit. Default 240 bytes/s after a
    /// 5 s grace.
    pub fn min_response_rate(&self) -> Option<MinDataRate> {
        self.min_response_rate
    }

    /// Sets [`min_response_rate`](Self::min_response_rate).
    pub fn with_min_response_rate(mut self, value: impl Into<Option<MinDataRate>>) -> Self {
        self.min_response_rate = value.into();
        self
    }

    /// Time allowed for a TLS handshake. `None`: no limit. Default 5 s.
    pub fn tls_setup_timeout(&self) -> Option<Duration> {
        self.tls_setup_timeout
    }

    /// Sets [`tls_setup_timeout`](Self::tls_setup_timeout).
    pub fn with_tls_setup_timeout(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.tls_setup_timeout = value.into();
        self
    }

    /// Idle clock of a connection handed over after an upgrade ([`detach`](crate::detach)):
    /// no byte read or written for this long and the client is closed (between 1 and 1.25
    /// times this after the last byte). `None` (the default): the user's protocol decides;
    /// the shutdown deadline still closes detached connections.
    pub fn detached_timeout(&self) -> Option<Duration> {
        self.detached_timeout
    }

    /// Sets [`detached_timeout`](Self::detached_timeout).
    pub fn with_detached_timeout(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.detached_timeout = value.into();
        self
    }

    /// Largest request head in bytes (request line and headers): HTTP/1 answers 431 over it,
    /// HTTP/2 refuses the header block. Default 32 KiB.
    pub fn header_size_limit(&self) -> usize {
        self.header_size_limit
    }

    /// Sets [`header_size_limit`](Self::header_size_limit).
    pub fn with_header_size_limit(mut self, value: usize) -> Self {
        self.header_size_limit = value;
        self
    }

    /// Largest request body in bytes: a `Content-Length` over it is answered 413 at once, a
    /// streamed body over it fails with `http_body_util::LengthLimitError` (which axum's
    /// extractors answer with 413). Default 128 KiB.
    pub fn body_size_limit(&self) -> usize {
        self.body_size_limit
    }

    /// Sets [`body_size_limit`](Self::body_size_limit).
    pub fn with_body_size_limit(mut self, value: usize) -> Self {
        self.body_size_limit = value;
        self
    }

    /// Concurrent HTTP/2 streams per connection. Default 256.
    pub fn concurrent_stream_limit(&self) -> u32 {
        self.concurrent_stream_limit
    }

    /// Sets [`concurrent_stream_limit`](Self::concurrent_stream_limit).
    pub fn with_concurrent_stream_limit(mut self, value: u32) -> Self {
        self.concurrent_stream_limit = value;
        self
    }

    /// Methods handed to the service. Other standard methods are answered 405 with an `Allow`
    /// header, unknown methods 501, and `OPTIONS *` 204 with `Allow`.
    /// Default: GET, POST, PUT, PATCH, HEAD, OPTIONS, DELETE.
    pub fn allowed_methods(&self) -> &[Method] {
        &self.allowed_methods
    }

    /// Sets [`allowed_methods`](Self::allowed_methods).
    pub fn with_allowed_methods(mut self, value: impl Into<Vec<Method>>) -> Self {
        self.allowed_methods = value.into();
        self
    }

    /// How long a graceful shutdown waits for in-flight responses before closing. Default 3 s.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn with_shutdown_timeout(mut self, value: Duration) -> Self {
        self.shutdown_timeout = value;
        self
    }

    /// The `Alt-Svc` header (RFC 7838) put on the HTTP/1.1 and HTTP/2 answers of TLS
    /// connections that do not carry one already, to advertise HTTP/3: e.g.
    /// `h3=":443"; ma=86400` (with the `http3` feature,
    /// [`QuicListener::alt_svc`](crate::http3::QuicListener::alt_svc) gives the value for its
    /// port). Default none. Not sent on plain connections (a browser takes an alternative only
    /// from an `https` origin) nor on HTTP/3 answers.
    pub fn alt_svc(&self) -> Option<&http::HeaderValue> {
        self.alt_svc.as_ref()
    }

    /// Sets [`alt_svc`](Self::alt_svc).
    pub fn with_alt_svc(mut self, value: impl Into<Option<http::HeaderValue>>) -> Self {
        self.alt_svc = value.into();
        self
    }

    /// Serve HTTP/2 with prior knowledge (h2c) on connections without TLS, next to HTTP/1.1.
    /// Default on; off means HTTP/1.1 only without TLS.
    pub fn http2_cleartext(&self) -> bool {
        self.http2_cleartext
    }

    /// Sets [`http2_cleartext`](Self::http2_cleartext).
    pub fn with_http2_cleartext(mut self, value: bool) -> Self {
        self.http2_cleartext = value;
        self
    }

    /// Answer an HTTP/2 stream whose response is ready at once on its connection's task, without
    /// a task of its own (see [`StreamExecutor`](crate::driver::StreamExecutor)); a stream that has to
    /// wait gets its task either way. Default on: it saves a task spawn and a task switch per
    /// request, and the connection writes the responses of a batch of such streams together
    /// (BENCHMARKS.md measures it).
    ///
    /// The first polls of a connection's batch of new streams are bounded (see
    /// [`StreamExecutor`](crate::driver::StreamExecutor)): a stream whose first poll does over 50 µs of
    /// synchronous work makes the rest of its batch spawn, and a connection whose streams keep
    /// doing so spawns them all for a while. Turn it off to spawn every stream from the start
    /// (each a task the runtime can run on any worker), for example when most handlers do long
    /// synchronous work before their first wait.
    pub fn http2_inline_streams(&self) -> bool {
        self.http2_inline_streams
    }

    /// Sets [`http2_inline_streams`](Self::http2_inline_streams).
    pub fn with_http2_inline_streams(mut self, value: bool) -> Self {
        self.http2_inline_streams = value;
        self
    }

    /// How long an HTTP/1 connection whose peer has sent its EOF after a complete request (a
    /// half-close: `shutdown(SHUT_WR)`, `nc -N`) waits for its answer. Default 10 s.
    ///
    /// A peer that is gone altogether (its process exited, its tab closed) sends the same EOF:
    /// both are answered if the answer is ready in time, and are closed when it is not (the
    /// handler's future is dropped, [`ClientInfo::closed`](crate::ClientInfo::closed)
    /// resolves, [`TimeoutKind::HalfClose`](crate::TimeoutKind::HalfClose)). A write that fails
    /// meanwhile ends the connection at once. The handler sees the EOF at once as
    /// [`Status::CLOSED_RD`](crate::Status::CLOSED_RD). `None`: wait as long as the handler
    /// takes.
    pub fn half_close_timeout(&self) -> Option<Duration> {
        self.half_close_timeout
    }

    /// Sets [`half_close_timeout`](Self::half_close_timeout).
    pub fn with_half_close_timeout(mut self, value: impl Into<Option<Duration>>) -> Self {
        self.half_close_timeout = value.into();
        self
    }

    /// HTTP/2: response body bytes one connection may hold that the peer has not taken yet
    /// (produced by handlers and not yet written to the socket, because the peer's flow-control
    /// windows are closed). Default 4 MiB.
    ///
    /// Over it, the connection's new streams wait before their handler runs, until the peer has
    /// read enough; streams already answering go on. It bounds the memory a peer that opens
    /// many streams and reads slowly can make a connection hold to about this much plus one
    /// answer per stream whose handler was already running; the
    /// [`min_response_rate`](Self::min_response_rate) clock still cuts a peer that reads too
    /// slowly. The count is an estimate from the bytes written to the socket (frame headers and
    /// control frames count as read), so it errs on the lenient side. At least 1.
    pub fn http2_buffered_response_limit(&self) -> usize {
        self.http2_buffered_response_limit
    }

    /// Sets [`http2_buffered_response_limit`](Self::http2_buffered_response_limit) (at least 1).
    pub fn with_http2_buffered_response_limit(mut self, value: usize) -> Self {
        self.http2_buffered_response_limit = value.max(1);
        self
    }

    /// In a binary upgrade ([`Server::take_over`](crate::Server::take_over)): how long the new
    /// process serves before it tells the old one it is healthy. Until then the old process
    /// keeps its listening sockets (not accepting) and takes them back, accepting again, if
    /// the new process goes away (crashes, is killed): a rollback. Connections the new
    /// process had accepted die with it. Default 5 s.
    pub fn upgrade_probation(&self) -> Duration {
        self.upgrade_probation
    }

    /// Sets [`upgrade_probation`](Self::upgrade_probation).
    pub fn with_upgrade_probation(mut self, value: Duration) -> Self {
        self.upgrade_probation = value;
        self
    }

    /// The value of an `Allow` header for these options: the allowed methods, comma separated.
    pub(crate) fn allow_header(&self) -> String {
        let names: Vec<&str> = self.allowed_methods.iter().map(Method::as_str).collect();
        names.join(", ")
    }
}

/// A minimum data rate (Kestrel's `MinDataRate`): the bytes a peer moves must average at least
/// `bytes_per_second` over the time spent waiting on it, after a first `grace` of waiting. A
/// fast start banks at most four graces of credit: a stall after a burst is cut after that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MinDataRate {
    bytes_per_second: u64,
    grace: Duration,
}

impl MinDataRate {
    /// Kestrel's default: 240 bytes/s after 5 s.
    pub const KESTREL: MinDataRate = MinDataRate {
        bytes_per_second: 240,
        grace: Duration::from_secs(5),
    };

    /// At least `bytes_per_second` (at least 1), measured once the peer has been waited on for
    /// `grace` (at least [`MIN_GRACE`](Self::MIN_GRACE): with no grace the first wait would
    /// already be too slow).
    pub fn new(bytes_per_second: u64, grace: Duration) -> Self {
        MinDataRate {
            bytes_per_second: bytes_per_second.max(1),
            grace: grace.max(Self::MIN_GRACE),
        }
    }

    /// The shortest grace: 100 ms.
    pub const MIN_GRACE: Duration = Duration::from_millis(100);

    /// The rate in bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// The waiting time before the rate is enforced.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// How long `bytes` may take at this rate.
    pub(crate) fn allowance_of(&self, bytes: u64) -> Duration {
        Duration::try_from_secs_f64(bytes as f64 / self.bytes_per_second as f64)
            .unwrap_or(Duration::MAX)
    }
}
