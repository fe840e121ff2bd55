//! The systemd units: hardened, token from an EnvironmentFile, ExecStart parsed by
//! the real clap definitions, and `systemd-analyze verify` when it is installed.

use super::{root, run, tool, write_temp};
use crate::common::*;
use clap::Parser;
use pipe::config::cli::{PipecArgs, PipedArgs};
use std::path::Path;
use std::process::Command;

/// `(section, key, value)` of a systemd unit, continuation lines joined.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.replace("\\\n", " ").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("bad unit line {line:?}"));
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

pub(crate) fn check_unit(path: &Path, bin: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let entries = unit_entries(&text);
    let get = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        get(key)
            .last()
            .copied()
            .unwrap_or_else(|| panic!("{bin}.service: no {key}="))
    };
    for section in ["Unit", "Service", "Install"] {
        assert!(
            entries.iter().any(|(s, _, _)| s == section),
            "{bin}.service: no [{section}]"
        );
    }
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("Restart"), "on-failure");
    let own_user = get("DynamicUser").last() == Some(&"yes")
        || get("User")
            .last()
            .is_some_and(|u| *u != "root" && *u != "0");
    assert!(own_user, "{bin}.service must run as its own user");
    if bin == "piped" {
        // A persistent state directory: systemd keeps it across restarts and upgrades
        // and hands it over as $STATE_DIRECTORY (the --tls-self-signed key lives there).
        assert_eq!(one("StateDirectory"), "pipe");
    }
    for cap in one("CapabilityBoundingSet").split_whitespace() {
        assert_eq!(
            cap, "CAP_NET_BIND_SERVICE",
            "{bin}.service: capability {cap} not needed"
        );
    }
    assert!(
        !get("EnvironmentFile").is_empty(),
        "{bin}.service: token via EnvironmentFile="
    );
    assert!(
        !text.contains("PIPE_TOKEN=") || get("Environment").iter().all(|e| !e.contains("TOKEN")),
        "no token literal in the unit"
    );

    // ExecStart parses with the real flags, reading the shipped config file.
    let exec = one("ExecStart");
    let mut argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert_eq!(argv[0], format!("/usr/local/bin/{bin}"));
    assert!(
        !argv.iter().any(|a| a == "--token"),
        "the token must not be on the command line"
    );
    let creds: Vec<&str> = get("LoadCredential")
        .iter()
        .map(|c| c.split(':').next().unwrap())
        .collect();
    for a in argv.iter_mut().skip(1) {
        if let Some(name) = a.strip_prefix("%d/") {
            assert!(
                creds.contains(&name),
                "{bin}.service uses credential {name} it does not load"
            );
        }
        if *a == format!("/etc/pipe/{bin}.toml") {
            *a = root()
                .join(format!("configs/{bin}.toml"))
                .display()
                .to_string();
        }
    }
    assert!(
        exec.contains(&format!("/etc/pipe/{bin}.toml")),
        "{bin}.service reads /etc/pipe/{bin}.toml"
    );
    match bin {
        "piped" => drop(PipedArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("{exec}: {e}"))),
        _ => drop(PipecArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("{exec}: {e}"))),
    }
    systemd_verify(&text, bin);
}

/// `systemd-analyze verify` (and the offline security score) on a copy whose
/// ExecStart points at the binaries under test.
fn systemd_verify(text: &str, bin: &str) {
    let Some(analyze) = tool("/usr/bin/systemd-analyze") else {
        eprintln!("systemd-analyze not installed: structural checks only");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = match bin {
        "piped" => piped_bin(),
        _ => pipec_bin(),
    };
    let unit = write_temp(
        dir.path(),
        &format!("{bin}.service"),
        &text.replace(&format!("/usr/local/bin/{bin}"), exe),
    );
    let out = run(Command::new(analyze)
        // The man pages it names are installed from gen_docs, not here.
        .args(["verify", "--man=no"])
        .arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {bin}.service:\n{stderr}"
    );
    let out = run(Command::new(analyze)
        .args(["security", "--offline=true"])
        .arg(&unit));
    if !out.status.success() {
        return; // systemd older than 252: no offline scoring
    }
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        score <= 2.0,
        "{bin}.service exposure {score} (want <= 2.0):\n{report}"
    );
}

/// configs/piped-cluster.conf: a drop-in for piped.service that makes the host a
/// cluster node. Only environment (the unit's ExecStart and hardening stay as they
/// are), no secret in it, and settings a node accepts. With systemd-analyze, the unit
/// with the drop-in in place verifies.
pub(crate) fn check_cluster_dropin(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let entries = unit_entries(&text);
    assert!(
        entries
            .iter()
            .all(|(s, k, _)| (s == "Service" && k == "Environment")
                || (s == "Unit" && (k == "After" || k == "Wants"))),
        "the drop-in only sets the environment: {entries:?}"
    );
    let env: Vec<(String, String)> = entries
        .iter()
        .filter(|(_, k, _)| k == "Environment")
        .map(|(_, _, v)| {
            let (k, v) = v.split_once('=').expect("Environment=KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect();
    for (k, _) in &env {
        assert!(
            !k.contains("TOKEN") && !k.starts_with("PIPE_CLUSTER"),
            "{k}: secrets belong in /etc/pipe/piped.env"
        );
    }
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let node = get("PIPE_NODE").expect("PIPE_NODE");
    let peer = get("PIPE_PEER_LISTEN").expect("PIPE_PEER_LISTEN");
    assert!(
        text.contains("PIPE_CLUSTER=redis://"),
        "say where PIPE_CLUSTER goes"
    );
    // The node piped would be: %H is the host's name.
    let node = node.replace("%H", "node1.example.com");
    let mut args = PipedArgs::try_parse_from([
        "piped",
        "--config",
        root().join("configs/piped.toml").to_str().unwrap(),
        "--cluster",
        "redis://10.0.0.100:6379/0",
        "--node",
        &node,
        "--peer-listen",
        peer,
    ])
    .unwrap();
    args.token = Some("cluster-token".into());
    args.cluster_secret = Some("cluster-secret".into()); // as PIPE_CLUSTER_SECRET
    let cfg = pipe::config::ServerConfig::from_args(args).unwrap_or_else(|e| panic!("{e}"));
    let cluster = cfg.cluster.expect("a cluster node");
    assert_eq!(cluster.node, node);
    assert_eq!(cluster.peer_listen, peer);

    let Some(analyze) = tool("/usr/bin/systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root().join("configs/piped.service"))
        .unwrap()
        .replace("/usr/local/bin/piped", piped_bin());
    let unit = write_temp(dir.path(), "piped.service", &unit);
    std::fs::create_dir(dir.path().join("piped.service.d")).unwrap();
    std::fs::copy(path, dir.path().join("piped.service.d/cluster.conf")).unwrap();
    let out = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify piped.service with the cluster drop-in:\n{stderr}"
    );
}
