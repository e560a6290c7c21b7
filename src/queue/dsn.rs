//! Delivery status notifications (RFC 3464): the bounce, or delay warning, sent back to the
//! envelope sender when Exchange does not take a message.
//!
//! [`build`] is pure but for the random parts of the Message-ID and MIME boundary. The
//! report is `multipart/report; report-type=delivery-status` (RFC 6522) with three parts:
//! a short text for people, the `message/delivery-status` fields, and the original message's
//! header section as `text/rfc822-headers` (never its body: it may be large, and is the
//! sender's own anyway).
//!
//! Everything that comes from outside (recipient, diagnostic text, status) is cleaned so that
//! it cannot add lines or fields: control characters become spaces and long text is folded.
//! The caller must not build a DSN for a message with the null sender (`<>`); if `to` is
//! empty anyway, the report goes to `undisclosed-recipients:;`, which delivers nowhere.

use std::time::SystemTime;

use crate::rewrite::header::push_folded;
use crate::rewrite::{header_lines, message_id, rfc5322_date};

/// What happened to a recipient (RFC 3464 2.3.3; we report only these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up: the message will not be delivered to this recipient.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient the report is about.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub recipient: &'a str,
    /// An RFC 3463 status code such as `5.7.60` or `4.4.7`. Anything else is replaced by
    /// `5.0.0` (failed) or `4.0.0` (delayed).
    pub status: &'a str,
    /// The upstream reply, e.g. `550 5.7.60 SMTP; Client does not have permissions to send
    /// as this sender`, or our own words for a local reason.
    pub diagnostic: &'a str,
    pub action: Action,
}

/// Everything a report says.
#[derive(Debug, Clone)]
pub struct Dsn<'a> {
    /// Our host name (`Reporting-MTA`, Message-ID right-hand side).
    pub reporting_host: &'a str,
    /// The report's sender address, e.g. `MAILER-DAEMON@host`; shown as
    /// `Mail Delivery System`.
    pub from: &'a str,
    /// Where the report goes: the envelope sender, or a configured bounce address.
    pub to: &'a str,
    pub queue_id: &'a str,
    /// When we accepted the message.
    pub arrival: SystemTime,
    pub original_envelope_from: &'a str,
    pub failures: &'a [Failure<'a>],
    /// The original message; only its header section goes into the report.
    pub original: &'a [u8],
    pub now: SystemTime,
}

