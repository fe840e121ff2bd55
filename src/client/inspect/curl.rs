//! "Copy as curl": a recorded request as a `curl` command line that sends it to the
//! local service again, safe to paste into a POSIX shell (bash for bodies that need
//! `$'…'`).
//!
//! Every value a peer chose (target, header names and values, body) is quoted, never
//! spliced in bare: in single quotes when it is printable text, else as bash's
//! `$'…'` with escapes. A body that holds a NUL byte (no shell argument can carry
//! one) or that was cut at the inspector's cap gets no command, and says why.

use super::store::Body;

/// Headers curl adds by itself unless told not to: a request recorded without them
/// is sent without them (`-H 'Name:'` removes one).
const CURL_DEFAULTS: [&str; 2] = ["User-Agent", "Accept"];

/// The request as a curl command that sends it to `base` (`http://127.0.0.1:3000`),
/// one option per line.
///
/// ```
/// use pipe::client::inspect::curl::command;
/// use pipe::client::inspect::Body;
/// let headers = vec![("Host".to_string(), "app.example".to_string())];
/// let cmd = command("http://127.0.0.1:3000", "GET", "/it's", &headers, &Body::default());
/// assert_eq!(
///     cmd.unwrap(),
///     "curl 'http://127.0.0.1:3000/it'\\''s' \\\n  -H 'Host: app.example' \\\n  \
///      -H 'User-Agent:' \\\n  -H 'Accept:'"
/// );
/// ```
pub fn command(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &Body,
) -> Result<String, &'static str> {
    if body.truncated {
        return Err("the body was cut at the inspector's cap: it cannot be sent again whole");
    }
    let data = match body.bytes.as_slice() {
        [] => None,
        b => Some(quote(b).ok_or("the body holds NUL bytes, which no shell argument can carry")?),
    };
    let mut args: Vec<String> = Vec::new();
    // An origin-form target goes in the URL (curl's globbing and its dot-segment
    // clean-up turned off where they would change it); any other is sent as is.
    if target.starts_with('/') && !target.contains('#') {
        args.push(quoted(&format!("{base}{target}")));
        if target.contains(['[', ']', '{', '}']) {
            args.push("--globoff".into());
        }
        if target.contains("/.") {
            args.push("--path-as-is".into());
        }
    } else {
        args.push(quoted(&format!("{base}/")));
        args.push(format!("--request-target {}", quoted(target)));
    }
    match (method, &data) {
        ("GET", None) => {}
        ("HEAD", None) => args.push("--head".into()),
        _ => args.push(format!("-X {}", quoted(method))),
    }
    for (name, value) in headers {
        // `Name:` would remove the header: an empty value is written `Name;`.
        let h = if value.is_empty() {
            format!("{name};")
        } else {
            format!("{name}: {value}")
        };
        args.push(format!("-H {}", quoted(&h)));
    }
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut unset: Vec<&str> = CURL_DEFAULTS.iter().copied().filter(|n| !has(n)).collect();
    if data.is_some() && !has("Content-Type") {
        // --data-binary would add a form type of its own.
        unset.push("Content-Type");
    }
    for name in unset {
        args.push(format!("-H {}", quoted(&format!("{name}:"))));
    }
    if let Some(d) = data {
        args.push(format!("--data-binary {d}"));
    }
    Ok(format!("curl {}", args.join(" \\\n  ")))
}

/// `s` as one shell word (the text is never empty of quotes, so never unquoted).
fn quoted(s: &str) -> String {
    // A &str holds no NUL only if its bytes hold none; a header or target does not.
    quote(s.as_bytes()).unwrap_or_else(|| "''".into())
}

