//! Header sections over raw bytes: finding the fields, copying the ones we keep, and writing
//! the ones we make (folded, never longer than 998 octets a line).
//!
//! The scanner is strict about what a field is: an RFC 5322 `field-name` (printable ASCII but
//! `:`), optional obsolete whitespace, then `:`. The first line that is neither a field nor a
//! continuation (a line starting with space or tab) ends the header section, and the body
//! starts there. Because every line we keep in the header section is then a plain field or a
//! continuation, any reasonable parser (mail-parser included) sees the same fields we saw, so
//! removing every `From` we found and writing one leaves exactly one.

use std::ops::Range;

/// The longest line RFC 5322 allows, CRLF excluded.
pub(crate) const MAX_LINE: usize = 998;
/// The line length we aim for when we fold a header we write.
const SOFT_LINE: usize = 78;

/// One line of `input` starting at `pos`, not looking past `end`.
/// Returns (end of the line's content, start of the next line); the content excludes the
/// `\n` and a `\r` right before it. A last line without a line break ends at `end`.
pub(crate) fn line_at(input: &[u8], pos: usize, end: usize) -> (usize, usize) {
    let end = end.min(input.len());
    if pos >= end {
        return (end, end);
    }
    match input[pos..end].iter().position(|&b| b == b'\n') {
        Some(i) => {
            let nl = pos + i;
            let content_end = if nl > pos && input[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            (content_end, nl + 1)
        }
        None => (end, end),
    }
}

/// Appends `input[start..end]` with every bare LF and every bare CR turned into CRLF (CRLF is
/// copied as it is). `end` is clamped to the input.
///
/// Bare CRs go too because no one agrees on them: a receiver that takes CR for a line break
/// would read a CR `.` CRLF as the end of the data, and mail-send, to prevent that, stuffs a
/// dot after every bare CR, which a receiver that keeps to RFC 5321 (Exchange, the fake) then
/// keeps as an extra dot in the message.
pub(crate) fn push_range(out: &mut Vec<u8>, input: &[u8], start: usize, end: usize) {
    let end = end.min(input.len());
    if start >= end {
        return;
    }
    let mut from = start;
    for (i, &b) in input[start..end].iter().enumerate() {
        let at = start + i;
        let bare = match b {
            b'\n' => at == 0 || input[at - 1] != b'\r',
            b'\r' => input.get(at + 1) != Some(&b'\n'),
            _ => false,
        };
        if bare {
            out.extend_from_slice(&input[from..at]);
            out.extend_from_slice(b"\r\n");
            from = at + 1;
        }
    }
    out.extend_from_slice(&input[from..end]);
}

pub(crate) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| b == b' ' || b == b'\t')
}

/// If `line` starts a header field, the end of its name.
pub(crate) fn field_name(line: &[u8]) -> Option<usize> {
    let name_end = line
        .iter()
        .position(|&b| !(33..=126).contains(&b) || b == b':')
        .unwrap_or(line.len());
    if name_end == 0 {
        return None;
    }
    let rest = &line[name_end..];
    let colon = rest.iter().position(|&b| b != b' ' && b != b'\t')?;
    (rest[colon] == b':').then_some(name_end)
}

/// A header field: all ranges index the input it was scanned from.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// Start of the field's first line.
    pub start: usize,
    /// The field name.
    pub name: Range<usize>,
    /// After the `:` up to `end`: the raw value, folds and final line break included.
    pub value: Range<usize>,
    /// After the field's last line break (or the end of the section).
    pub end: usize,
}

impl Field {
    pub fn is(&self, input: &[u8], name: &str) -> bool {
        input
            .get(self.name.clone())
            .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    pub fn value<'i>(&self, input: &'i [u8]) -> &'i [u8] {
        input.get(self.value.clone()).unwrap_or_default()
    }

    /// True when the value has nothing but whitespace and line breaks.
    pub fn value_is_blank(&self, input: &[u8]) -> bool {
        self.value(input).iter().all(u8::is_ascii_whitespace)
    }
}

/// The header section of an entity (a message or a body part).
#[derive(Debug)]
pub(crate) struct Section {
    pub fields: Vec<Field>,
    /// Where the body starts: after the empty line, or at the first line that is not a header.
    pub body_start: usize,
}

impl Section {
    pub fn indices<'a>(
        &'a self,
        input: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = usize> + 'a {
        self.fields
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.is(input, name))
            .map(|(i, _)| i)
    }
}

