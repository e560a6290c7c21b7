//! The rewrite every message gets before it is relayed: what Postfix's cleanup would do for us.
//!
//! [`rewrite`] is a pure function over the raw message (the only impurity is the random part of
//! a Message-ID it adds). It
//!
//! - makes the From one Exchange accepts for the mailbox we authenticate as: kept when its
//!   address is the mailbox or a `send_as` address (compared without regard to case),
//!   otherwise replaced by `from_name <mailbox>` (or the original display name, cleaned),
//!   with the original value kept in `X-Original-From`;
//! - drops every `Sender`, `Bcc` and `Resent-Bcc`, sets `Reply-To` as configured, adds `Date` and
//!   `Message-ID` when missing;
//! - appends the signature to the first text/plain part and the first text/html part, never
//!   touching the body of a signed or encrypted message;
//! - writes CRLF line endings throughout (a bare CR or LF becomes CRLF), and always exactly
//!   one `From`.
//!
//! Choices made here (see the tests for each):
//!
//! - The From is kept only when there is exactly one From field holding exactly one mailbox.
//!   Two From fields, a list, a group or something unreadable are all rewritten, and every
//!   original From value goes to its own `X-Original-From`. Client-supplied `X-Original-From`
//!   fields are dropped when we write ours, so that ours cannot be forged.
//! - A display name never carries an address: every word of it containing `@` (or the
//!   full-width and small look-alikes) is removed, as are control and bidi characters. What
//!   is left, if anything readable, is used; `"alice@evil.com" <alice@evil.com>` becomes
//!   plain `From: mailbox`. The configured `from_name` gets the same cleaning.
//! - The header section ends at the first empty line or at the first line that is neither a
//!   header field nor a continuation; the body starts there and we write the empty line. Input
//!   that does not start with a header field is all body. A leading mbox `From ` line is
//!   dropped.
//! - The first text/plain (and text/html) part is the first one that is not an attachment,
//!   outside signed/encrypted parts and attached messages. If that part cannot take the
//!   signature (unknown transfer encoding, UTF-16-like charset, a non-ASCII signature in a
//!   charset other than UTF-8, US-ASCII or Latin-1, undecodable base64, inline PGP), it goes
//!   without, and no later part gets it either.
//! - A non-ASCII signature in a US-ASCII (or unlabelled) part whose text is valid UTF-8 makes
//!   the part `charset=utf-8`; in a 7bit part it makes the part quoted-printable (so does a
//!   line longer than 998 octets). The HTML signature is pure ASCII (numeric character
//!   references), so it fits every ASCII-compatible charset as it is.
//! - The output always ends with CRLF.
//!
//! Memory: the output is built in one buffer; besides it, only the decoded text of the one or
//! two parts that get the signature is held.

mod cte;
pub(crate) mod header;
mod mime;

#[cfg(test)]
mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

use header::Action;
use mime::{Kind, Signer};

/// When to set the configured Reply-To.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyToMode {
    /// Replace any Reply-To the message has.
    #[default]
    Always,
    /// Only add one when the message has none.
    IfMissing,
}

/// What to rewrite a message to (from the tenant's configuration).
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    /// The Exchange mailbox we authenticate as.
    pub mailbox: &'a str,
    /// Display name for a rewritten From; `None` keeps the original display name.
    pub from_name: Option<&'a str>,
    /// From addresses the mailbox may send as: kept unrewritten (compared without case).
    pub send_as: &'a [String],
    pub reply_to: Option<&'a str>,
    pub reply_to_mode: ReplyToMode,
    /// Appended to the first text/plain and text/html parts.
    pub signature: Option<&'a str>,
    /// Right-hand side of the Message-ID we add.
    pub hostname: &'a str,
    /// For the Date we add.
    pub now: SystemTime,
}

