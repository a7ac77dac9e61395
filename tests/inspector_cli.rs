//! The inspector's command line (`examples/serve.rs`, issue 25): numeric flags' own errors,
//! host names in --http and --https, and which listeners are bound when.
//!
//! `cargo test` builds the inspector; `cargo test --test inspector_cli` alone does not (`cargo
//! build --all-features --example serve` first).
// The inspector is built only with the features it requires (Cargo.toml `[[example]]`).
#![cfg(all(feature = "tls", feature = "proxy-protocol", feature = "metrics"))]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::Command;

use serde_json::Value;

mod common;

use common::inspector::{example_path, Exited, Process};
use common::LIMIT;

/// The inspector with exactly `args`, its environment made predictable.
fn spawn(args: &[&str]) -> Process {
    let mut cmd = Command::new(example_path());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    Process::spawn(cmd)
}

/// Runs the inspector with `args`, expecting it to refuse to start: status 2, nothing on
/// stdout; returns its stderr.
fn refused(args: &[&str]) -> String {
    let exited = spawn(args).wait(LIMIT);
    assert_eq!(exited.status.code(), Some(2), "{args:?}: {exited:?}");
    assert!(exited.stdout.is_empty(), "{args:?}: {exited:?}");
    exited.stderr
}

/// A started inspector and what it said at start, up to its `try:` line.
struct Started {
    process: Process,
    /// The `listening on http://` addresses.
    http: Vec<SocketAddr>,
    /// The `listening on https://` addresses.
    https: Vec<SocketAddr>,
    /// Every line up to `try:`.
    lines: Vec<String>,
}

/// Starts the inspector with `args` (an --http among them: the `try:` lines are for it) and
/// reads its start-up lines, each bounded by [`LIMIT`].
fn start(args: &[&str]) -> Started {
    let mut process = spawn(args);
    let (mut http, mut https, mut lines) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let Some(line) = process.next_line() else {
            let exited: Exited = process.wait(LIMIT);
            panic!("{args:?}: the inspector exited at start: {exited:#?}");
        };
        let addr = |text: &str| -> SocketAddr {
            text.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{line:?}: not an address: {e}"))
        };
        if let Some(text) = line.strip_prefix("listening on http://") {
            http.push(addr(text));
        } else if let Some(text) = line.strip_prefix("listening on https://") {
            https.push(addr(text));
        }
        let done = line.starts_with("try: ");
        lines.push(line);
        if done {
            break;
        }
    }
    Started {
        process,
        http,
        https,
        lines,
    }
}

