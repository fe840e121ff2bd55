//! Debian's real `nginx` as a local service that parses PROXY protocol
//! (`listen … proxy_protocol`) and logs `$proxy_protocol_addr` for every request. It
//! runs as the current user (`master_process off`, `daemon off`), with its config, pid,
//! temp files and logs in a temporary directory; killed on drop.

use super::WAIT;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// A port that was free a moment ago (nginx needs the number in its config).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Nginx {
    /// Starts nginx; returns once its pid file exists (written after it bound).
    pub fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format visitor '$proxy_protocol_addr $proxy_protocol_port $request_uri';
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        access_log {d}/access.log visitor;
        location / {{ return 200 "nginx ok\n"; }}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx)");
        let mut n = Nginx { child, dir, port };
        let deadline = Instant::now() + WAIT;
        while !n.dir.path().join("nginx.pid").exists() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited with {status}: {}", n.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                n.error_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Waits for the access-log line of the request for `uri`; returns it.
    pub async fn logged(&self, uri: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.access_log();
            if let Some(line) = log.lines().find(|l| l.ends_with(&format!(" {uri}"))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line for {uri}: {log}\nerrors: {}",
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
