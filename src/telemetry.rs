//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): the
//! application installs the exporter (Prometheus, OpenTelemetry, statsd...), the crate records.
//!
//! Request metrics follow the OpenTelemetry HTTP server conventions; connection metrics are
//! named after Kestrel's (`kestrel.*`, themselves OpenTelemetry conventions) under the prefix
//! `hyper_remote_client.`:
//!
//! | name | kind | unit | labels | recorded by |
//! |---|---|---|---|---|
//! | [`ACTIVE_REQUESTS`] `http.server.active_requests` | gauge | requests | `http.request.method`, `url.scheme` | every service of the crate ([`RemoteClient`](crate::RemoteClient), [`Server`](crate::Server), [`ClientService`](crate::ClientService)) |
//! | [`REQUEST_DURATION`] `http.server.request.duration` | histogram | s | `http.request.method`, `http.response.status_code` (or `error.type`), `network.protocol.version`, `url.scheme` | the same |
//! | [`ACTIVE_CONNECTIONS`] | gauge | connections | `network.transport`: `tcp`, `unix`, `quic` (HTTP/3) | [`Server`](crate::Server) (from accept to close, TLS handshakes included) |
//! | [`CONNECTION_DURATION`] | histogram | s | `network.transport` | [`Server`](crate::Server) |
//! | [`REJECTED_CONNECTIONS`] | counter | connections | `reason`: `connection_limit`, `per_ip_limit`, `proxy_protocol`, `acceptor` | [`Server`](crate::Server) |
//! | [`UPGRADED_CONNECTIONS`] | counter | connections | | [`RemoteClient`](crate::RemoteClient) (a connection handed over after `101` / `CONNECT`) |
//! | [`TLS_HANDSHAKE_DURATION`] | histogram | s | `tls.protocol.version`, or `error.type` (`timeout`, `error`) | [`TlsAcceptor`](crate::tls::TlsAcceptor), and QUIC handshakes (feature `http3`) |
//! | [`ACTIVE_TLS_HANDSHAKES`] | gauge | handshakes | | [`TlsAcceptor`](crate::tls::TlsAcceptor) |
//! | [`TIMEOUTS`] | counter | connections | `phase`: `idle`, `request_head`, `request_body`, `response`, `half_close`, `detached`, `tls_handshake` | [`RemoteClient`](crate::RemoteClient), [`TlsAcceptor`](crate::tls::TlsAcceptor) |
//! | [`HANDED_OVER_CONNECTIONS`] | counter | connections | | [`Server`](crate::Server) (an idle connection moved to the process replacing this one) |
//!
//! The counters whose series are known in advance (rejections by reason, timeouts by phase,
//! upgraded and handed-over connections) are exported at 0 from the start (by [`describe`],
//! and by [`Server`](crate::Server) when it starts serving), so that `rate()` and alerts see
//! the first event.
//!
//! The request duration runs from the request head read to the end of the response body
//! handed to hyper (or its drop: a reset, a closed connection). Call [`describe`] once the
//! exporter is installed, so that it knows the units (Prometheus then names the histograms
//! `*_seconds` and, with recommended naming, the counters `*_total`), and give the histograms
//! [`DURATION_BUCKETS`]:
//!
//! ```ignore
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
//!     .with_recommended_naming(true)
//!     .set_buckets(hyper_remote_client::telemetry::DURATION_BUCKETS)?
//!     .install_recorder()?;
//! hyper_remote_client::telemetry::describe();
//! // `install_recorder` spawns no upkeep: without it, histogram samples pile up between
//! // scrapes. Run it every few seconds (`PrometheusBuilder::install` does, with its own
//! // HTTP listener).
//! let upkeep = prometheus.clone();
//! tokio::spawn(async move {
//!     let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
//!     loop {
//!         every.tick().await;
//!         upkeep.run_upkeep();
//!     }
//! });
//! // GET /metrics answers prometheus.render()
//! ```
//!
//! Cost: the label sets of a connection are looked up once per connection and kept (a
//! request records through handles it already has); nothing is recorded per byte.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use http::{Method, StatusCode, Version};
use metrics::{Gauge, Histogram, Label, Unit};

