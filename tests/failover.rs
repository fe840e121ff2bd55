//! `pipec --server A --server B`: it fails over to the next server when its session
//! drops (or when the first is down at start), re-registers, gets the same ports back
//! and prints the new server's host; the list from the config file, and bad lists.
//!
//! Two independent `piped` stand in for a cluster: A on 127.0.0.2, B on 127.0.0.3,
//! each binding its public ports on its own address so both can hold the same port.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// SPEC (Cluster): clients are back on another node within this long of a death.
const FAILOVER_BUDGET: Duration = Duration::from_secs(3);

/// A `piped` whose control and public listeners are all on `ip`.
fn piped_on(ip: &str) -> Piped {
    Piped::start_args(vec![
        s("--listen"),
        format!("{ip}:0"),
        s("--bind-addr"),
        s(ip),
    ])
}

/// An address on `ip` where nothing listens (bound once, then let go).
fn closed_port(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

fn pipec(args: &[String]) -> Proc {
    Proc::spawn(pipec_bin(), args)
}

fn servers_then(servers: &[String], rest: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    for srv in servers {
        v.push(s("--server"));
        v.push(srv.clone());
    }
    v.extend(rest.iter().map(|a| s(a)));
    v
}

/// Sends `msg` to `ip:port` and reads the echo back (bounded).
async fn roundtrip(ip: &str, port: u16, msg: &[u8]) -> Vec<u8> {
    let mut sock = tokio::time::timeout(WAIT, TcpStream::connect((ip, port)))
        .await
        .expect("connect timed out")
        .unwrap();
    sock.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, sock.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    got
}

/// `forwarding tcp://HOST:PORT -> ...` → (HOST, PORT)
fn public_of(line: &str) -> (String, u16) {
    let url = line.split_whitespace().nth(1).unwrap_or_default();
    let hostport = url
        .strip_prefix("tcp://")
        .unwrap_or_else(|| panic!("{line}"));
    let (host, port) = hostport.rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_over_to_the_next_on_the_same_port_within_3s() {
    let echo = echo_service().await;
    let a = piped_on("127.0.0.2");
    let _b = piped_on("127.0.0.3");
    let b_addr = _b.addr.to_string();
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let mut c = pipec(&servers_then(
        &[a.addr.to_string(), b_addr.clone()],
        &["--forward", &fwd],
    ));
    let (host, port) = public_of(&c.wait_line("forwarding ", WAIT));
    assert_eq!(host, "127.0.0.2", "the first server is tried first");
    assert_eq!(
        roundtrip("127.0.0.2", port, b"through A").await,
        b"through A"
    );

    a.proc.signal("KILL");
    let killed = Instant::now();
    let line = c.wait_line("forwarding ", WAIT);
    let took = killed.elapsed();
    eprintln!("failover took {took:?}");
    assert_eq!(
        public_of(&line),
        ("127.0.0.3".to_string(), port),
        "the second server's host, the same port: {line}"
    );
    assert!(took < FAILOVER_BUDGET, "failover took {took:?}");
    let data = random_bytes(256 * 1024, 7);
    assert_eq!(roundtrip("127.0.0.3", port, &data).await, data);
    let err = c.stderr();
    let lines: Vec<_> = err
        .lines()
        .filter(|l| l.contains("failing over to the next server"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per failover:\n{err}");
    assert!(
        lines[0].contains(" INFO ") && lines[0].contains(&b_addr),
        "an info line naming the new server: {}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_server_down_at_start_connects_to_the_second() {
    let echo = echo_service().await;
    let dead = closed_port("127.0.0.2");
    let b = piped_on("127.0.0.3");
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let mut c = pipec(&servers_then(
        &[dead.to_string(), b.addr.to_string()],
        &["--forward", &fwd],
    ));
    let (host, port) = public_of(&c.wait_line("forwarding ", WAIT));
    assert_eq!(host, "127.0.0.3");
    assert_eq!(
        roundtrip("127.0.0.3", port, b"through B").await,
        b"through B"
    );
    let err = c.stderr();
    let want = format!(
        "cannot reach {dead} (connection refused); trying {}",
        b.addr
    );
    assert!(err.contains(&want), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_name_is_fatal_only_when_no_server_resolves() {
    let echo = echo_service().await;
    let b = piped_on("127.0.0.3");
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let mut c = pipec(&servers_then(
        &[s("nosuchhost.invalid"), b.addr.to_string()],
        &["--forward", &fwd],
    ));
    let (host, _) = public_of(&c.wait_line("forwarding ", WAIT));
    assert_eq!(host, "127.0.0.3");

    let mut c = pipec(&servers_then(
        &[s("nosuchhost.invalid"), s("nosuchhost2.invalid:9000")],
        &["--forward", &fwd],
    ));
    assert_eq!(c.wait_exit(WAIT), 1, "{}", c.stderr());
    let err = c.stderr();
    assert!(
        err.contains("cannot resolve nosuchhost.invalid:8910")
            && err.contains("cannot resolve nosuchhost2.invalid:9000"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_list_in_the_config_file_fails_over() {
    let echo = echo_service().await;
    let dead = closed_port("127.0.0.2");
    let b = piped_on("127.0.0.3");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipec.toml");
    let text = format!(
        "server = [\"{dead}\", \"{}\"]\n\n[[forward]]\nproto = \"tcp\"\nlocal-host = \"127.0.0.1\"\nlocal-port = {}\n",
        b.addr, echo.port
    );
    std::fs::write(&path, text).unwrap();
    let mut c = pipec(&[s("--config"), path.to_string_lossy().into_owned()]);
    let (host, port) = public_of(&c.wait_line("forwarding ", WAIT));
    assert_eq!(host, "127.0.0.3");
    assert_eq!(
        roundtrip("127.0.0.3", port, b"from file").await,
        b"from file"
    );
}

#[test]
fn bad_server_lists_exit_2_naming_the_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, server: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("server = {server}\n")).unwrap();
        path.to_string_lossy().into_owned()
    };
    let cases = [
        (
            file("empty.toml", "[]"),
            "`server` in the config file is an empty list",
        ),
        (
            file("entry.toml", "[\"127.0.0.1:8910\", \"vps:x\"]"),
            "`server` in the config file: invalid server \"vps:x\": expected HOST:PORT",
        ),
        (
            file("blank.toml", "[\"127.0.0.1:8910\", \"\"]"),
            "`server` in the config file: invalid server \"\"",
        ),
        (
            file("type.toml", "[\"127.0.0.1:8910\", 3]"),
            "invalid config",
        ),
        (
            file("table.toml", "{ host = \"a\" }"),
            "a server HOST[:PORT] or an array of them",
        ),
    ];
    for (path, want) in cases {
        let mut c = pipec(&[s("--config"), path.clone(), s("--forward"), s("3000")]);
        assert_eq!(c.wait_exit(WAIT), 2, "{path}: {}", c.stderr());
        let err = c.stderr();
        assert!(err.contains(want), "{path}: want {want:?} in:\n{err}");
    }
    let mut c = pipec(&servers_then(
        &[s("127.0.0.1:8910"), s("vps:x")],
        &["--forward", "3000"],
    ));
    assert_eq!(c.wait_exit(WAIT), 2, "{}", c.stderr());
    assert!(
        c.stderr().contains("invalid server \"vps:x\""),
        "{}",
        c.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_file_list() {
    let echo = echo_service().await;
    let b = piped_on("127.0.0.3");
    let dead = closed_port("127.0.0.2");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipec.toml");
    std::fs::write(&path, format!("server = [\"{dead}\"]\n")).unwrap();
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let mut c = pipec(&servers_then(
        &[b.addr.to_string()],
        &["--config", &path.to_string_lossy(), "--forward", &fwd],
    ));
    let (host, _) = public_of(&c.wait_line("forwarding ", WAIT));
    assert_eq!(host, "127.0.0.3");
    assert!(!c.stderr().contains(&dead.to_string()), "{}", c.stderr());
}
