//! `piped`: parse, set up logging, bind, run, map the outcome to an exit code.

use pipe::config::cli::{PipedArgs, PipedCommand, TokenAction};
use pipe::config::{LogConfig, ServerConfig};
use pipe::server::{Server, ServerError};
use std::process::ExitCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before any allocation of the data path: keep yamux's frame buffers in the heap.
    pipe::transport::alloc::tune_for_frames();
    let args: PipedArgs = pipe::config::cli::parse();
    if let Some(PipedCommand::Token {
        action: TokenAction::New,
    }) = args.command
    {
        pipe::logging::stdout_line(&pipe::accounts::new_token());
        return ExitCode::SUCCESS;
    }
    let log = LogConfig::from_args(&args.log);
    let cfg = match ServerConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            pipe::logging::init(&log);
            pipe::logging::fatal(&e);
            return ExitCode::from(2);
        }
    };
    pipe::logging::init(&cfg.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            pipe::logging::fatal(&format_args!("cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    rt.spawn(pipe::transport::alloc::trim_when_idle());
    rt.block_on(serve(cfg))
}

/// The start-up summary: how clients get in and what they may claim, in one line.
fn summary(
    cfg: &ServerConfig,
    admin: Option<std::net::SocketAddr>,
    fingerprint: Option<&str>,
) -> String {
    let auth = match (&cfg.users, cfg.token.is_some()) {
        (Some(f), _) => format!("users from {}", f.display()),
        (None, true) => "token".into(),
        (None, false) => "open (no token)".into(),
    };
    let tls = match (&cfg.tls_cert, fingerprint) {
        (Some(cert), _) => format!("cert {}", cert.display()),
        (None, Some(fp)) => format!("self-signed {fp}"),
        (None, None) => "off".into(),
    };
    let admin = match (admin, cfg.admin_token.is_some()) {
        (Some(a), true) => format!("{a} (admin token)"),
        (Some(a), false) => format!("{a} (no admin token)"),
        (None, _) => "off".into(),
    };
    let http = match (&cfg.domain, &cfg.oidc) {
        (Some(d), Some(o)) => format!("https://*.{d} via Caddy, sign-in at {}", o.issuer),
        (Some(d), None) => format!("https://*.{d} via Caddy"),
        (None, _) => "off".into(),
    };
    format!(
        "piped {}: auth {auth}, TLS {tls}, ports {}, admin {admin}, http forwards {http}",
        pipe::VERSION_LINE,
        cfg.ports
    )
}

async fn serve(cfg: ServerConfig) -> ExitCode {
    let listen = cfg.listen.clone();
    let summary_cfg = cfg.clone();
    let server = match Server::new(cfg) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let fingerprint = server.tls_fingerprint().map(|fp| fp.to_string());
    if let Some(fp) = &fingerprint {
        pipe::logging::stdout_line(&format_args!("tls fingerprint {fp}"));
    }
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            pipe::logging::fatal(&format_args!(
                "cannot listen on the control address {listen}: {e}"
            ));
            return ExitCode::from(1);
        }
    };
    let peer = match server.join_cluster().await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let shutdown = CancellationToken::new();
    let admin = match server.start_admin(shutdown.clone()).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if let Err(e) = server.start_sign_in(shutdown.clone()).await {
        return fail(&e);
    }
    match listener.local_addr() {
        Ok(a) => pipe::logging::stdout_line(&format_args!("listening on {a}")),
        Err(e) => {
            pipe::logging::fatal(&e);
            return ExitCode::from(1);
        }
    }
    if let Some(a) = admin {
        pipe::logging::stdout_line(&format_args!("admin on {a}"));
    }
    if let Some(a) = peer {
        pipe::logging::stdout_line(&format_args!("peer on {a}"));
    }
    tracing::info!("{}", summary(&summary_cfg, admin, fingerprint.as_deref()));
    tokio::spawn(pipe::signals::cancel_on_signal(shutdown.clone()));
    match server.run(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &ServerError) -> ExitCode {
    pipe::logging::fatal(e);
    ExitCode::from(e.exit_code())
}
