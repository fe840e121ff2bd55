//! The emulated network of the wan workload: two network namespaces (`A`, the server's
//! side, and `B`, the client's side) joined only by the link emulator (`linkemu`), and
//! the links it is asked to emulate.
//!
//! `benches/run.sh` creates the two namespaces (and deletes them, and whatever still
//! runs in them, on exit or Ctrl-C); this module prepares them (loopback up, the TCP
//! settings every run shares), starts and configures one emulator per link, and builds
//! the commands that run inside either namespace. Every address is in 198.18.0.0/15
//! (RFC 2544's benchmarking range) and exists only inside the two namespaces.

use crate::linkemu::{Path, TUN_NAME};
use crate::procs::Proc;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Side `A`'s address on the link (the server side: piped, rathole server, bore server,
/// and the visitors).
pub const ADDR_A: &str = "198.18.0.1";
/// Side `B`'s address on the link (the client side: pipec, rathole client, bore local,
/// and the local service).
pub const ADDR_B: &str = "198.18.0.2";
/// The link's MTU: Ethernet's, what a path over the Internet carries.
const MTU: &str = "1500";
/// Packets the kernel queues for the emulator to read. tun drops what does not fit
/// rather than pushing back on the sender, so a short queue (500, the default) turns
/// every scheduling hiccup of the emulator into losses no real path would have.
const TXQUEUELEN: &str = "5000";
/// The congestion control asked for, when the kernel offers it (the issue measured
/// with it; Linux's default, cubic, is what the run falls back to).
const WANT_CC: &str = "bbr";
/// Largest TCP send and receive buffer (`tcp_wmem`/`tcp_rmem` max): the stock send
/// maximum, also used for receiving so neither side's buffer hides the other's.
const TCP_BUF_MAX: u64 = 4 << 20;
/// How long the emulator gets to open its devices.
const EMU_READY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// The two namespaces, by name, and the congestion control set in them.
#[derive(Clone, Debug)]
pub struct Netns {
    pub a: String,
    pub b: String,
    pub cc: String,
}

/// One link to emulate: its name in the report (`50ms+1%`), round trip and loss.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    pub label: String,
    pub rtt: Duration,
    pub loss_pct: f64,
}

/// The links of a full run: the table.
pub const DEFAULT_LINKS: &str = "0ms,20ms,50ms,100ms,50ms+1%";

impl LinkSpec {
    /// `RTTms` or `RTTms+LOSS%`, e.g. `50ms+1%`: the round trip (half of it each way)
    /// and the share of packets lost in each direction.
    pub fn parse(s: &str) -> Result<LinkSpec, String> {
        let bad = || format!("link {s:?}: want RTTms or RTTms+LOSS%, e.g. 50ms or 50ms+1%");
        let (rtt, loss) = match s.split_once('+') {
            Some((r, l)) => (r, Some(l.strip_suffix('%').ok_or_else(bad)?)),
            None => (s, None),
        };
        let ms: f64 = rtt
            .strip_suffix("ms")
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite() && *v >= 0.0 && *v <= 10_000.0)
            .ok_or_else(bad)?;
        let loss_pct = match loss {
            Some(l) => l
                .parse::<f64>()
                .ok()
                .filter(|v| (0.0..100.0).contains(v))
                .ok_or_else(bad)?,
            None => 0.0,
        };
        Ok(LinkSpec {
            label: s.to_string(),
            rtt: Duration::from_secs_f64(ms / 1e3),
            loss_pct,
        })
    }

    /// Every link of a comma-separated list, or the first that does not parse.
    pub fn parse_list(s: &str) -> Result<Vec<LinkSpec>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| LinkSpec::parse(p.trim()))
            .collect()
    }
}

