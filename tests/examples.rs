//! Smoke tests of the quick examples: each is started as users start it and asked once.

mod common;

use common::example::Example;

async fn curl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn url(first_line: &str) -> String {
    first_line.trim_start_matches("listening on ").to_owned()
}

#[tokio::test]
async fn hello_hyper() {
    let example = Example::start("hello_hyper", &["127.0.0.1:0"]).await;
    let base = url(&example.first_line);
    let body = curl(&[&base]).await;
    assert!(body.starts_with("hello, client "), "{body}");
    assert!(body.ends_with(" (HTTP/1.1)\n"), "{body}");
    assert!(body.contains(" at 127.0.0.1:"), "{body}");
    // The auto builder speaks h2c as well; a new connection is a new client.
    let h2 = curl(&["--http2-prior-knowledge", &base]).await;
    assert!(h2.ends_with(" (HTTP/2.0)\n"), "{h2}");
    assert_ne!(id_of(&body), id_of(&h2), "{body} {h2}");
}

#[tokio::test]
async fn hello_server() {
    let example = Example::start("hello_server", &["127.0.0.1:0"]).await;
    let body = curl(&[&url(&example.first_line)]).await;
    assert!(body.starts_with("hello, client "), "{body}");
    assert!(body.contains(" at 127.0.0.1:"), "{body}");
    assert!(
        body.ends_with("(HTTP/1.1, 1 response(s) pending)\n"),
        "{body}"
    );
}

/// The client id in a `hello, client ID at ...` greeting.
fn id_of(greeting: &str) -> &str {
    greeting
        .trim_start_matches("hello, client ")
        .split(' ')
        .next()
        .unwrap()
}

#[tokio::test]
async fn admin_lists_stats_and_closes() {
    let example = Example::start("admin", &["127.0.0.1:0"]).await;
    let base = url(&example.first_line);
    let clients = curl(&[&format!("{base}/admin/clients")]).await;
    // The request that asks is itself a live client.
    let id = clients.split_whitespace().next().unwrap().to_owned();
    assert!(clients.contains("pending_responses=1"), "{clients}");
    assert!(curl(&[&format!("{base}/admin/stats")])
        .await
        .contains("accepted: 2"));
    let output = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("{base}/admin/close/{id}"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "404",
        "that client is gone already"
    );
}

#[tokio::test]
async fn graceful_shutdown_delivers_the_slow_response_then_exits() {
    let example = Example::start("graceful_shutdown", &["127.0.0.1:0", "300"]).await;
    let slow = tokio::spawn(curl_owned(format!("{}/?ms=800", url(&example.first_line))));
    let (lines, success) = example.exit().await;
    assert!(success);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("all clients closed"),
        "{lines:?}"
    );
    assert_eq!(slow.await.unwrap(), "done after 800 ms\n");
}

async fn curl_owned(url: String) -> String {
    curl(&[&url]).await
}

#[cfg(unix)]
#[tokio::test]
async fn unix_peer_cred() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let path = path.to_str().unwrap();
    let _example = Example::start("unix_peer_cred", &[path]).await;
    let body = curl(&["--unix-socket", path, "http://localhost/"]).await;
    assert!(body.starts_with("pid=Some("), "{body}");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_client_cert_sees_the_certificate() {
    let example = Example::start("tls_client_cert", &["127.0.0.1:0"]).await;
    let try_line = example.next_line().await;
    let args: Vec<&str> = try_line
        .trim_start_matches("try: curl -s ")
        .split_whitespace()
        .collect();
    let body = curl(&args).await;
    assert!(body.starts_with("TLSv1.3 "), "{body}");
    // curl sends its certificate, and may add the CA it was signed by.
    assert!(
        body.contains("client certificates=") && !body.contains("client certificates=0"),
        "{body}"
    );
    // Without a client certificate, the handshake is refused.
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(&args[..2])
        .arg(args[args.len() - 1])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
}

#[cfg(feature = "proxy-protocol")]
#[tokio::test]
async fn behind_haproxy_with_curls_proxy_header() {
    let example = Example::start("behind_haproxy", &["127.0.0.1:0"]).await;
    let base = url(&example.first_line);
    let proxied = curl(&["--haproxy-protocol", &base]).await;
    assert!(
        proxied.contains(" via 127.0.0.1:") && proxied.contains("(PROXY v1)"),
        "{proxied}"
    );
    let direct = curl(&[&base]).await;
    assert!(direct.ends_with("directly\n"), "{direct}");
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_router() {
    let example = Example::start("axum", &["127.0.0.1:0"]).await;
    let body = curl(&[&url(&example.first_line)]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["pending_responses"], 1);
    assert_eq!(json["is_encrypted"], false);
}
