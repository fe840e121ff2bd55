//! Packaging and deployment files (issue 9): everything in `configs/` is loaded and
//! checked (a new file without a check fails), the example configs run, the Dockerfile
//! and fly.toml have the properties deployment relies on, `--version` names the
//! protocol, and the completions and man pages generate.
//!
//! No Docker engine or fly.io account is available to tests, so those two files are
//! checked as text; the command line the Dockerfile gives piped is run for real. Caddy
//! and systemd-analyze validate their files when installed, with a structural check
//! otherwise. The checks live in `tests/packaging/`, one file per artefact.

mod common;

#[path = "../examples/gen_docs.rs"]
#[allow(dead_code)]
mod gen_docs;

#[path = "packaging/caddy.rs"]
mod caddy;
#[path = "packaging/configs.rs"]
mod configs;
#[path = "packaging/docker.rs"]
mod docker;
#[path = "packaging/docs.rs"]
mod docs;
#[path = "packaging/fly.rs"]
mod fly;
#[path = "packaging/units.rs"]
mod units;

use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "packaging-test-token";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Runs a command to completion within `WAIT`, killing it otherwise.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn tool(path: &str) -> Option<&str> {
    Path::new(path).exists().then_some(path)
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// --- --version ----------------------------------------------------------------------------

#[test]
fn version_names_the_protocol() {
    for bin in [piped_bin(), pipec_bin()] {
        let out = run(Command::new(bin).arg("--version"));
        assert!(out.status.success());
        let name = Path::new(bin).file_name().unwrap().to_string_lossy();
        let want = format!(
            "{name} {} (protocol v{})",
            env!("CARGO_PKG_VERSION"),
            pipe::protocol::PROTOCOL_VERSION
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    }
}

// --- the README's two commands --------------------------------------------------------------

/// The commands of the README's first code block, comments stripped.
fn readme_commands() -> Vec<String> {
    let readme = read("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README opens with a sh code block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn ci_runs_exactly_the_readmes_test_command() {
    let commands = readme_commands();
    assert_eq!(commands.len(), 2, "the demo and the tests: {commands:?}");
    let test = &commands[1];
    // The test command installs what the tests need: plain `cargo test` does not.
    assert_eq!(test, "bash scripts/test.sh");
    let ci = read(".ci/run");
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(last.trim(), format!("exec {test}"), ".ci/run:\n{ci}");
    // Every Debian package it installs is named in the README next to it.
    let script = read("scripts/test.sh");
    let list = script
        .lines()
        .find_map(|l| l.strip_prefix("packages=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("scripts/test.sh names its packages");
    let readme = read("README.md");
    for p in list.split_whitespace() {
        assert!(
            readme.contains(&format!("`{p}`")),
            "README does not name {p}"
        );
    }
}
