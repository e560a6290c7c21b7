//! A deliberately small SMTP client for tests that talk to an SMTP server by hand: the fake
//! Exchange (to test the fake itself) or the relay's own inbound listener. It sends exactly
//! what it is told, reads multi-line replies, and upgrades with STARTTLS trusting one CA.

use std::fmt;
use std::io;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An SMTP reply: the code and the text of each line (without `250-` / `250 `).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Whether the whole reply (code and text) contains `needle`, e.g. `"5.7.3"`.
    pub fn contains(&self, needle: &str) -> bool {
        self.to_string().contains(needle)
    }

    /// For EHLO replies: whether an extension keyword (`"AUTH"`, `"STARTTLS"`) is offered.
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// For EHLO replies: the parameters of an extension (`"AUTH"` → `["LOGIN", "XOAUTH2"]`).
    pub fn extension_params(&self, keyword: &str) -> Option<Vec<String>> {
        self.lines.iter().skip(1).find_map(|l| {
            let mut words = l.split_whitespace();
            words
                .next()
                .filter(|k| k.eq_ignore_ascii_case(keyword))
                .map(|_| words.map(str::to_string).collect())
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

pub struct SmtpClient {
    io: BufReader<Box<dyn Io>>,
}

impl SmtpClient {
    /// Connects to `host:port` and reads the greeting.
    pub async fn connect(server: &str) -> io::Result<(SmtpClient, Reply)> {
        let stream = TcpStream::connect(server).await?;
        let mut client = SmtpClient {
            io: BufReader::new(Box::new(stream)),
        };
        let greeting = client.read_reply().await?;
        Ok((client, greeting))
    }

    /// Greeting, EHLO, STARTTLS (trusting `ca_pem`, checking the name `host`), EHLO,
    /// AUTH XOAUTH2; errors unless the AUTH answer is 235.
    pub async fn login(
        server: &str,
        ca_pem: &str,
        user: &str,
        token: &str,
    ) -> io::Result<SmtpClient> {
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let (mut c, greeting) = SmtpClient::connect(server).await?;
        expect(&greeting, 220)?;
        expect(&c.ehlo("client.test").await?, 250)?;
        expect(&c.starttls(ca_pem, host).await?, 220)?;
        expect(&c.ehlo("client.test").await?, 250)?;
        expect(&c.auth_xoauth2(user, token).await?, 235)?;
        Ok(c)
    }

    /// Writes `line` + CRLF without waiting for a reply (for pipelining).
    pub async fn send_line(&mut self, line: &str) -> io::Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes()).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let w = self.io.get_mut();
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut buf = String::new();
            if self.io.read_line(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed while reading a reply (got {lines:?})"),
                ));
            }
            let line = buf.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply line {line:?}"),
                    )
                })?;
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.get(4..).unwrap_or("").to_string());
            if sep != Some(b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send_line(line).await?;
        self.read_reply().await
    }

    pub async fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        self.command(&format!("EHLO {name}")).await
    }

    /// Sends STARTTLS; on 220, performs the TLS handshake trusting only `ca_pem` and
    /// verifying `server_name`. Returns the reply to STARTTLS.
    pub async fn starttls(&mut self, ca_pem: &str, server_name: &str) -> io::Result<Reply> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Ok(reply);
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("CA PEM: {e:?}"))
            })?;
            roots
                .add(cert)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (placeholder, _) = tokio::io::duplex(1);
        let plain = std::mem::replace(&mut self.io, BufReader::new(Box::new(placeholder)));
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, plain.into_inner())
            .await?;
        self.io = BufReader::new(Box::new(tls));
        Ok(reply)
    }

    /// `AUTH XOAUTH2 <initial response>`; if the server answers 334 (Google-style error
    /// challenge), sends the empty line and returns the final reply.
    pub async fn auth_xoauth2(&mut self, user: &str, token: &str) -> io::Result<Reply> {
        let reply = self
            .command(&format!("AUTH XOAUTH2 {}", xoauth2(user, token)))
            .await?;
        if reply.code == 334 {
            return self.command("").await;
        }
        Ok(reply)
    }

    /// DATA, then the dot-stuffed message and the final dot. Returns the reply to DATA if it
    /// is not 354, else the reply to the final dot.
    pub async fn data(&mut self, message: &[u8]) -> io::Result<Reply> {
        let reply = self.command("DATA").await?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.send_raw(&dot_stuff(message)).await?;
        self.read_reply().await
    }

    /// MAIL, RCPT for each, DATA, one at a time. Returns the first reply that is not 250
    /// (without sending RSET: the caller decides), else the reply to the final dot.
    pub async fn send_mail(
        &mut self,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> io::Result<Reply> {
        let reply = self.command(&format!("MAIL FROM:<{from}>")).await?;
        if reply.code != 250 {
            return Ok(reply);
        }
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await?;
            if reply.code != 250 {
                return Ok(reply);
            }
        }
        self.data(message).await
    }

    pub async fn quit(&mut self) -> io::Result<Reply> {
        self.command("QUIT").await
    }
}

fn expect(reply: &Reply, code: u16) -> io::Result<()> {
    if reply.code == code {
        Ok(())
    } else {
        Err(io::Error::other(format!("expected {code}, got: {reply}")))
    }
}

/// The XOAUTH2 initial response: base64 of `user=..\x01auth=Bearer ..\x01\x01`.
pub fn xoauth2(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// Dot-stuffs a message and appends the terminator; adds a CRLF first if the message does
/// not end with one.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
