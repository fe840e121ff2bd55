//! Token checks against a real HTTP issuer in the test process: discovery and a key
//! set it can rotate, tokens signed with keys made here (ES256).

use super::*;
use crate::auth::Token;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::EncodingKey;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct TestKey {
    kid: String,
    enc: EncodingKey,
    jwk: Value,
}

fn key(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    TestKey {
        kid: kid.into(),
        enc: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                     "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) }),
    }
}

struct TestIssuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn issuer(keys: &[&TestKey]) -> TestIssuer {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let set: Arc<Mutex<Vec<Value>>> =
        Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let meta = json!({
        "issuer": url, "authorization_endpoint": format!("{url}/auth"),
        "token_endpoint": format!("{url}/token"), "jwks_uri": format!("{url}/jwks"),
    });
    let (s, f) = (set.clone(), fetches.clone());
    let m2 = meta.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(meta) }),
        )
        // Another issuer's path serving this one's document.
        .route(
            "/other/.well-known/openid-configuration",
            get(move || async move { Json(m2) }),
        )
        .route(
            "/jwks",
            get(move || async move {
                f.fetch_add(1, Ordering::SeqCst);
                let keys = s.lock().unwrap().clone();
                Json(json!({ "keys": keys }))
            }),
        );
    tokio::spawn(async move { axum::serve(l, app).await });
    TestIssuer {
        url,
        keys: set,
        fetches,
    }
}

fn checker(iss: &TestIssuer) -> Issuer {
    Issuer::new(
        OidcConfig {
            issuer: iss.url.clone(),
            client_id: "pipe".into(),
            client_secret: crate::config::ClientSecret::Value(Token::new("s")),
        },
        Token::new("s"),
    )
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(k: &TestKey, claims: Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &k.enc).unwrap()
}

fn claims(iss: &str) -> Value {
    json!({ "iss": iss, "aud": "pipe", "sub": "alice", "exp": now() + 300,
            "email": "Alice@Example.com", "email_verified": true,
            "groups": ["staff", "g".repeat(MAX_GROUP_LEN + 1)], "nonce": "n1" })
}

#[tokio::test]
async fn a_good_id_token_names_its_verified_email_and_groups() {
    let k = key("k1");
    let iss = issuer(&[&k]).await;
    let id = checker(&iss)
        .verify(&sign(&k, claims(&iss.url)), Some("n1"))
        .await
        .unwrap();
    assert_eq!(id.email.as_deref(), Some("alice@example.com"));
    assert_eq!(id.user, "alice");
    assert_eq!(id.groups, ["staff"], "an over-long group is left out");
    let mut c = claims(&iss.url);
    c["email_verified"] = json!(false);
    let id = checker(&iss).verify(&sign(&k, c), None).await.unwrap();
    assert_eq!(id.email, None, "an unverified email is no email");
}

#[tokio::test]
async fn forged_expired_foreign_and_replayed_tokens_are_refused() {
    let k = key("k1");
    let iss = issuer(&[&k]).await;
    let c = checker(&iss);
    let refused = |t: String, nonce: Option<&'static str>| {
        let c = &c;
        async move { c.verify(&t, nonce).await.unwrap_err() }
    };
    // Signed by another key under the issuer's key id.
    let forger = TestKey {
        kid: "k1".into(),
        ..key("k1")
    };
    assert!(matches!(
        refused(sign(&forger, claims(&iss.url)), None).await,
        TokenError::Invalid(_)
    ));
    // A payload altered after signing.
    let good = sign(&k, claims(&iss.url));
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut body: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    body["email"] = json!("mallory@example.com");
    let altered = format!("{}.{}.{}", parts[0], b64.encode(body.to_string()), parts[2]);
    assert!(matches!(
        refused(altered, None).await,
        TokenError::Invalid(_)
    ));
    for (field, value) in [
        ("exp", json!(now() - 3600)),
        ("aud", json!("other")),
        ("iss", json!("http://127.0.0.1:1")),
    ] {
        let mut cl = claims(&iss.url);
        cl[field] = value;
        let e = refused(sign(&k, cl), None).await;
        assert!(matches!(e, TokenError::Invalid(_)), "{field}: {e}");
    }
    let mut cl = claims(&iss.url);
    cl["aud"] = json!(["pipe", "other"]);
    assert!(
        matches!(refused(sign(&k, cl), None).await, TokenError::Invalid(_)),
        "azp missing"
    );
    assert!(matches!(
        refused(good.clone(), Some("n2")).await,
        TokenError::Nonce
    ));
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&iss.url),
        &EncodingKey::from_secret(b"public key as a secret"),
    )
    .unwrap();
    assert!(matches!(refused(hs, None).await, TokenError::Algorithm));
    assert!(matches!(
        refused("x".repeat(MAX_TOKEN + 1), None).await,
        TokenError::TooLong
    ));
    assert!(matches!(
        refused("not.a.jwt".into(), None).await,
        TokenError::Malformed
    ));
    assert!(
        c.verify(&good, Some("n1")).await.is_ok(),
        "the good one still passes"
    );
}