/// Scans the header section of the entity in `input[start..end]`.
pub(crate) fn scan(input: &[u8], start: usize, end: usize) -> Section {
    let end = end.min(input.len());
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = start;
    while pos < end {
        let (content_end, next) = line_at(input, pos, end);
        let line = &input[pos..content_end];
        if line.is_empty() {
            return Section {
                fields,
                body_start: next,
            };
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some(field) => {
                    field.value.end = next;
                    field.end = next;
                    pos = next;
                    continue;
                }
                // A continuation with nothing to continue: this is body.
                None => break,
            }
        }
        match field_name(line) {
            Some(name_end) => {
                let colon = pos
                    + name_end
                    + line[name_end..]
                        .iter()
                        .position(|&b| b == b':')
                        .unwrap_or(0);
                fields.push(Field {
                    start: pos,
                    name: pos..pos + name_end,
                    value: colon + 1..next,
                    end: next,
                });
                pos = next;
            }
            None => break,
        }
    }
    Section {
        fields,
        body_start: pos.min(end),
    }
}

/// Appends `bytes` (part of a header field) line by line with CRLF endings, leaving out
/// whitespace-only continuation lines (some parsers take them for the end of the section)
/// and turning a bare CR into a space (some parsers take it for a line break, which could
/// make a second From out of a field's value).
pub(crate) fn push_header_lines(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut pos = 0;
    let mut first = true;
    while pos < bytes.len() {
        let (content_end, next) = line_at(bytes, pos, bytes.len());
        let line = &bytes[pos..content_end];
        if first || !is_blank(line) {
            out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        }
        first = false;
        pos = next;
    }
}

/// What to do with one field when a section is written out again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Keep,
    Drop,
    /// Put these complete header lines (CRLF-terminated) where the field was.
    Replace(Vec<u8>),
}

/// Writes a header section: each field per its action, then `appended` (complete lines).
/// Does not write the empty line that ends the section.
pub(crate) fn write_section(
    out: &mut Vec<u8>,
    input: &[u8],
    fields: &[Field],
    actions: &[Action],
    appended: &[u8],
) {
    for (i, field) in fields.iter().enumerate() {
        match actions.get(i).unwrap_or(&Action::Keep) {
            Action::Keep => {
                push_header_lines(out, input.get(field.start..field.end).unwrap_or_default())
            }
            Action::Drop => {}
            Action::Replace(lines) => out.extend_from_slice(lines),
        }
    }
    out.extend_from_slice(appended);
}

/// Writes `Name: token token ...`, folding between tokens to keep lines near 78 octets.
/// Tokens must not contain line breaks and must fit a line (callers make sure of that).
pub(crate) fn push_folded<T: AsRef<[u8]>>(out: &mut Vec<u8>, name: &str, tokens: &[T]) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    let mut line_len = name.len() + 1;
    let mut tokens_on_line = 0;
    for token in tokens {
        let token = token.as_ref();
        if tokens_on_line > 0 && line_len + 1 + token.len() > SOFT_LINE {
            out.extend_from_slice(b"\r\n");
            line_len = 0;
            tokens_on_line = 0;
        }
        out.push(b' ');
        out.extend_from_slice(token);
        line_len += 1 + token.len();
        tokens_on_line += 1;
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `Name:` followed by a raw value copied from another field, keeping its folding.
/// Control characters become spaces; whitespace-only lines are left out; any line that would
/// exceed 998 octets is folded at whitespace, or cut where there is none.
/// Writes nothing when the value is blank.
pub(crate) fn push_refolded(out: &mut Vec<u8>, name: &str, raw_value: &[u8]) {
    if raw_value.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let mut pos = 0;
    let mut first = true;
    while pos < raw_value.len() {
        let (content_end, next) = line_at(raw_value, pos, raw_value.len());
        let line: Vec<u8> = raw_value[pos..content_end]
            .iter()
            .map(|&b| {
                if b < 32 && b != b'\t' || b == 127 {
                    b' '
                } else {
                    b
                }
            })
            .collect();
        pos = next;
        if first {
            let mut whole = Vec::with_capacity(name.len() + 1 + line.len());
            whole.extend_from_slice(name.as_bytes());
            whole.push(b':');
            whole.extend_from_slice(&line);
            push_long_line(out, &whole);
            first = false;
        } else if !is_blank(&line) {
            push_long_line(out, &line);
        }
    }
}

/// Writes one header line, folding it if it is longer than 998 octets: at the last whitespace
/// that fits, or by cutting (at a UTF-8 character boundary where possible) where there is none.
/// Every piece after the first starts with whitespace, so that it is a continuation line.
pub(crate) fn push_long_line(out: &mut Vec<u8>, line: &[u8]) {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let mut rest = line;
    let mut indent = false;
    loop {
        let budget = if indent { MAX_LINE - 1 } else { MAX_LINE };
        if rest.len() <= budget {
            if indent {
                out.push(b' ');
            }
            out.extend_from_slice(rest);
            out.extend_from_slice(b"\r\n");
            return;
        }
        let at_whitespace = rest[1..=budget]
            .iter()
            .rposition(is_ws)
            .map(|i| i + 1)
            .filter(|&at| !is_blank(&rest[..at]));
        let at = at_whitespace.unwrap_or_else(|| {
            let mut at = budget;
            while at > budget - 3 && rest.get(at).is_some_and(|&b| b & 0xC0 == 0x80) {
                at -= 1;
            }
            at
        });
        if indent {
            out.push(b' ');
        }
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[at..];
        if is_blank(rest) {
            return;
        }
        indent = !rest.first().is_some_and(is_ws);
    }
}

/// One mailbox of an address field, as mail-parser reads it (RFC 2047 words decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mailbox {
    pub name: Option<String>,
    pub address: Option<String>,
}

