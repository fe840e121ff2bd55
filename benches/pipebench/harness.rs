//! The orchestrator: rounds of workloads over systems, in an order that rotates every
//! round so machine drift (other builds, thermal state) hits every system alike.
//!
//! Every system is started fresh for each (workload, round) and stopped after it, so no
//! measurement inherits another's sockets, TIME_WAIT entries or allocator state. Within
//! one (workload, round) the steps follow each other on the same processes: the memory
//! workload's idle connections are held by processes that have carried its bulk load.

use crate::monitor::Monitor;
use crate::procs::Proc;
use crate::systems::{
    Env, Kind, System, PIPE, PIPE_TLS, PIPE_UDP, RATHOLE, RATHOLE_NOISE, RATHOLE_UDP,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Slack on top of a measurement's own duration before its process is killed.
pub const SLACK: Duration = Duration::from_secs(12);
/// A system that failed this many rounds in a row is skipped for the rest of the
/// workload (a feature not built yet must not cost every round its timeouts).
pub(crate) const GIVE_UP_AFTER: usize = 2;
/// Connections held for the memory workload: the first step, then the total.
pub const MEM_STEPS: [usize; 2] = [1_000, 10_000];
/// How long after a load the memory workload reads RSS again: issue 15's target is that
/// memory is back within 10 s.
pub const GIVE_BACK_WITHIN: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Opts {
    pub rounds: usize,
    pub mem_rounds: usize,
    pub iperf_secs: u32,
    pub conn_secs: f64,
    pub conn_workers: usize,
    pub rtt_secs: f64,
    /// The offered rate of the fixed-rate UDP row (iperf3 `-b`); a second row is unlimited.
    pub udp_rate: String,
    pub udp_len: u32,
    pub workloads: Vec<String>,
    pub only: Option<Vec<String>>,
    /// Rounds of the wan workload (each is one pass over every system on every link).
    pub wan_rounds: usize,
    /// The links the wan workload emulates (`wan_net::LinkSpec`), comma-separated.
    pub links: String,
    /// The prefix of the wan workload's two network namespaces (`PREFIX-a`, `PREFIX-b`).
    pub wan_ns: Option<String>,
}

/// One build of `piped`/`pipec` to measure: the main one, then any A/B variants.
#[derive(Clone, Debug)]
pub struct PipeBuild {
    pub label: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Sample {
    pub workload: String,
    pub system: String,
    pub round: usize,
    pub metrics: BTreeMap<String, f64>,
    pub error: Option<String>,
    /// What went wrong without spoiling the sample (e.g. a peer died at 10,000).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Mean cores other processes on the machine used while this sample was taken.
    #[serde(default)]
    pub busy_elsewhere: Option<f64>,
}

pub struct Harness {
    pub opts: Opts,
    pub env: Env,
    pub me: PathBuf,
    pub ticks: f64,
    pub samples: Vec<Sample>,
    pub started: Instant,
    pub monitor: Monitor,
    pub(crate) echo: Option<(Proc, u16)>,
    /// The sink / download / HTTP backend of `bulk` (one process for the whole run).
    pub(crate) backend: Option<(Proc, u16)>,
    /// Bytes per page, for /proc/net/sockstat.
    pub page_size: f64,
}

/// The systems of each workload. `variants` adds every pipe system again with other
/// binaries, for A/B runs while tuning.
pub fn systems_for(workload: &str, pipe_bins: &[PipeBuild]) -> Vec<System> {
    let tcp = [
        ("direct", Kind::Direct),
        ("relay", Kind::Relay),
        ("socat", Kind::Socat),
        ("pipe", PIPE),
        ("rathole", RATHOLE),
        ("bore", Kind::Bore),
        ("pipe-tls", PIPE_TLS),
        ("rathole-noise", RATHOLE_NOISE),
    ];
    let base: Vec<(&str, Kind)> = match workload {
        "tcp" | "echo" => tcp.to_vec(),
        "udp" => vec![
            ("direct", Kind::Direct),
            ("pipe", PIPE_UDP),
            ("rathole", RATHOLE_UDP),
        ],
        "mem" => vec![
            ("relay", Kind::Relay),
            ("socat", Kind::Socat),
            ("pipe", PIPE),
            ("rathole", RATHOLE),
            ("bore", Kind::Bore),
        ],
        // Two forwards on one client session: the tunnels that can hold them.
        "stall" => vec![("pipe", PIPE), ("rathole", RATHOLE)],
        // No peer has an inspector, nor a cluster.
        "inspect" | "cluster" | "signin" => vec![("pipe", PIPE)],
        // The table: the tunnels and the bare link, across the emulated link.
        "wan" => vec![
            ("direct", Kind::Direct),
            ("pipe", PIPE),
            ("rathole", RATHOLE),
            ("bore", Kind::Bore),
        ],
        _ => vec![],
    };
    let mut out = Vec::new();
    for (i, b) in pipe_bins.iter().enumerate() {
        for (name, kind) in &base {
            let ours = matches!(kind, Kind::Relay | Kind::Pipe { .. });
            if i > 0 && !ours {
                continue;
            }
            let name = if i == 0 || !ours {
                name.to_string()
            } else {
                format!("{name}@{}", b.label)
            };
            out.push(System {
                name,
                kind: *kind,
                bin_dir: b.dir.clone(),
                env: b.env.clone(),
            });
        }
    }
    out
}

pub fn metric(m: &mut BTreeMap<String, f64>, k: &str, v: f64) {
    m.insert(k.to_string(), v);
}

impl Harness {
    pub fn new(opts: Opts, env: Env, me: PathBuf) -> Harness {
        let getconf = |name: &str, default: f64| {
            Command::new("getconf")
                .arg(name)
                .output()
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
                .unwrap_or(default)
        };
        let ticks = getconf("CLK_TCK", 100.0);
        Harness {
            opts,
            env,
            me,
            ticks,
            samples: Vec::new(),
            started: Instant::now(),
            monitor: Monitor::start(ticks),
            echo: None,
            backend: None,
            page_size: getconf("PAGESIZE", 4096.0),
        }
    }

    pub(crate) fn log(&self, msg: &str) {
        eprintln!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    pub(crate) fn load(&self, name: &str, args: &[String], stdin: bool) -> Result<Proc, String> {
        Proc::spawn(name, Command::new(&self.me).args(args), stdin)
    }

    /// The shared echo backend (one process for the whole run).
    pub(crate) fn echo_port(&mut self) -> Result<u16, String> {
        let mut slot = self.echo.take();
        let r = self.shared(&mut slot, "echo");
        self.echo = slot;
        r
    }

    /// The shared bulk backend (`pipebench backend`, one process for the whole run).
    pub(crate) fn backend_port(&mut self) -> Result<u16, String> {
        let mut slot = self.backend.take();
        let r = self.shared(&mut slot, "backend");
        self.backend = slot;
        r
    }

    /// Starts the load subcommand `name` as a backend in `slot`, unless it still runs.
    fn shared(&self, slot: &mut Option<(Proc, u16)>, name: &str) -> Result<u16, String> {
        if let Some((p, port)) = slot {
            if p.alive() {
                p.drain();
                return Ok(*port);
            }
        }
        let mut p = self.load(name, &[name.into()], false)?;
        let port = p.wait_for(Duration::from_secs(5), |l| {
            l.strip_prefix("listening on ")
                .and_then(|p| p.trim().parse().ok())
        })?;
        *slot = Some((p, port));
        Ok(port)
    }

    pub fn run(&mut self, pipe_bins: &[PipeBuild]) {
        let workloads = self.opts.workloads.clone();
        for w in &workloads {
            let mut systems = systems_for(w, pipe_bins);
            if let Some(only) = &self.opts.only {
                systems.retain(|s| {
                    only.iter()
                        .any(|o| s.name == *o || s.name.split('@').next() == Some(o.as_str()))
                });
            }
            if systems.is_empty() {
                continue;
            }
            // Links × rounds × systems, with a link emulator of its own (`wan`).
            if w == "wan" {
                self.wan(&systems);
                continue;
            }
            let rounds = if w == "mem" || w == "stall" {
                self.opts.mem_rounds
            } else {
                self.opts.rounds
            };
            for round in 0..rounds {
                let n = systems.len();
                for i in 0..n {
                    let sys = &systems[(i + round) % n];
                    let failures = self
                        .samples
                        .iter()
                        .rev()
                        .filter(|s| s.workload == *w && s.system == sys.name)
                        .take(GIVE_UP_AFTER)
                        .filter(|s| s.error.is_some())
                        .count();
                    if round >= GIVE_UP_AFTER && failures == GIVE_UP_AFTER {
                        continue;
                    }
                    let t0 = Instant::now();
                    let sample = self.measure(w, sys, round);
                    let summary = match &sample.error {
                        Some(e) => format!("ERROR {e}"),
                        None => sample
                            .metrics
                            .iter()
                            .map(|(k, v)| format!("{k}={v:.3}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    };
                    self.log(&format!(
                        "{w} r{} {:<16} {summary} ({:.1}s, other processes {:.2} cores)",
                        round + 1,
                        sys.name,
                        t0.elapsed().as_secs_f64(),
                        sample.busy_elsewhere.unwrap_or(0.0),
                    ));
                    self.samples.push(sample);
                }
            }
        }
        for (mut p, _) in [self.echo.take(), self.backend.take()]
            .into_iter()
            .flatten()
        {
            p.stop();
        }
    }

    fn measure(&mut self, workload: &str, sys: &System, round: usize) -> Sample {
        let mut metrics = BTreeMap::new();
        let mut notes = Vec::new();
        let t0 = Instant::now();
        let result = match workload {
            "tcp" => self.tcp(sys, &mut metrics),
            "udp" => self.udp(sys, &mut metrics),
            "echo" => self.echo_workload(sys, &mut metrics),
            "mem" => self.mem(sys, &mut metrics, &mut notes),
            "stall" => self.stall(sys, &mut metrics, &mut notes),
            "inspect" => self.inspect(sys, round, &mut metrics),
            "cluster" => self.cluster(sys, round, &mut metrics, &mut notes),
            "signin" => self.signin(sys, round, &mut metrics),
            other => Err(format!("unknown workload {other}")),
        };
        Sample {
            workload: workload.into(),
            system: sys.name.clone(),
            round,
            metrics,
            error: result.err(),
            notes,
            busy_elsewhere: self.monitor.foreign_cores(t0, Instant::now()),
        }
    }
}
