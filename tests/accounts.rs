//! Accounts (`piped --users FILE`): per-user logins and rights, takeover only with the
//! client's proof, tunnel and session caps, reloads, the admin's view of users.

mod common;

use common::http::http;
use common::login::{copied_login, key_for, login_from, Attempt};
use common::proxy::Proxy;
use common::users::*;
use common::*;
use pipe::protocol::ClientMsg;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const TA: &str = "alice-0123456789abcdef0123456789abcdef";
const TB: &str = "bob-fedcba9876543210fedcba9876543210";

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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Login pairs (one unknown user, one wrong token) the timing test measures.
const PAIRS: u32 = 200;
/// The smallest difference the timing test holds against a refusal: far above the
/// microseconds one HMAC costs, far below what a lookup elsewhere (a file, the
/// cluster directory) would add for known users only.
const TIMING_FLOOR_US: f64 = 1_000.0;
/// How many standard errors of the median the noise may move it before the test
/// calls it a difference: at 6, a busy machine's scheduling noise never crosses it.
const NOISE_SIGMAS: f64 = 6.0;

/// An unknown user and a wrong token are refused after the same work. Measured in
/// pairs from one source address, the two in random order, so that whatever the
/// machine is doing at that moment (another build, a burst of scheduling) weighs on
/// both alike; the test holds the median of the pairs' differences against a margin
/// of the larger of a floor and a quarter of the typical refusal time, plus the
/// noise's own spread (its standard error, from the differences' MAD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_and_wrong_tokens_take_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = users_file(dir.path(), &user("alice", TA, &[], ""));
    let server = Piped::start(&["--users", path.to_str().unwrap()]);
    let (mut diffs, mut all) = (Vec::new(), Vec::new());
    let mut unknown_slower = 0;
    for i in 0..PAIRS {
        // Spread over source addresses so the failed-login slow-down never starts.
        let src = [127, 0, 1 + (i / 100) as u8, 10 + (i % 100) as u8];
        let mut order = [("nobody", 0.0), ("alice", 0.0)];
        if rand::random::<bool>() {
            order.swap(0, 1);
        }
        for (name, took) in order.iter_mut() {
            let a = Attempt {
                user: Some(*name),
                token: "wrong-token-wrong-token",
                client_id: [i as u8; 16],
                proof: [0; 32],
                join: None,
            };
            let o = login_from(src, server.addr, &a).await;
            assert_eq!(o.result, Err("bad user or token".to_string()));
            *took = o.took.as_secs_f64() * 1e6;
        }
        let by = |n: &str| {
            order
                .iter()
                .find(|(name, _)| *name == n)
                .map_or(0.0, |o| o.1)
        };
        let (u, w) = (by("nobody"), by("alice"));
        diffs.push(u - w);
        all.extend([u, w]);
        unknown_slower += u32::from(u > w);
    }
    let typical = median(&mut all);
    let diff = median(&mut diffs);
    let mut spread: Vec<f64> = diffs.iter().map(|d| (d - diff).abs()).collect();
    // The standard error of a median, from the MAD (both scaled as for a normal).
    let se = 1.253 * 1.4826 * median(&mut spread) / f64::from(PAIRS).sqrt();
    let margin = TIMING_FLOOR_US.max(typical / 4.0) + NOISE_SIGMAS * se;
    eprintln!(
        "refusals: typical {typical:.0}µs; unknown user minus wrong token, median of {PAIRS} \
         pairs {diff:.0}µs (standard error {se:.0}µs, margin {margin:.0}µs); unknown user \
         slower in {unknown_slower} pairs"
    );
    assert!(
        diff.abs() <= margin,
        "unknown user minus wrong token: {diff:.0}µs, beyond {margin:.0}µs"
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
    // Alice's token cannot take over her live session; under bob's token her id is
    // not even an id (it is bound to alice's token).
    let why = [
        ("alice", TA, "cannot prove it owns"),
        ("bob", TB, "does not match its client id"),
    ];
    for (who, token, why) in why {
        for proof in &forged {
            let a = Attempt {
                user: Some(who),
                token,
                client_id,
                proof: *proof,
                join: None,
            };
            let o = login_from([127, 0, 0, 3], server.addr, &a).await;
            let err = o.result.expect_err("the replayed id got in");
            assert!(err.contains(why), "{who}: {err}");
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
            join: None,
        },
    )
    .await;
    assert!(bob.result.is_err(), "a proof must bind to its client id");
    let mut key = key_for(Some("bob"), TB);
    bob = login_from(
        [127, 0, 0, 4],
        server.addr,
        &Attempt {
            user: Some("bob"),
            token: TB,
            client_id: key.id(),
            proof: key.next_proof(),
            join: None,
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
    let (mut a, _) = start_as(server.addr, &args, 1);
    let (_b, _) = start_as(server.addr, &args, 1);
    // A third session is refused with a reason pipec retries on (another server may
    // take it); it waits without exiting and gets in once a place is given back.
    let a3: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut third = Pipec::spawn(server.addr, &a3);
    third.proc.wait_stderr(
        "this token already has 2 sessions on this server (--max-sessions 2)",
        WAIT,
    );
    assert!(!third.proc.exited(), "{}", third.proc.stderr());
    a.proc.signal("TERM");
    assert_eq!(a.proc.wait_exit(WAIT), 0);
    third.wait_forwarding();
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
