//! Nodes of a `piped` cluster for the tests: each on its own loopback address
//! (127.0.N.2, 127.0.N.3, …; all of 127/8 is loopback), so every node can listen on
//! the same public port, all sharing one real Redis.

use super::redis::Redis;
use super::*;
use std::net::IpAddr;

/// `127.0.NET.HOST`: tests in one binary run at once, so each gives its nodes a
/// `NET` of its own and no two clusters meet on an address.
pub fn node_ip(net: u8, host: u8) -> IpAddr {
    IpAddr::from([127, 0, net, host])
}

pub const TOKEN: &str = "cluster-test-token-0123456789abcdef";
/// What the nodes prove to each other; clients never hold it.
pub const SECRET: &str = "cluster-test-secret-fedcba9876543210";
/// The lease the test nodes run under unless a test gives its own: short, so that a
/// directory that starts empty (every test's Redis) holds new claims only briefly,
/// and a lease runs out within a test's patience.
pub const TEST_LEASE: &str = "4s";

/// One `piped` of the cluster.
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub piped: Piped,
    pub peer: SocketAddr,
}

impl Node {
    /// Starts node `name` on `ip` (see [`node_ip`]), joined to the Redis at `url`.
    pub fn start(url: &str, name: &str, ip: IpAddr, extra: &[&str]) -> Node {
        Self::start_on(url, name, ip, (0, 0), extra)
    }

    /// Starts the node again (after [`Node::kill`]) under its name, on its control and
    /// peer ports, as a restarted service would.
    pub fn restart(&mut self, url: &str) {
        let ports = (self.addr().port(), self.peer.port());
        let fresh = Self::start_on(url, &self.name, self.ip, ports, &[]);
        *self = fresh;
    }

