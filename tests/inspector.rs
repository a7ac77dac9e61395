//! The inspector example (`examples/serve.rs`) end to end, with curl.
//!
//! `cargo test` builds the examples into `target/<profile>/examples/`; the test binaries live in
//! `target/<profile>/deps/`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for anything that could hang: a start, an exit, a request.
const LIMIT: Duration = Duration::from_secs(10);

/// Ports the OS picks, so tests never meet a real inspector on 8080 / 8443 (nor each other).
const ANY_PORTS: [&str; 4] = ["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"];

/// The inspector as a child process, its output read by two threads: stdout line by line,
/// stderr whole. When the test ends, whatever happens, it is stopped as a service manager
/// would stop it (SIGTERM, then a bounded wait), so that it removes its generated CA file.
struct Inspector {
    child: Child,
    addr: String,
    /// stdout, after the first line; disconnected once the inspector has closed its stdout.
    lines: mpsc::Receiver<String>,
    /// All of stderr, sent once the inspector has closed it.
    stderr: mpsc::Receiver<String>,
}

/// How an inspector ended.
#[derive(Debug)]
struct Exited {
    status: ExitStatus,
    /// stdout lines not read before.
    stdout: Vec<String>,
    stderr: String,
}

impl Inspector {
    /// The next line on stdout (`None` once stdout is closed).
    fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(LIMIT) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line from the inspector in {LIMIT:?}")
            }
        }
    }

    /// Sends `signal` (`"TERM"`, `"INT"`), then waits (bounded) for the inspector to exit.
    fn stop(&mut self, signal: &str) -> Exited {
        assert!(
            send_signal(self.child.id(), signal),
            "kill -s {signal} {}",
            self.child.id()
        );
        self.wait()
    }

    /// Waits for the inspector to close its stdout and stderr and exit; kills it (and fails)
    /// if it has not within [`LIMIT`].
    fn wait(&mut self) -> Exited {
        let deadline = Instant::now() + LIMIT;
        let mut stdout = Vec::new();
        let stderr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => match self.stderr.recv_timeout(left) {
                    Ok(stderr) => break stderr,
                    Err(_) => break self.kill_after_timeout(),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => break self.kill_after_timeout(),
            }
        };
        let status = self.child.wait().expect("wait for the inspector");
        Exited {
            status,
            stdout,
            stderr,
        }
    }

    fn kill_after_timeout(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("the inspector did not exit within {LIMIT:?}");
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // exited and reaped already
        }
        if send_signal(self.child.id(), "TERM") {
            // stdout closes when the process exits: an event to wait for, bounded.
            let deadline = Instant::now() + LIMIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(_) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = self.child.wait();
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -s SIGNAL PID` (std has no way to send a signal but SIGKILL).
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn example_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir
        .join("examples")
        .join(format!("serve{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the inspector example was not found at {}; build it with `cargo test` or `cargo build --examples`",
        path.display()
    );
    path
}

/// Runs the inspector with exactly `args` (and `env`); its output is read by two threads.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Inspector {
    let mut child = Command::new(example_path())
        .args(args)
        // tracing-subscriber reads NO_COLOR; the colour test is about the terminal check.
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the inspector example");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = lines_tx.send(line);
        }
    });
    let (stderr_tx, stderr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        let _ = stderr_tx.send(String::from_utf8_lossy(&all).into_owned());
    });
    Inspector {
        child,
        addr: String::new(),
        lines,
        stderr: stderr_rx,
    }
}

/// Starts the inspector on ports the OS picks, plus `extra`, and waits for its first line.
fn start(extra: &[&str]) -> Inspector {
    start_with(extra, &[])
}

fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Inspector {
    let args: Vec<&str> = ANY_PORTS.iter().chain(extra).copied().collect();
    let mut inspector = spawn(&args, env);
    let Some(line) = inspector.next_line() else {
        let exited = inspector.wait();
        panic!("the inspector exited at start: {exited:?}");
    };
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    inspector.addr = addr.trim().to_string();
    inspector
}

/// Runs the inspector with exactly `args`, expecting it to refuse to start: it must exit
/// with status 2 and one `error: ...` line on stderr, which is returned.
fn refused(args: &[&str]) -> String {
    let mut inspector = spawn(args, &[]);
    let exited = inspector.wait();
    assert_eq!(exited.status.code(), Some(2), "{args:?}: {exited:?}");
    assert!(exited.stdout.is_empty(), "{args:?}: {exited:?}");
    let error = exited
        .stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("{args:?}: no `error: ` line in {:?}", exited.stderr));
    assert!(
        !exited.stderr.contains("Error: "),
        "{args:?}: not the Debug of an error: {:?}",
        exited.stderr
    );
    error.to_owned()
}

/// Where the inspector with process id `pid` writes its generated CA (as it says at start).
fn ca_path_of(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("hyper-remote-client-ca-{pid}.pem"))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn curl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10"]).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("curl is installed");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(data).unwrap();
    }
    child.wait_with_output().expect("curl output")
}

fn curl_json(args: &[&str]) -> Value {
    let out = curl(args, None);
    assert!(out.status.success(), "curl {args:?} failed: {out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// The foundation issue's keys, plus `proxy` (null without a PROXY header).
const KEYS: [&str; 15] = [
    "id",
    "remote_address",
    "remote_port",
    "local_address",
    "local_port",
    "is_unix",
    "is_encrypted",
    "crypto",
    "http_version",
    "pending_requests",
    "pending_responses",
    "is_waiting_on_response",
    "is_exported",
    "status",
    "proxy",
];

fn check_json(v: &Value, inspector: &Inspector, version: &str) {
    let keys: BTreeSet<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, KEYS.into_iter().collect::<BTreeSet<_>>());
    assert!(v["proxy"].is_null());
    let port: u64 = inspector.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(v["id"].as_u64().expect("numeric id") >= 1);
    assert_eq!(v["remote_address"], "127.0.0.1");
    let remote_port = v["remote_port"].as_u64().expect("numeric remote_port");
    assert!(remote_port > 0 && remote_port != port);
    assert_eq!(v["local_address"], "127.0.0.1");
    assert_eq!(v["local_port"], port);
    assert_eq!(v["is_unix"], false);
    assert_eq!(v["is_encrypted"], false);
    assert_eq!(v["crypto"], Value::Null);
    assert_eq!(v["http_version"], version);
    assert_eq!(v["pending_requests"], 0);
    assert_eq!(v["pending_responses"], 1);
    assert_eq!(v["is_waiting_on_response"], true);
    assert_eq!(v["is_exported"], false);
    assert_eq!(v["status"], 0);
}

#[test]
fn get_root_over_http1_and_h2c() {
    let inspector = start(&[]);
    let url = format!("http://{}/", inspector.addr);
    let h1 = curl_json(&[&url]);
    check_json(&h1, &inspector, "HTTP/1.1");
    let h2 = curl_json(&["--http2-prior-knowledge", &url]);
    check_json(&h2, &inspector, "HTTP/2.0");
    assert!(
        h2["id"].as_u64() > h1["id"].as_u64(),
        "a new connection, a larger id"
    );
}

#[test]
fn echo_and_body_limit() {
    let inspector = start(&["--body-size-limit", "1000"]);
    let url = format!("http://{}/echo", inspector.addr);
    let out = curl(&["--data-binary", "@-", &url], Some(b"hello inspector"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello inspector");

    let big = vec![b'x'; 2000];
    let out = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "@-",
            &url,
        ],
        Some(&big),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "413",
        "Content-Length over the limit: {out:?}"
    );

    let out = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "@-",
            &url,
        ],
        Some(&big),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "413",
        "chunked over the limit: {out:?}"
    );

    let at_limit = vec![b'y'; 1000];
    let out = curl(
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "@-",
            &url,
        ],
        Some(&at_limit),
    );
    assert_eq!(
        out.stdout, at_limit,
        "a chunked body at the limit is echoed"
    );
}

#[test]
fn close_gives_an_empty_reply() {
    let inspector = start(&[]);
    let out = curl(&[&format!("http://{}/close", inspector.addr)], None);
    assert_eq!(
        out.status.code(),
        Some(52),
        "curl: empty reply from server; got {out:?}"
    );
    assert!(out.stdout.is_empty());
    // The server is still fine.
    check_json(
        &curl_json(&[&format!("http://{}/", inspector.addr)]),
        &inspector,
        "HTTP/1.1",
    );
}

#[test]
fn slow_answers_after_the_delay() {
    let inspector = start(&[]);
    let start = Instant::now();
    let v = curl_json(&[&format!("http://{}/slow?ms=300", inspector.addr)]);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(10));
    check_json(&v, &inspector, "HTTP/1.1");
}

#[test]
fn unknown_path_is_404_and_trace_405() {
    let inspector = start(&[]);
    let out = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}/nope", inspector.addr),
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let out = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "TRACE",
            &format!("http://{}/", inspector.addr),
        ],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");
}

/// The status and body of a request (`-w` appends the status after the body).
fn status_and_body(args: &[&str]) -> (u16, String) {
    let mut all: Vec<&str> = vec!["-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all, None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: {out:?}"));
    (code, body.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Issue 13: the inspector says what failed, and cleans up after itself.

/// A certificate and key for localhost, as PEM.
fn localhost_pem() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn a_missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = display(&dir.path().join("cert.pem"));
    let key = display(&dir.path().join("key.pem"));
    let args: Vec<&str> = ANY_PORTS
        .iter()
        .copied()
        .chain(["--cert", &cert, "--key", &key])
        .collect();
    assert_eq!(
        refused(&args),
        format!("error: --cert {cert}: No such file or directory (os error 2)")
    );

    let (cert_pem, _) = localhost_pem();
    std::fs::write(&cert, cert_pem).unwrap();
    assert_eq!(
        refused(&args),
        format!("error: --key {key}: No such file or directory (os error 2)")
    );
}

#[test]
fn a_bad_pem_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = display(&dir.path().join("garbage.pem"));
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let truncated = display(&dir.path().join("truncated.pem"));
    std::fs::write(&truncated, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    let (cert_pem, key_pem) = localhost_pem();
    let cert = display(&dir.path().join("cert.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    let key = display(&dir.path().join("key.pem"));
    std::fs::write(&key, &key_pem).unwrap();
    let with = |extra: &[&str]| -> Vec<String> {
        ANY_PORTS
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let refused_with = |extra: &[&str]| {
        let args = with(extra);
        refused(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    assert_eq!(
        refused_with(&["--cert", &garbage, "--key", &key]),
        format!("error: --cert {garbage}: no certificate found in the file")
    );
    assert_eq!(
        refused_with(&["--cert", &cert, "--key", &garbage]),
        format!("error: --key {garbage}: no private key found in the file")
    );
    let error = refused_with(&["--cert", &cert, "--key", &truncated]);
    assert!(
        error.starts_with(&format!("error: --key {truncated}: ")) && error.contains("END"),
        "{error}"
    );
    // A key that is not the certificate's.
    let other = display(&dir.path().join("other-key.pem"));
    std::fs::write(&other, localhost_pem().1).unwrap();
    let error = refused_with(&["--cert", &cert, "--key", &other]);
    assert!(
        error.starts_with(&format!("error: --cert {cert}, --key {other}: ")),
        "{error}"
    );
    assert_eq!(
        refused_with(&["--client-ca", &garbage]),
        format!("error: --client-ca {garbage}: no certificate found in the file")
    );
    // The same files, right: it starts.
    let inspector = start(&["--cert", &cert, "--key", &key, "--client-ca", &cert]);
    assert!(!inspector.addr.is_empty());
}

#[test]
fn a_taken_port_is_named_and_the_generated_ca_removed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for flag in ["--http", "--https"] {
        let other = if flag == "--http" {
            "--https"
        } else {
            "--http"
        };
        let mut inspector = spawn(&[flag, &taken, other, "127.0.0.1:0"], &[]);
        let pid = inspector.child.id();
        let exited = inspector.wait();
        assert_eq!(exited.status.code(), Some(2), "{exited:?}");
        let error = exited.stderr.trim_end();
        assert!(
            error.starts_with(&format!("error: {flag} {taken}: "))
                && error.contains("in use")
                && !error.contains('\n'),
            "{error:?}"
        );
        // The CA was made before the port was tried: gone with the failed start too.
        assert!(!ca_path_of(pid).exists(), "{}", ca_path_of(pid).display());
    }
}

#[cfg(unix)]
#[test]
fn unix_refuses_to_remove_what_is_not_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "precious").unwrap();
    let file = display(&file);
    let error = refused(&[&ANY_PORTS[..], &["--unix", &file]].concat());
    assert!(
        error.starts_with(&format!("error: --unix {file}: ")) && error.contains("not a socket"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    let subdir = dir.path().join("dir");
    std::fs::create_dir(&subdir).unwrap();
    let subdir = display(&subdir);
    let error = refused(&[&ANY_PORTS[..], &["--unix", &subdir]].concat());
    assert!(
        error.starts_with(&format!("error: --unix {subdir}: ")) && error.contains("directory"),
        "{error}"
    );
    assert!(Path::new(&subdir).is_dir());

    // A live socket: someone listens on it.
    let live = dir.path().join("live.sock");
    let listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let live = display(&live);
    let error = refused(&[&ANY_PORTS[..], &["--unix", &live]].concat());
    assert!(
        error.starts_with(&format!("error: --unix {live}: ")) && error.contains("listening"),
        "{error}"
    );
    assert!(Path::new(&live).exists());
    drop(listener);
}

#[cfg(unix)]
#[test]
fn unix_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a socket file nobody listens on");
    let path = display(&path);
    let mut inspector = start(&["--unix", &path]);
    let v = curl_json(&["--unix-socket", &path, "http://localhost/"]);
    assert_eq!(v["is_unix"], true);
    let exited = inspector.stop("TERM");
    assert!(exited.status.success(), "{exited:?}");
    assert!(
        !Path::new(&path).exists(),
        "its own socket is removed at exit"
    );
}

#[test]
fn useless_limits_are_refused() {
    for (flag, value) in [
        ("--connection-limit", "0"),
        ("--connections-per-ip", "0"),
        ("--header-size-limit", "0"),
        ("--http1-timeout", "-1"),
        ("--http1-timeout", "NaN"),
        ("--http1-timeout", "0"),
        ("--http2-timeout", "-0.5"),
        ("--http2-timeout", "inf"),
        ("--tls-setup-timeout", "0"),
        ("--tls-setup-timeout", "nan"),
        ("--shutdown-timeout", "-1"),
        ("--shutdown-timeout", "NaN"),
    ] {
        let error = refused(&[&ANY_PORTS[..], &[flag, value]].concat());
        assert!(
            error.starts_with(&format!("error: invalid value '{value}' for '{flag} ")),
            "{flag} {value}: {error}"
        );
    }
    let error = refused(&[&ANY_PORTS[..], &["--proxy-protocol", "required"]].concat());
    assert!(
        error.starts_with("error: --proxy-protocol required: ")
            && error.contains("--trusted-proxy"),
        "{error}"
    );
    // Meaningful values still start; a shutdown deadline of 0 closes at once, which is fine.
    let _inspector = start(&[
        "--connection-limit",
        "1",
        "--header-size-limit",
        "1024",
        "--http1-timeout",
        "0.5",
        "--shutdown-timeout",
        "0",
    ]);
}

#[test]
fn bad_query_and_path_parameters_are_400() {
    let inspector = start(&[]);
    let base = format!("http://{}", inspector.addr);
    for query in [
        "ms=abc",
        "ms=",
        "ms",
        "ms=-5",
        "ms=1.5",
        "ms=99999999999999999999999",
    ] {
        let started = Instant::now();
        let (status, body) = status_and_body(&[&format!("{base}/slow?{query}")]);
        assert_eq!(status, 400, "/slow?{query}: {body}");
        assert!(body.contains("ms"), "/slow?{query}: {body}");
        assert!(started.elapsed() < Duration::from_secs(1), "/slow?{query}");
    }
    let (status, body) = status_and_body(&[&format!("{base}/slow?x=1&ms=0")]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = status_and_body(&["-X", "POST", &format!("{base}/clients/abc/close")]);
    assert_eq!(status, 400, "{body}");
    let (status, _) = status_and_body(&["-X", "POST", &format!("{base}/clients/999999/close")]);
    assert_eq!(status, 404);
    // Once sliced out of bounds (a panic in the handler).
    let (status, _) = status_and_body(&["-X", "POST", &format!("{base}/clients/close")]);
    assert_eq!(status, 404);
}

#[test]
fn the_generated_ca_file_is_removed_at_exit() {
    for signal in ["TERM", "INT"] {
        let mut inspector = start(&[]);
        let pid = inspector.child.id();
        let ca = loop {
            let line = inspector.next_line().expect("the CA line");
            if let Some((_, path)) = line.split_once("its CA: ") {
                break PathBuf::from(path.trim());
            }
        };
        assert_eq!(ca, ca_path_of(pid));
        assert!(ca.is_file(), "{}", ca.display());
        let exited = inspector.stop(signal);
        assert!(exited.status.success(), "SIG{signal}: {exited:?}");
        assert!(
            exited.stdout.iter().any(|line| line == "shutting down"),
            "SIG{signal}: {exited:?}"
        );
        assert!(!ca.exists(), "SIG{signal}: {} is left", ca.display());
    }
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let mut inspector = start_with(&[], &[("RUST_LOG", "debug")]);
    let _ = curl_json(&[&format!("http://{}/", inspector.addr)]);
    let exited = inspector.stop("TERM");
    assert!(exited.status.success(), "{exited:?}");
    assert!(
        exited.stderr.contains("shut down") && exited.stderr.contains("accepted"),
        "{:?}",
        exited.stderr
    );
    assert!(!exited.stderr.contains("\x1b["), "{:?}", exited.stderr);
}