#[tokio::test]
async fn rotated_keys_are_fetched_again_but_not_for_every_unknown_key() {
    let (old, new) = (key("old"), key("new"));
    let iss = issuer(&[&old]).await;
    let c = checker(&iss);
    c.verify(&sign(&old, claims(&iss.url)), None).await.unwrap();
    assert_eq!(iss.fetches.load(Ordering::SeqCst), 1);
    c.verify(&sign(&old, claims(&iss.url)), None).await.unwrap();
    assert_eq!(iss.fetches.load(Ordering::SeqCst), 1, "cached");
    // The issuer rotates; the next fetch is allowed once the interval has passed.
    *iss.keys.lock().unwrap() = vec![new.jwk.clone()];
    c.keys.write().unwrap().fetched = Some(Instant::now() - MIN_KEY_FETCH_INTERVAL);
    let id = c.verify(&sign(&new, claims(&iss.url)), None).await.unwrap();
    assert_eq!(id.user, "alice");
    assert_eq!(
        iss.fetches.load(Ordering::SeqCst),
        2,
        "fetched again for the new key"
    );
    // Tokens naming made-up keys do not make piped fetch again and again.
    for i in 0..5 {
        let made_up = TestKey {
            kid: format!("nope{i}"),
            ..key("x")
        };
        let e = c
            .verify(&sign(&made_up, claims(&iss.url)), None)
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::UnknownKey), "{e}");
    }
    assert_eq!(iss.fetches.load(Ordering::SeqCst), 2);
    let e = c
        .verify(&sign(&old, claims(&iss.url)), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, TokenError::UnknownKey),
        "the retired key no longer counts"
    );
}

#[tokio::test]
async fn an_issuer_whose_document_names_another_issuer_is_not_trusted() {
    let k = key("k1");
    let iss = issuer(&[&k]).await;
    let c = Issuer::new(
        OidcConfig {
            issuer: format!("{}/other", iss.url),
            client_id: "pipe".into(),
            client_secret: crate::config::ClientSecret::Value(Token::new("s")),
        },
        Token::new("s"),
    );
    let e = c
        .verify(&sign(&k, claims(&iss.url)), None)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the discovery document names issuer"),
        "{e}"
    );
}

#[tokio::test]
async fn a_key_set_is_read_up_to_its_cap_and_unknown_key_types_are_skipped() {
    let wanted = key("wanted");
    let filler: Vec<TestKey> = (0..MAX_KEYS).map(|i| key(&format!("f{i}"))).collect();
    let mut refs: Vec<&TestKey> = filler.iter().collect();
    refs.push(&wanted);
    let iss = issuer(&refs).await;
    // A key type the library does not know first: skipped, not fatal.
    iss.keys
        .lock()
        .unwrap()
        .insert(0, json!({ "kty": "weird", "kid": "w" }));
    let c = checker(&iss);
    c.verify(&sign(&filler[0], claims(&iss.url)), None)
        .await
        .unwrap();
    let e = c
        .verify(&sign(&wanted, claims(&iss.url)), None)
        .await
        .unwrap_err();
    assert!(matches!(e, TokenError::UnknownKey), "past the cap: {e}");
}
