//! The crate's own `Server` serving a tower `service_fn` that greets each connection by its
//! `ClientInfo` (for an existing hyper accept loop instead, see `hello_hyper`).
//!
//! ```text
//! cargo run --example hello_server         # prints: listening on http://127.0.0.1:3000
//! curl -s http://127.0.0.1:3000/
//! ```

use std::convert::Infallible;

use http::{Request, Response};
use hyper_remote_client::{ClientInfo, Options, RequestBody, Server};

async fn hello(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        return Ok(Response::new("no client info\n".to_owned()));
    };
    Ok(Response::new(format!(
        "hello, client {} at {} ({:?}, {} response(s) pending)\n",
        client.id(),
        client.remote_address(),
        req.version(),
        client.pending_responses(),
    )))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    Server::new(Options::default())
        .listener(listener)
        .serve_with_shutdown(tower::service_fn(hello), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
