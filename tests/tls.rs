//! TLS: the crypto context over real rustls and curl clients, ALPN driver selection, client
//! certificates, and handshakes that stall or are not TLS at all.
#![cfg(feature = "tls")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_remote_client::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use hyper_remote_client::tls::rustls::{self, RootCertStore};
use hyper_remote_client::{
    driver::DefaultHttpDriverFactory,
    tls::{server_config, ClientAuth, TlsAcceptor, TlsError},
    ClientInfo, Options, RequestBody,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all made now.
struct Pki {
    ca: rcgen::Certificate,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A subject of its own: OpenSSL takes a leaf whose issuer equals its subject for
        // self-signed.
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
        };
        let (server_chain, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_chain, client_key) = leaf(vec!["client.test".into()]);
        Pki {
            ca,
            server_chain,
            server_key,
            client_chain,
            client_key,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    fn ca_file(&self) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), self.ca.pem()).unwrap();
        file
    }

    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
        with_cert: bool,
    ) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(self.roots());
        let mut config = if with_cert {
            builder
                .with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// What the handler saw, as one line.
async fn describe(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().unwrap();
    let tls = client.tls().unwrap();
    let line = format!(
        "{} {} {} {} {} {} {:?} {}",
        client.is_encrypted(),
        tls.protocol(),
        tls.cipher_name(),
        tls.cipher_bits(),
        tls.alpn_protocol()
            .map(String::from_utf8_lossy)
            .unwrap_or_default(),
        tls.server_name().unwrap_or("-"),
        req.version(),
        tls.peer_certificates().len(),
    );
    let first = tls.peer_certificates().first().cloned().unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(line)));
    response
        .headers_mut()
        .insert("x-cert-len", first.len().into());
    Ok(response)
}

struct Server {
    addr: SocketAddr,
    errors: mpsc::UnboundedReceiver<TlsError>,
}

async fn serve(pki: &Pki, client_auth: ClientAuth, options: Options) -> Server {
    let config = server_config(
        pki.server_chain.clone(),
        pki.server_key.clone_key(),
        client_auth,
    )
    .unwrap();
    let acceptor = TlsAcceptor::new(Arc::new(config));
    let options = Arc::new(options);
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (errors_tx, errors) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, options, drivers, errors_tx) = (
                acceptor.clone(),
                options.clone(),
                drivers.clone(),
                errors_tx.clone(),
            );
            tokio::spawn(async move {
                match acceptor.accept_tcp(stream, options).await {
                    Ok(client) => {
                        client.start(&*drivers, tower::service_fn(describe)).await;
                    }
                    Err(error) => {
                        let _ = errors_tx.send(error);
                    }
                }
            });
        }
    });
    Server { addr, errors }
}

/// One GET / over a rustls client; the handler's line and the x-cert-len header.
async fn get(addr: SocketAddr, config: rustls::ClientConfig, sni: &str) -> (String, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    // HTTP/2 carries the authority in the target; HTTP/1.1 needs a Host header.
    let req = if h2 {
        Request::get(format!("https://{sni}/"))
    } else {
        Request::get("/").header("host", sni)
    }
    .body(Empty::<Bytes>::new())
    .unwrap();
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let cert_len = response.headers()["x-cert-len"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), cert_len)
}

#[tokio::test]
async fn rustls_client_tls13_and_tls12_with_alpn_select_the_protocol() {
    let pki = Pki::new();
    let server = serve(&pki, ClientAuth::None, Options::default()).await;
    let cases: [(&'static rustls::SupportedProtocolVersion, &[&[u8]], &str); 4] = [
        (
            &rustls::version::TLS13,
            &[b"h2", b"http/1.1"],
            "true TLSv1.3 TLS13_AES_256_GCM_SHA384 256 h2 localhost HTTP/2.0 0",
        ),
        (
            &rustls::version::TLS13,
            &[b"http/1.1"],
            "true TLSv1.3 TLS13_AES_256_GCM_SHA384 256 http/1.1 localhost HTTP/1.1 0",
        ),
        (
            &rustls::version::TLS12,
            &[b"h2"],
            "true TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 256 h2 localhost HTTP/2.0 0",
        ),
        (
            &rustls::version::TLS12,
            &[],
            "true TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 256  localhost HTTP/1.1 0",
        ),
    ];
    for (version, alpn, expected) in cases {
        let config = pki.client_config(&[version], alpn, false);
        let (line, _) = tokio::time::timeout(LIMIT, get(server.addr, config, "localhost"))
            .await
            .unwrap();
        assert_eq!(line, expected);
    }
}

#[tokio::test]
async fn no_sni_for_an_ip_address() {
    let pki = Pki::new();
    let server = serve(&pki, ClientAuth::None, Options::default()).await;
    let config = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"], false);
    let (line, _) = tokio::time::timeout(LIMIT, get(server.addr, config, "127.0.0.1"))
        .await
        .unwrap();
    assert!(line.contains(" http/1.1 - HTTP/1.1 "), "{line}");
}

#[tokio::test]
async fn client_certificate_reaches_the_handler() {
    let pki = Pki::new();
    let server = serve(&pki, ClientAuth::Request(pki.roots()), Options::default()).await;
    let with = pki.client_config(&[&rustls::version::TLS13], &[b"h2"], true);
    let (line, cert_len) = tokio::time::timeout(LIMIT, get(server.addr, with, "localhost"))
        .await
        .unwrap();
    assert!(line.ends_with(" 1"), "one certificate: {line}");
    assert_eq!(
        cert_len,
        pki.client_chain[0].len().to_string(),
        "the DER the client sent"
    );

    // Requested, not required: a client without one is served too.
    let without = pki.client_config(&[&rustls::version::TLS13], &[b"h2"], false);
    let (line, _) = tokio::time::timeout(LIMIT, get(server.addr, without, "localhost"))
        .await
        .unwrap();
    assert!(line.ends_with(" 0"), "no certificate: {line}");
}

#[tokio::test]
async fn required_client_certificate_refuses_clients_without_one() {
    let pki = Pki::new();
    let mut server = serve(&pki, ClientAuth::Require(pki.roots()), Options::default()).await;
    let with = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"], true);
    let (line, _) = tokio::time::timeout(LIMIT, get(server.addr, with, "localhost"))
        .await
        .unwrap();
    assert!(line.ends_with(" 1"), "{line}");

    let without = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"], false);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(without));
    // TLS 1.3: the client finishes first, and learns of the refusal on its first read.
    if let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        let _ = tls
            .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        assert!(tls.read_to_end(&mut buf).await.is_err() || buf.is_empty());
    }
    let error = tokio::time::timeout(LIMIT, server.errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(error, TlsError::Handshake(_)), "{error:?}");
}

