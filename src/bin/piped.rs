//! `piped`: parse, set up logging, bind, run, map the outcome to an exit code.

use clap::Parser;
use pipe::config::cli::{PipedArgs, PipedCommand, TokenAction};
use pipe::config::ServerConfig;
use pipe::server::{Server, ServerError};
use std::io::Write;
use std::process::ExitCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before any allocation of the data path: keep yamux's frame buffers in the heap.
    pipe::transport::alloc::tune_for_frames();
    let args = PipedArgs::parse();
    if let Some(PipedCommand::Token {
        action: TokenAction::New,
    }) = args.command
    {
        println!("{}", pipe::accounts::new_token());
        return ExitCode::SUCCESS;
    }
    let cfg = match ServerConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
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
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(serve(cfg))
}

async fn serve(cfg: ServerConfig) -> ExitCode {
    let listen = cfg.listen.clone();
    let server = match Server::new(cfg) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if let Some(fp) = server.tls_fingerprint() {
        println!("tls fingerprint {fp}");
    }
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    let admin = match server.start_admin(shutdown.clone()).await {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    match listener.local_addr() {
        Ok(a) => println!("listening on {a}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    if let Some(a) = admin {
        println!("admin on {a}");
    }
    let _ = std::io::stdout().flush();
    tokio::spawn(pipe::signals::cancel_on_signal(shutdown.clone()));
    match server.run(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &ServerError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}
