//! Replay: a recorded request sent to the forward's local service again, through a
//! recorder, and its answer read to the end.
//!
//! What is sent is what was recorded, byte for byte: the raw request head and the
//! kept body (a chunked body goes again as one chunk, as the page shows it), plus only
//! what the user edited. Nothing is added: the answer's end is found by its own
//! framing (Content-Length, chunked, or the close), as the recorder follows it.

use super::recorder::Recorder;
use super::store::Exchange;
use super::tap::Tap;
use crate::config::ForwardSpec;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of a replayed answer read at a time (they are kept only up to the body cap).
const REPLAY_READ: usize = 64 * 1024;
/// Largest edited body accepted for a replay.
pub const MAX_REPLAY_BODY: usize = 1 << 20;

/// An edited request; what is left out is taken from the original as it was.
#[derive(Deserialize, Default, Debug)]
pub struct Edit {
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: Option<Vec<(String, String)>>,
    pub body: Option<String>,
}

/// Headers that say how a body is framed: set from the body sent when it or the
/// headers were edited.
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// The request bytes to send again.
pub fn build_request(orig: &Exchange, mut edit: Edit) -> Result<Vec<u8>, String> {
    // A field given as it was is no edit.
    let same = |e: &Option<String>, o: &[u8]| e.as_ref().is_some_and(|e| e.as_bytes() == o);
    if same(&edit.method, orig.method.as_bytes()) {
        edit.method = None;
    }
    if same(&edit.url, orig.url.as_bytes()) {
        edit.url = None;
    }
    if !orig.request_body.truncated && same(&edit.body, &orig.request_body.bytes) {
        edit.body = None;
    }
    let body_edited = edit.body.is_some();
    let body = match edit.body {
        Some(b) if b.len() > MAX_REPLAY_BODY => {
            return Err(format!("an edited body is at most {MAX_REPLAY_BODY} bytes"))
        }
        Some(b) => b.into_bytes(),
        None if orig.request_body.truncated => {
            return Err("the request body was cut at the inspector's cap: edit it to replay".into())
        }
        None => orig.request_body.bytes.clone(),
    };
    let (line, rest) = split_head(&orig.request_head)
        .ok_or("the recorded request head is not complete: it cannot be sent again")?;
    let bad = |s: &str| s.bytes().any(|b| b.is_ascii_control() || b == b' ');
    let mut out = match (&edit.method, &edit.url) {
        (None, None) => line.to_vec(),
        (m, u) => {
            let method = m.as_deref().unwrap_or(&orig.method);
            let url = u.as_deref().unwrap_or(&orig.url);
            if bad(method) || bad(url) || method.is_empty() || url.is_empty() {
                return Err("method and URL must be single words".into());
            }
            let version = line
                .rsplit(|&b| b == b' ')
                .next()
                .filter(|v| v.starts_with(b"HTTP/"))
                .unwrap_or(b"HTTP/1.1\r\n");
            [format!("{method} {url} ").as_bytes(), version].concat()
        }
    };
    let chunked = orig
        .request_headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    match edit.headers {
        None if !body_edited => {
            out.extend_from_slice(rest);
            if chunked {
                out.extend_from_slice(&one_chunk(&body));
            } else {
                out.extend_from_slice(&body);
            }
            return Ok(out);
        }
        None => {
            // Only the body changed: the original header lines but the framing ones.
            for line in header_lines(rest) {
                if !is_framing(line) {
                    out.extend_from_slice(line);
                }
            }
        }
        Some(headers) => {
            for (name, value) in &headers {
                if name.is_empty() || bad(name) || value.bytes().any(|b| b == b'\r' || b == b'\n') {
                    return Err("header names must be words and values single lines".into());
                }
                if !FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f)) {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
            }
        }
    }
    let had_length = orig
        .request_headers
        .iter()
        .any(|(n, _)| FRAMING.iter().any(|f| n.eq_ignore_ascii_case(f)));
    if !body.is_empty() || had_length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Ok(out)
}

/// The request line (with its line end) and the header lines after it, blank line
/// included.
fn split_head(head: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = head.iter().position(|&b| b == b'\n')? + 1;
    head.ends_with(b"\n").then(|| head.split_at(end))
}

/// The header lines of `rest` (each with its line end), without the blank line.
fn header_lines(rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    rest.split_inclusive(|&b| b == b'\n')
        .take_while(|l| *l != b"\r\n" && *l != b"\n")
}

fn is_framing(line: &[u8]) -> bool {
    let name = line.split(|&b| b == b':').next().unwrap_or_default();
    let name = String::from_utf8_lossy(name);
    FRAMING.iter().any(|f| name.trim().eq_ignore_ascii_case(f))
}

