//! Child processes for the orchestrator: spawn in their own process group, wait for a
//! line, read RSS and CPU time of the whole group from /proc, stop the group.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Lines of output kept for error messages.
const TAIL: usize = 6;
/// How long a stopped group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub struct Proc {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    tail: Vec<String>,
    /// The first line that looks like a failure (a panic, an error), kept for reports.
    first_error: Option<String>,
    stdin: Option<ChildStdin>,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Proc {
    /// Spawns `cmd` in a new process group; stdout and stderr are merged into lines.
    pub fn spawn(name: &str, cmd: &mut Command, with_stdin: bool) -> Result<Proc, String> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .env("NO_COLOR", "1")
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for r in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(strip_ansi(&line)).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            lines: rx,
            tail: Vec::new(),
            first_error: None,
            stdin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn remember(&mut self, line: &str) {
        let l = line.to_ascii_lowercase();
        if self.first_error.is_none()
            && (l.contains("panic") || l.contains("error") || l.contains("too many open files"))
        {
            self.first_error = Some(line.trim().to_string());
        }
        if self.tail.len() == TAIL {
            self.tail.remove(0);
        }
        self.tail.push(line.to_string());
    }

    /// What the process said last, for error messages.
    pub fn tail(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.remember(&l);
        }
        match &self.first_error {
            Some(e) if !self.tail.contains(e) => format!("{e} | … | {}", self.tail.join(" | ")),
            _ => self.tail.join(" | "),
        }
    }

    /// Waits for a line for which `f` returns Some, up to `timeout`.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.remember(&line);
                    if let Some(v) = f(&line) {
                        return Ok(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let name = self.name.clone();
                    return Err(format!(
                        "{name}: no expected output in {timeout:?}: {}",
                        self.tail()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(1));
                    let name = self.name.clone();
                    return Err(format!("{name}: exited ({status}): {}", self.tail()));
                }
            }
        }
    }

    /// Discards pending output so the pipe never fills up.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.remember(&l);
        }
    }

    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        let s = self.stdin.as_mut().ok_or("no stdin")?;
        writeln!(s, "{line}")
            .and_then(|_| s.flush())
            .map_err(|e| format!("{}: {e}", self.name))
    }

    /// Closes the process's stdin (a load process that waits for it to end goes on).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_exit(&mut self, t: Duration) -> String {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        "still running".into()
    }

    /// Waits for the process to exit on its own, up to `t`; kills the group after.
    pub fn wait_done(mut self, t: Duration) -> Vec<String> {
        let deadline = Instant::now() + t;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        self.stop();
        out
    }

    /// SIGTERM to the group, SIGKILL after a grace period; reaps the child.
    pub fn stop(&mut self) {
        self.stdin = None;
        let pgid = self.child.id();
        signal_group(pgid, "TERM");
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_group(pgid, "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(Stdio::null())
        .status();
}

/// `/proc/PID/stat` of every live process, split: (pid, command name, the fields after
/// the name). The name is in parentheses and may hold spaces, so it is cut at the last
/// `)`; after it come f[0] state, f[1] ppid, f[2] pgrp, … f[11] utime, f[12] stime.
pub fn proc_stats() -> Vec<(u32, String, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f = stat[close + 1..]
            .split_whitespace()
            .map(str::to_string)
            .collect();
        out.push((pid, comm, f));
    }
    out
}

/// PIDs of every live process whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<(u32, Vec<String>)> {
    proc_stats()
        .into_iter()
        .filter(|(_, _, f)| f.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid))
        .map(|(pid, _, f)| (pid, f))
        .collect()
}

/// Sets the CPU affinity of every thread of every process in the group (`taskset -a`).
pub fn pin_group(pgid: u32, cpus: &str) {
    for (pid, _) in group_members(pgid) {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Resident set size of every process in the group, KiB.
pub fn group_rss_kib(pgid: u32) -> u64 {
    group_members(pgid)
        .iter()
        .filter_map(|(pid, _)| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// CPU seconds (user + system, reaped children included) used by the group so far.
pub fn group_cpu_secs(pgid: u32, ticks_per_sec: f64) -> f64 {
    group_members(pgid)
        .iter()
        .map(|(_, f)| {
            // utime, stime, cutime, cstime are fields 14..17 of stat: f[11..15].
            (11..15)
                .filter_map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / ticks_per_sec
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A port free for both TCP and UDP (iperf3 -u uses the same number for both).
pub fn free_dual_port() -> u16 {
    for _ in 0..100 {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = t.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// Is something listening on 127.0.0.1:port (or any address) over TCP?
pub fn tcp_listening(port: u16) -> bool {
    listening_in(&["/proc/net/tcp", "/proc/net/tcp6"], port)
}

/// Is something listening on `port` over TCP in the network namespace of process `pid`
/// (which may not be ours)?
pub fn tcp_listening_in(pid: u32, port: u16) -> bool {
    let files = ["tcp", "tcp6"].map(|f| format!("/proc/{pid}/net/{f}"));
    listening_in(&files, port)
}

/// Waits until a TCP listener is on `port` in the network namespace of process `pid`.
pub fn wait_listening_in(pid: u32, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tcp_listening_in(pid, port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port} after {timeout:?}"))
}

fn listening_in(files: &[impl AsRef<std::path::Path>], port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|s| {
            s.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&hex) && cols[3] == "0A"
            })
        })
    })
}

/// Waits until a TCP listener is on `port`.
pub fn wait_listening(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tcp_listening(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port} after {timeout:?}"))
}

/// Waits for a group's RSS to settle (two readings 300 ms apart within 1%), up to 3 s.
pub fn settled_rss_kib(pgids: &[u32]) -> u64 {
    let read = || pgids.iter().map(|p| group_rss_kib(*p)).sum::<u64>();
    let mut last = read();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}

/// The kernel's TCP memory, pages: the `mem` field of the `TCP:` line of
/// /proc/net/sockstat. It counts the buffers of every TCP socket of the host, whatever
/// its network namespace.
pub fn tcp_mem_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let i = f.iter().position(|w| *w == "mem")?;
    f.get(i + 1)?.parse().ok()
}

/// The kernel's TCP memory-pressure threshold, pages (the middle of net.ipv4.tcp_mem).
/// Inside a network namespace the file may be missing: benches/run.sh reads it on the
/// host first and passes it as `PIPEBENCH_TCP_MEM`.
pub fn tcp_mem_pressure_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
        .ok()
        .or_else(|| std::env::var("PIPEBENCH_TCP_MEM").ok())?;
    s.split_whitespace().nth(1)?.parse().ok()
}
