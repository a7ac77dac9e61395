//! actix-web, built with the `actix` feature: see `benches/src/server.rs`.
#[path = "../server.rs"]
mod server;

fn main() {
    server::main();
}
