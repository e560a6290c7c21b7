//! DATA reception: the message content after `354`, streamed into the spool.
//!
//! The content is dot-stuffed on the wire (RFC 5321 4.5.2): a line starting with `.` has had
//! one more `.` put in front, and a line holding only `.` ends the message. [`Unstuffer`]
//! undoes that as a state machine over arbitrary chunks, so a `\r\n.\r\n` split across two
//! reads is still found and the message never has to sit in memory: each chunk of the read
//! buffer is unstuffed into a buffer of about the same size and written to the spool file.
//!
//! Being liberal in what we accept: local apps written on Unix often end lines with a bare LF,
//! so `\n.\n` (and the mixed forms) end the message too. The body is stored as received
//! otherwise; line endings are not rewritten here.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::conn::Conn;
use crate::queue::{Incoming, SpoolError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: a `.` here is either stuffing or the terminator.
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` and CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
}

/// Undoes dot-stuffing and finds the end of the content, across chunk boundaries.
#[derive(Debug)]
pub struct Unstuffer {
    state: State,
}

/// What [`Unstuffer::feed`] found in one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// No terminator yet; the whole chunk was used.
    More,
    /// The terminator ends after this many bytes of the chunk; the rest is the next command.
    End(usize),
}

impl Default for Unstuffer {
    fn default() -> Self {
        // DATA content starts at the start of a line, so a lone `.` right after the 354 is an
        // empty message.
        Unstuffer {
            state: State::LineStart,
        }
    }
}

impl Unstuffer {
    /// Appends the unstuffed content of `input` to `out`: never more bytes than `input`, plus
    /// at most the one CR held back from the previous chunk (a line-start `.` CR that turned
    /// out not to be the terminator).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut rest = input;
        while let Some((&b, tail)) = rest.split_first() {
            match self.state {
                State::Mid => {
                    // The common case: copy up to and including the next LF in one go.
                    match rest.iter().position(|&c| c == b'\n') {
                        Some(i) => {
                            let (line, after) = rest.split_at(i + 1);
                            out.extend_from_slice(line);
                            rest = after;
                            self.state = State::LineStart;
                        }
                        None => {
                            out.extend_from_slice(rest);
                            rest = &[];
                        }
                    }
                    continue;
                }
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                    } else {
                        out.push(b);
                        if b != b'\n' {
                            self.state = State::Mid;
                        }
                    }
                }
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    b'\n' => return Feed::End(input.len() - tail.len()),
                    // `..x` or `.x`: the leading dot goes, the rest of the line stays.
                    _ => {
                        out.push(b);
                        self.state = State::Mid;
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        return Feed::End(input.len() - tail.len());
                    }
                    // `.` CR and then not LF: a bare CR on a stuffed line, which is content.
                    // Look at this byte again as part of the line.
                    out.push(b'\r');
                    self.state = State::Mid;
                    continue;
                }
            }
            rest = tail;
        }
        Feed::More
    }
}

/// How reception ended when the client kept to the protocol.
pub(super) enum Outcome {
    /// The whole message is in the spool file, ready to commit.
    Stored(Incoming),
    /// Over the size limit: read to the end and thrown away.
    TooBig,
    /// The spool failed while writing; the rest was read and thrown away.
    Failed(SpoolError),
}

/// How reception ended when it could not finish; the session is over.
pub(super) enum Abort {
    Timeout,
    Closed(Option<io::Error>),
}

/// Where content goes while it is being read.
enum Sink {
    Spool(Incoming),
    Discard(Outcome),
}

/// Reads the content up to and including the terminator into `incoming`, allowing at most
/// `max_size` bytes of content and waiting at most `timeout` for each chunk, and never
/// beyond `deadline` (the end of the session's allowed lifetime). After an
/// oversize or a spool error it keeps reading to the terminator, so the session stays in step
/// with the client and can report the failure and go on. Dropping the `Incoming` on any
/// failure removes its file.
pub(super) async fn receive<S>(
    conn: &mut Conn<S>,
    incoming: Incoming,
    max_size: u64,
    timeout: Duration,
    deadline: Instant,
) -> Result<Outcome, Abort>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut unstuffer = Unstuffer::default();
    let mut body = Vec::new();
    let mut size: u64 = 0;
    let mut sink = Sink::Spool(incoming);
    loop {
        let until = (Instant::now() + timeout).min(deadline);
        let chunk = match tokio::time::timeout_at(until, conn.fill()).await {
            Err(_) => return Err(Abort::Timeout),
            Ok(Err(e)) => return Err(Abort::Closed(Some(e))),
            Ok(Ok(chunk)) => chunk,
        };
        if chunk.is_empty() {
            return Err(Abort::Closed(None));
        }
        let feed = unstuffer.feed(chunk, &mut body);
        let used = match feed {
            Feed::End(n) => n,
            Feed::More => chunk.len(),
        };
        conn.consume(used);

        size = size.saturating_add(body.len() as u64);
        if let Sink::Spool(incoming) = &mut sink {
            if size > max_size {
                sink = Sink::Discard(Outcome::TooBig);
            } else if let Err(e) = incoming.write(&body).await {
                sink = Sink::Discard(Outcome::Failed(e));
            }
        }
        body.clear();

        if feed != Feed::More {
            return Ok(match sink {
                Sink::Spool(incoming) => Outcome::Stored(incoming),
                Sink::Discard(outcome) => outcome,
            });
        }
    }
}

/// The `with` protocol of the trace header (RFC 3848): ESMTP plus S for TLS and A for an
/// authenticated client.
pub(super) fn protocol(extended: bool, tls: bool, authenticated: bool) -> &'static str {
    match (extended, tls, authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

/// The `Received:` trace header we put on top of each message (RFC 5321 4.4): who handed it
/// to us, under what name, and the queue id that ties the message to our logs.
pub(super) fn trace_header(
    helo: &str,
    with: &str,
    peer: IpAddr,
    hostname: &str,
    queue_id: &str,
    date: time::OffsetDateTime,
) -> String {
    // The EHLO name is the client's word: keep it to visible ASCII that cannot open a comment
    // or end the clause early.
    let helo: String = helo
        .chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';' | '\\') {
                c
            } else {
                '?'
            }
        })
        .collect();
    let ip = match peer.to_canonical() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("IPv6:{a}"),
    };
    let date = date
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into());
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {hostname} (authrelay) with {with} id {queue_id};\r\n\t{date}\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `step` bytes; returns the content and where it ended.
    fn unstuff(input: &[u8], step: usize) -> (Vec<u8>, Option<usize>) {
        let mut u = Unstuffer::default();
        let mut out = Vec::new();
        let mut offset = 0;
        for chunk in input.chunks(step) {
            if let Feed::End(n) = u.feed(chunk, &mut out) {
                return (out, Some(offset + n));
            }
            offset += chunk.len();
        }
        (out, None)
    }

    fn check(input: &[u8], content: &[u8], end: Option<usize>) {
        for step in 1..=input.len().max(1) {
            assert_eq!(
                unstuff(input, step),
                (content.to_vec(), end),
                "input {:?} in chunks of {step}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn plain_message() {
        check(
            b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
            b"Subject: x\r\n\r\nhi\r\n",
            Some(21),
        );
    }

    #[test]
    fn dots_are_unstuffed() {
        check(b"..x\r\n.\r\n", b".x\r\n", Some(8));
        check(b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", Some(13));
        check(b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n", Some(11));
        // A dot that is not at the start of a line is content.
        check(b"a.b\r\nc.\r\n.\r\n", b"a.b\r\nc.\r\n", Some(12));
        // `.x` is not valid stuffing, but the rule is the same: the first dot goes.
        check(b".x\r\n.\r\n", b"x\r\n", Some(7));
    }

    #[test]
    fn empty_message() {
        check(b".\r\n", b"", Some(3));
        check(b".\n", b"", Some(2));
    }

    #[test]
    fn bare_lf_is_accepted() {
        check(b"a\n..b\n.\n", b"a\n.b\n", Some(8));
        check(b"a\r\n.\n", b"a\r\n", Some(5));
        check(b"a\n.\r\n", b"a\n", Some(5));
    }

    #[test]
    fn lookalikes_do_not_end_the_message() {
        check(b"a\r\n.\rb\r\n", b"a\r\n\rb\r\n", None);
        check(b"a\r\n. \r\n", b"a\r\n \r\n", None);
        check(b"a\r.\r\n", b"a\r.\r\n", None);
        check(b"", b"", None);
    }

    #[test]
    fn trace_header_format() {
        let date = time::macros::datetime!(2026-06-30 12:34:56 UTC);
        let h = trace_header(
            "app01(x);\r\n",
            "ESMTP",
            "::ffff:127.0.0.1".parse().expect("ip"),
            "relay.test",
            "ABC123",
            date,
        );
        assert_eq!(
            h,
            "Received: from app01?x???? ([127.0.0.1])\r\n\tby relay.test (authrelay) with ESMTP id ABC123;\r\n\tTue, 30 Jun 2026 12:34:56 +0000\r\n"
        );
        let h = trace_header("h", "SMTP", "::1".parse().expect("ip"), "r", "I", date);
        assert!(h.starts_with("Received: from h ([IPv6:::1])"), "{h}");
        assert!(h.contains(" with SMTP id I;"), "{h}");
        assert_eq!(protocol(true, true, true), "ESMTPSA");
        assert_eq!(protocol(true, false, true), "ESMTPA");
        assert_eq!(protocol(true, true, false), "ESMTPS");
        assert_eq!(protocol(false, true, true), "SMTP");
    }
}
