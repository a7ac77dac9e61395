//! TLS without restarts: `TlsAcceptor::reload`/`reload_from_pem` under a running `Server`
//! (new connections get the new certificate, open ones keep theirs, a failed reload changes
//! nothing), and several certificates chosen by SNI (`server_config_with_sni`), reloaded too.
#![cfg(feature = "tls")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{eventually, parse_response, within};
use http::{Request, Response};
use hyper_remote_client::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use hyper_remote_client::tls::rustls::{self, RootCertStore};
use hyper_remote_client::{
    tls::{
        cert_and_key_from_pem, server_config_from_pem, server_config_with_sni, ClientAuth,
        TlsAcceptor, TlsError,
    },
    ClientInfo, Listener, Options, RequestBody, Server, ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// A self-signed certificate made now, with its key, in DER and PEM.
struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn new(names: &[&str]) -> Cert {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Cert {
            der: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// `(name, chain, key)`, as `server_config_with_sni` takes them.
    fn for_name(
        &self,
        name: &str,
    ) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            name.to_owned(),
            vec![self.der.clone()],
            self.key.clone_key(),
        )
    }

    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; returns their paths.
    fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A rustls client that trusts `certs` (and nothing else); `sni` says whether it sends the
/// server name.
fn connector(certs: &[&Cert], sni: bool) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_sni = sni;
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Answers with the id of the connection the request came on.
async fn whoami(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().expect("ClientInfo");
    Ok(Response::new(format!("client {}", client.id().get())))
}

/// A `Server` on 127.0.0.1:0 under `acceptor` (a clone: the caller keeps its own to reload).
async fn serve(acceptor: &TlsAcceptor) -> (SocketAddr, ServerHandle) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server =
        Server::new(Options::default()).listener(Listener::tcp(tcp).with_tls(acceptor.clone()));
    let handle = server.handle();
    tokio::spawn(server.serve(tower::service_fn(whoami)));
    (addr, handle)
}

/// A TLS connection to `addr` for `name`.
async fn connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = within("connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    within("TLS handshake", connector.connect(name, tcp)).await
}

/// The end-entity certificate the server showed on `tls`.
fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

/// One keep-alive HTTP/1.1 request on `tls`; the response body.
async fn get(tls: &mut TlsStream<TcpStream>) -> String {
    within(
        "write a request",
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((response, _)) = parse_response(&buf) {
            assert_eq!(response.status, 200, "{response:?}");
            return String::from_utf8(response.body).unwrap();
        }
        let n = within("read the response", tls.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "EOF before a full response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_reload_serves_new_connections_the_new_certificate_and_open_ones_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let (cert1, cert2) = (Cert::new(&["localhost"]), Cert::new(&["localhost"]));
    let (cert1_path, key1_path) = cert1.write(dir.path(), "one");
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_from_pem(&cert1_path, &key1_path, ClientAuth::None).unwrap(),
    ));
    let (addr, handle) = serve(&acceptor).await;
    let client = connector(&[&cert1, &cert2], true);

    let mut a = connect(addr, &client, "localhost").await.unwrap();
    assert_eq!(peer_cert(&a), cert1.der);
    let a_id = get(&mut a).await;

    // Renewed files, reloaded through the acceptor the caller kept (the listener has a clone).
    let (cert2_path, key2_path) = cert2.write(dir.path(), "two");
    acceptor
        .reload_from_pem(&cert2_path, &key2_path, ClientAuth::None)
        .unwrap();

    let mut b = connect(addr, &client, "localhost").await.unwrap();
    assert_eq!(
        peer_cert(&b),
        cert2.der,
        "a new connection gets the new certificate"
    );
    let b_id = get(&mut b).await;
    assert_ne!(a_id, b_id);

    // A, set up before the reload, still serves requests, on its session with certificate 1.
    assert_eq!(get(&mut a).await, a_id, "the same connection");
    assert_eq!(peer_cert(&a), cert1.der);
    assert_eq!(handle.stats().tls_handshake_failures, 0);
    assert_eq!(handle.connection_count(), 2);
}

