use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_parser::{HeaderName, MessageParser};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;

const MAILBOX: &str = "relay@contoso.com";

/// Thu, 03 Dec 2026 15:31:21 +0000
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_311_881)
}

struct Config {
    send_as: Vec<String>,
    from_name: Option<&'static str>,
    reply_to: Option<&'static str>,
    reply_to_mode: ReplyToMode,
    signature: Option<&'static str>,
}

impl Config {
    fn new() -> Self {
        Config {
            send_as: vec!["Alerts@Contoso.com".to_owned()],
            from_name: Some("Contoso Alerts"),
            reply_to: None,
            reply_to_mode: ReplyToMode::Always,
            signature: None,
        }
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            mailbox: MAILBOX,
            from_name: self.from_name,
            send_as: &self.send_as,
            reply_to: self.reply_to,
            reply_to_mode: self.reply_to_mode,
            signature: self.signature,
            hostname: "relay.example",
            now: now(),
        }
    }

    fn run(&self, raw: &[u8]) -> Rewritten {
        let out = rewrite(raw, &self.rules());
        check_output(&out.message);
        out
    }

    fn signature(sig: &'static str) -> Self {
        Config {
            signature: Some(sig),
            ..Config::new()
        }
    }
}

fn text(out: &Rewritten) -> String {
    String::from_utf8_lossy(&out.message).into_owned()
}

/// The header section of the output, as text.
fn head(out: &Rewritten) -> String {
    let t = text(out);
    t.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// The body of the output (after the first empty line), as bytes.
fn body(out: &Rewritten) -> &[u8] {
    let m = &out.message;
    let at = m
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an empty line");
    &m[at + 4..]
}

/// Unfolded raw values of the top-level header `name`, as mail-parser sees them.
fn values(out: &Rewritten, name: &str) -> Vec<String> {
    let message = MessageParser::default()
        .parse(&out.message)
        .expect("parses");
    message
        .headers_raw()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.replace("\r\n", "").replace('\n', "").trim().to_owned())
        .collect()
}

/// What every output must be: parsed by mail-parser with exactly one From, CRLF only, no
/// header line we could have written longer than 998 octets, ending with CRLF.
fn check_output(message: &[u8]) {
    let parsed = MessageParser::default()
        .parse(message)
        .expect("mail-parser parses the output");
    let froms = parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .count();
    assert_eq!(
        froms,
        1,
        "exactly one From in:\n{}",
        String::from_utf8_lossy(message)
    );
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && message[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    assert!(message.ends_with(b"\r\n"));
}

fn from_line(out: &Rewritten) -> String {
    values(out, "From").remove(0)
}

// ---- From ----------------------------------------------------------------------------

#[test]
fn from_is_rewritten_to_from_name_and_mailbox() {
    let out = Config::new()
        .run(b"From: App <app@app01.internal>\r\nTo: x@y.com\r\nSubject: hi\r\n\r\nHello\r\n");
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert_eq!(
        values(&out, "X-Original-From"),
        ["App <app@app01.internal>"]
    );
    assert_eq!(out.envelope_from, MAILBOX);
    assert_eq!(out.original_from.as_deref(), Some("app@app01.internal"));
    // Position: the new From takes the old one's place, other fields stay in order.
    assert!(head(&out).starts_with("From: Contoso Alerts <relay@contoso.com>\r\nX-Original-From: App <app@app01.internal>\r\nTo: x@y.com\r\nSubject: hi\r\n"));
    assert!(text(&out).ends_with("\r\n\r\nHello\r\n"));
}

#[test]
fn original_display_name_is_kept_without_from_name() {
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    let out = cfg.run(b"From: Backup Job <backup@app01.internal>\r\n\r\nx\r\n");
    assert_eq!(from_line(&out), "Backup Job <relay@contoso.com>");
    // No display name at all: just the address.
    let out = cfg.run(b"From: backup@app01.internal\r\n\r\nx\r\n");
    assert_eq!(from_line(&out), "relay@contoso.com");
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some(MAILBOX));
    assert_eq!(from.name(), None);
}

#[test]
fn display_name_with_specials_is_quoted() {
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    let out = cfg.run(b"From: \"Smith, John \\\"JJ\\\"\" <j@x.com>\r\n\r\nx\r\n");
    assert_eq!(
        from_line(&out),
        r#""Smith, John \"JJ\"" <relay@contoso.com>"#
    );
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some(r#"Smith, John "JJ""#));
    assert_eq!(from.address(), Some(MAILBOX));
}

#[test]
fn folded_from_is_read_and_rewritten() {
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    let out = cfg.run(
        b"Subject: s\r\nFrom: Folded\r\n   Name\r\n <folded@x.com>\r\nTo: t@x.com\r\n\r\nbody\r\n",
    );
    assert_eq!(from_line(&out), "Folded Name <relay@contoso.com>");
    assert_eq!(out.original_from.as_deref(), Some("folded@x.com"));
    // X-Original-From keeps the folding.
    assert!(
        head(&out).contains("X-Original-From: Folded\r\n   Name\r\n <folded@x.com>\r\nTo: t@x.com")
    );
}

#[test]
fn encoded_word_from_keeps_its_name_encoded() {
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    let out = cfg.run(b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <jm@x.de>\r\n\r\nx\r\n");
    let h = head(&out);
    assert!(h.contains("=?UTF-8?B?"), "{h}");
    assert!(h.is_ascii());
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("J\u{f6}rg M\u{fc}ller"));
    assert_eq!(from.address(), Some(MAILBOX));
    // X-Original-From is the original value, as it was.
    assert_eq!(
        values(&out, "X-Original-From"),
        ["=?ISO-8859-1?Q?J=F6rg_M=FCller?= <jm@x.de>"]
    );
}

#[test]
fn configured_non_ascii_from_name_is_encoded() {
    let cfg = Config {
        from_name: Some("\u{dc}berwachung \u{2014} Zentrale"),
        ..Config::new()
    };
    let out = cfg.run(b"From: a@b.c\r\n\r\nx\r\n");
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("\u{dc}berwachung \u{2014} Zentrale"));
    assert!(head(&out).is_ascii());
}

