//! TLS on the control connection (issue: TLS and speed limits).

mod common;

use common::proxy::Proxy;
use common::*;

const TOKEN: &str = "tls-test-token-0123456789";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Plain,
    /// A certificate from a CA the client trusts.
    Ca,
    /// `--tls-self-signed` on the server, `--tls-fingerprint` on the client.
    Pinned,
}

/// Payload through a tunnel whose control connection passes a recording proxy.
async fn observe(wire: Wire) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "srv", &["localhost", "127.0.0.1"]);
    let echo = echo_service().await;
    let mut args = vec!["--token", TOKEN];
    let (cert, key, ca) = (
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let state = dir.path().join("state");
    match wire {
        Wire::Plain => {}
        Wire::Ca => args.extend(["--tls-cert", cert, "--tls-key", key]),
        Wire::Pinned => args.extend(["--tls-self-signed", "--state-dir", state.to_str().unwrap()]),
    }
    let server = Piped::start(&args);
    let fingerprint = fingerprint_of(&server);
    let proxy = Proxy::start(server.addr.port()).await;
    let via: std::net::SocketAddr = format!("127.0.0.1:{}", proxy.port).parse().unwrap();
    let fwd = format!("tcp:{}:0", echo.port);
    let mut cargs = vec!["--token", TOKEN, "--forward", &fwd];
    match wire {
        Wire::Plain => {}
        Wire::Ca => cargs.extend(["--tls", "--tls-ca", ca, "--tls-server-name", "localhost"]),
        Wire::Pinned => cargs.extend(["--tls-fingerprint", fingerprint.as_deref().unwrap()]),
    }
    let (_c, ports) = Pipec::start(via, &cargs, 1);
    let payload = b"SECRET-PAYLOAD-the-quick-brown-fox-jumps".repeat(50);
    assert_eq!(echo_roundtrip(ports[0], &payload).await, payload);
    (proxy.upstream_bytes(), proxy.downstream_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_hides_payload_and_token_from_the_path() {
    let needle = b"SECRET-PAYLOAD-the-quick-brown-fox";
    // Without TLS the recorder sees the payload: the check below can fail.
    let (up, down) = observe(Wire::Plain).await;
    assert!(
        contains(&up, needle) && contains(&down, needle),
        "plaintext run did not see the payload"
    );
    // The token itself never crosses the wire, TLS or not (HMAC challenge-response).
    assert!(!contains(&up, TOKEN.as_bytes()));
    for wire in [Wire::Ca, Wire::Pinned] {
        let (up, down) = observe(wire).await;
        assert!(!up.is_empty() && !down.is_empty());
        assert!(
            !contains(&up, needle) && !contains(&down, needle),
            "payload visible through TLS"
        );
        assert!(!contains(&up, TOKEN.as_bytes()) && !contains(&down, TOKEN.as_bytes()));
    }
}

/// The `tls fingerprint sha256:HEX` line piped printed before `listening on`.
fn fingerprint_of(server: &Piped) -> Option<String> {
    server
        .proc
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("tls fingerprint "))
        .map(str::to_string)
}

fn self_signed(state: &std::path::Path) -> (Piped, String) {
    let server = Piped::start(&["--tls-self-signed", "--state-dir", state.to_str().unwrap()]);
    let fp = fingerprint_of(&server).expect("no tls fingerprint line");
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    (server, fp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_tls_is_pinned_by_fingerprint_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let echo = echo_service().await;
    let fwd = format!("tcp:{}:0", echo.port);
    let (server, fp) = self_signed(&state);
    use std::os::unix::fs::PermissionsExt;
    for f in ["tls-key.pem", "tls-cert.pem"] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--tls-fingerprint", &fp, "--forward", &fwd],
        1,
    );
    assert_eq!(echo_roundtrip(ports[0], b"pinned").await, b"pinned");
    drop(_c);
    drop(server);
    // Same state directory, same certificate.
    let (server, again) = self_signed(&state);
    assert_eq!(again, fp);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--tls-fingerprint", &fp, "--forward", &fwd],
        1,
    );
    assert_eq!(echo_roundtrip(ports[0], b"again").await, b"again");
    // Another server's fingerprint: exit 1, naming both.
    let (_other, other_fp) = self_signed(&dir.path().join("other"));
    assert_ne!(other_fp, fp);
    let mut c = Pipec::spawn(
        server.addr,
        &["--tls-fingerprint", &other_fp, "--forward", &fwd],
    );
    assert_eq!(c.proc.wait_exit(WAIT), 1, "{}", c.proc.stderr());
    let err = c.proc.stderr();
    assert!(err.contains(&fp) && err.contains(&other_fp), "{err}");
    assert_eq!(echo_roundtrip(ports[0], b"unaffected").await, b"unaffected");
    // systemd's StateDirectory= hands the directory over in $STATE_DIRECTORY.
    let via_env = dir.path().join("systemd");
    let mut p = Proc::spawn_env(
        piped_bin(),
        &[s("--listen"), s("127.0.0.1:0"), s("--tls-self-signed")],
        &[("STATE_DIRECTORY", via_env.to_str().unwrap())],
    );
    p.wait_line("tls fingerprint sha256:", WAIT);
    assert!(via_env.join("tls-key.pem").exists());
    // A malformed fingerprint is a usage error.
    let mut c = Pipec::spawn(
        server.addr,
        &["--tls-fingerprint", "sha256:abc", "--forward", &fwd],
    );
    assert_eq!(c.proc.wait_exit(WAIT), 2);
    assert!(c.proc.stderr().contains("invalid TLS fingerprint"));
}

