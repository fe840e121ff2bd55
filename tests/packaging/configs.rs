//! `configs/`: every file has a check; the example TOML files cover every key the
//! loader accepts and run together.

use super::{caddy, root, units, write_temp, TOKEN};
use crate::common::http::http;
use crate::common::*;
use clap::Parser;
use pipe::config::cli::{PipecArgs, PipedArgs};
use pipe::config::file::{ClientFile, ForwardTable, ServerFile};
use pipe::config::{ClientConfig, ServerConfig};
use pipe::protocol::Proto;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

// --- configs/ -------------------------------------------------------------------------

/// The files `configs/` must hold; each one and every other file there gets a check.
const EXPECTED_CONFIGS: [&str; 9] = [
    "Caddyfile.on-demand",
    "Caddyfile.wildcard",
    "docker-compose.cluster.yml",
    "piped-cluster.conf",
    "piped.service",
    "piped.toml",
    "pipec.service",
    "pipec.toml",
    "users.toml",
];

#[test]
fn every_file_in_configs_is_checked() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match name.as_str() {
            "piped.toml" => check_piped_toml(&path),
            "pipec.toml" => check_pipec_toml(&path),
            "users.toml" => check_users_toml(&path),
            "piped.service" => units::check_unit(&path, "piped"),
            "pipec.service" => units::check_unit(&path, "pipec"),
            "docker-compose.cluster.yml" => check_cluster_compose(&path),
            "piped-cluster.conf" => units::check_cluster_dropin(&path),
            n if n.starts_with("Caddyfile.") => caddy::check_caddyfile(&path),
            _ => panic!("configs/{name} has no check in tests/packaging.rs: add one"),
        }
        seen.insert(name);
    }
    let expected: BTreeSet<String> = EXPECTED_CONFIGS.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "missing from configs/: {missing:?}");
}

/// The keys a config struct accepts, read from the loader's own "unknown field" error
/// (serde lists every expected field), so a key added to `config::file` shows up here.
fn accepted_keys<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    table: &str,
) -> BTreeSet<String> {
    let text = format!("{table}zz-not-a-key = 1\n");
    let err = toml::from_str::<T>(&text)
        .expect_err("an unknown key must be refused")
        .to_string();
    let list = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of expected keys in: {err}"))
        .1;
    let keys: BTreeSet<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(
        keys.len() >= 3,
        "could not read the accepted keys from: {err}"
    );
    keys
}

/// The file with every `# key = value` line (an optional setting) made active.
/// The example `text` with its optional settings switched on, parsed; asserts that its
/// top-level keys are exactly the ones the loader `T` accepts.
fn with_every_key<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    text: &str,
    name: &str,
) -> (String, toml::Table) {
    let all = uncommented(text);
    let table: toml::Table = toml::from_str(&all).unwrap();
    let shown: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        shown,
        accepted_keys::<T>(""),
        "keys in {name} vs the loader's"
    );
    (all, table)
}

fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_setting(rest) || rest == "[[forward]]" => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(k, v)| {
        !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            && !v.trim().is_empty()
    })
}