#[test]
fn long_non_ascii_name_is_folded_into_several_encoded_words() {
    let name = "\u{e9}t\u{e9} ".repeat(40);
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    let raw = format!("From: \"{name}\" <a@b.c>\r\n\r\nx\r\n");
    let out = cfg.run(raw.as_bytes());
    let h = head(&out);
    let from_field = h.split("X-Original-From:").next().unwrap();
    assert!(from_field.lines().count() > 2, "{from_field}");
    for line in from_field.split("\r\n") {
        assert!(line.len() <= 78, "{line}");
    }
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    let got = parsed
        .from()
        .unwrap()
        .first()
        .unwrap()
        .name()
        .unwrap()
        .to_owned();
    // Clipped to 128 characters, otherwise the same text.
    let expected: String = name.trim().chars().take(128).collect();
    assert_eq!(got, expected.trim_end());
}

#[test]
fn display_name_never_carries_an_address() {
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    let cases: [(&[u8], Option<&str>); 7] = [
        (b"From: \"ceo@contoso.com\" <evil@evil.com>", None),
        (b"From: ceo@contoso.com <evil@evil.com>", None),
        (
            b"From: \"The CEO (ceo@contoso.com)\" <evil@evil.com>",
            Some("The CEO"),
        ),
        (
            b"From: \"Billing <billing@contoso.com>\" <evil@evil.com>",
            Some("Billing"),
        ),
        (
            "From: \"ceo\u{ff20}contoso.com Bob\" <evil@evil.com>".as_bytes(),
            Some("Bob"),
        ),
        (
            b"From: =?utf-8?b?Y2VvQGNvbnRvc28uY29t?= <evil@evil.com>",
            None,
        ),
        (
            "From: \"Bob\u{202e}moc.live\" <evil@evil.com>".as_bytes(),
            Some("Bob moc.live"),
        ),
    ];
    for (from, want) in cases {
        let mut raw = from.to_vec();
        raw.extend_from_slice(b"\r\n\r\nbody\r\n");
        let out = cfg.run(&raw);
        let parsed = MessageParser::default().parse(&out.message).unwrap();
        let addr = parsed.from().unwrap().first().unwrap();
        assert_eq!(addr.address(), Some(MAILBOX));
        assert_eq!(addr.name(), want, "{}", String::from_utf8_lossy(from));
        let from_value = from_line(&out);
        assert_eq!(from_value.matches('@').count(), 1, "{from_value}");
    }
    // The configured name gets the same treatment.
    let cfg = Config {
        from_name: Some("alerts@contoso.com"),
        ..Config::new()
    };
    let out = cfg.run(b"From: a@b.c\r\n\r\nx\r\n");
    assert_eq!(from_line(&out), MAILBOX);
}

#[test]
fn send_as_and_mailbox_are_kept_case_insensitively() {
    let cfg = Config::new();
    let raw = b"From: \"Alerts\" <ALERTS@contoso.COM>\r\nSender: someone@else.com\r\n\r\nx\r\n";
    let out = cfg.run(raw);
    assert_eq!(from_line(&out), "\"Alerts\" <ALERTS@contoso.COM>");
    assert_eq!(out.envelope_from, "Alerts@Contoso.com");
    assert_eq!(out.original_from.as_deref(), Some("ALERTS@contoso.COM"));
    assert!(values(&out, "X-Original-From").is_empty());
    assert!(values(&out, "Sender").is_empty());

    let out = cfg.run(b"From: Relay@Contoso.com\r\n\r\nx\r\n");
    assert_eq!(from_line(&out), "Relay@Contoso.com");
    assert_eq!(out.envelope_from, MAILBOX);
}

#[test]
fn a_client_x_original_from_is_not_trusted() {
    let out =
        Config::new().run(b"X-Original-From: ceo@contoso.com\r\nFrom: app@x.com\r\n\r\nx\r\n");
    assert_eq!(values(&out, "X-Original-From"), ["app@x.com"]);
    // ... but left alone when the From is kept (nothing of ours to confuse it with).
    let out =
        Config::new().run(b"X-Original-From: whatever\r\nFrom: alerts@contoso.com\r\n\r\nx\r\n");
    assert_eq!(values(&out, "X-Original-From"), ["whatever"]);
}

#[test]
fn missing_from_is_added() {
    let out = Config::new().run(b"To: a@b.c\r\nSubject: no from\r\n\r\nbody\r\n");
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert_eq!(out.original_from, None);
    assert_eq!(out.envelope_from, MAILBOX);
    assert!(values(&out, "X-Original-From").is_empty());
    let cfg = Config {
        from_name: None,
        ..Config::new()
    };
    assert_eq!(from_line(&cfg.run(b"To: a@b.c\r\n\r\nx")), MAILBOX);
}

#[test]
fn unparseable_or_empty_from_is_replaced() {
    for raw in [
        &b"From: <<<>>>;;\r\n\r\nx\r\n"[..],
        b"From:\r\n\r\nx\r\n",
        b"From: undisclosed-senders:;\r\n\r\nx\r\n",
        b"From: alerts@contoso.com alerts@contoso.com\r\n\r\nx\r\n",
    ] {
        let out = Config::new().run(raw);
        assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
        assert_eq!(out.envelope_from, MAILBOX);
    }
}

#[test]
fn two_from_fields_become_one() {
    let raw = b"From: alerts@contoso.com\r\nTo: t@x.com\r\nFROM: Evil <evil@x.com>\r\n\r\nbody\r\n";
    let out = Config::new().run(raw);
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert_eq!(
        values(&out, "X-Original-From"),
        ["alerts@contoso.com", "Evil <evil@x.com>"]
    );
    assert_eq!(out.envelope_from, MAILBOX);
    assert_eq!(out.original_from.as_deref(), Some("alerts@contoso.com"));
}

#[test]
fn from_with_two_mailboxes_is_rewritten_even_if_one_is_allowed() {
    let out = Config::new().run(b"From: alerts@contoso.com, evil@x.com\r\n\r\nx\r\n");
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert_eq!(
        values(&out, "X-Original-From"),
        ["alerts@contoso.com, evil@x.com"]
    );
}

