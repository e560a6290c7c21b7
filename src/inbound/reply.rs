//! SMTP replies: the fixed texts in one place, so the wording clients (and their operators)
//! see is reviewable at a glance, and one writer that guarantees the wire format.

use std::borrow::Cow;

/// One reply. `text` starts with the enhanced status code (RFC 2034); a text with `\n` in it
/// becomes a multi-line reply (`250-first`, ..., `250 last`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub code: u16,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn fixed(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            text: Cow::Borrowed(text),
        }
    }

    pub fn new(code: u16, text: String) -> Reply {
        Reply {
            code,
            text: Cow::Owned(text),
        }
    }

    /// 221 and 421 close the connection (RFC 5321 4.2.2 / 3.8): the session ends after
    /// sending either.
    pub fn closes(&self) -> bool {
        matches!(self.code, 221 | 421)
    }

    /// A negative reply blamed on the client (5xx): these count towards the error limit.
    pub fn is_client_error(&self) -> bool {
        self.code >= 500
    }

    /// A positive reply: the client is making progress, so the error count starts again.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form. Every line ends with CRLF; a stray CR never reaches the wire,
    /// so nothing a client put into a reply text can forge a reply line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            out.extend_from_slice(format!("{}{sep}", self.code).as_bytes());
            out.extend(line.bytes().filter(|&b| b != b'\r'));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Makes client-supplied text (an address, a parameter name) safe and short enough to echo in
/// a reply or a header: visible ASCII only, at most `max` characters.
pub(super) fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

pub(super) const OK: Reply = Reply::fixed(250, "2.0.0 Ok");
pub(super) const SENDER_OK: Reply = Reply::fixed(250, "2.1.0 Sender OK");
pub(super) const RECIPIENT_OK: Reply = Reply::fixed(250, "2.1.5 Recipient OK");
pub(super) const START_DATA: Reply = Reply::fixed(354, "End data with <CR><LF>.<CR><LF>");
pub(super) const BYE: Reply = Reply::fixed(221, "2.0.0 Bye");
pub(super) const HELP: Reply = Reply::fixed(
    214,
    "2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
);
pub(super) const VRFY: Reply = Reply::fixed(252, "2.5.0 Cannot VRFY user, but will accept message");

pub(super) const READY_TLS: Reply = Reply::fixed(220, "2.0.0 Ready to start TLS");
pub(super) const AUTH_OK: Reply = Reply::fixed(235, "2.7.0 Authentication successful");

pub(super) const SHUTTING_DOWN: Reply = Reply::fixed(421, "4.3.2 Service shutting down");
pub(super) const TOO_MANY_CONNECTIONS: Reply =
    Reply::fixed(421, "4.7.0 Too many connections, try again later");
pub(super) const TOO_MANY_ERRORS: Reply = Reply::fixed(421, "4.7.0 Too many errors");
pub(super) const NO_STORAGE: Reply = Reply::fixed(452, "4.3.1 Insufficient system storage");
pub(super) const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, "4.5.3 Too many recipients");
pub(super) const NO_TLS: Reply = Reply::fixed(454, "4.7.0 TLS not available");
pub(super) const TOO_MANY_CLIENT_CONNECTIONS: Reply = Reply::fixed(
    421,
    "4.7.0 Too many connections from your address, try again later",
);
pub(super) const TOO_MANY_MESSAGES: Reply = Reply::fixed(451, "4.7.1 Too many messages, slow down");
pub(super) const AUTH_LOCKED: Reply =
    Reply::fixed(454, "4.7.0 Too many failed attempts, try again later");
pub(super) const AUTH_TEMPORARY: Reply =
    Reply::fixed(454, "4.7.0 Temporary authentication failure");

