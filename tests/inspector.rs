//! The inspector example (`examples/serve.rs`) end to end, with curl.
//!
//! `cargo test` builds the examples into `target/<profile>/examples/`; the test binaries live in
//! `target/<profile>/deps/`.
// The inspector is built only with the features it requires (Cargo.toml `[[example]]`).
#![cfg(all(feature = "tls", feature = "proxy-protocol", feature = "metrics"))]

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::inspector::{example_path, Process};
use common::LIMIT;

/// Ports the OS picks, so tests never meet a real inspector on 8080 / 8443 (nor each other).
const ANY_PORTS: [&str; 4] = ["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"];

/// A started inspector (see [`Process`]: stopped with SIGTERM when dropped) and the address of
/// its first `listening on http://` line.
struct Inspector {
    process: Process,
    addr: String,
}

/// Runs the inspector with exactly `args` (and `env`); its output is read by two threads.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(example_path());
    cmd.args(args)
        // tracing-subscriber reads NO_COLOR; the colour test is about the terminal check.
        .env_remove("NO_COLOR")
        .envs(env.iter().copied());
    Process::spawn(cmd)
}

/// Starts the inspector on ports the OS picks, plus `extra`, and waits for its first line.
fn start(extra: &[&str]) -> Inspector {
    start_with(extra, &[])
}

fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Inspector {
    let args: Vec<&str> = ANY_PORTS.iter().chain(extra).copied().collect();
    let mut process = spawn(&args, env);
    let Some(line) = process.next_line() else {
        let exited = process.wait(LIMIT);
        panic!("the inspector exited at start: {exited:?}");
    };
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Inspector {
        process,
        addr: addr.trim().to_string(),
    }
}

/// Runs the inspector with exactly `args`, expecting it to refuse to start: it must exit
/// with status 2 and one `error: ...` line on stderr, which is returned.
fn refused(args: &[&str]) -> String {
    let mut inspector = spawn(args, &[]);
    let exited = inspector.wait(LIMIT);
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
        let pid = inspector.pid();
        let exited = inspector.wait(LIMIT);
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
    let exited = inspector.process.stop("TERM");
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
        let pid = inspector.process.pid();
        let ca = loop {
            let line = inspector.process.next_line().expect("the CA line");
            if let Some((_, path)) = line.split_once("its CA: ") {
                break PathBuf::from(path.trim());
            }
        };
        assert_eq!(ca, ca_path_of(pid));
        assert!(ca.is_file(), "{}", ca.display());
        let exited = inspector.process.stop(signal);
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
    let exited = inspector.process.stop("TERM");
    assert!(exited.status.success(), "{exited:?}");
    assert!(
        exited.stderr.contains("shut down") && exited.stderr.contains("accepted"),
        "{:?}",
        exited.stderr
    );
    assert!(!exited.stderr.contains("\x1b["), "{:?}", exited.stderr);
}

// ---------------------------------------------------------------------------------------------
// GET /metrics: the Prometheus text format, scraped while real clients come and go.

const ACTIVE_CONNECTIONS: &str =
    r#"hyper_remote_client_active_connections{network_transport="tcp"}"#;
const REJECTED_BY_LIMIT: &str =
    r#"hyper_remote_client_rejected_connections_total{reason="connection_limit"}"#;
const UPGRADED: &str = "hyper_remote_client_upgraded_connections_total";
const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
const TLS_HANDSHAKE_DURATION: &str = "hyper_remote_client_tls_handshake_duration_seconds";

/// One series of the text format: a name and its labels (in any order), as written
/// `name{a="x",b="y"}` or `name`.
#[derive(Debug, PartialEq, Eq)]
struct Series {
    name: String,
    labels: BTreeSet<(String, String)>,
}

