//! The connection inspector: shows every connection as the server sees it.
//!
//! ```text
//! cargo run --example serve
//! curl -s http://127.0.0.1:8080/                          # this connection, as JSON
//! curl -s --http2-prior-knowledge http://127.0.0.1:8080/  # the same over h2c
//! curl -s --data-binary @Cargo.toml http://127.0.0.1:8080/echo
//! curl -v http://127.0.0.1:8080/close                     # the handler closes the connection
//! curl -s 'http://127.0.0.1:8080/slow?ms=2000'            # a response that takes 2 s
//! curl -s http://127.0.0.1:8080/metrics                   # Prometheus text format
//! # built with --features http3, --https also serves HTTP/3 on UDP at the same address (and
//! # the HTTPS answers advertise it with Alt-Svc): curl --http3-only, or any HTTP/3 client.
//! # --http, --https and --unix choose the listeners: with none of them, HTTP on 127.0.0.1:8080
//! # and HTTPS on 127.0.0.1:8443; with any of them, only the addresses given (HOST:PORT: an IP
//! # address, [::1]:PORT, or a name resolved at start, such as localhost:8080).
//! cargo run --example serve -- --http localhost:8081      # HTTP only, on another port
//! # zero downtime: start with --upgrade-socket /tmp/up.sock, then, any time, a new binary with
//! # --upgrade --upgrade-socket /tmp/up.sock takes the sockets over; the old one drains and
//! # exits. SIGHUP reads --cert/--key again. Under systemd socket activation (LISTEN_FDS), the
//! # inherited sockets are served instead of binding --http.
//! # upgrade to a raw echo connection: paste the request, then type; Ctrl-D ends it
//! socat - TCP:127.0.0.1:8080,crlf
//! GET /upgrade HTTP/1.1
//! Host: x
//! Connection: upgrade
//! Upgrade: echo
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError};
use hyper_remote_client::telemetry;
use hyper_remote_client::tls::rustls::pki_types::pem::{self, PemObject};
use hyper_remote_client::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use hyper_remote_client::tls::rustls::{RootCertStore, ServerConfig};
#[cfg(unix)]
use hyper_remote_client::upgrade::InheritedListener;
use hyper_remote_client::{
    detach,
    proxy::{IpNet, ProxyMode, ProxyProtocol},
    tls::{server_config, ClientAuth, TlsAcceptor},
    ClientId, ClientInfo, Listener, Options, RequestBody, Server, ServerHandle, Stats,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The default HTTP and HTTPS addresses, bound only when none of --http, --https and --unix is
/// given.
const DEFAULT_HTTP: &str = "127.0.0.1:8080";
const DEFAULT_HTTPS: &str = "127.0.0.1:8443";

/// How long a host name of --http or --https may take to resolve at start.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection inspector: every connection, as the server sees it.
#[derive(Parser, Debug)]
#[command(after_help = "\
Listeners: with none of --http, --https and --unix, the inspector serves HTTP on 127.0.0.1:8080 \
and HTTPS on 127.0.0.1:8443. With any of them, it serves only the listeners given: \
`--http 127.0.0.1:9000` alone serves no HTTPS (add --https ADDR for it).
Addresses are HOST:PORT: an IP address (127.0.0.1:8080, [::1]:8080) or a host name \
(localhost:8080), resolved at start; the first address the name resolves to is bound.")]
struct Args {
    /// Address to serve HTTP/1.1 and h2c (prior knowledge) on: IP:PORT, [IPv6]:PORT or
    /// HOST:PORT (the first address the name resolves to) [default: 127.0.0.1:8080, when none of
    /// --http, --https, --unix is given]
    #[arg(long, value_name = "ADDR", value_parser = host_port)]
    http: Option<HostPort>,
    /// Address to serve HTTPS on (HTTP/2 or HTTP/1.1 by ALPN), as for --http [default:
    /// 127.0.0.1:8443, when none of --http, --https, --unix is given]
    #[arg(long, value_name = "ADDR", value_parser = host_port)]
    https: Option<HostPort>,
    /// Certificate chain (PEM) for HTTPS; without it, one for localhost and 127.0.0.1 is made.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA certificate (PEM): ask HTTPS clients for a certificate signed by it (optional).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Unix socket path to serve HTTP/1.1 and h2c on.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Connections kept open at once (at least 1).
    #[arg(long, value_parser = at_least_one, allow_negative_numbers = true)]
    connection_limit: Option<usize>,
    /// Connections per IP kept open at once (at least 1).
    #[arg(long, value_parser = at_least_one, allow_negative_numbers = true)]
    connections_per_ip: Option<usize>,
    /// HTTP/1 timeout in seconds (above 0).
    #[arg(long, value_parser = timeout_seconds, allow_negative_numbers = true)]
    http1_timeout: Option<Duration>,
    /// HTTP/2 timeout in seconds (above 0).
    #[arg(long, value_parser = timeout_seconds, allow_negative_numbers = true)]
    http2_timeout: Option<Duration>,
    /// TLS setup timeout in seconds (above 0).
    #[arg(long, value_parser = timeout_seconds, allow_negative_numbers = true)]
    tls_setup_timeout: Option<Duration>,
    /// Largest request head in bytes (at least 1).
    #[arg(long, value_parser = at_least_one, allow_negative_numbers = true)]
    header_size_limit: Option<usize>,
    /// Largest request body in bytes (0: no body at all).
    #[arg(long, value_parser = byte_count, allow_negative_numbers = true)]
    body_size_limit: Option<usize>,
    /// Graceful shutdown deadline in seconds (0: close at once).
    #[arg(long, value_parser = seconds, allow_negative_numbers = true)]
    shutdown_timeout: Option<Duration>,
    /// Apply the per-IP limit to loopback addresses too (try it from 127.0.0.2, 127.0.0.3...).
    #[arg(long)]
    no_loopback_exemption: bool,
    /// PROXY protocol on the HTTP and HTTPS listeners: off, optional or required.
    #[arg(long, default_value = "off")]
    proxy_protocol: ProxyArg,
    /// A network (CIDR) whose PROXY headers are trusted; repeatable.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<IpNet>,
    /// Publish the listening sockets on this unix socket (mode 0600) for a binary upgrade: a
    /// new inspector started with `--upgrade` takes them (and the idle HTTP/1.1 connections)
    /// over, and this one drains and exits.
    #[cfg(unix)]
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Start by taking the listening sockets from the inspector at --upgrade-socket (instead
    /// of binding --http, --https and --unix), then publish them there in turn.
    #[cfg(unix)]
    #[arg(long, requires = "upgrade_socket")]
    upgrade: bool,
    /// After --upgrade: seconds this inspector serves before it tells the old one it is
    /// healthy (the old one keeps its sockets until then, and accepts again if this one dies)
    /// [default: 5]
    #[cfg(unix)]
    #[arg(long, value_parser = seconds, allow_negative_numbers = true)]
    upgrade_probation: Option<Duration>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ProxyArg {
    Off,
    Optional,
    Required,
}

/// A count that must not be 0 (`--connection-limit 0` would refuse every connection).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("must be a whole number, 1 or more".into()),
    }
}

/// A number of bytes, 0 or more.
fn byte_count(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .map_err(|_| "must be a whole number of bytes, 0 or more".into())
}

/// The value of --http or --https, as given: `HOST:PORT`, where HOST is an IP address (an
/// IPv6 one in brackets) or a name, resolved at start ([`resolve`]).
#[derive(Clone, Debug)]
struct HostPort(String);

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `HOST:PORT`, checked for its form (the name is not resolved yet).
fn host_port(value: &str) -> Result<HostPort, String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(HostPort(value.to_owned()));
    }
    let expected = "expected HOST:PORT, such as 127.0.0.1:8080, [::1]:8080 or localhost:8080";
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(expected.into());
    };
    if host.is_empty() {
        return Err(format!("no host before the port; {expected}"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("the port is a number from 0 to 65535; {expected}"));
    }
    if host.starts_with('[') || host.contains(':') {
        return Err("not an IPv6 address in brackets, such as [::1]:8080".into());
    }
    Ok(HostPort(value.to_owned()))
}

