//! The MIME side of the rewrite: what an entity's headers say about its body, walking
//! multipart bodies, and adding the signature to the first text/plain and text/html parts.
//!
//! Everything not being signed is copied byte for byte (only bare LFs become CRLF). Parts are
//! never decoded unless they are the text part that gets the signature.

use std::ops::Range;

use super::cte;
use super::header::{self, Action, Field, push_range};

/// Multiparts nested deeper than this are copied as they are.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Multipart {
        boundary: Vec<u8>,
        digest: bool,
    },
    /// Signed or encrypted (S/MIME, PGP/MIME): the body must stay byte-identical.
    Protected,
    Plain,
    Html,
    /// Anything else, and anything we could not read with confidence.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cte {
    SevenBit,
    EightBit,
    Binary,
    QuotedPrintable,
    Base64,
    Unknown,
}

/// What an entity's header section says about its body.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub kind: Kind,
    pub cte: Cte,
    /// The charset parameter, lower-cased.
    pub charset: Option<String>,
    pub attachment: bool,
    pub content_type: Option<usize>,
    pub transfer_encoding: Option<usize>,
}

/// A Content-Type or Content-Disposition value read by mail-parser (RFC 2231 parameters
/// included): (type, subtype, parameters), all names lower-cased.
type ContentType = (String, String, Vec<(String, String)>);

fn parse_content_type(raw_value: &[u8]) -> Option<ContentType> {
    let mut buf = Vec::with_capacity(raw_value.len() + 17);
    buf.extend_from_slice(b"Content-Type:");
    buf.extend_from_slice(raw_value);
    if !buf.ends_with(b"\n") {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    let message = mail_parser::MessageParser::default().parse_headers(&buf)?;
    let ct = mail_parser::MimeHeaders::content_type(&message)?;
    // mail-parser runs the subtype on to the next `;`: `multipart/signed protocol=...`
    // (the `;` forgotten) gives "signed protocol=...". Readers stop at the token's end.
    let subtype = ct.subtype().unwrap_or_default();
    let subtype = subtype
        .split(|c: char| c.is_whitespace() || c.is_control() || "()<>@,;:\\\"/[]?=".contains(c))
        .next()
        .unwrap_or_default();
    Some((
        ct.ctype().to_ascii_lowercase(),
        subtype.to_ascii_lowercase(),
        ct.attributes()
            .unwrap_or_default()
            .iter()
            .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
            .collect(),
    ))
}

/// Reads an entity's header section. `in_digest`: the entity is a part of a multipart/digest,
/// where the default type is message/rfc822.
pub(crate) fn entity_info(input: &[u8], fields: &[Field], in_digest: bool) -> Info {
    let find = |name: &str| -> Vec<usize> {
        fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is(input, name))
            .map(|(i, _)| i)
            .collect()
    };
    let content_types = find("Content-Type");
    let encodings = find("Content-Transfer-Encoding");
    let dispositions = find("Content-Disposition");
    let mut info = Info {
        kind: Kind::Other,
        cte: Cte::SevenBit,
        charset: None,
        attachment: false,
        content_type: content_types.first().copied(),
        transfer_encoding: encodings.first().copied(),
    };
    // Two of either leave readers to disagree on what the body is: leave it alone.
    if content_types.len() > 1 || encodings.len() > 1 {
        return info;
    }
    if let Some(&i) = encodings.first() {
        let value = String::from_utf8_lossy(fields[i].value(input));
        let token = value
            .split('(')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        info.cte = match token.as_str() {
            "7bit" | "" => Cte::SevenBit,
            "8bit" => Cte::EightBit,
            "binary" => Cte::Binary,
            "quoted-printable" => Cte::QuotedPrintable,
            "base64" => Cte::Base64,
            _ => Cte::Unknown,
        };
    }
    if let Some(&i) = dispositions.first() {
        info.attachment = parse_content_type(fields[i].value(input))
            .is_some_and(|(disposition, _, _)| disposition == "attachment");
    }
    let (ctype, subtype, params) = match content_types.first() {
        None if in_digest => return info,
        None => ("text".to_owned(), "plain".to_owned(), Vec::new()),
        Some(&i) => match parse_content_type(fields[i].value(input)) {
            Some(ct) => ct,
            None => return info,
        },
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    info.charset = param("charset").map(|c| c.trim().to_ascii_lowercase());
    info.kind = match (ctype.as_str(), subtype.as_str()) {
        ("multipart", "signed" | "encrypted") => Kind::Protected,
        ("application", "pkcs7-mime" | "x-pkcs7-mime") => Kind::Protected,
        ("multipart", _) => match param("boundary") {
            // A multipart must not be encoded (RFC 2046 5.1).
            Some(b)
                if !b.is_empty()
                    && matches!(info.cte, Cte::SevenBit | Cte::EightBit | Cte::Binary) =>
            {
                Kind::Multipart {
                    boundary: b.as_bytes().to_vec(),
                    digest: subtype == "digest",
                }
            }
            _ => Kind::Other,
        },
        ("text", "plain") => Kind::Plain,
        ("text", "html") => Kind::Html,
        _ => Kind::Other,
    };
    info
}

/// Splits a multipart body into its parts' ranges (between a delimiter line and the line
/// break before the next one). A delimiter line starts with `--boundary` (RFC 2046 5.1.1:
/// the rest of the line is padding, or `--` for the last one). Preamble and epilogue are what
/// lies outside the ranges. Without a closing delimiter, the last part runs to the end.
pub(crate) fn find_parts(input: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let mut previous_line_end = body.start;
    let mut pos = body.start;
    while pos < body.end {
        let (content_end, next) = header::line_at(input, pos, body.end);
        let line = &input[pos..content_end];
        if let Some(after) = line
            .strip_prefix(b"--")
            .and_then(|l| l.strip_prefix(boundary))
        {
            if let Some(start) = open.take() {
                parts.push(start..previous_line_end.max(start));
            }
            if after.starts_with(b"--") {
                return parts;
            }
            open = Some(next);
        }
        previous_line_end = content_end;
        pos = next;
    }
    if let Some(start) = open {
        parts.push(start..body.end.max(start));
    }
    parts
}

/// How a charset takes the text we append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// us-ascii, or none given (which means us-ascii).
    Ascii,
    Utf8,
    /// ISO-8859-1 and windows-1252: U+00A0..U+00FF are one octet of the same value.
    Latin1,
    /// Takes ASCII as it is, other characters we do not transcode.
    AsciiCompatible,
    /// UTF-16/32, UTF-7 and the like: even ASCII is not ASCII there.
    Incompatible,
}