/// Builds the report: a complete message with CRLF line endings.
pub fn build(dsn: &Dsn<'_>) -> Vec<u8> {
    let host = token(dsn.reporting_host);
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    let original_headers = header_lines(dsn.original);
    let boundary = boundary_for(&original_headers);
    let any_failed = dsn.failures.iter().any(|f| f.action == Action::Failed);
    let any_delayed = dsn.failures.iter().any(|f| f.action == Action::Delayed);
    // An empty list is not a useful report, but it is still a well-formed one: say failed.
    let subject = if any_delayed && !any_failed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };

    let mut out = Vec::with_capacity(original_headers.len() + 2048);
    let from = token(address_in(dsn.from));
    let from = if from.is_empty() {
        format!("MAILER-DAEMON@{host}")
    } else {
        from
    };
    push_folded(
        &mut out,
        "From",
        &["Mail", "Delivery", "System", &format!("<{from}>")],
    );
    let to = token(address_in(dsn.to));
    if to.is_empty() {
        push_folded(&mut out, "To", &["undisclosed-recipients:;"]);
    } else {
        push_folded(&mut out, "To", &[format!("<{to}>")]);
    }
    push_folded(&mut out, "Subject", &subject.split(' ').collect::<Vec<_>>());
    push_folded(&mut out, "Date", &[rfc5322_date(dsn.now)]);
    push_folded(&mut out, "Message-ID", &[message_id(&host)]);
    push_folded(&mut out, "Auto-Submitted", &["auto-replied"]);
    push_folded(&mut out, "MIME-Version", &["1.0"]);
    push_folded(
        &mut out,
        "Content-Type",
        &[
            "multipart/report;".to_owned(),
            "report-type=delivery-status;".to_owned(),
            format!("boundary=\"{boundary}\""),
        ],
    );
    out.extend_from_slice(b"\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    // 1. For people.
    let text = human_text(dsn, &host, any_failed, any_delayed);
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Description: Notification\r\n");
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    let cte = if text.is_ascii() { "7bit" } else { "8bit" };
    out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n\r\n").as_bytes());
    out.extend_from_slice(text.as_bytes());

    // 2. For machines (RFC 3464 2.2 and 2.3).
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Description: Delivery report\r\n");
    out.extend_from_slice(b"Content-Type: message/delivery-status\r\n\r\n");
    push_folded(&mut out, "Reporting-MTA", &["dns;", &host]);
    let queue_id = token(dsn.queue_id);
    if !queue_id.is_empty() {
        push_folded(&mut out, "X-Queue-ID", &[queue_id]);
    }
    let sender = token(dsn.original_envelope_from);
    push_folded(
        &mut out,
        "X-Original-Envelope-From",
        &[address_type(&sender), &address(&sender)],
    );
    push_folded(&mut out, "Arrival-Date", &[rfc5322_date(dsn.arrival)]);
    let last_attempt = rfc5322_date(dsn.now);
    for failure in dsn.failures {
        let recipient = token(failure.recipient);
        out.extend_from_slice(b"\r\n");
        push_folded(
            &mut out,
            "Final-Recipient",
            &[address_type(&recipient), &address(&recipient)],
        );
        push_folded(&mut out, "Action", &[failure.action.as_str()]);
        push_folded(&mut out, "Status", &[status(failure)]);
        let mut diagnostic = vec!["smtp;".to_owned()];
        diagnostic.extend(words(&ascii(failure.diagnostic)));
        push_folded(&mut out, "Diagnostic-Code", &diagnostic);
        push_folded(&mut out, "Last-Attempt-Date", &[&last_attempt]);
    }

    // 3. The original header section.
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Description: Undelivered Message Headers\r\n");
    out.extend_from_slice(b"Content-Type: text/rfc822-headers\r\n");
    if !original_headers.is_ascii() {
        out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&original_headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn human_text(dsn: &Dsn<'_>, host: &str, any_failed: bool, any_delayed: bool) -> String {
    let mut paragraphs = vec![format!("This is the mail system at host {host}.")];
    if any_failed {
        paragraphs.push(
            "I'm sorry to have to inform you that your message could not be delivered to one \
             or more recipients. The headers of your message are attached below."
                .to_owned(),
        );
    }
    if any_delayed {
        paragraphs.push(
            "Your message has not been delivered yet to one or more recipients. The mail \
             system will keep trying; you do not need to send it again."
                .to_owned(),
        );
    }
    let sender = clean(dsn.original_envelope_from);
    let sender = if sender.is_empty() {
        "<>".to_owned()
    } else {
        format!("<{sender}>")
    };
    let queue_id = clean(dsn.queue_id);
    let queue_id = if queue_id.is_empty() {
        String::new()
    } else {
        format!("Queue ID {queue_id}, ")
    };
    paragraphs.push(format!(
        "{queue_id}from {sender}, received {}.",
        rfc5322_date(dsn.arrival)
    ));
    for failure in dsn.failures {
        let state = match failure.action {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        };
        paragraphs.push(format!(
            "<{}> ({state}, {}): {}",
            clean(failure.recipient),
            status(failure),
            clean(failure.diagnostic)
        ));
    }
    let mut text = String::new();
    for (i, paragraph) in paragraphs.iter().enumerate() {
        if i > 0 {
            text.push_str("\r\n");
        }
        wrap(&mut text, paragraph, 72);
    }
    text
}

/// Word-wraps `text` at `width` (a longer word stays whole, up to 998 octets), CRLF endings.
fn wrap(out: &mut String, text: &str, width: usize) {
    let mut line_len = 0;
    for word in words(text) {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out.push_str("\r\n");
            line_len = 0;
        }
        if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(&word);
        line_len += word.len();
    }
    out.push_str("\r\n");
}

/// Splits cleaned text into words of at most 900 octets (cut at character boundaries).
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for word in text.split_whitespace() {
        let mut piece = String::new();
        for c in word.chars() {
            if piece.len() + c.len_utf8() > 900 {
                words.push(std::mem::take(&mut piece));
            }
            piece.push(c);
        }
        if !piece.is_empty() {
            words.push(piece);
        }
    }
    words
}

