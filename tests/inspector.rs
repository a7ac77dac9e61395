//! The inspector example (`examples/serve.rs`) end to end, with curl.
//!
//! `cargo test` builds the examples into `target/<profile>/examples/`; the test binaries live in
//! `target/<profile>/deps/`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Kills the inspector when the test ends, whatever happens.
struct Inspector {
    child: Child,
    addr: String,
}

impl Drop for Inspector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn start(extra: &[&str]) -> Inspector {
    let mut child = Command::new(example_path())
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the inspector example");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let mut inspector = Inspector {
        child,
        addr: String::new(),
    };
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the inspector printed its address");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    inspector.addr = addr.trim().to_string();
    inspector
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
