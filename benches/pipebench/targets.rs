//! The targets of issues 5 and 15 as data: most are a ratio of two systems' medians on
//! one metric with a bound, evaluated against a run; memory given back is a bound on one
//! process's own figures. The table in the report is this list.

use crate::harness::{Sample, MEM_STEPS};
use crate::stats::med;

/// Which way a ratio has to fall.
#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

/// One "ours / theirs" target.
struct Ratio {
    measure: &'static str,
    workload: &'static str,
    metric: &'static str,
    ours: &'static str,
    theirs: &'static str,
    bound: Bound,
    unit: &'static str,
    decimals: usize,
}

const fn ratio(
    measure: &'static str,
    (workload, metric): (&'static str, &'static str),
    (ours, theirs): (&'static str, &'static str),
    bound: Bound,
    (unit, decimals): (&'static str, usize),
) -> Ratio {
    Ratio {
        measure,
        workload,
        metric,
        ours,
        theirs,
        bound,
        unit,
        decimals,
    }
}

const GBPS: (&str, usize) = ("Gbit/s", 2);
const CONNS: (&str, usize) = ("conn/s", 0);
const MICROS: (&str, usize) = ("µs", 1);
const RELAY: (&str, &str) = ("relay", "socat");
const VS_RATHOLE: (&str, &str) = ("pipe", "rathole");
const VS_BORE: (&str, &str) = ("pipe", "bore");

/// Issue 5's table, one row per measure (throughput once for 1 and once for 4 streams),
/// and issue 15's p99 and after-load rows.
const RATIOS: [Ratio; 13] = [
    ratio(
        "relay / socat throughput, 1 stream",
        ("tcp", "tcp1_gbps"),
        RELAY,
        Bound::AtLeast(1.3),
        GBPS,
    ),
    ratio(
        "relay / socat throughput, 4 streams",
        ("tcp", "tcp4_gbps"),
        RELAY,
        Bound::AtLeast(1.3),
        GBPS,
    ),
    ratio(
        "relay / socat new connections per second",
        ("echo", "conn_per_s"),
        RELAY,
        Bound::AtLeast(2.0),
        CONNS,
    ),
    ratio(
        "tunnel / rathole throughput, 1 stream",
        ("tcp", "tcp1_gbps"),
        VS_RATHOLE,
        Bound::AtLeast(1.1),
        GBPS,
    ),
    ratio(
        "tunnel / rathole throughput, 4 streams",
        ("tcp", "tcp4_gbps"),
        VS_RATHOLE,
        Bound::AtLeast(1.1),
        GBPS,
    ),
    ratio(
        "tunnel / bore throughput, 1 stream",
        ("tcp", "tcp1_gbps"),
        VS_BORE,
        Bound::AtLeast(1.1),
        GBPS,
    ),
    ratio(
        "tunnel / bore throughput, 4 streams",
        ("tcp", "tcp4_gbps"),
        VS_BORE,
        Bound::AtLeast(1.1),
        GBPS,
    ),
    ratio(
        "tunnel / rathole p50 RTT (1-byte ping-pong)",
        ("echo", "rtt_p50_us"),
        VS_RATHOLE,
        Bound::AtMost(1.0),
        MICROS,
    ),
    ratio(
        "(same, every process on one core; not the target, a steadier view)",
        ("echo", "rtt1cpu_p50_us"),
        VS_RATHOLE,
        Bound::AtMost(1.0),
        MICROS,
    ),
    ratio(
        "tunnel / rathole p99 RTT (1-byte ping-pong)",
        ("echo", "rtt_p99_us"),
        VS_RATHOLE,
        Bound::AtMost(1.0),
        MICROS,
    ),
    ratio(
        "(same p99, every process on one core)",
        ("echo", "rtt1cpu_p99_us"),
        VS_RATHOLE,
        Bound::AtMost(1.0),
        MICROS,
    ),
    ratio(
        "tunnel / rathole new connections per second",
        ("echo", "conn_per_s"),
        VS_RATHOLE,
        Bound::AtLeast(1.0),
        CONNS,
    ),
    ratio(
        "tunnel / rathole RSS with 1,000 idle connections, after the bulk load",
        ("mem", "rss_1k_mib"),
        VS_RATHOLE,
        Bound::AtMost(0.5),
        ("MiB", 1),
    ),
];

/// One evaluated row of the targets table.
pub struct Target {
    pub measure: String,
    pub target: String,
    pub ours: Option<f64>,
    pub theirs: Option<f64>,
    pub ratio: Option<f64>,
    /// None: a side has no number (the report says why elsewhere).
    pub met: Option<bool>,
    pub unit: &'static str,
    pub decimals: usize,
}

impl Ratio {
    fn evaluate(&self, s: &[Sample]) -> Target {
        let a = med(s, self.workload, self.ours, self.metric);
        let b = med(s, self.workload, self.theirs, self.metric);
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let (target, met) = match self.bound {
            Bound::AtLeast(x) => (format!("≥ {x}"), ratio.map(|r| r >= x)),
            Bound::AtMost(x) => (format!("≤ {x}"), ratio.map(|r| r <= x)),
        };
        Target {
            measure: self.measure.into(),
            target,
            ours: a,
            theirs: b,
            ratio,
            met,
            unit: self.unit,
            decimals: self.decimals,
        }
    }
}

/// Issue 15: RSS 10 s after the bulk load may exceed the fresh figure by this much.
pub const GIVE_BACK_SLACK_MIB: f64 = 8.0;

/// Memory given back by one of pipe's processes (`role` "server" is piped, "client"
/// pipec); rathole's same process beside it for context.
fn give_back(s: &[Sample], role: &str, name: &str) -> Target {
    let m = |sys, phase| med(s, "mem", sys, &format!("rss_{phase}_{role}_mib"));
    let fresh = m("pipe", "fresh");
    let ours = m("pipe", "idle10s");
    Target {
        measure: format!("{name} RSS 10 s after the bulk load (peer: rathole's {role})"),
        target: match fresh {
            Some(f) => {
                format!("≤ fresh + {GIVE_BACK_SLACK_MIB} MiB ({f:.1} + {GIVE_BACK_SLACK_MIB})")
            }
            None => format!("≤ fresh + {GIVE_BACK_SLACK_MIB} MiB"),
        },
        ours,
        theirs: m("rathole", "idle10s"),
        ratio: None,
        met: ours.zip(fresh).map(|(o, f)| o <= f + GIVE_BACK_SLACK_MIB),
        unit: "MiB",
        decimals: 1,
    }
}

/// Every target of issues 5 and 15, evaluated against the run.
pub fn targets(s: &[Sample]) -> Vec<Target> {
    let mut t: Vec<Target> = RATIOS.iter().map(|r| r.evaluate(s)).collect();
    t.push(give_back(s, "server", "piped"));
    t.push(give_back(s, "client", "pipec"));
    let held = med(s, "mem", "pipe", "held_10k");
    t.push(Target {
        measure: "10,000 idle tunnelled connections all work".into(),
        target: "10,000 of 10,000".into(),
        ours: held,
        theirs: med(s, "mem", "rathole", "held_10k"),
        ratio: None,
        met: held.map(|h| h >= MEM_STEPS[1] as f64),
        unit: "connections",
        decimals: 0,
    });
    t
}

/// RSS per connection at the largest step: (RSS there − RSS just before the first
/// connection) / connections held.
pub fn per_conn_kib(s: &[Sample], sys: &str) -> Option<f64> {
    // Runs saved before the bulk load came first have no `rss_base_mib`.
    let idle = med(s, "mem", sys, "rss_base_mib").or_else(|| med(s, "mem", sys, "rss_idle_mib"))?;
    let rss = med(s, "mem", sys, "rss_10k_mib")?;
    let held = med(s, "mem", sys, "held_10k")?;
    (held > 0.0).then(|| (rss - idle) * 1024.0 / held)
}