impl Series {
    /// Parses `name` or `name{a="x",...}`; label values hold no `"`, `,` or `\` here.
    fn parse(text: &str) -> Series {
        let text = text.trim();
        let Some((name, rest)) = text.split_once('{') else {
            return Series {
                name: text.to_owned(),
                labels: BTreeSet::new(),
            };
        };
        let inside = rest
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("no closing brace in {text:?}"));
        let labels = inside
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, quoted) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not a label in {text:?}: {pair:?}"));
                let value = quoted
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("an unquoted label value in {text:?}"));
                (key.trim().to_owned(), value.to_owned())
            })
            .collect();
        Series {
            name: name.to_owned(),
            labels,
        }
    }
}

/// The value of `series` (`name{labels}`, labels in any order) in a scrape; `None` if it is
/// not there (a metric appears once it has been recorded).
fn value(scrape: &str, series: &str) -> Option<f64> {
    let wanted = Series::parse(series);
    let mut found = None;
    for line in scrape.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, number) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        if Series::parse(key) == wanted {
            assert!(found.is_none(), "{series} twice in the scrape:\n{scrape}");
            found = Some(
                number
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("not a number: {line:?}")),
            );
        }
    }
    found
}

/// `name{labels}`, or `name` without labels.
fn series(name: &str, labels: &str) -> String {
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    }
}

/// Checks the histogram `name` with `labels` (`a="x",b="y"`, maybe empty) in a scrape: one
/// cumulative bucket per bound of `DURATION_BUCKETS` then `+Inf`, never over the count, `+Inf`
/// equal to `_count`, a `_sum` that is not negative. Returns the count.
fn histogram_count(scrape: &str, name: &str, labels: &str) -> f64 {
    let sep = if labels.is_empty() { "" } else { "," };
    let bounds = hyper_remote_client::telemetry::DURATION_BUCKETS
        .iter()
        .map(|bound| bound.to_string())
        .chain(["+Inf".to_owned()]);
    let count_series = series(&format!("{name}_count"), labels);
    let count = value(scrape, &count_series)
        .unwrap_or_else(|| panic!("no {count_series} in the scrape:\n{scrape}"));
    let mut previous = 0.0;
    for le in bounds {
        let bucket = format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}}");
        let n = value(scrape, &bucket)
            .unwrap_or_else(|| panic!("no {bucket} in the scrape:\n{scrape}"));
        assert!(
            previous <= n && n <= count,
            "{bucket} = {n}: buckets are cumulative, up to the count {count}"
        );
        previous = n;
    }
    assert_eq!(
        previous, count,
        "{name}{{{labels}}}: +Inf and _count differ"
    );
    let sum_series = series(&format!("{name}_sum"), labels);
    let sum = value(scrape, &sum_series).unwrap_or_else(|| panic!("no {sum_series}"));
    assert!(sum >= 0.0 && sum.is_finite(), "{sum_series} = {sum}");
    count
}

/// `GET /metrics` with curl over h2c: the scrapes' own requests are counted in the HTTP/2
/// series, which leaves the HTTP/1.1 ones to what a test does.
fn scrape(inspector: &Inspector) -> String {
    let url = format!("http://{}/metrics", inspector.addr);
    let out = curl(&["--http2-prior-knowledge", &url], None);
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8(out.stdout).expect("the text format is UTF-8")
}

/// `GET /metrics` on a kept-alive HTTP/1.1 connection (for when a new one would be refused).
fn scrape_over(stream: &mut TcpStream) -> String {
    let (status, body) = get(stream, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes with `scrape` until every series of `expected` reads its value, for at most
/// [`LIMIT`]; returns that scrape.
fn wait_for(mut scrape: impl FnMut() -> String, expected: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = scrape();
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(series, want)| {
                let got = value(&text, series);
                (got != Some(want)).then(|| format!("{series} is {got:?}, not {want}"))
            })
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "after {LIMIT:?}: {wrong:?}; the last scrape:\n{text}"
        );
        // Pacing between scrapes, not synchronisation: the condition is what ends the wait.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP connection to `addr` whose every read and write gives up after [`LIMIT`].
fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    stream
}

/// A response head, through its blank line; read byte by byte so that nothing after it (a
/// body, upgraded bytes) is taken.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => panic!(
                "closed within a response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Err(e) => panic!(
                "reading a response head: {e}; so far {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).expect("an ASCII head")
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

