//! One authenticated SMTP connection to Exchange Online: STARTTLS on 587, AUTH XOAUTH2 as the
//! tenant's mailbox, then as many messages as the scheduler hands it.
//!
//! mail-send does the wire work (greeting, EHLO, STARTTLS, replies, dot-stuffing); we drive
//! the transaction ourselves so that every recipient's reply is kept (a retry resends only
//! to those still pending) and so that XOAUTH2's error challenge is answered as Microsoft and
//! Google expect (an empty line, then the final reply).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_send::SmtpClient;
use mail_send::SmtpClientBuilder;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::classify::Reply;
use crate::config::Secret;

/// A failure that is not an SMTP reply: the connection itself went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {reason}")]
    Network { addr: String, reason: String },
    #[error("{addr} does not offer STARTTLS")]
    NoStartTls { addr: String },
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr} timed out")]
    Timeout { addr: String },
    /// The server answered, but with a refusal (greeting 421, AUTH 535, ...).
    #[error("{0}")]
    Refused(Reply),
}

impl ConnectError {
    fn from_mail_send(addr: &str, e: mail_send::Error) -> ConnectError {
        let addr = addr.to_string();
        match e {
            mail_send::Error::UnexpectedReply(r) | mail_send::Error::AuthenticationFailed(r) => {
                ConnectError::Refused(Reply::from_proto(&r))
            }
            mail_send::Error::MissingStartTls => ConnectError::NoStartTls { addr },
            mail_send::Error::Tls(e) => ConnectError::Tls {
                addr,
                reason: e.to_string(),
            },
            mail_send::Error::InvalidTLSName => ConnectError::Tls {
                addr,
                reason: "invalid TLS server name".into(),
            },
            mail_send::Error::Timeout => ConnectError::Timeout { addr },
            mail_send::Error::Io(e) => ConnectError::Network {
                addr,
                reason: e.to_string(),
            },
            mail_send::Error::UnparseableReply => ConnectError::Network {
                addr,
                reason: "connection closed or unparseable reply".into(),
            },
            other => ConnectError::Network {
                addr,
                reason: format!("{other:?}"),
            },
        }
    }
}

/// What the upstream said to one transaction.
#[derive(Debug, Clone)]
pub struct TransactionResult {
    /// Set when MAIL FROM itself was refused: it applies to every recipient.
    pub mail: Option<Reply>,
    /// One reply per recipient, in order.
    pub rcpt: Vec<(String, Reply)>,
    /// The reply to the end of DATA, if DATA was sent.
    pub data: Option<Reply>,
}

pub struct Upstream {
    client: SmtpClient<TlsStream<TcpStream>>,
    addr: String,
    /// Transactions sent on this connection; the first needs no RSET.
    pub transactions: u32,
    /// The token this connection authenticated with.
    pub token: Secret,
}

/// The pieces `connect` needs, kept together so callers don't pass seven arguments.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub connector: TlsConnector,
    pub helo: &'a str,
    pub mailbox: &'a str,
    pub timeout: Duration,
}

impl Upstream {
    /// Connects, upgrades with STARTTLS, and authenticates with XOAUTH2.
    pub async fn connect(target: &Target<'_>, token: &Secret) -> Result<Upstream, ConnectError> {
        let addr = format!("{}:{}", target.host, target.port);
        let builder = SmtpClientBuilder::new_with_tls_connector(
            target.host,
            target.port,
            target.connector.clone(),
        )
        .implicit_tls(false)
        .helo_host(target.helo)
        .timeout(target.timeout);
        let mut client = builder
            .connect()
            .await
            .map_err(|e| ConnectError::from_mail_send(&addr, e))?;
        // mail-send writes a DATA body and its final dot separately; with Nagle on, the dot
        // waits for the server's delayed ACK (40 ms on Linux, more on other systems) every
        // message. Each command is written whole, so there is nothing for Nagle to gather.
        let _ = client.stream.get_ref().0.set_nodelay(true);
        let payload = STANDARD.encode(format!(
            "user={}\x01auth=Bearer {}\x01\x01",
            target.mailbox,
            token.expose()
        ));
        let mut reply = client
            .cmd(format!("AUTH XOAUTH2 {payload}\r\n"))
            .await
            .map_err(|e| ConnectError::from_mail_send(&addr, e))?;
        if reply.code == 334 {
            // The server sent an error as a challenge (base64 JSON); an empty response
            // asks for the final reply.
            reply = client
                .cmd(b"\r\n")
                .await
                .map_err(|e| ConnectError::from_mail_send(&addr, e))?;
        }
        if reply.code != 235 {
            return Err(ConnectError::Refused(Reply::from_proto(&reply)));
        }
        Ok(Upstream {
            client,
            addr,
            transactions: 0,
            token: token.clone(),
        })
    }

    /// Sends one message to the given recipients. `body` must end with CRLF; the final dot
    /// is added here. A connection error mid-transaction is returned as `Err`, and the
    /// connection must then be dropped.
    pub async fn send(
        &mut self,
        mail_from: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Result<TransactionResult, ConnectError> {
        let addr = self.addr.clone();
        let err = |e| ConnectError::from_mail_send(&addr, e);
        if self.transactions > 0 {
            let r = self.client.cmd(b"RSET\r\n").await.map_err(err)?;
            if !(200..300).contains(&r.code) {
                return Err(ConnectError::Refused(Reply::from_proto(&r)));
            }
        }
        self.transactions += 1;
        let mut result = TransactionResult {
            mail: None,
            rcpt: Vec::with_capacity(recipients.len()),
            data: None,
        };
        let r = self
            .client
            .cmd(format!("MAIL FROM:<{mail_from}>\r\n"))
            .await
            .map_err(err)?;
        if !(200..300).contains(&r.code) {
            result.mail = Some(Reply::from_proto(&r));
            return Ok(result);
        }
        for rcpt in recipients {
            let r = self
                .client
                .cmd(format!("RCPT TO:<{rcpt}>\r\n"))
                .await
                .map_err(err)?;
            result.rcpt.push((rcpt.clone(), Reply::from_proto(&r)));
        }
        if !result.rcpt.iter().any(|(_, r)| r.is_positive()) {
            return Ok(result);
        }
        let r = self.client.cmd(b"DATA\r\n").await.map_err(err)?;
        if r.code != 354 {
            result.data = Some(Reply::from_proto(&r));
            return Ok(result);
        }
        // mail-send appends CRLF.CRLF itself: hand it the body without its final CRLF.
        let body = body.strip_suffix(b"\r\n").unwrap_or(body);
        let timeout = self.client.timeout;
        let reply = tokio::time::timeout(timeout, async {
            self.client
                .write_message(body)
                .await
                .map_err(mail_send::Error::Io)?;
            self.client.read().await
        })
        .await
        .map_err(|_| ConnectError::Timeout { addr: addr.clone() })?
        .map_err(err)?;
        result.data = Some(Reply::from_proto(&reply));
        Ok(result)
    }

    /// Says goodbye politely; errors don't matter any more.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.cmd(b"QUIT\r\n")).await;
    }
}
