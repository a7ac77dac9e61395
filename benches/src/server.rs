//! The servers that `benches/run.sh` compares. Each answers every request with the same fixed
//! body, `hello world`, and runs on one thread (see "Runtime" below).
//!
//! ```text
//! bench-server MODE PORT
//! MODE: bare | crate | crate-spawn | bare-tls | crate-tls | axum      (bench-server)
//! bench-actix actix PORT
//! bench-h3 h3-bare|h3-crate|bare-tls|crate-tls PORT                  (bench-h3)
//! ```
//!
//! The HTTP/3 servers (`h3-bare`, `h3-crate`, on UDP) are in `quic.rs`, built only into
//! `bench-h3` (the `http3` feature, which turns on the crate's `http3`); `bench-h3` also serves
//! the TCP modes, so that HTTP/3 and HTTP/2 over TLS can be compared within one build.
//!
//! actix-web is built only into `bench-actix` (the same file, with the `actix` feature):
//! actix-web turns on `tracing`'s `log` feature, which would tax every server of the binary
//! (each `tracing` span h2 enters then calls into `log`).
//!
//! - `bare`: hyper-util's `auto::Builder` + `service_fn` (`serve_connection_with_upgrades`) in a
//!   plain accept loop, `TCP_NODELAY` set.
//! - `crate`: the same response behind hyper-remote-client's `Server` with `Options::default()`
//!   (layer, counters, registry, limits, timeouts: everything on). The handler reads the
//!   connection's `ClientInfo` (remote address), as a user of the crate would.
//! - `crate-spawn`: `crate` with `Options::http2_inline_streams` off: every HTTP/2 stream is a
//!   task of its own, as under bare hyper-util's `TokioExecutor` (the crate's own cost per
//!   request, without what answering streams on the connection's task saves).
//! - `bare-tls`, `crate-tls`: the same two over TLS (tokio-rustls, ring provider, TLS 1.3 and
//!   1.2, ALPN `h2` + `http/1.1`, a self-signed certificate for `localhost`/`127.0.0.1` made with
//!   rcgen at start). Both use the identical `rustls::ServerConfig`.
//! - `axum`: axum 0.8, a `Router` with one route whose handler takes `ConnectInfo<SocketAddr>`,
//!   served by `axum::serve` with `into_make_service_with_connect_info` (`TCP_NODELAY` set
//!   through `tap_io`).
//! - `actix`: actix-web 4, one route whose handler reads `HttpRequest::peer_addr()`,
//!   `bind_auto_h2c` (HTTP/1.1 and h2c prior knowledge), 1 worker.
//!
//! Runtime: every tokio server runs on a `current_thread` runtime (one thread serves
//! everything). actix-web's single worker is likewise one `current_thread` runtime; actix adds
//! its accept thread and system thread, which run.sh pins to the same core.
//!
//! Prints `listening on 127.0.0.1:PORT` once bound, then serves until killed.
//!
//! Two environment variables for one-off checks (run.sh sets neither):
//! `BENCH_TLS_NO_RESUMPTION=1` turns TLS session resumption off (no session cache, no tickets)
//! in the TLS modes; `BENCH_PIPELINE_FLUSH=1` turns hyper's `http1 pipeline_flush` on in the
//! `bare` modes.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const HELLO: &[u8] = b"hello world";

/// The global allocator, counting when `BENCH_COUNT_ALLOC=1`: allocations and bytes allocated
/// (totals) and bytes live. `kill -USR1` prints them as `alloc allocs=N bytes=N live=N`.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

    pub static ON: AtomicBool = AtomicBool::new(false);
    pub static ALLOCS: AtomicU64 = AtomicU64::new(0);
    pub static BYTES: AtomicU64 = AtomicU64::new(0);
    pub static LIVE: AtomicI64 = AtomicI64::new(0);

    pub struct Counting;

    // SAFETY: every call is forwarded to the system allocator unchanged; the counters are
    // plain atomics and never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if ON.load(Relaxed) {
                ALLOCS.fetch_add(1, Relaxed);
                BYTES.fetch_add(layout.size() as u64, Relaxed);
                LIVE.fetch_add(layout.size() as i64, Relaxed);
            }
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if ON.load(Relaxed) {
                LIVE.fetch_sub(layout.size() as i64, Relaxed);
            }
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if ON.load(Relaxed) {
                ALLOCS.fetch_add(1, Relaxed);
                BYTES.fetch_add(new_size as u64, Relaxed);
                LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
            }
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Turns counting on if asked, and prints the counters at every SIGUSR1 (from a thread of
    /// its own, so it works beside actix's runtime too).
    pub fn start() {
        if std::env::var_os("BENCH_COUNT_ALLOC").is_none() {
            return;
        }
        ON.store(true, Relaxed);
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1");
                while usr1.recv().await.is_some() {
                    println!(
                        "alloc allocs={} bytes={} live={}",
                        ALLOCS.load(Relaxed),
                        BYTES.load(Relaxed),
                        LIVE.load(Relaxed)
                    );
                }
            });
        });
    }
}

