//! One SMTP session: the state machine over one connection, one method per verb.
//!
//! The state is small: whether the client has said EHLO/HELO, and the mail transaction in
//! progress (sender, tenant, recipients). The settings are taken when the session starts and
//! again at EHLO/HELO and MAIL, the points where no transaction is in progress, so a reload
//! applies to the next transaction and never changes the rules in the middle of one.
//!
//! Adding a verb (AUTH, STARTTLS when they come) means one arm in [`Session::execute`] and
//! one method.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use smtp_proto::{MailFrom, RcptTo, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Context;
use super::conn::{Conn, Line};
use super::data::{self, Abort, Outcome};
use super::listener::SessionGuard;
use super::reply::{self, Reply, printable};
use crate::metrics::Metrics;
use crate::queue::{Envelope, Incoming};
use crate::routing::Hints;
use crate::server::Settings;
use crate::shutdown::Shutdown;

/// Bad commands in a row after which we give up on the client (RFC 5321 leaves the number to
/// us; Postfix uses 20 as well).
const MAX_ERRORS: u32 = 20;

/// Serves one accepted connection to its end.
pub(super) async fn run(
    stream: TcpStream,
    peer: IpAddr,
    ctx: Arc<Context>,
    shutdown: Shutdown,
    guard: SessionGuard,
) {
    let settings = ctx.settings.borrow().clone();
    let (read, write) = stream.into_split();
    let conn = Conn::new(read, write, settings.config.smtp.command_timeout);
    let mut session = Session {
        guard: Some(guard),
        conn,
        ctx,
        settings,
        shutdown,
        peer,
        helo: None,
        tx: None,
        errors: 0,
    };
    tracing::debug!(client = %peer, "SMTP session opened");
    session.serve().await;
    tracing::debug!(client = %peer, "SMTP session closed");
}

struct Helo {
    name: String,
    extended: bool,
}

/// A mail transaction: from MAIL to the end of DATA (or RSET, EHLO, HELO).
struct Transaction {
    tenant: String,
    /// Empty for the null sender.
    mail_from: String,
    recipients: Vec<String>,
    /// Recipients in lower case, to store each once however the client spelled it.
    seen: HashSet<String>,
}

/// What waiting for the next command produced.
enum Input {
    Line,
    TooLong,
    Closed,
    Timeout,
    Shutdown,
}

/// The client went away (or broke the connection): nothing more to say to it.
struct Gone;

struct Session<R, W> {
    /// Released just before we close the connection (and, as fields drop in declaration
    /// order, before the socket when the client closed first), so a session has left the count
    /// by the time its client sees the end of the connection.
    guard: Option<SessionGuard>,
    conn: Conn<R, W>,
    ctx: Arc<Context>,
    settings: Arc<Settings>,
    shutdown: Shutdown,
    peer: IpAddr,
    helo: Option<Helo>,
    tx: Option<Transaction>,
    /// Consecutive replies blaming the client (5xx).
    errors: u32,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    async fn serve(&mut self) {
        let greeting = Reply::new(
            220,
            format!("{} ESMTP authrelay", self.settings.config.hostname),
        );
        self.send(greeting);
        let mut line = Vec::with_capacity(512);
        loop {
            let reply = match self.next_command(&mut line).await {
                Input::Line => match self.execute(&line).await {
                    Ok(reply) => reply,
                    Err(Gone) => return,
                },
                Input::TooLong => reply::LINE_TOO_LONG,
                Input::Closed => return,
                Input::Timeout => self.timeout_reply(),
                Input::Shutdown => reply::SHUTTING_DOWN,
            };
            if self.send(reply) {
                self.guard = None;
                self.conn.close().await;
                return;
            }
        }
    }

    /// Waits for the next command line, within the command timeout, unless shutdown comes
    /// first. A line already in the buffer wins over shutdown: it was sent before we stopped.
    async fn next_command(&mut self, line: &mut Vec<u8>) -> Input {
        let smtp = &self.settings.config.smtp;
        let (max, limit) = (smtp.max_line_length, smtp.command_timeout);
        // Flush outside the select, so that shutdown can only ever cancel a read.
        if self.conn.flush_if_idle().await.is_err() {
            return Input::Closed;
        }
        tokio::select! {
            biased;
            read = tokio::time::timeout(limit, self.conn.read_line(line, max)) => match read {
                Err(_) => Input::Timeout,
                Ok(Ok(Line::Complete)) => Input::Line,
                Ok(Ok(Line::TooLong)) => Input::TooLong,
                Ok(Ok(Line::Eof)) => Input::Closed,
                Ok(Err(e)) => {
                    tracing::debug!(client = %self.peer, error = %e, "SMTP read failed");
                    Input::Closed
                }
            },
            () = self.shutdown.recv() => Input::Shutdown,
        }
    }

