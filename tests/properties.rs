//! Property tests (proptest) of the two byte-level transformations every message goes through:
//!
//! - dot-stuffing on the SMTP wire: what a client stuffs (the fake Exchange's client in
//!   `tests/support`, and our own `submit` client used by `send-test` and `sendmail`) comes
//!   back out of the inbound [`Unstuffer`] unchanged, however the bytes are split into reads,
//!   and the end of the content is found exactly where the terminator ends;
//! - the rewrite: whatever the headers look like, the output parses, has exactly one From
//!   whose address is the one we send as, uses CRLF throughout (no bare CR or LF), keeps
//!   every header line we write within 998 octets, and leaves the body of a
//!   multipart/signed message untouched.
//!
//! These are library-level (no TCP) and the case counts are modest, so the whole file runs in
//! a few seconds. The fuzz targets under `fuzz/` push the same invariants much further.

#[allow(dead_code)]
#[path = "support/smtp_client.rs"]
mod smtp_client;

use std::time::{Duration, SystemTime};

use authrelay::inbound::{Feed, Unstuffer};
use authrelay::rewrite::{ReplyToMode, Rules, rewrite};
use proptest::prelude::*;

const MAILBOX: &str = "relay@contoso.com";
const SEND_AS: &str = "alerts@contoso.com";

/// `cases` by default; `PROPTEST_CASES=N` runs N instead (for a longer hunt).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Shrinking a rewrite input can take long; a failure prints the input anyway.
        max_shrink_iters: 2000,
        // A failure prints the minimal input; no regression files next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----- dot-stuffing ---------------------------------------------------------------------------

/// Feeds `wire` to a fresh unstuffer in chunks ending at `cuts` (sorted, deduplicated offsets);
/// returns the content and the offset just past the terminator, if it was found.
fn unstuff_in_chunks(wire: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>) {
    let mut u = Unstuffer::default();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        let end = end.clamp(start, wire.len());
        let chunk = &wire[start..end];
        let fed = u.feed(chunk, &mut out);
        // A CR held back after a line-start dot can come out with the next chunk, so one
        // chunk may give one byte more than it had; the content never outgrows the input.
        assert!(out.len() <= end, "unstuffing never grows the content");
        if let Feed::End(n) = fed {
            return (out, Some(start + n));
        }
        start = end;
    }
    (out, None)
}

/// Message bytes rich in what stuffing is about: dots, CR, LF, at line starts and elsewhere.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => Just(b".".to_vec()),
        3 => Just(b"\r\n".to_vec()),
        2 => Just(b"\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"..".to_vec()),
        1 => Just(b"\r\n.\r\n".to_vec()),
        1 => Just(b"\n.\n".to_vec()),
        3 => proptest::collection::vec(any::<u8>(), 1..8),
        3 => "[a-zA-Z :]{1,12}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn cuts(max: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..max.max(1), 0..12).prop_map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

/// What `submit::dot_stuff` promises to carry: each line of the message ended with CRLF.
fn crlf_lines(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest! {
    #![proptest_config(config(512))]

    /// The fake Exchange's client (the tests' stuffing) → the inbound unstuffing: the same bytes.
    #[test]
    fn test_client_stuffing_round_trips(
        message in wire_bytes(),
        cuts in cuts(400),
        next in "(QUIT|NOOP|MAIL FROM:<a@b.c>)\r\n",
    ) {
        let mut wire = smtp_client::dot_stuff(&message);
        let end = wire.len();
        wire.extend_from_slice(next.as_bytes()); // the next command, pipelined
        let (content, found) = unstuff_in_chunks(&wire, &cuts);
        let mut expected = message.clone();
        if !message.is_empty() && !message.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n"); // dot_stuff's documented addition
        }
        prop_assert_eq!(found, Some(end), "the terminator ends the content exactly");
        prop_assert_eq!(content, expected);
    }

    /// Our own submit client (`send-test`, `sendmail`) → the inbound unstuffing.
    #[test]
    fn submit_stuffing_round_trips(message in wire_bytes(), cuts in cuts(400)) {
        let wire = authrelay::submit::dot_stuff(&message);
        let (content, found) = unstuff_in_chunks(&wire, &cuts);
        prop_assert_eq!(found, Some(wire.len()));
        prop_assert_eq!(content, crlf_lines(&message));
    }

    /// Arbitrary bytes, stuffed or not: the split into reads never changes what comes out.
    #[test]
    fn unstuffing_does_not_depend_on_chunking(wire in wire_bytes(), cuts in cuts(400)) {
        prop_assert_eq!(unstuff_in_chunks(&wire, &cuts), unstuff_in_chunks(&wire, &[]));
    }
}

// ----- rewrite --------------------------------------------------------------------------------

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alice@example.org".to_string()),
        Just(MAILBOX.to_string()),
        Just("Relay@Contoso.COM".to_string()),
        Just(SEND_AS.to_string()),
        Just("cron@app01.internal".to_string()),
        Just("a@b".to_string()),
        Just(String::new()),
        Just("no address here".to_string()),
        Just("x@y@z".to_string()),
        "[a-z]{1,10}@[a-z]{1,10}\\.(com|org)",
    ]
}

