//! Issue 23, item 4: a certificate reload whose file never answers (a FIFO at the path, as a
//! hung NFS or FUSE mount would be) does not freeze the server. Library level:
//! `TlsAcceptor::reload_from_pem_files` times out, keeps the configuration in use, refuses
//! another reload while the read is stuck, and keeps no runtime from shutting down. End to
//! end: the inspector (`examples/serve.rs`, a child process) keeps serving HTTP and HTTPS
//! through a SIGHUP that meets a FIFO, says the reload failed, exits when told, and reloads
//! valid files on the next SIGHUP.
//!
//! The inspector is found next to the test binary (`target/<profile>/examples/serve`); `cargo
//! test --test reload_fifo` does not rebuild it: `cargo build --all-features --example serve`
//! first.
#![cfg(all(unix, feature = "tls", feature = "proxy-protocol", feature = "metrics"))]

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::inspector::{example_path, send_signal, Process};
use common::LIMIT;
use hyper_remote_client::tls::rustls::pki_types::{CertificateDer, ServerName};
use hyper_remote_client::tls::rustls::{self, RootCertStore};
use hyper_remote_client::tls::{server_config_from_pem, ClientAuth, TlsAcceptor, TlsError};

// ---------------------------------------------------------------------------------------------
// A FIFO at a certificate's path
// ---------------------------------------------------------------------------------------------

/// A FIFO made with `mkfifo`: opening it for reading blocks until somebody opens it for
/// writing. Dropped, it lets a reader stuck in `open` go (if there is one) and is removed.
struct Fifo(PathBuf);

