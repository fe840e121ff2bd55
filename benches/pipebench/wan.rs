//! The wan workload ("Fast on real links"): every system across an emulated link of
//! 0 to 100 ms, with and without loss, at a 1 Gbit/s bottleneck. First the emulator's
//! own ceiling (iperf3 straight through it, no cap, no delay); then, link by link, rounds
//! of every system in an order that rotates each round, each (system, link, round)
//! started fresh and driven by one `wanload` process in namespace `A`.
//!
//! It owns the order and the bookkeeping: the network is `wan_net`, the systems'
//! placement `wan_peers`, the load `wanload`, the report `report_wan`.

use crate::harness::{metric, Harness, Sample, GIVE_UP_AFTER, SLACK};
use crate::load::OP_TIMEOUT;
use crate::procs::{free_dual_port, group_cpu_secs, wait_listening_in, Proc};
use crate::systems::System;
use crate::wan_net::{link_drops, LinkSpec, Netns, Side, ADDR_B};
use crate::wan_peers;
use crate::workloads::last_json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Samples of the emulator's own ceiling.
pub const CEILING: &str = "wan-ceiling";
/// The system name of the ceiling's samples.
pub const EMULATOR: &str = "linkemu";
/// The bottleneck of every link: the 1 Gbit/s.
pub const RATE_MBIT: f64 = 1000.0;
/// Seconds of a bulk download before its rate is taken: BBR's start-up and the tunnels'
/// window growth take a few round trips, ~1 s at 100 ms.
pub const WARMUP_SECS: f64 = 2.0;
/// Seconds over which a rate or a share is taken.
pub const WINDOW_SECS: f64 = 3.0;
/// Seconds a sibling download runs beside the first before its share is taken.
pub const SETTLE_SECS: f64 = 2.0;
/// New visitors timed while a download runs.
pub const ECHOES: usize = 50;
/// One new visitor every this many ms (open loop: a slow answer does not delay the next).
pub const ECHO_EVERY_MS: u64 = 60;
/// Parallel downloads of the N-streams measure.
pub const STREAMS: usize = 4;
/// iperf3 seconds for each ceiling measure.
const CEILING_SECS: u32 = 5;
/// Seconds of 1-byte ping-pong through the bare link for its added round trip.
const CEILING_RTT_SECS: &str = "2";

/// The workload name of one link's samples, e.g. `wan 50ms+1%`.
pub fn workload_name(link: &str) -> String {
    format!("wan {link}")
}

/// Upper bound of one `wanload` run, from its plan.
fn wanload_budget() -> Duration {
    let secs = 2.0 * (WARMUP_SECS + WINDOW_SECS)
        + SETTLE_SECS
        + WINDOW_SECS
        + (ECHOES as u64 * ECHO_EVERY_MS) as f64 / 1e3;
    Duration::from_secs_f64(secs) + OP_TIMEOUT + SLACK
}

impl Harness {
    /// Runs the whole wan workload over `systems` and records its samples.
    pub(crate) fn wan(&mut self, systems: &[System]) {
        let links = match LinkSpec::parse_list(&self.opts.links) {
            Ok(l) => l,
            Err(e) => return self.wan_failed(systems, &[], &e),
        };
        let prefix = self.opts.wan_ns.clone().unwrap_or_default();
        let net = match Netns::prepare(&prefix) {
            Ok(n) => n,
            Err(e) => return self.wan_failed(systems, &links, &e),
        };
        self.log(&format!(
            "wan: namespaces {} and {}, congestion control {}",
            net.a, net.b, net.cc
        ));
        let mut backend = match self.backend_in(&net) {
            Ok(b) => b,
            Err(e) => return self.wan_failed(systems, &links, &e),
        };
        let ceiling = self.wan_ceiling(&net, backend.1);
        self.log_sample(&ceiling, Instant::now());
        self.samples.push(ceiling);
        for link in &links {
            let mut emu = match net.start_link(&self.me, link, RATE_MBIT) {
                Ok(e) => e,
                Err(e) => {
                    self.wan_failed(systems, std::slice::from_ref(link), &e);
                    continue;
                }
            };
            let w = workload_name(&link.label);
            for round in 0..self.opts.wan_rounds {
                let n = systems.len();
                for i in 0..n {
                    let sys = &systems[(i + round) % n];
                    if round >= GIVE_UP_AFTER && self.failing(&w, &sys.name) {
                        continue;
                    }
                    let t0 = Instant::now();
                    let mut s = self.wan_sample(sys, &net, &mut emu, backend.1);
                    (s.workload, s.round) = (w.clone(), round);
                    self.log_sample(&s, t0);
                    self.samples.push(s);
                }
            }
            emu.stop();
        }
        backend.0.stop();
    }

