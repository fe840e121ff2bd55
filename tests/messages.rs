//! What the programs tell the user when something outside them is wrong: the local
//! service down, the server unreachable, a login refused. Each message names the
//! address and what to check, and repeats only as often as it helps.

mod common;

use common::*;
use std::time::Duration;

/// A loopback port nothing listens on (bound, read, released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_local_service_is_one_warning_per_forward_not_one_per_visitor() {
    let server = Piped::start(&[]);
    let down = dead_port();
    let echo = echo_service().await;
    let fwd_down = format!("tcp:127.0.0.1:{down}:0");
    let fwd_up = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (client, ports) = Pipec::start(
        server.addr,
        &["--forward", &fwd_down, "--forward", &fwd_up],
        2,
    );
    for _ in 0..5 {
        // The visitor is reset (the local service refused): so fast on loopback that
        // the reset may already be the outcome of connect.
        let mut s = match tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            r => r.unwrap(),
        };
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    }
    let want = format!("127.0.0.1:{down} refused the connection: is the service running?");
    eventually(WAIT, "the warning", || client.proc.stderr().contains(&want)).await;
    // The other forward is untouched.
    assert_eq!(echo_roundtrip(ports[1], b"up").await, b"up");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = client.proc.stderr();
    assert_eq!(err.matches(&want).count(), 1, "{err}");
    assert!(
        err.lines().any(|l| l.contains(&want) && l.contains("WARN")),
        "{err}"
    );
}

