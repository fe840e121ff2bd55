//! The Caddyfiles: `caddy fmt`-clean and accepted by `caddy adapt` when Caddy is
//! installed, and wired to what piped expects (admin API on loopback, `srv0`, the
//! on-demand check at piped's admin address).

use super::configs::server_config;
use super::{root, run, tool, write_temp};
use std::path::Path;
use std::process::Command;

pub(crate) fn check_caddyfile(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    // What piped relies on: Caddy's admin API on loopback, one wildcard site.
    assert!(
        text.contains("admin 127.0.0.1:2019"),
        "{}: admin on loopback",
        path.display()
    );
    assert!(
        text.contains("*.example.com {"),
        "{}: a wildcard site",
        path.display()
    );
    assert_eq!(
        text.matches('{').count(),
        text.matches('}').count(),
        "{}: braces",
        path.display()
    );
    let Some(caddy) = tool("/usr/bin/caddy") else {
        eprintln!(
            "caddy not installed: structural checks only for {}",
            path.display()
        );
        return;
    };
    let fmt = run(Command::new(caddy).arg("fmt").arg(path));
    assert!(fmt.status.success());
    assert_eq!(
        String::from_utf8_lossy(&fmt.stdout),
        text,
        "{}: not `caddy fmt` clean",
        path.display()
    );

    let adapt = |p: &Path| {
        run(Command::new(caddy)
            .args(["adapt", "--adapter", "caddyfile", "--config"])
            .arg(p))
    };
    let mut out = adapt(path);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() && stderr.contains("module not registered: dns.providers.") {
        // A DNS provider is a Caddy plugin (see the file's header); a stock Caddy lacks it.
        // Validate everything else with the provider line swapped for a built-in option.
        let dir = tempfile::tempdir().unwrap();
        let stock: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("dns ") {
                    "\t\tprotocols tls1.2"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        out = adapt(&write_temp(dir.path(), "Caddyfile", &stock));
    }
    assert!(
        out.status.success(),
        "caddy adapt {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["admin"]["listen"], "127.0.0.1:2019");
    // piped's default --caddy-server is srv0, the name Caddyfile configs get.
    let srv0 = &json["apps"]["http"]["servers"]["srv0"];
    assert!(srv0.is_object(), "no srv0 in {json}");
    if let Some(ask) = json["apps"]["tls"]["automation"]["on_demand"]["ask"].as_str() {
        // The on-demand check is piped's admin route, at piped.toml's admin address.
        let admin = server_config(&root().join("configs/piped.toml"))
            .admin
            .unwrap();
        assert_eq!(ask, format!("http://{admin}/caddy/ask"));
    }
}