fn classify(charset: Option<&str>) -> Charset {
    let Some(c) = charset else {
        return Charset::Ascii;
    };
    match c {
        "" | "us-ascii" | "ascii" | "ansi_x3.4-1968" => Charset::Ascii,
        "utf-8" | "utf8" => Charset::Utf8,
        "iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "l1" | "windows-1252" | "cp1252" => {
            Charset::Latin1
        }
        c if [
            "utf-16",
            "utf-32",
            "ucs-2",
            "ucs-4",
            "utf-7",
            "unicode",
            "csunicode",
        ]
        .iter()
        .any(|p| c.starts_with(p)) =>
        {
            Charset::Incompatible
        }
        _ => Charset::AsciiCompatible,
    }
}

/// The signature, and which of the two parts still want it.
#[derive(Debug)]
pub(crate) struct Signer {
    /// The signature's lines, control characters removed.
    lines: Vec<String>,
    plain_pending: bool,
    html_pending: bool,
}

/// A text part with the signature in it, ready to be written.
#[derive(Debug)]
pub(crate) struct Edit {
    /// The decoded body with the signature added.
    text: Vec<u8>,
    cte: Cte,
    /// Replacement lines for the Content-Type field (when the charset had to become UTF-8).
    content_type: Option<Vec<u8>>,
    /// Replacement lines for the Content-Transfer-Encoding field (when it had to change).
    transfer_encoding: Option<Vec<u8>>,
}

