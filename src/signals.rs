//! Turning SIGINT and SIGTERM into a cancellation; a second signal during the drain
//! ends the process at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit status after a second SIGINT/SIGTERM cut the drain short: the stop was asked
/// for but was not clean, so neither 0 nor a code that blames the network or login.
pub const FORCED_EXIT: i32 = 1;

/// Cancels `token` at the first SIGINT or SIGTERM; exits with [`FORCED_EXIT`] at the
/// second. The token is cancelled before anything is logged, so even a log sink that
/// misbehaves cannot keep the process from stopping.
pub async fn cancel_on_signal(token: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    token.cancel();
    info!("{first}: stopping (again to stop at once)");
    let second = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    warn!("second signal ({second}): exiting without waiting for the drain");
    std::process::exit(FORCED_EXIT);
}
