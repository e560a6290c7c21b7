//! The rewrite over arbitrary messages.
//!
//! Input: the first byte picks the tenant's rules (display name, send_as, Reply-To mode,
//! signature); the rest is the message as an app would hand it over.
//!
//! Checked for every input, besides "no panic":
//! - the output parses with mail-parser and has exactly one From (counted by mail-parser and
//!   by a plain reading of the header lines), whose address is the one we send as;
//! - CRLF throughout (no bare CR or LF), ending with CRLF;
//! - every header line longer than 998 octets is one the client sent, kept verbatim;
//! - a message whose only Content-Type is multipart/signed or multipart/encrypted keeps its
//!   body byte for byte (after the bare CR/LF to CRLF that every body gets).

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use authrelay::rewrite::{ReplyToMode, Rules, rewrite};
use libfuzzer_sys::fuzz_target;

const MAILBOX: &str = "relay@contoso.com";

fn rules(variant: u8) -> Rules<'static> {
    static SEND_AS: OnceLock<Vec<String>> = OnceLock::new();
    let send_as = SEND_AS.get_or_init(|| vec!["alerts@contoso.com".to_string()]);
    Rules {
        mailbox: MAILBOX,
        from_name: match variant % 3 {
            0 => None,
            1 => Some("Contoso Alerts"),
            _ => Some("=?utf-8?q?x?= \u{202e}alerts@contoso.com"),
        },
        send_as: if variant & 4 != 0 { send_as } else { &[] },
        reply_to: (variant & 8 != 0).then_some("helpdesk@contoso.com"),
        reply_to_mode: if variant & 16 != 0 {
            ReplyToMode::IfMissing
        } else {
            ReplyToMode::Always
        },
        signature: (variant & 32 != 0).then_some("Sent by Contoso monitoring \u{2014} ünïcødé"),
        hostname: "relay.test",
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
    }
}

/// One line: (content end, next line start); content excludes LF and a CR before it.
fn line_at(input: &[u8], pos: usize) -> (usize, usize) {
    match input[pos..].iter().position(|&b| b == b'\n') {
        Some(i) => {
            let nl = pos + i;
            let end = if nl > pos && input[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            (end, nl + 1)
        }
        None => (input.len(), input.len()),
    }
}

/// RFC 5322 field name (printable ASCII but `:`), optional blanks, then `:`.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let end = line
        .iter()
        .position(|&b| !(33..=126).contains(&b) || b == b':')
        .unwrap_or(line.len());
    let rest = line[end..].iter().find(|&&b| b != b' ' && b != b'\t')?;
    (end > 0 && *rest == b':').then_some(&line[..end])
}

/// An independent reading of the header section, as the rewrite documents it: returns the
/// (name, unfolded value) of each field and where the body starts.
fn headers(input: &[u8]) -> (Vec<(Vec<u8>, Vec<u8>)>, usize) {
    let mut pos = 0;
    if input.starts_with(b"From ") {
        let (end, next) = line_at(input, 0);
        if field_name(&input[..end]).is_none() {
            pos = next;
        }
    }
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    while pos < input.len() {
        let (end, next) = line_at(input, pos);
        let line = &input[pos..end];
        if line.is_empty() {
            return (fields, next);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some(f) => f.1.extend_from_slice(line),
                None => break,
            }
        } else if let Some(name) = field_name(line) {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
            fields.push((name.to_vec(), line[colon + 1..].to_vec()));
        } else {
            break;
        }
        pos = next;
    }
    (fields, pos)
}