impl Signer {
    pub fn new(signature: Option<&str>) -> Self {
        let lines: Vec<String> = signature
            .unwrap_or_default()
            .lines()
            .map(|l| {
                l.chars()
                    .filter(|&c| c == '\t' || !c.is_control())
                    .collect::<String>()
            })
            .collect();
        // Trailing empty lines (a TOML multi-line string ends with one) add nothing.
        let keep = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        let lines = lines.into_iter().take(keep).collect::<Vec<_>>();
        let some = !lines.is_empty();
        Signer {
            lines,
            plain_pending: some,
            html_pending: some,
        }
    }

    pub fn pending(&self) -> bool {
        self.plain_pending || self.html_pending
    }

    /// The plain-text signature block: `\r\n-- \r\n<signature>\r\n`.
    fn plain_block(&self) -> String {
        format!("\r\n-- \r\n{}\r\n", self.lines.join("\r\n"))
    }

    /// The HTML signature block: `<br>-- <br>` and the escaped lines, each ended by `<br>`
    /// but the last. Non-ASCII characters become numeric references, so the block is ASCII
    /// and fits any ASCII-compatible charset.
    fn html_block(&self) -> Vec<u8> {
        let mut out = String::from("<br>-- <br>\r\n");
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push_str("<br>\r\n");
            }
            for c in line.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#39;"),
                    c if c.is_ascii() => out.push(c),
                    c => out.push_str(&format!("&#{};", u32::from(c))),
                }
            }
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Plans the signature for a text entity with header section `fields` (as read into
    /// `info`) and body `input[body]`. Marks the plain or html slot as used when this is the
    /// first such part, whether or not the signature fits it: the signature goes to the first
    /// text part a reader sees, or to none. Returns `None` to leave the entity untouched:
    /// attachments, unknown or UTF-16-like charsets, a non-ASCII signature a charset cannot
    /// take, base64 that does not decode, inline PGP.
    pub fn plan(
        &mut self,
        input: &[u8],
        fields: &[Field],
        info: &Info,
        body: Range<usize>,
    ) -> Option<Edit> {
        let html = match info.kind {
            Kind::Plain => false,
            Kind::Html => true,
            _ => return None,
        };
        if info.attachment {
            return None;
        }
        let slot = if html {
            &mut self.html_pending
        } else {
            &mut self.plain_pending
        };
        if !*slot {
            return None;
        }
        *slot = false;

        let charset = classify(info.charset.as_deref());
        if charset == Charset::Incompatible {
            return None;
        }
        let raw = input.get(body)?;
        let mut text = match info.cte {
            Cte::SevenBit | Cte::EightBit | Cte::Binary => {
                let mut t = Vec::with_capacity(raw.len() + 256);
                push_range(&mut t, raw, 0, raw.len());
                t
            }
            Cte::QuotedPrintable => cte::qp_decode(raw),
            Cte::Base64 => cte::base64_decode(raw)?,
            Cte::Unknown => return None,
        };
        // Text after an inline PGP block would read as signed when it is not.
        if contains(&text, b"-----BEGIN PGP ") {
            return None;
        }
        let was_ascii = text.is_ascii();
        let was_longest = longest_line(&text);

        let mut relabel = false;
        if html {
            let block = self.html_block();
            match rfind_ignore_case(&text, b"</body") {
                Some(at) => {
                    text.splice(at..at, block);
                }
                None => text.extend_from_slice(&block),
            }
        } else {
            let block = self.plain_block();
            let bytes = if block.is_ascii() {
                block.into_bytes()
            } else {
                match charset {
                    Charset::Utf8 => block.into_bytes(),
                    // A body that is valid UTF-8 (plain ASCII, mostly) can be labelled UTF-8.
                    Charset::Ascii if std::str::from_utf8(&text).is_ok() => {
                        relabel = true;
                        block.into_bytes()
                    }
                    Charset::Latin1 => latin1(&block)?,
                    // We do not transcode into other charsets: no signature rather than
                    // mojibake.
                    _ => return None,
                }
            };
            text.extend_from_slice(&bytes);
        }

        let content_type = if relabel {
            Some(relabelled_content_type(input, fields, info)?)
        } else {
            None
        };
        // 7bit cannot carry 8-bit octets, and no unencoded line may pass 998 octets: when
        // the signature brings either, the part becomes quoted-printable. (A body that broke
        // these rules before keeps its encoding: that is not ours to fix.)
        let too_long = longest_line(&text) > header::MAX_LINE && was_longest <= header::MAX_LINE;
        let needs_qp = match info.cte {
            Cte::SevenBit => (was_ascii && !text.is_ascii()) || too_long,
            Cte::EightBit => too_long,
            _ => false,
        };
        let (cte, transfer_encoding) = if needs_qp {
            (
                Cte::QuotedPrintable,
                Some(b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec()),
            )
        } else {
            (info.cte, None)
        };
        Some(Edit {
            text,
            cte,
            content_type,
            transfer_encoding,
        })
    }
}

