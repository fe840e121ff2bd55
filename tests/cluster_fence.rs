//! The cluster's promise under faults of the directory: at no instant do two nodes
//! serve the same port for different clients. A node cut off from Redis (the path
//! stopped, or silently blackholed) stops serving before its claims can expire, and
//! its clients that know other nodes are served there again with the same ports; a
//! Redis that restarts empty takes no live tunnel from anyone. Every port is sampled
//! through every node while other clients ask for the same ports as fast as the
//! directory lets them, and the backends that answer are compared.
//!
//! `PIPE_TEST_SOAK_SECS` stretches the sampling (90 for the long run).

mod common;

use common::cluster::*;
use common::proxy::{Mode, Proxy};
use common::redis::Redis;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How long the samplers run after the fault, unless `PIPE_TEST_SOAK_SECS` says more.
const SOAK: Duration = Duration::from_secs(10);
/// Between sampling rounds.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Forwards per client: under the default per-client tunnel limit.
const PER_CLIENT: usize = 50;

fn soak() -> Duration {
    std::env::var("PIPE_TEST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(SOAK, Duration::from_secs)
}

/// A local service that names itself to every visitor: `id\n`, then closes.
async fn banner_service(id: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{id}\n").as_bytes()).await;
                let _ = s.shutdown().await;
                let mut sink = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
            });
        }
    });
    port
}

/// Who answers on `ip:port` now: the backend's name, or `None` (refused, reset, or
/// nothing within the probe's patience).
async fn probe(ip: IpAddr, port: u16) -> Option<String> {
    let patience = Duration::from_millis(500);
    let mut s = tokio::time::timeout(patience, TcpStream::connect((ip, port)))
        .await
        .ok()?
        .ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(patience, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// Every answer seen, by port: (when, node, backend).
type Seen = Arc<Mutex<BTreeMap<u16, Vec<(Instant, IpAddr, String)>>>>;

/// Samples `ports` through every node every [`SAMPLE_EVERY`] until `until`.
fn sampler(
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
    until: Instant,
    seen: Seen,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut rounds = 0;
        while Instant::now() < until {
            let started = Instant::now();
            let mut probes = Vec::new();
            for &port in &ports {
                for &ip in &ips {
                    probes.push(async move { (port, ip, Instant::now(), probe(ip, port).await) });
                }
            }
            for (port, ip, at, got) in futures::future::join_all(probes).await {
                if let Some(who) = got {
                    seen.lock()
                        .unwrap()
                        .entry(port)
                        .or_default()
                        .push((at, ip, who));
                }
            }
            rounds += 1;
            tokio::time::sleep_until(started + SAMPLE_EVERY).await;
        }
        rounds
    })
}

/// Ports at which a backend answered after another one had started answering, with
/// what was seen: two owners served at once. Answers are ordered by when their probe
/// started; an answer from the old backend whose probe started after the new one's
/// first answer counts.
fn overlaps(seen: &Seen) -> Vec<String> {
    let mut bad = Vec::new();
    for (port, answers) in seen.lock().unwrap().iter() {
        let mut answers = answers.clone();
        answers.sort_by_key(|a| a.0);
        let mut retired: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<&str> = None;
        for (at, ip, who) in &answers {
            if retired.contains(who) {
                bad.push(format!(
                    "port {port}: {who} answered via {ip} at {at:?} after it was replaced"
                ));
            }
            if current != Some(who.as_str()) {
                if let Some(old) = current {
                    retired.insert(old.to_string());
                }
                current = Some(who);
            }
        }
    }
    bad
}

/// Backends that answered each port, in order of first answer.
fn answered_by(seen: &Seen, port: u16) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(a) = seen.lock().unwrap().get(&port) {
        let mut a = a.clone();
        a.sort_by_key(|x| x.0);
        for (_, _, who) in a {
            if out.last() != Some(&who) {
                out.push(who);
            }
        }
    }
    out
}

fn forwards(backend: u16, ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("tcp:127.0.0.1:{backend}:{p}"))
        .collect()
}

