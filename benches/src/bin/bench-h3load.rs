//! The HTTP/3 client of `benches/h3.sh` (issue 26): a load generator in the manner of
//! `h2load -c C -m M -D SECS`, and an idle-connection client for the idle-memory measurement.
//! quinn 0.11 + h3 0.0.8 + h3-quinn 0.0.10, one thread (tokio `current_thread`), 127.0.0.1.
//!
//! ```text
//! bench-h3load load 127.0.0.1:PORT CONNS STREAMS SECS
//! bench-h3load idle 127.0.0.1:PORT COUNT HOLD_SECS
//! ```
//!
//! `load`: opens CONNS QUIC connections (one client endpoint, one UDP socket), then runs
//! STREAMS workers per connection for SECS seconds; each worker sends `GET /` (authority
//! `127.0.0.1:PORT`, stream finished with the head), reads the response head and its whole
//! body, and starts the next request, so every connection has STREAMS requests in flight. At
//! SECS it counts the requests completed by then (a 2xx and a non-empty body) and prints
//!
//! ```text
//! bench-h3load: OK requests ok, ERR errors in SECS s, RATE req/s (CONNS connections x STREAMS streams)
//! ```
//!
//! then stops its workers (requests in flight are dropped, not counted) and closes the
//! connections. Errors are failed requests (a stream or connection error, a non-2xx, an empty
//! body); a worker whose connection is gone stops. Exits with status 1 if a connection could
//! not be made or nothing succeeded, and stops by itself: the connections must be up within
//! 30 s, the run lasts SECS, the close at most 2 s more.
//!
//! `idle`: COUNT connections, 50 being opened at a time, each makes one `GET /` and reads the
//! whole answer, then stays open, idle (no request, no PING: the server's 60 s idle timeout and
//! the client's 30 s are far). Once all COUNT have answered it prints `ready COUNT` and holds
//! them HOLD_SECS (at most 600). Exits with status 1 if a connection or request failed, or if
//! the set-up took more than 120 s.
//!
//! The server certificate is not checked against any root (the servers make a new self-signed
//! one at each start); the handshake signature is, with ring, as any client would.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Request, Uri};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

type Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench-h3load load 127.0.0.1:PORT CONNS STREAMS SECS\n       bench-h3load idle 127.0.0.1:PORT COUNT HOLD_SECS";
    let mode = args.next().expect(usage);
    let addr: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let mut number = || -> u64 { args.next().expect(usage).parse().expect(usage) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let code = match mode.as_str() {
        "load" => {
            let (conns, streams, secs) = (number(), number(), number());
            local.block_on(&runtime, load(addr, conns as usize, streams as usize, secs))
        }
        "idle" => {
            let (count, hold) = (number(), number());
            local.block_on(&runtime, idle(addr, count as usize, hold.min(600)))
        }
        _ => panic!("{usage}"),
    };
    std::process::exit(code);
}

/// A client endpoint on 127.0.0.1 (one UDP socket for all its connections), TLS 1.3, ALPN h3.
fn endpoint() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client TLS");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// One HTTP/3 connection: its QUIC connection, request sender and h3 driver task.
struct Conn {
    quic: quinn::Connection,
    send: Send,
    driver: tokio::task::JoinHandle<()>,
}

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<Conn, String> {
    let quic = endpoint
        .connect(addr, "localhost")
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
        .await
        .map_err(|e| format!("h3 set-up: {e}"))?;
    let driver = tokio::task::spawn_local(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(Conn { quic, send, driver })
}

/// `GET uri`: the whole answer read; Ok if 2xx with a body.
async fn get(send: &mut Send, uri: &Uri) -> Result<(), String> {
    let req = Request::get(uri.clone()).body(()).expect("request");
    let mut stream = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    stream.finish().await.map_err(|e| format!("finish: {e}"))?;
    let response = stream
        .recv_response()
        .await
        .map_err(|e| format!("response: {e}"))?;
    let mut body = 0;
    while let Some(chunk) = stream.recv_data().await.map_err(|e| format!("body: {e}"))? {
        body += chunk.remaining();
    }
    if !response.status().is_success() || body == 0 {
        return Err(format!("status {}, {body} body bytes", response.status()));
    }
    Ok(())
}

fn uri(addr: SocketAddr) -> Uri {
    format!("https://{addr}/").parse().expect("uri")
}

async fn load(addr: SocketAddr, conns: usize, streams: usize, secs: u64) -> i32 {
    let endpoint = endpoint();
    let uri = uri(addr);
    let opening = async {
        let mut all = Vec::with_capacity(conns);
        for _ in 0..conns {
            all.push(connect(&endpoint, addr).await?);
        }
        Ok::<_, String>(all)
    };
    let all = match tokio::time::timeout(Duration::from_secs(30), opening).await {
        Ok(Ok(all)) => all,
        Ok(Err(e)) => {
            eprintln!("bench-h3load: {e}");
            return 1;
        }
        Err(_) => {
            eprintln!("bench-h3load: connections not up within 30 s");
            return 1;
        }
    };
    let ok = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let mut workers = Vec::with_capacity(conns * streams);
    let started = Instant::now();
    for conn in &all {
        for _ in 0..streams {
            let (mut send, uri) = (conn.send.clone(), uri.clone());
            let (ok, errors, stop) = (ok.clone(), errors.clone(), stop.clone());
            let quic = conn.quic.clone();
            workers.push(tokio::task::spawn_local(async move {
                while !stop.get() {
                    match get(&mut send, &uri).await {
                        Ok(()) => ok.set(ok.get() + 1),
                        Err(_) if stop.get() => break,
                        Err(e) => {
                            errors.set(errors.get() + 1);
                            if errors.get() <= 5 {
                                eprintln!("bench-h3load: {e}");
                            }
                            if quic.close_reason().is_some() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        started + Duration::from_secs(secs),
    ))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let (done, failed) = (ok.get(), errors.get());
    stop.set(true);
    for worker in &workers {
        worker.abort();
    }
    for conn in &all {
        conn.quic.close(quinn::VarInt::from_u32(0x100), b"done");
        conn.driver.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    println!(
        "bench-h3load: {done} requests ok, {failed} errors in {elapsed:.3} s, {:.0} req/s ({conns} connections x {streams} streams)",
        done as f64 / elapsed
    );
    if done == 0 {
        1
    } else {
        0
    }
}

async fn idle(addr: SocketAddr, count: usize, hold: u64) -> i32 {
    let endpoint = endpoint();
    let uri = uri(addr);
    let opening = async {
        let mut held = Vec::with_capacity(count);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while pending.len() < 50 && next < count {
                next += 1;
                let (endpoint, uri) = (endpoint.clone(), uri.clone());
                pending.spawn_local(async move {
                    let mut conn = connect(&endpoint, addr).await?;
                    get(&mut conn.send, &uri).await?;
                    Ok::<_, String>(conn)
                });
            }
            match pending.join_next().await {
                Some(Ok(Ok(conn))) => held.push(conn),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok(held)
    };
    let held = match tokio::time::timeout(Duration::from_secs(120), opening).await {
        Ok(Ok(held)) => held,
        Ok(Err(e)) => {
            eprintln!("bench-h3load: {e}");
            return 1;
        }
        Err(_) => {
            eprintln!("bench-h3load: set-up took more than 120 s");
            return 1;
        }
    };
    println!("ready {}", held.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    for conn in &held {
        conn.quic.close(quinn::VarInt::from_u32(0x100), b"done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    0
}

/// Accepts any certificate (the servers' are self-signed, made at start); checks the handshake
/// signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