impl Edit {
    /// Sets the header changes this edit needs on `actions` (one per field) and `appended`.
    /// Returns true when it changes a MIME field (a top-level caller then makes sure there is
    /// a MIME-Version, without which readers may ignore them).
    pub fn header_changes(
        &self,
        info: &Info,
        actions: &mut [Action],
        appended: &mut Vec<u8>,
    ) -> bool {
        let mut changed = false;
        let slots = [
            (&self.content_type, info.content_type),
            (&self.transfer_encoding, info.transfer_encoding),
        ];
        for (lines, field) in slots {
            let Some(lines) = lines else { continue };
            match field.and_then(|f| actions.get_mut(f)) {
                Some(action) => *action = Action::Replace(lines.clone()),
                None => appended.extend_from_slice(lines),
            }
            changed = true;
        }
        changed
    }

    /// Writes the body in its (possibly new) transfer encoding.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        match self.cte {
            Cte::QuotedPrintable => cte::qp_encode(out, &self.text),
            Cte::Base64 => cte::base64_encode(out, &self.text),
            _ => out.extend_from_slice(&self.text),
        }
    }
}

/// The Content-Type field with its charset made `utf-8` (or added), or `None` if we cannot
/// find the charset parameter to change (RFC 2231 forms, say).
fn relabelled_content_type(input: &[u8], fields: &[Field], info: &Info) -> Option<Vec<u8>> {
    let Some(field) = info.content_type.and_then(|i| fields.get(i)) else {
        return Some(b"Content-Type: text/plain; charset=utf-8\r\n".to_vec());
    };
    let value = field.value(input);
    if contains_ignore_case(value, b"charset*") {
        return None;
    }
    let mut new_value = Vec::with_capacity(value.len() + 16);
    match find_param(value, b"charset") {
        Some(range) => {
            new_value.extend_from_slice(value.get(..range.start)?);
            new_value.extend_from_slice(b"utf-8");
            new_value.extend_from_slice(value.get(range.end..)?);
        }
        None if info.charset.is_none() => {
            let end = value
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            let trimmed = value.get(..end)?;
            new_value.extend_from_slice(trimmed);
            if !trimmed.ends_with(b";") {
                new_value.push(b';');
            }
            new_value.extend_from_slice(b"\r\n charset=utf-8");
        }
        None => return None,
    }
    // Written as a field we make: folded so that no line passes 998 octets, even when the
    // client's line was that long already.
    let name = std::str::from_utf8(input.get(field.name.clone())?).ok()?;
    let mut out = Vec::with_capacity(new_value.len() + name.len() + 8);
    header::push_refolded(&mut out, name, &new_value);
    Some(out)
}