fn display_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Alice".to_string()),
        Just("\"Smith, John\"".to_string()),
        Just("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=".to_string()),
        Just("=?utf-8?b?0J/RgNC40LLQtdGC?=".to_string()),
        Just("alice@evil.com".to_string()),
        Just("\"relay@contoso.com\"".to_string()),
        Just("Ünïcødé Ñame".to_string()),
        Just("\u{202e}evil\u{202c}".to_string()),
        "[ -~]{0,30}",
        // Longer than a header line may be: the rewrite must fold what it writes.
        (100usize..400).prop_map(|n| "word ".repeat(n)),
        (1000usize..2500).prop_map(|n| "x".repeat(n)),
    ]
}

fn from_value() -> impl Strategy<Value = String> {
    prop_oneof![
        address(),
        (display_name(), address()).prop_map(|(n, a)| format!("{n} <{a}>")),
        (display_name(), address()).prop_map(|(n, a)| format!("\"{n}\" <{a}>")),
        (address(), address()).prop_map(|(a, b)| format!("{a}, {b}")),
        (address(), address()).prop_map(|(a, b)| format!("Team: {a}, {b};")),
        "[ -~]{0,60}",
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).replace(['\r', '\n'], " ")),
    ]
}

/// One header field, possibly folded, without its line ending.
fn field() -> impl Strategy<Value = String> {
    let text = "[ -~]{0,70}";
    prop_oneof![
        4 => from_value().prop_map(|v| format!("From: {v}")),
        1 => from_value().prop_map(|v| format!("from:{v}")),
        1 => from_value().prop_map(|v| format!("FROM : {v}")),
        2 => address().prop_map(|a| format!("To: <{a}>")),
        1 => address().prop_map(|a| format!("Sender: {a}")),
        1 => address().prop_map(|a| format!("Reply-To: {a}")),
        1 => address().prop_map(|a| format!("Bcc: {a}")),
        1 => from_value().prop_map(|v| format!("X-Original-From: {v}")),
        2 => text.prop_map(|t| format!("Subject: {t}")),
        1 => Just("Date: Fri, 04 Dec 2026 15:31:21 +0000".to_string()),
        1 => Just("Date:".to_string()),
        1 => Just("Message-ID: <1234@app01.internal>".to_string()),
        1 => Just("MIME-Version: 1.0".to_string()),
        1 => prop_oneof![
            Just("Content-Type: text/plain; charset=us-ascii"),
            Just("Content-Type: text/plain; charset=utf-8"),
            Just("Content-Type: text/html"),
            Just("Content-Type: text/plain; charset=iso-8859-1"),
        ]
        .prop_map(str::to_string),
        1 => prop_oneof![
            Just("Content-Transfer-Encoding: quoted-printable"),
            Just("Content-Transfer-Encoding: base64"),
            Just("Content-Transfer-Encoding: 7bit"),
        ]
        .prop_map(str::to_string),
        // Folded: a value continued on the next lines.
        1 => (text, text).prop_map(|(a, b)| format!("Subject: {a}\r\n\t{b}\r\n {a}")),
        1 => (from_value(), address()).prop_map(|(v, a)| format!("From: {v}\r\n <{a}>")),
        1 => text.prop_map(|t| format!("X-Mailer: {t}")),
    ]
}

