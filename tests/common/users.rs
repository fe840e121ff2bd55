//! Users files for tests: `[[user]]` tables, ports no other listener can take
//! meanwhile, and writes the server's poller never sees half done.

use std::path::{Path, PathBuf};

/// `n` free ports below the kernel's ephemeral range (32768 and up), so that no
/// listener bound to port 0 (a test's admin, echo or proxy) can take one meanwhile:
/// users' port lists must name ports.
pub fn spare_ports(n: usize) -> Vec<u16> {
    const BELOW_EPHEMERAL: std::ops::Range<u16> = 20_000..32_000;
    let mut got = Vec::new();
    let mut tries = 0;
    while got.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free ports below the ephemeral range");
        let p = rand::random_range(BELOW_EPHEMERAL);
        if !got.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            got.push(p);
        }
    }
    got
}

pub fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One `[[user]]` table; `extra` holds further keys, one a line.
pub fn user(name: &str, token: &str, ports: &[u16], extra: &str) -> String {
    let ports = match ports {
        [] => String::new(),
        p => format!("ports = \"{}\"\n", list(p)),
    };
    format!("[[user]]\nname = \"{name}\"\ntoken = \"{token}\"\n{ports}{extra}\n")
}

pub fn write(path: &Path, text: &str) {
    // Write then rename, so the poller never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `users.toml` in `dir`, holding `text`.
pub fn users_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("users.toml");
    write(&p, text);
    p
}
