//! The workloads: what one (workload, system, round) measures and how. Each starts the
//! system fresh, drives it with iperf3 or a load process of ours, and stops it. The
//! workloads of issues 15 and 16 (memory given back, stalled visitors, the inspector)
//! are in `stress`.

use crate::harness::{metric, Harness, MEM_STEPS, SLACK};
use crate::procs::{free_dual_port, group_cpu_secs, pin_group, settled_rss_kib, Proc};
use crate::systems::{self, Kind, Running, System};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

impl Harness {
    fn iperf_server(&self) -> Result<(Proc, u16), String> {
        let port = free_dual_port();
        let p = Proc::spawn(
            "iperf3 server",
            Command::new("iperf3").args(["-s", "-p", &port.to_string()]),
            false,
        )?;
        crate::procs::wait_listening(port, Duration::from_secs(5))?;
        Ok((p, port))
    }

    /// Runs an iperf3 client against `port`; returns its JSON report.
    fn iperf(&self, port: u16, extra: &[&str]) -> Result<serde_json::Value, String> {
        let (secs, port) = (self.opts.iperf_secs.to_string(), port.to_string());
        let mut args = vec!["-c", "127.0.0.1", "-p", &port, "-t", &secs, "-J"];
        args.extend_from_slice(&["--connect-timeout", "5000"]);
        args.extend_from_slice(extra);
        let p = Proc::spawn("iperf3", Command::new("iperf3").args(&args), false)?;
        let out = p.wait_done(Duration::from_secs(self.opts.iperf_secs as u64) + SLACK);
        let text = out.join("\n");
        let start = text
            .find('{')
            .ok_or_else(|| format!("iperf3 printed no JSON: {text}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&text[start..]).map_err(|e| format!("iperf3 JSON: {e}"))?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return Err(format!("iperf3: {e}"));
        }
        Ok(v)
    }

    /// Every CPU, as taskset writes it (`0-1`).
    fn cpus(&self) -> String {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("0-{}", n - 1)
    }

    fn cpu(&self, run: &Running) -> f64 {
        run.pgids()
            .iter()
            .map(|p| group_cpu_secs(*p, self.ticks))
            .sum()
    }

    pub(crate) fn tcp(
        &mut self,
        sys: &System,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        self.with_iperf(sys, None, |h, run, server| {
            for (streams, key) in [("1", "tcp1"), ("4", "tcp4")] {
                let cpu0 = h.cpu(run);
                let v = h.iperf(run.port, &["-P", streams])?;
                let cpu = h.cpu(run) - cpu0;
                let sum = &v["end"]["sum_received"];
                let bps = sum["bits_per_second"]
                    .as_f64()
                    .ok_or("no bits_per_second")?;
                let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
                metric(m, &format!("{key}_gbps"), bps / 1e9);
                if sys.kind != Kind::Direct && bytes > 0.0 {
                    metric(m, &format!("{key}_cpu_s_per_gb"), cpu / (bytes / 1e9));
                }
                settle(run, server)?;
            }
            Ok(())
        })
    }

    /// Starts an iperf3 server and `sys` in front of it, runs `body`, and stops both
    /// whatever `body` returns.
    fn with_iperf(
        &mut self,
        sys: &System,
        public: Option<u16>,
        body: impl FnOnce(&Self, &mut Running, &mut Proc) -> Result<(), String>,
    ) -> Result<(), String> {
        let (mut server, backend) = self.iperf_server()?;
        let mut run = systems::start(sys, &self.env, backend, public)?;
        let result = body(self, &mut run, &mut server);
        run.stop();
        server.stop();
        result
    }

    /// `iperf3 -u` at the fixed offered rate (`udp_*`: loss at a rate every system should
    /// carry) and unlimited (`udpmax_*`: the most each forward carries, and what it drops).
    pub(crate) fn udp(
        &mut self,
        sys: &System,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        self.with_iperf(sys, Some(free_dual_port()), |h, run, server| {
            let len = h.opts.udp_len.to_string();
            let rate = h.opts.udp_rate.clone();
            for (key, rate) in [("udp", rate.as_str()), ("udpmax", "0")] {
                let v = h.iperf(run.port, &["-u", "-b", rate, "-l", &len])?;
                let end = &v["end"];
                let sum = match &end["sum_received"] {
                    s if s.is_object() => s,
                    _ => &end["sum"],
                };
                let bps = sum["bits_per_second"]
                    .as_f64()
                    .ok_or("no bits_per_second")?;
                metric(m, &format!("{key}_gbps"), bps / 1e9);
                // Loss as the receiving iperf3 counted it (`sum` carries the server's view).
                let loss = end["sum"]["lost_percent"]
                    .as_f64()
                    .or_else(|| sum["lost_percent"].as_f64());
                metric(m, &format!("{key}_loss_pct"), loss.unwrap_or(f64::NAN));
                settle(run, server)?;
            }
            Ok(())
        })
    }

    pub(crate) fn echo_workload(
        &mut self,
        sys: &System,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        let backend = self.echo_port()?;
        let mut run = systems::start(sys, &self.env, backend, None)?;
        let result = (|| {
            let addr = format!("127.0.0.1:{}", run.port);
            let p = self.load(
                "connrate",
                &[
                    "connrate".into(),
                    "--addr".into(),
                    addr.clone(),
                    "--workers".into(),
                    self.opts.conn_workers.to_string(),
                    "--secs".into(),
                    self.opts.conn_secs.to_string(),
                ],
                false,
            )?;
            let v = last_json(p.wait_done(Duration::from_secs_f64(self.opts.conn_secs) + SLACK))?;
            let ok = v["ok"].as_f64().unwrap_or(0.0);
            let errors = v["errors"].as_f64().unwrap_or(0.0);
            if ok == 0.0 || errors > ok * 0.01 {
                return Err(format!(
                    "connrate: {ok} ok, {errors} failed: {}",
                    v["last_error"].as_str().unwrap_or("")
                ));
            }
            metric(m, "conn_per_s", v["per_sec"].as_f64().unwrap_or(0.0));
            run.drain();
            let (p50, p99) = self.rtt_at(&addr, None).map_err(|e| format!("rtt: {e}"))?;
            metric(m, "rtt_p50_us", p50);
            metric(m, "rtt_p99_us", p99);
            let mut pgids = run.pgids();
            if let Some((p, _)) = &self.echo {
                pgids.push(p.pid());
            }
            let (p50, p99) = self
                .rtt_at(&addr, Some(&pgids))
                .map_err(|e| format!("rtt on one core: {e}"))?;
            metric(m, "rtt1cpu_p50_us", p50);
            metric(m, "rtt1cpu_p99_us", p99);
            run.check_alive()
        })();
        run.stop();
        result
    }

    /// One `rtt` load process against `addr`: (p50, p99) µs. With `pin`, every process
    /// group of the path (`pin`) and the load itself run on CPU 0 only, and get every CPU
    /// back after: with no cross-core wake-ups the figure is the software's own cost and
    /// stable from run to run (unpinned, where the scheduler puts the processes moves p50
    /// between two modes on a 2-core VM).
    pub(crate) fn rtt_at(&self, addr: &str, pin: Option<&[u32]>) -> Result<(f64, f64), String> {
        let args = [
            "rtt".to_string(),
            "--addr".into(),
            addr.to_string(),
            "--secs".into(),
            self.opts.rtt_secs.to_string(),
        ];
        let p = match pin {
            None => self.load("rtt", &args, false),
            Some(groups) => {
                for g in groups {
                    pin_group(*g, "0");
                }
                Proc::spawn(
                    "rtt pinned",
                    Command::new("taskset")
                        .arg("-c")
                        .arg("0")
                        .arg(&self.me)
                        .args(&args),
                    false,
                )
            }
        };
        let v = p.and_then(|p| {
            last_json(p.wait_done(Duration::from_secs_f64(self.opts.rtt_secs) + SLACK))
        });
        let all = self.cpus();
        for g in pin.unwrap_or_default() {
            pin_group(*g, &all);
        }
        let v = v?;
        if let Some(e) = v["error"].as_str() {
            return Err(e.to_string());
        }
        let p = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok((p("p50_us"), p("p99_us")))
    }

    pub(crate) fn mem(
        &mut self,
        sys: &System,
        m: &mut BTreeMap<String, f64>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        let backend = self.backend_port()?;
        let mut run = systems::start(sys, &self.env, backend, None)?;
        let result = (|| {
            let pg = run.pgids();
            metric(m, "rss_idle_mib", settled_rss_kib(&pg) as f64 / 1024.0);
            // Issue 15: the idle connections below are held by processes that have
            // carried a bulk load and then been idle for GIVE_BACK_WITHIN.
            self.give_back(&mut run, m)?;
            metric(m, "rss_base_mib", settled_rss_kib(&pg) as f64 / 1024.0);
            let mut hold = self.load(
                "hold",
                &[
                    "hold".into(),
                    "--addr".into(),
                    format!("127.0.0.1:{}", run.port),
                ],
                true,
            )?;
            let mut total = 0;
            for target in MEM_STEPS {
                // socat forks a process per connection: 10,000 of them says nothing new.
                if sys.kind == Kind::Socat && target > MEM_STEPS[0] {
                    break;
                }
                hold.send_line(&format!("add {}", target - total))?;
                total = target;
                let v = hold.wait_for(Duration::from_secs(60), |l| {
                    serde_json::from_str::<serde_json::Value>(l).ok()
                })?;
                let mut held = v["held"].as_f64().unwrap_or(0.0);
                let k = target / 1000;
                let rss = settled_rss_kib(&pg) as f64 / 1024.0;
                let dead = run.check_alive().err();
                run.drain();
                if let Some(why) = &dead {
                    // Connections through a dead process do not work, whatever was held.
                    held = 0.0;
                    notes.push(format!("at {target}: {why}"));
                } else {
                    metric(m, &format!("rss_{k}k_mib"), rss);
                }
                metric(m, &format!("held_{k}k"), held);
                if held < target as f64 {
                    let failed = target as f64 - held;
                    metric(m, &format!("failed_{k}k"), failed);
                    if dead.is_none() {
                        let why = v["error"].as_str().unwrap_or("");
                        notes.push(format!("at {target}: {failed} failed: {why}"));
                    }
                    if target == MEM_STEPS[0] {
                        return Err(format!(
                            "only {held} of {target} connections worked: {}",
                            notes.join("; ")
                        ));
                    }
                    break;
                }
            }
            hold.stop();
            Ok(())
        })();
        run.stop();
        result
    }
}

pub(crate) fn last_json(lines: Vec<String>) -> Result<serde_json::Value, String> {
    lines
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("no result: {}", lines.join(" | ")))
}

/// Between two iperf3 measurements: the system must still run; the output of both
/// sides is taken in.
fn settle(run: &mut Running, server: &mut Proc) -> Result<(), String> {
    run.check_alive()?;
    run.drain();
    server.drain();
    Ok(())
}
