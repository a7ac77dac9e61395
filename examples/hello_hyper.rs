//! An existing plain hyper application (hyper-util's `auto` builder: HTTP/1.1 and h2c, hyper's
//! `service_fn`, a `Request<Incoming>` handler) gaining a `ClientInfo` per connection. The five
//! lines marked `// +` (an import and four lines of the accept loop; `was:` gives a changed
//! line's original) are all the plumbing it takes, with no dependency beyond this crate (no
//! tower, no `Server`); the handler then finds the client in its request's extensions. For the
//! crate's own server (limits, registry, graceful shutdown), see `hello_server`.
//!
//! ```text
//! cargo run --example hello_hyper          # prints: listening on http://127.0.0.1:3000
//! curl -s http://127.0.0.1:3000/
//! curl -s --http2-prior-knowledge http://127.0.0.1:3000/
//! ```

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_remote_client::{ClientInfo, ClientIo, ClientService}; // +
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The handler keeps its `Request<Incoming>`; the client is in the request's extensions.
async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        return Ok(Response::new("no client info\n".to_owned()));
    };
    Ok(Response::new(format!(
        "hello, client {} at {} ({:?})\n",
        client.id(),
        client.remote_address(),
        req.version(),
    )))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let io = ClientIo::tcp(stream); // + (was: let io = TokioIo::new(stream);)
        let service = ClientService::new(service_fn(hello), io.client().clone()); // +
        let io = TokioIo::new(io); // +
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(io, service).await; // + (was: service_fn(hello))
        });
    }
}