#[test]
fn long_original_from_is_folded_within_998() {
    let long_name = "n".repeat(1500);
    let raw = format!("From: \"{long_name} x {long_name}\" <a@b.c>\r\n\r\nx\r\n");
    let out = Config::new().run(raw.as_bytes());
    for line in head(&out).split("\r\n") {
        assert!(line.len() <= 998, "{}", line.len());
    }
    let original = values(&out, "X-Original-From").remove(0);
    assert!(original.contains("<a@b.c>"));
    // Only folding whitespace was added: removing whitespace gives the same text.
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    assert_eq!(
        squash(&original),
        squash(&format!("\"{long_name} x {long_name}\" <a@b.c>"))
    );
}

#[test]
fn control_characters_in_original_from_do_not_reach_the_header() {
    let out = Config::new().run(b"From: Bad\x00Name\rBcc: x@y.z <a@b.c>\r\n\r\nx\r\n");
    let h = head(&out);
    assert!(!h.contains('\0'));
    assert!(!h.contains("\rB"));
    assert!(values(&out, "Bcc").is_empty());
}

// ---- Sender, Bcc, Reply-To, Date, Message-ID ------------------------------------------

#[test]
fn every_sender_and_bcc_is_removed() {
    let raw = b"Sender: a@b.c\r\nFrom: x@y.z\r\nBcc: hidden@x.com,\r\n  other@x.com\r\nsender:\r\n two@b.c\r\nTo: t@x.com\r\nBCC: again@x.com\r\nResent-Bcc: resent@x.com\r\n\r\nbody\r\n";
    let out = Config::new().run(raw);
    let h = head(&out);
    assert!(values(&out, "Sender").is_empty(), "{h}");
    assert!(values(&out, "Bcc").is_empty(), "{h}");
    assert!(!h.contains("hidden") && !h.contains("other@x.com") && !h.contains("two@b.c"));
    assert_eq!(values(&out, "To"), ["t@x.com"]);
    assert!(values(&out, "Resent-Bcc").is_empty());
    assert!(!h.contains("resent@x.com"));
}

#[test]
fn date_and_message_id_are_added_only_when_missing() {
    let out = Config::new().run(b"From: a@b.c\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Date"), ["Thu, 03 Dec 2026 15:31:21 +0000"]);
    let ids = values(&out, "Message-ID");
    assert_eq!(ids.len(), 1);
    let id = &ids[0];
    assert!(
        id.starts_with('<') && id.ends_with("@relay.example>"),
        "{id}"
    );
    assert_eq!(id.len(), 1 + 32 + 1 + "relay.example".len() + 1);
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    assert!(parsed.date().is_some());
    assert!(parsed.message_id().is_some());

    let raw = b"From: a@b.c\r\nDate: Mon, 1 Jan 2024 00:00:00 +0100\r\nmessage-id: <mine@app>\r\n\r\nx\r\n";
    let out = Config::new().run(raw);
    assert_eq!(values(&out, "Date"), ["Mon, 1 Jan 2024 00:00:00 +0100"]);
    assert_eq!(values(&out, "Message-ID"), ["<mine@app>"]);

    // Blank ones count as missing and are replaced.
    let out = Config::new().run(b"From: a@b.c\r\nDate: \r\nMessage-ID:\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Date"), ["Thu, 03 Dec 2026 15:31:21 +0000"]);
    assert_eq!(values(&out, "Message-ID").len(), 1);
}

#[test]
fn message_ids_are_unique_and_hostnames_cleaned() {
    assert_ne!(message_id("h"), message_id("h"));
    assert!(message_id("bad host\r\n<>").ends_with("@badhost>"));
    assert!(message_id("").ends_with("@localhost>"));
}

#[test]
fn dates_are_rfc5322() {
    assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_eq!(rfc5322_date(now()), "Thu, 03 Dec 2026 15:31:21 +0000");
    assert_eq!(
        rfc5322_date(UNIX_EPOCH - Duration::from_secs(86_400)),
        "Wed, 31 Dec 1969 00:00:00 +0000"
    );
}

#[test]
fn reply_to_always_replaces() {
    let cfg = Config {
        reply_to: Some("helpdesk@contoso.com"),
        reply_to_mode: ReplyToMode::Always,
        ..Config::new()
    };
    let out = cfg.run(b"From: a@b.c\r\nReply-To: app@x.com\r\nreply-to: two@x.com\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Reply-To"), ["helpdesk@contoso.com"]);
    let out = cfg.run(b"From: a@b.c\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Reply-To"), ["helpdesk@contoso.com"]);
}

#[test]
fn reply_to_if_missing_keeps_an_existing_one() {
    let cfg = Config {
        reply_to: Some("helpdesk@contoso.com"),
        reply_to_mode: ReplyToMode::IfMissing,
        ..Config::new()
    };
    let out = cfg.run(b"From: a@b.c\r\nReply-To: app@x.com\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Reply-To"), ["app@x.com"]);
    let out = cfg.run(b"From: a@b.c\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Reply-To"), ["helpdesk@contoso.com"]);
}

#[test]
fn reply_to_untouched_when_not_configured() {
    let out = Config::new().run(b"From: a@b.c\r\nReply-To: app@x.com\r\n\r\nx\r\n");
    assert_eq!(values(&out, "Reply-To"), ["app@x.com"]);
    let out = Config::new().run(b"From: a@b.c\r\n\r\nx\r\n");
    assert!(values(&out, "Reply-To").is_empty());
}

