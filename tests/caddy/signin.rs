//! Sign-in (`auth=oidc`) end to end: a real OpenID Provider (`oidc-provider`), a real
//! Caddy, real `piped` and `pipec`, a local service that records every request it
//! gets, and either a real Chromium (WebDriver) or curl following the flow by hand.

use crate::common::oidc::Provider;
use crate::common::webdriver::Driver;
use crate::common::*;
use crate::harness::*;
use axum::http::{HeaderMap, Uri};
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the local service saw: path and headers of every request.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Seen {
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<(String, HeaderMap)> {
        self.0.lock().unwrap().clone()
    }

    /// No request carried a pipe cookie or an identity the gate did not set.
    pub fn assert_no_pipe_cookie(&self) {
        for (path, h) in self.all() {
            for c in h.get_all("cookie") {
                let c = c.to_str().unwrap_or_default();
                assert!(!c.contains("__Host-pipe"), "{path}: the service got {c:?}");
            }
        }
    }
}

/// An HTTP service answering every request with a small page (and an `app` cookie
/// of its own, which must keep reaching it), recording what it got.
pub async fn recording_service() -> (u16, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, h: HeaderMap| {
        let s = s.clone();
        async move {
            s.0.lock().unwrap().push((uri.to_string(), h));
            (
                [
                    ("content-type", "text/html"),
                    ("set-cookie", "app=1; Path=/; Secure"),
                ],
                "<html><body><h1 id=\"app\">grafana home</h1></body></html>",
            )
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (port, seen)
}

/// The callback URL of `sub` behind `caddy`.
pub fn callback(caddy: &Caddy, sub: &str) -> String {
    format!("https://{sub}.{DOMAIN}:{}/.pipe/callback", caddy.https)
}

/// Waits (bounded) until the gate answers for `host`: a bare request gets 401.
pub async fn wait_gate(caddy: &Caddy, host: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match caddy.try_fetch(host, "/").await {
            Ok((401, _)) => return,
            other => assert!(
                Instant::now() < deadline,
                "{host}: no 401 from the gate: {:?}",
                other.map(|(c, b)| (c, String::from_utf8_lossy(&b).into_owned()))
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One curl exchange (no redirects followed) with a cookie jar: status, headers
/// (lower-case names), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location ({}): {}", self.status, self.body))
            .to_string()
    }
}

pub async fn curl_jar(caddy: &Caddy, jar: &Path, url: &str, extra: &[&str]) -> Answer {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or_default();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "-i", "--max-time", "20", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", caddy.https))
        .args(extra)
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{url}: no answer: {}", String::from_utf8_lossy(&out.stderr)));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Follows the sign-in of `login` by hand, from a page of `host` to the issuer's login
/// form and back; returns the callback URL the issuer sent the browser to (not yet
/// visited).
pub async fn sign_in_by_hand(
    caddy: &Caddy,
    op: &Provider,
    jar: &Path,
    host: &str,
    login: &str,
) -> String {
    let page = format!("https://{host}:{}/dash?x=1", caddy.https);
    let a = curl_jar(caddy, jar, &page, &["-H", "Accept: text/html"]).await;
    assert_eq!(a.status, 302, "{}", a.body);
    let to_issuer = a.location();
    assert!(to_issuer.starts_with(&op.issuer), "{to_issuer}");
    for needed in [
        "code_challenge_method=S256",
        "state=",
        "nonce=",
        "scope=openid",
    ] {
        assert!(to_issuer.contains(needed), "{needed} in {to_issuer}");
    }
    let abs = |l: String| {
        if l.starts_with('/') {
            format!("{}{l}", op.issuer)
        } else {
            l
        }
    };
    let interaction = abs(curl_jar(caddy, jar, &to_issuer, &[]).await.location());
    let form = format!("prompt=login&login={login}&password=any");
    let resume = abs(curl_jar(caddy, jar, &interaction, &["--data", &form])
        .await
        .location());
    let back = curl_jar(caddy, jar, &resume, &[]).await.location();
    assert!(back.starts_with(&format!("https://{host}:")), "{back}");
    back
}

/// The session cookie's value in a curl jar.
pub fn jar_session(jar: &Path) -> Option<String> {
    let text = std::fs::read_to_string(jar).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (f.len() == 7 && f[5] == "__Host-pipe").then(|| f[6].to_string())
    })
}

/// piped with sign-in, for `caddy` and `op`.
pub fn piped_with(caddy: &Caddy, op: &Provider, extra: &[&str]) -> Piped {
    let mut flags = op.piped_flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let f: Vec<&str> = flags.iter().map(String::as_str).collect();
    caddy.piped(&f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_and_the_service_gets_a_trusted_email_and_no_pipe_cookie() {
    let caddy = Caddy::start();
    let op = Provider::start(&[callback(&caddy, "grafana")]);
    let (local, seen) = recording_service().await;
    let server = piped_with(&caddy, &op, &[]);
    let spec = format!(
        "http:{local}:grafana,auth=oidc,oidc-allow=*@example.com,oidc-allow=bob@partner.io"
    );
    let plain_spec = format!("http:{local}:plainapp");
    let args = [
        "--inspect",
        "127.0.0.1:0",
        "--forward",
        &spec,
        "--forward",
        &plain_spec,
    ];
    let mut c = Pipec::spawn(server.addr, &args);
    let line = c.proc.wait_line("inspect on http://", WAIT);
    let inspect: std::net::SocketAddr = line["inspect on http://".len()..].parse().unwrap();
    let host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    let plain_host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    wait_gate(&caddy, &host).await;
    let url = format!("https://{host}:{}/dash?x=1", caddy.https);
    let flags = [
        "--ignore-certificate-errors",
        "--host-resolver-rules=MAP *.example.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ];

    // alice: the provider's login page, then the service's page, where she asked.
    let d = Driver::start_with(&flags).await;
    d.open(&url).await;
    d.wait_js("return location.href", "the provider's login page", |v| {
        v.as_str().is_some_and(|h| h.starts_with(&op.issuer))
    })
    .await;
    d.type_into("input[name=login]", "alice").await;
    d.type_into("input[name=password]", "any").await;
    d.click("button[type=submit]").await;
    d.wait_js(
        "return document.getElementById('app') ? document.getElementById('app').textContent : location.href",
        "the service's page",
        |v| v == "grafana home",
    )
    .await;
    assert_eq!(d.js("return location.href").await, url.as_str());
    assert_eq!(
        d.js("return document.cookie").await,
        "app=1",
        "the session cookie is HttpOnly: scripts never see it"
    );
    d.reload().await;
    d.wait_js(
        "return document.getElementById('app') ? document.getElementById('app').textContent : ''",
        "the page again",
        |v| v == "grafana home",
    )
    .await;
    let got = seen.all();
    let pages: Vec<_> = got.iter().filter(|(p, _)| p == "/dash?x=1").collect();
    assert_eq!(
        pages.len(),
        2,
        "{:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    for (_, h) in &got {
        assert_eq!(h["x-forwarded-email"], "alice@example.com");
        assert_eq!(h["x-forwarded-user"], "alice");
    }
    assert_eq!(
        pages[1].1["cookie"], "app=1",
        "the app's own cookie still arrives"
    );
    seen.assert_no_pipe_cookie();

    // The browser holds the session cookie for this one host, as the gate set it.
    let cookies = d.call("GET", "/cookie", None).await;
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "__Host-pipe")
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"))
        .clone();
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert_eq!(session["path"], "/");
    assert_eq!(
        session["domain"],
        host.as_str(),
        "host-only, never the parent domain"
    );

    // The inspector names her on each exchange of the signed-in forward; on the plain
    // forward the same header is only what the visitor wrote, and names no one.
    let forged = ["-H", "X-Forwarded-Email: alice@example.com"];
    let (code, _) = caddy
        .try_fetch_with(&plain_host, "/plain", &forged)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let listed = crate::common::http::http(inspect, "GET", "/api/requests", None)
        .await
        .json();
    let users: Vec<(u64, String, Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let url = e["url"].as_str().unwrap().to_string();
            (e["id"].as_u64().unwrap(), url, e["user"].clone())
        })
        .collect();
    let named = |url: &str, who: &Value| match url {
        "/plain" => who.is_null(),
        _ => who == "alice@example.com",
    };
    assert!(
        users.iter().filter(|(_, u, _)| u == "/dash?x=1").count() == 2
            && users.iter().filter(|(_, u, _)| u == "/plain").count() == 1
            && users.iter().all(|(_, u, who)| named(u, who)),
        "{users:?}"
    );
    // The page shows the same: each exchange the API listed (the browser may have
    // asked for more since, a favicon say) names alice exactly where the API does.
    d.open(&format!("http://{inspect}/")).await;
    d.wait_js(
        "return Array.from(document.querySelectorAll('#rows tr')).map(tr => \
           [Number(tr.dataset.id), tr.querySelector('td.visitor').textContent.split(' ')[0]])",
        "the inspector's rows",
        |v| {
            let rows: Vec<(u64, &str)> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| Some((r[0].as_u64()?, r[1].as_str()?)))
                .collect();
            users.iter().all(|(id, _, who)| {
                rows.iter()
                    .any(|(row, cell)| row == id && (*cell == "alice@example.com") != who.is_null())
            })
        },
    )
    .await;
    d.click("#rows tr:has(td.visitor .user)").await;
    d.wait_js(
        "const b = document.querySelector('#detail b.user'); return b ? b.textContent : ''",
        "the signed-in identity in the exchange's details",
        |v| v == "alice@example.com",
    )
    .await;

    // Sign-out ends the session.
    d.open(&format!("https://{host}:{}/.pipe/sign-out", caddy.https))
        .await;
    d.wait_js("return document.title", "the signed-out page", |v| {
        v == "Signed out"
    })
    .await;
    let cookies = d.call("GET", "/cookie", None).await;
    assert!(
        !cookies.to_string().contains("__Host-pipe\""),
        "the session cookie outlived sign-out: {cookies}"
    );
    drop(d);

    // mallory signs in too, and gets the 403 page naming her; the service never hears
    // of her.
    let before = seen.count();
    let d = Driver::start_with(&flags).await;
    d.open(&url).await;
    d.wait_js("return location.href", "the provider's login page", |v| {
        v.as_str().is_some_and(|h| h.starts_with(&op.issuer))
    })
    .await;
    d.type_into("input[name=login]", "mallory").await;
    d.type_into("input[name=password]", "any").await;
    d.click("button[type=submit]").await;
    d.wait_js(
        "return document.getElementById('who') ? document.getElementById('who').textContent : location.href",
        "the 403 page",
        |v| v == "mallory@evil.test",
    )
    .await;
    assert_eq!(
        d.js("return document.getElementById('sign-out').getAttribute('href')")
            .await,
        "/.pipe/sign-out"
    );
    d.reload().await;
    d.wait_js("return document.title", "the 403 page again", |v| {
        v == "Not allowed"
    })
    .await;
    assert_eq!(
        seen.count(),
        before,
        "a request of mallory's reached the service"
    );
    seen.assert_no_pipe_cookie();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_the_issuer_pass_and_every_bad_credential_is_refused() {
    let caddy = Caddy::start();
    let op = Provider::start(&[callback(&caddy, "api"), callback(&caddy, "other")]);
    let (local, seen) = recording_service().await;
    let server = piped_with(&caddy, &op, &[]);
    let mut c = Pipec::spawn(
        server.addr,
        &[
            "--forward",
            &format!("http:{local}:api,auth=oidc,oidc-allow=*@example.com"),
            "--forward",
            &format!("http:{local}:other,auth=oidc,oidc-allow=*@example.com"),
        ],
    );
    let host = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    let other = forwarded_host(&c.proc.wait_line("forwarding ", WAIT));
    assert_eq!(
        (host.as_str(), other.as_str()),
        ("api.example.test", "other.example.test")
    );
    wait_gate(&caddy, &host).await;
    wait_gate(&caddy, &other).await;

    // A bare request that does not ask for HTML: 401, no redirect.
    let bare = caddy.try_fetch(&host, "/").await.unwrap();
    assert_eq!(bare.0, 401);
    assert_eq!(seen.count(), 0);

    // A client-credentials token for this audience reaches the service.
    let token = op.client_credentials("urn:pipe");
    let auth = format!("Authorization: Bearer {token}");
    let ok = caddy
        .try_fetch_with(
            &host,
            "/api",
            &["-H", &auth, "-H", "X-Forwarded-Email: ceo@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(ok.0, 200);
    assert_eq!(seen.count(), 1);
    let (_, h) = &seen.all()[0];
    assert_eq!(h["x-forwarded-user"], "pipe");
    assert!(
        h.get("x-forwarded-email").is_none_or(|v| v.is_empty()),
        "the visitor's own copy is gone: {:?}",
        h.get("x-forwarded-email")
    );

    // Forged, foreign-audience and foreign-issuer tokens do not; nor do expired ones.
    // Minted ones carry the issuer's own signature: only the claim named is wrong.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], parts[1], "A".repeat(parts[2].len()));
    let other_audience = op.client_credentials("urn:other");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |field: &str, value: serde_json::Value| {
        let mut c = serde_json::json!({ "iss": op.issuer, "aud": "pipe", "sub": "bob",
            "exp": now + 300, "email": "bob@example.com", "email_verified": true });
        if !field.is_empty() {
            c[field] = value;
        }
        op.mint(&c)
    };
    let minted_ok = claims("", serde_json::Value::Null);
    let auth = format!("Authorization: Bearer {minted_ok}");
    let r = caddy
        .try_fetch_with(&host, "/", &["-H", &auth])
        .await
        .unwrap();
    assert_eq!(
        r.0, 200,
        "a good minted token: the refusals below are for their claim"
    );
    assert_eq!(seen.count(), 2);
    assert_eq!(seen.all()[1].1["x-forwarded-email"], "bob@example.com");
    let outsider = claims("email", serde_json::json!("mallory@evil.test"));
    let auth = format!("Authorization: Bearer {outsider}");
    let r = caddy
        .try_fetch_with(&host, "/", &["-H", &auth])
        .await
        .unwrap();
    assert_eq!(r.0, 403, "a person not on the list");
    for (what, t) in [
        ("forged", forged),
        ("wrong audience", other_audience),
        (
            "wrong audience, minted",
            claims("aud", serde_json::json!("other")),
        ),
        (
            "wrong issuer",
            claims("iss", serde_json::json!("http://127.0.0.1:1")),
        ),
        ("expired", claims("exp", serde_json::json!(now - 3600))),
        ("not a JWT", "abc".to_string()),
    ] {
        let auth = format!("Authorization: Bearer {t}");
        let r = caddy
            .try_fetch_with(&host, "/", &["-H", &auth])
            .await
            .unwrap();
        assert_eq!(r.0, 401, "{what}");
    }
    assert_eq!(seen.count(), 2, "a refused token reached the service");

    // A browser sign-in by hand; the state cannot be used twice.
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar");
    let back = sign_in_by_hand(&caddy, &op, &jar, &host, "alice").await;
    let done = curl_jar(&caddy, &jar, &back, &[]).await;
    assert_eq!(
        done.status,
        302,
        "{}\n{back}\n{}",
        done.body,
        std::fs::read_to_string(&jar).unwrap_or_default()
    );
    assert_eq!(done.location(), "/dash?x=1");
    let set: Vec<&str> = done
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    let session = set.iter().find(|c| c.starts_with("__Host-pipe=")).unwrap();
    for attr in [
        "Path=/",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Max-Age=43200",
    ] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    assert!(
        !session.to_ascii_lowercase().contains("domain="),
        "{session}"
    );
    let cookie = jar_session(&jar).expect("a session cookie in the jar");
    let page = format!("https://{host}:{}/dash?x=1", caddy.https);
    let a = curl_jar(&caddy, &jar, &page, &[]).await;
    assert_eq!((a.status, seen.count()), (200, 3));
    // Replayed: with the state cookie put back (the callback cleared it), the state
    // itself is gone; without it, the browser is not the one that started.
    let state = back
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .expect("a state in the callback URL");
    let state_cookie = format!("Cookie: __Host-pipe-state={state}");
    let replay = curl_jar(&caddy, &jar, &back, &["-H", &state_cookie]).await;
    assert_eq!(replay.status, 400, "a replayed state");
    assert!(
        replay.body.contains("expired or was already used"),
        "{}",
        replay.body
    );
    let replay = curl_jar(&caddy, &jar, &back, &[]).await;
    assert_eq!(replay.status, 400, "a replayed state");
    assert!(
        replay.body.contains("not started in this browser"),
        "{}",
        replay.body
    );

    // The session cookie on another subdomain, or altered, or sealed by another
    // process's key (after a restart of piped without a state directory): refused.
    let carried = format!("Cookie: __Host-pipe={cookie}");
    let r = caddy
        .try_fetch_with(&other, "/", &["-H", &carried])
        .await
        .unwrap();
    assert_eq!(r.0, 401, "a cookie from another subdomain");
    let mut bytes = cookie.clone().into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let altered = format!("Cookie: __Host-pipe={}", String::from_utf8(bytes).unwrap());
    let r = caddy
        .try_fetch_with(&host, "/", &["-H", &altered])
        .await
        .unwrap();
    assert_eq!(r.0, 401, "an altered cookie");
    let huge = format!("Cookie: __Host-pipe={}", "A".repeat(20_000));
    let r = caddy
        .try_fetch_with(&host, "/", &["-H", &huge])
        .await
        .unwrap();
    assert_eq!(r.0, 401, "an oversized cookie");
    let ok = caddy
        .try_fetch_with(
            &host,
            "/",
            &["-H", &format!("Cookie: __Host-pipe={cookie}")],
        )
        .await
        .unwrap();
    assert_eq!(ok.0, 200, "the cookie itself still works");
    assert_eq!(seen.count(), 4);
    // Every request is judged, not the connection: on one kept-alive connection a
    // signed-in request passes and the next one, without the cookie, does not.
    let url = format!("https://{host}:{}/", caddy.https);
    // `--next` resets the options but keeps the connection.
    let resolve = format!("{host}:{}:127.0.0.1", caddy.https);
    let common = [
        "-sS",
        "-k",
        "--max-time",
        "20",
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
    ];
    let out = tokio::process::Command::new("curl")
        .args(common)
        .args(["-w", "%{http_code} %{num_connects} "])
        .args([
            "-H",
            &format!("Cookie: __Host-pipe={cookie}"),
            &url,
            "--next",
        ])
        .args(common)
        .args(["-w", "%{http_code} %{num_connects}", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 1 401 0",
        "status and new connections of each request"
    );
    assert_eq!(seen.count(), 5);
    drop(c);
    drop(server);
    let server = piped_with(&caddy, &op, &[]);
    let mut c = Pipec::spawn(
        server.addr,
        &[
            "--forward",
            &format!("http:{local}:api,auth=oidc,oidc-allow=*@example.com"),
        ],
    );
    c.proc.wait_line("forwarding ", WAIT);
    wait_gate(&caddy, &host).await;
    let r = caddy
        .try_fetch_with(
            &host,
            "/",
            &["-H", &format!("Cookie: __Host-pipe={cookie}")],
        )
        .await
        .unwrap();
    assert_eq!(r.0, 401, "a cookie sealed with another key");
    assert_eq!(seen.count(), 5, "a refused request reached the service");

    // A piped that keeps its key in a state directory: a session sealed with that key
    // passes (also after the restart), the same session past its expiry does not.
    drop(c);
    drop(server);
    let state = tempfile::tempdir().unwrap();
    let sealer = pipe::signin::Sealer::from_state_dir(state.path()).unwrap();
    let alice = pipe::signin::Identity {
        email: Some("alice@example.com".into()),
        user: "alice".into(),
        groups: vec![],
    };
    let fresh = sealer
        .seal(&host, &alice, Duration::from_secs(600))
        .unwrap();
    let expired = sealer.seal(&host, &alice, Duration::ZERO).unwrap();
    let server = piped_with(
        &caddy,
        &op,
        &["--state-dir", state.path().to_str().unwrap()],
    );
    let mut c = Pipec::spawn(
        server.addr,
        &[
            "--forward",
            &format!("http:{local}:api,auth=oidc,oidc-allow=*@example.com"),
        ],
    );
    c.proc.wait_line("forwarding ", WAIT);
    wait_gate(&caddy, &host).await;
    let with = |v: &str| format!("Cookie: __Host-pipe={v}");
    let r = caddy
        .try_fetch_with(&host, "/", &["-H", &with(&fresh)])
        .await
        .unwrap();
    assert_eq!(r.0, 200, "a session sealed with the state directory's key");
    assert_eq!(seen.count(), 6);
    let r = caddy
        .try_fetch_with(&host, "/", &["-H", &with(&expired)])
        .await
        .unwrap();
    assert_eq!(r.0, 401, "an expired session cookie");
    assert_eq!(
        seen.count(),
        6,
        "a request with an expired session reached the service"
    );
    seen.assert_no_pipe_cookie();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_oidc_needs_sign_in_on_the_server_and_users_may_be_required_to_use_it() {
    let caddy = Caddy::start();
    let server = caddy.piped(&[]);
    let mut c = Pipec::spawn(
        server.addr,
        &[
            "--forward",
            "http:3000:app,auth=oidc,oidc-allow=*@example.com",
        ],
    );
    assert_eq!(c.proc.wait_exit(WAIT), 4, "{}", c.proc.stderr());
    let err = c.proc.stderr();
    assert!(
        err.contains(
            "auth=oidc needs sign-in on the server (piped --oidc-issuer); this server has none"
        ),
        "{err}"
    );

    let op = Provider::start(&[callback(&caddy, "alice")]);
    let dir = tempfile::tempdir().unwrap();
    const ALICE: &str = "alice-token-0123456789abcdef0123456789";
    let alice = |extra: &str| {
        crate::common::users::user(
            "alice",
            ALICE,
            &[],
            &format!("subdomains = [\"alice\", \"alice-*\"]\n{extra}"),
        )
    };
    let path = crate::common::users::users_file(dir.path(), &alice(""));
    let users = path.to_string_lossy().into_owned();
    let server = piped_with(&caddy, &op, &["--users", &users]);
    let login = ["--user", "alice", "--token", ALICE];
    let why = "alice's http forwards must have visitors sign in: add auth=oidc (require-sign-in)";

    // Required after the fact: the open forward is closed, the signed-in one stays.
    let mut args = login.to_vec();
    args.extend(["--forward", "http:3000:alice-open"]);
    args.extend([
        "--forward",
        "http:3000:alice,auth=oidc,oidc-allow=alice@example.com",
    ]);
    let mut both = Pipec::spawn(server.addr, &args);
    both.proc.wait_line("forwarding ", WAIT);
    both.proc.wait_line("forwarding ", WAIT);
    crate::common::users::write(&path, &alice("require-sign-in = true"));
    let start = Instant::now();
    while !both.proc.stderr().contains(why) {
        assert!(start.elapsed() < WAIT, "{}", both.proc.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        both.proc.child.try_wait().unwrap().is_none(),
        "the other forward stays"
    );
    wait_gate(&caddy, &format!("alice.{DOMAIN}")).await;

    // Asked for anew: refused at once.
    let mut args = login.to_vec();
    args.extend(["--forward", "http:3000:alice-x"]);
    let mut c = Pipec::spawn(server.addr, &args);
    assert_eq!(c.proc.wait_exit(WAIT), 4, "{}", c.proc.stderr());
    let err = c.proc.stderr();
    assert!(err.contains(why), "{err}");
}

/// piped with `args` exits 2 saying `why`.
fn bad_flags(args: &[&str], why: &str) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    let mut p = Proc::spawn(piped_bin(), &all);
    assert_eq!(p.wait_exit(WAIT), 2, "{args:?}: {}", p.stderr());
    let err = p.stderr();
    assert!(err.contains(why), "{args:?}: stderr lacks {why:?}:\n{err}");
}

#[test]
fn bad_sign_in_flags_are_usage_errors_that_say_what_is_wrong() {
    let caddy = ["--domain", DOMAIN, "--caddy-admin", "http://127.0.0.1:1"];
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let secret = secret.to_string_lossy().into_owned();
    let missing = dir.path().join("missing").to_string_lossy().into_owned();
    let with = |issuer: &'static str, file: &str| -> Vec<String> {
        let mut v: Vec<String> = caddy.iter().map(|s| s.to_string()).collect();
        v.extend(["--oidc-issuer", issuer, "--oidc-client-id", "pipe"].map(String::from));
        v.extend(["--oidc-client-secret-file".to_string(), file.to_string()]);
        v
    };
    let run = |v: Vec<String>, why: &str| {
        let a: Vec<&str> = v.iter().map(String::as_str).collect();
        bad_flags(&a, why)
    };
    run(
        with("http://idp.example.com", &secret),
        "invalid oidc-issuer \"http://idp.example.com\": http is allowed only on a loopback address (127.0.0.1, [::1], localhost); use https",
    );
    run(
        with("idp.example.com", &secret),
        "invalid oidc-issuer \"idp.example.com\": expected an https:// URL, e.g. https://idp.example.com",
    );
    run(
        with("https://idp.example.com", &missing),
        &format!("cannot read oidc-client-secret-file {missing}: No such file or directory"),
    );
    bad_flags(
        &[
            "--oidc-issuer",
            "https://idp.example.com",
            "--oidc-client-id",
            "pipe",
        ],
        "oidc-issuer needs domain and caddy-admin: sign-in is for http forwards",
    );
}