/// `bytes` as one shell word: `'…'` for printable text, `$'…'` (bash, zsh, ksh)
/// otherwise; `None` when they hold a NUL byte.
///
/// ```
/// use pipe::client::inspect::curl::quote;
/// assert_eq!(quote(b"it's $(rm -rf ~)").unwrap(), r"'it'\''s $(rm -rf ~)'");
/// assert_eq!(quote(b"a\nb\\\x1b").unwrap(), r"$'a\nb\\\x1b'");
/// assert_eq!(quote(b""), Some("''".to_string()));
/// assert_eq!(quote(b"a\0b"), None);
/// ```
pub fn quote(bytes: &[u8]) -> Option<String> {
    if bytes.contains(&0) {
        return None;
    }
    match std::str::from_utf8(bytes) {
        // Control characters (a newline, a carriage return a terminal turns into a
        // newline, an escape sequence) never go into a pasted command raw.
        Ok(text) if !text.chars().any(char::is_control) => {
            Some(format!("'{}'", text.replace('\'', r"'\''")))
        }
        _ => {
            let mut out = String::from("$'");
            for &b in bytes {
                match b {
                    b'\\' => out.push_str(r"\\"),
                    b'\'' => out.push_str(r"\'"),
                    b'\n' => out.push_str(r"\n"),
                    b'\r' => out.push_str(r"\r"),
                    b'\t' => out.push_str(r"\t"),
                    0x20..=0x7e => out.push(b as char),
                    // Always two digits: a hex digit that follows is not taken in.
                    _ => out.push_str(&format!("\\x{b:02x}")),
                }
            }
            out.push('\'');
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The words bash makes of `cmd` when `curl` is a function that prints them.
    fn words_of(cmd: &str) -> Vec<Vec<u8>> {
        let script =
            format!("curl() {{ for a in \"$@\"; do printf '%s\\0' \"$a\"; done; }}\n{cmd}\n");
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut words: Vec<Vec<u8>> = out.stdout.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        assert_eq!(words.pop(), Some(Vec::new()), "NUL-terminated words");
        words
    }

    fn body(bytes: &[u8]) -> Body {
        Body {
            len: bytes.len() as u64,
            truncated: false,
            bytes: bytes.to_vec(),
        }
    }

    const HOSTILE: [&[u8]; 8] = [
        b"it's",
        b"'; rm -rf / #",
        b"$(rm -rf ~) `id` ${HOME} $HOME",
        b"line one\nline two\r\n",
        b"\\x41\\'\\\\ \" !event",
        b"tab\there \x1b[31mred\x1b[0m \x7f",
        b"\xff\xfe not utf-8 \x80",
        "caf\u{e9} \u{2603} \u{85}".as_bytes(),
    ];

    #[test]
    fn hostile_words_come_out_of_bash_unchanged() {
        for input in HOSTILE {
            let q = quote(input).unwrap();
            let cmd = format!("curl {q}");
            assert_eq!(words_of(&cmd), vec![input.to_vec()], "{q}");
            assert!(!q.contains('\n') && !q.contains('\r'), "one line: {q}");
        }
    }

    #[test]
    fn a_hostile_request_becomes_exactly_its_argv() {
        let headers = vec![
            ("Host".to_string(), "x'$(touch /tmp/pwned)".to_string()),
            ("X-Empty".to_string(), String::new()),
            ("Content-Type".to_string(), "text/plain".to_string()),
        ];
        for b in HOSTILE {
            let cmd = command(
                "http://127.0.0.1:3000",
                "POST",
                "/a'b?c=$(id)",
                &headers,
                &body(b),
            )
            .unwrap();
            let want: Vec<&[u8]> = vec![
                b"http://127.0.0.1:3000/a'b?c=$(id)",
                b"-X",
                b"POST",
                b"-H",
                b"Host: x'$(touch /tmp/pwned)",
                b"-H",
                b"X-Empty;",
                b"-H",
                b"Content-Type: text/plain",
                b"-H",
                b"User-Agent:",
                b"-H",
                b"Accept:",
                b"--data-binary",
                b,
            ];
            assert_eq!(words_of(&cmd), want, "{cmd}");
        }
    }

    #[test]
    fn targets_curl_would_change_are_kept_as_they_were() {
        let get = |target: &str| {
            let cmd = command("http://h:1", "GET", target, &[], &Body::default()).unwrap();
            let words = words_of(&cmd);
            words
                .into_iter()
                .map(|w| String::from_utf8(w).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("/a/../b")[..2], ["http://h:1/a/../b", "--path-as-is"]);
        assert_eq!(get("/x?a[]=1")[..2], ["http://h:1/x?a[]=1", "--globoff"]);
        assert_eq!(get("*")[..3], ["http://h:1/", "--request-target", "*"]);
        let head = command("http://h:1", "HEAD", "/", &[], &Body::default()).unwrap();
        assert!(head.contains("--head") && !head.contains("-X"), "{head}");
    }

    #[test]
    fn bodies_that_cannot_be_pasted_say_why() {
        let nul = command("http://h:1", "POST", "/", &[], &body(b"a\0b")).unwrap_err();
        assert!(nul.contains("NUL"), "{nul}");
        let mut cut = body(b"abc");
        cut.truncated = true;
        cut.len = 100;
        let e = command("http://h:1", "POST", "/", &[], &cut).unwrap_err();
        assert!(e.contains("cap"), "{e}");
        let typed = command("http://h:1", "POST", "/", &[], &body(b"x")).unwrap();
        assert!(
            typed.contains("-H 'Content-Type:'"),
            "no form type added: {typed}"
        );
    }
}