#[test]
fn reply_to_mode_deserializes_snake_case_and_defaults_to_always() {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default)]
        mode: ReplyToMode,
    }
    let t: T = serde_json::from_str(r#"{"mode":"if_missing"}"#).unwrap();
    assert_eq!(t.mode, ReplyToMode::IfMissing);
    let t: T = serde_json::from_str(r#"{"mode":"always"}"#).unwrap();
    assert_eq!(t.mode, ReplyToMode::Always);
    let t: T = serde_json::from_str("{}").unwrap();
    assert_eq!(t.mode, ReplyToMode::Always);
}

// ---- Header section edge cases -------------------------------------------------------

#[test]
fn lf_only_input_becomes_crlf() {
    let raw = b"From: a@b.c\nSubject: lf\n folded\n\nline one\nline two\n";
    let out = Config::signature("sig").run(raw);
    let t = text(&out);
    assert!(t.contains("Subject: lf\r\n folded\r\n"));
    assert!(
        t.ends_with("\r\n\r\nline one\r\nline two\r\n\r\n-- \r\nsig\r\n"),
        "{t:?}"
    );
}

#[test]
fn empty_input_gives_a_minimal_message() {
    let out = Config::new().run(b"");
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert_eq!(values(&out, "Date").len(), 1);
    assert_eq!(values(&out, "Message-ID").len(), 1);
    assert!(text(&out).ends_with("\r\n\r\n"));
}

#[test]
fn input_without_headers_is_all_body() {
    let raw = b"Hello, this is not a header\r\nFrom: fake@x.com\r\n";
    let out = Config::new().run(raw);
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert_eq!(body(&out), raw);
    // A first line that starts with whitespace is body too.
    let out = Config::new().run(b" indented\r\nFrom: fake@x.com\r\n\r\nx");
    assert_eq!(body(&out), b" indented\r\nFrom: fake@x.com\r\n\r\nx\r\n");
}

#[test]
fn input_that_is_all_headers_gets_an_empty_body() {
    let out = Config::new().run(b"From: a@b.c\r\nSubject: only headers");
    assert!(text(&out).contains("Subject: only headers\r\n"));
    assert!(body(&out).is_empty());
}

#[test]
fn a_non_header_line_ends_the_header_section() {
    let raw = b"From: a@b.c\r\nSubject: x\r\nThis line is the body\r\nFrom: b@c.d\r\n";
    let out = Config::new().run(raw);
    assert_eq!(values(&out, "X-Original-From"), ["a@b.c"]);
    assert_eq!(body(&out), b"This line is the body\r\nFrom: b@c.d\r\n");
}

#[test]
fn mbox_from_line_is_dropped() {
    let raw =
        b"From app@x.com Thu Dec  3 15:31:21 2026\r\nFrom: app@x.com\r\nSubject: s\r\n\r\nbody\r\n";
    let out = Config::new().run(raw);
    assert!(!text(&out).contains("From app@x.com Thu"));
    assert_eq!(values(&out, "Subject"), ["s"]);
    assert_eq!(body(&out), b"body\r\n");
}

#[test]
fn eight_bit_headers_and_long_lines_are_left_alone() {
    let long = "x".repeat(1200);
    let mut raw = b"From: a@b.c\r\nSubject: Gr\xfc\xdfe \xe2\x82\xac\r\nX-Long: ".to_vec();
    raw.extend_from_slice(long.as_bytes());
    raw.extend_from_slice(b"\r\n\r\nbody\r\n");
    let out = Config::new().run(&raw);
    let m = &out.message;
    let subject = b"Subject: Gr\xfc\xdfe \xe2\x82\xac\r\n";
    assert!(m.windows(subject.len()).any(|w| w == subject));
    assert!(text(&out).contains(&format!("X-Long: {long}\r\n")));
}

#[test]
fn header_names_are_matched_without_case_and_with_obsolete_space() {
    let out = Config::new().run(b"FROM : a@b.c\r\nsEnDeR: s@b.c\r\nbcc : x@y.z\r\n\r\nx\r\n");
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert!(!head(&out).to_ascii_lowercase().contains("sender"));
    assert!(!head(&out).to_ascii_lowercase().contains("bcc"));
}

#[test]
fn bare_cr_in_a_kept_header_cannot_start_a_field() {
    let out = Config::new().run(b"X-App: a\rFrom: evil@x.com\r\nFrom: app@x.com\r\n\r\nbody\r\n");
    assert!(text(&out).contains("X-App: a From: evil@x.com\r\n"));
    assert!(
        !out.message
            .windows(2)
            .any(|w| w[0] == b'\r' && w[1] != b'\n')
    );
}

#[test]
fn whitespace_only_continuation_lines_are_dropped() {
    let raw = b"Subject: a\r\n \r\n b\r\nFrom: x@y.z\r\n\r\nbody\r\n";
    let out = Config::new().run(raw);
    assert!(text(&out).contains("Subject: a\r\n b\r\n"));
    assert_eq!(body(&out), b"body\r\n");
}

// ---- Signature -----------------------------------------------------------------------

#[test]
fn signature_in_a_message_without_content_type() {
    let out =
        Config::signature("Sent by Contoso monitoring").run(b"From: a@b.c\r\n\r\nDisk full.\r\n");
    assert_eq!(
        body(&out),
        b"Disk full.\r\n\r\n-- \r\nSent by Contoso monitoring\r\n"
    );
    let out = Config::signature("S").run(b"From: a@b.c\r\n\r\nno newline");
    assert_eq!(body(&out), b"no newline\r\n-- \r\nS\r\n");
}

#[test]
fn multi_line_signature_in_plain_and_trailing_newlines_ignored() {
    let out = Config::signature("Line one\nLine two\r\n\n")
        .run(b"From: a@b.c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody\r\n");
    assert_eq!(body(&out), b"Body\r\n\r\n-- \r\nLine one\r\nLine two\r\n");
}

#[test]
fn empty_signature_changes_nothing() {
    let raw = b"From: a@b.c\r\n\r\nBody\r\n";
    let out = Config::signature("").run(raw);
    assert_eq!(body(&out), b"Body\r\n");
}

#[test]
fn signature_in_html_is_escaped_and_before_body_end() {
    let raw = b"From: a@b.c\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hi</p></BODY></html>\r\n";
    let out = Config::signature("Tom & Jerry <ops>\nline \"2\"").run(raw);
    let b = String::from_utf8(body(&out).to_vec()).unwrap();
    assert_eq!(
        b,
        "<html><body><p>Hi</p><br>-- <br>\r\nTom &amp; Jerry &lt;ops&gt;<br>\r\nline &quot;2&quot;\r\n</BODY></html>\r\n"
    );
}

#[test]
fn signature_in_html_without_body_tag_is_appended() {
    let raw = b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n<p>Hi</p>";
    let out = Config::signature("\u{e9}t\u{e9}").run(raw);
    assert_eq!(body(&out), b"<p>Hi</p><br>-- <br>\r\n&#233;t&#233;\r\n");
    // The HTML signature is ASCII, so nothing about the part had to change.
    assert_eq!(values(&out, "Content-Type"), ["text/html"]);
    assert!(values(&out, "Content-Transfer-Encoding").is_empty());
}

const ALTERNATIVE: &[u8] = b"From: App <app@x.com>\r
To: ops@contoso.com\r
Subject: report\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative; boundary=\"=_alt_42\"\r
\r
This is a multi-part message in MIME format.\r
\r
--=_alt_42\r
Content-Type: text/plain; charset=\"utf-8\"\r
Content-Transfer-Encoding: quoted-printable\r
\r
Caf=C3=A9 report: all systems =3D OK. This line is long enough that it needs =\r
a soft line break.\r
--=_alt_42\r
Content-Type: text/html; charset=utf-8\r
Content-Transfer-Encoding: base64\r
\r
PGh0bWw+PGJvZHk+PHA+Q2Fmw6kgcmVwb3J0OiBhbGwgc3lzdGVtcyA9IE9LLjwvcD48L2JvZHk+\r
PC9odG1sPg==\r
--=_alt_42--\r
epilogue stays\r
";

#[test]
fn signature_in_alternative_with_quoted_printable_text_and_base64_html() {
    let out = Config::signature("Sent by <Contoso> & friends").run(ALTERNATIVE);
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    let plain = parsed.body_text(0).unwrap();
    assert_eq!(
        plain,
        "Caf\u{e9} report: all systems = OK. This line is long enough that it needs a soft line break.\r\n-- \r\nSent by <Contoso> & friends\r\n"
    );
    let html = parsed.body_html(0).unwrap();
    assert_eq!(
        html,
        "<html><body><p>Caf\u{e9} report: all systems = OK.</p><br>-- <br>\r\nSent by &lt;Contoso&gt; &amp; friends\r\n</body></html>"
    );
    let t = text(&out);
    // Structure and the parts outside the text survive as they were.
    assert!(
        t.contains("\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n--=_alt_42\r\n")
    );
    assert!(t.ends_with("--=_alt_42--\r\nepilogue stays\r\n"));
    // Encodings kept, and their line limits.
    assert_eq!(
        t.matches("Content-Transfer-Encoding: quoted-printable")
            .count(),
        1
    );
    assert_eq!(t.matches("Content-Transfer-Encoding: base64").count(), 1);
    for line in t.split("\r\n") {
        assert!(line.len() <= 76, "{line}");
    }
}

#[test]
fn nested_mixed_alternative_with_attachments() {
    let raw = b"From: a@b.c\r
Content-Type: multipart/mixed;\r
 boundary=outer\r
\r
preamble\r
--outer\r
Content-Type: multipart/alternative; boundary=\"inner\"\r
\r
--inner\r
Content-Type: text/plain\r
\r
plain text\r
--inner\r
Content-Type: text/html\r
\r
<p>html</p>\r
--inner--\r
--outer\r
Content-Type: text/plain; name=log.txt\r
Content-Disposition: attachment; filename=log.txt\r
\r
attached log\r
--outer\r
Content-Type: application/octet-stream\r
Content-Transfer-Encoding: base64\r
\r
AAECAw==\r
--outer--\r
";
    let out = Config::signature("SIG").run(raw);
    let t = text(&out);
    let expected = String::from_utf8_lossy(raw)
        .replace("plain text\r\n", "plain text\r\n-- \r\nSIG\r\n\r\n")
        .replace("<p>html</p>", "<p>html</p><br>-- <br>\r\nSIG\r\n");
    assert_eq!(
        body(&out),
        expected.split_once("\r\n\r\n").unwrap().1.as_bytes()
    );
    assert_eq!(t.matches("SIG").count(), 2);
}

#[test]
fn attachment_does_not_take_the_signature_but_the_next_text_part_does() {
    let raw = b"From: a@b.c\r
Content-Type: multipart/mixed; boundary=b\r
\r
--b\r
Content-Type: text/plain\r
Content-Disposition: attachment; filename=\"a.txt\"\r
\r
attachment\r
--b\r
Content-Type: text/plain\r
\r
body text\r
--b--\r
";
    let out = Config::signature("SIG").run(raw);
    let t = text(&out);
    assert!(t.contains("\r\n\r\nattachment\r\n--b\r\n"));
    assert!(t.contains("\r\n\r\nbody text\r\n-- \r\nSIG\r\n\r\n--b--"));
}

#[test]
fn only_the_first_plain_part_is_signed() {
    let raw = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\n";
    let out = Config::signature("SIG").run(raw);
    let t = text(&out);
    assert_eq!(t.matches("SIG").count(), 1);
    assert!(t.contains("one\r\n-- \r\nSIG\r\n"));
}

#[test]
fn iso_8859_1_plain_with_ascii_signature() {
    let raw = b"From: a@b.c\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe aus K\xf6ln\r\n";
    let out = Config::signature("Contoso IT").run(raw);
    assert_eq!(
        body(&out),
        b"Gr\xfc\xdfe aus K\xf6ln\r\n\r\n-- \r\nContoso IT\r\n"
    );
    assert_eq!(
        values(&out, "Content-Type"),
        ["text/plain; charset=iso-8859-1"]
    );
}

#[test]
fn iso_8859_1_plain_with_latin1_signature_is_transcoded() {
    let raw = b"From: a@b.c\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n";
    let out = Config::signature("Gr\u{fc}\u{df}e, IT").run(raw);
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "Gr\u{fc}\u{df}e\r\n\r\n-- \r\nGr\u{fc}\u{df}e, IT\r\n"
    );
    assert!(text(&out).contains("Gr=FC=DFe, IT"));
}