pub(crate) fn server_config(path: &Path) -> ServerConfig {
    let args = PipedArgs::parse_from_for_tests(["piped", "--config", path.to_str().unwrap()]);
    ServerConfig::from_args(args).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn client_config(path: &Path) -> ClientConfig {
    let args = PipecArgs::try_parse_from(["pipec", "--config", path.to_str().unwrap()]).unwrap();
    let mut run = args.run;
    run.token = None; // PIPE_TOKEN from the environment must not mask the file
    ClientConfig::from_args(run, &args.log).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_piped_toml(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    // As shipped: valid, and no secret written into it.
    let file: ServerFile = pipe::config::file::load(path).unwrap();
    assert!(
        file.token.is_none() && file.admin_token.is_none(),
        "tokens belong in the environment"
    );
    let cfg = server_config(path);
    assert_eq!(cfg.listen, "0.0.0.0:8910");
    // As shipped it starts on any machine (no certificate files needed).
    assert!(cfg.admin.is_some() && cfg.tls_cert.is_none());

    // With the optional settings switched on: every key the loader accepts is shown,
    // the production TLS paths among them.
    let dir = tempfile::tempdir().unwrap();
    let (all, _) = with_every_key::<ServerFile>(&text, "piped.toml");
    let all = server_config(&write_temp(dir.path(), "piped-all.toml", &all));
    assert!(all.tls_cert.is_some() && all.tls_key.is_some());
}

fn check_pipec_toml(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let file: ClientFile = pipe::config::file::load(path).unwrap();
    assert!(file.token.is_none(), "the token belongs in the environment");
    let cfg = client_config(path);
    assert!(cfg.forwards.len() >= 3, "several [[forward]] tables");
    // As shipped every forward works against configs/piped.toml (no domain there).
    assert!(cfg.forwards.iter().all(|f| f.proto != Proto::Http));
    // The example client fits the example server: fixed ports inside its `ports`.
    let server = server_config(&root().join("configs/piped.toml"));
    for f in cfg.forwards.iter().filter(|f| f.remote_port != 0) {
        assert!(
            server.ports.contains(f.remote_port),
            "port {} outside piped.toml ports",
            f.remote_port
        );
    }
    assert_eq!(
        cfg.tls,
        server.tls_cert.is_some(),
        "client and server agree on TLS"
    );

    let dir = tempfile::tempdir().unwrap();
    let (all, table) = with_every_key::<ClientFile>(&text, "pipec.toml");
    let forwards = table["forward"].as_array().expect("[[forward]] tables");
    let forward_keys: BTreeSet<String> = forwards
        .iter()
        .flat_map(|t| t.as_table().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        forward_keys,
        accepted_keys::<ForwardTable>("[[forward]]\n"),
        "[[forward]] keys in pipec.toml vs the loader's"
    );
    let all = client_config(&write_temp(dir.path(), "pipec-all.toml", &all));
    let protos: BTreeSet<String> = all.forwards.iter().map(|f| f.proto.to_string()).collect();
    for p in [Proto::Tcp, Proto::Udp, Proto::Http] {
        assert!(
            protos.contains(&p.to_string()),
            "no {p} forward in pipec.toml"
        );
    }
    assert!(all.tls, "pipec.toml shows the TLS keys");
}

/// The keys a `[[user]]` table accepts, from the users-file loader's own error.
fn user_keys() -> BTreeSet<String> {
    let err = pipe::accounts::users::parse("[[user]]\nzz-not-a-key = 1\n", Path::new("x"))
        .expect_err("an unknown key must be refused");
    let list = err.split_once("expected").expect("a list of keys").1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn check_users_toml(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    // Point its token-file at a real file, then it must load as shipped.
    let dir = tempfile::tempdir().unwrap();
    let secret = write_temp(dir.path(), "ci-token", "0123456789abcdef0123456789abcdef\n");
    let text = text.replace(
        "/run/credentials/piped.service/ci-token",
        secret.to_str().unwrap(),
    );
    let (table, _) = pipe::accounts::users::parse(&text, path).unwrap();
    assert!(table.len() >= 2, "several users");
    // Every key a [[user]] table accepts is shown in some table.
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let shown: BTreeSet<String> = doc["user"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t.as_table().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        shown,
        user_keys(),
        "[[user]] keys in users.toml vs the loader's"
    );
    // The example's ports fit the example server's.
    let server = server_config(&root().join("configs/piped.toml"));
    for u in table.users() {
        let ports = u.ports.as_ref().expect("each example user has ports");
        assert!((0..ports.len()).all(|i| server.ports.contains(ports.nth(i).unwrap())));
    }
    assert_eq!(
        pipe::config::file::load::<ServerFile>(&write_temp(
            dir.path(),
            "piped-users.toml",
            &format!("users = {:?}\n", path)
        ))
        .unwrap()
        .users
        .as_deref(),
        Some(path)
    );
}

/// A free loopback port (bound, then released) to serve as the whole `--ports` set.
fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn example_configs_run_piped_and_pipec() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "pkg", &["localhost"]);
    let path = |p: &Path| p.display().to_string();
    let only_port = spare_port().to_string();
    let args: Vec<String> = [
        "--config",
        &path(&root().join("configs/piped.toml")),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--bind-addr",
        "127.0.0.1",
        "--ports",
        &only_port,
        "--tls-cert",
        &path(&pki.cert),
        "--tls-key",
        &path(&pki.key),
    ]
    .map(str::to_string)
    .to_vec();
    let mut server = Proc::spawn_env(piped_bin(), &args, &[("PIPE_TOKEN", TOKEN)]);
    let line = server.wait_line("listening on ", WAIT);
    let addr: SocketAddr = line["listening on ".len()..].parse().unwrap();
    let line = server.wait_line("admin on ", WAIT);
    let admin: SocketAddr = line["admin on ".len()..].parse().unwrap();
    let health = http(admin, "GET", "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    // pipec with the example file: TLS and login succeed, then the forwards reach the
    // server, which refuses port 20022 (its --ports is one spare port): exit 4, not 2
    // (config error) or 3 (login refused).
    let cargs: Vec<String> = [
        "--config",
        &path(&root().join("configs/pipec.toml")),
        "--server",
        &addr.to_string(),
        "--tls-ca",
        &path(&pki.ca),
        "--tls-server-name",
        "localhost",
    ]
    .map(str::to_string)
    .to_vec();
    let mut client = Proc::spawn_env(pipec_bin(), &cargs, &[("PIPE_TOKEN", TOKEN)]);
    let code = client.wait_exit(WAIT);
    let stderr = client.stderr();
    assert_eq!(code, 4, "pipec stderr:\n{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        !server.stderr().contains("login failed"),
        "{}",
        server.stderr()
    );

    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT), 0, "{}", server.stderr());
}