fn header_of<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// `GET path` over HTTP/1.1 on `stream`, kept alive: the status and the body.
fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let head = read_head(stream);
    let length: usize = header_of(&head, "content-length")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no Content-Length in {head:?}"));
    let mut body = vec![0; length];
    stream
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("GET {path}: the body: {e}"));
    let body = String::from_utf8(body).expect("a UTF-8 body");
    (status_of(&head), body)
}

/// Waits (each read bounded by [`LIMIT`]) for the server to close `stream`: the end of the
/// stream or a reset, whatever it sent before (a TLS alert).
fn expect_closed(stream: &mut TcpStream) {
    let deadline = Instant::now() + LIMIT;
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => assert!(Instant::now() < deadline, "still sending after {LIMIT:?}"),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return
            }
            Err(e) => panic!("not closed by the server: {e}"),
        }
    }
}

/// The HTTPS address and the generated CA file, from the lines after the first.
fn https_and_ca(inspector: &Inspector) -> (String, PathBuf) {
    let mut https = None;
    loop {
        let line = inspector
            .process
            .next_line()
            .expect("the HTTPS and CA lines");
        if let Some(addr) = line.strip_prefix("listening on https://") {
            https = Some(addr.trim().to_owned());
        }
        if let Some((_, path)) = line.split_once("its CA: ") {
            let https = https.expect("the HTTPS line comes before the CA line");
            return (https, PathBuf::from(path.trim()));
        }
    }
}

#[test]
fn metrics_active_connections_follow_idle_connections() {
    let inspector = start(&[]);
    // The first scrape: nothing else has connected, so the scrape's own connection.
    let baseline = value(&scrape(&inspector), ACTIVE_CONNECTIONS).expect("the gauge");
    assert_eq!(baseline, 1.0);

    // Each answers one request, so the server has surely accepted it; then they stay idle.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = connect(&inspector.addr);
            let (status, body) = get(&mut stream, "/");
            assert_eq!(status, 200, "{body}");
            stream
        })
        .collect();
    wait_for(
        || scrape(&inspector),
        &[(ACTIVE_CONNECTIONS, baseline + 10.0)],
    );

    drop(idle);
    let text = wait_for(|| scrape(&inspector), &[(ACTIVE_CONNECTIONS, baseline)]);
    // Their durations are recorded when they close (with the scrapes' that closed before).
    let closed = histogram_count(
        &text,
        "hyper_remote_client_connection_duration_seconds",
        r#"network_transport="tcp""#,
    );
    assert!(closed >= 10.0, "{closed} connection durations");
}