/// The address `addr` stands for: itself if an IP address and port, else the first address its
/// host name resolves to (`ToSocketAddrs`), within [`RESOLVE_TIMEOUT`]. The lookup runs on a
/// thread of its own, not a blocking task of the runtime: one that never returns does not hold
/// the exit up.
async fn resolve(addr: &HostPort) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(ip_and_port) = addr.0.parse() {
        return Ok(ip_and_port);
    }
    let (resolved, lookup) = tokio::sync::oneshot::channel();
    let name = addr.0.clone();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = resolved.send(name.to_socket_addrs().map(|mut addrs| addrs.next()));
        })
        .map_err(|error| format!("resolving the name: {error}"))?;
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(Ok(Some(first)))) => Ok(first),
        Ok(Ok(Ok(None))) => Err("the name resolves to no address".into()),
        Ok(Ok(Err(error))) => Err(error.to_string()),
        Ok(Err(_)) => Err("the name lookup failed".into()),
        Err(_) => Err(format!(
            "the name did not resolve within {RESOLVE_TIMEOUT:?}"
        )),
    }
}

/// Binds the address `addr` of `flag` (resolved first); errors name both, and the address the
/// name resolved to: `--http localhost:8080 (127.0.0.1:8080): Address already in use`.
async fn bind(flag: &str, addr: &HostPort) -> Result<TcpListener, Failed> {
    let what = format!("{flag} {addr}");
    let resolved = resolve(addr).await.context(&what)?;
    let what = if addr.0.parse::<SocketAddr>().is_ok() {
        what
    } else {
        format!("{what} ({resolved})")
    };
    TcpListener::bind(resolved).await.context(what)
}

/// A number of seconds, such as `2.5`: not negative, not NaN, not infinite.
fn seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| "must be a number of seconds, 0 or more and finite".to_string())
}

/// A number of seconds above 0 (a timeout of 0 would cut every connection at once).
fn timeout_seconds(value: &str) -> Result<Duration, String> {
    match seconds(value) {
        Ok(duration) if duration.is_zero() => Err("must be more than 0 seconds".into()),
        Ok(duration) => Ok(duration),
        Err(_) => Err("must be a number of seconds above 0, and finite".into()),
    }
}

impl Args {
    /// Whether none of --http, --https and --unix is given: the default addresses are bound.
    fn default_listeners(&self) -> bool {
        self.http.is_none() && self.https.is_none() && self.unix.is_none()
    }