impl Fifo {
    /// Replaces whatever is at `path` with a FIFO.
    fn replace(path: &Path) -> Fifo {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => panic!("remove {}: {error}", path.display()),
        }
        let status = Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap_or_else(|error| panic!("mkfifo (coreutils) could not be run: {error}"));
        assert!(status.success(), "mkfifo {}: {status}", path.display());
        Fifo(path.to_owned())
    }

    /// Opens the FIFO for writing without blocking and closes it at once: a reader stuck in
    /// `open` returns, and reads end of file. `Err(NXIO)`: there was no reader.
    fn try_open_for_writing(&self) -> rustix::io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        rustix::fs::open(&self.0, flags, Mode::empty()).map(drop)
    }

    /// [`try_open_for_writing`](Self::try_open_for_writing): whether a reader was there.
    fn open_for_writing(&self) -> bool {
        match self.try_open_for_writing() {
            Ok(()) => true,
            Err(rustix::io::Errno::NXIO) => false,
            Err(error) => panic!("open {} for writing: {error}", self.0.display()),
        }
    }

    /// Lets the reader stuck in opening the FIFO go; fails if none comes within [`LIMIT`].
    fn release_reader(&self) {
        let deadline = Instant::now() + LIMIT;
        while !self.open_for_writing() {
            assert!(
                Instant::now() < deadline,
                "nobody was reading {} within {LIMIT:?}",
                self.0.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        // A reader still stuck (the test failed before letting it go) is let go.
        let _ = self.try_open_for_writing();
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A CA, and certificates for localhost and 127.0.0.1 it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate of [`Ca`]: its DER, and the certificate and key as PEM.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    /// Writes the certificate to `cert` and the key to `key`.
    fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reload_fifo test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls client trusting this CA only.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Library level: TlsAcceptor::reload_from_pem_files
// ---------------------------------------------------------------------------------------------

/// Retries `reload` while it is refused because the stuck read released a moment ago has not
/// given the acceptor back yet; bounded by [`LIMIT`].
async fn reload_once_free(acceptor: &TlsAcceptor, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let result = acceptor
            .reload_from_pem_files(cert, key, ClientAuth::None, LIMIT)
            .await;
        match result {
            Err(TlsError::ReloadInProgress { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn a_fifo_times_the_reload_out_and_the_configuration_in_use_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let (one, two) = (ca.leaf("one"), ca.leaf("two"));
    one.write(&cert, &key);
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_from_pem(&cert, &key, ClientAuth::None).unwrap(),
    ));
    let in_use = acceptor.config();

    let fifo = Fifo::replace(&cert);
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let error = tokio::time::timeout(
        LIMIT,
        acceptor.reload_from_pem_files(&cert, &key, ClientAuth::None, timeout),
    )
    .await
    .expect("the reload is bounded by its timeout")
    .unwrap_err();
    let took = started.elapsed();
    assert!(took >= timeout, "{took:?}");
    match &error {
        TlsError::ReloadTimedOut {
            paths,
            timeout: was,
        } => {
            assert_eq!(paths, &[cert.clone(), key.clone()]);
            assert_eq!(*was, timeout);
        }
        other => panic!("{other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&*cert.to_string_lossy()), "{message}");
    assert!(message.contains("not read within"), "{message}");
    assert!(Arc::ptr_eq(&acceptor.config(), &in_use), "nothing changed");

    // The read is still stuck in `open`: another reload (through a clone, even) is refused at
    // once, and names the files of the stuck one.
    let clone = acceptor.clone();
    let other = dir.path().join("other.pem");
    let started = Instant::now();
    let error = clone
        .reload_from_pem_files(&other, &key, ClientAuth::None, LIMIT)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    match &error {
        TlsError::ReloadInProgress { paths } => assert_eq!(paths, &[cert.clone(), key.clone()]),
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("still reading"), "{error}");

    // Let the stuck read go: it reads end of file, which is thrown away (the configuration in
    // use stays), and the acceptor can be reloaded again.
    fifo.release_reader();
    drop(fifo);
    two.write(&cert, &key);
    reload_once_free(&acceptor, &cert, &key).await.unwrap();
    assert!(!Arc::ptr_eq(&acceptor.config(), &in_use), "reloaded");
}

#[tokio::test]
async fn a_reload_read_in_time_from_a_fifo_is_used() {
    // The read is off the runtime, not skipped: a FIFO that is written to in time is read.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let (one, two) = (ca.leaf("one"), ca.leaf("two"));
    one.write(&cert, &key);
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_from_pem(&cert, &key, ClientAuth::None).unwrap(),
    ));
    let in_use = acceptor.config();
    std::fs::write(&key, &two.key_pem).unwrap();
    let fifo = Fifo::replace(&cert);
    let path = fifo.0.clone();
    let pem = two.cert_pem.clone();
    // Opening the FIFO for writing blocks until the reload opens it for reading.
    let writer = std::thread::spawn(move || std::fs::write(path, pem));
    let reload = acceptor.reload_from_pem_files(&cert, &key, ClientAuth::None, LIMIT);
    tokio::time::timeout(LIMIT * 2, reload)
        .await
        .expect("bounded")
        .unwrap();
    writer.join().unwrap().unwrap();
    assert!(!Arc::ptr_eq(&acceptor.config(), &in_use), "reloaded");
}

#[test]
fn a_stuck_reload_keeps_no_runtime_from_shutting_down() {
    // Dropping a tokio runtime waits for every task of its blocking pool: a read stuck there
    // would keep a server from ever exiting. The reload's thread is its own.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    Ca::new().leaf("one").write(&cert, &key);
    let acceptor = TlsAcceptor::new(Arc::new(
        server_config_from_pem(&cert, &key, ClientAuth::None).unwrap(),
    ));
    let fifo = Fifo::replace(&cert);
    let (done, dropped) = mpsc::channel();
    let (cert_for_runtime, key_for_runtime) = (cert.clone(), key.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(acceptor.reload_from_pem_files(
            &cert_for_runtime,
            &key_for_runtime,
            ClientAuth::None,
            Duration::from_millis(200),
        ));
        let timed_out = matches!(result, Err(TlsError::ReloadTimedOut { .. }));
        drop(runtime);
        let _ = done.send(timed_out);
    });
    let timed_out = dropped
        .recv_timeout(LIMIT)
        .expect("the runtime was dropped while the reload's read is stuck");
    assert!(timed_out, "the reload timed out");
    fifo.release_reader();
}

// ---------------------------------------------------------------------------------------------
// End to end: the inspector
// ---------------------------------------------------------------------------------------------

/// A started inspector (stopped with SIGTERM when dropped) and its addresses.
struct Inspector {
    process: Process,
    http: SocketAddr,
    https: SocketAddr,
}

/// Starts the inspector on ports the OS picks with `--cert cert --key key`, and waits for its
/// `listening on` lines.
fn start(cert: &Path, key: &Path) -> Inspector {
    start_with(cert, key, &[])
}

/// [`start`], with `extra` arguments.
fn start_with(cert: &Path, key: &Path, extra: &[&Path]) -> Inspector {
    let mut cmd = Command::new(example_path());
    cmd.args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    let mut process = Process::spawn(cmd);
    let mut http = None;
    let https = loop {
        let Some(line) = process.next_line() else {
            let exited = process.wait(LIMIT);
            panic!("the inspector exited at start: {exited:#?}");
        };
        if let Some(addr) = line.strip_prefix("listening on http://") {
            http.get_or_insert(addr.trim().parse().expect("an address"));
        } else if let Some(addr) = line.strip_prefix("listening on https://") {
            break addr.trim().parse().expect("an address");
        } else {
            panic!("unexpected line before `listening on https://`: {line:?}");
        }
    };
    Inspector {
        process,
        http: http.expect("a `listening on http://` line"),
        https,
    }
}

/// How long one request may take, connection and TLS handshake included.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A TCP connection to `addr`, its reads and writes bounded by [`ANSWER_WITHIN`].
fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect_timeout(&addr, ANSWER_WITHIN)
        .map_err(|error| format!("connect to {addr}: {error}"))?;
    for set in [TcpStream::set_read_timeout, TcpStream::set_write_timeout] {
        set(&tcp, Some(ANSWER_WITHIN)).map_err(|error| format!("socket timeout: {error}"))?;
    }
    Ok(tcp)
}

/// `what` failed with `error`; a read or write timeout said as such.
fn failed(what: &str, error: std::io::Error) -> String {
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("{what}: no progress within {ANSWER_WITHIN:?}")
        }
        _ => format!("{what}: {error}"),
    }
}

