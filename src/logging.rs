//! Log setup shared by both programs: tracing to stderr, text or JSON, level from
//! `RUST_LOG` or -v/-q; and the two other things the programs write to the terminal,
//! stdout lines and the final fatal line.
//!
//! Losing a log sink (stderr closed by `| head`, a dead journald) must never stop the
//! tunnels or the shutdown: every write here ignores its errors instead of panicking
//! the way `println!`/`eprintln!` do on a broken pipe.
//!
//! Also owns the rule that a peer cannot write ERROR lines at will: yamux reports a
//! peer's protocol violation through the `log` crate at `error`, so the `log` bridge
//! here passes its errors and warnings on as rate-limited `info` lines ([`LogLimit`]),
//! and code that logs a peer's misbehaviour itself uses a `LogLimit` too.

use crate::config::cli::LogFormat;
use crate::config::LogConfig;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_log::log;
use tracing_log::AsLog;
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

/// Installs the global subscriber and the bridge from the `log` crate (yamux logs
/// through it). Call once, first thing in `main`.
pub fn init(cfg: &LogConfig) {
    let level = match cfg.level {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // yamux logs every stream at debug; keep it quiet unless asked for by name. What
    // it logs above that is a peer's protocol violation, which the bridge turns into
    // `info` lines: shown at the default level, hidden by -q.
    let yamux = if cfg.level >= 0 { "info" } else { level };
    let default = format!("{level},yamux={yamux}");
    let filter = env_directives(std::env::var(EnvFilter::DEFAULT_ENV).ok())
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_ansi())
        .log_internal_errors(false)
        .with_writer(|| LossyStderr);
    let installed = match cfg.format {
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
    }
    .is_ok();
    if installed && log::set_boxed_logger(Box::new(PeerLogBridge::default())).is_ok() {
        // The subscriber's most verbose level, so that `log` skips the rest cheaply.
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
    JSON.store(installed && cfg.format == LogFormat::Json, Ordering::SeqCst);
}

/// The crate whose `log` errors and warnings are a peer's doing: yamux logs a peer's
/// protocol violation (a bad stream id, a window overrun, an unexpected pong) at
/// `error` just before it ends the session.
const PEER_LOG_CRATE: &str = "yamux";
/// yamux lines passed on per [`PEER_LOG_PERIOD`]: enough to see what a peer did, too
/// few for a peer that reconnects and misbehaves in a loop to fill the log.
const PEER_LOG_BURST: u32 = 10;
const PEER_LOG_PERIOD: Duration = Duration::from_secs(60);

/// `log` records into tracing events, as tracing-log's `LogTracer` makes them, except
/// that yamux's errors and warnings become rate-limited `info` lines.
struct PeerLogBridge {
    inner: tracing_log::LogTracer,
    limit: LogLimit,
}

impl Default for PeerLogBridge {
    fn default() -> Self {
        PeerLogBridge {
            inner: tracing_log::LogTracer::new(),
            limit: LogLimit::new(PEER_LOG_BURST, PEER_LOG_PERIOD),
        }
    }
}

/// The level a `log` record from `target` at `level` is passed on at.
fn bridged_level(target: &str, level: log::Level) -> log::Level {
    let from_peer_crate = target
        .strip_prefix(PEER_LOG_CRATE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
    if from_peer_crate && level <= log::Level::Warn {
        log::Level::Info
    } else {
        level
    }
}

impl log::Log for PeerLogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let level = bridged_level(metadata.target(), metadata.level());
        let bridged = log::Metadata::builder()
            .level(level)
            .target(metadata.target())
            .build();
        self.inner.enabled(&bridged)
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = bridged_level(record.target(), record.level());
        if level == record.level() {
            return self.inner.log(record);
        }
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(dropped) = self.limit.admit() else {
            return;
        };
        let args = record.args();
        self.inner.log(
            &log::Record::builder()
                .args(format_args!("{args}{}", LogLimit::dropped_note(dropped)))
                .level(level)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {}
}

/// A budget of log lines for an event a remote peer can cause at will: at most
/// `burst` lines per `period`, the rest dropped and counted; the next line written
/// says how many were dropped before it ([`LogLimit::dropped_note`]).
pub struct LogLimit {
    burst: u32,
    period: Duration,
    window: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    pub const fn new(burst: u32, period: Duration) -> Self {
        LogLimit {
            burst,
            period,
            window: Mutex::new(Window {
                start: None,
                used: 0,
                dropped: 0,
            }),
        }
    }

    /// `Some(dropped)` when a line may be written now (with the number dropped since
    /// the last one written), `None` when the budget is spent.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.period)
        {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used >= self.burst {
            w.dropped += 1;
            return None;
        }
        w.used += 1;
        Some(std::mem::take(&mut w.dropped))
    }

    /// What a line admitted with `dropped` appends to its message.
    ///
    /// ```
    /// use pipe::logging::LogLimit;
    /// assert_eq!(LogLimit::dropped_note(0), "");
    /// assert_eq!(LogLimit::dropped_note(3), " (3 similar lines dropped before this one)");
    /// ```
    pub fn dropped_note(dropped: u64) -> String {
        if dropped == 0 {
            String::new()
        } else {
            format!(" ({dropped} similar lines dropped before this one)")
        }
    }
}

/// The filter `RUST_LOG` asks for, or `None` for the default. Set but empty (or only
/// blanks) counts as unset: docker-compose and systemd units often pass `RUST_LOG=`,
/// and an empty filter would silence every line, warnings included.
///
/// ```
/// use pipe::logging::env_directives;
/// assert_eq!(env_directives(None), None);
/// assert_eq!(env_directives(Some("".into())), None);
/// assert_eq!(env_directives(Some("  ".into())), None);
/// assert_eq!(env_directives(Some("debug".into())).as_deref(), Some("debug"));
/// ```
pub fn env_directives(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_admits_its_burst_per_period_and_counts_the_rest() {
        let limit = LogLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.admit_at(t0 + Duration::from_secs(59)), None);
        }
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            limit.admit_at(later),
            Some(5),
            "the next line names the dropped"
        );
        assert_eq!(limit.admit_at(later), Some(0));
        assert_eq!(limit.admit_at(later), None);
    }

    #[test]
    fn only_yamux_errors_and_warnings_are_lowered() {
        use log::Level::*;
        for target in ["yamux", "yamux::connection", "yamux::connection::rtt"] {
            assert_eq!(bridged_level(target, Error), Info, "{target}");
            assert_eq!(bridged_level(target, Warn), Info, "{target}");
            assert_eq!(bridged_level(target, Debug), Debug, "{target}");
        }
        assert_eq!(bridged_level("yamuxish", Error), Error);
        assert_eq!(bridged_level("rustls::conn", Warn), Warn);
        assert_eq!(bridged_level("pipe::server", Error), Error);
    }
}
