//! Just enough RFC 5322 header reading for the fake's checks: the `From:` address (Send As)
//! and the `To`/`Cc`/`Bcc` recipients of a Graph MIME submission. Not a MIME parser.

/// The header block (before the first empty line), if the message has a header/body separator.
pub(crate) fn header_block(data: &[u8]) -> Option<&[u8]> {
    if data.starts_with(b"\r\n") || data.starts_with(b"\n") {
        return Some(&data[..0]);
    }
    let crlf = find(data, b"\r\n\r\n").map(|i| i + 2);
    let lf = find(data, b"\n\n").map(|i| i + 1);
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(&data[..end])
}

/// The header block, or the whole message if it has no body.
pub(crate) fn header_block_or_all(data: &[u8]) -> &[u8] {
    header_block(data).unwrap_or(data)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Unfolded `(name, value)` pairs of a header block.
pub(crate) fn fields(block: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(block);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

/// The unfolded values of every header field `name` (case-insensitive), in order: what the
/// tests read back from a delivered message.
pub fn header(data: &str, name: &str) -> Vec<String> {
    fields(header_block_or_all(data.as_bytes()))
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// All addresses in the fields named (case-insensitively) any of `names`, in order.
pub(crate) fn addresses(block: &[u8], names: &[&str]) -> Vec<String> {
    fields(block)
        .into_iter()
        .filter(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .flat_map(|(_, value)| address_list(&value))
        .collect()
}

/// The first address of the `From:` field.
pub(crate) fn from_address(data: &[u8]) -> Option<String> {
    addresses(header_block_or_all(data), &["From"])
        .into_iter()
        .next()
}

/// Addresses of an address-list value: `"Doe, J" <j@x>, k@y (comment), group: a@b;`.
pub(crate) fn address_list(value: &str) -> Vec<String> {
    fn finish(piece: &str, out: &mut Vec<String>) {
        let addr = match piece.rfind('<') {
            Some(i) => piece[i + 1..].split('>').next().unwrap_or(""),
            None => piece,
        }
        .trim();
        if addr.contains('@') {
            out.push(addr.to_string());
        }
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut angle, mut comment, mut escaped) = (false, false, 0u32, false);
    for ch in value.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
            continue;
        }
        match ch {
            '\\' if quoted || comment > 0 => escaped = true,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            '<' if !quoted => {
                angle = true;
                cur.push(ch);
            }
            '>' if !quoted => {
                angle = false;
                cur.push(ch);
            }
            ',' | ';' if !quoted && !angle => {
                finish(&cur, &mut out);
                cur.clear();
            }
            ':' if !quoted && !angle => cur.clear(),
            _ => cur.push(ch),
        }
    }
    finish(&cur, &mut out);
    out
}