/// `GET /` with `Connection: close` on `stream`: 200 and the inspector's JSON, read up to
/// its `Content-Length`.
fn get_root(stream: impl Read + Write) -> Result<(), String> {
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .and_then(|()| reader.get_mut().flush())
        .map_err(|error| failed("write the request", error))?;
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|error| failed("read the status line", error))?;
    if !status.starts_with("HTTP/1.1 200 ") {
        return Err(format!("status line {status:?}"));
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|error| failed("read the head", error))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.ok_or("no Content-Length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|error| failed("read the body", error))?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| format!("not JSON ({error}): {:?}", String::from_utf8_lossy(&body)))?;
    if !json["id"].is_u64() {
        return Err(format!("no id in {json}"));
    }
    Ok(())
}

/// `GET /` over plain HTTP/1.1, on a new connection.
fn http_get(addr: SocketAddr) -> Result<(), String> {
    get_root(connect(addr)?)
}

/// `GET /` over HTTPS, on a new connection (a new handshake); the server's certificate.
fn https_get(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let tls = rustls::ClientConnection::new(client.clone(), name)
        .map_err(|error| format!("TLS client: {error}"))?;
    let mut stream = rustls::StreamOwned::new(tls, connect(addr)?);
    get_root(&mut stream)?;
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned())
        .ok_or_else(|| "no server certificate".to_owned())
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
struct LoadReport {
    http_served: usize,
    https_served: usize,
    /// Requests that failed or took longer than [`ANSWER_WITHIN`], and why.
    failures: Vec<String>,
    slowest: Duration,
}

/// Plain HTTP and HTTPS requests one after another, each on a new connection, from a thread,
/// until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    report: Arc<Mutex<LoadReport>>,
}

impl Load {
    fn start(inspector: &Inspector, client: Arc<rustls::ClientConfig>) -> Load {
        let (http, https) = (inspector.http, inspector.https);
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let mut over_tls = false;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = if over_tls {
                        https_get(https, &client).map(drop)
                    } else {
                        http_get(http)
                    };
                    let took = started.elapsed();
                    let what = if over_tls { "HTTPS" } else { "HTTP" };
                    let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                    report.slowest = report.slowest.max(took);
                    match result {
                        Ok(()) if took <= ANSWER_WITHIN => {
                            if over_tls {
                                report.https_served += 1;
                            } else {
                                report.http_served += 1;
                            }
                        }
                        Ok(()) => report
                            .failures
                            .push(format!("{what}: answered in {took:?}")),
                        Err(error) => report
                            .failures
                            .push(format!("{what}: {error} (after {took:?})")),
                    }
                    drop(report);
                    over_tls = !over_tls;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Load {
            stop,
            thread,
            report,
        }
    }

