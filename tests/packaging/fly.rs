//! fly.toml: the control port, the admin behind Fly's HTTPS, TCP and UDP port ranges
//! matching piped's `--ports`, and a cluster of machines sharing a Redis.

use super::docker::{docker_cmd, docker_cmd_on_loopback, flag_value};
use super::{read, run, TOKEN};
use crate::common::*;
use pipe::config::PortSet;

// --- fly.toml ----------------------------------------------------------------------------------

#[test]
fn fly_toml_has_control_admin_tcp_range_and_udp_services() {
    let text = read("fly.toml");
    let fly: toml::Table = toml::from_str(&text).unwrap();
    assert!(fly["app"].as_str().is_some_and(|a| !a.is_empty()));
    let env = fly
        .get("env")
        .and_then(|e| e.as_table())
        .cloned()
        .unwrap_or_default();
    assert!(
        env.keys()
            .all(|k| !k.contains("TOKEN") && k != "PIPE_CLUSTER"),
        "secrets (the tokens, the Redis URL with its password) go in `fly secrets`, not [env]"
    );
    assert!(
        env.values()
            .filter_map(|v| v.as_str())
            .all(|v| !v.starts_with("redis://") && !v.starts_with("rediss://")),
        "the Redis URL holds a password: `fly secrets set PIPE_CLUSTER=…`"
    );
    // Peer links on each machine's private address; the node name is FLY_MACHINE_ID.
    let peer_listen = env
        .get("PIPE_PEER_LISTEN")
        .and_then(|v| v.as_str())
        .expect("PIPE_PEER_LISTEN in [env]");
    let (host, port) = peer_listen.rsplit_once(':').expect("HOST:PORT");
    assert_eq!(
        host, "fly-local-6pn",
        "peer links stay on the private network"
    );
    let peer_port: i64 = port.parse().unwrap();
    assert!(
        !env.contains_key("PIPE_NODE"),
        "one [env] for every machine: node names come from FLY_MACHINE_ID"
    );
    node_starts_from_env_alone(&env);
    // Fly delivers UDP only to sockets bound to fly-global-services.
    assert_eq!(
        env.get("PIPE_UDP_BIND_ADDR").and_then(|v| v.as_str()),
        Some("fly-global-services"),
        "UDP tunnels need PIPE_UDP_BIND_ADDR on fly.io"
    );
    let services = fly["services"].as_array().expect("[[services]]");
    let svc = |proto: &str, internal: i64| {
        services.iter().map(|s| s.as_table().unwrap()).find(|s| {
            s["protocol"].as_str() == Some(proto)
                && s["internal_port"].as_integer() == Some(internal)
        })
    };
    let ports_of = |s: &toml::Table| {
        s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_table().unwrap().clone())
            .collect::<Vec<_>>()
    };
    let cmd = docker_cmd();
    // The peer port is private: no public service for it.
    assert!(
        services
            .iter()
            .all(|s| s["internal_port"].as_integer() != Some(peer_port)),
        "the peer port must not be a public service"
    );

    // The control port, raw TCP or TLS-terminated, on 8910.
    let control = svc("tcp", 8910).expect("tcp service for the control port");
    assert!(ports_of(control)
        .iter()
        .any(|p| p["port"].as_integer() == Some(8910)));

    // The admin behind Fly's TLS + HTTP handlers, health-checked on /healthz.
    let admin_port: i64 = flag_value(&cmd, "--admin")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let admin = svc("tcp", admin_port).expect("tcp service for the admin");
    let https = ports_of(admin)
        .into_iter()
        .find(|p| p["port"].as_integer() == Some(443))
        .expect("port 443");
    let handlers: Vec<&str> = https["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    assert_eq!(handlers, ["tls", "http"]);
    let checks = admin["http_checks"].as_array().expect("http_checks");
    assert!(checks
        .iter()
        .any(|c| c["path"].as_str() == Some("/healthz")));

    // Public TCP and UDP ranges matching the ports piped hands out.
    let ports: PortSet = flag_value(&cmd, "--ports").parse().unwrap();
    for proto in ["tcp", "udp"] {
        let range = services
            .iter()
            .filter(|s| s["protocol"].as_str() == Some(proto))
            .flat_map(|s| ports_of(s.as_table().unwrap()))
            .find(|p| p.contains_key("start_port"))
            .unwrap_or_else(|| panic!("no {proto} port range service"));
        let (a, b) = (
            range["start_port"].as_integer().unwrap(),
            range["end_port"].as_integer().unwrap(),
        );
        assert_eq!(
            ports.len() as i64,
            b - a + 1,
            "{proto} range {a}-{b} vs --ports"
        );
        assert!(
            ports.contains(a as u16) && ports.contains(b as u16),
            "{proto} range {a}-{b} vs --ports"
        );
    }

    // Machines kept running, two or more of them, and the file says how and why.
    for s in services.iter().map(|s| s.as_table().unwrap()) {
        if let Some(stop) = s.get("auto_stop_machines") {
            assert!(
                stop.as_str() == Some("off") || stop.as_bool() == Some(false),
                "auto-stop: {stop}"
            );
        }
    }
    let lower = text.to_lowercase();
    assert!(
        lower.contains("fly secrets set pipe_cluster="),
        "tell users to set PIPE_CLUSTER with fly secrets"
    );
    let count = lower
        .split("fly scale count ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max()
        .expect("a `fly scale count N` line");
    assert!(count >= 2, "a cluster: fly scale count {count}");
    assert!(
        lower.contains("fly_machine_id") && lower.contains("fly redis create"),
        "say where node names and the Redis come from"
    );
}

/// A machine's piped needs no flags of its own: the image's command with fly.toml's
/// [env], the secrets and Fly's FLY_MACHINE_ID gets past every config check (exit 1 at
/// the unreachable Redis, not 2). The peer and UDP addresses are moved to loopback:
/// Fly's names do not resolve here.
fn node_starts_from_env_alone(env: &toml::Table) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cmd = docker_cmd_on_loopback();
    let mut piped = std::process::Command::new(piped_bin());
    piped.args(&cmd);
    for (k, v) in env {
        piped.env(k, v.as_str().unwrap());
    }
    piped
        .env_remove("PIPE_NODE")
        .env_remove("PIPE_PEER_ADVERTISE")
        .env("PIPE_PEER_LISTEN", "127.0.0.1:0")
        .env("PIPE_UDP_BIND_ADDR", "127.0.0.1")
        .env("PIPE_CLUSTER", format!("redis://127.0.0.1:{dead}/"))
        .env("PIPE_TOKEN", TOKEN)
        .env("PIPE_CLUSTER_SECRET", "cluster-secret")
        .env("PIPE_ADMIN_TOKEN", "adm")
        .env("FLY_MACHINE_ID", "148e272f0e1d89");
    let out = run(&mut piped);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach the cluster directory"), "{err}");
}