/// Runs pipec against `server` with `args`, waits for its exit; (code, stderr).
fn pipec_exit(server: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec![s("--server"), s(server)];
    all.extend(args.iter().map(|a| a.to_string()));
    let mut p = Proc::spawn(pipec_bin(), &all);
    let code = p.wait_exit(WAIT);
    (code, p.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_with_numbered_thinning_lines() {
    let dead = format!("127.0.0.1:{}", dead_port());
    let c = Pipec::spawn(
        dead.parse().unwrap(),
        &["--forward", "tcp:3000:0", "--reconnect-max", "100ms"],
    );
    eventually(WAIT, "retry 8", || {
        c.proc.stderr().contains("; retry 8 in ")
    })
    .await;
    let err = c.proc.stderr();
    let first = format!("cannot reach {dead} (connection refused); retry 1 in 0.1s");
    assert!(err.contains(&first), "{err}");
    for n in [2, 3, 4] {
        assert!(err.contains(&format!("; retry {n} in ")), "{err}");
    }
    for n in [5, 6, 7] {
        assert!(!err.contains(&format!("; retry {n} in ")), "{err}");
    }
    assert!(!err.contains("session lost"), "no session existed:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_ends_pipec_unless_told_to_retry() {
    let (code, err) = pipec_exit("nosuchhost.invalid:8910", &["--forward", "tcp:3000:0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: cannot resolve nosuchhost.invalid:8910"),
        "{err}"
    );
    assert!(err.contains("--retry-forever"), "{err}");

    let mut p = Proc::spawn(
        pipec_bin(),
        &[
            "--server",
            "nosuchhost.invalid:8910",
            "--forward",
            "tcp:3000:0",
            "--reconnect-max",
            "100ms",
            "--retry-forever",
        ]
        .map(s),
    );
    eventually(WAIT, "retry 2", || p.stderr().contains("; retry 2 in ")).await;
    p.signal("TERM");
    assert_eq!(p.wait_exit(WAIT), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_say_which_and_retry_only_when_told() {
    let server = Piped::start(&["--token", "right"]);
    let addr = server.addr.to_string();
    let (code, err) = pipec_exit(&addr, &["--forward", "tcp:3000:0"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("error: this server requires a token: give --token or set PIPE_TOKEN"),
        "{err}"
    );
    let (code, err) = pipec_exit(&addr, &["--token", "wrong", "--forward", "tcp:3000:0"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("error: bad token"), "{err}");

    let mut p = Proc::spawn(
        pipec_bin(),
        &[
            "--server",
            &addr,
            "--token",
            "wrong",
            "--forward",
            "tcp:3000:0",
            "--reconnect-max",
            "100ms",
            "--retry-forever",
        ]
        .map(s),
    );
    eventually(WAIT, "retry 2", || p.stderr().contains("; retry 2 in ")).await;
    assert!(p.stderr().contains("bad token"), "{}", p.stderr());
    p.signal("TERM");
    assert_eq!(p.wait_exit(WAIT), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_refusal_says_server_refused_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "srv", &["localhost"]);
    let server = Piped::start(&[
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ]);
    let (code, err) = pipec_exit(&server.addr.to_string(), &["--forward", "tcp:3000:0"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("error: server refused the login: this server requires TLS"),
        "{err}"
    );
    assert_eq!(err.matches("server refused the login").count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_server_stop_is_reported_as_such() {
    let echo = echo_service().await;
    let mut server = Piped::start(&[]);
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (c, _) = Pipec::start(
        server.addr,
        &["--forward", &fwd, "--reconnect-max", "100ms"],
        1,
    );
    server.proc.signal("TERM");
    assert_eq!(server.proc.wait_exit(WAIT), 0);
    let want = "the server closed the session (it is stopping or restarting); reconnecting";
    eventually(WAIT, "a retry", || {
        c.proc.stderr().contains("; retry 1 in ")
    })
    .await;
    assert!(c.proc.stderr().contains(want), "{}", c.proc.stderr());
    eventually(WAIT, "a retry", || {
        c.proc.stderr().contains("; retry 1 in ")
    })
    .await;
    assert!(
        !c.proc.stderr().contains("session lost"),
        "{}",
        c.proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_close_of_the_last_forward_is_exit_5_with_one_line() {
    let echo = echo_service().await;
    let server = Piped::start(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (mut c, ports) = Pipec::start(server.addr, &["--forward", &fwd], 1);
    let list = http::http(admin, "GET", "/api/tunnels", None).await.json();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["port"] == ports[0])
        .expect("the tunnel")["id"]
        .as_u64()
        .unwrap();
    let r = http::http(admin, "DELETE", &format!("/api/tunnels/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.proc.wait_exit(WAIT), 5, "{}", c.proc.stderr());
    let err = c.proc.stderr();
    let want = "error: the server closed every forward (closed by the operator); not reconnecting";
    assert!(err.contains(want), "{err}");
    assert!(!err.contains("session lost"), "{err}");
    assert!(!err.contains("WARN"), "one line, not two:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_port_is_named_without_jargon() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().to_string();
    let mut p = Proc::spawn(
        piped_bin(),
        &["--listen", "127.0.0.1:0", "--admin", &taken].map(s),
    );
    assert_eq!(p.wait_exit(WAIT), 1, "{}", p.stderr());
    let err = p.stderr();
    let want = format!("error: cannot listen on the admin address {taken}: ");
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("i/o:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_that_leave_nothing_usable_are_warned_about() {
    let port = dead_port();
    let listen = format!("127.0.0.1:{port}");
    let p = Proc::spawn(
        piped_bin(),
        &["--listen", &listen, "--ports", &port.to_string()].map(s),
    );
    let mut p = p;
    p.wait_line("listening on ", WAIT);
    eventually(WAIT, "the warning", || {
        p.stderr().contains("no forward can get a port")
    })
    .await;
    // A usable range says nothing.
    let ok = Piped::start(&["--ports", "20000-20010"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ok.proc.stderr().contains("no forward can get a port"));
}

#[test]
fn help_shows_no_empty_env_values() {
    for bin in [piped_bin(), pipec_bin()] {
        let out = std::process::Command::new(bin)
            .arg("--help")
            .env_remove("PIPE_UDP_BIND_ADDR")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(!text.contains("=]"), "{bin} --help:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_rates_work_and_unknown_units_list_the_valid_ones() {
    let (code, err) = pipec_exit(
        "127.0.0.1:1",
        &["--speed-limit", "10kb", "--forward", "tcp:1:0"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown unit \"kb\""), "{err}");
    assert!(
        err.contains("KB, MB, GB") && err.contains("KiB, MiB, GiB"),
        "{err}"
    );
    let echo = echo_service().await;
    let server = Piped::start(&["--speed-limit", "1.5MB"]);
    let fwd = format!("tcp:127.0.0.1:{}:0,", echo.port);
    let fwd = fwd.trim_end_matches(',');
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--speed-limit", "0.5MiB", "--forward", fwd],
        1,
    );
    assert_eq!(echo_roundtrip(ports[0], b"rate").await, b"rate");
}

/// The one-liner against a server on the default port: a loopback address of its
/// own (127.0.0.2) leaves 8910 on 127.0.0.1 to whoever has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_liner_works_against_the_default_port() {
    let echo = echo_service().await;
    let server = Piped::start_args(
        [
            "--listen",
            "127.0.0.2:8910",
            "--bind-addr",
            "127.0.0.1",
            "--admin",
            "127.0.0.1:0",
        ]
        .map(s)
        .to_vec(),
    );
    assert_eq!(server.addr.to_string(), "127.0.0.2:8910");
    let mut c = Pipec {
        proc: Proc::spawn(
            pipec_bin(),
            &["--server", "127.0.0.2", "--forward", &echo.port.to_string()].map(s),
        ),
    };
    let line = c.proc.wait_line("forwarding ", WAIT);
    let port = public_port(&line);
    assert_eq!(
        line,
        format!(
            "forwarding tcp://127.0.0.2:{port} -> localhost:{}",
            echo.port
        )
    );
    assert_eq!(echo_roundtrip(port, b"one line").await, b"one line");

    // piped's start-up summary.
    let admin = server.admin.unwrap();
    let err = server.proc.stderr();
    let want = format!(
        "auth open (no token), TLS off, ports 1024-65535, admin {admin} (no admin token), http forwards off"
    );
    assert!(err.contains(&want), "{err}");
    server.proc.signal("TERM");
}

/// A UDP forward whose local service is down says so like a TCP one: one WARN line
/// naming the address and what to check, however many datagrams come back refused;
/// the forward stays up and another forward of the client is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_local_udp_service_is_one_warning_not_silence() {
    let down = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let echo = udp_echo().await;
    let server = Piped::start(&[]);
    let (client, ports) = Pipec::start(
        server.addr,
        &[
            "--forward",
            &format!("udp:127.0.0.1:{down}:0"),
            "--forward",
            &format!("udp:127.0.0.1:{echo}:0"),
        ],
        2,
    );
    let want = format!(
        "127.0.0.1:{down} refused the datagrams (nothing listens on that udp port): is the \
         service running?"
    );
    let visitors: Vec<tokio::net::UdpSocket> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.connect(("127.0.0.1", ports[0])).await.unwrap();
            v.push(s);
        }
        v
    };
    // Datagrams are fire-and-forget: keep sending (bounded) until the warning shows.
    let deadline = std::time::Instant::now() + WAIT;
    while !client.proc.stderr().contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning within {WAIT:?}:\n{}",
            client.proc.stderr()
        );
        for v in &visitors {
            v.send(b"anyone there?").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        for v in &visitors {
            v.send(b"still?").await.unwrap();
        }
    }
    // The other forward still carries.
    let e = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    e.connect(("127.0.0.1", ports[1])).await.unwrap();
    e.send(b"up").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, e.recv(&mut buf))
        .await
        .expect("the echo forward answers")
        .unwrap();
    assert_eq!(&buf[..n], b"up");
    let err = client.proc.stderr();
    assert_eq!(err.matches(&want).count(), 1, "{err}");
    assert!(
        err.lines().any(|l| l.contains(&want) && l.contains("WARN")),
        "{err}"
    );
}

/// A pinned fingerprint that is not the server's: exit 1, naming both fingerprints and
/// where to find the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_fingerprint_names_both_and_where_to_look() {
    let dir = tempfile::tempdir().unwrap();
    let server = Piped::start(&[
        "--tls-self-signed",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    let got = server
        .proc
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("tls fingerprint "))
        .expect("a tls fingerprint line")
        .to_string();
    let want = format!("sha256:{}", "0f".repeat(32));
    let mut c = Pipec::spawn(
        server.addr,
        &["--tls-fingerprint", &want, "--forward", "tcp:3000:0"],
    );
    assert_eq!(c.proc.wait_exit(WAIT), 1, "{}", c.proc.stderr());
    let err = c.proc.stderr();
    let said = format!(
        "the server's certificate is {got}, but --tls-fingerprint pins {want}: pass the \
         fingerprint piped printed at start (its \"tls fingerprint sha256:...\" line); if piped \
         still prints {want}, something else is answering at this address"
    );
    assert!(err.contains(&said), "{err}");
    assert!(
        !err.contains("Mismatch") && !err.contains("Other("),
        "{err}"
    );
}