/// `http.server.active_requests`: requests being served (head read, response not yet done).
pub const ACTIVE_REQUESTS: &str = "http.server.active_requests";
/// `http.server.request.duration`, in seconds.
pub const REQUEST_DURATION: &str = "http.server.request.duration";
/// Connections open now: accepted, in their TLS handshake or PROXY header, served, or detached.
pub const ACTIVE_CONNECTIONS: &str = "hyper_remote_client.active_connections";
/// How long connections stayed open, in seconds (from accept to close).
pub const CONNECTION_DURATION: &str = "hyper_remote_client.connection.duration";
/// Connections refused, by `reason`.
pub const REJECTED_CONNECTIONS: &str = "hyper_remote_client.rejected_connections";
/// Connections handed over after an HTTP upgrade (`101`) or a `CONNECT`.
pub const UPGRADED_CONNECTIONS: &str = "hyper_remote_client.upgraded_connections";
/// TLS handshake durations, in seconds, failed ones included (with `error.type`).
pub const TLS_HANDSHAKE_DURATION: &str = "hyper_remote_client.tls_handshake.duration";
/// TLS handshakes in progress.
pub const ACTIVE_TLS_HANDSHAKES: &str = "hyper_remote_client.active_tls_handshakes";
/// Connections closed because a clock of their lifecycle ran out, by `phase`.
pub const TIMEOUTS: &str = "hyper_remote_client.timeouts";
/// Idle HTTP/1 connections handed to the process that replaced this one (a binary upgrade).
pub const HANDED_OVER_CONNECTIONS: &str = "hyper_remote_client.handed_over_connections";

/// Histogram buckets for the durations, in seconds: OpenTelemetry's advice for
/// `http.server.request.duration`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Describes every metric (unit and help text) to the installed recorder. Call it after
/// installing the exporter.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        ACTIVE_REQUESTS,
        Unit::Count,
        "Number of active HTTP server requests."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests."
    );
    describe_gauge!(
        ACTIVE_CONNECTIONS,
        Unit::Count,
        "Number of connections that are currently open."
    );
    describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "The duration of connections on the server."
    );
    describe_counter!(
        REJECTED_CONNECTIONS,
        Unit::Count,
        "Number of connections rejected by the server, by reason."
    );
    describe_counter!(
        UPGRADED_CONNECTIONS,
        Unit::Count,
        "Number of HTTP connections handed over after an upgrade."
    );
    describe_histogram!(
        TLS_HANDSHAKE_DURATION,
        Unit::Seconds,
        "The duration of TLS handshakes on the server."
    );
    describe_gauge!(
        ACTIVE_TLS_HANDSHAKES,
        Unit::Count,
        "Number of TLS handshakes that are currently in progress on the server."
    );
    describe_counter!(
        TIMEOUTS,
        Unit::Count,
        "Number of connections closed by a timeout, by phase."
    );
    describe_counter!(
        HANDED_OVER_CONNECTIONS,
        Unit::Count,
        "Number of idle connections handed to the process that replaced this one."
    );
    known_series();
}

/// The label values of [`REJECTED_CONNECTIONS`]'s `reason`.
pub const REJECTION_REASONS: [&str; 4] = [
    "connection_limit",
    "per_ip_limit",
    "proxy_protocol",
    "acceptor",
];
/// The label values of [`TIMEOUTS`]' `phase`.
pub const TIMEOUT_PHASES: [&str; 7] = [
    "idle",
    "request_head",
    "request_body",
    "response",
    "half_close",
    "detached",
    "tls_handshake",
];