#[tokio::test]
async fn a_failed_reload_names_the_file_and_keeps_the_certificate_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (cert1, cert2) = (Cert::new(&["localhost"]), Cert::new(&["localhost"]));
    let (cert1_path, key1_path) = cert1.write(dir.path(), "one");
    let (cert2_path, key2_path) = cert2.write(dir.path(), "two");
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_from_pem(&cert1_path, &key1_path, ClientAuth::None).unwrap(),
    ));
    let (addr, _handle) = serve(&acceptor).await;
    let client = connector(&[&cert1, &cert2], true);
    acceptor
        .reload_from_pem(&cert2_path, &key2_path, ClientAuth::None)
        .unwrap();
    let in_use = acceptor.config();

    // Garbage in the certificate file.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    )
    .unwrap();
    let error = acceptor
        .reload_from_pem(&garbage, &key2_path, ClientAuth::None)
        .unwrap_err();
    assert!(
        matches!(&error, TlsError::Pem { path, .. } if *path == garbage),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&*garbage.to_string_lossy()),
        "{error}"
    );

    // Garbage in the key file (a file that is not PEM at all).
    let not_pem = dir.path().join("not-pem.key");
    std::fs::write(&not_pem, "hello").unwrap();
    let error = acceptor
        .reload_from_pem(&cert2_path, &not_pem, ClientAuth::None)
        .unwrap_err();
    assert!(
        matches!(&error, TlsError::Pem { path, .. } if *path == not_pem),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&*not_pem.to_string_lossy()),
        "{error}"
    );

    // A missing file.
    let missing = dir.path().join("missing.pem");
    let error = acceptor
        .reload_from_pem(&missing, &key2_path, ClientAuth::None)
        .unwrap_err();
    assert!(
        matches!(&error, TlsError::File { path, .. } if *path == missing),
        "{error:?}"
    );

    // Well-formed files that do not go together: certificate 1 with key 2.
    let error = acceptor
        .reload_from_pem(&cert1_path, &key2_path, ClientAuth::None)
        .unwrap_err();
    assert!(matches!(error, TlsError::Config(_)), "{error:?}");

    // None of these changed anything.
    assert!(Arc::ptr_eq(&acceptor.config(), &in_use));
    let mut c = connect(addr, &client, "localhost").await.unwrap();
    assert_eq!(peer_cert(&c), cert2.der, "certificate 2 is still in use");
    get(&mut c).await;
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_refuses_other_names_without_a_default() {
    let (a, b) = (Cert::new(&["a.test"]), Cert::new(&["b.test"]));
    let config = server_config_with_sni(
        [a.for_name("a.test"), b.for_name("b.test")],
        None,
        ClientAuth::None,
    )
    .unwrap();
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()],
        "the ALPN of server_config"
    );
    let acceptor = TlsAcceptor::new(Arc::new(config));
    let (addr, handle) = serve(&acceptor).await;
    let client = connector(&[&a, &b], true);

    let mut to_a = connect(addr, &client, "a.test").await.unwrap();
    assert_eq!(peer_cert(&to_a), a.der);
    get(&mut to_a).await;
    // Names are matched case-insensitively.
    let mut to_b = connect(addr, &client, "B.Test").await.unwrap();
    assert_eq!(peer_cert(&to_b), b.der);
    get(&mut to_b).await;

    // A name with no certificate, and no name at all: refused.
    let error = connect(addr, &client, "c.test").await.unwrap_err();
    assert!(error.to_string().contains("AccessDenied"), "{error}");
    let without_sni = connector(&[&a, &b], false);
    connect(addr, &without_sni, "a.test").await.unwrap_err();
    eventually("both refusals are counted as failed handshakes", || {
        handle.stats().tls_handshake_failures == 2
    })
    .await;
}

#[tokio::test]
async fn sni_with_a_default_and_reloaded_sni_configurations() {
    let (a, b) = (Cert::new(&["a.test"]), Cert::new(&["b.test"]));
    // The default is for whatever a client asks that has no certificate of its own: here it
    // claims c.test so that the client can verify it.
    let fallback = Cert::new(&["c.test"]);
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_with_sni([a.for_name("a.test")], None, ClientAuth::None).unwrap(),
    ));
    let (addr, handle) = serve(&acceptor).await;
    let client = connector(&[&a, &b, &fallback], true);
    let without_sni = connector(&[&a, &b, &fallback], false);

    assert!(
        connect(addr, &client, "b.test").await.is_err(),
        "not known yet"
    );
    let mut old = connect(addr, &client, "a.test").await.unwrap();
    get(&mut old).await;

    // Reload: b.test added, and a default.
    acceptor.reload(Arc::new(
        server_config_with_sni(
            [a.for_name("a.test"), b.for_name("b.test")],
            Some((vec![fallback.der.clone()], fallback.key.clone_key())),
            ClientAuth::None,
        )
        .unwrap(),
    ));
    let mut to_b = connect(addr, &client, "b.test").await.unwrap();
    assert_eq!(peer_cert(&to_b), b.der);
    get(&mut to_b).await;
    let to_a = connect(addr, &client, "a.test").await.unwrap();
    assert_eq!(peer_cert(&to_a), a.der);
    let mut unknown = connect(addr, &client, "c.test").await.unwrap();
    assert_eq!(
        peer_cert(&unknown),
        fallback.der,
        "an unknown name gets the default"
    );
    get(&mut unknown).await;
    let no_name = connect(addr, &without_sni, "c.test").await.unwrap();
    assert_eq!(peer_cert(&no_name), fallback.der, "no SNI gets the default");

    // The connection from before the reload goes on.
    get(&mut old).await;
    assert_eq!(peer_cert(&old), a.der);
    eventually("the one refusal is counted", || {
        handle.stats().tls_handshake_failures == 1
    })
    .await;
}