#[tokio::test]
async fn curl_over_tls13_and_tls12() {
    let pki = Pki::new();
    let server = serve(&pki, ClientAuth::None, Options::default()).await;
    let ca = pki.ca_file();
    let url = format!("https://localhost:{}/", server.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", server.addr.port());
    for (flags, expected) in [
        (vec!["--tlsv1.3"], "true TLSv1.3 TLS13_AES_256_GCM_SHA384 256 h2 localhost HTTP/2.0 0"),
        (vec!["--tlsv1.2", "--tls-max", "1.2", "--http1.1"], "true TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 256 http/1.1 localhost HTTP/1.1 0"),
    ] {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(ca.path())
            .args(["--resolve", &resolve])
            .args(&flags)
            .arg(&url)
            .output()
            .await
            .expect("curl is installed");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }
}

#[tokio::test]
async fn stalled_handshake_is_closed_at_the_timeout_while_others_are_served() {
    let pki = Pki::new();
    let mut options = Options::default();
    options = options.with_tls_setup_timeout(Some(Duration::from_millis(500)));
    let mut server = serve(&pki, ClientAuth::None, options).await;

    let started = Instant::now();
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap(); // half a record header, then nothing

    // Another client is served while the first one stalls.
    let config = pki.client_config(&[&rustls::version::TLS13], &[b"h2"], false);
    let (line, _) = tokio::time::timeout(LIMIT, get(server.addr, config, "localhost"))
        .await
        .unwrap();
    assert!(line.starts_with("true TLSv1.3"), "{line}");

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, stalled.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let error = tokio::time::timeout(LIMIT, server.errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(error, TlsError::Timeout), "{error:?}");
}

#[tokio::test]
async fn garbage_on_the_tls_port_is_closed() {
    let pki = Pki::new();
    let mut server = serve(&pki, ClientAuth::None, Options::default()).await;
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server may send an alert before it closes; it never answers HTTP.
    let _ = tokio::time::timeout(LIMIT, plain.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!buf.starts_with(b"HTTP/"), "{buf:?}");
    let error = tokio::time::timeout(LIMIT, server.errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(error, TlsError::Handshake(_)), "{error:?}");
}

#[test]
fn server_config_from_pem_names_the_file_that_failed() {
    use hyper_remote_client::tls::{server_config_from_pem, ClientAuth, TlsError};
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&garbage, "not pem at all\n").unwrap();

    assert!(server_config_from_pem(&cert_path, &key_path, ClientAuth::None).is_ok());

    let missing = dir.path().join("missing.pem");
    let error = server_config_from_pem(&missing, &key_path, ClientAuth::None).unwrap_err();
    assert!(matches!(error, TlsError::File { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    let error = server_config_from_pem(&cert_path, &garbage, ClientAuth::None).unwrap_err();
    assert!(matches!(error, TlsError::Pem { .. }), "{error:?}");
    assert!(error.to_string().contains("garbage.pem"), "{error}");
    assert!(error.to_string().contains("no private key"), "{error}");

    let error = server_config_from_pem(&garbage, &key_path, ClientAuth::None).unwrap_err();
    assert!(
        error.to_string().contains("garbage.pem: no certificate"),
        "{error}"
    );

    // A key that does not match the certificate: rustls says so.
    let other = rcgen::KeyPair::generate().unwrap();
    let other_path = dir.path().join("other-key.pem");
    std::fs::write(&other_path, other.serialize_pem()).unwrap();
    let error = server_config_from_pem(&cert_path, &other_path, ClientAuth::None).unwrap_err();
    assert!(matches!(error, TlsError::Config(_)), "{error:?}");
}
