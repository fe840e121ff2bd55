//! The `cluster` workload: three `piped` nodes sharing one Redis directory, each on a
//! loopback address of its own (all of 127/8 is loopback, inside the namespace too), so
//! all of them listen on the tunnel's one public port. One `pipec` logs into node `a`
//! (the holder) and forwards to the shared backend; a visitor at node `b` or `c` is
//! carried over a peer link to `a`: one extra hop.
//!
//! Per round, on the same processes: the bulk upload of the memory workload and the
//! 1-byte ping-pong of the latency rows, each through the holder's address and through a
//! peer node's (which goes first alternates round by round); then `IDLE_VISITORS` idle
//! visitors spread over the three nodes, each node's RSS and the client's, and a 1-byte
//! echo on every one of them at the end. The load generators and statistics are the
//! harness's own; this file only starts the cluster and says where to point them.
//!
//! Metrics: `{holder|peer}_{tcp1|tcp4}_gbps`, `{holder|peer}_rtt[1cpu]_{p50|p99}_us`,
//! `rss_{fresh|idle1k}_{a|b|c|client}_mib`, `held_{a|b|c}`, `held`, `alive`,
//! `mirror_ms`.

use crate::harness::{metric, Harness};
use crate::procs::{free_tcp_port, group_rss_kib, settled_rss_kib, Proc};
use crate::systems::{Env, Running, System, READY, TOKEN};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// The nodes: name and loopback address. The first holds the tunnel.
pub const NODES: [(&str, &str); 3] = [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")];
/// Idle visitors held at the end of a round, spread evenly over the nodes.
pub const IDLE_VISITORS: usize = 1_000;
/// How long the other nodes get to start listening on a claim the holder published (a
/// few hundred milliseconds in practice).
const MIRROR_WITHIN: Duration = Duration::from_secs(5);
/// The nodes' claim lease (`--cluster-lease`).
pub(crate) const LEASE: Duration = Duration::from_secs(5);
/// What the nodes prove to each other on peer links (`--cluster-secret`).
const CLUSTER_SECRET: &str = "pipebench-cluster-secret-0123456789";
/// Bound on opening one node's share of the idle visitors (the generator's own bound is
/// 45 s).
const HOLD_OPEN: Duration = Duration::from_secs(60);
/// Bound on the final echo over every idle visitor (each echo is bounded by 5 s, all run
/// at once).
const HOLD_CHECK: Duration = Duration::from_secs(15);
/// How often a node that does not accept the tunnel's port yet is tried again.
pub const MIRROR_RETRY: Duration = Duration::from_millis(20);
/// The processes measured, after Redis in `Running::procs`: the nodes, then the client.
const ROLES: [&str; 4] = ["a", "b", "c", "client"];

impl Harness {
    pub(crate) fn cluster(
        &mut self,
        sys: &System,
        round: usize,
        m: &mut BTreeMap<String, f64>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        let backend = self.backend_port()?;
        let mut run = start(sys, &self.env, backend)?;
        let result = (|| {
            let port = run.port;
            let at = |i: usize| format!("{}:{port}", NODES[i].1);
            let t0 = Instant::now();
            for i in 1..NODES.len() {
                wait_accepting(&at(i), MIRROR_WITHIN)?;
            }
            metric(m, "mirror_ms", t0.elapsed().as_secs_f64() * 1e3);
            self.rss_nodes("fresh", &run, m);
            let mut order = [("holder", at(0)), ("peer", at(1))];
            if round % 2 == 1 {
                order.reverse();
            }
            for (side, addr) in &order {
                for (streams, key) in [(1, "tcp1"), (4, "tcp4")] {
                    let g = self.bulk_to(addr, streams)?;
                    metric(m, &format!("{side}_{key}_gbps"), g);
                    run.check_alive()?;
                    run.drain();
                }
            }
            // The path of a ping-pong: the nodes, the client and the backend.
            let mut path = run.pgids()[1..].to_vec();
            if let Some((p, _)) = &self.backend {
                path.push(p.pid());
            }
            for (side, addr) in &order {
                let (p50, p99) = self.rtt_at(addr, None).map_err(|e| format!("rtt: {e}"))?;
                metric(m, &format!("{side}_rtt_p50_us"), p50);
                metric(m, &format!("{side}_rtt_p99_us"), p99);
                let (p50, p99) = self
                    .rtt_at(addr, Some(&path))
                    .map_err(|e| format!("rtt on one core: {e}"))?;
                metric(m, &format!("{side}_rtt1cpu_p50_us"), p50);
                metric(m, &format!("{side}_rtt1cpu_p99_us"), p99);
                run.check_alive()?;
                run.drain();
            }
            self.idle_visitors(&mut run, &at, m, notes)
        })();
        run.stop();
        result
    }

    /// `IDLE_VISITORS` idle visitors, a `hold` process per node; RSS once they are all
    /// open, then one echo on each.
    fn idle_visitors(
        &self,
        run: &mut Running,
        at: &dyn Fn(usize) -> String,
        m: &mut BTreeMap<String, f64>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut holds = Vec::new();
        for (i, (name, _)) in NODES.iter().enumerate() {
            let share = IDLE_VISITORS / NODES.len() + usize::from(i < IDLE_VISITORS % NODES.len());
            let args = ["hold".to_string(), "--addr".into(), at(i)];
            let mut h = self.load(&format!("hold via {name}"), &args, true)?;
            h.send_line(&format!("add {share}"))?;
            holds.push((*name, share, h));
        }
        let mut held = 0.0;
        for (name, share, h) in &mut holds {
            let v = h.wait_for(HOLD_OPEN, json_with("held"))?;
            let n = v["held"].as_f64().unwrap_or(0.0);
            held += n;
            metric(m, &format!("held_{name}"), n);
            if n < *share as f64 {
                let why = v["error"].as_str().unwrap_or("");
                notes.push(format!("via {name}: {n} of {share} opened: {why}"));
            }
        }
        metric(m, "held", held);
        self.rss_nodes("idle1k", run, m);
        run.check_alive()?;
        let mut alive = 0.0;
        for (name, _, h) in &mut holds {
            h.send_line("check")?;
            let v = h.wait_for(HOLD_CHECK, json_with("alive"))?;
            let (n, of) = (v["alive"].as_f64().unwrap_or(0.0), v["checked"].as_f64());
            alive += n;
            if Some(n) != of {
                let why = v["error"].as_str().unwrap_or("");
                notes.push(format!("via {name}: {n} of {of:?} still echo: {why}"));
            }
        }
        metric(m, "alive", alive);
        for (_, _, mut h) in holds {
            h.stop();
        }
        if held == 0.0 {
            return Err(format!("no idle visitor got through: {}", notes.join("; ")));
        }
        run.check_alive()
    }

    /// RSS of each node and of the client, `rss_{phase}_{role}_mib`, once it settled.
    fn rss_nodes(&self, phase: &str, run: &Running, m: &mut BTreeMap<String, f64>) {
        let groups = &run.pgids()[1..];
        settled_rss_kib(groups);
        for (role, pg) in ROLES.iter().zip(groups) {
            let mib = group_rss_kib(*pg) as f64 / 1024.0;
            metric(m, &format!("rss_{phase}_{role}_mib"), mib);
        }
    }
}

fn json_with(key: &'static str) -> impl FnMut(&str) -> Option<serde_json::Value> {
    move |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .filter(|v| v.get(key).is_some())
    }
}

