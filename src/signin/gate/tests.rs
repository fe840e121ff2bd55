//! The gate's answers, called directly: paths, cookies, headers and verdicts.

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn return_paths_stay_on_the_site() {
    for (given, kept) in [
        ("/dash?x=1", "/dash?x=1"),
        ("//evil.io/x", "/"),
        ("/\\evil.io", "/"),
        ("https://evil.io/", "/"),
        ("/.pipe/sign-out", "/"),
    ] {
        assert_eq!(return_to(&headers(&[(URI_HEADER, given)])), kept, "{given}");
    }
    let long = format!("/{}", "a".repeat(MAX_RETURN_TO));
    assert_eq!(return_to(&headers(&[(URI_HEADER, &long)])), "/");
    assert_eq!(return_to(&headers(&[])), "/");
}

#[test]
fn cookies_are_read_by_exact_name_from_sane_headers() {
    let h = headers(&[("cookie", "a=1; __Host-pipe-state=s; __Host-pipe=v")]);
    assert_eq!(cookie(&h, SESSION_COOKIE), Some("v"));
    assert_eq!(cookie(&h, STATE_COOKIE), Some("s"));
    let h = headers(&[("cookie", "x__Host-pipe=v")]);
    assert_eq!(cookie(&h, SESSION_COOKIE), None);
    let huge = format!("__Host-pipe=v; pad={}", "p".repeat(MAX_COOKIE_HEADER));
    assert_eq!(cookie(&headers(&[("cookie", &huge)]), SESSION_COOKIE), None);
}

/// A gate for `example.test` whose issuer is a closed loopback port.
fn gate() -> Arc<SignIn> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cfg = crate::config::OidcConfig {
        issuer,
        client_id: "pipe".into(),
        client_secret: crate::config::ClientSecret::Value(crate::auth::Token::new("s")),
    };
    Arc::new(SignIn::new(
        cfg,
        crate::auth::Token::new("s"),
        "example.test",
        super::super::Sealer::random(),
        std::time::Duration::from_secs(60),
    ))
}

fn from_caddy(extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = headers(&[
        (HOST_HEADER, "app.example.test:8443"),
        (URI_HEADER, "/x"),
        (ALLOW_HEADER, "*@example.com group:ops"),
    ]);
    h.extend(headers(extra));
    h
}

async fn body(r: Response) -> String {
    use http_body_util::BodyExt;
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

#[tokio::test]
async fn each_request_gets_its_own_verdict() {
    let s = gate();
    let id = |email: &str| super::super::Identity {
        email: Some(email.into()),
        user: "sub-1".into(),
        groups: vec![],
    };
    let cookie = |host: &str, email: &str| {
        let v = s.sealer.seal(host, &id(email), s.lifetime).unwrap();
        format!("{SESSION_COOKIE}={v}")
    };
    let r = check(
        State(s.clone()),
        headers(&[(HOST_HEADER, "app.example.test")]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "not from Caddy");
    let r = check(State(s.clone()), from_caddy(&[(HOST_HEADER, "evil.io")])).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "not our domain");

    let c = cookie("app.example.test", "ann@example.com");
    let r = check(State(s.clone()), from_caddy(&[("cookie", &c)])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[EMAIL_HEADER], "ann@example.com");
    assert_eq!(r.headers()[USER_HEADER], "sub-1");

    let c = cookie("app.example.test", "<b>eve</b>@evil.io");
    let r = check(State(s.clone()), from_caddy(&[("cookie", &c)])).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let page = body(r).await;
    assert!(page.contains("&lt;b&gt;eve&lt;/b&gt;@evil.io"), "{page}");
    assert!(page.contains(SIGN_OUT_PATH));

    let c = cookie("other.example.test", "ann@example.com");
    let r = check(State(s.clone()), from_caddy(&[("cookie", &c)])).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "another host's session"
    );
    assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");

    // The issuer being down is said as such, not blamed on the visitor.
    let r = check(State(s.clone()), from_caddy(&[("accept", "text/html")])).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let r = check(
        State(s.clone()),
        from_caddy(&[("authorization", "Bearer a.b.c")]),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "not even a JWT header"
    );
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let jwt = format!("{}.{}.sig", b64(r#"{"alg":"RS256","kid":"k"}"#), b64("{}"));
    let auth = format!("Bearer {jwt}");
    let r = check(State(s.clone()), from_caddy(&[("authorization", &auth)])).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn bearer_and_html_are_told_apart() {
    let h = headers(&[("authorization", "Bearer abc"), ("accept", "text/html,*/*")]);
    assert_eq!(bearer(&h), Some("abc"));
    assert!(accepts_html(&h));
    let h = headers(&[("authorization", "Basic abc"), ("accept", "*/*")]);
    assert_eq!(bearer(&h), None);
    assert!(!accepts_html(&h));
}