fn ns_file(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Runs `ip` with `args`; fails with what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// The namespaces `PREFIX-a` and `PREFIX-b` (made by benches/run.sh), prepared:
    /// loopback up, the congestion control and the TCP buffer limits set in both.
    pub fn prepare(prefix: &str) -> Result<Netns, String> {
        let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
        for n in [&a, &b] {
            if !std::path::Path::new(&ns_file(n)).exists() {
                return Err(format!(
                    "network namespace {n} does not exist (run through benches/run.sh as root)"
                ));
            }
        }
        let offered =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .unwrap_or_default();
        let cc = if offered.split_whitespace().any(|c| c == WANT_CC) {
            WANT_CC
        } else {
            "cubic"
        };
        // min, default, max: Linux's own min and defaults, the max above.
        let settings = [
            format!("net.ipv4.tcp_congestion_control={cc}"),
            format!("net.ipv4.tcp_wmem=4096 16384 {TCP_BUF_MAX}"),
            format!("net.ipv4.tcp_rmem=4096 131072 {TCP_BUF_MAX}"),
        ];
        for n in [&a, &b] {
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            for s in &settings {
                ip(&["netns", "exec", n, "sysctl", "-q", "-w", s])?;
            }
        }
        Ok(Netns {
            a,
            b,
            cc: cc.to_string(),
        })
    }

    pub fn name(&self, side: Side) -> &str {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// `program` to be run inside `side`'s namespace (`ip netns exec` execs it, so the
    /// process started is the program itself).
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(side)]).arg(program);
        c
    }

    /// Starts the emulator for `link` at `rate_mbit` (0: no cap) and gives both tun
    /// devices their address and MTU. The link is up when this returns; stopping the
    /// returned process removes both devices.
    pub fn start_link(
        &self,
        me: &std::path::Path,
        link: &LinkSpec,
        rate_mbit: f64,
    ) -> Result<Proc, String> {
        let rtt_ms = (link.rtt.as_secs_f64() * 1e3).to_string();
        let mut emu = Proc::spawn(
            &format!("linkemu {}", link.label),
            Command::new(me).args([
                "linkemu",
                "--ns-a",
                &ns_file(&self.a),
                "--ns-b",
                &ns_file(&self.b),
                "--rtt-ms",
                &rtt_ms,
                "--loss-pct",
                &link.loss_pct.to_string(),
                "--rate-mbit",
                &rate_mbit.to_string(),
            ]),
            true,
        )?;
        emu.wait_for(EMU_READY, |l| l.starts_with("tun up").then_some(()))?;
        for (n, local, peer) in [(&self.a, ADDR_A, ADDR_B), (&self.b, ADDR_B, ADDR_A)] {
            ip(&["-n", n, "addr", "add", local, "peer", peer, "dev", TUN_NAME])?;
            ip(&[
                "-n",
                n,
                "link",
                "set",
                TUN_NAME,
                "mtu",
                MTU,
                "txqueuelen",
                TXQUEUELEN,
                "up",
            ])?;
        }
        Ok(emu)
    }
}

/// The emulator's counters, summed over both directions: (tail drops, random losses).
pub fn link_drops(emu: &mut Proc) -> Option<(f64, f64)> {
    emu.drain();
    emu.send_line("stats").ok()?;
    let v = emu
        .wait_for(EMU_READY, |l| {
            serde_json::from_str::<serde_json::Value>(l).ok()
        })
        .ok()?;
    let sum = |k: &str| {
        ["a_to_b", "b_to_a"]
            .iter()
            .map(|d| v[d][k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    Some((sum("tail_dropped"), sum("lost")))
}

/// What the report says about a link's path, one way.
pub fn describe(link: &LinkSpec, rate_mbit: f64) -> String {
    let p = Path::new(link.rtt, link.loss_pct / 100.0, Some(rate_mbit * 1e6));
    format!(
        "{:.0} ms each way, {} % loss each way, {rate_mbit:.0} Mbit/s, a {:.0} KiB buffer",
        p.one_way.as_secs_f64() * 1e3,
        link.loss_pct,
        p.queue_bytes / 1024.0
    )
}
