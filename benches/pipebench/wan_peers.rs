//! The systems of the wan workload, started across the emulated link: the server side
//! (`piped`, rathole's server, `bore server`) in namespace `A` beside the visitors, the
//! client side (`pipec`, rathole's client, `bore local`) in namespace `B` beside the
//! local service, so that only the tunnel's own connections cross the link. `direct` is
//! the visitor in `A` talking to the service in `B` over the link itself.
//!
//! The loopback starters (`systems`, `peers`) stay as they are; these differ in where
//! each process runs and which address it dials, and the rest is the same configuration.

use crate::procs::{free_tcp_port, wait_listening_in, Proc};
use crate::systems::{Env, Kind, Running, System, BORE_CONTROL_PORT, READY, TOKEN};
use crate::wan_net::{Netns, Side, ADDR_A, ADDR_B};

/// A system up across the link, and where a visitor in `A` connects.
pub struct OnLink {
    pub run: Running,
    pub visitor: String,
}

/// Starts `sys` forwarding to the service on `backend` in `B`.
pub fn start(sys: &System, env: &Env, net: &Netns, backend: u16) -> Result<OnLink, String> {
    let local = |run: Running| OnLink {
        visitor: format!("127.0.0.1:{}", run.port),
        run,
    };
    match sys.kind {
        Kind::Direct => Ok(OnLink {
            run: running(vec![], backend),
            visitor: format!("{ADDR_B}:{backend}"),
        }),
        Kind::Pipe {
            tls: false,
            udp: false,
        } => pipe(sys, net, backend).map(local),
        Kind::Rathole {
            noise: false,
            udp: false,
        } => rathole(sys, env, net, backend).map(local),
        Kind::Bore => bore(sys, env, net, backend).map(local),
        _ => Err(format!("{}: not measured on the emulated link", sys.name)),
    }
}

fn running(procs: Vec<Proc>, port: u16) -> Running {
    Running {
        procs,
        port,
        ports: vec![port],
        inspect: None,
    }
}

fn pipe(sys: &System, net: &Netns, backend: u16) -> Result<Running, String> {
    let mut server = Proc::spawn(
        &format!("{} piped", sys.name),
        net.command(Side::A, sys.bin_dir.join("piped"))
            .envs(sys.env.clone())
            .args(["--listen", &format!("{ADDR_A}:0")])
            .args(["--bind-addr", "127.0.0.1", "--token", TOKEN]),
        false,
    )?;
    let addr = server.wait_for(READY, |l| {
        l.strip_prefix("listening on ")
            .map(|a| a.trim().to_string())
    })?;
    let mut client = Proc::spawn(
        &format!("{} pipec", sys.name),
        net.command(Side::B, sys.bin_dir.join("pipec"))
            .envs(sys.env.clone())
            .args(["--server", &addr, "--token", TOKEN])
            .args(["--forward", &format!("tcp:127.0.0.1:{backend}:0")]),
        false,
    )?;
    let port = client
        .wait_for(READY, |l| {
            l.strip_prefix("forwarding tcp://")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        })
        .map_err(|e| format!("{e} (server: {})", server.tail()))?;
    Ok(running(vec![server, client], port))
}

fn rathole(sys: &System, env: &Env, net: &Netns, backend: u16) -> Result<Running, String> {
    if !env.rathole.exists() {
        return Err(format!("{} is not installed", env.rathole.display()));
    }
    let (control, public) = (free_tcp_port(), free_tcp_port());
    let server_toml = format!(
        "[server]\nbind_addr = \"{ADDR_A}:{control}\"\ndefault_token = \"{TOKEN}\"\n\
         [server.services.bench]\ntype = \"tcp\"\nbind_addr = \"127.0.0.1:{public}\"\n\
         [server.transport]\ntype = \"tcp\"\n"
    );
    let client_toml = format!(
        "[client]\nremote_addr = \"{ADDR_A}:{control}\"\ndefault_token = \"{TOKEN}\"\n\
         [client.services.bench]\ntype = \"tcp\"\nlocal_addr = \"127.0.0.1:{backend}\"\n\
         [client.transport]\ntype = \"tcp\"\n"
    );
    let sp = env.work.join(format!("wan-rathole-server-{control}.toml"));
    let cp = env.work.join(format!("wan-rathole-client-{control}.toml"));
    for (p, text) in [(&sp, &server_toml), (&cp, &client_toml)] {
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let mut server = Proc::spawn(
        &format!("{} server", sys.name),
        net.command(Side::A, &env.rathole).arg("--server").arg(&sp),
        false,
    )?;
    wait_listening_in(server.pid(), control, READY)
        .map_err(|e| format!("{e}: {}", server.tail()))?;
    let mut client = Proc::spawn(
        &format!("{} client", sys.name),
        net.command(Side::B, &env.rathole).arg("--client").arg(&cp),
        false,
    )?;
    // The server binds the service's port once the client's control channel is up.
    let want = format!("Listening at 127.0.0.1:{public}");
    server
        .wait_for(READY, |l| l.contains(&want).then_some(()))
        .map_err(|e| format!("{e} (client: {})", client.tail()))?;
    client.drain();
    Ok(running(vec![server, client], public))
}

fn bore(sys: &System, env: &Env, net: &Netns, backend: u16) -> Result<Running, String> {
    if !env.bore.exists() {
        return Err(format!("{} is not installed", env.bore.display()));
    }
    // bore's control port is fixed; namespace `A` is ours alone, so it is free there.
    let mut server = Proc::spawn(
        &format!("{} server", sys.name),
        net.command(Side::A, &env.bore).arg("server"),
        false,
    )?;
    wait_listening_in(server.pid(), BORE_CONTROL_PORT, READY)
        .map_err(|e| format!("{e}: {}", server.tail()))?;
    let mut client = Proc::spawn(
        &format!("{} local", sys.name),
        net.command(Side::B, &env.bore)
            .args(["local", &backend.to_string(), "--local-host", "127.0.0.1"])
            .args(["--to", ADDR_A]),
        false,
    )?;
    let port = client
        .wait_for(READY, |l| {
            l.split("listening at ")
                .nth(1)
                .and_then(|a| a.trim().rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        })
        .map_err(|e| format!("{e} (server: {})", server.tail()))?;
    Ok(running(vec![server, client], port))
}
