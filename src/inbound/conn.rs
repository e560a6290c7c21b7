//! The buffered I/O under one SMTP session: bounded line reads and batched replies.
//!
//! Two rules from PIPELINING (RFC 2920) shape it. Input is read line by line out of one read
//! buffer, so commands a client sends in one packet are all seen and none is lost. Replies are
//! collected and written only when the read buffer runs dry, i.e. just before we would block
//! waiting for the client: a pipelined MAIL/RCPT/RCPT/DATA gets its four replies in one write,
//! and a client that waits for each reply still gets it at once.
//!
//! Memory stays bounded whatever the client does: the read buffer has a fixed capacity, a
//! command line is never kept beyond the configured maximum (the rest of an overlong line is
//! discarded as it arrives), and queued replies are only a few per buffered command.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::reply::Reply;

/// A connection's byte stream, plain TCP or TLS: boxed, so that STARTTLS can swap one for
/// the other under a running session.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub(super) type BoxStream = Box<dyn Stream>;

/// Read buffer capacity: also the largest chunk DATA content is handled in.
const READ_BUFFER: usize = 16 * 1024;

/// What [`Conn::read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A complete line, terminator included, is in the caller's buffer.
    Complete,
    /// The line was longer than allowed; it has been read and thrown away.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

pub(super) struct Conn<S> {
    /// Reads are buffered; writes go straight through to the stream.
    stream: BufReader<S>,
    out: Vec<u8>,
    /// Bound on each flush: a client that stops reading its replies cannot pin the session.
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, write_timeout: Duration) -> Self {
        Conn {
            stream: BufReader::with_capacity(READ_BUFFER, stream),
            out: Vec::with_capacity(1024),
            write_timeout,
        }
    }

    /// Queues a reply; it goes out with the next flush.
    pub fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Writes the queued replies.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(self.write_timeout, async {
            let writer = self.stream.get_mut();
            writer.write_all(&self.out).await?;
            writer.flush().await
        })
        .await;
        self.out.clear();
        match written {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client does not read its replies",
            )),
        }
    }

    /// Flushes only if reading next would have to wait for the client.
    pub async fn flush_if_idle(&mut self) -> io::Result<()> {
        if self.stream.buffer().is_empty() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Reads one line (up to and including LF) into `line`, which is cleared first. At most
    /// `max` bytes, terminator included, are kept: past that the rest of the line is read and
    /// discarded, and the result is [`Line::TooLong`].
    ///
    /// Cancel safety: cancelling loses the partial line, so only cancel to end the session.
    pub async fn read_line(&mut self, line: &mut Vec<u8>, max: usize) -> io::Result<Line> {
        line.clear();
        let mut too_long = false;
        loop {
            self.flush_if_idle().await?;
            let buf = self.stream.fill_buf().await?;
            if buf.is_empty() {
                line.clear();
                return Ok(Line::Eof);
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let used = chunk.len();
            if !too_long {
                if line.len() + chunk.len() > max {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            self.stream.consume(used);
            if done {
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Complete
                });
            }
        }
    }

    /// The buffered input, reading more (after flushing) if there is none. Empty means the
    /// client closed the connection. Pair with [`Conn::consume`].
    pub async fn fill(&mut self) -> io::Result<&[u8]> {
        self.flush_if_idle().await?;
        self.stream.fill_buf().await
    }

    pub fn consume(&mut self, n: usize) {
        self.stream.consume(n);
    }

    /// Sends what is queued and closes our side, so the client sees the last reply and then
    /// end of file. Errors no longer matter at this point.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.stream.get_mut().shutdown()).await;
    }
}

impl Conn<BoxStream> {
    /// Takes the stream out for a TLS handshake (STARTTLS), after the queued replies have
    /// been sent. Whatever the client sent after its command and is still unread is thrown
    /// away, never read as if it had come over TLS (RFC 3207 section 6, CVE-2011-0411); the
    /// number of bytes dropped is returned. Until [`Conn::put_stream`] the connection reads
    /// end of file and swallows writes.
    pub async fn take_stream(&mut self) -> io::Result<(BoxStream, usize)> {
        self.flush().await?;
        let placeholder: BoxStream =
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
        let old = std::mem::replace(
            &mut self.stream,
            BufReader::with_capacity(READ_BUFFER, placeholder),
        );
        let discarded = old.buffer().len();
        Ok((old.into_inner(), discarded))
    }

    pub fn put_stream(&mut self, stream: BoxStream) {
        self.stream = BufReader::with_capacity(READ_BUFFER, stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut conn = Conn::new(
            tokio::io::join(input, tokio::io::sink()),
            Duration::from_secs(1),
        );
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            let r = conn.read_line(&mut line, max).await.expect("read");
            let eof = r == Line::Eof;
            out.push((r, line.clone()));
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_bounds_them() {
        let got = lines(b"NOOP\r\nAAAAAAAAAAAA\r\nQUIT\nrest", 10).await;
        assert_eq!(
            got,
            vec![
                (Line::Complete, b"NOOP\r\n".to_vec()),
                (Line::TooLong, Vec::new()),
                (Line::Complete, b"QUIT\n".to_vec()),
                (Line::Eof, Vec::new()),
            ]
        );
        // Exactly at the limit is fine.
        let got = lines(b"12345678\r\n", 10).await;
        assert_eq!(got[0], (Line::Complete, b"12345678\r\n".to_vec()));
    }

    #[tokio::test]
    async fn overlong_line_spanning_buffers_is_discarded_in_pieces() {
        let mut input = vec![b'x'; READ_BUFFER * 3];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let got = lines(&input, 512).await;
        assert_eq!(got[0].0, Line::TooLong);
        assert_eq!(got[1], (Line::Complete, b"NOOP\r\n".to_vec()));
    }
}
