//! The connection inspector: shows every connection as the server sees it.
//!
//! ```text
//! cargo run --example serve
//! curl -s http://127.0.0.1:8080/                          # this connection, as JSON
//! curl -s --http2-prior-knowledge http://127.0.0.1:8080/  # the same over h2c
//! curl -s --data-binary @Cargo.toml http://127.0.0.1:8080/echo
//! curl -v http://127.0.0.1:8080/close                     # the handler closes the connection
//! curl -s 'http://127.0.0.1:8080/slow?ms=2000'            # a response that takes 2 s
//! # upgrade to a raw echo connection: paste the request, then type; Ctrl-D ends it
//! socat - TCP:127.0.0.1:8080,crlf
//! GET /upgrade HTTP/1.1
//! Host: x
//! Connection: upgrade
//! Upgrade: echo
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError};
use hyper_remote_client::rustls::pki_types::pem::PemObject;
use hyper_remote_client::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use hyper_remote_client::rustls::RootCertStore;
use hyper_remote_client::{
    detach, server_config, ClientAuth, ClientId, ClientInfo, IpNet, Listener, Options, ProxyMode,
    ProxyProtocol, RequestBody, Server, ServerHandle, Stats, TlsAcceptor,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The connection inspector: every connection, as the server sees it.
#[derive(Parser, Debug)]
struct Args {
    /// Address to serve HTTP/1.1 and h2c (prior knowledge) on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Address to serve HTTPS on (HTTP/2 or HTTP/1.1 by ALPN).
    #[arg(long, default_value = "127.0.0.1:8443")]
    https: SocketAddr,
    /// Certificate chain (PEM) for HTTPS; without it, one for localhost and 127.0.0.1 is made.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// CA certificate (PEM): ask HTTPS clients for a certificate signed by it (optional).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Unix socket path to serve HTTP/1.1 and h2c on as well.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Connections kept open at once.
    #[arg(long)]
    connection_limit: Option<usize>,
    /// Connections per IP kept open at once.
    #[arg(long)]
    connections_per_ip: Option<usize>,
    /// HTTP/1 timeout in seconds.
    #[arg(long)]
    http1_timeout: Option<f64>,
    /// HTTP/2 timeout in seconds.
    #[arg(long)]
    http2_timeout: Option<f64>,
    /// TLS setup timeout in seconds.
    #[arg(long)]
    tls_setup_timeout: Option<f64>,
    /// Largest request head in bytes.
    #[arg(long)]
    header_size_limit: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long)]
    body_size_limit: Option<usize>,
    /// Graceful shutdown deadline in seconds.
    #[arg(long)]
    shutdown_timeout: Option<f64>,
    /// Apply the per-IP limit to loopback addresses too (try it from 127.0.0.2, 127.0.0.3...).
    #[arg(long)]
    no_loopback_exemption: bool,
    /// PROXY protocol on the HTTP and HTTPS listeners: off, optional or required.
    #[arg(long, default_value = "off")]
    proxy_protocol: ProxyArg,
    /// A network (CIDR) whose PROXY headers are trusted; repeatable.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ProxyArg {
    Off,
    Optional,
    Required,
}

impl Args {
    fn proxy(&self) -> ProxyProtocol {
        let mode = match self.proxy_protocol {
            ProxyArg::Off => ProxyMode::Off,
            ProxyArg::Optional => ProxyMode::Optional,
            ProxyArg::Required => ProxyMode::Required,
        };
        ProxyProtocol::new(mode, self.trusted_proxies.iter().copied())
    }