/// A client of `nodes[first]` that fails over to the others when `mobile`, with
/// [`PER_CLIENT`] forwards to `backend` on ports the server picks; returns it and its
/// ports.
fn owner(nodes: &[Node], first: usize, mobile: bool, backend: u16) -> (Pipec, Vec<u16>) {
    let mut args = vec![s("--token"), s(TOKEN)];
    if mobile {
        for (i, n) in nodes.iter().enumerate() {
            if i != first {
                args.extend([s("--server"), n.addr().to_string()]);
            }
        }
    }
    for f in forwards(backend, &[0; PER_CLIENT]) {
        args.extend([s("--forward"), f]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Pipec::spawn(nodes[first].addr(), &args);
    let ports = (0..PER_CLIENT)
        .map(|_| public_port(&c.proc.wait_line("forwarding ", WAIT * 2)))
        .collect();
    (c, ports)
}

/// Other clients asking `via` for `ports` again and again (each attempt exits 4 on
/// the first port still taken), until they hold every one or `until`; returns when
/// they got them all, if they did, and the clients holding them.
async fn thieves(
    via: SocketAddr,
    backend: u16,
    ports: Vec<u16>,
    until: Instant,
) -> (Option<Instant>, Vec<Pipec>) {
    let mut held = Vec::new();
    for chunk in ports.chunks(PER_CLIENT) {
        let got = loop {
            if Instant::now() >= until {
                return (None, held);
            }
            let mut args = vec![s("--token"), s(TOKEN)];
            for f in forwards(backend, chunk) {
                args.extend([s("--forward"), f]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut t = Pipec::spawn(via, &args);
            let mut lines = 0;
            while lines < chunk.len() {
                let left = until.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
                match t.proc.wait_line_or_exit("forwarding ", left.min(WAIT)) {
                    Some(_) => lines += 1,
                    None => break,
                }
            }
            if lines == chunk.len() {
                break t;
            }
            drop(t);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        held.push(got);
    }
    (Some(Instant::now()), held)
}

/// One partition of node a from Redis, by `fault`; see the module's docs.
async fn cut_off_node_stops_serving_first(net: u8, fault: Mode) {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let via_proxy = format!("redis://127.0.0.1:{}/", proxy.port);
    let nodes = [
        Node::start(&via_proxy, "a", node_ip(net, 2), &[]),
        Node::start(&redis.url(), "b", node_ip(net, 3), &[]),
        Node::start(&redis.url(), "c", node_ip(net, 4), &[]),
    ];
    let ips: Vec<IpAddr> = nodes.iter().map(|n| n.ip).collect();
    let (fixed_svc, mobile_svc, thief_svc) = (
        banner_service("fixed").await,
        banner_service("mobile").await,
        banner_service("thief").await,
    );
    // 200 claims on node a: 100 of clients that know only a, 100 of clients that
    // know every node.
    let (fixed1, f1) = owner(&nodes, 0, false, fixed_svc);
    let (fixed2, f2) = owner(&nodes, 0, false, fixed_svc);
    let (mut mobile1, m1) = owner(&nodes, 0, true, mobile_svc);
    let (mut mobile2, m2) = owner(&nodes, 0, true, mobile_svc);
    let fixed_ports: Vec<u16> = f1.iter().chain(&f2).copied().collect();
    let mobile_ports: Vec<u16> = m1.iter().chain(&m2).copied().collect();
    for &p in fixed_ports
        .iter()
        .take(3)
        .chain(mobile_ports.iter().take(3))
    {
        for &ip in &ips {
            // A peer node mirrors a claim a moment after it is published.
            let deadline = Instant::now() + WAIT;
            let mut who = probe(ip, p).await;
            while who.is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                who = probe(ip, p).await;
            }
            assert!(
                who.as_deref() == Some("fixed") || who.as_deref() == Some("mobile"),
                "before the fault, port {p} via {ip}: {who:?}"
            );
        }
    }

    // Sample a spread of both kinds through every node, before and after the fault.
    let sampled: Vec<u16> = fixed_ports
        .iter()
        .step_by(10)
        .chain(mobile_ports.iter().step_by(10))
        .copied()
        .collect();
    let seen: Seen = Arc::default();
    let lease = Duration::from_secs(4);
    let until = Instant::now() + soak() + lease * 2;
    let sampling = sampler(ips.clone(), sampled.clone(), until, seen.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.set_mode(fault);
    if fault == Mode::Refuse {
        proxy.reset_all();
    }
    let cut = Instant::now();
    // Others ask the healthy nodes for a's fixed ports as fast as they are let.
    let stealing = tokio::spawn(thieves(
        nodes[1].addr(),
        thief_svc,
        fixed_ports.clone(),
        until,
    ));
    // The clients that know other nodes are served again with the same ports.
    for (c, ports) in [(&mut mobile1, &m1), (&mut mobile2, &m2)] {
        let mut again = BTreeSet::new();
        while again.len() < ports.len() {
            let line = c
                .proc
                .wait_line("forwarding ", lease + Duration::from_secs(3));
            assert_ne!(forwarding_host(&line), nodes[0].ip, "moved off a: {line}");
            again.insert(public_port(&line));
        }
        assert_eq!(again, ports.iter().copied().collect(), "the same ports");
    }
    let moved = cut.elapsed();
    assert!(
        moved < lease + Duration::from_secs(3),
        "moved after {moved:?}"
    );

    let rounds = sampling.await.unwrap();
    let (stolen, _thieves) = stealing.await.unwrap();
    let bad = overlaps(&seen);
    let fenced = nodes[0]
        .piped
        .proc
        .stderr()
        .contains("stops serving these claims");
    eprintln!(
        "{fault:?}: {rounds} rounds over {} ports x 3 nodes; mobile clients back after {moved:?}; thieves got a's ports after {:?}; overlaps {}",
        sampled.len(),
        stolen.map(|t| t.duration_since(cut)),
        bad.len()
    );
    assert!(bad.is_empty(), "two owners at once: {bad:#?}");
    assert!(
        fenced,
        "node a never fenced:\n{}",
        nodes[0].piped.proc.stderr()
    );
    // Not vacuous: the abandoned ports did change hands, and were sampled doing so.
    let stolen = stolen.expect("the thieves got a's abandoned ports in the end");
    assert!(stolen.duration_since(cut) >= lease * 9 / 10 - lease / 10);
    assert!(
        fixed_ports
            .iter()
            .step_by(10)
            .any(|&p| answered_by(&seen, p) == ["fixed", "thief"]),
        "no sampled port went from fixed to thief"
    );
    // The mobile ports never changed hands.
    for &p in mobile_ports.iter().step_by(10) {
        assert_eq!(answered_by(&seen, p), ["mobile"], "port {p}");
    }
    // The fixed clients, stuck on a, were told to move, with a reason.
    for c in [&fixed1, &fixed2] {
        let err = c.proc.stderr();
        assert!(err.contains("lost its cluster directory"), "{err}");
    }
    fixed1.proc.signal("KILL");
    fixed2.proc.signal("KILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_path_to_redis_stops_serves_nothing_another_owner_holds() {
    cut_off_node_stops_serving_first(60, Mode::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_path_to_redis_is_blackholed_serves_nothing_another_owner_holds() {
    cut_off_node_stops_serving_first(61, Mode::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_empty_takes_no_live_tunnel_from_anyone() {
    let mut redis = Redis::start();
    let nodes = [
        Node::start(
            &redis.url(),
            "a",
            node_ip(62, 2),
            &["--admin", "127.0.62.2:0"],
        ),
        Node::start(&redis.url(), "b", node_ip(62, 3), &[]),
        Node::start(&redis.url(), "c", node_ip(62, 4), &[]),
    ];
    let ips: Vec<IpAddr> = nodes.iter().map(|n| n.ip).collect();
    let (owner_svc, thief_svc) = (banner_service("owner").await, banner_service("thief").await);
    let mut owners = Vec::new();
    let mut ports = Vec::new();
    for first in [0, 1] {
        let mut args = vec![s("--token"), s(TOKEN)];
        for f in forwards(owner_svc, &[0; 10]) {
            args.extend([s("--forward"), f]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (c, p) = Pipec::start(nodes[first].addr(), &args, 10);
        owners.push(c);
        ports.extend(p);
    }
    let seen: Seen = Arc::default();
    for round in 0..3 {
        let until = Instant::now() + Duration::from_secs(4);
        let sampling = sampler(ips.clone(), ports.clone(), until, seen.clone());
        redis.stop();
        redis.restart();
        let back = Instant::now();
        // Others ask for the same ports the moment Redis is back.
        let (stolen, _held) = thieves(nodes[2].addr(), thief_svc, ports.clone(), until).await;
        assert!(stolen.is_none(), "round {round}: a live port was taken");
        sampling.await.unwrap();
        // The directory holds exactly what is live, by the right nodes, within 5 s.
        let want: Vec<(String, String)> = {
            let mut w: Vec<(String, String)> = ports
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("tcp:{p}"), s(if i < 10 { "a" } else { "b" })))
                .collect();
            w.sort();
            w
        };
        loop {
            let view = admin_json(&nodes[0], "/api/cluster").await;
            if claim_keys(&view) == want {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "round {round}: the directory does not match what is live: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(overlaps(&seen).is_empty(), "{:#?}", overlaps(&seen));
    for &p in &ports {
        assert_eq!(answered_by(&seen, p), ["owner"], "port {p}");
    }
    // No session was ended: each owner printed its forwarding lines once.
    for c in &mut owners {
        let more = c.proc.drain_lines(Duration::from_millis(200));
        assert!(
            more.is_empty(),
            "re-registered: {more:?}\n{}",
            c.proc.stderr()
        );
        assert!(
            !c.proc.stderr().contains("ended the session"),
            "{}",
            c.proc.stderr()
        );
    }
}