#[test]
fn signature_a_charset_cannot_take_is_skipped() {
    // A euro sign has no place in ISO-8859-1; we do not transcode into KOI8-R.
    for (ct, sig) in [
        ("text/plain; charset=iso-8859-1", "5 \u{20ac}"),
        (
            "text/plain; charset=koi8-r",
            "\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}",
        ),
        ("text/plain; charset=utf-16", "ascii"),
    ] {
        let raw = format!("From: a@b.c\r\nContent-Type: {ct}\r\n\r\nbody\r\n");
        let out = Config::signature(sig).run(raw.as_bytes());
        assert_eq!(body(&out), b"body\r\n", "{ct}");
        assert_eq!(values(&out, "Content-Type"), [ct]);
    }
}

#[test]
fn non_ascii_signature_in_unlabelled_message_relabels_and_encodes() {
    let out = Config::signature("Gesendet von \u{dc}berwachung \u{2713}")
        .run(b"From: a@b.c\r\nSubject: s\r\n\r\nDisk = full\r\n");
    assert_eq!(values(&out, "MIME-Version"), ["1.0"]);
    assert_eq!(values(&out, "Content-Type"), ["text/plain; charset=utf-8"]);
    assert_eq!(
        values(&out, "Content-Transfer-Encoding"),
        ["quoted-printable"]
    );
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "Disk = full\r\n\r\n-- \r\nGesendet von \u{dc}berwachung \u{2713}\r\n"
    );
    assert!(out.message.is_ascii());
}

