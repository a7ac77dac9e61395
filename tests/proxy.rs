//! PROXY protocol v1/v2 on the server's TCP listeners: headers split across reads, TLVs,
//! trusted networks, malformed, missing and late headers, TLS after the header, the per-IP
//! limit on the original client, and a real HAProxy in front.
#![cfg(feature = "proxy-protocol")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_remote_client::{
    proxy::{IpNet, ProxyProtocol},
    ClientInfo, Listener, Options, RequestBody, Server, ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

mod common;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

async fn describe(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().unwrap();
    let line =
        match client.proxy() {
            Some(proxy) => format!(
            "remote={} local={} proxy_peer={} version={} local_cmd={} authority={} unique_id={}",
            client.remote_address(),
            client.local_address(),
            proxy.peer_address().ip().unwrap(),
            proxy.version(),
            proxy.is_local(),
            proxy.authority().unwrap_or("-"),
            proxy.unique_id().map(String::from_utf8_lossy).unwrap_or_default(),
        ),
            None => format!("remote={} direct", client.remote_address()),
        };
    Ok(Response::new(Full::new(Bytes::from(line))))
}

fn loopback() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().unwrap()]
}

async fn run(proxy: ProxyProtocol, options: Options) -> (SocketAddr, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(options).listener(Listener::tcp(listener).with_proxy_protocol(proxy));
    let handle = server.handle();
    tokio::spawn(server.serve(tower::service_fn(describe)));
    (addr, handle)
}

/// Writes `chunks` with a flush and a pause between them (so the server sees them in separate
/// reads), then reads the whole answer; `None` if the connection ended without one.
async fn exchange(addr: SocketAddr, chunks: &[&[u8]]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    text.starts_with("HTTP/1.1 200").then_some(body)
}

fn v2_header(local: bool) -> Vec<u8> {
    use ppp::v2;
    let addresses: v2::Addresses = (
        "192.0.2.1:56324".parse::<SocketAddr>().unwrap(),
        "198.51.100.2:443".parse::<SocketAddr>().unwrap(),
    )
        .into();
    let command = if local {
        v2::Command::Local
    } else {
        v2::Command::Proxy
    };
    v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
        .write_tlv(v2::Type::Authority, b"example.com")
        .unwrap()
        .write_tlv(v2::Type::UniqueId, b"conn-42")
        .unwrap()
        .build()
        .unwrap()
}

#[tokio::test]
async fn v1_split_across_reads() {
    let (addr, _) = run(ProxyProtocol::required(loopback()), Options::default()).await;
    let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    let body = exchange(
        addr,
        &[&header[..3], &header[3..19], &header[19..], REQUEST],
    )
    .await
    .unwrap();
    assert_eq!(
        body,
        "remote=192.0.2.1:56324 local=198.51.100.2:443 proxy_peer=127.0.0.1 version=1 local_cmd=false authority=- unique_id="
    );
    // Header and request in one write: nothing past the header is lost.
    let one = [header.as_slice(), REQUEST].concat();
    assert!(exchange(addr, &[&one])
        .await
        .unwrap()
        .starts_with("remote=192.0.2.1:56324 "));
}

