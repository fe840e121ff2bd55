//! Failed logins are slowed per source address (accounts): a guesser from one address
//! gets a burst, then cool-offs, while a valid user from another address logs in at
//! once and an established session from the guessing address keeps carrying.

mod common;

use common::http::http;
use common::login::{key_for, login_from, Attempt};
use common::*;
use std::time::{Duration, Instant};

const TA: &str = "alice-0123456789abcdef0123456789abcdef";
/// How long the guessing runs: past one cool-off (30 s), so the rate seen covers a
/// burst, a cool-off and the next burst.
const GUESS_FOR: Duration = Duration::from_secs(32);
/// Pause between guesses: bounds the test's own load (a real guesser would not wait,
/// and would only meet more refusals).
const GUESS_PAUSE: Duration = Duration::from_millis(50);
const GUESSER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_from_one_address_is_slowed_and_nobody_else_notices() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"alice\"\ntoken = \"{TA}\"\nports = \"1024-65535\"\n"),
    )
    .unwrap();
    let server = Piped::start(&["--users", users.to_str().unwrap(), "--admin", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let echo = echo_service().await;
    // An established session from the guessing address (pipec dials from 127.0.0.1).
    let fwd = format!("tcp:{}:0", echo.port);
    let (mut established, ports) = Pipec::start(
        server.addr,
        &["--user", "alice", "--token", TA, "--forward", &fwd],
        1,
    );
    let rss_before = server.proc.rss_kib();
    let (mut guesses, mut refusals, mut first_refusal) = (0u32, 0u32, None);
    let mut slowest_other = Duration::ZERO;
    let start = Instant::now();
    let mut next_check = start;
    while start.elapsed() < GUESS_FOR {
        let wrong = Attempt {
            user: Some("alice"),
            token: "a-wrong-guess-a-wrong-guess",
            client_id: [1; 16],
            proof: [0; 32],
            join: None,
        };
        let answer = login_from(GUESSER, server.addr, &wrong).await.result;
        // A refusal in ServerHello reads as pipec shows it.
        let answer = answer.map_err(|r| r.replace("server refused the login: ", ""));
        match answer {
            Err(r) if r == "bad user or token" => guesses += 1,
            Err(r) if r.starts_with("too many failed logins from this address") => {
                refusals += 1;
                first_refusal.get_or_insert(r);
            }
            other => panic!("unexpected answer to a guess: {other:?}"),
        }
        if Instant::now() >= next_check {
            next_check += Duration::from_secs(2);
            // A valid user from another address gets in at once...
            let mut key = key_for(Some("alice"), TA);
            let t = Instant::now();
            let ok = login_from(
                OTHER,
                server.addr,
                &Attempt {
                    user: Some("alice"),
                    token: TA,
                    client_id: key.id(),
                    proof: key.next_proof(),
                    join: None,
                },
            )
            .await;
            let took = t.elapsed();
            assert!(ok.result.is_ok(), "valid login refused: {:?}", ok.result);
            slowest_other = slowest_other.max(took);
            // Far below the cool-off (30 s) this guards against, far above a busy
            // machine's scheduling delays.
            assert!(took < Duration::from_secs(5), "valid login took {took:?}");
            // ...and the established session from the guessing address carries on.
            assert_eq!(echo_roundtrip(ports[0], b"carrying").await, b"carrying");
        }
        tokio::time::sleep(GUESS_PAUSE).await;
    }
    let elapsed = start.elapsed();
    let per_sec = f64::from(guesses) / elapsed.as_secs_f64();
    let thousand = Duration::from_secs_f64(1000.0 / per_sec);
    eprintln!(
        "{guesses} guesses checked and {refusals} refused in {elapsed:?}: {per_sec:.2} guesses/s, \
         1,000 guesses would take {:.0} min; slowest valid login from another address {slowest_other:?}",
        thousand.as_secs_f64() / 60.0
    );
    assert!(
        thousand >= Duration::from_secs(600),
        "1,000 guesses in {thousand:?}"
    );
    assert_eq!(
        first_refusal.as_deref(),
        Some("too many failed logins from this address; try again in 30s")
    );
    // Counted by reason, and logged once per cool-off, not once per guess.
    let m = http(admin, "GET", "/metrics", None).await.body;
    assert_eq!(
        metric(&m, "pipe_auth_failures_total{reason=\"bad_token\"}"),
        f64::from(guesses)
    );
    assert_eq!(
        metric(&m, "pipe_auth_failures_total{reason=\"cooling_off\"}"),
        f64::from(refusals)
    );
    let log = server.proc.stderr();
    let cool_offs = log
        .matches("too many failed logins from this address")
        .count();
    assert!(
        (1..=2).contains(&cool_offs),
        "{cool_offs} cool-off lines:\n{log}"
    );
    // Memory stays flat and the established client never noticed.
    let grew = server.proc.rss_kib().saturating_sub(rss_before);
    assert!(grew < 8 * 1024, "piped RSS grew by {grew} KiB");
    assert!(established
        .proc
        .drain_lines(Duration::from_millis(50))
        .is_empty());
    assert!(established.proc.child.try_wait().unwrap().is_none());
}
