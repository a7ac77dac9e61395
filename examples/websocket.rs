//! A WebSocket echo server on a detached connection: the handler answers the WebSocket
//! handshake with `101`, takes the connection over with `detach`, and hands it to
//! tokio-tungstenite. The client's `ClientInfo` stays live until the socket closes.
//!
//! ```text
//! cargo run --example websocket            # prints: listening on ws://127.0.0.1:8081
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_remote_client::{
    detach, driver::DefaultHttpDriverFactory, ClientInfo, Options, RemoteClient, RequestBody,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

async fn websocket(mut req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let mut response = Response::new("expected a WebSocket handshake\n".to_owned());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(response);
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_detach = detach(&mut req);
    tokio::spawn(async move {
        let Ok(conn) = on_detach.await else { return };
        let client: ClientInfo = conn.client().clone();
        let mut ws = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
        // Echo until the client closes; the first message is told who it is talking to.
        let mut first = true;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if message.is_text() || message.is_binary() {
                if first {
                    first = false;
                    let hello = format!("client {} exported={}", client.id(), client.is_exported());
                    if ws.send(hello.into()).await.is_err() {
                        break;
                    }
                }
                if ws.send(message).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(([127, 0, 0, 1], 8081).into());
    let options = Arc::new(Options::default());
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
    let listener = TcpListener::bind(addr).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(client) = RemoteClient::tcp(stream, options.clone()) else {
            continue;
        };
        client
            .client()
            .on_close(|client| println!("client {} closed", client.id()));
        let drivers = drivers.clone();
        tokio::spawn(async move {
            client.start(&*drivers, tower::service_fn(websocket)).await;
        });
    }
}
