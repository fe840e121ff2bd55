//! `linkemu`: the link emulator of the wan workload, run as a process of its own. It
//! opens one tun device in each of two network namespaces and carries every IP packet
//! between them the way a real path would: a bottleneck of a fixed rate with a router's
//! buffer in front of it (tail drop), a constant propagation delay each way, and random
//! loss. The kernel here has no netem, so this is what stands in for it.
//!
//! One thread per direction, each reading its tun in batches and writing a packet to the
//! other tun once its release time has come. The delay is constant per link, so release
//! times never go backwards and a FIFO is the whole timer wheel.
//!
//! It owns the devices only: addresses, routes and sysctls are set by the orchestrator
//! (`wan_net`) once this process prints `tun up`. It runs until its stdin closes (the
//! orchestrator stops it, or died), its parent dies, or `MAX_LIFETIME` passes. On the
//! line `stats` it prints each direction's counters as one JSON line.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tun device's name in both namespaces (each namespace has its own).
pub const TUN_NAME: &str = "wan0";
/// Packets read from one tun before the due ones are written: enough to amortise the
/// wake-up, few enough that a due packet never waits long (~64 × 2 µs).
const READ_BATCH: usize = 64;
/// The longest a direction sleeps when nothing is queued: how soon it notices `stop`.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Largest packet a tun hands over (no offloads are enabled, so in practice the MTU).
const MAX_PACKET: usize = 65_536;
/// However it is left behind, the emulator ends after this long (a full wan run takes
/// under half an hour).
const MAX_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// The bottleneck's burst: how far back an idle bottleneck may count itself as having
/// been sending. When this thread waits for a CPU, the kernel keeps queueing packets in
/// the tun; read later, they come as one burst that a real path would have carried as
/// they came. Without this credit a few milliseconds of scheduling delay overflowed the
/// 0 ms link's buffer (tens of thousands of tail drops per sample, at under half the
/// rate). It makes the bottleneck a token bucket of this depth, as `tbf` is.
pub const BURST: Duration = Duration::from_millis(5);
/// The router's buffer is at least this deep, in time at the link's rate, so that a
/// 0 ms link still absorbs the bursts of a few TCP windows.
pub const MIN_QUEUE: Duration = Duration::from_millis(2);

/// One direction of the path.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    /// Propagation delay one way.
    pub one_way: Duration,
    /// Fraction of packets lost at random, 0..1.
    pub loss: f64,
    /// Bottleneck rate, bits per second; `None` for no cap.
    pub rate_bps: Option<f64>,
    /// The bottleneck's buffer, bytes: a packet that would queue beyond it is dropped.
    pub queue_bytes: f64,
}

impl Path {
    /// A path of round trip `rtt` (half of it each way), `loss` each way and `rate_bps`,
    /// with a buffer of one bandwidth-delay product (at least `MIN_QUEUE`), the usual
    /// rule for a router in front of a long path.
    pub fn new(rtt: Duration, loss: f64, rate_bps: Option<f64>) -> Path {
        let queue_secs = rtt.max(MIN_QUEUE).as_secs_f64();
        Path {
            one_way: rtt / 2,
            loss,
            rate_bps,
            queue_bytes: rate_bps.map_or(f64::INFINITY, |r| r / 8.0 * queue_secs),
        }
    }
}

/// Counters of one direction, read by `stats`.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    tail_dropped: AtomicU64,
    write_failed: AtomicU64,
}

impl Counters {
    fn json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "packets": g(&self.packets), "bytes": g(&self.bytes), "lost": g(&self.lost),
            "tail_dropped": g(&self.tail_dropped), "write_failed": g(&self.write_failed),
        })
    }
}