/// A rewritten message and its envelope sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The message, CRLF line endings, ending with CRLF.
    pub message: Vec<u8>,
    /// The mailbox, or the kept `send_as` address as configured.
    pub envelope_from: String,
    /// The address of the original From (first mailbox of the first From), if it had one.
    pub original_from: Option<String>,
}

/// The header section of `raw` as lines with CRLF endings, each at most 998 octets (longer
/// ones folded, bare CRs made spaces), without the empty line that ends it: what a DSN reports of a message.
/// The section is found as [`rewrite`] finds it, so a message without headers gives nothing.
pub(crate) fn header_lines(raw: &[u8]) -> Vec<u8> {
    let start = skip_mbox_line(raw);
    let section = header::scan(raw, start, raw.len());
    let mut out = Vec::new();
    for field in &section.fields {
        let mut pos = field.start;
        while pos < field.end {
            let (content_end, next) = header::line_at(raw, pos, field.end);
            let line: Vec<u8> = raw[pos..content_end]
                .iter()
                .map(|&b| if b == b'\r' { b' ' } else { b })
                .collect();
            if pos == field.start || !header::is_blank(&line) {
                header::push_long_line(&mut out, &line);
            }
            pos = next;
        }
    }
    out
}

/// Rewrites `raw` per `rules`. Never fails and never panics: any input gives a message with
/// exactly one From.
pub fn rewrite(raw: &[u8], rules: &Rules<'_>) -> Rewritten {
    let start = skip_mbox_line(raw);
    let section = header::scan(raw, start, raw.len());
    let fields = &section.fields;
    let mut actions = vec![Action::Keep; fields.len()];
    let mut appended: Vec<u8> = Vec::new();
    let named = |name: &'static str| section.indices(raw, name).collect::<Vec<_>>();

    // From.
    let froms = named("From");
    let first_from = froms
        .first()
        .map(|&i| header::parse_mailboxes(fields[i].value(raw)))
        .unwrap_or_default();
    let original_from = first_from
        .first()
        .and_then(|m| m.address.clone())
        .filter(|a| header::plausible_address(a));
    let kept = match (froms.len(), first_from.as_slice()) {
        (1, [only]) => only
            .address
            .as_deref()
            .and_then(|a| allowed_sender(a, rules)),
        _ => None,
    };
    let envelope_from = match kept {
        Some(address) => address,
        None => {
            let mailbox = header::header_token(rules.mailbox);
            let name = rules
                .from_name
                .or_else(|| first_from.first().and_then(|m| m.name.as_deref()))
                .and_then(header::clean_display_name);
            let mut tokens = name
                .as_deref()
                .map(header::display_name_tokens)
                .unwrap_or_default();
            tokens.push(if tokens.is_empty() {
                mailbox.as_bytes().to_vec()
            } else {
                format!("<{mailbox}>").into_bytes()
            });
            let mut block = Vec::new();
            header::push_folded(&mut block, "From", &tokens);
            for &i in &froms {
                header::push_refolded(&mut block, "X-Original-From", fields[i].value(raw));
            }
            for i in named("X-Original-From") {
                actions[i] = Action::Drop;
            }
            match froms.split_first() {
                Some((&first, rest)) => {
                    actions[first] = Action::Replace(block);
                    for &i in rest {
                        actions[i] = Action::Drop;
                    }
                }
                None => appended.extend_from_slice(&block),
            }
            mailbox
        }
    };

    // Sender and Bcc go; Reply-To per the mode.
    for i in ["Sender", "Bcc", "Resent-Bcc"].into_iter().flat_map(named) {
        actions[i] = Action::Drop;
    }
    let reply_to: Vec<String> = rules
        .reply_to
        .unwrap_or_default()
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if !reply_to.is_empty() {
        let existing = named("Reply-To");
        // A blank Reply-To counts as missing (and goes).
        let add = match rules.reply_to_mode {
            ReplyToMode::Always => true,
            ReplyToMode::IfMissing => existing.iter().all(|&i| fields[i].value_is_blank(raw)),
        };
        if add {
            for &i in &existing {
                actions[i] = Action::Drop;
            }
            header::push_folded(&mut appended, "Reply-To", &reply_to);
        }
    }

    // What a submission server adds when missing (a blank one counts as missing).
    for (name, make) in [
        ("Date", rfc5322_date(rules.now)),
        ("Message-ID", message_id(rules.hostname)),
    ] {
        let existing = named(name);
        if existing.iter().all(|&i| fields[i].value_is_blank(raw)) {
            for &i in &existing {
                actions[i] = Action::Drop;
            }
            header::push_folded(&mut appended, name, &[make]);
        }
    }

    // The body.
    let body = section.body_start..raw.len();
    let mut signer = Signer::new(rules.signature);
    let info = mime::entity_info(raw, fields, false);
    let mut out = Vec::with_capacity(raw.len() + appended.len() + 1024);
    match &info.kind {
        Kind::Plain | Kind::Html if signer.pending() => {
            let edit = signer.plan(raw, fields, &info, body.clone());
            if let Some(edit) = &edit {
                if edit.header_changes(&info, &mut actions, &mut appended)
                    && named("MIME-Version").is_empty()
                {
                    appended.extend_from_slice(b"MIME-Version: 1.0\r\n");
                }
            }
            header::write_section(&mut out, raw, fields, &actions, &appended);
            out.extend_from_slice(b"\r\n");
            match edit {
                Some(edit) => edit.write_body(&mut out),
                None => header::push_range(&mut out, raw, body.start, body.end),
            }
        }
        Kind::Multipart { boundary, digest } if signer.pending() => {
            header::write_section(&mut out, raw, fields, &actions, &appended);
            out.extend_from_slice(b"\r\n");
            mime::write_multipart(&mut out, raw, body, boundary, *digest, &mut signer, 0);
        }
        // Protected (signed, encrypted) and everything else: the body as it is.
        _ => {
            header::write_section(&mut out, raw, fields, &actions, &appended);
            out.extend_from_slice(b"\r\n");
            header::push_range(&mut out, raw, body.start, body.end);
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Rewritten {
        message: out,
        envelope_from,
        original_from,
    }
}

/// The configured address `address` may be sent as, if any (the mailbox, or a send_as entry).
fn allowed_sender(address: &str, rules: &Rules<'_>) -> Option<String> {
    if !header::plausible_address(address) {
        return None;
    }
    std::iter::once(rules.mailbox)
        .chain(rules.send_as.iter().map(String::as_str))
        .map(str::trim)
        .find(|allowed| allowed.eq_ignore_ascii_case(address))
        .map(str::to_owned)
}

/// Where the message starts: after an mbox `From ` separator line, if it begins with one.
fn skip_mbox_line(raw: &[u8]) -> usize {
    if raw.starts_with(b"From ") {
        let (content_end, next) = header::line_at(raw, 0, raw.len());
        if header::field_name(&raw[..content_end]).is_none() {
            return next;
        }
    }
    0
}

/// `now` as an RFC 5322 date in UTC, e.g. `Fri, 04 Dec 2026 15:31:21 +0000`.
pub(crate) fn rfc5322_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let day = DAYS
        .get(usize::from(t.weekday().number_days_from_monday()))
        .unwrap_or(&"Mon");
    let month = MONTHS
        .get(usize::from(u8::from(t.month())).saturating_sub(1))
        .unwrap_or(&"Jan");
    format!(
        "{day}, {:02} {month} {:04} {:02}:{:02}:{:02} +0000",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A new Message-ID `<random@hostname>` (the brackets included).
pub(crate) fn message_id(hostname: &str) -> String {
    use rand::Rng as _;
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    let host = host.trim_matches('.');
    let host = if host.is_empty() { "localhost" } else { host };
    let random: u128 = rand::thread_rng().r#gen();
    format!("<{random:032x}@{host}>")
}
