//! Mutual TLS: a CA, a server certificate and a client certificate are made at start (rcgen)
//! and written to a temp dir; the server requires a client certificate signed by the CA and
//! answers with what it learned from it.
//!
//! ```text
//! cargo run --example tls_client_cert     # prints the listening address and a curl command
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper_remote_client::tls::rustls::pki_types::PrivateKeyDer;
use hyper_remote_client::tls::rustls::RootCertStore;
use hyper_remote_client::{
    tls::{server_config, ClientAuth, TlsAcceptor},
    ClientInfo, Listener, Options, RequestBody, Server,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn whoami(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let Some(tls) = req
        .extensions()
        .get::<ClientInfo>()
        .and_then(ClientInfo::tls)
    else {
        return Ok(Response::new("not TLS\n".to_owned()));
    };
    let first = tls.peer_certificates().first();
    Ok(Response::new(format!(
        "{} {} alpn={:?} sni={:?} client certificates={} (first: {} DER bytes)\n",
        tls.protocol(),
        tls.cipher_name(),
        tls.alpn_protocol().map(String::from_utf8_lossy),
        tls.server_name(),
        tls.peer_certificates().len(),
        first.map_or(0, |der| der.len()),
    )))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3443".into());
    let dir = std::env::temp_dir().join(format!("hyper-remote-client-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // A CA, a server certificate, and a client certificate it signs.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "example CA");
    let ca = ca.self_signed(&ca_key)?;
    let server_key = rcgen::KeyPair::generate()?;
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.signed_by(
        &server_key,
        &ca,
        &ca_key,
    )?;
    let client_key = rcgen::KeyPair::generate()?;
    let client_cert = rcgen::CertificateParams::new(vec!["client.example".into()])?.signed_by(
        &client_key,
        &ca,
        &ca_key,
    )?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("client.pem"), client_cert.pem())?;
    std::fs::write(dir.join("client.key"), client_key.serialize_pem())?;

    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config = server_config(
        vec![server_cert.der().clone()],
        PrivateKeyDer::try_from(server_key.serialize_der())?,
        ClientAuth::Require(roots),
    )?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("listening on https://{local}");
    println!(
        "try: curl -s --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client.key https://localhost:{p}/",
        d = dir.display(),
        p = local.port()
    );
    Server::new(Options::default())
        .listener(Listener::tcp(listener).with_tls(TlsAcceptor::new(Arc::new(config))))
        .serve_with_shutdown(tower::service_fn(whoami), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
