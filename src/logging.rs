//! Log setup shared by both programs: tracing to stderr, text or JSON, level from
//! `RUST_LOG` or -v/-q; and the two other things the programs write to the terminal,
//! stdout lines and the final fatal line.
//!
//! Losing a log sink (stderr closed by `| head`, a dead journald) must never stop the
//! tunnels or the shutdown: every write here ignores its errors instead of panicking
//! the way `println!`/`eprintln!` do on a broken pipe.

use crate::config::cli::LogFormat;
use crate::config::LogConfig;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;

/// Set once `init` has installed the JSON subscriber: the fatal line then goes
/// through tracing so that it is JSON too.
static JSON: AtomicBool = AtomicBool::new(false);

/// stderr that reports every write as done: a log line that cannot be written is
/// dropped, never an error for tracing-subscriber to escalate into a panic.
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Colours only for a person at a terminal: not in files, pipes or journald, and
/// never when `NO_COLOR` is set (<https://no-color.org>).
fn use_ansi() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(cfg: &LogConfig) {
    let level = match cfg.level {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // yamux logs every stream at debug; keep it quiet unless asked for by name.
    let default = format!("{level},yamux=warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_ansi())
        .log_internal_errors(false)
        .with_writer(|| LossyStderr);
    let installed = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    JSON.store(
        installed.is_ok() && cfg.format == LogFormat::Json,
        Ordering::SeqCst,
    );
}

/// The last line before a failing exit: `error: MSG` in text mode, an ERROR event in
/// JSON mode (a log shipper needs this line more than any other).
pub fn fatal(msg: &dyn std::fmt::Display) {
    if JSON.load(Ordering::SeqCst) {
        tracing::error!(fatal = true, "{msg}");
    } else {
        let _ = writeln!(std::io::stderr(), "error: {msg}");
    }
}

/// Prints one line on stdout and flushes it; a closed stdout is not an error.
pub fn stdout_line(line: &dyn std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