pub(super) const UNRECOGNIZED: Reply = Reply::fixed(500, "5.5.2 Command unrecognized");
pub(super) const LINE_TOO_LONG: Reply = Reply::fixed(500, "5.5.2 Line too long");
pub(super) const BAD_SENDER: Reply = Reply::fixed(501, "5.1.7 Bad sender address syntax");
pub(super) const BAD_RECIPIENT: Reply = Reply::fixed(501, "5.1.3 Bad recipient address syntax");
pub(super) const NOT_IMPLEMENTED: Reply = Reply::fixed(502, "5.5.1 Command not implemented");
pub(super) const HELO_FIRST: Reply = Reply::fixed(503, "5.5.1 EHLO/HELO first");
pub(super) const NESTED_MAIL: Reply = Reply::fixed(503, "5.5.1 Nested MAIL command");
pub(super) const NEED_MAIL: Reply = Reply::fixed(503, "5.5.1 Need MAIL command");
pub(super) const NO_AUTH: Reply = Reply::fixed(503, "5.5.1 Authentication not enabled");
pub(super) const TLS_ACTIVE: Reply = Reply::fixed(503, "5.5.1 TLS already active");
pub(super) const ALREADY_AUTHENTICATED: Reply = Reply::fixed(503, "5.5.1 Already authenticated");
pub(super) const AUTH_IN_TRANSACTION: Reply =
    Reply::fixed(503, "5.5.1 AUTH not permitted during a mail transaction");
pub(super) const UNKNOWN_MECHANISM: Reply =
    Reply::fixed(504, "5.5.4 Unrecognized authentication type");
pub(super) const AUTH_CANCELLED: Reply = Reply::fixed(501, "5.0.0 Authentication cancelled");
pub(super) const AUTH_MALFORMED: Reply = Reply::fixed(501, "5.5.2 Cannot decode response");
pub(super) const AUTH_LINE_TOO_LONG: Reply =
    Reply::fixed(500, "5.5.6 Authentication exchange line is too long");
pub(super) const AUTH_REQUIRED: Reply = Reply::fixed(530, "5.7.0 Authentication required");
pub(super) const STARTTLS_FIRST: Reply =
    Reply::fixed(530, "5.7.0 Must issue a STARTTLS command first");
pub(super) const AUTH_FAILED: Reply = Reply::fixed(535, "5.7.8 Authentication credentials invalid");
pub(super) const ENCRYPTION_REQUIRED: Reply = Reply::fixed(
    538,
    "5.7.11 Encryption required for requested authentication mechanism",
);
pub(super) const SENDER_NOT_ALLOWED: Reply =
    Reply::fixed(550, "5.7.1 Sender address not allowed for this user");
pub(super) const NO_RECIPIENTS: Reply = Reply::fixed(554, "5.5.1 No valid recipients");
pub(super) const TOO_BIG: Reply =
    Reply::fixed(552, "5.3.4 Message size exceeds fixed maximum message size");
pub(super) const BINARY_UNSUPPORTED: Reply =
    Reply::fixed(555, "5.5.4 BODY=BINARYMIME is not supported");

/// Maps a parse failure from `smtp-proto` to the reply RFC 5321 and 3463 prescribe.
pub(super) fn parse_error(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => UNRECOGNIZED,
        Error::InvalidSenderAddress => BAD_SENDER,
        Error::InvalidRecipientAddress => BAD_RECIPIENT,
        Error::SyntaxError { syntax } => Reply::new(501, format!("5.5.4 Syntax: {syntax}")),
        Error::InvalidParameter { param } => {
            Reply::new(501, format!("5.5.4 Invalid {param} parameter"))
        }
        Error::UnsupportedParameter { param } => Reply::new(
            555,
            format!("5.5.4 Unsupported parameter {}", printable(param, 64)),
        ),
        // We hand the parser whole lines, so it never runs out of input; the rest are
        // response-side errors. Treat anything else as a line we could not make sense of.
        Error::NeedsMoreData { .. } => Reply::fixed(501, "5.5.4 Syntax error"),
        _ => UNRECOGNIZED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(wire(&OK), "250 2.0.0 Ok\r\n");
        let r = Reply::new(250, "host\nPIPELINING\nHELP".into());
        assert_eq!(wire(&r), "250-host\r\n250-PIPELINING\r\n250 HELP\r\n");
    }

    #[test]
    fn client_text_cannot_forge_lines() {
        assert_eq!(printable("a\r\n250 b", 64), "a??250?b");
        assert_eq!(printable("éx", 64), "?x");
        assert_eq!(printable("abcdef", 3), "abc");
        let r = Reply::new(550, "5.7.1 x\rY".into());
        assert_eq!(wire(&r), "550 5.7.1 xY\r\n");
    }
}