/// Bare LFs and bare CRs as CRLF, as every body goes out.
fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 16);
    for (i, &b) in input.iter().enumerate() {
        match b {
            b'\n' if i == 0 || input[i - 1] != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\r' if input.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&variant, input)) = data.split_first() else {
        return;
    };
    let rules = rules(variant);
    let r = rewrite(input, &rules);
    let out = &r.message;

    assert!(out.ends_with(b"\r\n"));
    for (i, &b) in out.iter().enumerate() {
        assert!(
            b != b'\n' || (i > 0 && out[i - 1] == b'\r'),
            "bare LF at {i}"
        );
        assert!(
            b != b'\r' || out.get(i + 1) == Some(&b'\n'),
            "bare CR at {i}"
        );
    }
    let sep = find(out, b"\r\n\r\n").expect("a header section and a body");
    let (out_fields, _) = headers(out);
    let froms = out_fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"from"))
        .count();
    assert_eq!(froms, 1, "From fields in\n{}", String::from_utf8_lossy(out));

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
    for line in out[..sep].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.len() <= 998 || input_lines.iter().any(|l| l.as_slice() == line),
            "we wrote a header line of {} octets",
            line.len()
        );
    }

    // The whole output parses, and mail-parser never finds two Froms at its top. (It can
    // lose the top-level fields altogether when a body nests message/rfc822 parts oddly,
    // and then calls an inner part the root: its own trouble, so the From itself is
    // checked on the header section alone, below.)
    let parse = |bytes: &[u8]| {
        mail_parser::MessageParser::default()
            .parse(bytes)
            .map(|m| {
                let root = m.root_part();
                let froms = root
                    .headers()
                    .iter()
                    .filter(|h| h.name == mail_parser::HeaderName::From)
                    .count();
                let address = m
                    .from()
                    .and_then(|f| f.first())
                    .and_then(|a| a.address())
                    .map(str::to_ascii_lowercase);
                (froms, address, root.offset_header)
            })
            .expect("mail-parser reads the output")
    };
    let (all_froms, _, root_at) = parse(out);
    assert!(
        all_froms <= 1 || root_at != 0,
        "mail-parser sees {all_froms} From fields"
    );
    let (froms, address, _) = parse(&out[..sep + 4]);
    assert!(
        froms <= 1,
        "mail-parser sees {froms} From fields in the header"
    );
    // mail-parser 0.11.9 reads some malformed values (a Date ending in `+000p`, say) on into
    // the next line, which swallows the field after them: a From right after such a field
    // is invisible to it. When it sees none, the same header lines followed by any plain
    // From must hide that one too (its quirk, not our output).
    if froms == 0 {
        let mut at = 0;
        let from_line = loop {
            let (end, next) = line_at(out, at);
            if out[at..end].len() > 5 && out[at..at + 5].eq_ignore_ascii_case(b"from:") {
                break at;
            }
            assert!(
                next < sep,
                "no From line in\n{}",
                String::from_utf8_lossy(out)
            );
            at = next;
        };
        let mut probe = out[..from_line].to_vec();
        probe.extend_from_slice(b"From: probe@example.org\r\n\r\n");
        let (seen, _, _) = parse(&probe);
        assert_eq!(
            seen,
            0,
            "mail-parser sees no From:\n{}",
            String::from_utf8_lossy(out)
        );
    } else {
        assert_eq!(
            address.as_deref(),
            Some(r.envelope_from.to_ascii_lowercase().as_str()),
            "{}",
            String::from_utf8_lossy(out)
        );
    }

    // Signed or encrypted: the body as it came.
    let (fields, body_start) = headers(input);
    let types: Vec<&Vec<u8>> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
        .map(|(_, v)| v)
        .collect();
    if let [value] = types.as_slice() {
        let value = String::from_utf8_lossy(value).to_ascii_lowercase();
        let mime = value
            .trim_start_matches([' ', '\t'])
            .split([';', ' ', '\t', '('])
            .next()
            .unwrap_or("");
        if mime == "multipart/signed" || mime == "multipart/encrypted" {
            let mut expected = crlf(&input[body_start..]);
            if !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            let body = &out[sep + 4..];
            assert!(
                body == expected.as_slice() || (expected == b"\r\n" && body.is_empty()),
                "a {mime} body changed:\n--- in\n{}\n--- out\n{}",
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(body)
            );
        }
    }
});
