//! `--tls-ca` with certificates made by the openssl command line, as people make them
//! for a private server, and the plain words of every refusal.

mod common;

use common::certs::{self, OpensslCert};
use common::*;

/// A TLS server presenting `cert`, and a live tunnel through it (trusting `cert`
/// itself) that every refusal below must leave alone.
async fn server_with(cert: &OpensslCert) -> (Piped, Pipec, u16, Echo) {
    let echo = echo_service().await;
    let server = Piped::start(&["--tls-cert", cert.cert(), "--tls-key", cert.key()]);
    let fwd = format!("tcp:{}:0", echo.port);
    let (c, ports) = Pipec::start(
        server.addr,
        &["--tls-ca", cert.cert(), "--forward", &fwd],
        1,
    );
    (server, c, ports[0], echo)
}

/// pipec with `args` exits 1 and says `why`; the live tunnel still carries.
async fn refused(server: &Piped, args: &[&str], why: &str, live: u16) {
    let mut c = Pipec::spawn(server.addr, &[args, &["--forward", "tcp:9:0"]].concat());
    assert_eq!(c.proc.wait_exit(WAIT), 1, "{args:?}\n{}", c.proc.stderr());
    let err = c.proc.stderr();
    assert!(err.contains(why), "{args:?}: stderr lacks {why:?}:\n{err}");
    assert!(!err.contains("OtherError"), "{err}");
    assert_eq!(echo_roundtrip(live, b"unaffected").await, b"unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_self_signed_certificate_is_trusted_with_tls_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certs::openssl_self_signed(dir.path(), "srv");
    // Dialled as 127.0.0.1 (an IP name of the certificate) by `server_with`...
    let (server, _c, live, echo) = server_with(&cert).await;
    assert_eq!(echo_roundtrip(live, b"over tls").await, b"over tls");
    // ...and as localhost, its DNS name.
    let fwd = format!("tcp:{}:0", echo.port);
    let args = [
        "--tls-ca",
        cert.cert(),
        "--tls-server-name",
        "localhost",
        "--forward",
        &fwd,
    ];
    let (_c2, ports) = Pipec::start(server.addr, &args, 1);
    assert_eq!(echo_roundtrip(ports[0], b"by name").await, b"by name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_self_signed_certificate_is_an_untrusted_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certs::openssl_self_signed(dir.path(), "srv");
    let other = certs::openssl_self_signed(dir.path(), "other");
    let (server, _c, live, _echo) = server_with(&cert).await;
    let why = format!(
        "the server's certificate is not signed by a trusted CA: it is neither signed by a CA in {} nor one of its certificates; pass the CA's certificate, or the server's own self-signed certificate, with --tls-ca FILE",
        other.cert()
    );
    refused(&server, &["--tls-ca", other.cert()], &why, live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_name_is_refused_naming_the_certificates_names() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certs::openssl_self_signed(dir.path(), "srv");
    let (server, _c, live, _echo) = server_with(&cert).await;
    let args = [
        "--tls-ca",
        cert.cert(),
        "--tls-server-name",
        "elsewhere.example",
    ];
    let why = "the server's certificate does not match its name: it is for";
    refused(&server, &args, why, live).await;
    let mut c = Pipec::spawn(
        server.addr,
        &[&args[..], &["--forward", "tcp:9:0"]].concat(),
    );
    assert_eq!(c.proc.wait_exit(WAIT), 1);
    let err = c.proc.stderr();
    let names = "it is for localhost, 127.0.0.1, not elsewhere.example; connect by one of those names or pass --tls-server-name NAME";
    assert!(err.contains(names), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_saying_when_it_expired() {
    let dir = tempfile::tempdir().unwrap();
    let good = certs::openssl_self_signed(dir.path(), "srv");
    let expired = certs::openssl_expired(dir.path(), "old");
    let (_server, _c, live, _echo) = server_with(&good).await;
    let old = Piped::start(&["--tls-cert", expired.cert(), "--tls-key", expired.key()]);
    let why = "the server's certificate expired on 2020-02-01T00:00:00Z";
    refused(&old, &["--tls-ca", expired.cert()], why, live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_presented_as_the_servers_own_is_refused_unless_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let root = certs::openssl_self_signed(dir.path(), "root");
    let inter = certs::openssl_ca_signed_by(dir.path(), "inter", &root);
    let (server, _c, live, echo) = server_with(&inter).await;
    // Trusting the root that signed it is not enough: it is a CA's certificate.
    let why = "the server presents a CA certificate as its own";
    refused(&server, &["--tls-ca", root.cert()], why, live).await;
    // The live tunnel of `server_with` pinned it exactly, which is accepted.
    assert_eq!(echo_roundtrip(live, b"pinned").await, b"pinned");
    drop(echo);
}
