//! What the report says about the machine: CPU, memory, kernel, compiler, the commit
//! measured and the versions of the peers. Probed once, before measuring.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub date: String,
    pub pipe_commit: String,
    pub tools: Vec<(String, String)>,
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            if s.trim().is_empty() {
                s = String::from_utf8_lossy(&o.stderr).to_string();
            }
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    pub fn probe(root: &Path, cache: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            })
            .unwrap_or_default();
        let root_s = root.display().to_string();
        let commit = cmd("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
        let dirty = Command::new("git")
            .args([
                "-C",
                &root_s,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        let bin = |n: &str| cache.join("bin").join(n).display().to_string();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            kernel: cmd("uname", &["-sr"]),
            rustc: cmd("rustc", &["--version"]),
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            pipe_commit: if dirty {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            tools: vec![
                ("iperf3".into(), cmd("iperf3", &["--version"])),
                ("socat".into(), {
                    let out = Command::new("socat").arg("-V").output().ok();
                    out.and_then(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .find(|l| l.starts_with("socat version"))
                            .map(str::to_string)
                    })
                    .unwrap_or_default()
                }),
                ("rathole".into(), {
                    let out = Command::new(bin("rathole")).arg("--version").output().ok();
                    out.and_then(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .find(|l| l.starts_with("Build Version"))
                            .map(|l| {
                                format!("rathole {}", l.split(':').nth(1).unwrap_or("").trim())
                            })
                    })
                    .unwrap_or_default()
                }),
                ("bore".into(), cmd(&bin("bore"), &["--version"])),
                ("redis-server".into(), {
                    // `Redis server v=7.0.15 sha=… malloc=… bits=64 build=…`: the version.
                    let v = cmd("redis-server", &["--version"]);
                    v.split(" sha=").next().unwrap_or_default().to_string()
                }),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        }
    }
}