    /// The HTTP address to bind (unless sockets are inherited): --http, or the default.
    fn http_addr(&self) -> Option<HostPort> {
        self.http.clone().or_else(|| {
            self.default_listeners()
                .then(|| HostPort(DEFAULT_HTTP.into()))
        })
    }

    /// The HTTPS address to bind: --https, or the default.
    fn https_addr(&self) -> Option<HostPort> {
        self.https.clone().or_else(|| {
            self.default_listeners()
                .then(|| HostPort(DEFAULT_HTTPS.into()))
        })
    }

    /// Whether this inspector may serve HTTPS: it binds an HTTPS address, or takes its sockets
    /// over (the old inspector's HTTPS listener, if it had one).
    fn may_serve_https(&self) -> bool {
        taking_over(self) || self.https_addr().is_some()
    }

    fn proxy(&self) -> Result<ProxyProtocol, Failed> {
        let mode = match self.proxy_protocol {
            ProxyArg::Off => ProxyMode::Off,
            ProxyArg::Optional => ProxyMode::Optional,
            ProxyArg::Required => ProxyMode::Required,
        };
        if matches!(mode, ProxyMode::Required) && self.trusted_proxies.is_empty() {
            return Err(Failed(
                "--proxy-protocol required: no --trusted-proxy given, every connection would be refused"
                    .into(),
            ));
        }
        Ok(ProxyProtocol::new(
            mode,
            self.trusted_proxies.iter().copied(),
        ))
    }

    fn options(&self) -> Options {
        let mut options = Options::default();
        if let Some(n) = self.connection_limit {
            options = options.with_connection_limit(n);
        }
        if let Some(n) = self.connections_per_ip {
            options = options.with_connections_per_ip(n);
        }
        if let Some(timeout) = self.http1_timeout {
            options = options.with_http1_timeout(Some(timeout));
        }
        if let Some(timeout) = self.http2_timeout {
            options = options.with_http2_timeout(Some(timeout));
        }
        if let Some(timeout) = self.tls_setup_timeout {
            options = options.with_tls_setup_timeout(Some(timeout));
        }
        // The raw echo after `/upgrade` is cut after the HTTP/1 timeout without a byte.
        let idle = options.http1_timeout();
        options = options.with_detached_timeout(idle);
        if let Some(n) = self.header_size_limit {
            options = options.with_header_size_limit(n);
        }
        if let Some(n) = self.body_size_limit {
            options = options.with_body_size_limit(n);
        }
        if let Some(timeout) = self.shutdown_timeout {
            options = options.with_shutdown_timeout(timeout);
        }
        options = options.with_per_ip_limit_on_loopback(self.no_loopback_exemption);
        #[cfg(unix)]
        if let Some(probation) = self.upgrade_probation {
            options = options.with_upgrade_probation(probation);
        }
        options
    }
}

/// Why the inspector could not start, worded for the user: what failed (the flag and its
/// value), then why, e.g. `--cert /x/cert.pem: No such file or directory (os error 2)`.
#[derive(Debug)]
struct Failed(String);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

trait Context<T> {
    /// The error, prefixed with what was being done: `{what}: {error}`.
    fn context(self, what: impl fmt::Display) -> Result<T, Failed>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failed> {
        self.map_err(|error| Failed(format!("{what}: {error}")))
    }
}

/// Removes a file the inspector made (the generated CA, its unix socket) when dropped: at a
/// normal exit, after a graceful shutdown (Ctrl-C, SIGTERM), and when a later step of the
/// start fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Exit status when the inspector cannot start, as for clap's usage errors.
const START_FAILED: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse(); // usage errors: clap prints them and exits with status 2
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("error: {failed}");
            ExitCode::from(START_FAILED)
        }
    }
}

