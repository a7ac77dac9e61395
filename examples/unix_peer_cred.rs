//! A unix socket server that answers with the peer process's credentials.
//!
//! ```text
//! cargo run --example unix_peer_cred -- /tmp/app.sock   # prints: listening on unix:/tmp/app.sock
//! curl -s --unix-socket /tmp/app.sock http://localhost/
//! ```

use std::convert::Infallible;

use http::{Request, Response};
use hyper_remote_client::{ClientInfo, Options, RequestBody, Server};

async fn whoami(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let answer = match req
        .extensions()
        .get::<ClientInfo>()
        .and_then(ClientInfo::peer_credentials)
    {
        Some(cred) => format!("pid={:?} uid={} gid={}\n", cred.pid, cred.uid, cred.gid),
        None => "no peer credentials\n".to_owned(),
    };
    Ok(Response::new(answer))
}

#[cfg(unix)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/hyper-remote-client.sock".into());
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    println!("listening on unix:{path}");
    Server::new(Options::default())
        .listener(listener)
        .serve_with_shutdown(tower::service_fn(whoami), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[cfg(not(unix))]
fn main() {
    eprintln!("unix sockets only");
}