/// `body` as a chunked body of one chunk.
fn one_chunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    if !body.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Sends `request` to the forward's local service through a recording tap and reads
/// the answer to its end; returns the new exchange's id, if the answer was HTTP.
pub async fn send(
    route: &ForwardSpec,
    recorder: Recorder,
    request: &[u8],
) -> Result<Option<u64>, String> {
    let sock = crate::transport::tcp::dial(&route.local_host, route.local_port)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", route.local()))?;
    let mut tap = Tap::new(sock, recorder);
    tap.write_all(request)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = vec![0u8; REPLAY_READ];
    loop {
        match tap.read(&mut buf).await {
            Ok(0) => break,
            Ok(_) if tap.recorder().answered() > 0 => break,
            Ok(_) => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    Ok(tap.recorder().first())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::inspect::store::{Source, Store};

    fn recorded(request: &[u8]) -> Exchange {
        let store = Store::new(4, 1024);
        let mut r = Recorder::new(store.clone(), Source::default());
        r.to_service(request);
        store.all().pop().expect("one exchange")
    }

    #[test]
    fn unedited_requests_go_again_byte_for_byte() {
        let raw =
            b"POST /a?b=1 HTTP/1.1\r\nhost:x\r\nX-Odd:  spaced \r\nContent-Length: 5\r\n\r\nhello";
        let e = recorded(raw);
        assert_eq!(build_request(&e, Edit::default()).unwrap(), raw);
        let old = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(build_request(&recorded(old), Edit::default()).unwrap(), old);
        let chunked =
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n";
        let again = build_request(&recorded(chunked), Edit::default()).unwrap();
        assert_eq!(
            again,
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]
        /// Whatever a visitor sends, recording it, listing it, quoting it as curl and
        /// replaying it never panics; a request framed by Content-Length goes again as
        /// it came.
        #[test]
        fn any_request_replays_as_it_came_and_nothing_panics(
            method in "[A-Z]{1,8}",
            target in "/[!-~]{0,40}",
            headers in proptest::collection::vec(
                ("[A-Za-z0-9-]{1,12}", proptest::collection::vec(
                    proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, proptest::strategy::Just(b'\t')],
                    0..30,
                )),
                0..6,
            ),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut raw = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
            for (name, value) in &headers {
                if name.eq_ignore_ascii_case("content-length")
                    || name.eq_ignore_ascii_case("transfer-encoding")
                {
                    continue;
                }
                raw.extend_from_slice(name.as_bytes());
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(value);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            raw.extend_from_slice(&body);
            let store = Store::new(4, 1024);
            let mut r = Recorder::new(store.clone(), Source::default());
            r.to_service(&raw);
            r.to_service(&junk);
            r.from_service(&junk);
            let filter = crate::client::inspect::filter::Filter::new(
                crate::client::inspect::filter::Params {
                    q: Some(String::from_utf8_lossy(&junk[..junk.len().min(8)]).into_owned()),
                    ..Default::default()
                },
            );
            let mut scratch = Vec::new();
            if let Ok(f) = filter {
                store.select(|e| f.keeps(e, &mut scratch));
            }
            for e in store.all() {
                let _ = build_request(&e, Edit::default());
                let _ = crate::client::inspect::curl::command(
                    "http://h:1", &e.method, &e.url, &e.request_headers, &e.request_body,
                );
            }
            // httparse may refuse some generated heads (it is stricter than the
            // generator); those it takes go again byte for byte.
            if let Some(first) = store.all().into_iter().next() {
                if first.request_bytes == raw.len() as u64 {
                    proptest::prop_assert_eq!(build_request(&first, Edit::default()).unwrap(), raw);
                }
            }
        }
    }

    #[test]
    fn edits_change_only_what_was_edited() {
        let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello";
        let e = recorded(raw);
        let url = Edit {
            url: Some("/b".into()),
            ..Edit::default()
        };
        assert_eq!(
            build_request(&e, url).unwrap(),
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
        );
        let body = Edit {
            body: Some("hi".into()),
            ..Edit::default()
        };
        assert_eq!(
            build_request(&e, body).unwrap(),
            b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi"
        );
        let bad = Edit {
            method: Some("GET /x HTTP/1.1\r\nEvil: 1\r\n\r\n".into()),
            ..Edit::default()
        };
        assert!(build_request(&e, bad).is_err());
        let bad = Edit {
            headers: Some(vec![("X-A".into(), "1\r\nEvil: 1".into())]),
            ..Edit::default()
        };
        assert!(build_request(&e, bad).is_err());
    }
}