/// Starts the inspector, serves until Ctrl-C or SIGTERM, then shuts down gracefully. The files
/// it made (generated CA, unix socket) are removed when it returns, whichever way.
async fn run(args: Args) -> Result<(), Failed> {
    // First, before the CA file is written: from here on SIGINT and SIGTERM are held for the
    // graceful shutdown (which removes the file) instead of ending the process at once.
    let shutdown = shutdown_signal()?;
    let prometheus = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(telemetry::DURATION_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .context("installing the Prometheus recorder")?;
    telemetry::describe();
    // Without a scrape, histogram samples would pile up: the exporter's upkeep every 5 s (what
    // `PrometheusBuilder::install` spawns), and at every scrape.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let proxy = args.proxy()?;
    // Before the sockets: a certificate error is told first, and before an upgrade starts.
    let tls = if args.may_serve_https() {
        Some(tls_config(&args)?)
    } else {
        refuse_tls_flags_without_https(&args)?;
        None
    };
    let sockets = Sockets::open(&args).await?;
    // Taken over from an inspector without HTTPS: no certificate needed (a generated CA file
    // is removed here).
    let tls = tls.filter(|_| sockets.https.is_some());
    let (acceptor, generated_ca) = match tls {
        Some((config, generated_ca)) => (Some(TlsAcceptor::new(Arc::new(config))), generated_ca),
        None => (None, None),
    };
    let http_addrs = sockets
        .http
        .iter()
        .map(|listener| listener.local_addr().context("--http"))
        .collect::<Result<Vec<_>, _>>()?;
    let https_addr = match &sockets.https {
        Some(listener) => Some(listener.local_addr().context("--https")?),
        None => None,
    };
    // HTTP/3 on UDP at the HTTPS address, with the same certificate; on a takeover, on the
    // old inspector's UDP socket (its connections finish there, their datagrams passed on).
    #[cfg(all(unix, feature = "http3"))]
    let inherited_quic = sockets.quic;
    #[cfg(all(not(unix), feature = "http3"))]
    let inherited_quic: Option<()> = None;
    #[cfg(feature = "http3")]
    // A UDP port that is taken costs HTTP/3 only, with a warning.
    let quic = match (&acceptor, https_addr, inherited_quic) {
        #[cfg(unix)]
        (Some(acceptor), Some(_), Some(socket)) => {
            match hyper_remote_client::http3::QuicListener::inherit_acceptor(socket, acceptor) {
                Ok(quic) => Some(quic),
                Err(error) => {
                    eprintln!("warning: the old inspector's UDP socket: no HTTP/3: {error}");
                    None
                }
            }
        }
        (Some(acceptor), Some(addr), _) if !taking_over(&args) => {
            // The acceptor's configuration, and its reloads (SIGHUP).
            match hyper_remote_client::http3::QuicListener::bind_acceptor(addr, acceptor) {
                Ok(quic) => Some(quic),
                Err(error) => {
                    eprintln!("warning: --https {addr}: no HTTP/3 (UDP): {error}");
                    None
                }
            }
        }
        _ => None,
    };
    #[allow(unused_mut)]
    let mut options = args.options();
    #[cfg(feature = "http3")]
    if let Some(quic) = &quic {
        options = options.with_alt_svc(quic.alt_svc().context("--https (UDP)")?);
    }
    let mut server = Server::new(options);
    #[cfg(feature = "http3")]
    let quic_addr = quic.as_ref().and_then(|quic| quic.local_addr().ok());
    #[cfg(feature = "http3")]
    if let Some(quic) = quic {
        server = server.quic(quic);
    }
    for http in sockets.http {
        server = server.listener(Listener::tcp(http).with_proxy_protocol(proxy.clone()));
    }
    if let (Some(https), Some(acceptor)) = (sockets.https, &acceptor) {
        server = server.listener(
            Listener::tcp(https)
                .with_tls(acceptor.clone())
                .with_proxy_protocol(proxy),
        );
    }
    // A socket this inspector bound is removed when it exits; an inherited one belongs to
    // whoever passed it (systemd, the inspector replaced).
    #[cfg(unix)]
    let mut unix_socket = None;
    #[cfg(unix)]
    let mut unix_paths = Vec::new();
    #[cfg(unix)]
    for (listener, path, bound_here) in sockets.unix {
        server = server.listener(listener);
        unix_paths.push(path.clone());
        if bound_here {
            unix_socket = Some(RemoveOnDrop(path));
        }
    }
    #[cfg(unix)]
    if let Some(path) = &args.upgrade_socket {
        // Taking over first: the upgrade socket's path is then taken from the old inspector
        // only once this one accepts.
        if let Some(takeover) = sockets.takeover {
            // Refused (the old one goes on serving) if a listener would be served with other
            // steps than the old inspector ran on it (say, --https without TLS).
            server = server
                .take_over(takeover)
                .context(format_args!("--upgrade {}", path.display()))?;
        }
        server = server
            .upgrade_socket(path)
            .context(format_args!("--upgrade-socket {}", path.display()))?;
    }
    #[cfg(unix)]
    reload_on_sighup(&args, acceptor)?;

    for addr in &http_addrs {
        println!("listening on http://{addr}");
    }
    if let Some(https_addr) = https_addr {
        println!("listening on https://{https_addr}");
    }
    #[cfg(feature = "http3")]
    if let Some(quic_addr) = quic_addr {
        println!("HTTP/3 on udp://{quic_addr}");
    }
    if let (Some(ca), Some(https_addr)) = (&generated_ca, https_addr) {
        println!(
            "generated a certificate for localhost and 127.0.0.1; its CA: {}",
            ca.0.display()
        );
        println!(
            "     curl -s --cacert {} https://localhost:{}/",
            ca.0.display(),
            https_addr.port()
        );
    }
    #[cfg(unix)]
    for path in &unix_paths {
        println!("listening on unix:{}", path.display());
        println!(
            "     curl -s --unix-socket {} http://localhost/",
            path.display()
        );
    }
    if !taking_over(&args) {
        if args.default_listeners() {
            println!(
                "no --http, --https or --unix given: the default listeners (with any of them, only those given)"
            );
        } else if https_addr.is_none() {
            println!(
                "no HTTPS: --https ADDR serves it (the default {DEFAULT_HTTPS} only when none of --http, --https, --unix is given)"
            );
        }
    }
    if let Some(http_addr) = http_addrs.first() {
        print_tries(http_addr);
    }

    let handle = server.handle();
    let service = {
        let handle = handle.clone();
        tower::service_fn(move |req| route(req, handle.clone(), prometheus.clone()))
    };
    server.serve_with_shutdown(service, shutdown).await;
    #[cfg(unix)]
    if handle.was_replaced() {
        // The new inspector serves on the same unix socket file now.
        std::mem::forget(unix_socket);
        let _ = writeln!(std::io::stdout(), "handed over to the new process");
    }
    Ok(())
}

/// Whether the sockets are taken from the inspector being replaced (`--upgrade`), not bound
/// from --http, --https and --unix.
#[cfg(unix)]
fn taking_over(args: &Args) -> bool {
    args.upgrade
}

#[cfg(not(unix))]
fn taking_over(_: &Args) -> bool {
    false
}

/// --cert, --key and --client-ca are for HTTPS: refused when no HTTPS listener is bound.
fn refuse_tls_flags_without_https(args: &Args) -> Result<(), Failed> {
    let flag = match (&args.cert, &args.client_ca) {
        (Some(cert), _) => format!("--cert {}", cert.display()),
        (None, Some(ca)) => format!("--client-ca {}", ca.display()),
        (None, None) => return Ok(()),
    };
    Err(Failed(format!(
        "{flag}: no HTTPS listener to use it on: give --https ADDR too (with --http or --unix, HTTPS is served only on --https)"
    )))
}

/// The `try:` lines: curl commands for the HTTP address.
fn print_tries(http_addr: &SocketAddr) {
    println!("try: curl -s http://{http_addr}/");
    println!("     curl -s --http2-prior-knowledge http://{http_addr}/");
    println!("     curl -s --data-binary @Cargo.toml http://{http_addr}/echo");
    println!("     curl -v http://{http_addr}/close");
    println!("     curl -s 'http://{http_addr}/slow?ms=2000'");
    println!("     curl -s http://{http_addr}/clients");
    println!("     curl -s http://{http_addr}/stats");
    println!("     curl -s http://{http_addr}/metrics");
    println!("     curl -s -X POST http://{http_addr}/clients/ID/close");
}

/// The listening sockets: taken from the inspector being replaced (`--upgrade`), inherited
/// by socket activation (`LISTEN_FDS`: served as --http, and as --unix for unix sockets), or
/// bound here.
struct Sockets {
    http: Vec<TcpListener>,
    /// None when no HTTPS listener is bound (or taken over).
    https: Option<TcpListener>,
    /// Unix listeners, their paths, and whether they were bound here.
    #[cfg(unix)]
    unix: Vec<(tokio::net::UnixListener, PathBuf, bool)>,
    #[cfg(unix)]
    takeover: Option<hyper_remote_client::upgrade::Takeover>,
    /// The old inspector's HTTP/3 UDP socket, on a takeover.
    #[cfg(all(unix, feature = "http3"))]
    quic: Option<hyper_remote_client::http3::InheritedQuic>,
}

impl Sockets {
    async fn open(args: &Args) -> Result<Sockets, Failed> {
        #[cfg(unix)]
        if args.upgrade {
            return Self::take_over(args).await;
        }
        #[cfg(unix)]
        let (mut http, mut unix) = by_kind(
            hyper_remote_client::upgrade::listen_fds().context("LISTEN_FDS")?,
            false,
        );
        #[cfg(not(unix))]
        let mut http = Vec::new();
        if let (true, Some(addr)) = (http.is_empty(), args.http_addr()) {
            http.push(bind("--http", &addr).await?);
        }
        let https = match args.https_addr() {
            Some(addr) => Some(bind("--https", &addr).await?),
            None => None,
        };
        #[cfg(unix)]
        if let (true, Some(path)) = (unix.is_empty(), &args.unix) {
            let what = format!("--unix {}", path.display());
            remove_stale_socket(path).context(&what)?;
            let listener = tokio::net::UnixListener::bind(path).context(&what)?;
            unix.push((listener, path.clone(), true));
        }
        #[cfg(unix)]
        let no_unix = unix.is_empty();
        #[cfg(not(unix))]
        let no_unix = true;
        if http.is_empty() && https.is_none() && no_unix {
            return Err(Failed(
                "nothing to serve: give --http, --https or --unix".into(),
            ));
        }
        Ok(Sockets {
            http,
            https,
            #[cfg(unix)]
            unix,
            #[cfg(unix)]
            takeover: None,
            #[cfg(all(unix, feature = "http3"))]
            quic: None,
        })
    }

    /// `--upgrade`: the old inspector's listeners, in its order: the TCP ones it served plain
    /// for HTTP, the one it served with TLS for HTTPS (if any), and a unix one. From an old
    /// inspector that does not say what it ran on each, the last TCP one is HTTPS.
    #[cfg(unix)]
    async fn take_over(args: &Args) -> Result<Sockets, Failed> {
        let path = args.upgrade_socket.as_deref().unwrap_or(Path::new(""));
        let what = format!("--upgrade {}", path.display());
        let mut takeover = hyper_remote_client::upgrade::Takeover::connect(path)
            .await
            .context(&what)?;
        let steps = takeover.steps();
        let listeners = takeover.take_listeners();
        #[cfg(feature = "http3")]
        let quic = takeover.take_quic_sockets().into_iter().next();
        let said = steps.len() == listeners.len() && steps.iter().all(Option::is_some);
        let (mut tcp_plain, mut tcp_tls) = (Vec::new(), Vec::new());
        let mut others = Vec::new();
        for (listener, steps) in listeners.into_iter().zip(steps) {
            match (listener, steps) {
                (InheritedListener::Tcp(tcp), Some(steps)) if said && steps.tls => {
                    tcp_tls.push(InheritedListener::Tcp(tcp))
                }
                (InheritedListener::Tcp(tcp), _) => tcp_plain.push(InheritedListener::Tcp(tcp)),
                (other, _) => others.push(other),
            }
        }
        // The unix socket file was the old inspector's: this one removes it on exit (unless it
        // is replaced in turn), as the old one would have.
        let (mut http, unix) = by_kind(tcp_plain.into_iter().chain(others).collect(), true);
        let (mut tls, _) = by_kind(tcp_tls, true);
        let https = if said {
            if tls.len() > 1 {
                return Err(Failed(format!(
                    "{what}: the old process served TLS on {} listeners, this one serves one",
                    tls.len()
                )));
            }
            tls.pop()
        } else {
            // An older inspector: HTTP, then HTTPS last, both always there.
            if http.len() < 2 {
                return Err(Failed(format!(
                    "{what}: the old process had no HTTP and HTTPS listeners"
                )));
            }
            http.pop()
        };
        if http.is_empty() && https.is_none() && unix.is_empty() {
            return Err(Failed(format!(
                "{what}: the old process handed over no listener"
            )));
        }
        Ok(Sockets {
            http,
            https,
            unix,
            takeover: Some(takeover),
            #[cfg(feature = "http3")]
            quic,
        })
    }
}

/// Inherited listeners by kind: the TCP ones, and the unix ones with their paths (and
/// `remove`: whether this inspector removes the socket file on exit).
#[cfg(unix)]
#[allow(clippy::type_complexity)]
fn by_kind(
    listeners: Vec<InheritedListener>,
    remove: bool,
) -> (
    Vec<TcpListener>,
    Vec<(tokio::net::UnixListener, PathBuf, bool)>,
) {
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for listener in listeners {
        match listener {
            InheritedListener::Tcp(listener) => tcp.push(listener),
            InheritedListener::Unix(listener) => {
                let path = listener
                    .local_addr()
                    .ok()
                    .and_then(|addr| addr.as_pathname().map(Path::to_owned))
                    .unwrap_or_default();
                unix.push((listener, path, remove));
            }
            _ => {}
        }
    }
    (tcp, unix)
}

/// SIGHUP: read --cert and --key again (and --client-ca); new handshakes use them, open
/// connections keep theirs. Without --cert (a generated certificate) or without an HTTPS
/// listener there is nothing to read.
///
/// The files are read on a blocking thread, for at most `TlsAcceptor::RELOAD_TIMEOUT`: a path
/// that never answers (a FIFO, a hung NFS or FUSE mount) fails the reload, and serving goes on
/// with the certificate in use.
#[cfg(unix)]
fn reload_on_sighup(args: &Args, acceptor: Option<TlsAcceptor>) -> Result<(), Failed> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    let files = args.cert.clone().zip(args.key.clone());
    let client_ca = args.client_ca.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(acceptor) = &acceptor else {
                tracing::warn!("SIGHUP: no HTTPS listener, no certificate to read again");
                continue;
            };
            let Some((cert, key)) = &files else {
                tracing::warn!(
                    "SIGHUP: no --cert/--key to read again (the certificate was generated)"
                );
                continue;
            };
            match reload_certificate(acceptor, cert, key, client_ca.as_deref()).await {
                Ok(()) => {
                    tracing::info!("SIGHUP: certificate reloaded");
                    let _ = writeln!(std::io::stdout(), "reloaded the certificate");
                }
                Err(error) => {
                    let error = name_the_flag(&error, cert, key, client_ca.as_deref());
                    tracing::error!(%error, "SIGHUP: the certificate was not reloaded; the previous one stays");
                    let _ = writeln!(std::io::stdout(), "certificate reload failed: {error}");
                }
            }
        }
    });
    Ok(())
}