#[cfg(feature = "http3")]
#[path = "quic.rs"]
mod quic;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

pub fn main() {
    counting::start();
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: bench-server bare|crate|crate-spawn|bare-tls|crate-tls|axum|actix|h3-bare|h3-crate PORT";
    let mode = args.next().expect(usage);
    let port: u16 = args.next().expect(usage).parse().expect(usage);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    if mode == "actix" {
        #[cfg(feature = "actix")]
        actix_web::rt::System::new()
            .block_on(actix(addr))
            .expect("actix server");
        #[cfg(not(feature = "actix"))]
        eprintln!(
            "actix is in bench-actix: cargo build --release --features actix --bin bench-actix"
        );
        return;
    }

    // BENCH_RUNTIME=multi: the multi-thread runtime `#[tokio::main]` builds (as many workers as
    // the CPUs this process may run on: one under `taskset -c 0`).
    let runtime = match std::env::var("BENCH_RUNTIME").as_deref() {
        Ok("multi") => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    // BENCH_NO_RECORDER=1: the `metrics` feature on, but no exporter installed (the crate's own
    // share of the cost: its handles are no-ops then).
    #[cfg(feature = "metrics")]
    if std::env::var_os("BENCH_NO_RECORDER").is_none() {
        // As the inspector: a Prometheus recorder with the duration buckets (never scraped
        // during a run; rendering is the scraper's cost, not the server's per request).
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets(hyper_remote_client::telemetry::DURATION_BUCKETS)
            .and_then(metrics_exporter_prometheus::PrometheusBuilder::install_recorder)
            .expect("Prometheus recorder");
        hyper_remote_client::telemetry::describe();
        // The exporter's upkeep (what `PrometheusBuilder::install` runs every 5 s): without
        // it, histogram samples pile up until a scrape.
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        });
        eprintln!("metrics: Prometheus recorder installed");
    }
    #[cfg(feature = "http3")]
    if let Some(kind) = mode.strip_prefix("h3-") {
        runtime.block_on(quic::serve(kind, addr));
        return;
    }
    runtime.block_on(async move {
        let listener = if std::env::var_os("BENCH_REUSEPORT").is_some() {
            reuseport_listener(addr)
        } else {
            TcpListener::bind(addr).await
        }
        .expect("bind");
        println!("listening on {addr} ({mode})");
        match mode.as_str() {
            "bare" => bare(listener, None).await,
            "bare-tls" => {
                bare(
                    listener,
                    Some(tokio_rustls::TlsAcceptor::from(tls_config())),
                )
                .await
            }
            "crate" => crate_server(listener, false, true).await,
            "crate-tls" => crate_server(listener, true, true).await,
            "crate-spawn" => crate_server(listener, false, false).await,
            "axum" => axum(listener).await,
            other => panic!("unknown mode {other:?}; {usage}"),
        }
    });
}

/// A self-signed certificate for localhost and 127.0.0.1, and the server configuration both TLS
/// servers use: ring, TLS 1.3 and 1.2, ALPN h2 then http/1.1 (what `hyper_remote_client::
/// server_config(.., ClientAuth::None)` builds).
fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if std::env::var_os("BENCH_TLS_NO_RESUMPTION").is_some() {
        // Every handshake a full one, whatever the client does (a check for run.sh's
        // handshake workload: h2load does not resume sessions, so this changes nothing there).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Arc::new(config)
}

/// Bare hyper-util: a plain accept loop, one task per connection.
async fn bare(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if std::env::var_os("BENCH_PIPELINE_FLUSH").is_some() {
        // A check, not a mode run.sh uses: hyper's experimental flush aggregation for pipelined
        // HTTP/1 responses (off by default).
        builder.http1().pipeline_flush(true);
    }
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // EMFILE and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // What bare hyper knows of its client: the address, read once per request as the
        // crate's handler reads its `ClientInfo`.
        let remote = stream.peer_addr().ok();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                black_box(remote);
                Spin::new(req.uri().path(), || {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(HELLO))))
                })
            });
            match tls {
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// The crate's handler: reads the connection's `ClientInfo` (its remote address), then answers.
/// The same shape as bare's: the request is read and dropped before the future is made, so
/// neither future carries it.
fn crate_handler(
    req: Request<hyper_remote_client::RequestBody>,
) -> impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> {
    let client = req.extensions().get::<hyper_remote_client::ClientInfo>();
    black_box(client.map(|client| client.remote_address()));
    Spin::new(req.uri().path(), || {
        Ok(Response::new(Full::new(Bytes::from_static(HELLO))))
    })
}

/// The handlers' future: ready at its first poll (as `std::future::ready`), after 100 µs of
/// synchronous work there for `/spin` (the one-connection synchronous workload of issue 24: a
/// gRPC client or a proxy multiplexing onto few connections; the work is in the future, as an
/// `async fn` handler's is, so each server runs it where it polls its streams).
struct Spin<F> {
    spin: bool,
    answer: Option<F>,
}

impl<F> Spin<F> {
    fn new(path: &str, answer: F) -> Self {
        Spin {
            spin: path == "/spin",
            answer: Some(answer),
        }
    }
}

impl<F> Unpin for Spin<F> {}

impl<F: FnOnce() -> T, T> std::future::Future for Spin<F> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        if self.spin {
            let until = std::time::Instant::now() + std::time::Duration::from_micros(100);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        let answer = self.answer.take().expect("polled after completion");
        std::task::Poll::Ready(answer())
    }
}

