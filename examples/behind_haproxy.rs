//! Behind HAProxy (or nginx, AWS NLB, Envoy) with the PROXY protocol: the handler sees the
//! original client's address; the load balancer's own address is in `ClientInfo::proxy()`.
//!
//! ```text
//! cargo run --example behind_haproxy      # prints: listening on http://127.0.0.1:3003
//! curl -s --haproxy-protocol http://127.0.0.1:3003/   # curl can speak PROXY v1 itself
//! ```
//!
//! An HAProxy backend line for it: `server app 127.0.0.1:3003 send-proxy-v2`.

use std::convert::Infallible;

use http::{Request, Response};
use hyper_remote_client::{
    proxy::ProxyProtocol, ClientInfo, Listener, Options, RequestBody, Server,
};

async fn whoami(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let Some(client) = req.extensions().get::<ClientInfo>() else {
        return Ok(Response::new("no client info\n".to_owned()));
    };
    let via = match client.proxy() {
        Some(proxy) => format!("via {} (PROXY v{})", proxy.peer_address(), proxy.version()),
        None => "directly".to_owned(),
    };
    Ok(Response::new(format!(
        "you are {} {via}\n",
        client.remote_address()
    )))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3003".into());
    // Only load balancers on these networks may speak for their clients.
    let proxy = ProxyProtocol::optional(["127.0.0.0/8".parse()?, "10.0.0.0/8".parse()?]);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    Server::new(Options::default())
        .listener(Listener::tcp(listener).with_proxy_protocol(proxy))
        .serve_with_shutdown(tower::service_fn(whoami), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