#[test]
fn non_ascii_signature_relabels_us_ascii_charset_in_place() {
    let raw = b"From: a@b.c\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; format=flowed;\r\n charset=\"us-ascii\"; delsp=yes\r\n\r\nhello\r\n";
    let out = Config::signature("\u{e9}").run(raw);
    assert_eq!(
        values(&out, "Content-Type"),
        ["text/plain; format=flowed; charset=utf-8; delsp=yes"]
    );
    assert_eq!(values(&out, "MIME-Version"), ["1.0"]);
    assert_eq!(
        values(&out, "Content-Transfer-Encoding"),
        ["quoted-printable"]
    );
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "hello\r\n\r\n-- \r\n\u{e9}\r\n"
    );
}

#[test]
fn non_ascii_signature_in_8bit_utf8_part_stays_8bit() {
    let raw = "From: a@b.c\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve\r\n";
    let out = Config::signature("\u{2014} ops").run(raw.as_bytes());
    assert_eq!(
        body(&out),
        "na\u{ef}ve\r\n\r\n-- \r\n\u{2014} ops\r\n".as_bytes()
    );
}

#[test]
fn a_new_transfer_encoding_brings_mime_version() {
    let raw = b"From: a@b.c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n";
    let out = Config::signature("\u{e9}").run(raw);
    assert_eq!(values(&out, "Content-Type"), ["text/plain; charset=utf-8"]);
    assert_eq!(
        values(&out, "Content-Transfer-Encoding"),
        ["quoted-printable"]
    );
    assert_eq!(values(&out, "MIME-Version"), ["1.0"]);
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        "hello\r\n\r\n-- \r\n\u{e9}\r\n"
    );
}

#[test]
fn mislabelled_8bit_body_keeps_its_encoding_for_an_ascii_signature() {
    let raw = b"From: a@b.c\r\nSubject: s\r\n\r\nK\xf6ln\r\n";
    let out = Config::signature("IT").run(raw);
    assert_eq!(body(&out), b"K\xf6ln\r\n\r\n-- \r\nIT\r\n");
    assert!(values(&out, "Content-Transfer-Encoding").is_empty());
    assert!(values(&out, "MIME-Version").is_empty());
    // Not valid UTF-8 and no charset: a non-ASCII signature has nowhere safe to go.
    let out = Config::signature("\u{e9}").run(raw);
    assert_eq!(body(&out), b"K\xf6ln\r\n");
}

#[test]
fn rfc2231_charset_is_not_guessed_at() {
    let raw =
        b"From: a@b.c\r\nContent-Type: text/plain; charset*=us-ascii''us-ascii\r\n\r\nhello\r\n";
    let out = Config::signature("\u{e9}").run(raw);
    assert_eq!(body(&out), b"hello\r\n");
}

#[test]
fn undecodable_base64_and_unknown_encodings_are_left_alone() {
    for cte in ["base64", "x-uuencode"] {
        let raw = format!(
            "From: a@b.c\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: {cte}\r\n\r\n!!! not base64 !!!\r\n"
        );
        let out = Config::signature("SIG").run(raw.as_bytes());
        assert_eq!(body(&out), b"!!! not base64 !!!\r\n");
    }
}

#[test]
fn inline_pgp_is_left_alone() {
    let raw = b"From: a@b.c\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nhi\r\n-----BEGIN PGP SIGNATURE-----\r\nxx\r\n-----END PGP SIGNATURE-----\r\n";
    let out = Config::signature("XYZZY").run(raw);
    assert!(!text(&out).contains("XYZZY"));
}

#[test]
fn long_line_in_7bit_html_switches_to_quoted_printable() {
    // 990 octets: the signature's "<br>-- <br>" takes the line past 998.
    let html = format!("<p>{}</p>", "a".repeat(983));
    let raw = format!("From: a@b.c\r\nContent-Type: text/html\r\n\r\n{html}");
    let out = Config::signature("S").run(raw.as_bytes());
    assert_eq!(
        values(&out, "Content-Transfer-Encoding"),
        ["quoted-printable"]
    );
    let parsed = MessageParser::default().parse(&out.message).unwrap();
    assert_eq!(
        parsed.body_html(0).unwrap(),
        format!("{html}<br>-- <br>\r\nS\r\n")
    );
}

const SIGNED: &[u8] = b"From: App <app@x.com>\r
Sender: s@x.com\r
MIME-Version: 1.0\r
Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\r
\tmicalg=sha-256; boundary=\"----sig\"\r
\r
This is an S/MIME signed message\r
\r
------sig\r
Content-Type: text/plain\r
\r
signed text\r
------sig\r
Content-Type: application/pkcs7-signature; name=smime.p7s\r
Content-Transfer-Encoding: base64\r
\r
MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwEAAKCAMIIE\r
------sig--\r
";

fn body_of(raw: &[u8]) -> &[u8] {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    &raw[at + 4..]
}

#[test]
fn signed_message_body_is_byte_identical_but_headers_are_rewritten() {
    let cfg = Config {
        reply_to: Some("helpdesk@contoso.com"),
        ..Config::signature("SIG")
    };
    let out = cfg.run(SIGNED);
    assert_eq!(body(&out), body_of(SIGNED));
    assert_eq!(from_line(&out), "Contoso Alerts <relay@contoso.com>");
    assert!(values(&out, "Sender").is_empty());
    assert_eq!(values(&out, "Reply-To"), ["helpdesk@contoso.com"]);
}

#[test]
fn encrypted_and_pkcs7_bodies_are_byte_identical() {
    for ct in [
        "multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x",
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
        "application/x-pkcs7-mime; smime-type=signed-data",
    ] {
        let raw = format!(
            "From: a@b.c\r\nContent-Type: {ct}\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsecret\r\n--x--\r\n"
        );
        let out = Config::signature("SIG").run(raw.as_bytes());
        assert_eq!(body(&out), body_of(raw.as_bytes()), "{ct}");
    }
}

