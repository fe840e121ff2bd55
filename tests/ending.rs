//! The server says why it ends a session (`ServerMsg::Ending`), and `pipec` says it in
//! words a user acts on, rather than guessing at a restart.

mod common;

use common::*;

const TOKEN_A: &str = "alice-0123456789abcdef0123456789abcdef";
const TOKEN_A2: &str = "alice-fedcba9876543210fedcba9876543210";

fn users(token: &str) -> String {
    format!("[[user]]\nname = \"alice\"\ntoken = \"{token}\"\nports = \"1024-65535\"\n")
}

#[tokio::test]
async fn a_rotated_token_ends_the_session_with_the_reason_and_the_client_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(&file, users(TOKEN_A)).unwrap();
    let server = Piped::start(&["--users", file.to_str().unwrap()]);
    let echo = echo_service().await;
    let fwd = format!("tcp:127.0.0.1:{}:0", echo.port);
    let (mut c, _) = Pipec::start(
        server.addr,
        &["--user", "alice", "--token", TOKEN_A, "--forward", &fwd],
        1,
    );
    let tmp = dir.path().join("users.tmp");
    std::fs::write(&tmp, users(TOKEN_A2)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    server.proc.signal("HUP");
    assert_eq!(c.proc.wait_exit(WAIT), 3);
    let err = c.proc.stderr();
    assert!(
        err.contains(
            "the server ended the session: the token of user alice was changed or the user was removed; log in with the new token"
        ),
        "{err}"
    );
    assert!(!err.contains("stopping or restarting"), "{err}");
    // Nothing else was disturbed: the server still takes the new token.
    let (_c2, _) = Pipec::start(
        server.addr,
        &["--user", "alice", "--token", TOKEN_A2, "--forward", &fwd],
        1,
    );
}