/// Control characters become spaces; whitespace collapses. Keeps UTF-8 (for the text part).
fn clean(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`clean`], and non-ASCII characters become `?` (delivery-status fields are ASCII).
fn ascii(s: &str) -> String {
    clean(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// The address in `s`: what is inside the last `<...>` if there is one, else all of it.
fn address_in(s: &str) -> &str {
    match s.rsplit_once('<') {
        Some((_, rest)) => rest.split('>').next().unwrap_or(rest),
        None => s,
    }
}

/// An address or host name as one header token: no whitespace, controls or angle brackets.
fn token(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_whitespace() && !c.is_control() && c != '<' && c != '>')
        .collect()
}

/// RFC 3464 address type: `rfc822;` for ASCII, `utf-8;` (RFC 6533) otherwise.
fn address_type(address: &str) -> &'static str {
    if address.is_ascii() {
        "rfc822;"
    } else {
        "utf-8;"
    }
}

/// The address as written after its type: RFC 6533 `\x{HHHH}` for non-ASCII characters.
fn address(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

/// The failure's status if it is an RFC 3463 code of the right class, else a generic one.
fn status(failure: &Failure<'_>) -> String {
    let s = failure.status.trim();
    let class = match failure.action {
        Action::Failed => '5',
        Action::Delayed => '4',
    };
    let mut parts = s.split('.');
    let valid = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(c), Some(sub), Some(detail), None)
            if (c == "2" || c == "4" || c == "5")
                && (1..=3).contains(&sub.len())
                && (1..=3).contains(&detail.len())
                && sub.bytes().chain(detail.bytes()).all(|b| b.is_ascii_digit())
    );
    if valid && s.starts_with(class) {
        s.to_owned()
    } else {
        format!("{class}.0.0")
    }
}