/// Kills a whole process group when dropped (a shell and what it started).
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// What a newcomer runs first, from the repository root, with nothing changed:
/// `piped --config configs/piped.toml` and `pipec --config configs/pipec.toml`. The
/// examples use fixed ports (8910, 8911, 20000-20099 on every interface), so both
/// run in a network namespace of their own (`unshare -rn`, with its loopback up),
/// where those ports are free and nothing reaches beyond it.
#[test]
fn the_example_configs_start_unchanged_from_the_repository_root() {
    use std::io::{BufRead, BufReader};
    let script = r#"
        set -e
        ip link set lo up
        "$1" --config configs/piped.toml 2>&1 | sed -u 's/^/piped: /' &
        "$2" --config configs/pipec.toml 2>&1 | sed -u 's/^/pipec: /' &
        wait
    "#;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-rn", "bash", "-c", script, "sh", piped_bin(), pipec_bin()])
        .current_dir(root())
        .env_remove("PIPE_TOKEN")
        .env_remove("PIPE_ADMIN_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut group = Group(cmd.spawn().expect("unshare (util-linux) and ip (iproute2)"));
    let out = group.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = [
        "piped: listening on 0.0.0.0:8910",
        "piped: admin on 127.0.0.1:8911",
        "pipec: forwarding tcp://localhost:20022 -> 127.0.0.1:22",
        "pipec: forwarding udp://localhost:20053 -> 127.0.0.1:53",
    ];
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !want.iter().all(|w| seen.iter().any(|l: &String| l == w)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "not all of {want:#?} within {WAIT:?}; got:\n{}",
                seen.join("\n")
            ),
        }
    }
    // The forward on a port the server picks is live too; nothing failed.
    assert!(
        seen.iter()
            .any(|l| l.starts_with("pipec: forwarding tcp://localhost:200")
                && l.ends_with("-> localhost:3000")),
        "{seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("ERROR") || l.contains("error:")),
        "{seen:#?}"
    );
}

// --- configs/docker-compose.cluster.yml ---------------------------------------------------

/// One service of a compose file: its name and its lines (indented under it).
struct ComposeService {
    name: String,
    lines: Vec<String>,
}

impl ComposeService {
    /// The value of `key:` directly under the service (4 spaces in).
    fn get(&self, key: &str) -> Option<&str> {
        let prefix = format!("    {key}:");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::trim)
    }

    /// The value of `key:` at any depth under the service (e.g. `build.context`).
    fn nested(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}:");
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(&prefix))
            .map(str::trim)
    }

    /// The list items (`- x`) under `key:`.
    fn list(&self, key: &str) -> Vec<String> {
        let head = format!("    {key}:");
        self.lines
            .iter()
            .skip_while(|l| l.trim_end() != head)
            .skip(1)
            .take_while(|l| l.starts_with("      "))
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|v| v.trim_matches('"').to_string())
            .collect()
    }
}

/// The services of a compose file. No YAML parser is among the dependencies, so the
/// example keeps to a plain subset: two-space indents, flow-style (JSON) command arrays.
fn compose_services(text: &str) -> Vec<ComposeService> {
    let mut out: Vec<ComposeService> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            inside = line.trim_end() == "services:";
            continue;
        }
        if !inside {
            continue;
        }
        match line.strip_prefix("  ") {
            Some(rest) if !rest.starts_with(' ') => out.push(ComposeService {
                name: rest.trim_end().trim_end_matches(':').to_string(),
                lines: Vec::new(),
            }),
            _ => out
                .last_mut()
                .expect("a service before its keys")
                .lines
                .push(line.to_string()),
        }
    }
    out
}

/// Host and port of `HOST:PORT`.
fn host_port(addr: &str) -> (&str, u16) {
    let (h, p) = addr.rsplit_once(':').unwrap_or(("0.0.0.0", addr));
    (h, p.parse().unwrap_or_else(|_| panic!("port in {addr:?}")))
}

/// The container port range of a published `[HOST:]HOSTPORTS:CONTAINERPORTS[/proto]`.
fn published_container_ports(spec: &str) -> (String, String) {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let container = ports.rsplit(':').next().unwrap().to_string();
    (container, proto.to_string())
}

