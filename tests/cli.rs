//! Bad command lines and config files: each exits 2 with a message naming the mistake,
//! prints nothing on stdout, and disturbs nothing (a live tunnel on the same server
//! keeps working and the server sees no login from the failed invocations).

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

/// Runs `bin` with `args`; returns (exit code, stdout lines, stderr).
fn run(bin: &str, args: &[String]) -> (i32, Vec<String>, String) {
    let mut p = Proc::spawn(bin, args);
    let code = p.wait_exit(WAIT);
    let out = p.drain_lines(Duration::from_millis(100));
    (code, out, p.stderr())
}

fn expect_usage_error(bin: &str, args: &[String], why: &str) {
    let (code, out, err) = run(bin, args);
    assert_eq!(code, 2, "{bin} {args:?}: exit {code}, stderr:\n{err}");
    assert!(out.is_empty(), "{bin} {args:?} printed on stdout: {out:?}");
    assert!(
        err.contains(why),
        "{bin} {args:?}: stderr does not say {why:?}:\n{err}"
    );
}

fn config_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_inputs_exit_2_and_disturb_nothing() {
    let echo = echo_service().await;
    let mut server = Piped::start(&["--token", "t0ken"]);
    let good = format!("tcp:{}:0", echo.port);
    let (_client, ports) = Pipec::start(server.addr, &["--token", "t0ken", "--forward", &good], 1);
    assert_eq!(echo_roundtrip(ports[0], b"before").await, b"before");

    let dir = tempfile::tempdir().unwrap();
    let unknown_key = config_file(
        &dir,
        "unknown.toml",
        "server = \"127.0.0.1:1\"\nspeed-limt = \"1MB\"\n",
    );
    let bad_toml = config_file(&dir, "bad.toml", "server = \n");
    let bad_table = config_file(
        &dir,
        "table.toml",
        "[[forward]]\nproto = \"sctp\"\nlocal-port = 3000\n",
    );
    let bad_range = config_file(
        &dir,
        "range.toml",
        "[[forward]]\nproto = \"tcp\"\nlocal-port = 3000\ndeny = [\"nope\"]\n",
    );
    let srv = server.addr.to_string();
    let with_server = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![s("--server"), srv.clone(), s("--token"), s("t0ken")];
        v.extend(rest.iter().map(|a| a.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            with_server(&["--forward", "tcp:1:2:3:4"]),
            "invalid forward \"tcp:1:2:3:4\"",
        ),
        (
            with_server(&["--forward", "sctp:1:2"]),
            "unknown protocol \"sctp\"",
        ),
        (
            with_server(&["--forward", "tcp:3000:70000"]),
            "invalid remote port \"70000\"",
        ),
        (
            with_server(&["--forward", "tcp:x:3000:9000:1"]),
            "expected tcp:[HOST:]LOCAL_PORT:REMOTE_PORT",
        ),
        (
            with_server(&["--forward", "tcp:0:9000"]),
            "local port must not be 0",
        ),
        (
            with_server(&["--forward", "http:3000:Bad_Name"]),
            "invalid subdomain \"Bad_Name\"",
        ),
        (with_server(&[]), "no forwards"),
        (vec![s("--forward"), good.clone()], "missing --server"),
        (
            vec![
                s("--server"),
                s("example.com:"),
                s("--forward"),
                good.clone(),
            ],
            "expected HOST:PORT",
        ),
        (
            with_server(&["--forward", &good, "--speed-limit", "fast"]),
            "invalid rate \"fast\"",
        ),
        (
            with_server(&["--forward", &good, "--speed-limit", "0"]),
            "must be above zero",
        ),
        (
            with_server(&[
                "--forward",
                &good,
                "--heartbeat-interval",
                "10s",
                "--heartbeat-timeout",
                "5s",
            ]),
            "must be longer than heartbeat-interval",
        ),
        (
            with_server(&["--forward", &good, "--heartbeat-interval", "soon"]),
            "invalid duration \"soon\"",
        ),
        (
            with_server(&["--forward", &good, "--udp-max-peers", "0"]),
            "udp-max-peers must be at least 1",
        ),
        (
            with_server(&["--forward", &good, "--log-format", "xml"]),
            "invalid value 'xml'",
        ),
        (
            with_server(&["--forward", &good, "--bogus"]),
            "unexpected argument '--bogus'",
        ),
        (
            with_server(&["--forward", &good, "--name", " "]),
            "invalid --name \" \": give 1 to 64 characters, no control characters",
        ),
        (
            with_server(&["--forward", &good, "--name", &"n".repeat(65)]),
            "give 1 to 64 characters",
        ),
        (
            with_server(&["--config", "/nonexistent/pipec.toml"]),
            "cannot read config /nonexistent/pipec.toml",
        ),
        (
            with_server(&["--config", &unknown_key]),
            "unknown field `speed-limt`",
        ),
        (with_server(&["--config", &bad_toml]), "invalid config"),
        (
            with_server(&["--config", &bad_table]),
            "unknown proto \"sctp\"",
        ),
        (
            with_server(&["--config", &bad_range]),
            "invalid address range \"nope\"",
        ),
    ];
    let long_password = format!("http:3000:x,basic-auth=ann:{}", "p".repeat(73));
    let option_cases: [(&str, &str); 11] = [
        ("tcp:3000:0,colour=red", "unknown option \"colour\""),
        ("tcp:3000:0,allow", "option \"allow\" is not KEY=VALUE"),
        (
            "tcp:3000:0,allow=10.0.0.0/33",
            "invalid address range \"10.0.0.0/33\"",
        ),
        (
            "tcp:3000:0,basic-auth=a:b",
            "basic-auth is for http forwards only",
        ),
        ("http:3000:x,basic-auth=nopass", "expected user:password"),
        (&long_password, "1 to 72 bytes"),
        (
            "tcp:3000:0,proxy-protocol=v3",
            "invalid proxy-protocol \"v3\"",
        ),
        (
            "udp:53:0,proxy-protocol=v2",
            "proxy-protocol is for tcp and http forwards",
        ),
        (
            "tcp:3000:0,proxy-protocol=v1,proxy-protocol=v2",
            "option proxy-protocol given twice",
        ),
        ("tcp:3000:0,inspect=maybe", "invalid inspect \"maybe\""),
        (
            "udp:53:0,inspect=true",
            "inspect is for http and tcp forwards",
        ),
    ];
    let cases: Vec<(Vec<String>, &str)> = cases
        .into_iter()
        .chain(
            option_cases
                .iter()
                .map(|(spec, why)| (with_server(&["--forward", spec]), *why)),
        )
        .collect();
    for (args, why) in &cases {
        expect_usage_error(pipec_bin(), args, why);
    }

    // Nothing reached the server, and the live tunnel still works.
    assert_eq!(echo_roundtrip(ports[0], b"after").await, b"after");
    let logins = server.proc.stderr().matches("client logged in").count();
    assert_eq!(
        logins,
        1,
        "only the good client logged in:\n{}",
        server.proc.stderr()
    );
    server.proc.signal("TERM");
    assert_eq!(server.proc.wait_exit(WAIT), 0);
}

