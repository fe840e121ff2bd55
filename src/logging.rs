//! Log setup shared by both programs: tracing to stderr, text or JSON, level from
//! `RUST_LOG` or -v/-q.

use crate::config::cli::LogFormat;
use crate::config::LogConfig;
use tracing_subscriber::EnvFilter;

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
        .with_writer(std::io::stderr);
    match cfg.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