#[tokio::test]
async fn v2_with_tlvs_split_across_reads() {
    let (addr, _) = run(ProxyProtocol::required(loopback()), Options::default()).await;
    let header = v2_header(false);
    let body = exchange(
        addr,
        &[
            &header[..7],
            &header[7..15],
            &header[15..30],
            &header[30..],
            REQUEST,
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        body,
        "remote=192.0.2.1:56324 local=198.51.100.2:443 proxy_peer=127.0.0.1 version=2 local_cmd=false authority=example.com unique_id=conn-42"
    );
}

#[tokio::test]
async fn local_command_keeps_the_socket_addresses() {
    let (addr, _) = run(ProxyProtocol::required(loopback()), Options::default()).await;
    let header = v2_header(true);
    let body = exchange(addr, &[&header, REQUEST]).await.unwrap();
    assert!(body.starts_with("remote=127.0.0.1:"), "{body}");
    assert!(body.contains(" version=2 local_cmd=true "), "{body}");
}

#[tokio::test]
async fn malformed_missing_and_untrusted_headers_are_refused_and_counted() {
    let (addr, handle) = run(ProxyProtocol::required(loopback()), Options::default()).await;
    let malformed = b"PROXY TCP4 999.0.2.1 198.51.100.2 56324 443\r\n";
    assert_eq!(exchange(addr, &[malformed, REQUEST]).await, None);
    assert_eq!(
        exchange(addr, &[b"PROXY TCP4 192.0.2.1 ", &[b'9'; 120]]).await,
        None
    );
    // Required: a plain request is refused.
    assert_eq!(exchange(addr, &[REQUEST]).await, None);
    assert_eq!(handle.stats().proxy_rejected, 3);

    // Trusting only 10.0.0.0/8: a header from 127.0.0.1 is refused, a plain request served.
    let (addr, handle) = run(
        ProxyProtocol::optional(["10.0.0.0/8".parse().unwrap()]),
        Options::default(),
    )
    .await;
    let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
    assert_eq!(exchange(addr, &[header, REQUEST]).await, None);
    assert!(exchange(addr, &[REQUEST])
        .await
        .unwrap()
        .ends_with(" direct"));
    assert_eq!(handle.stats().proxy_rejected, 1);
}

#[tokio::test]
async fn optional_serves_connections_without_a_header_byte_for_byte() {
    let (addr, _) = run(ProxyProtocol::optional(loopback()), Options::default()).await;
    // Starts like "PROXY " for one byte, then is plain HTTP: the byte read is put back.
    let put = b"PUT / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let body = exchange(addr, &[&put[..1], &put[1..]]).await.unwrap();
    assert!(body.ends_with(" direct"), "{body}");
    assert!(exchange(addr, &[REQUEST])
        .await
        .unwrap()
        .ends_with(" direct"));
}

#[tokio::test]
async fn a_header_that_never_completes_is_closed_at_the_deadline() {
    let proxy = ProxyProtocol::required(loopback()).timeout(Duration::from_millis(300));
    let (addr, handle) = run(proxy, Options::default()).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PROXY TCP4 192.0.").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(buf.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(handle.stats().proxy_rejected, 1);
}

#[tokio::test]
async fn per_ip_limit_applies_to_the_original_client() {
    let mut options = Options::default();
    options = options.with_connections_per_ip(1);
    options = options.with_per_ip_limit_on_loopback(true);
    let (addr, handle) = run(ProxyProtocol::required(loopback()), options).await;
    let header = |ip: &str| format!("PROXY TCP4 {ip} 198.51.100.2 5000 443\r\n").into_bytes();
    // Two clients through the same proxy address, each under its own limit.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&header("192.0.2.1")).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(LIMIT, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(exchange(addr, &[&header("192.0.2.2"), REQUEST])
        .await
        .is_some());
    // The same original client again, while its first connection is open: over its limit.
    assert_eq!(exchange(addr, &[&header("192.0.2.1"), REQUEST]).await, None);
    assert_eq!(handle.stats().rejected_per_ip_limit, 1);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn proxy_header_comes_before_the_tls_handshake() {
    let (acceptor, connector) = common::tls::self_signed();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = Listener::tcp(listener)
        .with_tls(acceptor)
        .with_proxy_protocol(ProxyProtocol::required(loopback()));
    tokio::spawn(
        Server::new(Options::default())
            .listener(listener)
            .serve(tower::service_fn(describe)),
    );

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&v2_header(false)).await.unwrap();
    let mut tls = connector
        .connect(common::tls::localhost(), tcp)
        .await
        .unwrap();
    tls.write_all(REQUEST).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, tls.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("remote=192.0.2.1:56324 "), "{text}");
}

/// HAProxy (Debian's `haproxy`, installed by `.ci/run`) in front of the server, with
/// `send-proxy` and `send-proxy-v2`, and curl bound to 127.0.0.5 going through it.
#[tokio::test]
async fn behind_a_real_haproxy() {
    let haproxy =
        which("haproxy").expect("haproxy is not installed: .ci/run installs Debian's haproxy");
    let (app, _) = run(ProxyProtocol::required(loopback()), Options::default()).await;
    let v1_port = free_port().await;
    let v2_port = free_port().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 64\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend v1\n  bind 127.0.0.1:{v1_port}\n  default_backend app_v1\n\
             frontend v2\n  bind 127.0.0.1:{v2_port}\n  default_backend app_v2\n\
             backend app_v1\n  server app 127.0.0.1:{} send-proxy\n\
             backend app_v2\n  server app 127.0.0.1:{} send-proxy-v2\n",
            app.port(),
            app.port()
        ),
    )
    .unwrap();
    let _haproxy = tokio::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for (port, version) in [(v1_port, 1), (v2_port, 2)] {
        wait_listening(port).await;
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--interface", "127.0.0.5"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let body = String::from_utf8_lossy(&output.stdout);
        assert!(body.starts_with("remote=127.0.0.5:"), "{body}");
        assert!(body.contains(&format!(" version={version} ")), "{body}");
        assert!(
            body.contains(&format!(" local=127.0.0.1:{port} ")),
            "{body}"
        );
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.exists())
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + LIMIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