/// A boundary that does not occur in the original headers (the only text we do not write).
fn boundary_for(original_headers: &[u8]) -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    loop {
        let candidate = format!("=_authrelay_{:032x}", rng.r#gen::<u128>());
        let needle = candidate.as_bytes();
        if !original_headers.windows(needle.len()).any(|w| w == needle) {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use mail_parser::{MessageParser, MimeHeaders, PartType};

    use super::*;

    const ORIGINAL: &[u8] = b"From: App <app@app01.internal>\r\nTo: ops@contoso.com\r\nSubject: Nightly backup\r\nMessage-ID: <orig-1@app01>\r\n\r\nTHE-SECRET-BODY line one\r\nline two\r\n";

    fn failures() -> Vec<Failure<'static>> {
        vec![Failure {
            recipient: "ops@contoso.com",
            status: "5.7.60",
            diagnostic: "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            action: Action::Failed,
        }]
    }

    fn dsn<'a>(failures: &'a [Failure<'a>]) -> Dsn<'a> {
        Dsn {
            reporting_host: "relay.example",
            from: "MAILER-DAEMON@relay.example",
            to: "app@app01.internal",
            queue_id: "0190ABCDEF",
            arrival: UNIX_EPOCH + Duration::from_secs(1_796_300_000),
            original_envelope_from: "app@app01.internal",
            failures,
            original: ORIGINAL,
            now: UNIX_EPOCH + Duration::from_secs(1_796_311_881),
        }
    }

    fn part_text(part: &mail_parser::MessagePart<'_>) -> String {
        match &part.body {
            PartType::Text(t) | PartType::Html(t) => t.to_string(),
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                String::from_utf8_lossy(b).into_owned()
            }
            other => format!("{other:?}"),
        }
    }

    fn assert_crlf(message: &[u8]) {
        for (i, &b) in message.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && message[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        for line in message.split(|&b| b == b'\n') {
            assert!(line.len() <= 999, "line too long");
        }
    }

    #[test]
    fn bounce_has_three_parts_and_the_right_headers() {
        let failures = failures();
        let out = build(&dsn(&failures));
        assert_crlf(&out);
        let message = MessageParser::default().parse(&out).expect("parses");
        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        let from = message.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Mail Delivery System"));
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay.example"));
        assert_eq!(
            message.to().unwrap().first().unwrap().address(),
            Some("app@app01.internal")
        );
        assert!(message.date().is_some());
        assert!(message.message_id().unwrap().ends_with("@relay.example"));
        assert_eq!(
            message.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        let ct = message.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

        let root = message.root_part();
        let PartType::Multipart(children) = &root.body else {
            panic!("not multipart: {:?}", root.body);
        };
        assert_eq!(children.len(), 3);
        let parts: Vec<_> = children.iter().map(|&i| message.part(i).unwrap()).collect();
        let types: Vec<String> = parts
            .iter()
            .map(|p| {
                let ct = p.content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        let human = part_text(parts[0])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(human.contains("could not be delivered"));
        assert!(human.contains("<ops@contoso.com>"));
        assert!(human.contains("Client does not have permissions"));

        let status = String::from_utf8_lossy(&out);
        assert!(status.contains("Reporting-MTA: dns; relay.example\r\n"));
        assert!(status.contains("X-Queue-ID: 0190ABCDEF\r\n"));
        assert!(status.contains("Arrival-Date: "));
        assert!(status.contains("Final-Recipient: rfc822; ops@contoso.com\r\n"));
        assert!(status.contains("Action: failed\r\nStatus: 5.7.60\r\n"));
        assert!(status.contains("Diagnostic-Code: smtp; 550 5.7.60 SMTP; Client does not have"));
        assert!(status.contains("Last-Attempt-Date: Thu, 03 Dec 2026 15:31:21 +0000\r\n"));

        let headers = part_text(parts[2]);
        assert!(headers.contains("Subject: Nightly backup"));
        assert!(headers.contains("Message-ID: <orig-1@app01>"));
        assert!(!String::from_utf8_lossy(&out).contains("THE-SECRET-BODY"));
    }

    #[test]
    fn delay_notice() {
        let failures = [Failure {
            recipient: "ops@contoso.com",
            status: "4.4.7",
            diagnostic: "421 4.3.2 Service not available",
            action: Action::Delayed,
        }];
        let out = build(&dsn(&failures));
        let message = MessageParser::default().parse(&out).unwrap();
        assert_eq!(
            message.subject(),
            Some("Delayed Mail (still being retried)")
        );
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.7\r\n"));
        assert!(text.contains("will keep trying"));
    }

    #[test]
    fn several_recipients_each_get_a_block() {
        let failures = [
            Failure {
                recipient: "a@x.com",
                status: "5.1.1",
                diagnostic: "550 5.1.1 unknown",
                action: Action::Failed,
            },
            Failure {
                recipient: "b@x.com",
                status: "4.4.7",
                diagnostic: "timeout",
                action: Action::Delayed,
            },
        ];
        let out = build(&dsn(&failures));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(
            "\r\n\r\nFinal-Recipient: rfc822; a@x.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains(
            "\r\n\r\nFinal-Recipient: rfc822; b@x.com\r\nAction: delayed\r\nStatus: 4.4.7\r\n"
        ));
        // A failure among them makes it a bounce.
        assert!(text.contains("Subject: Undelivered Mail Returned to Sender\r\n"));
    }

    #[test]
    fn diagnostic_cannot_inject_lines_and_is_folded() {
        let long = "word ".repeat(400);
        let diagnostic = format!("550 5.7.1 bad\r\nX-Injected: yes\r\n\r\n--fake\n{long}");
        let failures = [Failure {
            recipient: "ops@contoso.com\r\nBcc: evil@x.com",
            status: "5.7.1\r\nX-Evil: 1",
            diagnostic: &diagnostic,
            action: Action::Failed,
        }];
        let out = build(&dsn(&failures));
        assert_crlf(&out);
        let text = String::from_utf8_lossy(&out);
        // In the top-level header section and the delivery-status fields, every line is one of
        // ours or a continuation of one.
        let top = text.split("\r\n\r\n").next().unwrap();
        let status = text
            .split("Content-Type: message/delivery-status\r\n\r\n")
            .nth(1)
            .unwrap()
            .split("\r\n--=_authrelay_")
            .next()
            .unwrap();
        for line in top.split("\r\n").chain(status.split("\r\n")) {
            let ours = [
                "From:",
                "To:",
                "Subject:",
                "Date:",
                "Message-ID:",
                "Auto-Submitted:",
                "MIME-Version:",
                "Content-Type:",
                "Reporting-MTA:",
                "X-Queue-ID:",
                "X-Original-Envelope-From:",
                "Arrival-Date:",
                "Final-Recipient:",
                "Action:",
                "Status:",
                "Diagnostic-Code:",
                "Last-Attempt-Date:",
            ];
            assert!(
                line.is_empty()
                    || line.starts_with(' ')
                    || ours.iter().any(|o| line.starts_with(o)),
                "{line}"
            );
            assert!(line.len() <= 78, "{line}");
        }
        assert!(text.contains("Status: 5.0.0\r\n"));
        let message = MessageParser::default().parse(&out).unwrap();
        assert!(message.header("X-Injected").is_none());
        assert!(message.bcc().is_none());
    }

    #[test]
    fn status_codes_are_checked() {
        let f = |status, action| Failure {
            recipient: "r@x.com",
            status,
            diagnostic: "",
            action,
        };
        assert_eq!(status(&f("5.7.60", Action::Failed)), "5.7.60");
        assert_eq!(status(&f("4.4.7", Action::Delayed)), "4.4.7");
        assert_eq!(status(&f("4.4.7", Action::Failed)), "5.0.0");
        assert_eq!(status(&f("5.7.1234", Action::Failed)), "5.0.0");
        assert_eq!(status(&f("550", Action::Failed)), "5.0.0");
        assert_eq!(status(&f("", Action::Delayed)), "4.0.0");
    }

    #[test]
    fn odd_originals_and_addresses() {
        // No header section at all: nothing to attach, no body either.
        let failures = failures();
        let mut d = dsn(&failures);
        d.original = b"just a body line\r\nFrom: not a header here\r\n";
        let out = build(&d);
        assert!(!String::from_utf8_lossy(&out).contains("just a body"));
        MessageParser::default().parse(&out).unwrap();

        // 8-bit headers are declared 8bit; LF-only input comes out CRLF.
        d.original = b"Subject: Gr\xc3\xbc\xc3\x9fe\nFrom: a@b.c\n\nbody\n";
        let out = build(&d);
        assert_crlf(&out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(
            "Content-Transfer-Encoding: 8bit\r\n\r\nSubject: Gr\u{fc}\u{df}e\r\nFrom: a@b.c\r\n"
        ));

        // Non-ASCII recipients use the RFC 6533 utf-8 type; empty `to` goes nowhere.
        let failures = [Failure {
            recipient: "j\u{f6}rg@b\u{fc}ro.de",
            status: "5.1.1",
            diagnostic: "550 5.1.1 unknown \u{fc}ser",
            action: Action::Failed,
        }];
        let mut d = dsn(&failures);
        d.to = "";
        let out = build(&d);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("Final-Recipient: utf-8; j\\x{F6}rg@b\\x{FC}ro.de\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 unknown ?ser\r\n"));
        assert!(text.contains("To: undisclosed-recipients:;\r\n"));
        MessageParser::default().parse(&out).unwrap();
    }

    #[test]
    fn from_and_to_may_come_with_display_names() {
        let failures = failures();
        let mut d = dsn(&failures);
        d.from = "Postmaster <postmaster@relay.example>";
        d.to = "App Owner <owner@x.com>";
        d.queue_id = "";
        let out = build(&d);
        let message = MessageParser::default().parse(&out).unwrap();
        let from = message.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("postmaster@relay.example"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        assert_eq!(
            message.to().unwrap().first().unwrap().address(),
            Some("owner@x.com")
        );
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("X-Queue-ID"));
        assert!(!text.contains("Queue ID"));
    }

    #[test]
    fn original_lines_longer_than_998_are_folded() {
        let mut original = b"Subject: ".to_vec();
        original.extend(std::iter::repeat_n(b'x', 2500));
        original.extend_from_slice(b"\r\n\r\nbody\r\n");
        let failures = failures();
        let mut d = dsn(&failures);
        d.original = &original;
        assert_crlf(&build(&d));
    }
}
