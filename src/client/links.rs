//! The client's extra connections to its server, joined to the logged-in session
//! (`Login::join`): the server spreads visitor streams over all of them, least-loaded
//! first, so parallel transfers do not share one TCP connection's window and a new
//! visitor does not wait behind another's bulk bytes.
//!
//! Each extra connection dials the very address the session reached (in a cluster,
//! the same node), logs in with the same credentials and the session's join key, and
//! then only exchanges heartbeats on its control stream. One that drops is replaced,
//! after a short pause that grows while it keeps failing; all of them end with the
//! session.

use super::stream::{self, Routes};
use super::udp::UdpLimits;
use crate::auth::{client_join, LoginError, Token};
use crate::protocol::{
    ClientMsg, MessageStream, ServerMsg, CLIENT_ID_LEN, JOIN_KEY_LEN, MAX_CONTROL_FRAME,
};
use crate::transport::mux;
use crate::transport::tls::TlsConnector;
use crate::transport::{tcp, ticker, BatchIo, MuxStream};
use futures::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Dialling, the TLS handshake and the join each get this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause before a lost connection is replaced; it doubles up to `PAUSE_MAX`
/// while replacements fail, and starts over once one holds.
const PAUSE_FIRST: Duration = Duration::from_millis(250);
const PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Connections `--connections auto` keeps to a server across a network
/// (`mux::Path::Link`); to one on this machine, one.
pub(crate) const AUTO_POOL: usize = 8;

/// What every extra connection of one session needs.
pub(crate) struct JoinSpec {
    /// The address the session reached.
    pub addr: SocketAddr,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub user: Option<String>,
    pub token: Option<Token>,
    pub client_id: [u8; CLIENT_ID_LEN],
    pub join_key: [u8; JOIN_KEY_LEN],
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub routes: Routes,
    pub udp: UdpLimits,
}

/// Keeps `extra` connections joined to the session until `stop` is cancelled.
pub(crate) fn spawn(extra: usize, spec: Arc<JoinSpec>, stop: &CancellationToken) {
    for n in 1..=extra {
        tokio::spawn(keep(n, spec.clone(), stop.clone()));
    }
}

/// How one connection ended.
enum Ended {
    /// It was joined, then lost: replace it.
    Lost(String),
    /// It never joined; try again later.
    Failed(String),
    /// The server will not take it (the session is gone, the set is full, the
    /// credentials changed): stop trying for this session.
    Refused(String),
    Stopped,
}

/// Connection number `n`: joins, and rejoins after each loss, until `stop`.
async fn keep(n: usize, spec: Arc<JoinSpec>, stop: CancellationToken) {
    let mut pause = PAUSE_FIRST;
    loop {
        match once(&spec, &stop).await {
            Ended::Stopped => return,
            Ended::Refused(why) => {
                // The session's own control stream says what matters (a changed
                // token ends it); this only explains the missing connection.
                if !stop.is_cancelled() {
                    warn!(
                        connection = n,
                        "the server refused an extra connection: {why}"
                    );
                }
                return;
            }
            Ended::Lost(why) => {
                pause = PAUSE_FIRST;
                if !stop.is_cancelled() {
                    info!(
                        connection = n,
                        "extra connection lost ({why}); replacing it"
                    );
                }
            }
            Ended::Failed(why) => debug!(connection = n, "extra connection failed: {why}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

async fn once(spec: &JoinSpec, stop: &CancellationToken) -> Ended {
    let dial = timeout(CONNECT_TIMEOUT, TcpStream::connect(spec.addr));
    let tcp = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        r = dial => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ended::Failed(format!("cannot reach {} ({e})", spec.addr)),
            Err(_) => return Ended::Failed(format!("cannot reach {} (timed out)", spec.addr)),
        },
    };
    tcp::tune_control(&tcp);
    let path = mux::Path::to(Some(spec.addr.ip()));
    let Some((connector, name)) = &spec.tls else {
        return run(spec, stop, BatchIo::new(tcp), path).await;
    };
    match timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp)).await {
        Ok(Ok(s)) => run(spec, stop, BatchIo::new(s), path).await,
        Ok(Err(e)) => Ended::Failed(format!("TLS: {e}")),
        Err(_) => Ended::Failed("TLS handshake timed out".into()),
    }
}

async fn run<IO>(spec: &JoinSpec, stop: &CancellationToken, io: IO, path: mux::Path) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let own_stop = stop.child_token();
    let (mux, mut driver) =
        stream::start_mux(io, path, spec.routes.clone(), spec.udp, own_stop.clone());
    let ended = async {
        let Ok(Ok(ctl)) = timeout(CONNECT_TIMEOUT, mux.open()).await else {
            return Ended::Failed("cannot open its control stream".into());
        };
        let mut ctl = MessageStream::new(ctl, MAX_CONTROL_FRAME);
        let join = client_join(
            &mut ctl,
            spec.user.as_deref(),
            spec.token.as_ref(),
            spec.client_id,
            spec.join_key,
        );
        match timeout(CONNECT_TIMEOUT, join).await {
            Ok(Ok(_)) => {}
            Ok(Err(LoginError::Unavailable(why))) => return Ended::Failed(why),
            Ok(Err(e)) if e.is_permanent() => return Ended::Refused(e.to_string()),
            Ok(Err(e)) => return Ended::Failed(e.to_string()),
            Err(_) => return Ended::Failed("the join timed out".into()),
        }
        debug!(addr = %spec.addr, "extra connection joined");
        Ended::Lost(
            heartbeats(spec, stop, &mut ctl, &mut driver)
                .await
                .to_string(),
        )
    }
    .await;
    own_stop.cancel();
    let _ = timeout(CLOSE_GRACE, driver.finished()).await;
    if stop.is_cancelled() {
        return Ended::Stopped;
    }
    ended
}

/// Heartbeats both ways until the connection ends or `stop`; says why it ended.
async fn heartbeats(
    spec: &JoinSpec,
    stop: &CancellationToken,
    ctl: &mut MessageStream<MuxStream>,
    driver: &mut mux::DriverTask,
) -> &'static str {
    let every = spec.heartbeat_interval;
    let mut tick = ticker::interval_at(Instant::now() + every, every);
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return "the session ended",
            _ = driver.finished() => return "connection lost",
            msg = ctl.recv::<ServerMsg>() => match msg {
                Ok(ServerMsg::Heartbeat) => last_seen = Instant::now(),
                Ok(other) => debug!(?other, "unexpected message on an extra connection"),
                Err(_) => return "the server closed it",
            },
            _ = tick.tick() => {
                if last_seen.elapsed() >= spec.heartbeat_timeout {
                    return "heartbeat timeout: the server went silent";
                }
                if timeout(spec.heartbeat_timeout, ctl.send(&ClientMsg::Heartbeat)).await.is_err() {
                    return "control stream stalled";
                }
            }
        }
    }
}
