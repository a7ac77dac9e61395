//! The connection inspector: shows every connection as the server sees it.
//!
//! ```text
//! cargo run --example serve
//! curl -s http://127.0.0.1:8080/                          # this connection, as JSON
//! curl -s --http2-prior-knowledge http://127.0.0.1:8080/  # the same over h2c
//! curl -s --data-binary @Cargo.toml http://127.0.0.1:8080/echo
//! curl -v http://127.0.0.1:8080/close                     # the handler closes the connection
//! curl -s 'http://127.0.0.1:8080/slow?ms=2000'            # a response that takes 2 s
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError};
use hyper_remote_client::{ClientInfo, DefaultHttpDriverFactory, Options, RemoteClient, RequestBody};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The connection inspector: every connection, as the server sees it.
#[derive(Parser, Debug)]
struct Args {
    /// Address to serve HTTP/1.1 and h2c (prior knowledge) on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
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
}

impl Args {
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
            options.http1_timeout = secs(s);
        }
        if let Some(s) = self.http2_timeout {
            options.http2_timeout = secs(s);
        }
        if let Some(s) = self.tls_setup_timeout {
            options.tls_setup_timeout = secs(s);
        }
        if let Some(n) = self.header_size_limit {
            options.header_size_limit = n;
        }
        if let Some(n) = self.body_size_limit {
            options.body_size_limit = n;
        }
        if let Some(s) = self.shutdown_timeout {
            options.shutdown_timeout = secs(s);
        }
        options
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let options = Arc::new(args.options());
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
    let listener = TcpListener::bind(args.http).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!("try: curl -s http://{addr}/");
    println!("     curl -s --http2-prior-knowledge http://{addr}/");
    println!("     curl -s --data-binary @Cargo.toml http://{addr}/echo");
    println!("     curl -v http://{addr}/close");
    println!("     curl -s 'http://{addr}/slow?ms=2000'");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                continue;
            }
        };
        let Ok(client) = RemoteClient::tcp(stream, options.clone()) else { continue };
        let drivers = drivers.clone();
        tokio::spawn(async move {
            client.start(&*drivers, tower::service_fn(route)).await;
        });
    }
}

async fn route(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>().cloned() else {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "no ClientInfo\n"));
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => json_response(client_json(&client, req.version())),
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
        (&Method::GET, "/slow") => {
            let ms = query_param(req.uri().query(), "ms").unwrap_or(1000).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(client_json(&client, req.version()))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// The connection as the server sees it: the keys of `GET /`.
fn client_json(client: &ClientInfo, version: Version) -> Value {
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
        "http_version": format!("{version:?}"),
        "pending_requests": client.pending_requests(),
        "pending_responses": client.pending_responses(),
        "is_waiting_on_response": client.is_waiting_on_response(),
        "is_exported": client.is_exported(),
        "status": client.status().bits(),
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
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
