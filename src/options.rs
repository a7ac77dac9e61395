//! [`Options`]: the limits and timeouts a connection runs under.

use std::time::Duration;

use http::Method;

/// The limits and timeouts a connection runs under, with amphp's defaults.
///
/// Read them from a handler with [`ClientInfo::options`](crate::ClientInfo::options).
///
/// ```
/// use std::time::Duration;
/// use hyper_remote_client::Options;
///
/// let mut options = Options::default();
/// options.http1_timeout = Duration::from_secs(5);
/// options.body_size_limit = 1024 * 1024;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Connections a server keeps open at once; over it, new connections are closed at once.
    /// Default 10 000.
    pub connection_limit: usize,
    /// Connections from one IP (IPv4 /32, IPv6 /56) a server keeps open at once. Default 30.
    /// Unix sockets are exempt, and so is loopback unless `per_ip_limit_on_loopback` is on.
    pub connections_per_ip: usize,
    /// Apply `connections_per_ip` to loopback addresses (127.0.0.0/8, ::1) too. Default off.
    pub per_ip_limit_on_loopback: bool,
    /// HTTP/1 timeout: a connection that makes no progress (no byte read or written) for this
    /// long while it waits on the peer is closed: idle between requests (the keep-alive idle
    /// timeout), before the first byte, in a request body a handler is reading, or in a
    /// response the peer does not read. A handler that takes long to answer is not cut off
    /// (unless it left a request body read pending and went on with other work while holding
    /// it: the body still counts as waiting for the peer).
    /// Also the time allowed for a whole request head. Default 15 s.
    pub http1_timeout: Duration,
    /// HTTP/2 timeout: as `http1_timeout`, for HTTP/2 connections. Default 60 s.
    pub http2_timeout: Duration,
    /// Time allowed for a TLS handshake. Default 5 s.
    pub tls_setup_timeout: Duration,
    /// Largest request head in bytes (request line and headers): HTTP/1 answers 431 over it,
    /// HTTP/2 refuses the header block. Default 32 KiB.
    pub header_size_limit: usize,
    /// Largest request body in bytes: a `Content-Length` over it is answered 413 at once, a
    /// streamed body over it fails with `http_body_util::LengthLimitError` (which axum's
    /// extractors answer with 413). Default 128 KiB.
    pub body_size_limit: usize,
    /// Concurrent HTTP/2 streams per connection. Default 256.
    pub concurrent_stream_limit: u32,
    /// Methods handed to the service. Other standard methods are answered 405 with an `Allow`
    /// header, unknown methods 501, and `OPTIONS *` 204 with `Allow`.
    /// Default: GET, POST, PUT, PATCH, HEAD, OPTIONS, DELETE.
    pub allowed_methods: Vec<Method>,
    /// How long a graceful shutdown waits for in-flight responses before closing. Default 3 s.
    pub shutdown_timeout: Duration,
    /// Serve HTTP/2 with prior knowledge (h2c) on connections without TLS, next to HTTP/1.1.
    /// Default on; off means HTTP/1.1 only without TLS.
    pub http2_cleartext: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connection_limit: 10_000,
            connections_per_ip: 30,
            per_ip_limit_on_loopback: false,
            http1_timeout: Duration::from_secs(15),
            http2_timeout: Duration::from_secs(60),
            tls_setup_timeout: Duration::from_secs(5),
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
        }
    }
}

impl Options {
    /// The value of an `Allow` header for these options: the allowed methods, comma separated.
    pub fn allow_header(&self) -> String {
        let names: Vec<&str> = self.allowed_methods.iter().map(Method::as_str).collect();
        names.join(", ")
    }
}