/// Redis (no persistence, loopback, a free port), the nodes, and the client on node `a`
/// forwarding to `backend`. `procs`: Redis, the nodes in `NODES` order, the client.
fn start(sys: &System, env: &Env, backend: u16) -> Result<Running, String> {
    let redis_port = free_tcp_port();
    let mut redis = Proc::spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&env.work),
        false,
    )?;
    redis.wait_for(READY, |l| {
        l.contains("Ready to accept connections").then_some(())
    })?;
    let url = format!("redis://127.0.0.1:{redis_port}/");
    let mut procs = vec![redis];
    let mut control = String::new();
    for (name, ip) in NODES {
        let mut node = Proc::spawn(
            &format!("{} piped {name}", sys.name),
            Command::new(sys.bin_dir.join("piped"))
                .envs(sys.env.clone())
                .args(["--listen", &format!("{ip}:0"), "--bind-addr", ip])
                .args(["--cluster", &url, "--node", name, "--token", TOKEN])
                .args(["--cluster-secret", CLUSTER_SECRET])
                // A directory that starts empty grants new claims only after one lease
                // (a node it forgot may still serve them): a short lease keeps each
                // round's start short. Renewals then run every 0.5 s.
                .args(["--cluster-lease", &format!("{}s", LEASE.as_secs())])
                .args(["--peer-listen", &format!("{ip}:0")]),
            false,
        )?;
        let addr = node.wait_for(READY, |l| {
            l.strip_prefix("listening on ")
                .map(|a| a.trim().to_string())
        })?;
        node.wait_for(READY, |l| l.starts_with("peer on ").then_some(()))?;
        if control.is_empty() {
            control = addr;
        }
        procs.push(node);
    }
    let mut client = Proc::spawn(
        &format!("{} pipec", sys.name),
        Command::new(sys.bin_dir.join("pipec"))
            .envs(sys.env.clone())
            .args(["--server", &control, "--token", TOKEN])
            .args(["--forward", &format!("tcp:127.0.0.1:{backend}:0")]),
        false,
    )?;
    let port = client.wait_for(READY, |l| {
        l.strip_prefix("forwarding tcp://")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|u| u.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
    })?;
    procs.push(client);
    Ok(Running {
        procs,
        port,
        ports: vec![port],
        inspect: None,
    })
}

/// Connects to `addr` until it accepts, up to `within` (the connection is closed at once:
/// the backend sees one empty visitor).
fn wait_accepting(addr: &str, within: Duration) -> Result<(), String> {
    let a: SocketAddr = addr.parse().map_err(|_| format!("address {addr}"))?;
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect_timeout(&a, within) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{addr} not accepting after {within:?}: {e}"))
            }
            Err(_) => std::thread::sleep(MIRROR_RETRY),
        }
    }
}
