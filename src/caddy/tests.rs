//! Unit tests of the client that need no Caddy: checks made before any call, ids,
//! URL handling and an endpoint where nothing listens.

use super::*;

#[tokio::test]
async fn publish_refuses_a_subdomain_that_is_not_a_dns_label() {
    // Nothing listens on port 9: the check comes before any call.
    let c = Caddy::new("http://127.0.0.1:9", "srv0", "example.test", false);
    for bad in [r#"a","dial":"x"#, "Bad_Name", "a.b", "", "-x"] {
        match c.publish(bad, 1, 4000, &Default::default()).await {
            Err(CaddyError::InvalidSubdomain(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn ids_are_prefixed_per_domain_and_unique_per_process() {
    let a = Caddy::new("http://127.0.0.1:2019", "srv0", "example.test", false);
    let b = Caddy::new("http://127.0.0.1:2019", "srv0", "example.test", false);
    let id = a.route_id("myapp", 7);
    assert!(id.starts_with("pipe:example.test:"));
    assert!(id.ends_with(":myapp:7"));
    assert!(id.starts_with(&b.id_prefix()));
    assert_ne!(id, b.route_id("myapp", 7));
}

#[tokio::test]
async fn a_bad_url_is_reported_by_check_and_calls() {
    let c = Caddy::new("https://127.0.0.1:2019", "srv0", "example.test", false);
    assert!(matches!(c.check(), Err(CaddyError::BadUrl { .. })));
    assert!(matches!(
        c.remove_stale().await,
        Err(CaddyError::BadUrl { .. })
    ));
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let c = Caddy::new(
        &format!("http://127.0.0.1:{port}"),
        "srv0",
        "example.test",
        false,
    );
    let err = c
        .publish("myapp", 1, 4000, &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CaddyError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.to_string(), "Caddy's admin API is unreachable");
}
