//! Content-Transfer-Encodings (RFC 2045): quoted-printable and base64, both ways.
//!
//! Decoding is lenient the way readers are (a bad `=` escape stays as it is); base64 that does
//! not decode is reported, so that a caller leaves that part alone rather than guess.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Encoded lines are at most this long (RFC 2045 6.7 and 6.8), CRLF excluded.
pub(crate) const LINE: usize = 76;

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes a quoted-printable body. Line breaks (LF or CRLF) become CRLF; whitespace at the
/// end of an encoded line is dropped (RFC 2045 6.7 rule 3); `=` at the end of a line is a soft
/// line break.
pub(crate) fn qp_decode(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut lines = encoded.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed_len = line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let line = &line[..trimmed_len];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            if b == b'=' {
                let hi = line.get(i + 1).copied().and_then(hex_value);
                let lo = line.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
            }
            out.push(b);
            i += 1;
        }
        if !soft && !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Encodes text as quoted-printable: CRLF (or a bare LF) in `text` is a line break, lines are
/// at most 76 octets with soft line breaks, whitespace before a line break is encoded.
pub(crate) fn qp_encode(out: &mut Vec<u8>, text: &[u8]) {
    let mut line_len = 0;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'\n' || (b == b'\r' && text.get(i + 1) == Some(&b'\n')) {
            out.extend_from_slice(b"\r\n");
            line_len = 0;
            i += if b == b'\r' { 2 } else { 1 };
            continue;
        }
        let next = text.get(i + 1).copied();
        let at_line_end = matches!(next, None | Some(b'\n'))
            || (next == Some(b'\r') && text.get(i + 2) == Some(&b'\n'));
        let literal = match b {
            b' ' | b'\t' => !at_line_end,
            b'=' => false,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Leave room for the `=` of a soft break unless this is the line's last character.
        let room = if at_line_end { LINE } else { LINE - 1 };
        if line_len + width > room {
            out.extend_from_slice(b"=\r\n");
            line_len = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.push(b'=');
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
        line_len += width;
        i += 1;
    }
}

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes a base64 body, ignoring whitespace and line breaks; `None` if it is not base64.
pub(crate) fn base64_decode(encoded: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = encoded
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    LENIENT.decode(compact).ok()
}

/// Encodes `data` as base64 in lines of 76 characters, each ended by CRLF.
pub(crate) fn base64_encode(out: &mut Vec<u8>, data: &[u8]) {
    // 57 octets make one 76-character line.
    for chunk in data.chunks(LINE / 4 * 3) {
        let start = out.len();
        out.resize(start + chunk.len().div_ceil(3) * 4, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_round_trip_keeps_text() {
        let texts: [&[u8]; 6] = [
            b"plain line\r\nsecond line\r\n",
            b"ends without newline",
            "caf\u{e9} = \u{20ac} and trailing space \r\nnext\t\r\n".as_bytes(),
            &[b'x'; 300],
            b"=3D literally\r\n.\r\nFrom here\r\n",
            b"",
        ];
        for text in texts {
            let mut enc = Vec::new();
            qp_encode(&mut enc, text);
            for line in enc.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(line.len() <= LINE, "line too long: {}", line.len());
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
            }
            assert_eq!(qp_decode(&enc), text);
        }
    }

    #[test]
    fn qp_decode_is_lenient() {
        assert_eq!(qp_decode(b"a=\r\nb =\nc =4 =zz=4"), b"ab c =4 =zz=4");
        assert_eq!(qp_decode(b"x=C3=A9   \r\ny"), "x\u{e9}\r\ny".as_bytes());
        assert_eq!(qp_decode(b"lower=c3=a9"), "lower\u{e9}".as_bytes());
    }

    #[test]
    fn qp_soft_breaks_never_split_an_escape() {
        let text = "\u{e9}".repeat(100);
        let mut enc = Vec::new();
        qp_encode(&mut enc, text.as_bytes());
        for line in enc.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let body = line.strip_suffix(b"=").unwrap_or(line);
            assert_eq!(body.len() % 3, 0, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(qp_decode(&enc), text.as_bytes());
    }

    #[test]
    fn base64_round_trip_and_line_length() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut enc = Vec::new();
        base64_encode(&mut enc, &data);
        for line in enc.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.strip_suffix(b"\r").unwrap_or(line).len() <= LINE);
        }
        assert_eq!(base64_decode(&enc).as_deref(), Some(&data[..]));
        assert_eq!(base64_decode(b"aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode(b"not base64!"), None);
    }
}