#[test]
fn signed_part_inside_mixed_is_not_entered() {
    let raw = b"From: a@b.c\r
Content-Type: multipart/mixed; boundary=m\r
\r
--m\r
Content-Type: multipart/signed; boundary=s; protocol=\"application/pgp-signature\"\r
\r
--s\r
Content-Type: text/plain\r
\r
signed\r
--s\r
Content-Type: application/pgp-signature\r
\r
sig\r
--s--\r
--m\r
Content-Type: message/rfc822\r
\r
From: inner@x.com\r
Content-Type: text/plain\r
\r
inner text\r
--m--\r
";
    let out = Config::signature("SIG").run(raw);
    assert_eq!(body(&out), body_of(raw));
}

#[test]
fn digest_parts_default_to_messages() {
    let raw = b"From: a@b.c\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nFrom: x@y.z\r\n\r\nmsg\r\n--d--\r\n";
    let out = Config::signature("SIG").run(raw);
    assert_eq!(body(&out), body_of(raw));
}

#[test]
fn boundaries_quoted_unquoted_and_with_padding() {
    for (param, delim) in [
        ("boundary=abc", "abc"),
        ("boundary=\"a b:c\"", "a b:c"),
        ("BOUNDARY = \"q\" (comment)", "q"),
    ] {
        let raw = format!(
            "From: a@b.c\r\nContent-Type: multipart/mixed; {param}\r\n\r\n--{delim}   \r\nContent-Type: text/plain\r\n\r\ntext\r\n--{delim}--  \r\n"
        );
        let out = Config::signature("SIG").run(raw.as_bytes());
        assert!(
            text(&out).contains("text\r\n-- \r\nSIG\r\n"),
            "{param}: {}",
            text(&out)
        );
        assert!(text(&out).ends_with(&format!("--{delim}--  \r\n")));
    }
}

#[test]
fn a_boundary_that_prefixes_another_line_still_delimits() {
    // RFC 2046 5.1.1: the boundary need only start the line.
    let raw = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b junk\r\n\r\ntext\r\n--b--\r\n";
    let out = Config::signature("SIG").run(raw);
    assert!(text(&out).contains("text\r\n-- \r\nSIG\r\n\r\n--b--"));
}

#[test]
fn truncated_multipart_and_missing_boundary() {
    let raw = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\ncut off";
    let out = Config::signature("SIG").run(raw);
    assert!(text(&out).ends_with("cut off\r\n-- \r\nSIG\r\n"));
    let raw = b"From: a@b.c\r\nContent-Type: multipart/mixed\r\n\r\n--b\r\n\r\ntext\r\n--b--\r\n";
    let out = Config::signature("SIG").run(raw);
    assert_eq!(body(&out), body_of(raw));
}

#[test]
fn part_without_header_separator() {
    // A part whose first line is not a header: body; we write the missing empty line.
    let raw = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\njust text\r\n--b--\r\n";
    let out = Config::signature("SIG").run(raw);
    assert!(text(&out).contains("--b\r\n\r\njust text\r\n-- \r\nSIG\r\n\r\n--b--"));
}