/// hyper-remote-client's `Server` with default options.
async fn crate_server(listener: TcpListener, tls: bool, inline_streams: bool) {
    use hyper_remote_client::{tls::TlsAcceptor, Listener, Options, Server};
    let listener = Listener::tcp(listener);
    let listener = if tls {
        listener.with_tls(TlsAcceptor::new(tls_config()))
    } else {
        listener
    };
    let mut options = Options::default();
    if !inline_streams {
        options = options.with_http2_inline_streams(false);
    }
    // BENCH_IDLE_TIMEOUT_SECS: the HTTP/1 and HTTP/2 idle timeouts (the idle-CPU measurement
    // holds connections longer than the default 15 s).
    if let Some(secs) = std::env::var("BENCH_IDLE_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options = options.with_http1_timeout(Some(Duration::from_secs(secs)));
        options = options.with_http2_timeout(Some(Duration::from_secs(secs)));
    }
    // BENCH_CONNECTION_LIMIT: past the default 10 000, for the many-connections run.
    if let Some(limit) = std::env::var("BENCH_CONNECTION_LIMIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        options = options.with_connection_limit(limit);
    }
    let server = Server::new(options).listener(listener);
    let handle = server.handle();
    if std::env::var_os("BENCH_REPORT").is_some() {
        tokio::spawn(report(handle.clone()));
    }
    server.serve(tower::service_fn(crate_handler)).await;
    if std::env::var_os("BENCH_REPORT").is_some() {
        println!("drained");
    }
}

/// BENCH_REPORT=1 (the many-connections run): SIGUSR2 prints how many clients the registry
/// lists and how long listing took (`clients=N list_us=T`); SIGTERM starts a graceful
/// shutdown whose drain the caller times (the server prints `drained` when it is over).
async fn report(handle: hyper_remote_client::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr2 = signal(SignalKind::user_defined2()).expect("SIGUSR2");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM");
    loop {
        tokio::select! {
            _ = usr2.recv() => {
                let started = std::time::Instant::now();
                let clients = handle.clients();
                let took = started.elapsed();
                println!("clients={} list_us={}", clients.len(), took.as_micros());
            }
            _ = term.recv() => {
                handle.graceful_shutdown(Some(Duration::from_secs(10)));
                return;
            }
        }
    }
}

/// A listener several processes share (`SO_REUSEPORT`: the kernel spreads connections over
/// them), as `Server` takes any bound tokio listener.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// axum 0.8 with `ConnectInfo<SocketAddr>`.
async fn axum(listener: TcpListener) {
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::serve::ListenerExt;

    async fn hello(ConnectInfo(addr): ConnectInfo<SocketAddr>) -> Response<axum::body::Body> {
        black_box(addr);
        Response::new(axum::body::Body::from(Bytes::from_static(HELLO)))
    }

    let app = axum::Router::new().route("/", get(hello));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("axum::serve");
}

/// actix-web 4 with `HttpRequest::peer_addr()`, one worker, HTTP/1.1 + h2c.
#[cfg(feature = "actix")]
async fn actix(addr: SocketAddr) -> std::io::Result<()> {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

    async fn hello(req: HttpRequest) -> HttpResponse {
        black_box(req.peer_addr());
        HttpResponse::Ok().body(Bytes::from_static(HELLO))
    }

    let server = HttpServer::new(|| App::new().route("/", web::get().to(hello)))
        .workers(1)
        // actix closes idle keep-alive connections after 5 s by default; the idle-memory
        // measurement holds connections for a few seconds, so give it the crate's 15 s.
        .keep_alive(Duration::from_secs(15))
        .bind_auto_h2c(addr)?
        .run();
    println!("listening on {addr} (actix)");
    server.await
}
