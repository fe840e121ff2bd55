//! fly.toml: the control port, the admin behind Fly's HTTPS, TCP and UDP port ranges
//! matching piped's `--ports`, and one machine.

use super::docker::{docker_cmd, flag_value};
use super::read;
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
        env.keys().all(|k| !k.contains("TOKEN")),
        "secrets go in `fly secrets`, not [env]"
    );
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

    // One machine, kept running, and the file says why.
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
        lower.contains("fly scale count 1"),
        "tell users to run exactly one machine"
    );
    assert!(
        lower.contains("one machine")
            && lower.contains("tunnel lives on the server its client is connected to")
    );
}