/// A reload's error, with the flag of the file it names first, as at start
/// (`--cert /x/cert.pem: No such file or directory (os error 2)`).
#[cfg(unix)]
fn name_the_flag(
    error: &hyper_remote_client::tls::TlsError,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> String {
    use hyper_remote_client::tls::TlsError;
    let path = match error {
        TlsError::File { path, .. } | TlsError::Pem { path, .. } => path,
        _ => return error.to_string(),
    };
    let flag = if path == cert {
        "--cert"
    } else if path == key {
        "--key"
    } else if Some(path.as_path()) == client_ca {
        "--client-ca"
    } else {
        return error.to_string();
    };
    format!("{flag} {error}")
}

/// Reads `cert`, `key` and `client_ca` (if any) off the runtime, bounded by
/// `TlsAcceptor::RELOAD_TIMEOUT`, and swaps the configuration they make in, as `tls_config`
/// makes it at start (a client CA: certificates requested, not required).
#[cfg(unix)]
async fn reload_certificate(
    acceptor: &TlsAcceptor,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<(), hyper_remote_client::tls::TlsError> {
    let timeout = TlsAcceptor::RELOAD_TIMEOUT;
    let Some(client_ca) = client_ca else {
        return acceptor
            .reload_from_pem_files(cert, key, ClientAuth::None, timeout)
            .await;
    };
    let (cert, key, client_ca) = (cert.to_owned(), key.to_owned(), client_ca.to_owned());
    let files = [cert.clone(), key.clone(), client_ca.clone()];
    acceptor
        .reload_from_files(files, timeout, move || {
            // In the order of the start: --cert, --key, then --client-ca.
            let (chain, key) = hyper_remote_client::tls::cert_and_key_from_pem(cert, key)?;
            let roots = client_ca_roots(&client_ca)?;
            server_config(chain, key, ClientAuth::Request(roots))
                .map_err(hyper_remote_client::tls::TlsError::Config)
        })
        .await
}

/// The CA certificates of the PEM file at `path` (at least one), for `--client-ca` on reload;
/// errors name the file. Blocking: run off the runtime.
#[cfg(unix)]
fn client_ca_roots(path: &Path) -> Result<RootCertStore, hyper_remote_client::tls::TlsError> {
    use hyper_remote_client::tls::TlsError;
    let refused = |what: String, source| TlsError::Pem {
        path: path.to_owned(),
        what,
        source,
    };
    let pem = std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| refused("not a PEM certificate".into(), Some(error)))?;
    if certs.is_empty() {
        return Err(refused("no certificate found in the file".into(), None));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|error| refused(format!("not a usable CA certificate: {error}"), None))?;
    }
    Ok(roots)
}

