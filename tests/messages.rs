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
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ports[0]))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        // The visitor is closed on: nothing is there to answer.
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