#[test]
fn sni_configuration_errors_name_the_certificate() {
    let (a, b) = (Cert::new(&["a.test"]), Cert::new(&["b.test"]));
    let refused = |result: Result<_, TlsError>| match result {
        Err(error @ TlsError::Certificate { .. }) => error,
        other => panic!("{other:?}"),
    };

    // A certificate that is not valid for its name.
    let error = refused(server_config_with_sni(
        [a.for_name("a.test"), a.for_name("b.test")],
        None,
        ClientAuth::None,
    ));
    assert!(
        matches!(&error, TlsError::Certificate { name: Some(name), .. } if name == "b.test"),
        "{error:?}"
    );
    assert!(error.to_string().contains("b.test"), "{error}");

    // Not a DNS name.
    let error = refused(server_config_with_sni(
        [a.for_name("not a name")],
        None,
        ClientAuth::None,
    ));
    assert!(error.to_string().contains("not a name"), "{error}");

    // The same name twice (case does not make it another).
    let error = refused(server_config_with_sni(
        [a.for_name("a.test"), a.for_name("A.TEST")],
        None,
        ClientAuth::None,
    ));
    assert!(error.to_string().contains("twice"), "{error}");

    // A key that is not the certificate's.
    let (name, chain, _) = a.for_name("a.test");
    let error = refused(server_config_with_sni(
        [(name, chain, b.key.clone_key())],
        None,
        ClientAuth::None,
    ));
    assert!(error.to_string().contains("a.test"), "{error}");

    // A default whose key is not its certificate's.
    let error = refused(server_config_with_sni(
        [a.for_name("a.test")],
        Some((vec![b.der.clone()], a.key.clone_key())),
        ClientAuth::None,
    ));
    assert!(
        matches!(error, TlsError::Certificate { name: None, .. }),
        "{error:?}"
    );

    // Nothing to serve at all; a default alone is fine (every client gets it).
    let error = server_config_with_sni([], None, ClientAuth::None).unwrap_err();
    assert!(matches!(error, TlsError::Config(_)), "{error:?}");
    server_config_with_sni(
        [],
        Some((vec![b.der.clone()], b.key.clone_key())),
        ClientAuth::None,
    )
    .unwrap();
}

#[test]
fn cert_and_key_from_pem_reads_what_server_config_from_pem_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Cert::new(&["a.test"]);
    let (cert_path, key_path) = cert.write(dir.path(), "a");
    let (chain, key) = cert_and_key_from_pem(&cert_path, &key_path).unwrap();
    assert_eq!(chain, std::slice::from_ref(&cert.der));
    assert_eq!(key.secret_der(), cert.key.secret_der());
    let error = cert_and_key_from_pem(&key_path, &key_path).unwrap_err();
    assert!(
        matches!(&error, TlsError::Pem { path, .. } if *path == key_path),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_async_reload_fails_as_the_blocking_one_and_reloads_as_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert1, cert2) = (Cert::new(&["localhost"]), Cert::new(&["localhost"]));
    let (cert1_path, key1_path) = cert1.write(dir.path(), "one");
    let (cert2_path, key2_path) = cert2.write(dir.path(), "two");
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_from_pem(&cert1_path, &key1_path, ClientAuth::None).unwrap(),
    ));
    let (addr, _handle) = serve(&acceptor).await;
    let in_use = acceptor.config();
    let timeout = TlsAcceptor::RELOAD_TIMEOUT;

    // The same error, file by file: a missing certificate, a missing key, garbage, a key that
    // is not the certificate's.
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not-pem.key");
    std::fs::write(&not_pem, "hello").unwrap();
    for (cert, key) in [
        (&missing, &key2_path),
        (&cert2_path, &missing),
        (&not_pem, &key2_path),
        (&cert2_path, &not_pem),
        (&cert1_path, &key2_path),
    ] {
        let blocking = acceptor
            .reload_from_pem(cert, key, ClientAuth::None)
            .unwrap_err();
        let off_runtime = within(
            "the async reload",
            acceptor.reload_from_pem_files(cert, key, ClientAuth::None, timeout),
        )
        .await
        .unwrap_err();
        assert_eq!(
            off_runtime.to_string(),
            blocking.to_string(),
            "{cert:?} {key:?}"
        );
        assert_eq!(
            std::mem::discriminant(&off_runtime),
            std::mem::discriminant(&blocking),
            "{off_runtime:?} / {blocking:?}"
        );
        if cert == &missing {
            assert!(
                matches!(&off_runtime, TlsError::File { path, source }
                    if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
                "{off_runtime:?}"
            );
        }
    }
    assert!(Arc::ptr_eq(&acceptor.config(), &in_use), "nothing changed");

    // Valid files: reloaded, for new connections, as by `reload_from_pem`.
    let reload = acceptor.reload_from_pem_files(&cert2_path, &key2_path, ClientAuth::None, timeout);
    // The future owns what it needs: it can be spawned.
    within("the spawned reload", tokio::spawn(reload))
        .await
        .unwrap()
        .unwrap();
    let client = connector(&[&cert1, &cert2], true);
    let mut conn = connect(addr, &client, "localhost").await.unwrap();
    assert_eq!(peer_cert(&conn), cert2.der);
    get(&mut conn).await;
}