fn check_cluster_compose(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let services = compose_services(&text);
    let redis = services
        .iter()
        .find(|s| {
            s.get("image")
                .is_some_and(|i| i.starts_with("redis") || i.starts_with("valkey"))
        })
        .expect("a redis service");
    let nodes: Vec<&ComposeService> = services.iter().filter(|s| s.name != redis.name).collect();
    assert!(nodes.len() >= 2, "two or more piped services");
    assert!(
        redis.list("ports").is_empty(),
        "Redis stays on the compose network"
    );
    // No secret in the file: the token comes from an env file.
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(
            !line.to_ascii_uppercase().contains("TOKEN"),
            "no token in the compose file: {line}"
        );
    }
    let mut names = BTreeSet::new();
    let mut control_hosts = BTreeSet::new();
    for s in &nodes {
        let n = &s.name;
        // Built from this repository's Dockerfile.
        let context = s
            .nested("context")
            .unwrap_or_else(|| panic!("{n}: build.context"));
        let dockerfile = s
            .nested("dockerfile")
            .unwrap_or_else(|| panic!("{n}: build.dockerfile"));
        let built = path.parent().unwrap().join(context).join(dockerfile);
        assert_eq!(
            built.canonicalize().ok(),
            root().join("Dockerfile").canonicalize().ok(),
            "{n}: builds this repository's Dockerfile"
        );
        assert!(
            s.get("env_file").is_some(),
            "{n}: PIPE_TOKEN from an env file"
        );
        // Its command parses with the real flags and makes it a node of the cluster.
        let cmd: Vec<String> = serde_json::from_str(s.get("command").expect("command"))
            .unwrap_or_else(|e| panic!("{n}: command as a JSON array: {e}"));
        assert!(
            !cmd.iter().any(|a| a == "--token" || a == "--admin-token"),
            "{n}: no token on the command line"
        );
        let mut args = PipedArgs::try_parse_from(std::iter::once("piped".to_string()).chain(cmd))
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        args.token = Some(TOKEN.into()); // as PIPE_TOKEN from the env file
        args.cluster_secret = Some("cluster-secret".into()); // PIPE_CLUSTER_SECRET likewise
        args.admin_token = Some("admin".into());
        let cfg = ServerConfig::from_args(args).unwrap_or_else(|e| panic!("{n}: {e}"));
        let cluster = cfg
            .cluster
            .as_ref()
            .unwrap_or_else(|| panic!("{n}: --cluster"));
        let url_host = cluster
            .url
            .strip_prefix("redis://")
            .and_then(|r| r.split([':', '/']).next())
            .unwrap_or_else(|| panic!("{n}: redis:// URL"));
        assert_eq!(
            url_host, redis.name,
            "{n}: the cluster URL names the redis service"
        );
        assert!(
            names.insert(cluster.node.clone()),
            "{n}: node name {} used twice",
            cluster.node
        );
        // The other nodes reach it by its service name on the compose network.
        let (_, listen_port) = host_port(&cluster.peer_listen);
        let advertised = cluster
            .peer_advertise
            .as_deref()
            .unwrap_or(&cluster.peer_listen);
        let (adv_host, adv_port) = host_port(advertised);
        assert_eq!(adv_host, *n, "{n}: peers dial it by its service name");
        assert_eq!(adv_port, listen_port, "{n}: advertised vs bound peer port");
        // Published: the control port and the whole tunnel range (tcp and udp), each
        // node on an address of its own; never the peer port.
        let ports = s.list("ports");
        let control = ports
            .iter()
            .find(|p| p.ends_with(":8910"))
            .unwrap_or_else(|| panic!("{n}: publishes 8910"));
        assert!(
            control_hosts.insert(control.rsplitn(3, ':').nth(2).unwrap_or("").to_string()),
            "{n}: each node on its own host address"
        );
        let (first, last) = (
            cfg.ports.nth(0).unwrap(),
            cfg.ports.nth(cfg.ports.len() - 1).unwrap(),
        );
        assert_eq!(
            cfg.ports.len(),
            usize::from(last - first) + 1,
            "{n}: one range"
        );
        let range = format!("{first}-{last}");
        for proto in ["tcp", "udp"] {
            assert!(
                ports
                    .iter()
                    .map(|p| published_container_ports(p))
                    .any(|(c, pr)| c == range && pr == proto),
                "{n}: publishes {range}/{proto} like its --ports"
            );
        }
        assert!(
            ports
                .iter()
                .all(|p| !p.starts_with(&format!("{listen_port}:"))
                    && !p.ends_with(&format!(":{listen_port}"))),
            "{n}: the peer port stays on the compose network"
        );
    }
}