    /// Queues a reply, keeping count of client errors. Returns whether the session ends.
    fn send(&mut self, mut reply: Reply) -> bool {
        if reply.is_client_error() {
            self.errors += 1;
            if self.errors > MAX_ERRORS {
                tracing::info!(client = %self.peer, "closing SMTP session after too many errors");
                reply = reply::TOO_MANY_ERRORS;
            }
        } else if reply.is_positive() {
            self.errors = 0;
        }
        self.conn.queue(&reply);
        reply.closes()
    }

    fn timeout_reply(&self) -> Reply {
        tracing::debug!(client = %self.peer, "SMTP session timed out");
        Reply::new(
            421,
            format!(
                "4.4.2 {} Error: timeout exceeded",
                self.settings.config.hostname
            ),
        )
    }

    async fn execute(&mut self, line: &[u8]) -> Result<Reply, Gone> {
        let request = match parse(line) {
            Ok(request) => request,
            Err(reply) => return Ok(reply),
        };
        // Draining: finish what was in flight, start nothing new.
        if self.shutdown.is_shutdown() && !matches!(request, Request::Quit) {
            return Ok(reply::SHUTTING_DOWN);
        }
        Ok(match request {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data().await,
            Request::Rset => self.rset(),
            Request::Noop { .. } => reply::OK,
            Request::Vrfy { .. } => reply::VRFY,
            Request::Help { .. } => reply::HELP,
            Request::Quit => reply::BYE,
            Request::StartTls => reply::NO_TLS,
            Request::Auth { .. } => reply::NO_AUTH,
            Request::Expn { .. }
            | Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => reply::NOT_IMPLEMENTED,
            Request::Lhlo { .. } => reply::UNRECOGNIZED,
        })
    }

    fn reload(&mut self) {
        self.settings = self.ctx.settings.borrow().clone();
    }

    fn ehlo(&mut self, host: String, extended: bool) -> Reply {
        self.reload();
        self.tx = None;
        self.helo = Some(Helo {
            name: host,
            extended,
        });
        let config = &self.settings.config;
        if extended {
            Reply::new(
                250,
                format!(
                    "{}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES\nHELP",
                    config.hostname, config.smtp.max_message_size
                ),
            )
        } else {
            Reply::new(250, config.hostname.clone())
        }
    }

