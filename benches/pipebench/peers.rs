//! Starting the peers pipe is measured against: rathole (tcp or Noise transport, one
//! service per forward, on one client) and bore (`bore server` + `bore local`). Each
//! comes up in front of the backend ports it is given or returns why it could not.

use crate::procs::{free_tcp_port, tcp_listening, wait_listening, Proc};
use crate::systems::{Env, Running, System, BORE_CONTROL_PORT, READY, TOKEN};
use std::path::Path;
use std::process::Command;

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// rathole with one service per `(type, backend, public port)`; the first is `port`.
pub(crate) fn start_rathole(
    sys: &System,
    env: &Env,
    noise: bool,
    services: &[(&str, u16, u16)],
) -> Result<Running, String> {
    if !env.rathole.exists() {
        return Err(format!("{} is not installed", env.rathole.display()));
    }
    let control = free_tcp_port();
    let (s_transport, c_transport) = if noise {
        let (private, public_key) = env.noise.as_ref().ok_or("no noise keys")?;
        (
            format!("type = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("type = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public_key}\"\n"),
        )
    } else {
        (
            "type = \"tcp\"\n".to_string(),
            "type = \"tcp\"\n".to_string(),
        )
    };
    let mut s =
        format!("[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"{TOKEN}\"\n");
    let mut c =
        format!("[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"{TOKEN}\"\n");
    for (i, (kind, backend, public)) in services.iter().enumerate() {
        s += &format!(
            "[server.services.bench{i}]\ntype = \"{kind}\"\nbind_addr = \"127.0.0.1:{public}\"\n"
        );
        c += &format!(
            "[client.services.bench{i}]\ntype = \"{kind}\"\nlocal_addr = \"127.0.0.1:{backend}\"\n"
        );
    }
    s += &format!("[server.transport]\n{s_transport}");
    c += &format!("[client.transport]\n{c_transport}");
    let sp = env.work.join(format!("rathole-server-{control}.toml"));
    let cp = env.work.join(format!("rathole-client-{control}.toml"));
    write(&sp, &s)?;
    write(&cp, &c)?;
    let mut server = Proc::spawn(
        &format!("{} server", sys.name),
        Command::new(&env.rathole).arg("--server").arg(&sp),
        false,
    )?;
    wait_listening(control, READY).map_err(|e| format!("{e}: {}", server.tail()))?;
    let mut client = Proc::spawn(
        &format!("{} client", sys.name),
        Command::new(&env.rathole).arg("--client").arg(&cp),
        false,
    )?;
    // The server binds a service's port once that service's control channel is up; the
    // services come up in any order.
    let mut want: Vec<String> = services
        .iter()
        .map(|(_, _, p)| format!("Listening at 127.0.0.1:{p}"))
        .collect();
    while !want.is_empty() {
        let i = server
            .wait_for(READY, |l| want.iter().position(|w| l.contains(w.as_str())))
            .map_err(|e| format!("{e} (client: {})", client.tail()))?;
        want.remove(i);
    }
    client.drain();
    let ports: Vec<u16> = services.iter().map(|(_, _, p)| *p).collect();
    Ok(Running {
        procs: vec![server, client],
        port: ports[0],
        ports,
        inspect: None,
    })
}

pub(crate) fn start_bore(sys: &System, env: &Env, backend: u16) -> Result<Running, String> {
    if !env.bore.exists() {
        return Err(format!("{} is not installed", env.bore.display()));
    }
    if tcp_listening(BORE_CONTROL_PORT) {
        return Err(format!(
            "bore's fixed control port {BORE_CONTROL_PORT} is taken (run through benches/run.sh, which uses a network namespace)"
        ));
    }
    let mut server = Proc::spawn(
        &format!("{} server", sys.name),
        Command::new(&env.bore).args(["server", "--bind-addr", "127.0.0.1"]),
        false,
    )?;
    wait_listening(BORE_CONTROL_PORT, READY).map_err(|e| format!("{e}: {}", server.tail()))?;
    let mut client = Proc::spawn(
        &format!("{} local", sys.name),
        Command::new(&env.bore).args([
            "local".to_string(),
            backend.to_string(),
            "--local-host".into(),
            "127.0.0.1".into(),
            "--to".into(),
            "127.0.0.1".into(),
        ]),
        false,
    )?;
    let port = client.wait_for(READY, |l| {
        l.split("listening at ")
            .nth(1)
            .and_then(|a| a.trim().rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
    })?;
    Ok(Running {
        procs: vec![server, client],
        port,
        ports: vec![port],
        inspect: None,
    })
}
