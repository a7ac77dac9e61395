//! A self-signed certificate for `localhost`, as the server's `TlsAcceptor` and a rustls client
//! that trusts it (for tests where the certificate itself is not the point).
#![cfg(feature = "tls")]

use std::sync::Arc;

use hyper_remote_client::tls::rustls::pki_types::{PrivateKeyDer, ServerName};
use hyper_remote_client::tls::rustls::{self, RootCertStore};
use hyper_remote_client::tls::{server_config, ClientAuth, TlsAcceptor};

/// The acceptor, and a connector that trusts its certificate.
pub fn self_signed() -> (TlsAcceptor, tokio_rustls::TlsConnector) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = server_config(
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        ClientAuth::None,
    )
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        TlsAcceptor::new(Arc::new(config)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

/// The name the certificate is for.
pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}
