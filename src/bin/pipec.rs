//! `pipec`: parse, set up logging, then run the client (or the relay) and map the
//! outcome to an exit code.

use pipe::config::cli::{PipecArgs, PipecCommand};
use pipe::config::{ClientConfig, Endpoint, LogConfig};
use pipe::relay::RelayListener;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Before any allocation of the data path: keep yamux's frame buffers in the heap.
    pipe::transport::alloc::tune_for_frames();
    let args: PipecArgs = pipe::config::cli::parse();
    match args.command {
        Some(PipecCommand::Relay { listen, target }) => {
            let log = LogConfig::from_args(&args.log);
            pipe::logging::init(&log);
            runtime(true).map_or(ExitCode::from(1), |rt| rt.block_on(relay(listen, target)))
        }
        None => {
            let cfg = match ClientConfig::from_args(args.run, &args.log) {
                Ok(c) => c,
                Err(e) => {
                    pipe::logging::init(&LogConfig::from_args(&args.log));
                    pipe::logging::fatal(&e);
                    return ExitCode::from(2);
                }
            };
            pipe::logging::init(&cfg.log);
            // One session, one thread: the driver and its splices never hop threads.
            runtime(false).map_or(ExitCode::from(1), |rt| rt.block_on(client(cfg)))
        }
    }
}

fn runtime(multi: bool) -> Option<tokio::runtime::Runtime> {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    match b.enable_all().build() {
        Ok(rt) => {
            rt.spawn(pipe::transport::alloc::trim_when_idle());
            Some(rt)
        }
        Err(e) => {
            pipe::logging::fatal(&format_args!("cannot start the runtime: {e}"));
            None
        }
    }
}

async fn client(cfg: ClientConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(pipe::signals::cancel_on_signal(shutdown.clone()));
    if let Some(addr) = cfg.inspect.clone() {
        let opts = pipe::client::inspect::Options {
            addr,
            next_free: cfg.inspect_next_free,
            token: cfg.inspect_token.clone(),
            hosts: cfg.inspect_host.clone(),
        };
        match pipe::client::inspect::start(opts, cfg.forwards.clone(), shutdown.clone()).await {
            Ok(local) => pipe::logging::stdout_line(&format_args!("inspect on http://{local}")),
            Err(e) => {
                pipe::logging::fatal(&e);
                return ExitCode::from(e.exit_code());
            }
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<pipe::client::ClientEvent>();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Some(line) = ev.stdout_line() {
                pipe::logging::stdout_line(&line);
            }
        }
    });
    let result = pipe::client::run(cfg, tx, shutdown).await;
    let _ = printer.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pipe::logging::fatal(&e);
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn relay(listen: Endpoint, target: Endpoint) -> ExitCode {
    let listener = match RelayListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            pipe::logging::fatal(&e);
            return ExitCode::from(1);
        }
    };
    pipe::logging::stdout_line(&format_args!("listening on {}", listener.describe()));
    let stop = CancellationToken::new();
    tokio::spawn(pipe::signals::cancel_on_signal(stop.clone()));
    pipe::relay::run(listener, target, stop).await;
    ExitCode::SUCCESS
}