/// Ctrl-C, or SIGTERM where there are signals. The handlers are installed when this is
/// called, not when the future is first polled.
fn shutdown_signal() -> Result<impl Future<Output = ()>, Failed> {
    #[cfg(unix)]
    let signal = {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
    };
    #[cfg(not(unix))]
    let signal = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Ok(async move {
        signal.await;
        // Not println!: with nobody reading stdout any more, it would panic.
        let _ = writeln!(std::io::stdout(), "shutting down");
    })
}

/// Makes room for the unix socket at `path`. Nothing there: fine. A socket nobody listens on
/// (left by a server that did not remove it): removed. Anything else (a file, a directory, a
/// socket a server listens on) is left alone and refused.
#[cfg(unix)]
fn remove_stale_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata.file_type(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.to_string()),
    };
    if !kind.is_socket() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "something"
        };
        return Err(format!("{what} is there, not a socket; not removing it"));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err("a server is listening on this socket already".into()),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .map_err(|error| format!("could not remove the stale socket: {error}"))
        }
        Err(error) => Err(format!(
            "a socket is there, and whether it is stale could not be told: {error}"
        )),
    }
}

/// The HTTPS configuration: the given certificate, or one made now for localhost and 127.0.0.1
/// (its CA is written to a file for `curl --cacert`, removed when the guard returned is).
fn tls_config(args: &Args) -> Result<(ServerConfig, Option<RemoveOnDrop>), Failed> {
    let (chain, key, generated_ca) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (
            read_certificates(cert).context(format_args!("--cert {}", cert.display()))?,
            read_private_key(key).context(format_args!("--key {}", key.display()))?,
            None,
        ),
        _ => {
            let (chain, key, ca_pem) =
                generate_certificate().context("making a certificate for localhost")?;
            let ca_path = std::env::temp_dir()
                .join(format!("hyper-remote-client-ca-{}.pem", std::process::id()));
            let ca_file = RemoveOnDrop(ca_path);
            std::fs::write(&ca_file.0, ca_pem)
                .context(format_args!("writing its CA to {}", ca_file.0.display()))?;
            (chain, key, Some(ca_file))
        }
    };
    let client_auth = match &args.client_ca {
        Some(path) => {
            let what = format!("--client-ca {}", path.display());
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path).context(&what)? {
                roots.add(cert).context(&what)?;
            }
            ClientAuth::Request(roots)
        }
        None => ClientAuth::None,
    };
    let config = server_config(chain, key, client_auth);
    let config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => config.context(format_args!(
            "--cert {}, --key {}",
            cert.display(),
            key.display()
        ))?,
        _ => config.context("the certificate made for localhost")?,
    };
    Ok((config, generated_ca))
}