/// `linkemu --ns-a PATH --ns-b PATH --rtt-ms R --loss-pct L --rate-mbit M` (M = 0: no
/// cap). PATH is a network namespace file (`/var/run/netns/NAME`).
pub fn linkemu(args: &[String]) {
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let num = |name: &str| get(name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let (Some(ns_a), Some(ns_b)) = (get("--ns-a"), get("--ns-b")) else {
        eprintln!("linkemu: --ns-a and --ns-b are required");
        std::process::exit(2);
    };
    let rate = num("--rate-mbit");
    let path = Path::new(
        Duration::from_secs_f64(num("--rtt-ms") / 1e3),
        num("--loss-pct") / 100.0,
        (rate > 0.0).then_some(rate * 1e6),
    );
    die_with_parent();
    default_priority();
    let (a, b) = match (open_tun_in(ns_a), open_tun_in(ns_b)) {
        (Ok(a), Ok(b)) => (Arc::new(a), Arc::new(b)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("linkemu: cannot open the tun devices: {e}");
            std::process::exit(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
    for (i, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
        let (stop, c) = (stop.clone(), counters[i].clone());
        // Each direction gets its own generator, so the two never share a lock.
        let seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
        std::thread::spawn(move || pump(&from, &to, path, seed, &stop, &c));
    }
    println!("tun up {TUN_NAME} {path:?}");
    let _ = std::io::stdout().flush();
    commands(&counters, &stop);
}

/// Reads stdin lines until it closes or `MAX_LIFETIME` passes, answering `stats`.
fn commands(counters: &[Arc<Counters>; 2], stop: &AtomicBool) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + MAX_LIFETIME;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.trim() == "stats" => {
                let v =
                    serde_json::json!({"a_to_b": counters[0].json(), "b_to_a": counters[1].json()});
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
}

/// The emulator must not outlive the orchestrator: its namespaces are deleted with it.
fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

/// The harness may run niced to spare a shared machine; the emulator stands for the
/// network between two hosts, which does not wait for their CPU, so it takes the
/// default priority back (as any process of the machine has), before its threads start.
fn default_priority() {
    // SAFETY: setpriority takes numbers and touches no memory.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
    if r != 0 {
        eprintln!(
            "linkemu: keeping the inherited priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Opens a new tun device named `TUN_NAME` inside the network namespace at `ns_path`,
/// then returns this thread to the namespace it was in. The file descriptor keeps the
/// device, whichever namespace the thread is in later; the device goes when it closes.
fn open_tun_in(ns_path: &str) -> std::io::Result<File> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(ns_path)?;
    setns(&target)?;
    let tun = open_tun();
    let back = setns(&home);
    let tun = tun?;
    back?;
    Ok(tun)
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns reads only the descriptor, which `ns` keeps open.
    match unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn open_tun() -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain data, zeroed, then filled within its bounds; TUNSETIFF
    // reads it and writes the chosen name back into it.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(TUN_NAME.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        if libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(f)
}

/// xorshift64*: loss decisions need speed and independence, not cryptography.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The bottleneck and the wire of one direction: packets in the order they will leave.
struct Line {
    path: Path,
    rng: Rng,
    /// When the bottleneck finishes sending what it has queued.
    busy_until: Instant,
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// Buffers of packets already written, reused for the next ones.
    spare: Vec<Vec<u8>>,
}

impl Line {
    /// Decides a packet's fate on arrival at `now`: lost, dropped at a full buffer, or
    /// queued with the time it reaches the far end. Release times never go backwards:
    /// `busy_until` and `now` only grow.
    fn admit(&mut self, packet: &[u8], now: Instant, c: &Counters) {
        if self.path.loss > 0.0 && self.rng.unit() < self.path.loss {
            c.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let leaves = match self.path.rate_bps {
            Some(rate) => {
                let floor = now.checked_sub(BURST).unwrap_or(now);
                let start = self.busy_until.max(floor);
                // What waits ahead of this packet beyond now; the burst credit is no queue.
                let backlog = start.saturating_duration_since(now).as_secs_f64() * rate / 8.0;
                if backlog + packet.len() as f64 > self.path.queue_bytes {
                    c.tail_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.busy_until = start + Duration::from_secs_f64(packet.len() as f64 * 8.0 / rate);
                self.busy_until.max(now)
            }
            None => now,
        };
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        self.queue.push_back((leaves + self.path.one_way, buf));
    }

    /// Writes every packet due by `now`; returns when the next one is due.
    fn release(&mut self, to: &File, now: Instant, c: &Counters) -> Option<Instant> {
        while let Some((due, _)) = self.queue.front() {
            if *due > now {
                return Some(*due);
            }
            let Some((_, p)) = self.queue.pop_front() else {
                break;
            };
            match (&*to).write(&p) {
                Ok(_) => {
                    c.packets.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    c.write_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.spare.push(p);
        }
        None
    }
}

/// One direction: read `from` in batches, release into `to` on time, sleep in between.
fn pump(from: &File, to: &File, path: Path, seed: u64, stop: &AtomicBool, c: &Counters) {
    // Wake-ups to the microsecond: at 1 Gbit/s a packet lasts 12 µs on the wire, and the
    // default 50 µs of timer slack would bunch releases.
    // SAFETY: prctl with PR_SET_TIMERSLACK takes a number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let mut line = Line {
        path,
        rng: Rng(seed),
        busy_until: Instant::now(),
        queue: VecDeque::new(),
        spare: Vec::new(),
    };
    let mut buf = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::Relaxed) {
        let mut full_batch = true;
        for _ in 0..READ_BATCH {
            match (&*from).read(&mut buf) {
                Ok(n) if n > 0 => line.admit(&buf[..n], Instant::now(), c),
                _ => {
                    full_batch = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        let next = line.release(to, now, c);
        let wait = if full_batch {
            Duration::ZERO
        } else {
            next.map_or(IDLE_POLL, |t| t.saturating_duration_since(now))
        };
        wait_readable(from, wait);
    }
}

/// Sleeps until `f` is readable or `wait` has passed, to the nanosecond.
fn wait_readable(f: &File, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one pollfd and one timespec, both alive for the call; no signal mask.
    unsafe {
        libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
    }
}
