//! Accounts (`piped --users FILE`): per-user logins and rights, takeover only with the
//! client's proof, tunnel and session caps, reloads, the admin's view of users.

mod common;

use common::http::http;
use common::login::{copied_login, login_from, Attempt};
use common::proxy::Proxy;
use common::*;
use pipe::protocol::ClientMsg;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const TA: &str = "alice-0123456789abcdef0123456789abcdef";
const TB: &str = "bob-fedcba9876543210fedcba9876543210";

/// `n` free ports below the kernel's ephemeral range (32768 and up), so that no
/// listener bound to port 0 (a test's admin, echo or proxy) can take one meanwhile:
/// users' port lists must name ports.
fn spare_ports(n: usize) -> Vec<u16> {
    const BELOW_EPHEMERAL: std::ops::Range<u16> = 20_000..32_000;
    let mut got = Vec::new();
    let mut tries = 0;
    while got.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free ports below the ephemeral range");
        let p = rand::random_range(BELOW_EPHEMERAL);
        if !got.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            got.push(p);
        }
    }
    got
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn user(name: &str, token: &str, ports: &[u16], extra: &str) -> String {
    let ports = match ports {
        [] => String::new(),
        p => format!("ports = \"{}\"\n", list(p)),
    };
    format!("[[user]]\nname = \"{name}\"\ntoken = \"{token}\"\n{ports}{extra}\n")
}

fn write(path: &Path, text: &str) {
    // Write then rename, so the poller never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn users_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("users.toml");
    write(&p, text);
    p
}

fn as_user(name: &str, token: &str, forwards: &[String]) -> Vec<String> {
    let mut v = vec![s("--user"), s(name), s("--token"), s(token)];
    for f in forwards {
        v.push(s("--forward"));
        v.push(f.clone());
    }
    v
}

fn start_as(server: SocketAddr, args: &[String], n: usize) -> (Pipec, Vec<u16>) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Pipec::start(server, &a, n)
}

/// Runs pipec with `args` and expects it to exit with `code`, saying `why`.
fn refused(server: SocketAddr, args: &[String], code: i32, why: &str) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Pipec::spawn(server, &a);
    assert_eq!(
        c.proc.wait_exit(WAIT),
        code,
        "{args:?}\n{}",
        c.proc.stderr()
    );
    let err = c.proc.stderr();
    assert!(err.contains(why), "{args:?}: stderr lacks {why:?}:\n{err}");
}

async fn port_closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

