//! The Dockerfile and .dockerignore (no Docker engine here: checked as text), and the
//! image's default command run for real.

use super::{read, TOKEN};
use crate::common::http::http;
use crate::common::*;
use pipe::config::PortSet;
use std::net::SocketAddr;

// --- Dockerfile ------------------------------------------------------------------------------

/// Instructions as `(KEYWORD, arguments)`, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(t);
                let (k, v) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
                out.push((k.to_ascii_uppercase(), v.trim().to_string()));
                cur.clear();
            }
        }
    }
    out
}

/// The default command the image runs piped with.
pub(crate) fn docker_cmd() -> Vec<String> {
    let ins = dockerfile();
    let (_, cmd) = ins.iter().rev().find(|(k, _)| k == "CMD").expect("CMD");
    serde_json::from_str(cmd).expect("CMD in exec (JSON) form")
}

/// The image's command with its listen and bind addresses moved to loopback (listeners on
/// ephemeral ports), so a test can run it as it stands.
pub(crate) fn docker_cmd_on_loopback() -> Vec<String> {
    docker_cmd()
        .into_iter()
        .map(|a| match a.as_str() {
            "0.0.0.0:8910" | "0.0.0.0:8911" => "127.0.0.1:0".to_string(),
            "0.0.0.0" => "127.0.0.1".to_string(),
            _ => a,
        })
        .collect()
}

pub(crate) fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_secret_free() {
    let ins = dockerfile();
    let all = |k: &str| {
        ins.iter()
            .filter(|(i, _)| i == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].contains(" AS "),
        "builder: {}",
        froms[0]
    );
    assert!(
        froms.last().unwrap().contains("slim"),
        "slim runtime: {froms:?}"
    );
    assert!(all("RUN")
        .iter()
        .any(|r| r.contains("cargo build --release --locked")));
    assert!(
        all("COPY").iter().any(|c| c.starts_with("--from=")),
        "binaries copied from the builder"
    );

    let user = *all("USER").last().expect("USER");
    let name = user.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "runs as root: USER {user}");
    // piped's state (the --tls-self-signed key) lives in a volume that outlives the
    // container, and piped is told where.
    assert!(all("VOLUME").contains(&"/var/lib/pipe"), "state volume");
    assert!(
        all("ENV").contains(&"STATE_DIRECTORY=/var/lib/pipe"),
        "STATE_DIRECTORY"
    );

    let exposed: Vec<&str> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    assert!(
        exposed.iter().any(|p| p.split('/').next() == Some("8910")),
        "EXPOSE 8910: {exposed:?}"
    );
    assert_eq!(all("ENTRYPOINT"), ["[\"piped\"]"]);

    // The token comes from the environment at run time, never from the image.
    let text = read("Dockerfile");
    assert!(text.contains("PIPE_TOKEN"), "document PIPE_TOKEN");
    for (k, v) in &ins {
        if k == "ENV" || k == "ARG" || k == "LABEL" {
            assert!(
                !v.to_ascii_uppercase().contains("TOKEN"),
                "{k} {v}: no token in the image"
            );
        }
    }

    // The health check probes /healthz where the default command puts the admin.
    let cmd = docker_cmd();
    let admin_port = flag_value(&cmd, "--admin").rsplit(':').next().unwrap();
    let hc = all("HEALTHCHECK").pop().expect("HEALTHCHECK");
    assert!(
        hc.contains(&format!("127.0.0.1:{admin_port}/healthz")),
        "{hc}"
    );
    assert_eq!(flag_value(&cmd, "--listen"), "0.0.0.0:8910");
    let ports: PortSet = flag_value(&cmd, "--ports").parse().unwrap();
    let range = exposed
        .iter()
        .find(|p| p.contains('-'))
        .expect("tunnel port range exposed");
    let (a, b) = range.split('/').next().unwrap().split_once('-').unwrap();
    let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
    assert_eq!(ports.len(), (b - a + 1) as usize);
    assert!(
        ports.contains(a) && ports.contains(b),
        "EXPOSE {range} vs --ports"
    );

    // The build context keeps what cargo needs and leaves out target/ and .git.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for p in ["target/", ".git/"] {
        assert!(patterns.contains(&p), ".dockerignore lacks {p}");
    }
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src".to_string(),
    ];
    for kind in ["bin", "bench", "example", "test"] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(p) = t.get("path").and_then(|p| p.as_str()) {
                needed.push(p.split('/').next().unwrap().to_string());
            }
        }
    }
    for n in &needed {
        let hit = patterns
            .iter()
            .find(|p| p.trim_end_matches('/') == n || p.trim_end_matches("/**") == n);
        assert!(
            hit.is_none(),
            ".dockerignore excludes {n}, which the build needs"
        );
    }
}

/// The image's default command works: piped starts (addresses moved to loopback
/// ephemeral ports) and the health check's route answers.
#[tokio::test(flavor = "multi_thread")]
async fn docker_default_command_serves_the_health_check() {
    let cmd = docker_cmd_on_loopback();
    let mut p = Proc::spawn_env(
        piped_bin(),
        &cmd,
        &[("PIPE_TOKEN", TOKEN), ("PIPE_ADMIN_TOKEN", "adm")],
    );
    p.wait_line("listening on ", WAIT);
    let line = p.wait_line("admin on ", WAIT);
    let admin: SocketAddr = line["admin on ".len()..].parse().unwrap();
    let r = http(admin, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(
        http(admin, "GET", "/metrics", None).await.status,
        401,
        "admin needs its token"
    );
}