/// A TLS server with one live TLS tunnel; returns (server, its CA path, live port, tempdir).
async fn tls_server() -> (Piped, certs::Pki, u16, Pipec, tempfile::TempDir, Echo) {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "good", &["localhost"]);
    let echo = echo_service().await;
    let server = Piped::start(&[
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ]);
    let (c, ports) = Pipec::start(
        server.addr,
        &[
            "--tls-ca",
            pki.ca.to_str().unwrap(),
            "--tls-server-name",
            "localhost",
            "--forward",
            &format!("tcp:{}:0", echo.port),
        ],
        1,
    );
    (server, pki, ports[0], c, dir, echo)
}

async fn refused_with(server: &Piped, args: &[&str], code: i32, why: &str, live: u16) {
    let mut c = Pipec::spawn(server.addr, args);
    assert_eq!(
        c.proc.wait_exit(WAIT),
        code,
        "{args:?}\n{}",
        c.proc.stderr()
    );
    let err = c.proc.stderr();
    assert!(err.contains(why), "{args:?}: stderr lacks {why:?}:\n{err}");
    assert_eq!(echo_roundtrip(live, b"unaffected").await, b"unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_and_wrong_name_fail_clearly() {
    let (server, _pki, live, _c, dir, echo) = tls_server().await;
    let other = certs::make(dir.path(), "other", &["localhost"]);
    let fwd = format!("tcp:{}:0", echo.port);
    let other_ca = other.ca.to_str().unwrap();
    refused_with(
        &server,
        &[
            "--tls-ca",
            other_ca,
            "--tls-server-name",
            "localhost",
            "--forward",
            &fwd,
        ],
        1,
        "not signed by a trusted CA",
        live,
    )
    .await;
    let good_ca = _pki.ca.to_str().unwrap();
    refused_with(
        &server,
        &[
            "--tls-ca",
            good_ca,
            "--tls-server-name",
            "elsewhere.example",
            "--forward",
            &fwd,
        ],
        1,
        "does not match its name",
        live,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_mismatch_fail_clearly() {
    let (server, pki, live, _c, _dir, echo) = tls_server().await;
    let fwd = format!("tcp:{}:0", echo.port);
    // A plaintext client at a TLS server is told to use TLS.
    refused_with(&server, &["--forward", &fwd], 3, "requires TLS", live).await;
    // A TLS client at a plaintext server fails at once, naming the likely cause.
    let plain = Piped::start(&[]);
    let mut c = Pipec::spawn(
        plain.addr,
        &["--tls-ca", pki.ca.to_str().unwrap(), "--forward", &fwd],
    );
    assert_eq!(c.proc.wait_exit(WAIT), 1);
    assert!(
        c.proc.stderr().contains("without TLS"),
        "{}",
        c.proc.stderr()
    );
}