/// The certificates of a PEM file (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|error| error.to_string())?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err("no certificate found in the file".into());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|error| error.to_string())?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        pem::Error::NoItemsFound => "no private key found in the file".into(),
        error => pem_error(error),
    })
}

fn pem_error(error: pem::Error) -> String {
    match error {
        // `end_marker` is the section's label, such as `PRIVATE KEY`.
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "not valid PEM: no \"-----END {}-----\" line",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "not valid PEM: a bad section start {:?}",
            String::from_utf8_lossy(&line)
        ),
        pem::Error::Base64Decode(error) => format!("not valid PEM: bad base64 ({error})"),
        pem::Error::Io(error) => error.to_string(),
        error => format!("not valid PEM: {error}"),
    }
}

/// A certificate for localhost and 127.0.0.1 signed by a CA made now: the chain, its key, and
/// the CA as PEM.
fn generate_certificate(
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        "hyper-remote-client inspector CA",
    );
    let ca = ca.self_signed(&ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    let key = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    Ok((vec![leaf.der().clone()], key, ca.pem()))
}

async fn route(
    mut req: Request<RequestBody>,
    server: ServerHandle,
    prometheus: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>().cloned() else {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "no ClientInfo\n"));
    };
    if req.method() == Method::GET && req.uri().path() == "/upgrade" {
        return Ok(upgrade_to_echo(&mut req));
    }
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => {
            #[allow(unused_mut)]
            let mut json = client_json(&client, Some(req.version()));
            #[cfg(feature = "http3")]
            if let Some(peer) = req
                .extensions()
                .get::<hyper_remote_client::http3::PeerAddress>()
            {
                // The QUIC details: the peer's address now (a migrated connection's new one).
                json["quic"] = json!({
                    "peer_address": peer.0.ip().to_string(),
                    "peer_port": peer.0.port(),
                });
            }
            json_response(json)
        }
        (&Method::POST, "/echo") => match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(error) if error.is::<LengthLimitError>() => {
                text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "could not read the request body\n"),
        },
        (&Method::GET, "/close") => {
            // Ends the connection at once: the response below is never written.
            client.close();
            text(StatusCode::OK, "closed\n")
        }
        (&Method::GET, "/clients") => {
            let clients: Vec<Value> = server
                .clients()
                .iter()
                .map(|c| client_json(c, None))
                .collect();
            json_response(Value::Array(clients))
        }
        (&Method::GET, "/stats") => json_response(stats_json(&server.stats())),
        (&Method::GET, "/metrics") => {
            prometheus.run_upkeep();
            let mut response = Response::new(Full::new(Bytes::from(prometheus.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::POST, path) if client_to_close(path).is_some() => {
            match client_to_close(path).and_then(|id| id.parse::<u64>().ok()) {
                Some(id) if server.close(ClientId::from(id)) => text(StatusCode::OK, "closed\n"),
                Some(_) => text(StatusCode::NOT_FOUND, "no such client\n"),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "the client id is a number, as GET /clients lists them\n",
                ),
            }
        }
        (&Method::GET, "/slow") => {
            let ms = match query_param(req.uri().query(), "ms").map(str::parse::<u64>) {
                None => 1000,
                Some(Ok(ms)) => ms.min(60_000),
                Some(Err(_)) => {
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        "ms is a whole number of milliseconds, such as /slow?ms=2000\n",
                    ))
                }
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(client_json(&client, Some(req.version())))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// `GET /upgrade` with `Connection: upgrade` and `Upgrade: echo`: `101`, then every byte the
/// client sends is echoed back on the detached connection until the client closes it.
fn upgrade_to_echo(req: &mut Request<RequestBody>) -> Response<Full<Bytes>> {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "echo") {
        return text(
            StatusCode::BAD_REQUEST,
            "send Connection: upgrade and Upgrade: echo\n",
        );
    }
    let on_detach = detach(req);
    tokio::spawn(async move {
        match on_detach.await {
            Ok(conn) => {
                let (mut from, mut to) = tokio::io::split(conn);
                let _ = tokio::io::copy(&mut from, &mut to).await;
                // Dropping both halves closes the client: on_close runs now.
            }
            Err(error) => eprintln!("upgrade failed: {error}"),
        }
    });
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("echo"));
    response
}

