//! An admin API next to the application: list the live clients, read the counters, close a
//! client by id. The registry is the server's; the handlers reach it through a `ServerHandle`.
//!
//! ```text
//! cargo run --example admin                            # prints: listening on http://127.0.0.1:3002
//! curl -s http://127.0.0.1:3002/admin/clients
//! curl -s http://127.0.0.1:3002/admin/stats
//! curl -s -X POST http://127.0.0.1:3002/admin/close/1
//! ```

use std::convert::Infallible;
use std::fmt::Write;

use http::{Method, Request, Response, StatusCode};
use hyper_remote_client::{ClientId, Options, RequestBody, Server, ServerHandle};

async fn admin(
    req: Request<RequestBody>,
    server: ServerHandle,
) -> Result<Response<String>, Infallible> {
    let path = req.uri().path();
    let body = match (req.method(), path) {
        (&Method::GET, "/admin/clients") => {
            let mut out = String::new();
            for client in server.clients() {
                let _ = writeln!(
                    out,
                    "{} {} pending_responses={} exported={}",
                    client.id(),
                    client.remote_address(),
                    client.pending_responses(),
                    client.is_exported()
                );
            }
            out
        }
        (&Method::GET, "/admin/stats") => format!("{:#?}\n", server.stats()),
        (&Method::POST, _) if path.starts_with("/admin/close/") => {
            let id = path["/admin/close/".len()..].parse::<u64>().ok();
            match id.map(|id| server.close(ClientId::from(id))) {
                Some(true) => "closed\n".to_owned(),
                _ => {
                    let mut response = Response::new("no such client\n".to_owned());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    return Ok(response);
                }
            }
        }
        _ => "try /admin/clients, /admin/stats, POST /admin/close/ID\n".to_owned(),
    };
    Ok(Response::new(body))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3002".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    let service = tower::service_fn(move |req| admin(req, handle.clone()));
    server
        .serve_with_shutdown(service, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
