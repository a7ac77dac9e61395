//! Graceful shutdown: on Ctrl-C (or after AFTER_MS milliseconds, if given), stop accepting, let
//! the responses in flight finish, close idle connections at once, and force-close the rest
//! after the deadline.
//!
//! Two optional positional arguments: `graceful_shutdown [ADDR [AFTER_MS]]`, the address to
//! listen on (default `127.0.0.1:3001`) and the milliseconds after which to shut down on its
//! own (default: wait for Ctrl-C; a value that is not a whole number is ignored).
//!
//! ```text
//! cargo run --example graceful_shutdown              # prints: listening on http://127.0.0.1:3001
//! curl -s 'http://127.0.0.1:3001/?ms=2000' &          # a slow response
//! # press Ctrl-C: the slow response is still delivered, then the server exits
//! cargo run --example graceful_shutdown -- 127.0.0.1:0 3000   # any port; shuts down after 3 s
//! ```

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper_remote_client::{Options, RequestBody, Server};

async fn slow(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let ms: u64 = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    Ok(Response::new(format!("done after {ms} ms\n")))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3001".into());
    // Optional: shut down on its own after this many milliseconds (used by the smoke test).
    let after: Option<u64> = args.next().and_then(|a| a.parse().ok());

    let mut options = Options::default();
    options = options.with_shutdown_timeout(Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let server = Server::new(options).listener(listener);
    let handle = server.handle();
    server
        .serve_with_shutdown(tower::service_fn(slow), async move {
            match after {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            println!("shutting down: {} client(s) open", handle.clients().len());
        })
        .await;
    println!("all clients closed");
    Ok(())
}