    /// Did `sys` fail its last `GIVE_UP_AFTER` samples of workload `w`?
    fn failing(&self, w: &str, sys: &str) -> bool {
        let last = self
            .samples
            .iter()
            .rev()
            .filter(|s| s.workload == w && s.system == sys)
            .take(GIVE_UP_AFTER);
        last.clone().count() == GIVE_UP_AFTER
            && last.filter(|s| s.error.is_some()).count() == GIVE_UP_AFTER
    }

    fn log_sample(&self, s: &Sample, t0: Instant) {
        let summary = match &s.error {
            Some(e) => format!("ERROR {e}"),
            None => s
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        self.log(&format!(
            "{} r{} {:<8} {summary} ({:.1}s)",
            s.workload,
            s.round + 1,
            s.system,
            t0.elapsed().as_secs_f64()
        ));
    }

    /// One error sample per (link, system): the report shows why there are no numbers.
    fn wan_failed(&mut self, systems: &[System], links: &[LinkSpec], why: &str) {
        self.log(&format!("wan: {why}"));
        let labels: Vec<String> = match links {
            [] => vec![CEILING.into()],
            l => l.iter().map(|l| workload_name(&l.label)).collect(),
        };
        for w in labels {
            for sys in systems {
                self.samples.push(Sample {
                    workload: w.clone(),
                    system: sys.name.clone(),
                    round: 0,
                    metrics: BTreeMap::new(),
                    error: Some(why.to_string()),
                    notes: vec![],
                    busy_elsewhere: None,
                });
            }
        }
    }

    /// The local service in `B`, on every address of `B` (`direct` reaches it over the
    /// link), for the whole workload.
    fn backend_in(&self, net: &Netns) -> Result<(Proc, u16), String> {
        let mut p = Proc::spawn(
            "wan backend",
            net.command(Side::B, &self.me)
                .args(["backend", "--bind", "0.0.0.0"]),
            false,
        )?;
        let port = p.wait_for(Duration::from_secs(5), |l| {
            l.strip_prefix("listening on ")
                .and_then(|p| p.trim().parse().ok())
        })?;
        Ok((p, port))
    }

    /// The emulator with no cap and no delay: iperf3 from `B` to `A` (the direction of
    /// the downloads), 1 and 4 streams, the cores the emulator used meanwhile, and the
    /// round trip it adds to a 1-byte ping-pong.
    fn wan_ceiling(&mut self, net: &Netns, backend: u16) -> Sample {
        let t0 = Instant::now();
        let mut m = BTreeMap::new();
        let result = (|| {
            let bare = LinkSpec::parse("0ms")?;
            let mut emu = net.start_link(&self.me, &bare, 0.0)?;
            let r = self.ceiling_measures(net, &emu, backend, &mut m);
            emu.stop();
            r
        })();
        Sample {
            workload: CEILING.into(),
            system: EMULATOR.into(),
            round: 0,
            metrics: m,
            error: result.err(),
            notes: vec![],
            busy_elsewhere: self.monitor.foreign_cores(t0, Instant::now()),
        }
    }

    fn ceiling_measures(
        &self,
        net: &Netns,
        emu: &Proc,
        backend: u16,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        let port = free_dual_port().to_string();
        let mut server = Proc::spawn(
            "iperf3 server (B)",
            net.command(Side::B, "iperf3").args(["-s", "-p", &port]),
            false,
        )?;
        let port_n: u16 = port.parse().unwrap_or_default();
        wait_listening_in(server.pid(), port_n, Duration::from_secs(5))?;
        let result = (|| {
            for (streams, key) in [("1", "tcp1"), ("4", "tcp4")] {
                let cpu0 = group_cpu_secs(emu.pid(), self.ticks);
                let t = Instant::now();
                let secs = CEILING_SECS.to_string();
                let p = Proc::spawn(
                    "iperf3 (A)",
                    net.command(Side::A, "iperf3")
                        .args(["-c", ADDR_B, "-p", &port, "-t", &secs, "-R", "-J"])
                        .args(["-P", streams, "--connect-timeout", "5000"]),
                    false,
                )?;
                let out = p.wait_done(Duration::from_secs(CEILING_SECS as u64) + SLACK);
                let cores =
                    (group_cpu_secs(emu.pid(), self.ticks) - cpu0) / t.elapsed().as_secs_f64();
                let text = out.join("\n");
                let v: serde_json::Value = text
                    .find('{')
                    .and_then(|i| serde_json::from_str(&text[i..]).ok())
                    .ok_or_else(|| format!("iperf3 printed no JSON: {text}"))?;
                if let Some(e) = v["error"].as_str() {
                    return Err(format!("iperf3: {e}"));
                }
                let bps = v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .ok_or("iperf3: no bits_per_second")?;
                metric(m, &format!("{key}_mbps"), bps / 1e6);
                metric(m, &format!("{key}_emu_cores"), cores);
                server.drain();
            }
            let rtt = Proc::spawn(
                "rtt (A)",
                net.command(Side::A, &self.me).args([
                    "rtt",
                    "--addr",
                    &format!("{ADDR_B}:{backend}"),
                    "--secs",
                    CEILING_RTT_SECS,
                ]),
                false,
            )?;
            let v = last_json(rtt.wait_done(Duration::from_secs(2) + SLACK))?;
            if let Some(e) = v["error"].as_str() {
                return Err(format!("rtt: {e}"));
            }
            metric(m, "rtt_p50_us", v["p50_us"].as_f64().unwrap_or(f64::NAN));
            metric(m, "rtt_p99_us", v["p99_us"].as_f64().unwrap_or(f64::NAN));
            Ok(())
        })();
        server.stop();
        result
    }

    /// One (system, link, round): the system started across the link, one `wanload`
    /// through it, the system stopped. The emulator's drops during it go in as metrics.
    fn wan_sample(&mut self, sys: &System, net: &Netns, emu: &mut Proc, backend: u16) -> Sample {
        let t0 = Instant::now();
        let mut m = BTreeMap::new();
        let before = link_drops(emu);
        let result = (|| {
            let mut on = wan_peers::start(sys, &self.env, net, backend)?;
            let r = self.wanload(net, &on.visitor, &mut m);
            let alive = on.run.check_alive();
            on.run.stop();
            r.and(alive)
        })();
        if let (Some(b), Some(a)) = (before, link_drops(emu)) {
            metric(&mut m, "link_tail_drops", a.0 - b.0);
            metric(&mut m, "link_lost", a.1 - b.1);
        }
        Sample {
            workload: String::new(),
            system: sys.name.clone(),
            round: 0,
            metrics: m,
            error: result.err(),
            notes: vec![],
            busy_elsewhere: self.monitor.foreign_cores(t0, Instant::now()),
        }
    }

    fn wanload(
        &self,
        net: &Netns,
        visitor: &str,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        let s = |x: f64| x.to_string();
        let p = Proc::spawn(
            "wanload",
            net.command(Side::A, &self.me).args([
                "wanload".to_string(),
                "--addr".into(),
                visitor.to_string(),
                "--warmup".into(),
                s(WARMUP_SECS),
                "--window".into(),
                s(WINDOW_SECS),
                "--settle".into(),
                s(SETTLE_SECS),
                "--echoes".into(),
                ECHOES.to_string(),
                "--echo-every-ms".into(),
                ECHO_EVERY_MS.to_string(),
                "--streams".into(),
                STREAMS.to_string(),
            ]),
            false,
        )?;
        let v = last_json(p.wait_done(wanload_budget()))?;
        if let Some(e) = v["error"].as_str() {
            return Err(e.to_string());
        }
        for k in [
            "one_mbps",
            "four_mbps",
            "echo_p50_ms",
            "echo_p99_ms",
            "echo_failed",
            "share_pct",
            "pair_mbps",
        ] {
            let x = v[k]
                .as_f64()
                .ok_or_else(|| format!("wanload: no {k}: {v}"))?;
            metric(m, k, x);
        }
        Ok(())
    }
}