/// The range of parameter `name`'s value (quotes included) in a Content-Type value, skipping
/// quoted strings and comments.
fn find_param(value: &[u8], name: &[u8]) -> Option<Range<usize>> {
    let n = value.len();
    let mut i = 0;
    // Skips whitespace and comments from `i`.
    let skip_cfws = |mut i: usize| -> usize {
        while i < n {
            match value[i] {
                b' ' | b'\t' | b'\r' | b'\n' => i += 1,
                b'(' => {
                    let mut depth = 0usize;
                    while i < n {
                        match value[i] {
                            b'\\' => i += 1,
                            b'(' => depth += 1,
                            b')' => {
                                depth = depth.saturating_sub(1);
                                if depth == 0 {
                                    i += 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                }
                _ => break,
            }
        }
        // An escape as the value's last byte steps one past its end.
        i.min(n)
    };
    let skip_quoted = |mut i: usize| -> usize {
        // `value[i]` is the opening quote.
        i += 1;
        while i < n {
            match value[i] {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        n
    };
    loop {
        // Find the next `;` outside quotes and comments.
        while i < n && value[i] != b';' {
            match value[i] {
                b'"' => i = skip_quoted(i),
                b'(' => i = skip_cfws(i),
                _ => i += 1,
            }
        }
        if i >= n {
            return None;
        }
        i = skip_cfws(i + 1);
        let name_start = i;
        while i < n && !b"=; \t\r\n(\"".contains(&value[i]) {
            i += 1;
        }
        let this_name = &value[name_start..i];
        i = skip_cfws(i);
        if i >= n || value[i] != b'=' {
            continue;
        }
        i = skip_cfws(i + 1);
        let value_start = i;
        if i < n && value[i] == b'"' {
            i = skip_quoted(i);
        } else {
            while i < n && !b"; \t\r\n(".contains(&value[i]) {
                i += 1;
            }
        }
        if this_name.eq_ignore_ascii_case(name) {
            // An empty value at the end of the field: here, not past the line break that
            // skipping whitespace took us over.
            let end = value
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |p| p + 1);
            let start = value_start.min(end);
            return Some(start..i.min(n).clamp(start, end));
        }
    }
}

/// `text` in ISO-8859-1 (which windows-1252 agrees with for these characters), or `None` if a
/// character has no place there.
fn latin1(text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| match u32::from(c) {
            cp @ (0..=0x7F | 0xA0..=0xFF) => u8::try_from(cp).ok(),
            _ => None,
        })
        .collect()
}

fn longest_line(text: &[u8]) -> usize {
    text.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn rfind_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|w| w.eq_ignore_ascii_case(needle))
}

/// Writes a multipart body (`input[body]`), descending into its parts for the signature.
/// Preamble, delimiters and epilogue are copied as they are.
pub(crate) fn write_multipart(
    out: &mut Vec<u8>,
    input: &[u8],
    body: Range<usize>,
    boundary: &[u8],
    digest: bool,
    signer: &mut Signer,
    depth: usize,
) {
    let mut cursor = body.start;
    for part in find_parts(input, body.clone(), boundary) {
        push_range(out, input, cursor, part.start);
        write_part(out, input, part.clone(), digest, signer, depth);
        cursor = part.end;
    }
    push_range(out, input, cursor, body.end);
}

fn write_part(
    out: &mut Vec<u8>,
    input: &[u8],
    part: Range<usize>,
    in_digest: bool,
    signer: &mut Signer,
    depth: usize,
) {
    if !signer.pending() {
        return push_range(out, input, part.start, part.end);
    }
    let section = header::scan(input, part.start, part.end);
    let info = entity_info(input, &section.fields, in_digest);
    let body = section.body_start..part.end;
    match &info.kind {
        Kind::Multipart { boundary, digest } if depth < MAX_DEPTH => {
            push_range(out, input, part.start, section.body_start);
            write_multipart(out, input, body, boundary, *digest, signer, depth + 1);
        }
        Kind::Plain | Kind::Html => match signer.plan(input, &section.fields, &info, body) {
            Some(edit) => {
                let mut actions = vec![Action::Keep; section.fields.len()];
                let mut appended = Vec::new();
                edit.header_changes(&info, &mut actions, &mut appended);
                header::write_section(out, input, &section.fields, &actions, &appended);
                out.extend_from_slice(b"\r\n");
                edit.write_body(out);
            }
            None => push_range(out, input, part.start, part.end),
        },
        _ => push_range(out, input, part.start, part.end),
    }
}