    fn start_on(url: &str, name: &str, ip: IpAddr, ports: (u16, u16), extra: &[&str]) -> Node {
        let mut args = vec![
            s("--listen"),
            format!("{ip}:{}", ports.0),
            s("--bind-addr"),
            ip.to_string(),
            s("--cluster"),
            url.to_string(),
            s("--node"),
            name.to_string(),
            s("--peer-listen"),
            format!("{ip}:{}", ports.1),
        ];
        if !extra.contains(&"--token") {
            args.extend([s("--token"), s(TOKEN)]);
        }
        if !extra.contains(&"--cluster-secret") {
            args.extend([s("--cluster-secret"), s(SECRET)]);
        }
        if !extra.contains(&"--cluster-lease") {
            args.extend([s("--cluster-lease"), s(TEST_LEASE)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut piped = Piped::start_args(args);
        let line = piped.proc.wait_line("peer on ", WAIT);
        let peer = line["peer on ".len()..].parse().unwrap();
        Node {
            name: name.to_string(),
            ip,
            piped,
            peer,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.piped.addr
    }

    /// `kill -9`: the node dies without a word to anyone.
    pub fn kill(&mut self) {
        self.piped.proc.signal("KILL");
        self.piped.proc.wait_exit(WAIT);
    }
}

/// Connects to `ip:port`, retrying while the port is not listened on yet (a mirror
/// starts a moment after the claim is published), up to `within`.
pub async fn connect_when_ready(ip: IpAddr, port: u16, within: Duration) -> TcpStream {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect((ip, port)).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "{ip}:{port} never accepted: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// GETs `/` through `ip:port` (the file server behind a tunnel) and returns the body.
pub async fn download(ip: IpAddr, port: u16) -> Vec<u8> {
    get_body(connect_when_ready(ip, port, WAIT).await).await
}

/// Downloads through every node in turn and checks each body against `want` (its
/// [`sha256`]); `when` names the moment in a failure ("before", "after").
pub async fn every_node_serves(nodes: &[Node], port: u16, want: &str, when: &str) {
    for n in nodes {
        assert_eq!(
            sha256(&download(n.ip, port).await),
            want,
            "{when}, via {}",
            n.name
        );
    }
}

/// One UDP datagram to `ip:port` and its echo, retried while the mirror is not up
/// (a datagram to a closed port is lost), up to `within`.
pub async fn udp_roundtrip(ip: IpAddr, port: u16, msg: &[u8], within: Duration) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65_536];
    loop {
        let _ = sock.send_to(msg, (ip, port)).await;
        match tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => return buf[..n].to_vec(),
            _ => assert!(
                Instant::now() < deadline,
                "no UDP echo through {ip}:{port} within {within:?}"
            ),
        }
    }
}

/// A service that reads a PROXY v1 line and answers with it, then closes.
pub async fn proxy_line_service() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\r\n") && line.len() < 108 {
                    match s.read(&mut b).await {
                        Ok(1) => line.push(b[0]),
                        _ => return,
                    }
                }
                let _ = s.write_all(&line).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Connects from `from` (a loopback address of the test's choosing) to `ip:port` and
/// reads what the service answers: the PROXY line naming the visitor.
pub async fn visitor_line(from: IpAddr, ip: IpAddr, port: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        match sock.connect(SocketAddr::new(ip, port)).await {
            Ok(mut s) => {
                let mut out = Vec::new();
                let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
                return String::from_utf8_lossy(&out).into_owned();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "{ip}:{port} never accepted: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for Node {
    /// A failing test shows what each node logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- node {} stderr:\n{}",
                self.name,
                self.piped.proc.stderr()
            );
        }
    }
}

/// Sends `msg` through `ip:port` (an echo service behind a tunnel) and returns what
/// comes back, as many bytes as were sent.
pub async fn echo_via(ip: IpAddr, port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = connect_when_ready(ip, port, WAIT).await;
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("echo within the wait")
        .unwrap_or_else(|e| panic!("echo through {ip}:{port}: {e}"));
    back
}

pub const MIB: usize = 1024 * 1024;

/// Three nodes a, b, c on 127.0.`net`.2-4.
pub fn three_nodes(redis: &Redis, net: u8) -> Vec<Node> {
    vec![
        Node::start(&redis.url(), "a", node_ip(net, 2), &[]),
        Node::start(&redis.url(), "b", node_ip(net, 3), &[]),
        Node::start(&redis.url(), "c", node_ip(net, 4), &[]),
    ]
}

pub fn client(server: &Node, forwards: &[String]) -> Pipec {
    let mut args = vec![s("--token"), s(TOKEN)];
    for f in forwards {
        args.push(s("--forward"));
        args.push(f.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Pipec::spawn(server.addr(), &args)
}

/// GETs `/api/cluster` (or any admin path) from a node's admin listener.
pub async fn admin_json(node: &Node, path: &str) -> serde_json::Value {
    let admin = node.piped.admin.expect("the node runs an admin listener");
    let r = super::http::http(admin, "GET", path, None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

pub fn claim_keys(view: &serde_json::Value) -> Vec<(String, String)> {
    view["claims"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["key"].as_str().unwrap_or_default().to_string(),
                        c["node"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `forwarding tcp://127.0.0.3:9000 -> …` → 127.0.0.3
pub fn forwarding_host(line: &str) -> IpAddr {
    let public = line.split_whitespace().nth(1).unwrap_or_default();
    let host = public.split("://").nth(1).and_then(|h| h.rsplit_once(':'));
    host.and_then(|(h, _)| h.parse().ok())
        .unwrap_or_else(|| panic!("no host in {line:?}"))
}

/// Waits (bounded) until the node's log holds `what`.
pub async fn wait_logged(node: &Node, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !node.piped.proc.stderr().contains(what) {
        assert!(
            Instant::now() < deadline,
            "node {} never logged {what:?}:\n{}",
            node.name,
            node.piped.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a visitor through `ip:port` gets back for one request: the body, or nothing
/// when the node could not carry it (reset or closed).
pub async fn try_download(ip: IpAddr, port: u16) -> Option<Vec<u8>> {
    let mut s = connect_when_ready(ip, port, WAIT).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .ok()?;
    let mut all = Vec::new();
    match tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut all)).await {
        Ok(Ok(_)) if !all.is_empty() => {
            let at = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            Some(all.split_off(at))
        }
        _ => None,
    }
}

/// The value of an unlabelled or labelled series in Prometheus text.
pub fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}