fn body_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,80}",
        1 => Just(".".to_string()),
        1 => Just("From the start".to_string()),
        1 => Just("--boundary".to_string()),
        1 => Just(String::new()),
        1 => Just("Grüße, ünïcødé".to_string()),
        1 => Just("=E2=82=AC soft=".to_string()),
    ]
}

/// A message with CRLF or LF line ends, possibly an mbox `From ` line, and possibly no body.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(field(), 0..8),
        any::<bool>(),
        proptest::collection::vec(body_line(), 0..10),
        any::<bool>(),
    )
        .prop_map(|(mbox, lf, fields, separator, body, last_eol)| {
            let eol = if lf { "\n" } else { "\r\n" };
            let mut m = String::new();
            if mbox {
                m.push_str("From someone@example.org Fri Dec  4 15:31:21 2026");
                m.push_str(eol);
            }
            for f in fields {
                m.push_str(&f.replace("\r\n", eol));
                m.push_str(eol);
            }
            if separator {
                m.push_str(eol);
            }
            let n = body.len();
            for (i, line) in body.into_iter().enumerate() {
                m.push_str(&line);
                if i + 1 < n || last_eol {
                    m.push_str(eol);
                }
            }
            m.into_bytes()
        })
}

/// Headers (no Content-Type) and a multipart/signed body, CRLF throughout: (message, body).
fn signed_message() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        proptest::collection::vec(field(), 0..6),
        "[A-Za-z0-9'()+_,./:=?-]{1,40}",
        proptest::collection::vec(body_line(), 0..6),
        proptest::collection::vec(any::<u8>(), 0..64),
        "[ -~]{0,40}",
    )
        .prop_map(|(fields, boundary, text, sig, epilogue)| {
            let mut head = String::new();
            for f in fields {
                let lower = f.to_ascii_lowercase();
                if lower.starts_with("content-") || lower.starts_with("mime-version") {
                    continue;
                }
                head.push_str(&f);
                head.push_str("\r\n");
            }
            head.push_str(&format!(
                "MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r\n micalg=sha-256; boundary=\"{boundary}\"\r\n\r\n"
            ));
            let mut body = Vec::new();
            body.extend_from_slice(b"This is a signed message.\r\n");
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            body.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n");
            for line in text {
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
            body.extend_from_slice(
                b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\n",
            );
            let mut b64 = Vec::new();
            for chunk in sig.chunks(48) {
                use base64::Engine;
                b64.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(chunk)
                        .as_bytes(),
                );
                b64.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(&b64);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n{epilogue}\r\n").as_bytes());
            let mut message = head.into_bytes();
            message.extend_from_slice(&body);
            (message, body)
        })
}

fn rules_for(variant: u8) -> Rules<'static> {
    static SEND_AS_LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let send_as = SEND_AS_LIST.get_or_init(|| vec![SEND_AS.to_string()]);
    Rules {
        mailbox: MAILBOX,
        from_name: match variant % 3 {
            0 => None,
            1 => Some("Contoso Alerts"),
            _ => Some("alerts@contoso.com \u{202e}Evil"),
        },
        send_as: if variant & 4 != 0 { send_as } else { &[] },
        reply_to: (variant & 8 != 0).then_some("helpdesk@contoso.com"),
        reply_to_mode: if variant & 16 != 0 {
            ReplyToMode::IfMissing
        } else {
            ReplyToMode::Always
        },
        signature: (variant & 32 != 0).then_some("Sent by Contoso monitoring — ünïcødé"),
        hostname: "relay.test",
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
    }
}

