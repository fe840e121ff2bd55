//! The workloads of issues 15 and 16, driven by the bulk load processes (`bulk.rs`):
//!
//! - memory given back (part of `mem`): RSS of each process fresh, right after a
//!   1-stream and a 4-stream bulk upload, and `GIVE_BACK_WITHIN` after going idle;
//! - `stall`: 200 visitors of one tunnel start endless downloads and never read, while a
//!   sibling tunnel of the same client session carries a bulk upload; RSS, the kernel's
//!   TCP memory and the sibling's throughput before, during and after (once they closed);
//! - `inspect`: a 32 MiB HTTP/1.1 response through an inspected pipe forward and through
//!   a plain one of the same `pipec`.
//!
//! Metric names say the phase and the process: `rss_{phase}_{server|client}_mib`, where
//! "server" is the first process of the system (piped, rathole's server, the relay,
//! socat) and "client" the second (pipec, rathole's client, `bore local`).

use crate::harness::{metric, Harness, GIVE_BACK_WITHIN, SLACK};
use crate::procs::{group_rss_kib, settled_rss_kib, tcp_mem_pages, tcp_mem_pressure_pages};
use crate::systems::{self, Forward, Running, System};
use crate::workloads::last_json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Visitors of the stalled tunnel (issue 15's measurement).
pub const STALLED: usize = 200;
/// Longest wait for the stalled downloads to fill every buffer on their way.
const STALL_SETTLE: Duration = Duration::from_secs(15);
/// How often the stall's memory is read while it settles.
const SETTLE_POLL: Duration = Duration::from_millis(500);
/// Bound on opening the stalled visitors (the generator's own bound is 45 s).
const STALL_OPEN: Duration = Duration::from_secs(60);
/// The `bulk` generator's own bounds past its run time (a write 5 s, the half-close 5 s,
/// the drain 20 s), and start-up.
const BULK_SLACK: Duration = Duration::from_secs(35);
/// The inspector row's response body (issue 16: "for a 32 MiB response").
const INSPECT_BODY: u64 = 32 << 20;
/// Downloads per forward per round: their median is the round's figure.
const INSPECT_GETS: usize = 5;
/// The `httpget` generator's bound on one download.
const GET_DEADLINE: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;
/// Most of the inspector API's answer read: a few exchanges' metadata, far below this.
const INSPECT_API_MAX: u64 = 4 << 20;

fn role(i: usize) -> String {
    match i {
        0 => "server".into(),
        1 => "client".into(),
        n => format!("p{n}"),
    }
}

impl Harness {
    /// RSS of each of the system's processes, as `rss_{phase}_{role}_mib`.
    fn rss_each(&self, phase: &str, run: &Running, m: &mut BTreeMap<String, f64>) {
        for (i, pg) in run.pgids().iter().enumerate() {
            let mib = group_rss_kib(*pg) as f64 / 1024.0;
            metric(m, &format!("rss_{phase}_{}_mib", role(i)), mib);
        }
    }

    /// A bulk upload of `streams` streams through `port` to the backend's sink, Gbit/s.
    fn bulk(&self, port: u16, streams: usize) -> Result<f64, String> {
        self.bulk_to(&format!("127.0.0.1:{port}"), streams)
    }

    /// The same through `addr` (`IP:PORT`): the cluster's nodes listen on other loopback
    /// addresses than 127.0.0.1.
    pub(crate) fn bulk_to(&self, addr: &str, streams: usize) -> Result<f64, String> {
        let secs = self.opts.iperf_secs;
        let p = self.load(
            "bulk",
            &[
                "bulk".into(),
                "--addr".into(),
                addr.to_string(),
                "--streams".into(),
                streams.to_string(),
                "--secs".into(),
                secs.to_string(),
            ],
            false,
        )?;
        let v = last_json(p.wait_done(Duration::from_secs(secs.into()) + BULK_SLACK))?;
        if let Some(e) = v["error"].as_str() {
            return Err(format!("bulk: {e}"));
        }
        v["gbps"].as_f64().ok_or_else(|| "bulk: no gbps".into())
    }

    /// The memory-given-back rows: fresh, right after the bulk load, and
    /// `GIVE_BACK_WITHIN` later. Leaves the processes idle for the rows that follow.
    pub(crate) fn give_back(
        &mut self,
        run: &mut Running,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        self.rss_each("fresh", run, m);
        for (streams, key) in [(1, "load1_gbps"), (4, "load4_gbps")] {
            let g = self.bulk(run.port, streams)?;
            metric(m, key, g);
            run.check_alive()?;
            run.drain();
        }
        let idle_since = Instant::now();
        self.rss_each("loaded", run, m);
        std::thread::sleep(GIVE_BACK_WITHIN.saturating_sub(idle_since.elapsed()));
        self.rss_each("idle10s", run, m);
        run.check_alive()
    }

    pub(crate) fn stall(
        &mut self,
        sys: &System,
        m: &mut BTreeMap<String, f64>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        let backend = self.backend_port()?;
        let fw = Forward {
            backend,
            inspect: false,
        };
        let mut run = systems::start_forwards(sys, &self.env, &[fw, fw])?;
        let result = (|| {
            let (stalled_port, sibling) = (run.ports[0], run.ports[1]);
            settled_rss_kib(&run.pgids());
            if let Some(p) = tcp_mem_pressure_pages() {
                metric(m, "tcpmem_pressure_mib", p as f64 * self.page_size / MIB);
            }
            self.stall_phase("before", &mut run, sibling, m, notes)?;
            let mut st = self.load(
                "stall",
                &[
                    "stall".into(),
                    "--addr".into(),
                    format!("127.0.0.1:{stalled_port}"),
                    "--count".into(),
                    STALLED.to_string(),
                ],
                true,
            )?;
            let v = st.wait_for(STALL_OPEN, |l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .filter(|v| v.get("stalled").is_some())
            })?;
            let n = v["stalled"].as_f64().unwrap_or(0.0);
            metric(m, "stalled", n);
            if n < STALLED as f64 {
                let why = v["error"].as_str().unwrap_or("");
                notes.push(format!("{n} of {STALLED} visitors stalled: {why}"));
            }
            if n == 0.0 {
                return Err(format!(
                    "no visitor's download started: {}",
                    notes.join("; ")
                ));
            }
            if !self.settle_stall(&run) {
                notes.push(format!("memory still growing after {STALL_SETTLE:?}"));
            }
            self.stall_phase("during", &mut run, sibling, m, notes)?;
            st.close_stdin();
            st.wait_for(SLACK, |l| l.contains("\"closed\"").then_some(()))?;
            let closed = Instant::now();
            std::thread::sleep(GIVE_BACK_WITHIN.saturating_sub(closed.elapsed()));
            self.stall_phase("after", &mut run, sibling, m, notes)?;
            st.stop();
            Ok(())
        })();
        run.stop();
        result
    }

    /// Waits until the kernel's TCP memory and the system's RSS stop growing (two
    /// readings a poll apart within 1%), up to `STALL_SETTLE`. False if they did not.
    fn settle_stall(&self, run: &Running) -> bool {
        let read = || {
            let rss: u64 = run.pgids().iter().map(|p| group_rss_kib(*p)).sum();
            (tcp_mem_pages().unwrap_or(0), rss)
        };
        let close = |a: u64, b: u64| a.abs_diff(b) * 100 <= a.max(1);
        let deadline = Instant::now() + STALL_SETTLE;
        let mut last = read();
        while Instant::now() < deadline {
            std::thread::sleep(SETTLE_POLL);
            let now = read();
            if close(last.0, now.0) && close(last.1, now.1) {
                return true;
            }
            last = now;
        }
        false
    }

    /// One phase of the stall: RSS and kernel TCP memory first, then the sibling's bulk
    /// upload (which allocates on its own). A sibling that fails is a note, not an error:
    /// that it fails under the stall is what the row is for.
    fn stall_phase(
        &self,
        phase: &str,
        run: &mut Running,
        sibling: u16,
        m: &mut BTreeMap<String, f64>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        self.rss_each(phase, run, m);
        if let Some(p) = tcp_mem_pages() {
            metric(
                m,
                &format!("tcpmem_{phase}_mib"),
                p as f64 * self.page_size / MIB,
            );
        }
        match self.bulk(sibling, 1) {
            Ok(g) => metric(m, &format!("sibling_{phase}_gbps"), g),
            Err(e) => notes.push(format!("{phase}: sibling tunnel: {e}")),
        }
        run.check_alive()?;
        run.drain();
        Ok(())
    }

    /// Issue 16: one pipec, an inspected and a plain forward to the same HTTP backend;
    /// which goes first alternates round by round.
    pub(crate) fn inspect(
        &mut self,
        sys: &System,
        round: usize,
        m: &mut BTreeMap<String, f64>,
    ) -> Result<(), String> {
        let backend = self.backend_port()?;
        let forwards = [
            Forward {
                backend,
                inspect: false,
            },
            Forward {
                backend,
                inspect: true,
            },
        ];
        let mut run = systems::start_forwards(sys, &self.env, &forwards)?;
        let result = (|| {
            let mut order = [("plain", run.ports[0]), ("inspect", run.ports[1])];
            if round % 2 == 1 {
                order.reverse();
            }
            for (key, port) in order {
                let g = self.http_gets(port)?;
                metric(m, &format!("http_{key}_gbps"), g);
                run.check_alive()?;
                run.drain();
            }
            if let (Some(i), Some(p)) = (m.get("http_inspect_gbps"), m.get("http_plain_gbps")) {
                let r = i / p;
                metric(m, "http_inspect_ratio", r);
            }
            // The inspector must have seen the downloads, or the row measures nothing.
            let addr = run
                .inspect
                .clone()
                .ok_or("pipec started without an inspector")?;
            let seen = inspected_ok(&addr)?;
            metric(m, "inspected_exchanges", seen as f64);
            if seen < INSPECT_GETS {
                return Err(format!(
                    "the inspector lists {seen} successful exchanges, want {INSPECT_GETS}"
                ));
            }
            Ok(())
        })();
        run.stop();
        result
    }

    /// `INSPECT_GETS` downloads of `INSPECT_BODY` through `port`: their median, Gbit/s.
    fn http_gets(&self, port: u16) -> Result<f64, String> {
        let p = self.load(
            "httpget",
            &[
                "httpget".into(),
                "--addr".into(),
                format!("127.0.0.1:{port}"),
                "--size".into(),
                INSPECT_BODY.to_string(),
                "--count".into(),
                INSPECT_GETS.to_string(),
            ],
            false,
        )?;
        let v = last_json(p.wait_done(GET_DEADLINE * INSPECT_GETS as u32 + SLACK))?;
        if let Some(e) = v["error"].as_str() {
            return Err(format!("httpget: {e}"));
        }
        let mut g: Vec<f64> = v["gbps"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        g.sort_by(|a, b| a.total_cmp(b));
        g.get(g.len() / 2)
            .copied()
            .ok_or_else(|| "httpget: no result".into())
    }
}

/// How many exchanges with status 200 the inspector's API (`GET /api/requests`) lists.
fn inspected_ok(addr: &str) -> Result<usize, String> {
    use std::io::{Read, Write};
    let e = |e: std::io::Error| format!("inspector API at {addr}: {e}");
    let a: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("inspector address {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&a, SLACK).map_err(e)?;
    s.set_read_timeout(Some(SLACK)).map_err(e)?;
    s.write_all(b"GET /api/requests HTTP/1.1\r\nHost: pipebench\r\nConnection: close\r\n\r\n")
        .map_err(e)?;
    let mut text = String::new();
    s.take(INSPECT_API_MAX)
        .read_to_string(&mut text)
        .map_err(e)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let list: serde_json::Value = serde_json::from_str(body)
        .map_err(|err| format!("inspector API: {err}: {}", short_head(&text)))?;
    Ok(list.as_array().map_or(0, |a| {
        a.iter()
            .filter(|x| x["status"].as_u64() == Some(200))
            .count()
    }))
}

fn short_head(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}
