//! Opens COUNT idle connections to a server for the idle-memory measurement of run.sh.
//!
//! ```text
//! bench-idle h1|h2 127.0.0.1:PORT COUNT HOLD_SECS [SOURCE_IP]
//! ```
//!
//! Each connection (HTTP/1.1 keep-alive, or h2c with prior knowledge) sends one `GET /`, reads
//! the whole response, and is then held open, idle. Once all COUNT have answered it prints
//! `ready COUNT` and holds them for HOLD_SECS (at most 600), then exits. Connections are opened
//! from SOURCE_IP if given. Exits with status 1 if any connection or request failed, or if the
//! whole set-up took more than 120 s.
//!
//! How the connections arrive, `BENCH_ARRIVAL` (issue 24: real traffic arrives spread over
//! time, and a server's per-connection memory may depend on it):
//! - `concurrent` (the default): 50 connections at a time, each connects and makes its request;
//! - `serial`: one after another: connect, one request, keep the connection, next;
//! - `batched`: all COUNT connected first, then one request on each (50 at a time);
//! - `connect`: all COUNT connected, no request at all.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench-idle h1|h2 127.0.0.1:PORT COUNT HOLD_SECS [SOURCE_IP]";
    let proto = args.next().expect(usage);
    let addr: String = args.next().expect(usage);
    let count: usize = args.next().expect(usage).parse().expect(usage);
    let hold: u64 = args.next().expect(usage).parse().expect(usage);
    // An optional fifth argument: the source address to connect from (127.0.0.0/8 has many;
    // each gives its own ~28 000 ephemeral ports).
    let source: Option<std::net::IpAddr> = args.next().map(|a| a.parse().expect(usage));
    assert!(proto == "h1" || proto == "h2", "{usage}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let arrival = std::env::var("BENCH_ARRIVAL").unwrap_or_else(|_| "concurrent".to_owned());
    let code = runtime.block_on(async move {
        let opening = async {
            match arrival.as_str() {
                "concurrent" => open(&proto, &addr, count, source).await,
                "serial" => {
                    let mut held = Vec::with_capacity(count);
                    for _ in 0..count {
                        let stream = connect(&addr, source).await?;
                        held.push(request(proto == "h2", &addr, stream).await?);
                    }
                    Ok(held)
                }
                "batched" | "connect" => {
                    let mut streams = Vec::with_capacity(count);
                    for _ in 0..count {
                        streams.push(connect(&addr, source).await?);
                    }
                    if arrival == "connect" {
                        return Ok(streams.into_iter().map(Held::Socket).collect());
                    }
                    let h2 = proto == "h2";
                    fifty_at_a_time(
                        streams
                            .into_iter()
                            .map(|stream| request_owned(h2, addr.clone(), stream)),
                    )
                    .await
                }
                other => Err(format!("unknown BENCH_ARRIVAL {other:?}")),
            }
        };
        let setup = tokio::time::timeout(Duration::from_secs(120), opening).await;
        let held = match setup {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                eprintln!("bench-idle: {e}");
                return 1;
            }
            Err(_) => {
                eprintln!("bench-idle: set-up took more than 120 s");
                return 1;
            }
        };
        println!("ready {}", held.len());
        tokio::time::sleep(Duration::from_secs(hold.min(600))).await;
        drop(held);
        0
    });
    std::process::exit(code);
}

/// What keeps one connection open: its request sender (the connection task runs on its own).
enum Held {
    Socket(#[allow(dead_code)] TcpStream),
    H1(#[allow(dead_code)] hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(#[allow(dead_code)] hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn open(
    proto: &str,
    addr: &str,
    count: usize,
    source: Option<std::net::IpAddr>,
) -> Result<Vec<Held>, String> {
    let h2 = proto == "h2";
    fifty_at_a_time((0..count).map(|_| one(h2, addr.to_owned(), source))).await
}

/// Runs `jobs`, at most 50 at a time; the connections they opened, or the first error.
async fn fifty_at_a_time<F>(mut jobs: impl Iterator<Item = F>) -> Result<Vec<Held>, String>
where
    F: std::future::Future<Output = Result<Held, String>> + Send + 'static,
{
    let mut held = Vec::new();
    let mut pending = JoinSet::new();
    loop {
        while pending.len() < 50 {
            let Some(job) = jobs.next() else { break };
            pending.spawn(job);
        }
        match pending.join_next().await {
            Some(Ok(Ok(h))) => held.push(h),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    Ok(held)
}

async fn one(h2: bool, addr: String, source: Option<std::net::IpAddr>) -> Result<Held, String> {
    let stream = connect(&addr, source).await?;
    request(h2, &addr, stream).await
}

async fn request_owned(h2: bool, addr: String, stream: TcpStream) -> Result<Held, String> {
    request(h2, &addr, stream).await
}

async fn connect(addr: &str, source: Option<std::net::IpAddr>) -> Result<TcpStream, String> {
    let stream = match source {
        None => TcpStream::connect(&addr).await,
        Some(ip) => {
            let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
            let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
            socket.connect(target).await
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One `GET /` on `stream`, its whole response read; the connection is then held.
async fn request(h2: bool, addr: &str, stream: TcpStream) -> Result<Held, String> {
    let io = TokioIo::new(stream);
    let request = || {
        Request::get(format!("http://{addr}/"))
            .header(http::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = request();
        req.headers_mut().remove(http::header::HOST);
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        (response, Held::H2(sender))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = request();
        *req.uri_mut() = "/".parse().expect("uri");
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        (response, Held::H1(sender))
    };
    let (response, held) = response;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if !status.is_success() || body.is_empty() {
        return Err(format!("status {status}, {} body bytes", body.len()));
    }
    Ok(held)
}
