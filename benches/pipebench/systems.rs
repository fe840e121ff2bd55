//! The systems under test and how to start each in front of a backend port.
//!
//! A started system is the processes that make it up (measured for RSS and CPU) and the
//! port a visitor connects to. A system that cannot start (a binary missing, a feature
//! not built yet, a fixed port taken) is an error string: reported, never a number.
//! How the peers (rathole, bore) are started is in `peers`.

use crate::peers;
use crate::procs::{free_tcp_port, wait_listening, Proc};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long any system gets to become ready.
pub(crate) const READY: Duration = Duration::from_secs(15);
/// bore's control port: fixed in bore 0.6 (no flag), so the harness runs in a network
/// namespace of its own where nothing else can hold it.
pub const BORE_CONTROL_PORT: u16 = 7835;
pub(crate) const TOKEN: &str = "pipebench-token";
/// socat's listen backlog: tokio's default, which the relay gets. socat's own default (5)
/// drops connections when the memory workload opens them 128 at a time.
const SOCAT_BACKLOG: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The client talks to the backend itself.
    Direct,
    /// `pipec relay`.
    Relay,
    /// `socat TCP-LISTEN:..,fork,reuseaddr TCP:..`.
    Socat,
    /// `piped` + `pipec`.
    Pipe { tls: bool, udp: bool },
    /// rathole server + client.
    Rathole { noise: bool, udp: bool },
    /// `bore server` + `bore local`.
    Bore,
}

/// The plain tunnel, TCP forward only.
pub const PIPE: Kind = Kind::Pipe {
    tls: false,
    udp: false,
};
/// The tunnel with TLS on the control connection (issue 6).
pub const PIPE_TLS: Kind = Kind::Pipe {
    tls: true,
    udp: false,
};
/// The tunnel with a TCP and a UDP forward on one port number (iperf3 -u needs both).
pub const PIPE_UDP: Kind = Kind::Pipe {
    tls: false,
    udp: true,
};
/// rathole with its tcp transport.
pub const RATHOLE: Kind = Kind::Rathole {
    noise: false,
    udp: false,
};
/// rathole with its Noise transport (issue 6's encrypted peer).
pub const RATHOLE_NOISE: Kind = Kind::Rathole {
    noise: true,
    udp: false,
};
/// rathole with a TCP and a UDP service on one port number.
pub const RATHOLE_UDP: Kind = Kind::Rathole {
    noise: false,
    udp: true,
};

#[derive(Clone, Debug)]
pub struct System {
    /// Name in the report, e.g. `pipe`, `relay`, `pipe@split64k` for an A/B variant.
    pub name: String,
    pub kind: Kind,
    /// Where `piped`/`pipec` live (pipe systems only).
    pub bin_dir: PathBuf,
    /// Extra environment for `piped`/`pipec` (an A/B variant, e.g. `LD_PRELOAD`).
    pub env: Vec<(String, String)>,
}

/// Paths and scratch space every system may need.
pub struct Env {
    /// The project's root (tests/oidc holds the sign-in workload's provider).
    pub root: PathBuf,
    pub work: PathBuf,
    pub rathole: PathBuf,
    pub bore: PathBuf,
    /// PEM files for pipe's TLS: (CA, server cert, server key).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// rathole noise keys: (private, public), base64.
    pub noise: Option<(String, String)>,
}

pub struct Running {
    pub procs: Vec<Proc>,
    /// The port visitors connect to (TCP; for UDP systems the same number for both).
    pub port: u16,
    /// Every forward's public port, in the order asked for (`port` is the first).
    pub ports: Vec<u16>,
    /// pipe's inspector address, when one was asked for.
    pub inspect: Option<String>,
}

/// One TCP forward of a tunnel started by `start_forwards`: the local port it reaches,
/// and (pipe only) whether the request inspector watches it.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    pub backend: u16,
    pub inspect: bool,
}

impl Running {
    pub fn pgids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    pub fn stop(mut self) {
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
    }

    /// Fails if any process of the system has died.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if !p.alive() {
                let name = p.name.clone();
                return Err(format!("{name} died: {}", p.tail()));
            }
        }
        Ok(())
    }

    pub fn drain(&mut self) {
        for p in &mut self.procs {
            p.drain();
        }
    }
}