/// Exports the counters whose series are known in advance at 0 (rejections by reason,
/// timeouts by phase, upgraded and handed-over connections), so that `rate()` and alerts see
/// the first event (Prometheus' "avoid missing metrics"). [`describe`] calls it, and so does
/// [`Server`](crate::Server) when it starts serving; adding 0 changes no count.
pub(crate) fn known_series() {
    for reason in REJECTION_REASONS {
        metrics::counter!(REJECTED_CONNECTIONS, "reason" => reason).increment(0);
    }
    for phase in TIMEOUT_PHASES {
        metrics::counter!(TIMEOUTS, "phase" => phase).increment(0);
    }
    metrics::counter!(UPGRADED_CONNECTIONS).increment(0);
    metrics::counter!(HANDED_OVER_CONNECTIONS).increment(0);
}

/// The values of `http.request.method`: the well-known methods, and `_OTHER` for the rest (the
/// conventions' rule, which keeps the label set bounded).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// The index of a method's label in [`METHODS`].
fn method_index(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

fn version_label(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn scheme_label(encrypted: bool) -> &'static str {
    if encrypted {
        "https"
    } else {
        "http"
    }
}

/// One connection's request handles: looked up in the recorder once per connection and label
/// set, then reused, with no handle cloned per request. The first method and the first response
/// kind (version, status) of a connection, which are most of its requests, are read without a
/// lock; the others are kept by method under a lock (nobody else's, but an HTTP/2 stream's).
#[derive(Debug, Default)]
pub(crate) struct Handles {
    fast: OnceLock<Box<Fast>>,
    methods: Mutex<Vec<ByMethod>>,
}

#[derive(Debug)]
struct Fast {
    method: u8,
    active: Gauge,
    duration: OnceLock<(Version, Option<StatusCode>, Histogram)>,
}

#[derive(Debug)]
struct ByMethod {
    method: u8,
    active: Gauge,
    durations: Vec<(Version, Option<StatusCode>, Histogram)>,
}

fn active_gauge(method: u8, encrypted: bool) -> Gauge {
    let labels = [
        Label::from_static_parts("http.request.method", METHODS[usize::from(method)]),
        Label::from_static_parts("url.scheme", scheme_label(encrypted)),
    ];
    metrics::gauge!(ACTIVE_REQUESTS, labels.iter())
}

fn duration_histogram(
    method: u8,
    version: Version,
    status: Option<StatusCode>,
    encrypted: bool,
) -> Histogram {
    let mut labels = vec![
        Label::from_static_parts("http.request.method", METHODS[usize::from(method)]),
        Label::from_static_parts("network.protocol.version", version_label(version)),
        Label::from_static_parts("url.scheme", scheme_label(encrypted)),
    ];
    labels.push(match status {
        Some(status) => Label::new("http.response.status_code", status.as_str().to_owned()),
        // No response: the service failed (hyper resets the stream or closes), or the
        // connection went before it answered.
        None => Label::from_static_parts("error.type", "no_response"),
    });
    metrics::histogram!(REQUEST_DURATION, labels)
}

impl Handles {
    /// The lock-free handles, if `method` is the connection's first.
    fn fast(&self, method: u8, encrypted: bool) -> Option<&Fast> {
        let fast = self.fast.get_or_init(|| {
            Box::new(Fast {
                method,
                active: active_gauge(method, encrypted),
                duration: OnceLock::new(),
            })
        });
        (fast.method == method).then_some(&**fast)
    }

    fn started(&self, method: u8, encrypted: bool) {
        match self.fast(method, encrypted) {
            Some(fast) => fast.active.increment(1.0),
            None => self.with_method(method, encrypted, |m| m.active.increment(1.0)),
        }
    }

    fn finished(
        &self,
        method: u8,
        version: Version,
        status: Option<StatusCode>,
        encrypted: bool,
        seconds: f64,
    ) {
        if let Some(fast) = self.fast(method, encrypted) {
            fast.active.decrement(1.0);
            let (v, s, histogram) = fast.duration.get_or_init(|| {
                (
                    version,
                    status,
                    duration_histogram(method, version, status, encrypted),
                )
            });
            if (*v, *s) == (version, status) {
                histogram.record(seconds);
            } else {
                self.with_method(method, encrypted, |m| {
                    m.record(version, status, encrypted, seconds)
                });
            }
            return;
        }
        self.with_method(method, encrypted, |m| {
            m.active.decrement(1.0);
            m.record(version, status, encrypted, seconds);
        });
    }

    fn with_method<T>(&self, method: u8, encrypted: bool, f: impl FnOnce(&mut ByMethod) -> T) -> T {
        let mut methods = self.methods.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match methods.iter().position(|m| m.method == method) {
            Some(at) => at,
            None => {
                methods.push(ByMethod {
                    method,
                    active: active_gauge(method, encrypted),
                    durations: Vec::new(),
                });
                methods.len() - 1
            }
        };
        f(&mut methods[at])
    }
}

impl ByMethod {
    fn record(
        &mut self,
        version: Version,
        status: Option<StatusCode>,
        encrypted: bool,
        seconds: f64,
    ) {
        if let Some((_, _, histogram)) = self
            .durations
            .iter()
            .find(|(v, s, _)| *v == version && *s == status)
        {
            histogram.record(seconds);
            return;
        }
        let histogram = duration_histogram(self.method, version, status, encrypted);
        histogram.record(seconds);
        self.durations.push((version, status, histogram));
    }
}

/// One request's metrics, from its head to the end of its response.
#[derive(Debug)]
pub(crate) struct RequestMetric {
    started: Instant,
    method: u8,
    version: Version,
    status: Option<StatusCode>,
}

impl RequestMetric {
    /// Counts a request as active.
    pub(crate) fn start(client: &crate::ClientInfo, method: &Method, version: Version) -> Self {
        let method = method_index(method);
        client
            .state()
            .metrics
            .started(method, client.is_encrypted());
        RequestMetric {
            started: Instant::now(),
            method,
            version,
            status: None,
        }
    }

    pub(crate) fn set_status(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The response is done: records its duration.
    pub(crate) fn finish(self, client: &crate::ClientInfo) {
        let seconds = self.started.elapsed().as_secs_f64();
        client.state().metrics.finished(
            self.method,
            self.version,
            self.status,
            client.is_encrypted(),
            seconds,
        );
    }
}

/// The value of the `phase` label of [`TIMEOUTS`].
pub(crate) fn timeout(phase: &'static str) {
    metrics::counter!(TIMEOUTS, "phase" => phase).increment(1);
}

/// A TLS handshake in progress: counted active until dropped, its duration recorded with its
/// outcome (a handshake cut before its end, by a shutdown, counts as `error.type=cancelled`).
#[cfg(feature = "tls")]
#[derive(Debug)]
pub(crate) struct Handshake {
    started: Instant,
    outcome: Option<Label>,
}

#[cfg(feature = "tls")]
impl Handshake {
    pub(crate) fn start() -> Self {
        metrics::gauge!(ACTIVE_TLS_HANDSHAKES).increment(1.0);
        Handshake {
            started: Instant::now(),
            outcome: None,
        }
    }

    /// The handshake succeeded with `version` (`TLSv1.3`...).
    pub(crate) fn succeeded(mut self, version: &str) {
        let version = version.strip_prefix("TLSv").unwrap_or(version).to_owned();
        self.outcome = Some(Label::new("tls.protocol.version", version));
    }

    /// The handshake failed: `timeout` or `error`.
    pub(crate) fn failed(mut self, error: &'static str) {
        if error == "timeout" {
            timeout("tls_handshake");
        }
        self.outcome = Some(Label::from_static_parts("error.type", error));
    }
}

#[cfg(feature = "tls")]
impl Drop for Handshake {
    fn drop(&mut self) {
        metrics::gauge!(ACTIVE_TLS_HANDSHAKES).decrement(1.0);
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Label::from_static_parts("error.type", "cancelled"));
        metrics::histogram!(TLS_HANDSHAKE_DURATION, vec![outcome])
            .record(self.started.elapsed().as_secs_f64());
    }
}
