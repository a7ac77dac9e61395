//! A binary upgrade without downtime: the first run binds and publishes its listening socket on
//! an upgrade socket; a second run takes it (and the idle keep-alive connections) over, and the
//! first one drains and exits by itself. Under systemd socket activation (`LISTEN_FDS`) it
//! serves the socket it inherits.
//!
//! ```text
//! cargo run --example zero_downtime          # prints: listening on http://127.0.0.1:3000
//! curl -s http://127.0.0.1:3000/             # hello from process 1234
//! cargo run --example zero_downtime          # in another terminal: takes over
//! curl -s http://127.0.0.1:3000/             # hello from process 1240; the first one exited
//! ```
//!
//! Arguments: the address to bind when there is nothing to take over (default
//! 127.0.0.1:3000), and the upgrade socket's path (default /tmp/hyper-remote-client-upgrade.sock).

#[cfg(unix)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    use std::convert::Infallible;

    use http::{Request, Response};
    use hyper_remote_client::{
        upgrade::{listen_fds, Takeover},
        Options, RequestBody, Server,
    };

    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let upgrade = args
        .next()
        .unwrap_or_else(|| "/tmp/hyper-remote-client-upgrade.sock".into());

    let mut server = Server::new(Options::default());
    // A process to replace: its sockets. Else systemd's. Else bind.
    let mut takeover = None;
    let inherited = match Takeover::connect(&upgrade).await {
        Ok(mut old) => {
            let listeners = old.take_listeners();
            takeover = Some(old);
            println!("took over from the process at {upgrade}");
            listeners
        }
        Err(_) => listen_fds()?,
    };
    let mut addresses = Vec::new();
    if inherited.is_empty() {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        addresses.push(listener.local_addr()?.to_string());
        server = server.listener(listener);
    }
    for listener in inherited {
        let listener = hyper_remote_client::Listener::from(listener);
        addresses.push(listener.local_addr()?.to_string());
        server = server.listener(listener);
    }
    for address in &addresses {
        println!("listening on http://{address}");
    }
    // Once its listeners are added: refused if one would be served with other steps than the
    // old process ran on it (the old process then goes on serving).
    if let Some(takeover) = takeover {
        server = server.take_over(takeover).map_err(std::io::Error::other)?;
    }
    let server = server.upgrade_socket(&upgrade)?;
    let handle = server.handle();
    let pid = std::process::id();
    let hello = move |_req: Request<RequestBody>| async move {
        Ok::<_, Infallible>(Response::new(format!("hello from process {pid}\n")))
    };
    server
        .serve_with_shutdown(tower::service_fn(hello), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    if handle.was_replaced() {
        println!("handed over to the new process; exiting");
    }
    Ok(())
}

#[cfg(not(unix))]
fn main() {
    eprintln!("zero_downtime: unix only (SCM_RIGHTS)");
}