#[test]
fn deep_nesting_does_not_overflow() {
    let mut raw = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
    for _ in 0..5000 {
        raw.extend_from_slice(b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n");
    }
    raw.extend_from_slice(b"--b\r\n\r\ntext\r\n");
    let out = Config::signature("SIG").run(&raw);
    assert!(out.message.len() >= raw.len());
}

#[test]
fn untouched_parts_keep_their_bytes() {
    let out = Config::new().run(ALTERNATIVE);
    assert_eq!(body(&out), body_of(ALTERNATIVE));
}

// ---- Robustness ----------------------------------------------------------------------

#[test]
fn garbage_bytes_give_one_from() {
    let mut rng = StdRng::seed_from_u64(7);
    for len in [1, 2, 7, 100, 4096] {
        for _ in 0..20 {
            let raw: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            Config::signature("S").run(&raw);
        }
    }
    for raw in [
        &b"\r\n\r\n\r\n"[..],
        b"\n",
        b"\r",
        b":",
        b"From:",
        b"From",
        b"From \r\n",
        b"\x00\x00From: a@b.c",
        b" From: a@b.c\r\n\r\n",
        b"From: a@b.c\r\n\tFrom: b@c.d\r\n",
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
        b"Content-Type: multipart/mixed; boundary=-\r\n\r\n---\r\n---\r\n-----\r\n",
        b"Content-Type: text/plain; charset=\"\r\n\r\nx",
    ] {
        Config::signature("S").run(raw);
    }
}

const SEEDS: [&[u8]; 4] = [
    ALTERNATIVE,
    SIGNED,
    b"From: \"Smith, John\" <j@x.com>\r\nSender: s@x.com\r\nBcc: b@x.com\r\nReply-To: r@x.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQK\r\n",
    b"From: a@b.c\nContent-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/alternative; boundary=i\n\n--i\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nK=F6ln\n--i\nContent-Type: text/html\n\n<body>x</body>\n--i--\n--o--\n",
];

#[test]
fn fuzz_truncation_at_every_offset() {
    let cfg = Config {
        reply_to: Some("r@contoso.com"),
        ..Config::signature("Sig \u{e9} <&>")
    };
    for seed in SEEDS {
        for cut in 0..=seed.len() {
            cfg.run(&seed[..cut]);
        }
    }
}

#[test]
fn fuzz_random_byte_flips() {
    let mut rng = StdRng::seed_from_u64(0x5EED);
    let interesting = b"\r\n:-\" \t=<>@;()\\\x00\xff";
    let cfg = Config {
        from_name: None,
        ..Config::signature("Sig \u{e9} <&>")
    };
    for seed in SEEDS {
        for _ in 0..400 {
            let mut raw = seed.to_vec();
            let flips = rng.gen_range(1..=8);
            for _ in 0..flips {
                let at = rng.gen_range(0..raw.len());
                raw[at] = if rng.gen_bool(0.5) {
                    interesting[rng.gen_range(0..interesting.len())]
                } else {
                    rng.r#gen()
                };
            }
            if rng.gen_bool(0.2) {
                let cut = rng.gen_range(0..raw.len());
                raw.truncate(cut);
            }
            let out = cfg.run(&raw);
            // The output is stable: rewriting it again keeps exactly one From too.
            cfg.run(&out.message);
        }
    }
}

#[test]
fn content_type_parsing_helpers() {
    let fields = header::scan(
        b"Content-Type: text/plain; charset=\"utf-8\"\r\n\r\n",
        0,
        45,
    )
    .fields;
    let info = mime::entity_info(
        b"Content-Type: text/plain; charset=\"utf-8\"\r\n\r\n",
        &fields,
        false,
    );
    assert_eq!(info.kind, mime::Kind::Plain);
    assert_eq!(info.charset.as_deref(), Some("utf-8"));
    // Two Content-Types: nobody can know which one a reader believes.
    let raw = b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\n";
    let fields = header::scan(raw, 0, raw.len()).fields;
    assert_eq!(
        mime::entity_info(raw, &fields, false).kind,
        mime::Kind::Other
    );
}

#[test]
fn fuzz_header_grammar_keeps_exactly_one_from() {
    let pieces: [&[u8]; 28] = [
        b"From: a@b.c",
        b"FROM : Alerts <alerts@contoso.com>",
        b"from:relay@contoso.com",
        b" From: folded@x.com",
        b"\tFrom: tab@x.com",
        b"From",
        b"From ",
        b":From: colon@x.com",
        b"F rom: spaced@x.com",
        b"From\x00: nul@x.com",
        b"\x0cFrom: ff@x.com",
        b"X-Original-From: forged@x.com",
        b"Sender: s@x.com",
        b"Subject: =?utf-8?q?caf=C3=A9?=",
        b"To: \"unterminated",
        b"Cc: (open comment",
        b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: text/plain; charset=us-ascii",
        b"Content-Transfer-Encoding: base64",
        b"--b",
        b"--b--",
        b" ",
        b"\t",
        b"",
        b"body text",
        b"\xff\xfe",
        b"=?utf-8?b?QGV2aWw=?=",
        b"Reply-To: r@x.com",
    ];
    let endings: [&[u8]; 4] = [b"\r\n", b"\n", b"\r", b"\r\r\n"];
    let mut rng = StdRng::seed_from_u64(2026);
    let configs = [
        Config::signature("S\u{e9}"),
        Config {
            from_name: None,
            reply_to: Some("r@contoso.com"),
            reply_to_mode: ReplyToMode::IfMissing,
            ..Config::new()
        },
    ];
    for round in 0..3000 {
        let mut raw = Vec::new();
        for _ in 0..rng.gen_range(0..16) {
            raw.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            raw.extend_from_slice(endings[rng.gen_range(0..endings.len())]);
        }
        configs[round % 2].run(&raw);
    }
}

#[test]
fn a_parameter_list_ending_in_an_escape_inside_a_comment_does_not_panic() {
    // Found by the rewrite fuzz target: a backslash as the very last byte of an unclosed
    // comment made the Content-Type parameter scanner step past the end of the value, and
    // the rewrite panicked (in a delivery worker, on every attempt).
    for raw in [
        &b"From: a@b.c\r\nContent-Type: text/plain; (\\"[..],
        b"From: a@b.c\r\nContent-Type: text/plain; (x\\",
        b"From: a@b.c\r\nContent-Type: text/plain;(\\",
        b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; (c\\",
    ] {
        let out = Config::signature("S\u{e9}").run(raw);
        assert!(out.message.ends_with(b"\r\n"));
    }
}

#[test]
fn a_relabelled_content_type_is_folded_within_998_octets() {
    // Found by the rewrite fuzz target: giving a long Content-Type a charset made its
    // first line longer still, past the 998 octets a line may have.
    let long = format!(
        "From: a@b.c\r\nContent-Type: text/plain; x-note={}\r\n\r\nhello\r\n",
        "n".repeat(990)
    );
    let out = Config::signature("S\u{e9}").run(long.as_bytes());
    let text = String::from_utf8_lossy(&out.message).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    assert!(head.contains("charset=utf-8"), "{head}");
    for line in head.split("\r\n") {
        assert!(line.len() <= 998, "a header line of {} octets", line.len());
    }
}

#[test]
fn a_signed_type_missing_its_semicolon_is_still_left_alone() {
    // Found by the rewrite fuzz target: `multipart/signed protocol=...` (no `;` after the
    // subtype) read as subtype "signed protocol=..." and so as a plain multipart, whose text
    // part got the signature, breaking the signature the message carries. Readers take the
    // subtype as the token before the blank.
    for ct in [
        "multipart/signed protocol=\"application/pkcs7-signature\"; boundary=x",
        "multipart/encrypted protocol=\"application/pgp-encrypted\"; boundary=x",
        "multipart/signed\tprotocol=x; boundary=x",
    ] {
        let raw = format!(
            "From: a@b.c\r\nContent-Type: {ct}\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--x--\r\n"
        );
        let out = Config::signature("SIG").run(raw.as_bytes());
        assert_eq!(body(&out), body_of(raw.as_bytes()), "{ct}");
    }
}

#[test]
fn an_empty_charset_at_a_line_end_is_relabelled_in_place() {
    // Found by the rewrite fuzz target: for `charset=` with nothing after it, the value was
    // looked for past the line break, `utf-8` was put on a line of its own, and that line
    // (neither a field nor a continuation) ended the header section for any reader: the
    // From we write after it became body text.
    for ct in [
        "text/plain; charset=",
        "text/plain; charset=  ",
        "text/plain; charset=\"\"",
    ] {
        let raw = format!("From: a@b.c\r\nContent-Type: {ct}\r\n\r\nhello\r\n");
        let out = Config::signature("S\u{e9}").run(raw.as_bytes());
        let text = String::from_utf8_lossy(&out.message).into_owned();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        for line in head.split("\r\n") {
            let continuation = line.starts_with([' ', '\t']);
            let field = line
                .split_once(':')
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()));
            assert!(
                continuation || field,
                "{ct}: stray header line {line:?} in\n{head}"
            );
        }
        assert_eq!(values(&out, "From").len(), 1, "{ct}:\n{head}");
        assert!(head.contains("charset=utf-8"), "{ct}:\n{head}");
    }
}
