//! Exchange Online SMTP submission (`smtp.office365.com:587`) stand-in.
//!
//! What it reproduces, because the relay must cope with each: the EHLO before and after
//! STARTTLS (AUTH only after TLS), SASL XOAUTH2 against tokens the fake Entra issued, Send As
//! checks on MAIL FROM (550 5.7.60) and on the `From:` header (554 5.2.252 after DATA), SIZE,
//! pipelining, dot-unstuffing, several messages per connection, and Exchange's reply texts.
//! Injectable faults (`SmtpFault`, one-shot `push_smtp_replies`) cover throttling and outages.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::directory::{App, Audience, Delivered, Shared, SmtpCommand, SmtpFault, SmtpStage, Via};
use super::headers;

/// EXO's default maximum message size, advertised in EHLO.
pub(crate) const MAX_SIZE: usize = 37_748_736;
const MAX_RECIPIENTS: usize = 500;
const HOST: &str = "fake.outlook.office365.com";
const SERVER: &str = "FAKE01MB0001.namprd00.prod.outlook.com";
/// Generous: real Entra access tokens make XOAUTH2 lines of 2-4 KB.
const COMMAND_LINE_LIMIT: usize = 16 * 1024;
const DATA_LINE_LIMIT: usize = 1 << 20;

/// Binds with SO_REUSEADDR so the port can be re-bound after `RefuseConnections` is cleared.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until shutdown; closes the listener while `RefuseConnections` is set
/// (so connects get ECONNREFUSED) and re-binds the same port when it is cleared.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = Some(listener);
    let mut refuse = shared.refuse.subscribe();
    loop {
        let refusing = *refuse.borrow_and_update();
        if refusing && listener.is_some() {
            listener = None;
            shared.listening.send_replace(false);
        }
        if !refusing && listener.is_none() {
            match bind(addr) {
                Ok(l) => {
                    listener = Some(l);
                    shared.listening.send_replace(true);
                }
                Err(e) => {
                    eprintln!("fake Microsoft: cannot re-bind SMTP on {addr} yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(l) = &listener else {
            tokio::select! {
                _ = refuse.changed() => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let refused = shared.read(|s| s.smtp_faults.contains(&SmtpFault::RefuseConnections));
                if refused {
                    drop(stream);
                    continue;
                }
                let session = Session::new(shared.clone(), stream, peer, acceptor.clone());
                let mut shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut session = session;
                    tokio::select! {
                        _ = session.run() => {}
                        _ = shutdown.changed() => {}
                    }
                });
            }
            _ = refuse.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Session {
    shared: Arc<Shared>,
    id: usize,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    io: BufReader<Box<dyn Io>>,
    tls: bool,
    helo: bool,
    /// The app whose token authenticated this session (its mailbox is the SMTP user).
    auth: Option<App>,
    /// Counted against the per-mailbox connection limit.
    counted_mailbox: Option<String>,
    over_limit: bool,
    mail_from: Option<String>,
    rcpts: Vec<String>,
}

enum Flow {
    Continue,
    Close,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        acceptor: TlsAcceptor,
    ) -> Session {
        let id = shared.with(|s| {
            s.smtp_connections += 1;
            s.smtp_current += 1;
            s.smtp_max_concurrent = s.smtp_max_concurrent.max(s.smtp_current);
            s.smtp_connections
        });
        Session {
            shared,
            id,
            peer,
            acceptor,
            io: BufReader::new(Box::new(stream)),
            tls: false,
            helo: false,
            auth: None,
            counted_mailbox: None,
            over_limit: false,
            mail_from: None,
            rcpts: Vec::new(),
        }
    }

    fn has_fault(&self, pick: impl Fn(&SmtpFault) -> bool) -> bool {
        self.shared.read(|s| s.smtp_faults.iter().any(pick))
    }

    /// The one-shot scripted reply for `stage`, else the persistent fault reply `pick` finds.
    fn override_reply(
        &self,
        stage: SmtpStage,
        pick: impl Fn(&SmtpFault) -> Option<String>,
    ) -> Option<String> {
        self.shared.with(|s| {
            s.take_scripted(stage)
                .or_else(|| s.smtp_faults.iter().find_map(&pick))
        })
    }

    async fn reply(&mut self, text: &str) -> io::Result<()> {
        // One write: the text and its CRLF written separately go out as two segments (two TLS
        // records), and Nagle holds the second until the client's delayed ACK, 40 ms later.
        let mut line = Vec::with_capacity(text.len() + 2);
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        let w = self.io.get_mut();
        w.write_all(&line).await?;
        w.flush().await
    }

    /// One line including its LF, or `None` at EOF. Errors if the line exceeds `limit`.
    async fn read_line(&mut self, limit: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n = (&mut self.io)
            .take(limit as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        if !buf.ends_with(b"\n") {
            if n >= limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            return Ok(None);
        }
        Ok(Some(buf))
    }

    fn log(&self, line: &str) {
        let command = SmtpCommand {
            connection: self.id,
            line: line.to_string(),
            tls: self.tls,
            more_buffered: !self.io.buffer().is_empty(),
        };
        self.shared.with(|s| s.smtp_log.push(command));
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
    }

    async fn run(&mut self) -> io::Result<()> {
        let greeting = self.override_reply(SmtpStage::Greeting, |f| {
            (*f == SmtpFault::Greeting421).then(|| {
                "421 4.3.2 The maximum number of concurrent server connections has exceeded a \
                 limit, closing transmission channel"
                    .to_string()
            })
        });
        match greeting {
            Some(r) if !r.starts_with('2') => return self.reply(&r).await,
            Some(r) => self.reply(&r).await?,
            None => {
                self.reply(&format!("220 {HOST} Microsoft ESMTP MAIL Service ready"))
                    .await?
            }
        }
        loop {
            let raw = match self.read_line(COMMAND_LINE_LIMIT).await {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return self.reply("500 5.5.2 Line too long").await;
                }
                Err(e) => return Err(e),
            };
            let line = String::from_utf8_lossy(trim_eol(&raw)).into_owned();
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
                None => (line.trim().to_ascii_uppercase(), String::new()),
            };
            if verb == "AUTH" {
                let mech = arg.split_whitespace().next().unwrap_or("");
                let shown = if arg.contains(' ') {
                    format!("AUTH {mech} <redacted>")
                } else {
                    format!("AUTH {mech}")
                };
                self.log(&shown);
            } else {
                self.log(&line);
            }
            let flow = match verb.as_str() {
                "EHLO" | "HELO" => self.ehlo(&verb, &arg).await?,
                "STARTTLS" => self.starttls().await?,
                "AUTH" => self.auth(&arg).await?,
                "MAIL" => self.mail(&arg).await?,
                "RCPT" => self.rcpt(&arg).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 Resetting").await?;
                    Flow::Continue
                }
                "NOOP" => {
                    self.reply("250 2.0.0 OK").await?;
                    Flow::Continue
                }
                "QUIT" => {
                    self.reply("221 2.0.0 Service closing transmission channel")
                        .await?;
                    Flow::Close
                }
                "VRFY" => {
                    self.reply("252 2.1.5 Cannot VRFY user, but will accept message for delivery")
                        .await?;
                    Flow::Continue
                }
                _ => {
                    self.reply(&format!("500 5.3.3 Unrecognized command '{verb}'"))
                        .await?;
                    Flow::Continue
                }
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    async fn ehlo(&mut self, verb: &str, arg: &str) -> io::Result<Flow> {
        if arg.is_empty() {
            self.reply("501 5.5.4 Invalid domain name").await?;
            return Ok(Flow::Continue);
        }
        self.reset();
        if let Some(r) = self.override_reply(SmtpStage::Ehlo, |_| None) {
            self.helo = r.starts_with('2');
            self.reply(&r).await?;
            return Ok(Flow::Continue);
        }
        self.helo = true;
        let hello = format!("{HOST} Hello [{}]", self.peer.ip());
        if verb == "HELO" {
            self.reply(&format!("250 {hello}")).await?;
            return Ok(Flow::Continue);
        }
        let mut lines = vec![
            hello,
            format!("SIZE {MAX_SIZE}"),
            "PIPELINING".into(),
            "DSN".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.tls {
            lines.push("AUTH LOGIN XOAUTH2".into());
        } else {
            lines.push("STARTTLS".into());
        }
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        self.reply(&multiline(250, &lines)).await?;
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        if self.tls {
            self.reply("503 5.5.1 TLS already active").await?;
            return Ok(Flow::Continue);
        }
        self.reply("220 2.0.0 SMTP server ready").await?;
        // RFC 3207: anything the client pipelined after STARTTLS is discarded with the buffer.
        let (placeholder, _) = tokio::io::duplex(1);
        let plain = std::mem::replace(&mut self.io, BufReader::new(Box::new(placeholder)));
        let tls = self.acceptor.accept(plain.into_inner()).await?;
        self.io = BufReader::new(Box::new(tls));
        self.tls = true;
        self.helo = false;
        self.reset();
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, arg: &str) -> io::Result<Flow> {
        if !self.tls {
            self.reply(&format!(
                "530 5.7.57 Client not authenticated to send mail. [{SERVER}]"
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        if !self.helo {
            self.reply("503 5.5.2 Send hello first").await?;
            return Ok(Flow::Continue);
        }
        if self.auth.is_some() {
            self.reply("503 5.5.1 Already authenticated").await?;
            return Ok(Flow::Continue);
        }
        let mut words = arg.split_whitespace();
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next().map(str::to_string);
        match mech.as_str() {
            "XOAUTH2" => {
                let payload = match initial {
                    Some(p) => p,
                    None => {
                        self.reply("334 ").await?;
                        let Some(raw) = self.read_line(COMMAND_LINE_LIMIT).await? else {
                            return Ok(Flow::Close);
                        };
                        self.log("<redacted>");
                        String::from_utf8_lossy(trim_eol(&raw)).trim().to_string()
                    }
                };
                if payload == "*" {
                    self.count_auth_failure();
                    self.reply("501 5.0.0 Authentication cancelled").await?;
                    return Ok(Flow::Continue);
                }
                self.xoauth2(&payload).await?;
            }
            "LOGIN" => {
                // Basic authentication is off at Microsoft: go through the motions, then refuse.
                if initial.is_none() {
                    self.reply("334 VXNlcm5hbWU6").await?;
                    if self.read_line(COMMAND_LINE_LIMIT).await?.is_none() {
                        return Ok(Flow::Close);
                    }
                    self.log("<redacted>");
                }
                self.reply("334 UGFzc3dvcmQ6").await?;
                if self.read_line(COMMAND_LINE_LIMIT).await?.is_none() {
                    return Ok(Flow::Close);
                }
                self.log("<redacted>");
                self.count_auth_failure();
                self.reply(&format!(
                    "535 5.7.139 Authentication unsuccessful, basic authentication is disabled. \
                     [{SERVER}]"
                ))
                .await?;
            }
            _ => {
                self.count_auth_failure();
                self.reply("504 5.7.4 Unrecognized authentication type")
                    .await?;
            }
        }
        Ok(Flow::Continue)
    }

    fn count_auth_failure(&self) {
        self.shared.with(|s| s.auth_failures += 1);
    }

    /// Judges `user=<mailbox>\x01auth=Bearer <token>\x01\x01` against the issued tokens.
    async fn xoauth2(&mut self, payload: &str) -> io::Result<()> {
        let verdict = self.check_xoauth2(payload);
        let forced = self.override_reply(SmtpStage::Auth, |f| match f {
            SmtpFault::AuthReply(r) => Some(r.clone()),
            _ => None,
        });
        let reply = match (forced, verdict) {
            (Some(r), verdict) => {
                if r.starts_with("235") {
                    // A scripted success still needs an identity for Send As checks.
                    let app = verdict.unwrap_or_else(|_| App {
                        mailbox: decode_xoauth2(payload).map(|(u, _)| u).unwrap_or_default(),
                        ..App::default()
                    });
                    self.authenticated(app);
                } else {
                    self.count_auth_failure();
                }
                r
            }
            (None, Ok(app)) => {
                self.authenticated(app);
                "235 2.7.0 Authentication successful".to_string()
            }
            (None, Err(_why)) => {
                self.count_auth_failure();
                format!("535 5.7.3 Authentication unsuccessful [{SERVER}]")
            }
        };
        self.reply(&reply).await
    }

    fn check_xoauth2(&self, payload: &str) -> Result<App, &'static str> {
        let (user, token) = decode_xoauth2(payload).ok_or("malformed XOAUTH2")?;
        self.shared.with(|s| {
            let t = s.valid_access_token(&token, Audience::Smtp)?;
            if !t.mailbox.eq_ignore_ascii_case(&user) {
                return Err("token is for another mailbox");
            }
            s.app_of(t).cloned().ok_or("app removed")
        })
    }

    fn authenticated(&mut self, app: App) {
        let mailbox = app.mailbox.to_ascii_lowercase();
        self.over_limit = self.shared.with(|s| {
            let n = s
                .smtp_sessions_per_mailbox
                .entry(mailbox.clone())
                .or_default();
            *n += 1;
            let n = *n;
            s.smtp_mailbox_limit.is_some_and(|limit| n > limit)
        });
        self.counted_mailbox = Some(mailbox);
        self.auth = Some(app);
    }

    async fn mail(&mut self, arg: &str) -> io::Result<Flow> {
        let Some(app) = self.auth.clone().filter(|_| self.tls) else {
            self.reply(&format!(
                "530 5.7.57 Client not authenticated to send mail. [{SERVER}]"
            ))
            .await?;
            return Ok(Flow::Continue);
        };
        if self.mail_from.is_some() {
            self.reply("503 5.5.1 Sender already specified").await?;
            return Ok(Flow::Continue);
        }
        let Some((addr, params)) = parse_path(arg, "FROM:") else {
            self.reply("501 5.5.4 Invalid arguments").await?;
            return Ok(Flow::Continue);
        };
        let declared = params.iter().find_map(|p| {
            p.strip_prefix("SIZE=")
                .or_else(|| p.strip_prefix("size="))
                .and_then(|n| n.parse::<usize>().ok())
        });
        if declared.is_some_and(|n| n > MAX_SIZE) {
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                .await?;
            return Ok(Flow::Continue);
        }
        if let Some(r) = self.override_reply(SmtpStage::Mail, |f| match f {
            SmtpFault::MailReply(r) => Some(r.clone()),
            _ => None,
        }) {
            if r.starts_with('2') {
                self.mail_from = Some(addr);
            }
            self.reply(&r).await?;
            return Ok(Flow::Continue);
        }
        if self.over_limit {
            self.reply(&format!(
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname={SERVER}]"
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        if !app.may_send_as(&addr) {
            self.reply(&format!(
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender \
                 [{SERVER}]"
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        self.mail_from = Some(addr);
        self.reply("250 2.1.0 Sender OK").await?;
        Ok(Flow::Continue)
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<Flow> {
        if self.auth.is_none() {
            self.reply(&format!(
                "530 5.7.57 Client not authenticated to send mail. [{SERVER}]"
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        if self.mail_from.is_none() {
            self.reply("503 5.5.1 Need mail command").await?;
            return Ok(Flow::Continue);
        }
        let Some((addr, _params)) = parse_path(arg, "TO:").filter(|(a, _)| !a.is_empty()) else {
            self.reply("501 5.5.4 Invalid arguments").await?;
            return Ok(Flow::Continue);
        };
        if let Some(r) = self.override_reply(SmtpStage::Rcpt, |f| match f {
            SmtpFault::RcptReply { addr: a, reply } if a.eq_ignore_ascii_case(&addr) => {
                Some(reply.clone())
            }
            _ => None,
        }) {
            if r.starts_with('2') {
                self.rcpts.push(addr);
            }
            self.reply(&r).await?;
            return Ok(Flow::Continue);
        }
        if self.rcpts.len() >= MAX_RECIPIENTS {
            self.reply("452 4.5.3 Too many recipients").await?;
            return Ok(Flow::Continue);
        }
        self.rcpts.push(addr);
        self.reply("250 2.1.5 Recipient OK").await?;
        Ok(Flow::Continue)
    }

    async fn data(&mut self) -> io::Result<Flow> {
        let Some(app) = self.auth.clone() else {
            self.reply(&format!(
                "530 5.7.57 Client not authenticated to send mail. [{SERVER}]"
            ))
            .await?;
            return Ok(Flow::Continue);
        };
        let Some(mail_from) = self.mail_from.clone() else {
            self.reply("503 5.5.1 Need mail command").await?;
            return Ok(Flow::Continue);
        };
        if self.rcpts.is_empty() {
            self.reply("503 5.5.2 Need rcpt command").await?;
            return Ok(Flow::Continue);
        }
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>")
            .await?;
        let drop_mid_data = self.has_fault(|f| *f == SmtpFault::DropMidData);
        let mut data = Vec::new();
        let mut too_big = false;
        loop {
            let Some(line) = self.read_line(DATA_LINE_LIMIT).await? else {
                return Ok(Flow::Close);
            };
            if drop_mid_data {
                return Ok(Flow::Close);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let content = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + content.len() > MAX_SIZE {
                too_big = true;
            } else {
                data.extend_from_slice(content);
            }
        }
        let rcpt_to = std::mem::take(&mut self.rcpts);
        self.reset();
        let delay = self.shared.read(|s| {
            s.smtp_faults.iter().find_map(|f| match f {
                SmtpFault::DelayData(d) => Some(*d),
                _ => None,
            })
        });
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if too_big {
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                .await?;
            return Ok(Flow::Continue);
        }
        if let Some(r) = self.override_reply(SmtpStage::DataEnd, |f| match f {
            SmtpFault::DataReply(r) => Some(r.clone()),
            _ => None,
        }) {
            self.reply(&r).await?;
            return Ok(Flow::Continue);
        }
        if let Some(from) = headers::from_address(&data) {
            if !app.may_send_as(&from) {
                self.reply(&format!(
                    "554 5.2.252 SendAsDenied; {} not allowed to send as {from}; \
                     STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; \
                     Failed to process message due to a permanent exception with message \
                     [BeginDiagnosticData]Cannot submit message. [Hostname={SERVER}]",
                    app.mailbox
                ))
                .await?;
                return Ok(Flow::Continue);
            }
        }
        let over_rate = self.shared.with(|s| {
            let Some((limit, window)) = s.smtp_rate_limit else {
                return false;
            };
            let now = std::time::Instant::now();
            while s
                .smtp_accepted_at
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                s.smtp_accepted_at.pop_front();
            }
            if s.smtp_accepted_at.len() >= limit {
                s.smtp_rate_refusals += 1;
                return true;
            }
            s.smtp_accepted_at.push_back(now);
            false
        });
        if over_rate {
            self.reply("421 4.4.2 Message submission rate for this client has exceeded the configured limit")
                .await?;
            return Ok(Flow::Continue);
        }
        let message_id = headers::fields(headers::header_block_or_all(&data))
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Message-ID"))
            .map(|(_, v)| v)
            .unwrap_or_else(|| format!("<{}@{HOST}>", super::directory::guid()));
        let n = self.shared.with(|s| {
            s.delivered.push(Delivered {
                mail_from,
                rcpt_to,
                data,
                via: Via::Smtp,
                user: app.mailbox.clone(),
            });
            s.delivered.len()
        });
        self.reply(&format!(
            "250 2.6.0 {message_id} [InternalId={n}, Hostname={SERVER}] Queued mail for delivery"
        ))
        .await?;
        Ok(Flow::Continue)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mailbox = self.counted_mailbox.take();
        self.shared.with(|s| {
            s.smtp_current -= 1;
            if let Some(n) = mailbox.and_then(|m| s.smtp_sessions_per_mailbox.get_mut(&m)) {
                *n -= 1;
            }
        });
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn multiline(code: u16, lines: &[String]) -> String {
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{code}{}{l}", if i == last { ' ' } else { '-' }))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// `FROM:<addr> PARAMS` / `TO:<addr> PARAMS` (a space after the colon is tolerated).
fn parse_path(arg: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (addr, params) = rest.split_once('>')?;
    Some((
        addr.trim().to_string(),
        params.split_whitespace().map(str::to_string).collect(),
    ))
}

/// `(user, token)` from a base64 XOAUTH2 initial response.
fn decode_xoauth2(payload: &str) -> Option<(String, String)> {
    let bytes = STANDARD
        .decode(payload)
        .or_else(|_| STANDARD_NO_PAD.decode(payload))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut user = None;
    let mut token = None;
    for part in text.split('\x01') {
        if let Some(u) = part.strip_prefix("user=") {
            user = Some(u.to_string());
        } else if let Some(a) = part.strip_prefix("auth=") {
            let (scheme, t) = a.split_once(' ')?;
            if scheme.eq_ignore_ascii_case("Bearer") {
                token = Some(t.to_string());
            }
        }
    }
    if !text.ends_with("\x01\x01") {
        return None;
    }
    Some((user?, token?))
}
