//! A real `redis-server` (Debian's) for the cluster tests: loopback, a free port, no
//! persistence, its files in a temporary directory; readiness read from its log
//! line, never slept for. Killed on drop.

use super::WAIT;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts tried: a port found free can be taken by another test before Redis binds it.
const START_ATTEMPTS: usize = 3;

pub struct Redis {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `redis-server` on `port`; `Err` with its output when it did not become ready.
fn spawn(dir: &std::path::Path, port: u16) -> Result<Child, String> {
    spawn_with(dir, port, &[], "Ready to accept connections")
}

/// `redis-server` on `port` with `extra` arguments, ready once its log says `ready`.
fn spawn_with(
    dir: &std::path::Path,
    port: u16,
    extra: &[String],
    ready: &str,
) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) if line.contains(ready) => return Ok(child),
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return Err(format!("redis-server exited:\n{log}"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server not ready within {WAIT:?}:\n{log}"));
            }
        }
    }
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(dir.path(), port) {
                Ok(child) => {
                    return Redis {
                        child: Some(child),
                        dir,
                        port,
                    }
                }
                Err(e) => why = e,
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts; last:\n{why}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills Redis (as an outage would); [`Redis::restart`] brings it back, empty.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes Redis (SIGSTOP): connections stay open, nothing answers, and nothing
    /// is lost; [`Redis::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let st = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} redis");
    }

    /// Starts Redis again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = spawn(self.dir.path(), self.port).unwrap_or_else(|e| panic!("{e}"));
        self.child = Some(child);
    }
}

impl Redis {
    /// A replica of `primary`, ready once its first sync is done.
    pub fn replica_of(primary: &Redis) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let extra = vec![
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            primary.port.to_string(),
        ];
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_with(dir.path(), port, &extra, "sync: Finished with success") {
                Ok(child) => {
                    return Redis {
                        child: Some(child),
                        dir,
                        port,
                    }
                }
                Err(e) => why = e,
            }
        }
        panic!("redis replica did not start in {START_ATTEMPTS} attempts; last:\n{why}");
    }

    /// `kill -9`: the server dies as a crashed primary would.
    pub fn kill(&mut self) {
        self.stop();
    }
}

/// A real `redis-sentinel` watching one primary under a master name, with a short
/// down-after so a failover takes a couple of seconds. Killed on drop.
pub struct Sentinel {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Sentinel {
    /// A Sentinel for `primary` named `master`; `quorum` Sentinels must agree it is down.
    pub fn start(primary: &Redis, master: &str, quorum: u8) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {master} 127.0.0.1 {} {quorum}\n\
                     sentinel down-after-milliseconds {master} 500\n\
                     sentinel failover-timeout {master} 3000\n\
                     sentinel parallel-syncs {master} 1\n",
                    dir.path().display(),
                    primary.port
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel is installed (apt-get install redis-sentinel)");
            let out = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line.contains("+monitor master") => {
                        return Sentinel {
                            child: Some(child),
                            _dir: dir,
                            port,
                        }
                    }
                    Ok(line) => {
                        why.push_str(&line);
                        why.push('\n');
                    }
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        panic!("redis-sentinel did not start in {START_ATTEMPTS} attempts:\n{why}");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