    fn options(&self) -> Options {
        let mut options = Options::default();
        let secs = Duration::from_secs_f64;
        if let Some(n) = self.connection_limit {
            options.connection_limit = n;
        }
        if let Some(n) = self.connections_per_ip {
            options.connections_per_ip = n;
        }
        if let Some(s) = self.http1_timeout {
            options.http1_timeout = Some(secs(s));
        }
        if let Some(s) = self.http2_timeout {
            options.http2_timeout = Some(secs(s));
        }
        if let Some(s) = self.tls_setup_timeout {
            options.tls_setup_timeout = Some(secs(s));
        }
        // The raw echo after `/upgrade` is cut after the HTTP/1 timeout without a byte.
        options.detached_timeout = options.http1_timeout;
        if let Some(n) = self.header_size_limit {
            options.header_size_limit = n;
        }
        if let Some(n) = self.body_size_limit {
            options.body_size_limit = n;
        }
        if let Some(s) = self.shutdown_timeout {
            options.shutdown_timeout = secs(s);
        }
        options.per_ip_limit_on_loopback = self.no_loopback_exemption;
        options
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let http = TcpListener::bind(args.http).await?;
    let https = TcpListener::bind(args.https).await?;
    let (http_addr, https_addr) = (http.local_addr()?, https.local_addr()?);
    let (tls, generated_ca) = tls_config(&args)?;
    let tls = TlsAcceptor::new(Arc::new(tls));
    let mut server = Server::new(args.options())
        .listener(Listener::tcp(http).with_proxy_protocol(args.proxy()))
        .listener(
            Listener::tcp(https)
                .with_tls(tls)
                .with_proxy_protocol(args.proxy()),
        );
    println!("listening on http://{http_addr}");
    println!("listening on https://{https_addr}");
    if let Some(ca) = generated_ca {
        println!(
            "generated a certificate for localhost and 127.0.0.1; its CA: {}",
            ca.display()
        );
        println!(
            "     curl -s --cacert {} https://localhost:{}/",
            ca.display(),
            https_addr.port()
        );
    }
    #[cfg(unix)]
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
        server = server.listener(tokio::net::UnixListener::bind(path)?);
        println!("listening on unix:{}", path.display());
        println!(
            "     curl -s --unix-socket {} http://localhost/",
            path.display()
        );
    }
    println!("try: curl -s http://{http_addr}/");
    println!("     curl -s --http2-prior-knowledge http://{http_addr}/");
    println!("     curl -s --data-binary @Cargo.toml http://{http_addr}/echo");
    println!("     curl -v http://{http_addr}/close");
    println!("     curl -s 'http://{http_addr}/slow?ms=2000'");
    println!("     curl -s http://{http_addr}/clients");
    println!("     curl -s http://{http_addr}/stats");
    println!("     curl -s -X POST http://{http_addr}/clients/ID/close");

    let handle = server.handle();
    let service = {
        let handle = handle.clone();
        tower::service_fn(move |req| route(req, handle.clone()))
    };
    server.serve_with_shutdown(service, shutdown_signal()).await;
    Ok(())
}

/// Ctrl-C, or SIGTERM where there are signals.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    println!("shutting down");
}

/// The HTTPS configuration: the given certificate, or one made now for localhost and 127.0.0.1
/// (its CA is written to a file for `curl --cacert`, whose path is returned too).
fn tls_config(
    args: &Args,
) -> Result<(hyper_remote_client::rustls::ServerConfig, Option<PathBuf>), BoxError> {
    let (chain, key, generated_ca) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (
            CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
            None,
        ),
        _ => {
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
            let ca_path = std::env::temp_dir()
                .join(format!("hyper-remote-client-ca-{}.pem", std::process::id()));
            std::fs::write(&ca_path, ca.pem())?;
            let key = PrivateKeyDer::try_from(leaf_key.serialize_der())?;
            (vec![leaf.der().clone()], key, Some(ca_path))
        }
    };
    let client_auth = match &args.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)? {
                roots.add(cert?)?;
            }
            ClientAuth::Request(roots)
        }
        None => ClientAuth::None,
    };
    Ok((server_config(chain, key, client_auth)?, generated_ca))
}

async fn route(
    mut req: Request<RequestBody>,
    server: ServerHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>().cloned() else {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "no ClientInfo\n"));
    };
    if req.method() == Method::GET && req.uri().path() == "/upgrade" {
        return Ok(upgrade_to_echo(&mut req));
    }
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => json_response(client_json(&client, Some(req.version()))),
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
        (&Method::POST, path) if path.starts_with("/clients/") && path.ends_with("/close") => {
            let id = path["/clients/".len()..path.len() - "/close".len()].parse::<u64>();
            match id {
                Ok(id) if server.close(ClientId::from(id)) => text(StatusCode::OK, "closed\n"),
                _ => text(StatusCode::NOT_FOUND, "no such client\n"),
            }
        }
        (&Method::GET, "/slow") => {
            let ms = query_param(req.uri().query(), "ms")
                .unwrap_or(1000)
                .min(60_000);
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
        "detached_timeouts": stats.detached_timeouts,
        "exported": stats.exported,
        "exported_active": stats.exported_active,
        "closed": stats.closed,
        "proxy_rejected": stats.proxy_rejected,
    })
}

fn query_param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
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