#[test]
fn bad_server_inputs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let unknown_key = config_file(
        &dir,
        "unknown.toml",
        "listen = \"127.0.0.1:0\"\nmax-tunnel = 3\n",
    );
    let bad_format = config_file(&dir, "format.toml", "log-format = \"xml\"\n");
    let bad_proxy = config_file(&dir, "proxy.toml", "accept-proxy-protocol = [\"x\"]\n");
    let base = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![s("--listen"), s("127.0.0.1:0")];
        v.extend(rest.iter().map(|a| a.to_string()));
        v
    };
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            base(&["--ports", "9002-9000"]),
            "invalid port range \"9002-9000\"",
        ),
        (base(&["--ports", "0-10"]), "invalid port range \"0-10\""),
        (base(&["--ports", "nine"]), "invalid port \"nine\""),
        (base(&["--bind-addr", "public"]), "expected an IP address"),
        (
            base(&["--udp-bind-addr", "no-such-host.invalid"]),
            "invalid udp-bind-addr \"no-such-host.invalid\"",
        ),
        (
            base(&["--max-tunnels", "0"]),
            "max-tunnels must be at least 1",
        ),
        (base(&["--max-tunnels", "many"]), "invalid value 'many'"),
        (base(&["--speed-limit", "1PB"]), "unknown unit \"PB\""),
        (
            base(&["--heartbeat-timeout", "1s", "--heartbeat-interval", "1s"]),
            "must be longer than heartbeat-interval",
        ),
        (base(&["--tls-cert", missing]), "--tls-key"),
        (
            base(&["--tls-cert", missing, "--tls-key", missing]),
            "missing.pem",
        ),
        (base(&["--admin", "0.0.0.0:0"]), "not a loopback address"),
        (
            base(&["--config", &unknown_key]),
            "unknown field `max-tunnel`",
        ),
        (
            base(&["--config", &bad_format]),
            "invalid log-format \"xml\"",
        ),
        (base(&["--allow", "nope"]), "invalid address range \"nope\""),
        (
            base(&["--accept-proxy-protocol", "10.0.0.0/40"]),
            "invalid address range \"10.0.0.0/40\"",
        ),
        (
            base(&["--config", &bad_proxy]),
            "accept-proxy-protocol: invalid address range \"x\"",
        ),
    ];
    for (args, why) in &cases {
        expect_usage_error(piped_bin(), args, why);
    }
}