/// `GET /` over HTTP/1.1 (the connection closed after it), every step bounded by [`LIMIT`]:
/// the JSON of the connection as the inspector saw it.
fn get_root(addr: SocketAddr) -> Value {
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: inspector\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("the response from {addr}: {e}"));
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200 "),
        "GET / on {addr}: {response:?}"
    );
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the head: {response:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Stops the inspector with SIGTERM (bounded); it must exit 0.
fn stop(mut started: Started) {
    let exited = started.process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
}

#[test]
fn a_negative_body_size_limit_gets_the_value_parsers_message() {
    let stderr = refused(&["--http", "127.0.0.1:0", "--body-size-limit", "-5"]);
    assert!(
        stderr.starts_with(
            "error: invalid value '-5' for '--body-size-limit <BODY_SIZE_LIMIT>': \
             must be a whole number of bytes, 0 or more"
        ),
        "{stderr:?}"
    );
    assert!(!stderr.contains("unexpected argument"), "{stderr:?}");
    // 0 (no body at all) is still a value.
    let started = start(&["--http", "127.0.0.1:0", "--body-size-limit", "0"]);
    stop(started);
}

#[test]
fn every_numeric_flag_gives_its_own_error_for_a_negative_number() {
    let mut flags = vec![
        ("--connection-limit", "must be a whole number, 1 or more"),
        ("--connections-per-ip", "must be a whole number, 1 or more"),
        ("--http1-timeout", "must be a number of seconds above 0"),
        ("--http2-timeout", "must be a number of seconds above 0"),
        ("--tls-setup-timeout", "must be a number of seconds above 0"),
        ("--header-size-limit", "must be a whole number, 1 or more"),
        (
            "--body-size-limit",
            "must be a whole number of bytes, 0 or more",
        ),
        (
            "--shutdown-timeout",
            "must be a number of seconds, 0 or more",
        ),
    ];
    if cfg!(unix) {
        flags.push((
            "--upgrade-probation",
            "must be a number of seconds, 0 or more",
        ));
    }
    for (flag, message) in flags {
        let stderr = refused(&["--http", "127.0.0.1:0", flag, "-5"]);
        assert!(
            stderr.starts_with(&format!("error: invalid value '-5' for '{flag} "))
                && stderr.contains(message),
            "{flag} -5: {stderr:?}"
        );
    }
}

#[test]
fn a_host_name_is_resolved_and_its_first_address_bound() {
    let expected = ("localhost", 0)
        .to_socket_addrs()
        .expect("localhost resolves")
        .next()
        .expect("localhost has an address")
        .ip();
    assert!(expected.is_loopback(), "localhost is {expected}");
    let started = start(&["--http", "localhost:0", "--https", "localhost:0"]);
    let [http] = started.http[..] else {
        panic!("one HTTP listener: {:#?}", started.lines);
    };
    let [https] = started.https[..] else {
        panic!("one HTTPS listener: {:#?}", started.lines);
    };
    for addr in [http, https] {
        assert_eq!(addr.ip(), expected, "{:#?}", started.lines);
        assert_ne!(addr.port(), 0, "{:#?}", started.lines);
    }
    let root = get_root(http);
    assert_eq!(root["local_address"], expected.to_string(), "{root}");
    assert_eq!(root["local_port"], http.port(), "{root}");
    // The HTTPS listener takes connections too.
    TcpStream::connect_timeout(&https, LIMIT).unwrap_or_else(|e| panic!("connect to {https}: {e}"));
    stop(started);
}

#[test]
fn an_unresolvable_host_name_is_refused_naming_the_flag() {
    let stderr = refused(&["--http", "nosuch.invalid:8080"]);
    assert!(
        stderr.starts_with("error: --http nosuch.invalid:8080: ") && stderr.lines().count() == 1,
        "{stderr:?}"
    );
    let stderr = refused(&["--http", "127.0.0.1:0", "--https", "nosuch.invalid:8443"]);
    assert!(
        stderr.starts_with("error: --https nosuch.invalid:8443: ") && stderr.lines().count() == 1,
        "{stderr:?}"
    );
    // Not HOST:PORT at all: clap's usage error, from the value parser.
    let stderr = refused(&["--http", "localhost"]);
    assert!(
        stderr.starts_with("error: invalid value 'localhost' for '--http <ADDR>': "),
        "{stderr:?}"
    );
}

#[test]
fn two_inspectors_with_only_their_own_http_port_run_at_once() {
    let one = start(&["--http", "127.0.0.1:0"]);
    let two = start(&["--http", "127.0.0.1:0"]);
    for started in [&one, &two] {
        assert_eq!(started.http.len(), 1, "{:#?}", started.lines);
        assert!(
            started.https.is_empty(),
            "--http alone binds no HTTPS: {:#?}",
            started.lines
        );
        assert!(
            started
                .lines
                .iter()
                .any(|line| line.starts_with("no HTTPS: ")),
            "the start-up output says there is no HTTPS: {:#?}",
            started.lines
        );
    }
    assert_ne!(one.http, two.http);
    let mut both = [one, two];
    for started in &mut both {
        assert!(started.process.is_running());
        let root = get_root(started.http[0]);
        assert_eq!(root["local_port"], started.http[0].port(), "{root}");
    }
    for started in both {
        stop(started);
    }
}

#[test]
fn tls_flags_without_an_https_listener_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let stderr = refused(&["--http", "127.0.0.1:0", "--cert", &cert, "--key", &key]);
    assert!(
        stderr.starts_with(&format!("error: --cert {cert}: no HTTPS listener"))
            && stderr.contains("--https"),
        "{stderr:?}"
    );
}
