//! Watches the rest of the machine while the harness measures: how much CPU processes
//! that are not ours (another build, say) used, overall and during each sample, so the
//! report can say which figures were taken on a busy machine. It does not decide
//! anything; it only records.
//!
//! "Ours" is the harness and every descendant, live or reaped (a reaped child's time
//! moves into its parent's `cutime`, so the sum stays continuous). "Busy" is the user,
//! nice and system time of /proc/stat; interrupt and softirq time and kernel threads
//! (loopback packet processing, mostly ours) are left out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the machine is looked at: short enough to attribute other work to the
/// samples (a few seconds each), cheap enough (one pass over /proc) not to disturb them.
const INTERVAL: Duration = Duration::from_secs(1);
/// Foreign processes named in the report.
const TOP: usize = 4;

/// One interval: when it ended and how many cores other processes kept busy in it.
#[derive(Clone, Copy)]
struct Tick {
    end: Instant,
    secs: f64,
    foreign_cores: f64,
}

#[derive(Default)]
struct State {
    ticks: Vec<Tick>,
    /// CPU seconds of foreign processes, by command name.
    by_name: HashMap<String, f64>,
}

pub struct Monitor {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

/// What the report says about the machine during the run.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Summary {
    /// Mean cores used by other processes over the whole run.
    pub mean_cores: f64,
    /// The busiest interval.
    pub peak_cores: f64,
    /// Share of the run during which other processes used more than a quarter core.
    pub busy_share: f64,
    /// The other processes that used the most CPU: (command, CPU seconds).
    pub top: Vec<(String, f64)>,
}

/// A process as /proc/PID/stat shows it.
struct ProcStat {
    ppid: u32,
    comm: String,
    /// utime + stime, ticks.
    own: u64,
    /// utime + stime + cutime + cstime, ticks.
    total: u64,
}

fn read_procs() -> HashMap<u32, ProcStat> {
    let mut out = HashMap::new();
    for (pid, comm, fields) in crate::procs::proc_stats() {
        let f: Vec<u64> = fields.iter().map(|v| v.parse().unwrap_or(0)).collect();
        // After the name: state (parsed as 0), ppid, …, utime f[11], stime f[12],
        // cutime f[13], cstime f[14].
        if f.len() < 15 {
            continue;
        }
        let own = f[11] + f[12];
        out.insert(
            pid,
            ProcStat {
                ppid: f[1] as u32,
                comm,
                own,
                total: own + f[13] + f[14],
            },
        );
    }
    out
}

/// user + nice + system of the whole machine, ticks.
fn machine_busy() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            Some(f.first()? + f.get(1)? + f.get(2)?)
        })
        .unwrap_or(0)
}

/// Ticks used by kernel threads (ksoftirqd carries much of our own loopback traffic, so
/// they are not counted as other work).
fn kernel_ticks(procs: &HashMap<u32, ProcStat>) -> u64 {
    procs
        .iter()
        .filter(|(pid, p)| p.ppid == 2 || **pid == 2)
        .map(|(_, p)| p.own)
        .sum()
}

/// Ticks used by the harness and every descendant, and the set of their pids.
fn ours(procs: &HashMap<u32, ProcStat>, me: u32) -> (u64, HashSet<u32>) {
    let mut mine = HashSet::from([me]);
    // Parents before children is not guaranteed: repeat until nothing is added.
    loop {
        let before = mine.len();
        for (pid, p) in procs {
            if mine.contains(&p.ppid) {
                mine.insert(*pid);
            }
        }
        if mine.len() == before {
            break;
        }
    }
    // A descendant's `total` already holds its reaped children: count each live process
    // once, through its own total, and our own reaped children through ours.
    let ticks = mine
        .iter()
        .filter_map(|pid| procs.get(pid))
        .map(|p| p.total)
        .sum();
    (ticks, mine)
}

impl Monitor {
    pub fn start(ticks_per_sec: f64) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State::default()));
        let (s, st) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || watch(&s, &st, ticks_per_sec));
        Monitor {
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// Mean cores other processes used between `from` and `to`.
    pub fn foreign_cores(&self, from: Instant, to: Instant) -> Option<f64> {
        let st = self.state.lock().ok()?;
        let (mut secs, mut cores) = (0.0, 0.0);
        for t in st.ticks.iter().filter(|t| t.end > from && t.end <= to) {
            secs += t.secs;
            cores += t.foreign_cores * t.secs;
        }
        (secs > 0.0).then(|| cores / secs)
    }

    pub fn finish(mut self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let Ok(st) = self.state.lock() else {
            return Summary::default();
        };
        let total: f64 = st.ticks.iter().map(|t| t.secs).sum();
        let weighted = |f: &dyn Fn(&Tick) -> f64| st.ticks.iter().map(f).sum::<f64>();
        let mut top: Vec<(String, f64)> = st.by_name.iter().map(|(k, v)| (k.clone(), *v)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(TOP);
        Summary {
            mean_cores: weighted(&|t| t.foreign_cores * t.secs) / total.max(1e-9),
            peak_cores: st.ticks.iter().map(|t| t.foreign_cores).fold(0.0, f64::max),
            busy_share: weighted(&|t| if t.foreign_cores > 0.25 { t.secs } else { 0.0 })
                / total.max(1e-9),
            top,
        }
    }
}

fn watch(stop: &AtomicBool, state: &Mutex<State>, ticks_per_sec: f64) {
    let me = std::process::id();
    let mut last_at = Instant::now();
    let mut last_busy = machine_busy();
    let mut procs = read_procs();
    let mut last_ours = ours(&procs, me).0 + kernel_ticks(&procs);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(INTERVAL);
        let now = Instant::now();
        let busy = machine_busy();
        let next = read_procs();
        let (our_ticks, mine) = ours(&next, me);
        let our_ticks = our_ticks + kernel_ticks(&next);
        let secs = now.duration_since(last_at).as_secs_f64();
        let foreign =
            busy.saturating_sub(last_busy) as f64 - our_ticks.saturating_sub(last_ours) as f64;
        let Ok(mut st) = state.lock() else { return };
        st.ticks.push(Tick {
            end: now,
            secs,
            foreign_cores: (foreign / ticks_per_sec / secs).max(0.0),
        });
        for (pid, p) in &next {
            if mine.contains(pid) || p.ppid == 2 || *pid == 2 {
                continue; // ours, or a kernel thread
            }
            // A process not seen before started during this interval.
            let before = procs.get(pid).map_or(0, |q| q.own);
            let d = p.own.saturating_sub(before) as f64 / ticks_per_sec;
            if d > 0.0 {
                *st.by_name.entry(p.comm.clone()).or_default() += d;
            }
        }
        drop(st);
        (last_at, last_busy, last_ours, procs) = (now, busy, our_ticks, next);
    }
}
