//! `pipec`: keeps one session to the server, registers the forwards, splices every
//! stream the server opens to the local service, and reconnects after any network
//! failure with capped exponential backoff and jitter.
//!
//! What the user sees on stdout is not printed here: `run` reports `ClientEvent`s and
//! the binary prints them.

mod session;
mod stream;
pub mod udp;

use crate::accounts::proof::ClientKey;
use crate::auth::LoginError;
use crate::config::{ClientConfig, ForwardSpec};
use crate::protocol::Proto;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// First reconnect delay: a blip should cost almost nothing.
const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// What happened, for the binary to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A forward is live; `public` is `tcp://host:port`, `udp://host:port` or the URL.
    Forwarding {
        id: u32,
        public: String,
        local: String,
    },
    /// The server closed a forward for good.
    Closed { id: u32, reason: String },
}

impl ClientEvent {
    /// The line SPEC says `pipec` prints for this event, if any.
    pub fn stdout_line(&self) -> Option<String> {
        match self {
            ClientEvent::Forwarding { public, local, .. } => {
                Some(format!("forwarding {public} -> {local}"))
            }
            ClientEvent::Closed { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the login (exit 3).
    #[error(transparent)]
    Login(#[from] LoginError),
    /// A forward was refused at its first registration (exit 4).
    #[error("forward {spec} refused: {reason}")]
    ForwardRefused { spec: String, reason: String },
    /// TLS cannot work with this configuration (exit 1).
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// Process exit code for this error (SPEC).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Login(_) => 3,
            ClientError::ForwardRefused { .. } => 4,
            ClientError::Tls(_) => 1,
        }
    }
}

/// What the client knows about one forward across sessions.
#[derive(Debug, Clone)]
pub(crate) struct ForwardState {
    pub spec: ForwardSpec,
    /// The port the server gave last time: asked for again after a reconnect.
    pub assigned_port: Option<u16>,
    /// Has the server ever accepted it? Before that, a refusal is fatal (exit 4).
    pub ever_registered: bool,
    /// Closed by the server's operator: never registered again.
    pub closed: bool,
}

/// Describes a forward as the user wrote it.
pub(crate) fn describe(spec: &ForwardSpec) -> String {
    match spec.proto {
        Proto::Http => format!(
            "http:{}{}",
            spec.local(),
            spec.subdomain
                .as_ref()
                .map(|s| format!(":{s}"))
                .unwrap_or_default()
        ),
        p => format!("{p}:{}:{}", spec.local(), spec.remote_port),
    }
}

/// Capped exponential backoff with jitter.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: RECONNECT_MIN.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = RECONNECT_MIN.min(self.max);
    }

    /// A delay drawn from [d/2, d], then d doubles up to the cap.
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Runs the client until `shutdown` is cancelled (Ok) or a permanent refusal.
pub async fn run(
    config: ClientConfig,
    events: mpsc::UnboundedSender<ClientEvent>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let mut key = ClientKey::generate();
    let tls = session::tls_connector(&config)?;
    let mut forwards: Vec<ForwardState> = config
        .forwards
        .iter()
        .map(|spec| ForwardState {
            assigned_port: (spec.remote_port != 0).then_some(spec.remote_port),
            spec: spec.clone(),
            ever_registered: false,
            closed: false,
        })
        .collect();
    let mut backoff = Backoff::new(config.reconnect_max);
    loop {
        let ctx = session::SessionCtx {
            config: &config,
            key: &mut key,
            tls: tls.as_ref(),
            events: &events,
            shutdown: &shutdown,
        };
        match session::run_once(ctx, &mut forwards).await {
            Ok(session::End::Shutdown) => return Ok(()),
            Ok(session::End::Lost { logged_in, reason }) => {
                if logged_in {
                    backoff.reset();
                }
                warn!(%reason, "session lost; reconnecting");
            }
            Err(e) => return Err(e),
        }
        if forwards.iter().all(|f| f.closed) {
            info!("every forward was closed by the server; exiting");
            return Ok(());
        }
        let delay = backoff.delay();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.delay()).collect();
        assert!(delays[0] <= RECONNECT_MIN && delays[0] >= RECONNECT_MIN / 2);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.delay() <= RECONNECT_MIN);
    }
}