#[test]
fn a_port_that_cannot_be_bound_is_a_runtime_failure_exit_1() {
    // Hold a port, then ask piped to listen on it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (code, out, err) = run(piped_bin(), &[s("--listen"), addr.clone()]);
    assert_eq!(code, 1, "stderr:\n{err}");
    assert!(out.is_empty(), "{out:?}");
    assert!(
        err.contains(&format!("cannot listen on the control address {addr}")),
        "{err}"
    );
}

/// Natural mistakes get a message that says what is wrong and what to write instead
/// (the exact text), exit 2, and nothing on stdout.
#[test]
fn natural_mistakes_are_named_with_their_fix() {
    let pipec = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![s("--server"), s("127.0.0.1:1")];
        v.extend(rest.iter().map(|a| a.to_string()));
        v
    };
    let cases: [(Vec<String>, &str); 6] = [
        (
            pipec(&["--forward", "tcp:localhost:3000"]),
            "invalid forward \"tcp:localhost:3000\": \"localhost\" is not a port; with a local \
             host give both ports, tcp:localhost:3000:REMOTE_PORT (tcp:localhost:3000:0 lets \
             the server pick the remote port)",
        ),
        (
            pipec(&["--forward", "3000:9000"]),
            "invalid forward \"3000:9000\": it names no protocol; write tcp:3000:9000 (or \
             udp:3000:9000)",
        ),
        (
            pipec(&["--forward", "tcp:3000:99999"]),
            "invalid remote port \"99999\" in forward \"tcp:3000:99999\": a port is a number \
             from 0 to 65535 (0 lets the server pick one)",
        ),
        (
            pipec(&["--forward", "udp:70000:53"]),
            "invalid local port \"70000\" in forward \"udp:70000:53\": a port is a number from \
             1 to 65535",
        ),
        (
            pipec(&["--forward", "tcp:3000:0", "--speed-limit", "10", "MB"]),
            "error: \"10 MB\" is two arguments: write the rate without a space, --speed-limit \
             10MB",
        ),
        (
            pipec(&["--forward", "tcp:3000:0,colour=red"]),
            "unknown option \"colour\" (name, allow, deny, basic-auth, auth, oidc-allow, proxy-protocol, \
             inspect, speed-limit; see pipec --help)",
        ),
    ];
    for (args, why) in &cases {
        expect_usage_error(pipec_bin(), args, why);
    }
    let piped_cases: [(Vec<String>, &str); 3] = [
        (
            vec![s("--listen"), s("8910x")],
            "error: invalid listen \"8910x\": expected PORT or HOST:PORT, e.g. 8910 or \
             127.0.0.1:8910",
        ),
        (
            vec![
                s("--listen"),
                s("127.0.0.1:0"),
                s("--admin"),
                s("localhost:88888"),
            ],
            "error: invalid admin \"localhost:88888\": the port is a number from 0 to 65535",
        ),
        (
            vec![
                s("--listen"),
                s("127.0.0.1:0"),
                s("--speed-limit=1.5"),
                s("GiB"),
            ],
            "error: \"1.5 GiB\" is two arguments: write the rate without a space, \
             --speed-limit 1.5GiB",
        ),
    ];
    for (args, why) in &piped_cases {
        expect_usage_error(piped_bin(), args, why);
    }
}

/// `pipec --help` explains forwards: the spec, examples, and every `,KEY=VALUE`
/// option with an example; `-h` stays short and points to it.
#[test]
fn the_help_lists_every_forward_option_with_an_example() {
    let help_of = |flag: &str| {
        let out = std::process::Command::new(pipec_bin())
            .arg(flag)
            .output()
            .unwrap();
        assert!(out.status.success(), "pipec {flag}: {}", out.status);
        String::from_utf8(out.stdout).unwrap()
    };
    let help = help_of("--help");
    for e in ["tcp:3000:9000", "udp:127.0.0.1:53:5353", "http:3000:myapp"] {
        assert!(help.contains(e), "--help lacks the example {e}:\n{help}");
    }
    for (opt, _, example) in pipe::config::cli::FORWARD_OPTIONS {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
        assert!(
            help.contains(&format!("e.g. {example}")),
            "--help lacks {example}"
        );
    }
    let short = help_of("-h");
    assert!(
        short.contains("options follow as SPEC,KEY=VALUE (see --help)"),
        "{short}"
    );
    assert!(!short.contains("basic-auth="), "{short}");
}
