//! An axum `Router` served by hyper-remote-client: handlers extract `ClientInfo` (feature
//! `axum`), and the router goes to `Server::serve` as it is.
//!
//! ```text
//! cargo run --example axum --features axum     # prints: listening on http://127.0.0.1:8082
//! curl -s http://127.0.0.1:8082/
//! ```

use axum::routing::get;
use axum::{Json, Router};
use hyper_remote_client::{ClientInfo, Options, Server};
use serde_json::{json, Value};

async fn whoami(client: ClientInfo) -> Json<Value> {
    Json(json!({
        "id": client.id().get(),
        "remote_address": client.remote_address().to_string(),
        "is_encrypted": client.is_encrypted(),
        "pending_responses": client.pending_responses(),
    }))
}

async fn close(client: ClientInfo) -> &'static str {
    client.close(); // the connection ends here; this answer is never written
    "closed"
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(whoami))
        .route("/close", get(close));
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let server = Server::new(Options::default()).listener(listener);
    server
        .serve_with_shutdown(app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