/// Reads the mailboxes of an address field's raw value (groups are flattened).
pub(crate) fn parse_mailboxes(raw_value: &[u8]) -> Vec<Mailbox> {
    let mut buf = Vec::with_capacity(raw_value.len() + 9);
    buf.extend_from_slice(b"From:");
    buf.extend_from_slice(raw_value);
    if !buf.ends_with(b"\n") {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    let Some(message) = mail_parser::MessageParser::default().parse_headers(&buf) else {
        return Vec::new();
    };
    let Some(address) = message.from() else {
        return Vec::new();
    };
    address
        .iter()
        .map(|a| Mailbox {
            name: a.name().map(str::to_owned),
            address: a.address().map(|s| s.trim().to_owned()),
        })
        .collect()
}

/// True for something that looks like an `addr-spec` (`local@domain`, nothing that would let it
/// be read as more than one address).
pub(crate) fn plausible_address(address: &str) -> bool {
    let Some(at) = address.rfind('@') else {
        return false;
    };
    at > 0
        && at + 1 < address.len()
        && address.len() <= 320
        && !address
            .bytes()
            .any(|b| b <= b' ' || b == 127 || b"<>(),;:\\\"".contains(&b))
}

/// Characters that reorder text on screen (a display-name spoofing trick).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The longest display name we write, in characters.
const MAX_NAME_CHARS: usize = 128;

/// Makes a display name safe to show next to our address: control and bidi characters become
/// spaces, whitespace is collapsed, and every word with an at sign (`@`, or the full-width
/// and small look-alikes) is removed, so that no client can take an address in the name for
/// the sender. Returns `None` when nothing readable is left.
pub(crate) fn clean_display_name(name: &str) -> Option<String> {
    let spaced: String = name
        .chars()
        .map(|c| {
            if c.is_control() || is_bidi_control(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    let words: Vec<&str> = spaced
        .split_whitespace()
        .filter(|w| !w.contains(['@', '\u{FF20}', '\u{FE6B}']))
        .collect();
    let joined = words.join(" ");
    let clipped: String = joined.chars().take(MAX_NAME_CHARS).collect();
    let clipped = clipped.trim_end();
    clipped
        .chars()
        .any(char::is_alphanumeric)
        .then(|| clipped.to_owned())
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// A display name as header tokens: plain words where it is all atoms, one quoted string
/// where it has specials, RFC 2047 encoded words (UTF-8, base64) where it is not ASCII or
/// holds something a client could decode as an encoded word (`=?`).
pub(crate) fn display_name_tokens(name: &str) -> Vec<Vec<u8>> {
    if name.is_ascii() && !name.contains("=?") {
        if name
            .split(' ')
            .all(|w| !w.is_empty() && w.bytes().all(is_atext))
        {
            return name.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        }
        let mut quoted = Vec::with_capacity(name.len() + 2);
        quoted.push(b'"');
        for b in name.bytes() {
            if b == b'"' || b == b'\\' {
                quoted.push(b'\\');
            }
            quoted.push(b);
        }
        quoted.push(b'"');
        return vec![quoted];
    }
    encoded_words(name)
}

/// RFC 2047 encoded words for `text`, each at most 75 octets and made of whole characters.
fn encoded_words(text: &str) -> Vec<Vec<u8>> {
    // 45 octets of UTF-8 become 60 base64 characters: 72 octets with the delimiters.
    const CHUNK: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > CHUNK {
            words.push(encoded_word(&chunk));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(encoded_word(&chunk));
    }
    words
}

fn encoded_word(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
    .into_bytes()
}

/// Drops what cannot be part of a single header token (whitespace, controls, angle brackets):
/// for configured addresses and host names we put in headers.
pub(crate) fn header_token(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_whitespace() && !c.is_control() && c != '<' && c != '>')
        .collect()
}
