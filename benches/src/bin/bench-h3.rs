//! The HTTP/3 servers (`h3-bare`, `h3-crate`) and, in the same build, the TLS servers of
//! `bench-server`; built with the `http3` feature: see `benches/src/server.rs` and
//! `benches/src/quic.rs`.
#[path = "../server.rs"]
mod server;

fn main() {
    server::main();
}
