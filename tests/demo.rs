//! The README's loopback demo (examples/demo.rs) runs and reports success.
//!
//! `cargo test` builds the examples next to the binaries, so the demo finds `piped` and
//! `pipec` the way it does after the README's build command.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_loopback_demo_works() {
    let me = std::env::current_exe().unwrap();
    let target = me.parent().and_then(|d| d.parent()).unwrap();
    let demo = target.join("examples").join("demo");
    assert!(
        demo.is_file(),
        "{} missing: cargo test builds examples",
        demo.display()
    );
    let mut child = Command::new(&demo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo bounds each of its own waits; this bounds the whole run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not finish in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    for expected in [
        "piped: listening on 127.0.0.1:",
        "pipec: forwarding tcp://127.0.0.1:",
        "hello from a service nobody can reach",
        "16777216 bytes",
        "sha256 matches the original",
        "pipec stopped by SIGTERM, exit 0",
        "piped stopped by SIGTERM, exit 0",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in\n{stdout}"
        );
    }
    assert!(stdout.trim_end().ends_with("[demo] ok"), "{stdout}");
}
