//! A small SMTP client for handing a message to our own listener, as an app would: used by
//! `send-test` and the sendmail entry point. Going through the listener (rather than writing
//! into the spool) means the message gets exactly the checks and routing any app's mail gets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot connect to {addr}: {source} (is `authrelay run` running?)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for the relay")]
    Timeout,
    /// The relay refused: the reply says why.
    #[error("{command} refused: {reply}")]
    Refused { command: String, reply: String },
}

impl SubmitError {
    /// The SMTP reply code when the relay refused, so callers can tell "try again later"
    /// (4xx) from "never" (5xx).
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            SubmitError::Refused { reply, .. } => reply.get(..3).and_then(|c| c.parse().ok()),
            _ => None,
        }
    }
}

/// How long to wait for the relay to take the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn reply(&mut self) -> Result<(u16, String), SubmitError> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n =
                tokio::time::timeout(Duration::from_secs(300), self.stream.read_line(&mut line))
                    .await
                    .map_err(|_| SubmitError::Timeout)??;
            if n == 0 {
                return Err(SubmitError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line = line.trim_end();
            text.push_str(line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, text));
            }
            text.push(' ');
        }
    }

    async fn cmd(&mut self, line: &str, want: u16) -> Result<String, SubmitError> {
        self.stream.get_mut().write_all(line.as_bytes()).await?;
        self.stream.get_mut().write_all(b"\r\n").await?;
        let (code, text) = self.reply().await?;
        if code != want {
            let verb = line.split([' ', ':']).next().unwrap_or(line).to_string();
            return Err(SubmitError::Refused {
                command: verb,
                reply: text,
            });
        }
        Ok(text)
    }
}

/// Submits one message; returns the relay's final reply (which names the queue id).
/// `message` may use LF or CRLF line ends; it is sent with CRLF and dot-stuffed.
pub async fn submit(
    addr: SocketAddr,
    helo: &str,
    from: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<String, SubmitError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| SubmitError::Timeout)?
        .map_err(|source| SubmitError::Connect { addr, source })?;
    let mut c = Client {
        stream: BufReader::new(stream),
    };
    let (code, text) = c.reply().await?;
    if code != 220 {
        return Err(SubmitError::Refused {
            command: "connect".into(),
            reply: text,
        });
    }
    c.cmd(&format!("EHLO {helo}"), 250).await?;
    c.cmd(&format!("MAIL FROM:<{from}>"), 250).await?;
    for r in recipients {
        c.cmd(&format!("RCPT TO:<{r}>"), 250).await?;
    }
    c.cmd("DATA", 354).await?;
    c.stream.get_mut().write_all(&dot_stuff(message)).await?;
    let (code, text) = c.reply().await?;
    let _ = c.cmd("QUIT", 221).await;
    if code != 250 {
        return Err(SubmitError::Refused {
            command: "DATA".into(),
            reply: text,
        });
    }
    Ok(text)
}

/// DATA content as [`submit`] sends it: every line ended with CRLF (LF and CRLF input alike,
/// and a last line without one gets one), a `.` put before each line that starts with `.`,
/// then the terminating `.` line.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if line.first() == Some(&b'.') {
            data.push(b'.');
        }
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    data
}