    fn mail(&mut self, from: MailFrom<String>) -> Reply {
        if self.helo.is_none() {
            return reply::HELO_FIRST;
        }
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        self.reload();
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return reply::BINARY_UNSUPPORTED;
        }
        let sender = from.address;
        if !sender.is_empty() && !is_mailbox(&sender) {
            return reply::BAD_SENDER;
        }
        if from.size as u64 > self.settings.config.smtp.max_message_size {
            return reply::TOO_BIG;
        }
        if let Err(e) = self.ctx.spool.check_space() {
            tracing::warn!(client = %self.peer, error = %e, "refusing mail: no room in the spool");
            return reply::NO_STORAGE;
        }
        let Some(tenant) = self.settings.router.route(&sender, Hints::default()) else {
            tracing::info!(client = %self.peer, from = %sender, "refusing mail: no tenant for sender");
            return Reply::new(
                550,
                format!(
                    "5.7.1 <{}>: no tenant is configured to send mail from this sender",
                    printable(&sender, 256)
                ),
            );
        };
        self.tx = Some(Transaction {
            tenant: tenant.to_string(),
            mail_from: sender,
            recipients: Vec::new(),
            seen: HashSet::new(),
        });
        reply::SENDER_OK
    }

    fn rcpt(&mut self, to: RcptTo<String>) -> Reply {
        let max = self.settings.config.smtp.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return reply::NEED_MAIL;
        };
        if !is_mailbox(&to.address) {
            return reply::BAD_RECIPIENT;
        }
        let key = to.address.to_ascii_lowercase();
        if tx.seen.contains(&key) {
            return reply::RECIPIENT_OK;
        }
        if tx.recipients.len() >= max {
            return reply::TOO_MANY_RECIPIENTS;
        }
        tx.seen.insert(key);
        tx.recipients.push(to.address);
        reply::RECIPIENT_OK
    }

    fn rset(&mut self) -> Reply {
        self.tx = None;
        reply::OK
    }

    /// DATA: the spool file is created (and the trace header written) before the `354`, so a
    /// spool that cannot take the message says so before the client sends it. The transaction
    /// ends here whatever happens next.
    async fn data(&mut self) -> Result<Reply, Gone> {
        let tx = match self.tx.take() {
            None => return Ok(reply::NEED_MAIL),
            Some(tx) if tx.recipients.is_empty() => {
                self.tx = Some(tx);
                return Ok(reply::NO_RECIPIENTS);
            }
            Some(tx) => tx,
        };
        let mut incoming = match self.ctx.spool.create().await {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::warn!(client = %self.peer, error = %e, "cannot start a message in the spool");
                return Ok(reply::NO_STORAGE);
            }
        };
        let (helo, extended) = match &self.helo {
            Some(h) => (h.name.as_str(), h.extended),
            None => ("unknown", false),
        };
        let config = &self.settings.config;
        let header = data::trace_header(
            helo,
            extended,
            self.peer,
            &config.hostname,
            incoming.id(),
            time::OffsetDateTime::now_utc(),
        );
        if let Err(e) = incoming.write(header.as_bytes()).await {
            tracing::warn!(client = %self.peer, error = %e, "cannot write to the spool");
            return Ok(reply::NO_STORAGE);
        }
        let (max_size, timeout) = (config.smtp.max_message_size, config.smtp.data_timeout);

        self.send(reply::START_DATA);
        if self.conn.flush().await.is_err() {
            return Err(Gone);
        }
        match data::receive(&mut self.conn, incoming, max_size, timeout).await {
            Ok(Outcome::Stored(incoming)) => Ok(self.commit(tx, incoming).await),
            Ok(Outcome::TooBig) => {
                tracing::info!(client = %self.peer, max_size, "refused message over the size limit");
                Ok(reply::TOO_BIG)
            }
            Ok(Outcome::Failed(e)) => {
                tracing::error!(client = %self.peer, error = %e, "spool write failed; message refused");
                Ok(reply::NO_STORAGE)
            }
            Err(Abort::Timeout) => Ok(self.timeout_reply()),
            Err(Abort::Closed(e)) => {
                tracing::debug!(
                    client = %self.peer,
                    error = e.map(|e| e.to_string()),
                    "client went away during DATA; nothing stored"
                );
                Err(Gone)
            }
        }
    }

    /// The durability point: `250` only once the spool says the message is on disk.
    async fn commit(&mut self, tx: Transaction, incoming: Incoming) -> Reply {
        let client = self.peer.to_string();
        let envelope = Envelope::new(&tx.tenant, &tx.mail_from, &tx.recipients, &client);
        let envelope = match incoming.commit(envelope).await {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::error!(client = %self.peer, error = %e, "spool commit failed; message refused");
                return reply::NO_STORAGE;
            }
        };
        self.ctx
            .metrics
            .messages_received
            .get_or_create(&Metrics::tenant(&envelope.tenant))
            .inc();
        tracing::info!(
            queue_id = envelope.id.as_str(),
            client = %self.peer,
            tenant = envelope.tenant.as_str(),
            from = envelope.mail_from.as_str(),
            size = envelope.size,
            recipients = envelope.recipients.len(),
            "accepted"
        );
        let reply = Reply::new(250, format!("2.0.0 Ok: queued as {}", envelope.id));
        if self.ctx.accepted.send(envelope).is_err() {
            tracing::warn!("delivery is not taking new messages; this one waits in the spool");
        }
        reply
    }
}

/// Parses one command line. Lenient about one common mistake of simple clients,
/// `MAIL FROM:user@host` without angle brackets (Postfix accepts it too).
fn parse(line: &[u8]) -> Result<Request<String>, Reply> {
    match Request::parse(&mut line.iter()) {
        Ok(request) => Ok(request.into_owned()),
        Err(e) => {
            if matches!(e, smtp_proto::Error::SyntaxError { .. })
                && let Some(fixed) = add_brackets(line)
                && let Ok(request) = Request::parse(&mut fixed.iter())
            {
                return Ok(request.into_owned());
            }
            Err(reply::parse_error(&e))
        }
    }
}

