//! A real OpenID Provider for the sign-in tests: `tests/oidc/provider.mjs` (the
//! `oidc-provider` package, installed by `scripts/test.sh` with `npm ci` in
//! `tests/oidc`) on a loopback port, with client `pipe` and the accounts `alice`
//! (alice@example.com, group staff) and `mallory` (mallory@evil.test), and a test-only
//! route that signs any claims with its key.
//!
//! Ready when it prints `oidc-provider on URL`; killed when dropped (node starts no
//! other process).

use super::{Proc, WAIT};
use std::path::PathBuf;
use std::process::Command;

/// The client secret the provider knows piped by.
pub const CLIENT_SECRET: &str = "pipe-test-client-secret";

pub struct Provider {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`, the issuer.
    pub issuer: String,
    /// Holds the client secret file piped reads.
    dir: tempfile::TempDir,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Provider {
    /// Starts the provider; `redirects` are the callback URLs the client may use.
    pub fn start(redirects: &[String]) -> Provider {
        let script = dir().join("provider.mjs");
        assert!(
            dir().join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci` in tests/oidc (scripts/test.sh does)"
        );
        let redirects = redirects.join(",");
        let mut proc = Proc::spawn_env(
            "node",
            &[script.to_string_lossy().into_owned()],
            &[
                ("CLIENT_SECRET", CLIENT_SECRET),
                ("REDIRECT_URIS", &redirects),
            ],
        );
        let line = proc.wait_line("oidc-provider on ", WAIT);
        let issuer = line["oidc-provider on ".len()..].trim().to_string();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), format!("{CLIENT_SECRET}\n")).unwrap();
        Provider { proc, issuer, dir }
    }

    /// The file holding the client secret (for `--oidc-client-secret-file`).
    pub fn secret_file(&self) -> String {
        self.dir
            .path()
            .join("secret")
            .to_string_lossy()
            .into_owned()
    }

    /// piped's sign-in flags for this provider.
    pub fn piped_flags(&self) -> Vec<String> {
        vec![
            "--oidc-issuer".into(),
            self.issuer.clone(),
            "--oidc-client-id".into(),
            "pipe".into(),
            "--oidc-client-secret-file".into(),
            self.secret_file(),
        ]
    }

    /// A JWT of `claims` signed with the provider's own key (its test-only
    /// `/test/mint`): good signature, whatever the claims say.
    pub fn mint(&self, claims: &serde_json::Value) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-G", "--data-urlencode"])
            .arg(format!("claims={claims}"))
            .arg(format!("{}/test/mint", self.issuer))
            .output()
            .expect("curl runs");
        let jwt = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(jwt.split('.').count(), 3, "not a JWT: {jwt}");
        jwt
    }

    /// An access token (a JWT) from the client-credentials grant, for `resource`
    /// (`urn:pipe`: audience `pipe`; `urn:other`: audience `other`).
    pub fn client_credentials(&self, resource: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-u"])
            .arg(format!("pipe:{CLIENT_SECRET}"))
            .args([
                "-d",
                "grant_type=client_credentials",
                "-d",
                "scope=api",
                "-d",
            ])
            .arg(format!("resource={resource}"))
            .arg(format!("{}/token", self.issuer))
            .output()
            .expect("curl runs");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("token answer {e}: {}", String::from_utf8_lossy(&out.stdout))
        });
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {v}"))
            .to_string()
    }
}