#[test]
fn metrics_request_durations_count_the_requests() {
    let inspector = start(&[]);
    let base = format!("http://{}", inspector.addr);

    // 7 GET / with curl over HTTP/1.1 (one run, the connection reused).
    let root = format!("{base}/");
    let mut args = vec!["--http1.1", "-w", "%{http_code}\n"];
    for _ in 0..7 {
        args.extend(["-o", "/dev/null", &root]);
    }
    let out = curl(&args, None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200\n".repeat(7));
    // 3 GET /nope on a raw HTTP/1.1 connection, kept alive.
    let mut stream = connect(&inspector.addr);
    for _ in 0..3 {
        assert_eq!(get(&mut stream, "/nope").0, 404);
    }

    // The scrapes are HTTP/2: the HTTP/1.1 series hold exactly the requests above.
    let h1 = r#"http_request_method="GET",network_protocol_version="1.1",url_scheme="http""#;
    let ok = format!(r#"{h1},http_response_status_code="200""#);
    let not_found = format!(r#"{h1},http_response_status_code="404""#);
    // No request left in progress but the scrape's own (the gauge has no version label).
    let active = r#"http_server_active_requests{http_request_method="GET",url_scheme="http"}"#;
    let text = wait_for(
        || scrape(&inspector),
        &[
            (&series(&format!("{REQUEST_DURATION}_count"), &ok), 7.0),
            (
                &series(&format!("{REQUEST_DURATION}_count"), &not_found),
                3.0,
            ),
            (active, 1.0),
        ],
    );
    assert_eq!(histogram_count(&text, REQUEST_DURATION, &ok), 7.0);
    assert_eq!(histogram_count(&text, REQUEST_DURATION, &not_found), 3.0);
    // Nothing else in HTTP/1.1.
    let h1_series = text
        .lines()
        .filter(|line| line.contains(r#"network_protocol_version="1.1""#))
        .filter(|line| !line.contains(r#"_code="200""#) && !line.contains(r#"_code="404""#))
        .collect::<Vec<_>>();
    assert!(h1_series.is_empty(), "{h1_series:?}");
    // The scrapes themselves: HTTP/2, GET, 200, at least one already done.
    let h2 = r#"http_request_method="GET",network_protocol_version="2",url_scheme="http",http_response_status_code="200""#;
    let text = scrape(&inspector);
    assert!(histogram_count(&text, REQUEST_DURATION, h2) >= 1.0);
}

#[test]
fn metrics_count_connections_refused_over_the_limit() {
    let inspector = start(&["--connection-limit", "2"]);
    // Two connections take both slots; each answers once, so they are surely admitted.
    let mut first = connect(&inspector.addr);
    assert_eq!(get(&mut first, "/").0, 200);
    let mut second = connect(&inspector.addr);
    assert_eq!(get(&mut second, "/").0, 200);
    // A third is accepted by the kernel, then closed by the server before any byte.
    let mut over = connect(&inspector.addr);
    expect_closed(&mut over);

    // Scraped over a held connection: a new one would be refused as well, and counted.
    wait_for(
        || scrape_over(&mut first),
        &[(REJECTED_BY_LIMIT, 1.0), (ACTIVE_CONNECTIONS, 2.0)],
    );
    let (_, stats) = get(&mut first, "/stats");
    let stats: Value = serde_json::from_str(&stats).expect("JSON");
    assert_eq!(stats["rejected_connection_limit"], 1, "{stats}");

    // A slot given back admits a new connection; nothing more is refused.
    drop(second);
    wait_for(|| scrape_over(&mut first), &[(ACTIVE_CONNECTIONS, 1.0)]);
    let mut third = connect(&inspector.addr);
    assert_eq!(get(&mut third, "/").0, 200);
    let text = wait_for(
        || scrape_over(&mut first),
        &[(REJECTED_BY_LIMIT, 1.0), (ACTIVE_CONNECTIONS, 2.0)],
    );
    for reason in ["per_ip_limit", "proxy_protocol", "acceptor"] {
        let other =
            format!(r#"hyper_remote_client_rejected_connections_total{{reason="{reason}"}}"#);
        assert_eq!(value(&text, &other), Some(0.0), "{other} (exported at 0)");
    }
}

#[test]
fn metrics_count_upgraded_connections() {
    let inspector = start(&[]);
    let mut echo = connect(&inspector.addr);
    // Without the headers it is refused, and not an upgrade.
    assert_eq!(get(&mut echo, "/upgrade").0, 400);
    let text = scrape(&inspector);
    assert_eq!(value(&text, UPGRADED), Some(0.0), "nothing upgraded yet");

    // The same connection, upgraded.
    echo.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut echo);
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(header_of(&head, "upgrade"), Some("echo"), "{head}");
    for message in [&b"hello"[..], b"raw bytes \x00\xff\r\n", b"bye"] {
        echo.write_all(message).unwrap();
        let mut back = vec![0; message.len()];
        echo.read_exact(&mut back).unwrap();
        assert_eq!(back, message);
    }
    // Detached, it is still an open connection (beside the scrape's).
    wait_for(
        || scrape(&inspector),
        &[(UPGRADED, 1.0), (ACTIVE_CONNECTIONS, 2.0)],
    );

    // The client ends its side: the echo ends and the server closes the connection.
    echo.shutdown(Shutdown::Write).unwrap();
    expect_closed(&mut echo);
    drop(echo);
    wait_for(
        || scrape(&inspector),
        &[(UPGRADED, 1.0), (ACTIVE_CONNECTIONS, 1.0)],
    );
}

#[test]
fn metrics_count_tls_handshakes() {
    let inspector = start(&["--tls-setup-timeout", "2"]);
    let (https, ca) = https_and_ca(&inspector);
    let ca = display(&ca);
    // Says nothing: its handshake times out after 2 s (while the rest goes on).
    let mut silent = connect(&https);

    let url = format!("https://{https}/");
    for _ in 0..3 {
        let v = curl_json(&["--http2", "--cacert", &ca, &url]);
        assert_eq!(v["is_encrypted"], true, "{v}");
        assert_eq!(v["crypto"]["protocol"], "TLSv1.3", "{v}");
    }
    let v = curl_json(&["--http2", "--cacert", &ca, "--tls-max", "1.2", &url]);
    assert_eq!(v["crypto"]["protocol"], "TLSv1.2", "{v}");
    // Plain HTTP to the HTTPS port: a failed handshake.
    let mut plain = connect(&https);
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    expect_closed(&mut plain);
    expect_closed(&mut silent);

    let tls13 = r#"tls_protocol_version="1.3""#;
    let tls12 = r#"tls_protocol_version="1.2""#;
    let error = r#"error_type="error""#;
    let timeout = r#"error_type="timeout""#;
    let count = |labels| series(&format!("{TLS_HANDSHAKE_DURATION}_count"), labels);
    // The requests over TLS: HTTP/2 by ALPN, in the https series.
    let h2s = r#"http_request_method="GET",network_protocol_version="2",url_scheme="https",http_response_status_code="200""#;
    let text = wait_for(
        || scrape(&inspector),
        &[
            (&count(tls13), 3.0),
            (&count(tls12), 1.0),
            (&count(error), 1.0),
            (&count(timeout), 1.0),
            (
                r#"hyper_remote_client_timeouts_total{phase="tls_handshake"}"#,
                1.0,
            ),
            ("hyper_remote_client_active_tls_handshakes", 0.0),
            (&series(&format!("{REQUEST_DURATION}_count"), h2s), 4.0),
        ],
    );
    for labels in [tls13, tls12, error, timeout] {
        histogram_count(&text, TLS_HANDSHAKE_DURATION, labels);
    }
    assert_eq!(
        value(&text, &count(r#"error_type="cancelled""#)),
        None,
        "no handshake was cut by a shutdown"
    );
    // Failed handshakes are counted by the handshake metrics, not as rejected connections
    // (whose series are exported at 0 from the start).
    for reason in [
        "connection_limit",
        "per_ip_limit",
        "proxy_protocol",
        "acceptor",
    ] {
        let series =
            format!(r#"hyper_remote_client_rejected_connections_total{{reason="{reason}"}}"#);
        assert_eq!(value(&text, &series), Some(0.0), "{series}:\n{text}");
    }
}

/// The counters whose series are known in advance are in the first scrape, at 0 (Prometheus'
/// "avoid missing metrics": `rate()` and alerts then see the first event).
#[test]
fn metrics_known_series_are_exported_at_zero_from_the_start() {
    let inspector = start(&[]);
    let text = scrape(&inspector);
    let mut expected: Vec<String> = [
        "connection_limit",
        "per_ip_limit",
        "proxy_protocol",
        "acceptor",
    ]
    .iter()
    .map(|reason| format!(r#"hyper_remote_client_rejected_connections_total{{reason="{reason}"}}"#))
    .collect();
    for phase in [
        "idle",
        "request_head",
        "request_body",
        "response",
        "half_close",
        "detached",
        "tls_handshake",
    ] {
        expected.push(format!(
            r#"hyper_remote_client_timeouts_total{{phase="{phase}"}}"#
        ));
    }
    expected.push(UPGRADED.to_owned());
    expected.push("hyper_remote_client_handed_over_connections_total".to_owned());
    for series in &expected {
        assert_eq!(value(&text, series), Some(0.0), "{series}:\n{text}");
    }
}
