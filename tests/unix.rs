//! Unix sockets: paths as addresses, no ports, peer credentials, TLS over unix, curl.
#![cfg(unix)]

use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_remote_client::{
    driver::DefaultHttpDriverFactory, ClientInfo, Options, RemoteClient, RequestBody,
};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

mod common;

async fn describe(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().unwrap();
    let cred = client.peer_credentials();
    let line = format!(
        "unix={} remote={:?} remote_port={:?} local={} local_port={:?} uid={:?} gid={:?} pid={:?} tls={}",
        client.is_unix(),
        client.remote_address().to_string(),
        client.remote_port(),
        client.local_address(),
        client.local_port(),
        cred.map(|c| c.uid),
        cred.map(|c| c.gid),
        cred.and_then(|c| c.pid),
        client.is_encrypted(),
    );
    Ok(Response::new(Full::new(Bytes::from(line))))
}

/// Serves `describe` on a unix socket in a fresh temp dir; each ClientInfo goes to the channel.
async fn serve(dir: &Path) -> (PathBuf, mpsc::UnboundedReceiver<ClientInfo>) {
    let path = dir.join("server.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let options = Arc::new(Options::default());
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let client = RemoteClient::unix(stream, options.clone()).unwrap();
            let _ = tx.send(client.client().clone());
            let drivers = drivers.clone();
            tokio::spawn(async move {
                client.start(&*drivers, tower::service_fn(describe)).await;
            });
        }
    });
    (path, rx)
}

/// The uid and gid this process creates files with: its effective ids.
fn my_ids(dir: &Path) -> (u32, u32) {
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let meta = std::fs::metadata(&probe).unwrap();
    (meta.uid(), meta.gid())
}

#[tokio::test]
async fn curl_over_a_unix_socket_sees_paths_no_ports_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _clients) = serve(dir.path()).await;
    let (uid, gid) = my_ids(dir.path());
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(&path)
        .arg("http://localhost/")
        .output()
        .await
        .expect("curl is installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8(output.stdout).unwrap();
    let expected = format!(
        "unix=true remote=\"\" remote_port=None local={} local_port=None uid=Some({uid}) gid=Some({gid}) pid=Some(",
        path.display()
    );
    assert!(line.starts_with(&expected), "{line}\nexpected: {expected}");
    assert!(line.ends_with(" tls=false"), "{line}");
}

#[tokio::test]
async fn peer_pid_is_this_process_for_an_in_process_client() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut clients) = serve(dir.path()).await;
    let stream = UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = tokio::time::timeout(
        LIMIT,
        sender.send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let line = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        line.contains(&format!("pid=Some({})", std::process::id())),
        "{line}"
    );

    let client = tokio::time::timeout(LIMIT, clients.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(client.is_unix());
    assert_eq!(client.remote_port(), None);
    assert_eq!(client.local_address().unix_path(), Some(path.as_path()));
    assert_eq!(
        client.remote_address().unix_path(),
        None,
        "the client socket is unnamed"
    );
}

#[tokio::test]
async fn a_named_client_socket_is_the_remote_address() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut clients) = serve(dir.path()).await;
    let client_path = dir.path().join("client.sock");
    // std's UnixStream cannot bind before it connects; tokio's UnixSocket can.
    let socket = tokio::net::UnixSocket::new_stream().unwrap();
    socket.bind(&client_path).unwrap();
    let _stream = socket.connect(&path).await.unwrap();
    let client = tokio::time::timeout(LIMIT, clients.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        client.remote_address().unix_path(),
        Some(client_path.as_path())
    );
    assert_eq!(
        client.remote_address().to_string(),
        client_path.display().to_string()
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.sock");
    let (acceptor, connector) = common::tls::self_signed();
    let listener = UnixListener::bind(&path).unwrap();
    let options = Arc::new(Options::default());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let client = acceptor.accept_unix(stream, options.clone()).await.unwrap();
        let drivers = DefaultHttpDriverFactory::new(&options);
        client.start(&drivers, tower::service_fn(describe)).await;
    });

    let stream = UnixStream::connect(&path).await.unwrap();
    let tls = connector
        .connect(common::tls::localhost(), stream)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = tokio::time::timeout(
        LIMIT,
        sender.send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let line = String::from_utf8(body.to_vec()).unwrap();
    assert!(line.starts_with("unix=true "), "{line}");
    assert!(line.ends_with(" tls=true"), "{line}");
}
