//! `GET /metrics`: the server's counters in the Prometheus text format.
//!
//! Owns the metric names, labels and help texts (SPEC lists the required ones). The data
//! path keeps plain atomics in `State`; this module copies them into a
//! `metrics-exporter-prometheus` recorder at scrape time and renders it.
//!
//! No global recorder is installed: several servers may share a process (tests do).
//! Each scrape builds a fresh recorder, so series of tunnels that have closed disappear
//! at once instead of lingering until an idle timeout; the counters stay monotonic
//! because the values written are `State`'s running totals.

use crate::protocol::Proto;
use crate::server::state::{State, TunnelInfo};
use metrics::{counter, describe_counter, describe_gauge, gauge, Label};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Http];

/// The current values as Prometheus text.
pub fn render(state: &State) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let clients: HashMap<u64, String> = state
        .sessions()
        .iter()
        .map(|s| (s.id, s.addr.ip().to_string()))
        .collect();
    metrics::with_local_recorder(&recorder, || {
        describe();
        record_totals(state);
        for t in state.tunnels() {
            let client = clients.get(&t.session_id).map_or("", String::as_str);
            record_tunnel(&t, client);
        }
    });
    let mut text = handle.render();
    text.push_str(&super::process::render());
    text
}

fn describe() {
    describe_gauge!("pipe_clients", "Connected clients (live sessions).");
    describe_gauge!("pipe_tunnels", "Live tunnels by protocol.");
    describe_gauge!(
        "pipe_connections_active",
        "Public connections (TCP) and UDP peers open now."
    );
    describe_gauge!(
        "pipe_udp_peers_active",
        "UDP senders with a live mapping now (included in pipe_connections_active)."
    );
    describe_counter!(
        "pipe_connections_total",
        "Public connections accepted since start (http tunnels count as tcp)."
    );
    describe_counter!(
        "pipe_bytes_total",
        "Bytes through all tunnels since start: in = from visitors, out = to visitors."
    );
    describe_counter!(
        "pipe_auth_failures_total",
        "Client logins refused: bad_token (a wrong token or an unknown user), cooling_off \
         (the address failed too often), bad_proof (a takeover without the client's proof)."
    );
    describe_counter!(
        "pipe_udp_dropped_total",
        "Datagrams dropped because a UDP tunnel was congested or over its speed limit."
    );
    describe_gauge!("pipe_uptime_seconds", "Seconds since the server started.");
    describe_gauge!(
        "pipe_cluster_nodes",
        "Live nodes of the cluster (renewed within two of their intervals) at the last \
         renewal (cluster only)."
    );
    describe_counter!(
        "pipe_peer_streams_total",
        "Visitor streams over peer links: in = carried to this node's tunnels, out = \
         carried from this node to the holder (cluster only)."
    );
    describe_counter!(
        "pipe_directory_errors_total",
        "Cluster directory calls that failed or timed out (cluster only)."
    );
    describe_gauge!(
        "pipe_build_info",
        "Always 1; the version label is the running software and wire protocol."
    );
    describe_gauge!(
        "pipe_tunnel_connections_active",
        "Public connections open now, per tunnel."
    );
    describe_counter!(
        "pipe_tunnel_connections_total",
        "Public connections accepted, per tunnel."
    );
    describe_counter!(
        "pipe_tunnel_bytes_total",
        "Bytes through one tunnel: in = from visitors, out = to visitors."
    );
}