    /// The failures so far, if any (the load goes on).
    fn failures(&self) -> Vec<String> {
        let report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        report.failures.clone()
    }

    fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        // Each request is bounded (connect, read and write timeouts): so is the join.
        self.thread.join().expect("the load thread");
        std::mem::take(&mut *self.report.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Waits (up to 2 s) until process `pid` has a thread named `tls-reload`, the one
/// `TlsAcceptor::reload_from_pem_files` reads on: after a SIGHUP, it is the one stuck in
/// opening the FIFO. Whether it was seen; where threads cannot be seen (no `/proc`), after
/// half a second, `false`.
fn wait_for_reload_thread(pid: u32) -> bool {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    if !tasks.is_dir() {
        std::thread::sleep(Duration::from_millis(500));
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let named = std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.trim_end() == "tls-reload")
            });
        if named {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The reload timeout the inspector uses.
const RELOAD_TIMEOUT: Duration = TlsAcceptor::RELOAD_TIMEOUT;

#[test]
fn a_sighup_meeting_a_fifo_leaves_the_inspector_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let (one, two) = (ca.leaf("certificate one"), ca.leaf("certificate two"));
    one.write(&cert, &key);
    let inspector = start(&cert, &key);
    let client = ca.client();
    http_get(inspector.http).expect("HTTP before the SIGHUP");
    assert_eq!(
        https_get(inspector.https, &client).expect("HTTPS before the SIGHUP"),
        one.der
    );

    // The certificate's path becomes a FIFO nobody writes to, and the inspector is asked to
    // read it again.
    let fifo = Fifo::replace(&cert);
    let load = Load::start(&inspector, client.clone());
    let hangup = Instant::now();
    assert!(send_signal(inspector.process.pid(), "HUP"), "kill -s HUP");
    // 5 s of requests while the reload is stuck, then (line_where waits up to LIMIT more) the
    // reload's failure, RELOAD_TIMEOUT after the SIGHUP.
    std::thread::sleep(Duration::from_secs(5));
    let failures = load.failures();
    assert!(
        failures.is_empty(),
        "requests failed while the reload is stuck: {failures:#?}"
    );
    let line = inspector.process.line_where(
        |line| line.starts_with("certificate reload failed"),
        |line| line == "reloaded the certificate",
    );
    let failed_after = hangup.elapsed();
    std::thread::sleep(Duration::from_millis(500)); // requests after the failure, too
    let report = load.stop();
    eprintln!("reload failed after {failed_after:?}: {line}\nload: {report:#?}");
    assert!(report.failures.is_empty(), "{report:#?}");
    assert!(
        report.http_served >= 10 && report.https_served >= 10,
        "{report:#?}"
    );
    assert!(
        line.contains(&*cert.to_string_lossy()) && line.contains("not read within"),
        "{line}"
    );
    assert!(
        failed_after >= RELOAD_TIMEOUT,
        "the reload failed by its timeout ({RELOAD_TIMEOUT:?}), not before: {failed_after:?}"
    );
    assert_eq!(
        https_get(inspector.https, &client).expect("HTTPS after the failed reload"),
        one.der,
        "the certificate in use stays"
    );

    // Another SIGHUP while the first read is still stuck: refused at once, nothing piles up.
    assert!(send_signal(inspector.process.pid(), "HUP"), "kill -s HUP");
    let line = inspector.process.line_where(
        |line| line.starts_with("certificate reload failed"),
        |line| line == "reloaded the certificate",
    );
    assert!(line.contains("still reading"), "{line}");

    // The stuck read let go, valid files back: the next SIGHUP reloads.
    fifo.release_reader();
    drop(fifo);
    two.write(&cert, &key);
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(send_signal(inspector.process.pid(), "HUP"), "kill -s HUP");
        let line = inspector.process.line_where(
            |line| line == "reloaded the certificate" || line.contains("still reading"),
            |line| line.starts_with("certificate reload failed"),
        );
        if line == "reloaded the certificate" {
            break;
        }
        // The released read had not given the acceptor back yet.
        assert!(Instant::now() < deadline, "still reading after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        https_get(inspector.https, &client).expect("HTTPS after the reload"),
        two.der,
        "a new connection gets the new certificate"
    );
    http_get(inspector.http).expect("HTTP after the reload");

    let mut process = inspector.process;
    let exited = process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
}

#[test]
fn the_inspector_exits_on_sigterm_while_a_reload_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    ca.leaf("certificate one").write(&cert, &key);
    let inspector = start(&cert, &key);
    let fifo = Fifo::replace(&cert);
    assert!(send_signal(inspector.process.pid(), "HUP"), "kill -s HUP");
    // Best effort: SIGTERM once the read is stuck (the test holds either way).
    if !wait_for_reload_thread(inspector.process.pid()) {
        eprintln!("no tls-reload thread seen: SIGTERM anyway");
    }
    http_get(inspector.http).expect("HTTP while the reload is stuck");
    let mut process = inspector.process;
    let started = Instant::now();
    let exited = process.stop("TERM"); // fails if the inspector is not gone within LIMIT
    assert!(exited.status.success(), "{exited:#?}");
    assert!(started.elapsed() < LIMIT, "{:?}", started.elapsed());
    drop(fifo);
}

