//! Speed limits: isolation on one session (paused time) and real-time rates through
//! the binaries, from the client's limit and from the server's cap.

mod common;

use common::*;
use pipe::limit::RateLimiter;
use pipe::transport::mux::{self, Mode};
use pipe::transport::{splice, BatchIo, SpliceOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Two streams on one yamux session over an in-memory pipe; stream 0 is limited to
/// 256 KiB/s, stream 1 is not. Returns the virtual time each transfer took.
async fn two_streams(limited_bytes: usize, free_bytes: usize) -> (Duration, Duration) {
    let (a, b) = tokio::io::duplex(4 * MIB);
    let stop = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (ma, da) = mux::start(
        BatchIo::new(a),
        mux::config(16),
        Mode::Client,
        |_| {},
        stop.clone(),
    );
    let (_mb, db) = mux::start(
        BatchIo::new(b),
        mux::config(16),
        Mode::Server,
        move |s| {
            let _ = tx.send(s);
        },
        stop.clone(),
    );
    tokio::spawn(da);
    tokio::spawn(db);
    let start = tokio::time::Instant::now();
    let mut readers = Vec::new();
    for (i, n) in [limited_bytes, free_bytes].into_iter().enumerate() {
        let mut stream = ma.open().await.unwrap();
        stream.write_all(&[i as u8]).await.unwrap();
        let (mut user, mut end) = tokio::io::duplex(64 * KIB);
        let limit = (i == 0).then(|| Arc::new(RateLimiter::new(256 * KIB as u64)));
        tokio::spawn(async move {
            let opts = SpliceOptions {
                limit_a_to_b: limit,
                ..Default::default()
            };
            let _ = splice(&mut end, &mut stream, opts).await;
        });
        tokio::spawn(async move {
            user.write_all(&vec![7u8; n]).await.unwrap();
            user.shutdown().await.unwrap();
            let mut sink = Vec::new();
            let _ = user.read_to_end(&mut sink).await;
        });
        let mut inbound = rx.recv().await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut tag = [0u8; 1];
            inbound.read_exact(&mut tag).await.unwrap();
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * KIB];
            loop {
                let k = inbound.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                got += k;
            }
            assert_eq!(got, n);
            start.elapsed()
        }));
    }
    let limited = readers.remove(0).await.unwrap();
    let free = readers.remove(0).await.unwrap();
    stop.cancel();
    (limited, free)
}

#[tokio::test(start_paused = true)]
async fn a_limited_stream_does_not_slow_its_neighbour() {
    let (limited, free) = two_streams(MIB, 16 * MIB).await;
    // 1 MiB at 256 KiB/s with a 64 KiB burst: 3.75 s of (virtual) time.
    assert!(
        limited >= Duration::from_millis(3_700) && limited <= Duration::from_millis(4_000),
        "{limited:?}"
    );
    // 16 MiB on the same session, unlimited, is done long before.
    assert!(
        free < Duration::from_millis(200),
        "unlimited stream took {free:?}"
    );
}

async fn timed_download(server_args: &[&str], client_args: &[&str]) -> Duration {
    let body = Arc::new(random_bytes(MIB, 5));
    let local = file_server(body.clone()).await;
    let server = Piped::start(server_args);
    let fwd = format!("tcp:{local}:0");
    let mut args = client_args.to_vec();
    args.extend(["--forward", fwd.as_str()]);
    let (_c, ports) = Pipec::start(server.addr, &args, 1);
    let t = Instant::now();
    let got = http_get(ports[0]).await;
    let took = t.elapsed();
    assert_eq!(sha256(&got), sha256(&body));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_holds_in_real_time() {
    let took = timed_download(&[], &["--speed-limit", "256KiB"]).await;
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_millis(5_500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cap_wins_over_a_higher_client_limit() {
    let took = timed_download(&["--speed-limit", "256KiB"], &["--speed-limit", "100MiB"]).await;
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_millis(5_500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_forward_limit_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = Arc::new(random_bytes(MIB, 6));
    let local = file_server(body.clone()).await;
    let fast = file_server(body.clone()).await;
    let server = Piped::start(&[]);
    let cfg = dir.path().join("pipec.toml");
    std::fs::write(
        &cfg,
        format!(
            "server = \"{}\"\n[[forward]]\nproto = \"tcp\"\nlocal-port = {local}\nspeed-limit = \"256KiB\"\n\n[[forward]]\nproto = \"tcp\"\nlocal-port = {fast}\n",
            server.addr
        ),
    )
    .unwrap();
    let mut c = Pipec {
        proc: Proc::spawn(
            pipec_bin(),
            &[s("--config"), cfg.to_str().unwrap().to_string()],
        ),
    };
    let (slow_port, fast_port) = (c.wait_forwarding(), c.wait_forwarding());
    let t = Instant::now();
    assert_eq!(http_get(fast_port).await.len(), MIB);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "unlimited forward slowed: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(http_get(slow_port).await.len(), MIB);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_millis(5_500),
        "{took:?}"
    );
}

/// Offers 1,000-byte datagrams at about 2 MB/s for one second through a UDP tunnel of
/// a server started with `server_args`; returns how many echoes came back.
async fn udp_echoes_through(server_args: &[&str]) -> usize {
    let echo = udp_echo().await;
    let server = Piped::start(server_args);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("udp:127.0.0.1:{echo}:0")],
        1,
    );
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    sock.connect(("127.0.0.1", ports[0])).await.unwrap();
    let receiver = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let mut buf = [0u8; 2048];
            // Until the replies stop for half a second (bounded by the send time).
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
            {
                n += 1;
            }
            n
        })
    };
    let msg = [7u8; 1000];
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..1000 {
        tick.tick().await;
        for _ in 0..2 {
            let _ = sock.send(&msg).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(10), receiver)
        .await
        .expect("receiver ends")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tunnels_are_policed_at_the_speed_limit() {
    // 100 KB/s per direction: in about 1.3 s of sending, 25 KB of burst plus 130 KB
    // pass, roughly 155 datagrams of the 2,000 offered.
    let limited = udp_echoes_through(&["--speed-limit", "100KB"]).await;
    assert!(
        (60..=300).contains(&limited),
        "{limited} echoes through a 100 KB/s UDP tunnel"
    );
    // The same load without a limit: nearly everything comes back.
    let free = udp_echoes_through(&[]).await;
    eprintln!("echoes of 2,000: {limited} limited, {free} free");
    assert!(free >= 1_500, "{free} echoes without a limit");
}
