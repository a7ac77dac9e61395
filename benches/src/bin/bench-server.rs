//! bare, crate, axum (and their TLS variants): see `benches/src/server.rs`.
#[path = "../server.rs"]
mod server;

fn main() {
    server::main();
}