/// Starts `sys` forwarding to 127.0.0.1:`backend`. For UDP systems `udp_port` is the
/// public port to use for both the TCP and the UDP forward (iperf3 needs both).
pub fn start(
    sys: &System,
    env: &Env,
    backend: u16,
    udp_port: Option<u16>,
) -> Result<Running, String> {
    match sys.kind {
        Kind::Direct => Ok(Running {
            procs: vec![],
            port: backend,
            ports: vec![backend],
            inspect: None,
        }),
        Kind::Relay => {
            let mut p = Proc::spawn(
                &sys.name,
                Command::new(sys.bin_dir.join("pipec"))
                    .envs(sys.env.clone())
                    .args([
                        "relay".to_string(),
                        "tcp:127.0.0.1:0".to_string(),
                        format!("tcp:127.0.0.1:{backend}"),
                    ]),
                false,
            )?;
            let port = p.wait_for(READY, |l| {
                l.strip_prefix("listening on tcp:")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
            })?;
            Ok(Running {
                procs: vec![p],
                port,
                ports: vec![port],
                inspect: None,
            })
        }
        Kind::Socat => {
            let port = free_tcp_port();
            let p = Proc::spawn(
                &sys.name,
                Command::new("socat").args([
                    format!(
                        "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog={SOCAT_BACKLOG}{}",
                        std::env::var("SOCAT_EXTRA").unwrap_or_default()
                    ),
                    format!("TCP:127.0.0.1:{backend}"),
                ]),
                false,
            )?;
            wait_listening(port, READY)?;
            Ok(Running {
                procs: vec![p],
                port,
                ports: vec![port],
                inspect: None,
            })
        }
        Kind::Pipe { tls, udp } => {
            let forwards = match udp.then_some(udp_port).flatten() {
                Some(p) => vec![
                    format!("tcp:127.0.0.1:{backend}:{p}"),
                    format!("udp:127.0.0.1:{backend}:{p}"),
                ],
                None => vec![format!("tcp:127.0.0.1:{backend}:0")],
            };
            start_pipe(sys, env, tls, &forwards, false)
        }
        Kind::Rathole { noise, udp } => {
            let services = match udp.then_some(udp_port).flatten() {
                Some(p) => vec![("tcp", backend, p), ("udp", backend, p)],
                None => vec![("tcp", backend, free_tcp_port())],
            };
            peers::start_rathole(sys, env, noise, &services)
        }
        Kind::Bore => peers::start_bore(sys, env, backend),
    }
}

/// Starts a tunnel system with several TCP forwards on one client session (pipe: one
/// `pipec` with a `--forward` each, and `--inspect 127.0.0.1:0` when one is inspected;
/// rathole: one client with a service each). Other systems carry one forward only.
pub fn start_forwards(sys: &System, env: &Env, forwards: &[Forward]) -> Result<Running, String> {
    match sys.kind {
        Kind::Pipe { tls, udp: false } => {
            let specs: Vec<String> = forwards
                .iter()
                .map(|f| {
                    let inspect = if f.inspect { ",inspect=true" } else { "" };
                    format!("tcp:127.0.0.1:{}:0{inspect}", f.backend)
                })
                .collect();
            start_pipe(sys, env, tls, &specs, forwards.iter().any(|f| f.inspect))
        }
        Kind::Rathole { noise, udp: false } if forwards.iter().all(|f| !f.inspect) => {
            let services: Vec<_> = forwards
                .iter()
                .map(|f| ("tcp", f.backend, free_tcp_port()))
                .collect();
            peers::start_rathole(sys, env, noise, &services)
        }
        _ => Err(format!("{}: not a tunnel with several forwards", sys.name)),
    }
}

fn start_pipe(
    sys: &System,
    env: &Env,
    tls: bool,
    forwards: &[String],
    inspect: bool,
) -> Result<Running, String> {
    let mut server_args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--bind-addr",
        "127.0.0.1",
        "--token",
        TOKEN,
    ]
    .map(String::from)
    .to_vec();
    let mut client_extra: Vec<String> = Vec::new();
    if tls {
        let (ca, cert, key) = env.tls.as_ref().ok_or("no TLS certificate was generated")?;
        server_args.extend([
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]);
        client_extra.extend(["--tls".into(), "--tls-ca".into(), ca.display().to_string()]);
    }
    if inspect {
        client_extra.extend(["--inspect".into(), "127.0.0.1:0".into()]);
    }
    let mut server = Proc::spawn(
        &format!("{} piped", sys.name),
        Command::new(sys.bin_dir.join("piped"))
            .envs(sys.env.clone())
            .args(&server_args),
        false,
    )?;
    let addr = server.wait_for(READY, |l| {
        l.strip_prefix("listening on ")
            .map(|a| a.trim().to_string())
    })?;
    let mut client_args: Vec<String> =
        vec!["--server".into(), addr, "--token".into(), TOKEN.into()];
    client_args.extend(client_extra);
    for f in forwards {
        client_args.extend(["--forward".into(), f.clone()]);
    }
    let mut client = Proc::spawn(
        &format!("{} pipec", sys.name),
        Command::new(sys.bin_dir.join("pipec"))
            .envs(sys.env.clone())
            .args(&client_args),
        false,
    )?;
    let inspect = if inspect {
        // Printed before the session starts; a forward's line would never come without it.
        let addr = client
            .wait_for(READY, |l| {
                l.strip_prefix("inspect on http://")
                    .map(|a| a.trim().to_string())
            })
            .map_err(|e| format!("no inspector: {e}"))?;
        Some(addr)
    } else {
        None
    };
    let mut ports = Vec::new();
    for f in forwards {
        let want = if f.starts_with("udp:") {
            "udp://"
        } else {
            "tcp://"
        };
        let port = client
            .wait_for(READY, |l| {
                l.strip_prefix("forwarding ")
                    .filter(|r| r.starts_with(want))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|u| u.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .map_err(|e| format!("{e} (server: {})", server.tail()))?;
        ports.push(port);
    }
    Ok(Running {
        procs: vec![server, client],
        port: ports.first().copied().unwrap_or(0),
        ports,
        inspect,
    })
}