async fn until_closed(port: u16, within: Duration) -> Duration {
    let start = Instant::now();
    while !port_closed(port).await {
        assert!(
            start.elapsed() < within,
            "port {port} still open after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_claims_only_its_own_ports_and_subdomains() {
    let dir = tempfile::tempdir().unwrap();
    let p = spare_ports(4);
    let (a, b) = (&p[..2], &p[2..]);
    let text = user("alice", TA, a, "subdomains = [\"alice\", \"alice-*\"]")
        + &user("bob", TB, b, "subdomains = [\"bob\"]");
    let path = users_file(dir.path(), &text);
    let echo = echo_service().await;
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let e = echo.port;
    let fw = |remote: u16| format!("tcp:{e}:{remote}");
    // Alice gets her named port, and "any port" is drawn from her ports.
    let (_alice, ports) = start_as(server.addr, &as_user("alice", TA, &[fw(a[0]), fw(0)]), 2);
    assert_eq!(ports[0], a[0]);
    assert_eq!(ports[1], a[1], "port 0 picks from alice's ports");
    assert_eq!(echo_roundtrip(a[0], b"alice").await, b"alice");
    // Neither may take the other's ports or names: exit 4, naming the rule.
    let why = format!("port {} is not in alice's ports", b[0]);
    refused(server.addr, &as_user("alice", TA, &[fw(b[0])]), 4, &why);
    let why = format!("port {} is not in bob's ports", a[0]);
    refused(server.addr, &as_user("bob", TB, &[fw(a[0])]), 4, &why);
    let http = |sub: &str| format!("http:{e}:{sub}");
    let why = "subdomain alice is not in bob's subdomains";
    refused(server.addr, &as_user("bob", TB, &[http("alice")]), 4, why);
    let why = "subdomain bob-x is not in bob's subdomains";
    refused(server.addr, &as_user("bob", TB, &[http("bob-x")]), 4, why);
    // Alice's wildcard passes her rights (this server has no Caddy, which is the next
    // refusal).
    let why = "http forwards are not enabled";
    refused(
        server.addr,
        &as_user("alice", TA, &[http("alice-dev")]),
        4,
        why,
    );
    // Wrong name/token pairs are login refusals: exit 3.
    let why = "bad user or token";
    refused(server.addr, &as_user("alice", TB, &[fw(0)]), 3, why);
    refused(server.addr, &as_user("bob", TA, &[fw(0)]), 3, why);
    refused(server.addr, &as_user("carol", TA, &[fw(0)]), 3, why);
    let no_user = vec![s("--token"), s(TA), s("--forward"), fw(0)];
    refused(server.addr, &no_user, 3, "pass --user");
    // Nothing of that disturbed alice.
    assert_eq!(echo_roundtrip(a[1], b"still").await, b"still");
    assert!(!server.proc.stderr().contains("panicked"));
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_and_wrong_tokens_take_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = users_file(dir.path(), &user("alice", TA, &[], ""));
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..200u32 {
        // Spread over source addresses so the failed-login slow-down never starts.
        let src = [127, 0, 1 + (i / 100) as u8, 10 + (i % 100) as u8];
        for (name, out) in [("nobody", &mut unknown), ("alice", &mut wrong)] {
            let a = Attempt {
                user: Some(name),
                token: "wrong-token-wrong-token",
                client_id: [i as u8; 16],
                proof: [0; 32],
            };
            let o = login_from(src, server.addr, &a).await;
            assert_eq!(o.result, Err("bad user or token".to_string()));
            out.push(o.took);
        }
    }
    let (u, w) = (median(&mut unknown), median(&mut wrong));
    let (lo, hi) = (u.min(w), u.max(w));
    eprintln!("median time to refusal: unknown user {u:?}, wrong token {w:?}");
    assert!(
        hi - lo <= lo / 4 + Duration::from_micros(200),
        "unknown user {u:?} vs wrong token {w:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_client_id_with_the_right_token_cannot_take_the_ports() {
    let dir = tempfile::tempdir().unwrap();
    let p = spare_ports(2);
    let text = user("alice", TA, &p, "") + &user("bob", TB, &p, "");
    let path = users_file(dir.path(), &text);
    let echo = echo_service().await;
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let proxy = Proxy::start(server.addr.port()).await;
    let via: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let fwd = format!("tcp:{}:{}", echo.port, p[0]);
    let (mut victim, _) = start_as(via, &as_user("alice", TA, &[fwd]), 1);
    // Copy the victim's login off the wire.
    let (client_id, proof) = copied_login(&proxy.upstream_bytes());
    let mut forged = vec![proof, [7; 32]];
    forged.push(pipe::accounts::proof::ClientKey::generate().next_proof());
    for (who, token) in [("alice", TA), ("bob", TB)] {
        for proof in &forged {
            let a = Attempt {
                user: Some(who),
                token,
                client_id,
                proof: *proof,
            };
            let o = login_from([127, 0, 0, 3], server.addr, &a).await;
            let err = o.result.expect_err("the replayed id got in");
            assert!(err.contains("cannot prove it owns"), "{err}");
        }
    }
    // The victim still holds its port, and visitors still reach it.
    for _ in 0..20 {
        assert_eq!(echo_roundtrip(p[0], b"victim").await, b"victim");
    }
    assert!(victim
        .proc
        .drain_lines(Duration::from_millis(100))
        .is_empty());
    // Another user's session cannot cancel the victim's forward by its id.
    let mut bob = login_from(
        [127, 0, 0, 4],
        server.addr,
        &Attempt {
            user: Some("bob"),
            token: TB,
            client_id: [4; 16],
            proof: [0; 32],
        },
    )
    .await;
    assert!(bob.result.is_err(), "a proof must bind to its client id");
    let mut key = pipe::accounts::proof::ClientKey::generate();
    bob = login_from(
        [127, 0, 0, 4],
        server.addr,
        &Attempt {
            user: Some("bob"),
            token: TB,
            client_id: key.id(),
            proof: key.next_proof(),
        },
    )
    .await;
    assert!(bob.result.is_ok(), "{:?}", bob.result);
    let (ctl, _stop) = bob.session.as_mut().unwrap();
    ctl.send(&ClientMsg::Cancel { id: 0 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(echo_roundtrip(p[0], b"mine").await, b"mine");
    // The real client, cut off, proves its chain and takes its port back.
    proxy.reset_all();
    let line = victim.proc.wait_line("forwarding ", WAIT);
    assert_eq!(public_port(&line), p[0]);
    assert_eq!(echo_roundtrip(p[0], b"back").await, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tunnels_counts_across_a_users_sessions_and_sessions_per_token_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let p = spare_ports(3);
    let path = users_file(dir.path(), &user("alice", TA, &p, "max-tunnels = 2"));
    let echo = echo_service().await;
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let fw = |i: usize| format!("tcp:{}:{}", echo.port, p[i]);
    let (mut first, _) = start_as(server.addr, &as_user("alice", TA, &[fw(0)]), 1);
    let (_second, _) = start_as(server.addr, &as_user("alice", TA, &[fw(1)]), 1);
    let why = "tunnel limit reached (2 for alice across all of its sessions)";
    refused(server.addr, &as_user("alice", TA, &[fw(2)]), 4, why);
    // A place given back is free again.
    first.proc.signal("TERM");
    assert_eq!(first.proc.wait_exit(WAIT), 0);
    let (_third, ports) = start_as(server.addr, &as_user("alice", TA, &[fw(2)]), 1);
    assert_eq!(ports[0], p[2]);

    // Single-token mode: tunnels per client as before, sessions per token capped.
    let server = Piped::start(&["--token", TA, "--max-sessions", "2"]);
    let args = vec![
        s("--token"),
        s(TA),
        s("--forward"),
        format!("tcp:{}:0", echo.port),
    ];
    let (_a, _) = start_as(server.addr, &args, 1);
    let (_b, _) = start_as(server.addr, &args, 1);
    refused(
        server.addr,
        &args,
        3,
        "this token already has 2 sessions (the limit is 2)",
    );
}

/// Starts alice (tunnel on `p[0]`) and bob (a 32 MiB download through `p[1]`, slowed
/// to last about 2 s by his speed limit), rotates alice's token with `reload`, and
/// checks who was affected.
async fn rotate(reload: impl FnOnce(&Piped, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    let p = spare_ports(2);
    let bob = user("bob", TB, &p[1..], "speed-limit = \"16MiB\"");
    let path = users_file(dir.path(), &(user("alice", TA, &p[..1], "") + &bob));
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let echo = echo_service().await;
    let body = std::sync::Arc::new(random_bytes(32 << 20, 18));
    let web = file_server(body.clone()).await;
    let (mut alice, _) = start_as(
        server.addr,
        &as_user("alice", TA, &[format!("tcp:{}:{}", echo.port, p[0])]),
        1,
    );
    let (_bob, _) = start_as(
        server.addr,
        &as_user("bob", TB, &[format!("tcp:{web}:{}", p[1])]),
        1,
    );
    let bob_port = p[1];
    let download = tokio::spawn(async move {
        let t = Instant::now();
        (http_get(bob_port).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_token = "alice-rotated-0123456789abcdef0123456789";
    write(&path, &(user("alice", new_token, &p[..1], "") + &bob));
    reload(&server, &path);
    let ended = until_closed(p[0], Duration::from_secs(3)).await;
    assert!(
        ended <= Duration::from_secs(1),
        "alice's session ended after {ended:?}"
    );
    assert_eq!(alice.proc.wait_exit(WAIT), 3, "{}", alice.proc.stderr());
    assert!(alice.proc.stderr().contains("bad user or token"));
    // The new token works; bob's transfer went on untouched.
    let (_alice, ports) = start_as(
        server.addr,
        &as_user("alice", new_token, &[format!("tcp:{}:{}", echo.port, p[0])]),
        1,
    );
    assert_eq!(echo_roundtrip(ports[0], b"new").await, b"new");
    let (got, took) = download.await.unwrap();
    assert_eq!(sha256(&got), sha256(&body), "bob's transfer was damaged");
    assert!(
        took >= Duration::from_millis(1500),
        "bob's speed limit: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_token_and_sighup_ends_that_users_sessions_only() {
    rotate(|server, _| server.proc.signal("HUP")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_token_in_the_file_alone_ends_that_users_sessions_only() {
    rotate(|_, _| {}).await;
}

async fn stderr_until(p: &Piped, needle: &str) {
    let start = Instant::now();
    while !p.proc.stderr().contains(needle) {
        assert!(
            start.elapsed() < WAIT,
            "no {needle:?} in:\n{}",
            p.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_users_file_keeps_the_old_rights_and_narrowed_rights_close_tunnels() {
    let dir = tempfile::tempdir().unwrap();
    let p = spare_ports(2);
    let path = users_file(dir.path(), &user("alice", TA, &p, ""));
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let echo = echo_service().await;
    let fw = |i: usize| format!("tcp:{}:{}", echo.port, p[i]);
    let (mut alice, _) = start_as(server.addr, &as_user("alice", TA, &[fw(0), fw(1)]), 2);
    write(&path, "[[user]\nname = \"alice\"\n");
    server.proc.signal("HUP");
    stderr_until(&server, "users file not reloaded").await;
    assert!(server
        .proc
        .stderr()
        .contains("the previous rights stay in force"));
    assert!(server.proc.stderr().contains("invalid users file"));
    // Old rights, old token: alice's tunnels live on and a new login gets in.
    assert_eq!(echo_roundtrip(p[1], b"kept").await, b"kept");
    refused(server.addr, &as_user("alice", TA, &[fw(0)]), 4, "is taken");
    // Narrowing her ports closes the tunnel outside them, and only that one.
    write(&path, &user("alice", TA, &p[..1], ""));
    until_closed(p[1], WAIT).await;
    assert_eq!(echo_roundtrip(p[0], b"still").await, b"still");
    let why = format!("port {} is not in alice's ports", p[1]);
    let start = Instant::now();
    while !alice.proc.stderr().contains(&why) {
        assert!(start.elapsed() < WAIT, "{}", alice.proc.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alice.proc.child.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_names_users_and_ends_their_sessions_and_the_log_audits() {
    let dir = tempfile::tempdir().unwrap();
    let p = spare_ports(2);
    let path = users_file(
        dir.path(),
        &(user("alice", TA, &p[..1], "") + &user("bob", TB, &p[1..], "")),
    );
    let server = Piped::start(&["--users", path.to_str().unwrap(), "--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let echo = echo_service().await;
    let (mut alice, _) = start_as(
        server.addr,
        &as_user("alice", TA, &[format!("tcp:{}:{}", echo.port, p[0])]),
        1,
    );
    let (_bob, _) = start_as(
        server.addr,
        &as_user("bob", TB, &[format!("tcp:{}:{}", echo.port, p[1])]),
        1,
    );
    let clients = http(admin, "GET", "/api/clients", None).await.json();
    let mut users: Vec<_> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    let tunnels = http(admin, "GET", "/api/tunnels", None).await.json();
    let t = tunnels.as_array().unwrap();
    assert!(t.iter().any(|t| t["user"] == "alice" && t["port"] == p[0]));
    let metrics = http(admin, "GET", "/metrics", None).await.body;
    assert!(metrics.contains("user=\"alice\""), "{metrics}");
    // Kicking alice ends her session, not bob's.
    let r = http(admin, "DELETE", "/api/users/alice/sessions", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ended"], 1);
    until_closed(p[0], WAIT).await;
    // She reconnects (her token is still good) and gets her port back.
    let line = alice.proc.wait_line("forwarding ", WAIT);
    assert_eq!(public_port(&line), p[0]);
    assert_eq!(echo_roundtrip(p[1], b"bob").await, b"bob");
    let r = http(admin, "DELETE", "/api/users/nobody/sessions", None).await;
    assert_eq!(r.status, 404);
    // The audit trail: one line per login and per forward, with user and address.
    refused(
        server.addr,
        &as_user("alice", TB, &[format!("tcp:{}:0", echo.port)]),
        3,
        "bad user or token",
    );
    let log = server.proc.stderr();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("pipe::audit")).collect();
    let has = |words: &[&str]| audit.iter().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(
        has(&[
            "login",
            "user=\"alice\"",
            "outcome=\"ok\"",
            "client=127.0.0.1:"
        ]),
        "{log}"
    );
    assert!(
        has(&["login", "user=\"alice\"", "bad user or token"]),
        "{log}"
    );
    assert!(has(&["forward", "user=\"bob\"", "outcome=\"ok\""]), "{log}");
    assert!(
        !log.contains(TA) && !log.contains(TB),
        "a token reached the log"
    );
}

#[test]
fn token_new_prints_a_strong_token_and_weak_tokens_are_warned_about() {
    let out = std::process::Command::new(piped_bin())
        .args(["token", "new"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap();
    let t = t.trim();
    assert_eq!(t.len(), 64, "{t:?}");
    assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
    // The warning comes before the admin starts: once its line is logged, it is out.
    let admin = ["--admin", "127.0.0.1:0"];
    let weak = Piped::start(&[&["--token", "hunter2"][..], &admin].concat());
    let strong = Piped::start(&[&["--token", t][..], &admin].concat());
    for p in [&weak, &strong] {
        let start = Instant::now();
        while !p.proc.stderr().contains("admin server listening") {
            assert!(start.elapsed() < WAIT, "{}", p.proc.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(
        weak.proc.stderr().contains("short enough to guess"),
        "{}",
        weak.proc.stderr()
    );
    assert!(!strong.proc.stderr().contains("short enough to guess"));
}