/// The connection as the server sees it: the keys of `GET /`.
/// `version`: the HTTP version of the request being answered, where there is one.
fn client_json(client: &ClientInfo, version: Option<Version>) -> Value {
    let crypto = client.tls().map(|tls| {
        json!({
            "protocol": tls.protocol(),
            "cipher_name": tls.cipher_name(),
            "cipher_bits": tls.cipher_bits(),
            "alpn_protocol": tls.alpn_protocol().map(String::from_utf8_lossy),
            "server_name": tls.server_name(),
            "peer_certificates": tls.peer_certificates().len(),
        })
    });
    let address = |a: &hyper_remote_client::Address| match a.ip() {
        Some(ip) => ip.to_string(),
        None => a.to_string(),
    };
    json!({
        "id": client.id().get(),
        "remote_address": address(client.remote_address()),
        "remote_port": client.remote_port(),
        "local_address": address(client.local_address()),
        "local_port": client.local_port(),
        "is_unix": client.is_unix(),
        "is_encrypted": client.is_encrypted(),
        "crypto": crypto,
        "http_version": version.or(client.http_version()).map(|v| format!("{v:?}")),
        "pending_requests": client.pending_requests(),
        "pending_responses": client.pending_responses(),
        "is_waiting_on_response": client.is_waiting_on_response(),
        "is_exported": client.is_exported(),
        "status": client.status().bits(),
        "proxy": client.proxy().map(|proxy| json!({
            "peer_address": address(proxy.peer_address()),
            "peer_port": proxy.peer_address().port(),
            "version": proxy.version(),
        })),
    })
}

fn stats_json(stats: &Stats) -> Value {
    json!({
        "accepted": stats.accepted,
        "active": stats.active,
        "rejected_connection_limit": stats.rejected_connection_limit,
        "rejected_per_ip_limit": stats.rejected_per_ip_limit,
        "tls_handshake_failures": stats.tls_handshake_failures,
        "tls_handshake_timeouts": stats.tls_handshake_timeouts,
        "http1_timeouts": stats.http1_timeouts,
        "http2_timeouts": stats.http2_timeouts,
        "idle_timeouts": stats.idle_timeouts,
        "request_head_timeouts": stats.request_head_timeouts,
        "request_body_timeouts": stats.request_body_timeouts,
        "response_timeouts": stats.response_timeouts,
        "half_close_timeouts": stats.half_close_timeouts,
        "detached_timeouts": stats.detached_timeouts,
        "exported": stats.exported,
        "exported_active": stats.exported_active,
        "closed": stats.closed,
        "proxy_rejected": stats.proxy_rejected,
        "handed_over": stats.handed_over,
        "taken_over": stats.taken_over,
    })
}

/// The value of the first `name` parameter of `query` (`""` for `name` or `name=`).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `{id}` of `/clients/{id}/close`.
fn client_to_close(path: &str) -> Option<&str> {
    path.strip_prefix("/clients/")?.strip_suffix("/close")
}

fn json_response(value: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