#[test]
fn a_sighup_reads_the_client_ca_off_the_runtime_too() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let client_ca = dir.path().join("client-ca.pem");
    let ca = Ca::new();
    let (one, two) = (ca.leaf("certificate one"), ca.leaf("certificate two"));
    one.write(&cert, &key);
    std::fs::write(&client_ca, ca.cert.pem()).unwrap();
    let inspector = start_with(&cert, &key, &[Path::new("--client-ca"), &client_ca]);
    let client = ca.client();
    let pid = inspector.process.pid();
    let reload = || {
        assert!(send_signal(pid, "HUP"), "kill -s HUP");
        inspector.process.line_where(
            |line| line == "reloaded the certificate" || line.starts_with("certificate reload"),
            |_| false,
        )
    };

    // The errors name the flag of the file, as at start.
    std::fs::write(&client_ca, "not PEM\n").unwrap();
    assert_eq!(
        reload(),
        format!(
            "certificate reload failed: --client-ca {}: no certificate found in the file",
            client_ca.display()
        )
    );
    std::fs::write(&client_ca, ca.cert.pem()).unwrap();
    std::fs::remove_file(&cert).unwrap();
    assert_eq!(
        reload(),
        format!(
            "certificate reload failed: --cert {}: No such file or directory (os error 2)",
            cert.display()
        )
    );

    // A FIFO at --client-ca: the reload times out naming it, serving goes on meanwhile.
    one.write(&cert, &key);
    let fifo = Fifo::replace(&client_ca);
    assert!(send_signal(pid, "HUP"), "kill -s HUP");
    let load = Load::start(&inspector, client.clone());
    std::thread::sleep(Duration::from_secs(5));
    let line = inspector.process.line_where(
        |line| line.starts_with("certificate reload"),
        |line| line == "reloaded the certificate",
    );
    let report = load.stop();
    assert!(report.failures.is_empty(), "{report:#?}");
    assert!(
        line.contains(&*client_ca.to_string_lossy()) && line.contains("not read within"),
        "{line}"
    );

    // Let go, the files right: reloaded, with the client CA.
    fifo.release_reader();
    drop(fifo);
    std::fs::write(&client_ca, ca.cert.pem()).unwrap();
    two.write(&cert, &key);
    let deadline = Instant::now() + LIMIT;
    loop {
        let line = reload();
        if line == "reloaded the certificate" {
            break;
        }
        assert!(line.contains("still reading"), "{line}");
        assert!(Instant::now() < deadline, "still reading after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        https_get(inspector.https, &client).expect("HTTPS after the reload"),
        two.der
    );
}
