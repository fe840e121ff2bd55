//! `pipec`: keeps one session to the server, registers the forwards, splices every
//! stream the server opens to the local service, and reconnects after any network
//! failure with capped exponential backoff and jitter, failing over between servers
//! when there are several (`failover`).
//!
//! What the user sees on stdout is not printed here: `run` reports `ClientEvent`s and
//! the binary prints them.

mod failover;
pub mod inspect;
mod links;
mod local;
mod session;
mod stream;
pub mod udp;

use crate::accounts::proof::ClientKey;
use crate::auth::LoginError;
use crate::config::{ClientConfig, ForwardSpec};
use crate::protocol::Proto;
use failover::{Next, Rotation};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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

/// Exit status when the server's operator closed every forward (README's table).
pub const EXIT_CLOSED_BY_OPERATOR: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the login (exit 3).
    #[error(transparent)]
    Login(#[from] LoginError),
    /// The server wants a token and none was given (exit 3).
    #[error("this server requires a token: give --token or set PIPE_TOKEN")]
    NoToken,
    /// The server's name did not resolve at the first connect (exit 1).
    #[error("{0}: check the --server name (or run with --retry-forever)")]
    Unresolved(String),
    /// The server's operator closed every forward (exit 5).
    #[error("the server closed every forward ({0}); not reconnecting")]
    ClosedByOperator(String),
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
            ClientError::Login(_) | ClientError::NoToken => 3,
            ClientError::ForwardRefused { .. } => 4,
            ClientError::Tls(_) | ClientError::Unresolved(_) => 1,
            ClientError::ClosedByOperator(_) => EXIT_CLOSED_BY_OPERATOR,
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
    // One chain for the life of the process, its id bound to the token and user it
    // logs in with: every reconnect proves the next link of it.
    let binding = crate::auth::binding(config.token.as_ref(), config.user.as_deref());
    let mut key = ClientKey::bound(binding);
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
    let mut retries = Retries::default();
    let mut rotation = Rotation::new(config.servers.len());
    // Why each server in a row failed to resolve, while no session has logged in yet.
    let mut unresolved: Vec<String> = Vec::new();
    // The address of the last session, so that after losing it another is dialled first.
    let mut peer = None;
    loop {
        let server = &config.servers[rotation.current()];
        let ctx = session::SessionCtx {
            config: &config,
            server,
            peer: &mut peer,
            key: &mut key,
            tls: tls.as_ref(),
            events: &events,
            shutdown: &shutdown,
        };
        let mut name_failed = false;
        let started = std::time::Instant::now();
        let why = match session::run_once(ctx, &mut forwards).await {
            Ok(session::End::Shutdown) => return Ok(()),
            Ok(session::End::AllClosed { reason }) => {
                return Err(ClientError::ClosedByOperator(reason))
            }
            Ok(session::End::Ended { reason, retry }) => {
                backoff.reset();
                retries.connected();
                if retry && rotation.is_cluster() {
                    warn!("the server ended the session ({reason}); moving to another server");
                } else {
                    warn!("the server ended the session: {reason}; reconnecting");
                }
                None
            }
            Ok(session::End::ServerClosed) => {
                backoff.reset();
                retries.connected();
                warn!("the server closed the session (it is stopping or restarting); reconnecting");
                None
            }
            Ok(session::End::Lost { logged_in, reason }) => {
                if logged_in {
                    backoff.reset();
                    retries.connected();
                    warn!("session lost ({reason}); reconnecting");
                    None
                } else {
                    Some(reason)
                }
            }
            Ok(session::End::Unreachable {
                reason,
                unresolved: true,
            }) => {
                name_failed = true;
                // Exit 1 only when no server resolves: one that does may come up.
                if !retries.ever_connected && !config.retry_forever {
                    unresolved.push(reason.clone());
                    if unresolved.len() >= config.servers.len() {
                        return Err(ClientError::Unresolved(unresolved.join("; ")));
                    }
                }
                Some(reason)
            }
            Ok(session::End::Unreachable { reason, .. }) => Some(reason),
            Err(ClientError::Login(LoginError::BadToken)) if config.token.is_none() => {
                if !config.retry_forever {
                    return Err(ClientError::NoToken);
                }
                Some(ClientError::NoToken.to_string())
            }
            Err(ClientError::Login(e)) if config.retry_forever => Some(e.to_string()),
            Err(e) => return Err(e),
        };
        if !name_failed {
            unresolved.clear();
        }
        let next = match &why {
            None => rotation.session_ended(started.elapsed()),
            Some(_) => rotation.attempt_failed(),
        };
        let to = &config.servers[rotation.current()];
        if why.is_none() && rotation.is_cluster() {
            info!(server = %to, "failing over to the next server");
        }
        if next == Next::Now {
            if let Some(why) = why {
                let n = retries.failed();
                if Retries::worth_a_line(n) {
                    warn!("{why}; trying {to}");
                } else {
                    debug!("{why}; trying {to}");
                }
            }
            continue;
        }
        let delay = backoff.delay();
        if let Some(why) = why {
            let n = retries.failed();
            let then = if rotation.is_cluster() {
                format!(" ({to})")
            } else {
                String::new()
            };
            if Retries::worth_a_line(n) {
                warn!("{why}; retry {n}{then} in {}", short_duration(delay));
            } else {
                debug!("{why}; retry {n}{then} in {}", short_duration(delay));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Consecutive failed attempts, for the retry lines.
#[derive(Debug, Default)]
struct Retries {
    failed: u32,
    /// Has any session logged in? A name that stops resolving later is a DNS
    /// outage to wait out, not a typo.
    ever_connected: bool,
}

impl Retries {
    fn connected(&mut self) {
        self.failed = 0;
        self.ever_connected = true;
    }

    /// Counts a failure; returns the number of the retry that follows it.
    fn failed(&mut self) -> u32 {
        self.failed = self.failed.saturating_add(1);
        self.failed
    }

    /// Retries 1-3 and then every power of two get a WARN line: the lines thin out as
    /// the outage goes on (at the 2 s cap: 16 s, 32 s, 64 s … apart).
    fn worth_a_line(n: u32) -> bool {
        n <= 3 || n.is_power_of_two()
    }
}

/// `0.2s`, `1.5s`, `4s`: a delay as a person reads it, to a tenth of a second.
fn short_duration(d: Duration) -> String {
    let tenths = (d.as_millis() as f64 / 100.0).round() as u64;
    if tenths % 10 == 0 {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
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

    #[test]
    fn retry_lines_thin_out_and_delays_read_short() {
        let logged: Vec<u32> = (1..=40).filter(|n| Retries::worth_a_line(*n)).collect();
        assert_eq!(logged, [1, 2, 3, 4, 8, 16, 32]);
        assert_eq!(short_duration(Duration::from_millis(4_020)), "4s");
        assert_eq!(short_duration(Duration::from_millis(1_460)), "1.5s");
        assert_eq!(short_duration(Duration::from_millis(73)), "0.1s");
    }
}