/// The header section of our output: every line before the first empty one.
fn header_lines(out: &[u8]) -> Vec<&[u8]> {
    let end = find(out, b"\r\n\r\n").map_or(out.len(), |i| i + 2);
    out[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks what must hold for any rewrite output; returns the output's body.
fn check_output(input: &[u8], rules: &Rules<'_>) -> Result<Vec<u8>, TestCaseError> {
    let r = rewrite(input, rules);
    let out = &r.message;
    prop_assert!(out.ends_with(b"\r\n"), "output ends with CRLF");
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            prop_assert!(out.get(i + 1) == Some(&b'\n'), "bare CR at {i}");
        }
    }
    let sep = find(out, b"\r\n\r\n");
    prop_assert!(sep.is_some(), "output has a header section and a body");
    let body = out[sep.unwrap_or(0) + 4..].to_vec();

    // Exactly one From field, by a plain reading of the header lines.
    let heads = header_lines(out);
    let froms = heads
        .iter()
        .filter(|l| !l.starts_with(b" ") && !l.starts_with(b"\t"))
        .filter(|l| {
            let name_end = l.iter().position(|&b| b == b':').unwrap_or(0);
            l[..name_end].trim_ascii().eq_ignore_ascii_case(b"from")
        })
        .count();
    prop_assert_eq!(froms, 1, "{}", String::from_utf8_lossy(out));

    // Lines we write stay within 998 octets; a longer one can only be the client's own,
    // kept byte for byte.
    // Lines as the rewrite reads them (a CR ends a line only before an LF), with the bare CRs
    // that a kept field has made spaces; nothing else changes in a kept field.
    let segments: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    let last = segments.len() - 1;
    let input_lines: Vec<Vec<u8>> = segments
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if i < last {
                l.strip_suffix(b"\r").unwrap_or(l)
            } else {
                l
            }
        })
        .map(|l| {
            l.iter()
                .map(|&b| if b == b'\r' { b' ' } else { b })
                .collect()
        })
        .collect();
    for line in &heads {
        prop_assert!(
            line.len() <= 998 || input_lines.iter().any(|l| l.as_slice() == *line),
            "a header line of {} octets that we wrote",
            line.len()
        );
    }

    // The output parses and mail-parser never sees two Froms in it; its header section has
    // one From holding the address we send as. (The From is read from the header section
    // alone: mail-parser can lose the top-level fields when a body nests parts oddly.)
    let parse = |bytes: &[u8]| {
        mail_parser::MessageParser::default().parse(bytes).map(|m| {
            let froms = m
                .root_part()
                .headers()
                .iter()
                .filter(|h| h.name == mail_parser::HeaderName::From)
                .count();
            let address = m
                .from()
                .and_then(|f| f.first())
                .and_then(|a| a.address())
                .map(str::to_ascii_lowercase);
            (froms, address)
        })
    };
    let whole = parse(out);
    prop_assert!(whole.is_some(), "mail-parser cannot read the output");
    prop_assert!(whole.is_some_and(|(n, _)| n <= 1));
    let end = sep.unwrap_or(0) + 4;
    let (froms, from) = parse(&out[..end]).unwrap_or_default();
    prop_assert_eq!(froms, 1);
    let sent_as = r.envelope_from.to_ascii_lowercase();
    prop_assert_eq!(
        from.as_deref(),
        Some(sent_as.as_str()),
        "{}",
        String::from_utf8_lossy(out)
    );
    let allowed = r.envelope_from.eq_ignore_ascii_case(MAILBOX)
        || rules
            .send_as
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&r.envelope_from));
    prop_assert!(allowed, "sends as {}", r.envelope_from);
    Ok(body)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn rewrite_invariants_hold_for_any_headers(input in message(), variant in any::<u8>()) {
        check_output(&input, &rules_for(variant))?;
    }

    #[test]
    fn rewrite_invariants_hold_for_arbitrary_bytes(
        input in proptest::collection::vec(any::<u8>(), 0..600),
        variant in any::<u8>(),
    ) {
        check_output(&input, &rules_for(variant))?;
    }

    /// A signed body is never touched, signature configured or not.
    #[test]
    fn signed_bodies_are_kept_byte_for_byte(
        (input, body) in signed_message(),
        variant in any::<u8>(),
    ) {
        let out_body = check_output(&input, &rules_for(variant | 32))?;
        prop_assert_eq!(
            String::from_utf8_lossy(&out_body),
            String::from_utf8_lossy(&body)
        );
    }
}