/// `MAIL FROM:a@b x` → `MAIL FROM:<a@b> x`, likewise for RCPT TO; None if that does not apply.
fn add_brackets(line: &[u8]) -> Option<Vec<u8>> {
    let prefix = [&b"MAIL FROM:"[..], &b"RCPT TO:"[..]]
        .into_iter()
        .find(|p| line.len() > p.len() && line[..p.len()].eq_ignore_ascii_case(p))?;
    let rest = &line[prefix.len()..];
    let start = rest.iter().position(|&b| b != b' ')?;
    let rest = &rest[start..];
    if matches!(rest.first(), Some(b'<' | b'\r' | b'\n')) {
        return None;
    }
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    let mut fixed = Vec::with_capacity(line.len() + 2);
    fixed.extend_from_slice(prefix);
    fixed.push(b'<');
    fixed.extend_from_slice(&rest[..end]);
    fixed.push(b'>');
    fixed.extend_from_slice(&rest[end..]);
    Some(fixed)
}

/// An address we are willing to put in an envelope: `local@domain`, nothing that could break
/// a command line or a log line upstream.
fn is_mailbox(address: &str) -> bool {
    crate::config::is_address(address) && !address.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_are_added_for_lenient_clients() {
        let fixed =
            |s: &str| add_brackets(s.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned());
        assert_eq!(
            fixed("MAIL FROM:a@b.c\r\n").as_deref(),
            Some("MAIL FROM:<a@b.c>\r\n")
        );
        assert_eq!(
            fixed("rcpt to: x@y.z NOTIFY=NEVER\r\n").as_deref(),
            Some("RCPT TO:<x@y.z> NOTIFY=NEVER\r\n")
        );
        assert_eq!(fixed("MAIL FROM:<a@b.c>\r\n"), None);
        assert_eq!(fixed("MAIL FROM:\r\n"), None);
        assert_eq!(fixed("NOOP\r\n"), None);
        assert!(matches!(
            parse(b"MAIL FROM:a@b.c\r\n"),
            Ok(Request::Mail { .. })
        ));
    }

    #[test]
    fn parse_errors_map_to_replies() {
        let code = |s: &str| {
            parse(s.as_bytes())
                .err()
                .map(|r| (r.code, r.text.into_owned()))
        };
        assert_eq!(code("FOO\r\n").map(|c| c.0), Some(500));
        assert_eq!(
            code("EHLO\r\n").map(|c| c.1),
            Some("5.5.4 Syntax: EHLO domain".into())
        );
        assert_eq!(
            code("RCPT TO:<a..b@c>\r\n").map(|c| c.1),
            Some("5.1.3 Bad recipient address syntax".into())
        );
        assert_eq!(code("MAIL FROM:<a@b> FOO=1\r\n").map(|c| c.0), Some(555));
        assert_eq!(code("MAIL FROM:<a@b> SIZE=x\r\n").map(|c| c.0), Some(501));
        assert!(code("\r\n").is_some());
        assert!(code("\n").is_some());
        assert!(code("\u{7f}\u{0}\r\n").is_some());
    }

    #[test]
    fn parser_survives_noise() {
        // Lines made of SMTP-ish tokens and arbitrary bytes, from a fixed-seed xorshift.
        let pieces: [&[u8]; 16] = [
            b"MAIL",
            b"RCPT",
            b"FROM:",
            b"TO:",
            b"<",
            b">",
            b"@",
            b" ",
            b"SIZE=",
            b"BODY=",
            b"\r",
            b"\"",
            b"\\",
            b"EHLO",
            b".",
            b"99999999999999999999999",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut line = Vec::new();
            for _ in 0..next() % 12 {
                let r = next();
                if r % 3 == 0 {
                    line.push((r >> 8) as u8);
                } else {
                    line.extend_from_slice(pieces[(r >> 8) as usize % pieces.len()]);
                }
            }
            line.retain(|&b| b != b'\n');
            line.extend_from_slice(b"\r\n");
            let _ = parse(&line);
        }
    }

    #[test]
    fn mailbox_check() {
        assert!(is_mailbox("a@b.c"));
        assert!(!is_mailbox("a@"));
        assert!(!is_mailbox("a\u{0}@b.c"));
        assert!(!is_mailbox("a b@c"));
    }
}