fn record_totals(state: &State) {
    let s = &state.stats;
    let tunnels = state.tunnels();
    gauge!("pipe_clients").set(state.sessions().len() as f64);
    for proto in PROTOS {
        let n = tunnels.iter().filter(|t| t.proto == proto).count();
        gauge!("pipe_tunnels", "proto" => proto.as_str()).set(n as f64);
    }
    let udp_peers = s.udp_peers_active.load(Ordering::Relaxed);
    let tcp = s.connections_active.load(Ordering::Relaxed);
    gauge!("pipe_connections_active").set((tcp + udp_peers) as f64);
    gauge!("pipe_udp_peers_active").set(udp_peers as f64);
    counter!("pipe_connections_total", "proto" => "tcp")
        .absolute(s.connections_tcp.load(Ordering::Relaxed));
    counter!("pipe_connections_total", "proto" => "udp")
        .absolute(s.connections_udp.load(Ordering::Relaxed));
    let (bytes_in, bytes_out) = state.byte_totals();
    counter!("pipe_bytes_total", "direction" => "in").absolute(bytes_in);
    counter!("pipe_bytes_total", "direction" => "out").absolute(bytes_out);
    for (reason, n) in s.auth_failures.by_reason() {
        counter!("pipe_auth_failures_total", "reason" => reason).absolute(n);
    }
    counter!("pipe_udp_dropped_total").absolute(s.udp_dropped.load(Ordering::Relaxed));
    gauge!("pipe_uptime_seconds").set(state.started_at.elapsed().as_secs_f64());
    if let Some(c) = state.cluster() {
        let cs = &c.stats;
        gauge!("pipe_cluster_nodes").set(cs.nodes.load(Ordering::Relaxed) as f64);
        counter!("pipe_peer_streams_total", "direction" => "in")
            .absolute(cs.streams_in.load(Ordering::Relaxed));
        counter!("pipe_peer_streams_total", "direction" => "out")
            .absolute(cs.streams_out.load(Ordering::Relaxed));
        counter!("pipe_directory_errors_total").absolute(cs.dir_errors.load(Ordering::Relaxed));
    }
    gauge!("pipe_build_info", "version" => env!("CARGO_PKG_VERSION"),
        "protocol" => crate::protocol::PROTOCOL_VERSION.to_string())
    .set(1.0);
}

/// Per-tunnel series: their number is bounded by the tunnel caps. Labelled by what
/// survives a restart (the tunnel's name and the client's address), never by the
/// internal id, so a series continues when its client reconnects; with a users file
/// each carries its `user`.
fn record_tunnel(t: &TunnelInfo, client: &str) {
    let public = match &t.url {
        Some(url) => url.clone(),
        None => t.port.to_string(),
    };
    let mut labels = vec![
        Label::new("name", super::api::tunnel_name(t)),
        Label::new("proto", t.proto.as_str()),
        Label::new("public", public),
        Label::new("client", client.to_string()),
    ];
    // Bounded by the users file (a login names a user only if it is there).
    if let Some(user) = &t.user {
        labels.push(Label::new("user", user.to_string()));
    }
    let st = &t.stats;
    gauge!("pipe_tunnel_connections_active", labels.clone())
        .set(st.active.load(Ordering::Relaxed) as f64);
    counter!("pipe_tunnel_connections_total", labels.clone())
        .absolute(st.total.load(Ordering::Relaxed));
    for (direction, bytes) in [("in", &st.bytes_in), ("out", &st.bytes_out)] {
        let mut l = labels.clone();
        l.push(Label::new("direction", direction));
        counter!("pipe_tunnel_bytes_total", l).absolute(bytes.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    #[test]
    fn required_series_are_present_on_an_idle_server() {
        let state = State::new(ServerConfig::for_tests());
        state
            .stats
            .auth_failures
            .bad_token
            .store(3, Ordering::Relaxed);
        let text = render(&state);
        let build = format!(
            "pipe_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::protocol::PROTOCOL_VERSION
        );
        assert!(text.lines().any(|l| l == build), "no {build} in:\n{text}");
        for line in [
            "pipe_clients 0",
            "pipe_tunnels{proto=\"tcp\"} 0",
            "pipe_tunnels{proto=\"udp\"} 0",
            "pipe_connections_active 0",
            "pipe_connections_total{proto=\"tcp\"} 0",
            "pipe_bytes_total{direction=\"in\"} 0",
            "pipe_bytes_total{direction=\"out\"} 0",
            "pipe_auth_failures_total{reason=\"bad_token\"} 3",
            "pipe_auth_failures_total{reason=\"cooling_off\"} 0",
            "# TYPE pipe_bytes_total counter",
            "# TYPE pipe_clients gauge",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
