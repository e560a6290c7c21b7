//! One SMTP session: the state machine over one connection, one method per verb.
//!
//! The state is small: whether the client has said EHLO/HELO, whether the connection is
//! encrypted, who authenticated, and the mail transaction in progress (sender, tenant,
//! recipients). The settings are taken when the session starts and again at EHLO/HELO, AUTH
//! and MAIL, the points where no transaction is in progress, so a reload applies to the next
//! transaction and never changes the rules in the middle of one.
//!
//! Adding a verb means one arm in [`Session::execute`] and one method.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{MailFrom, RcptTo, Request};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Context;
use super::auth::{self, Credentials, SaslError};
use super::conn::{BoxStream, Conn, Line};
use super::data::{self, Abort, Outcome};
use super::listener::SessionGuard;
use super::reply::{self, Reply, printable};
use super::tls::is_local;
use crate::config::{AuthMode, ListenerOptions, TlsMode};
use crate::metrics::Metrics;
use crate::queue::{Envelope, Incoming};
use crate::routing::{Hints, matches_pattern};
use crate::server::Settings;
use crate::shutdown::Shutdown;

/// Bad commands in a row after which we give up on the client (RFC 5321 leaves the number to
/// us; Postfix uses 20 as well).
const MAX_ERRORS: u32 = 20;

/// The window of `smtp.max_messages_per_client_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);

/// Serves one accepted connection to its end. On an implicit TLS listener the handshake
/// comes first, within the command timeout.
pub(super) async fn run(
    stream: TcpStream,
    peer: IpAddr,
    listener: Arc<ListenerOptions>,
    ctx: Arc<Context>,
    shutdown: Shutdown,
    guard: SessionGuard,
) {
    let stream: BoxStream = if listener.tls == TlsMode::Implicit {
        let settings = ctx.settings.borrow().clone();
        // Failures are logged by the cache, once per reload.
        let Ok(acceptor) = ctx.tls.acceptor(&settings) else {
            return;
        };
        let limit = settings.config.smtp.command_timeout;
        match tokio::time::timeout(limit, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out");
                return;
            }
        }
    } else {
        Box::new(stream)
    };
    let tls = listener.tls == TlsMode::Implicit;
    serve_stream(stream, peer, tls, listener, ctx, shutdown, Some(guard)).await;
}

/// Serves a connection that is ready for the greeting; `tls` says whether it is encrypted.
/// `guard` is the session's place in the session count (none for an in-memory session).
pub(super) async fn serve_stream(
    stream: BoxStream,
    peer: IpAddr,
    tls: bool,
    listener: Arc<ListenerOptions>,
    ctx: Arc<Context>,
    shutdown: Shutdown,
    guard: Option<SessionGuard>,
) {
    let settings = ctx.settings.borrow().clone();
    let smtp = &settings.config.smtp;
    let conn = Conn::new(stream, smtp.command_timeout);
    let deadline = Instant::now() + smtp.max_session_duration;
    let mut session = Session {
        guard,
        conn,
        ctx,
        settings,
        shutdown,
        peer,
        local: is_local(peer),
        tls,
        listener,
        deadline,
        helo: None,
        user: None,
        tx: None,
        errors: 0,
    };
    tracing::debug!(client = %peer, tls, "SMTP session opened");
    session.serve().await;
    tracing::debug!(client = %peer, "SMTP session closed");
}

struct Helo {
    name: String,
    extended: bool,
}

/// Who authenticated, as configured when they did.
struct User {
    name: String,
    tenant: String,
    senders: Vec<String>,
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

struct Session {
    /// Released just before we close the connection (and, as fields drop in declaration
    /// order, before the socket when the client closed first), so a session has left the count
    /// by the time its client sees the end of the connection.
    guard: Option<SessionGuard>,
    conn: Conn<BoxStream>,
    ctx: Arc<Context>,
    settings: Arc<Settings>,
    shutdown: Shutdown,
    peer: IpAddr,
    /// The client is on this machine: it may authenticate without TLS.
    local: bool,
    /// The connection is encrypted (implicit TLS or after STARTTLS).
    tls: bool,
    listener: Arc<ListenerOptions>,
    /// `smtp.max_session_duration` after the start: no wait goes beyond it.
    deadline: Instant,
    helo: Option<Helo>,
    user: Option<User>,
    tx: Option<Transaction>,
    /// Consecutive replies blaming the client (5xx).
    errors: u32,
}

impl Session {
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
                    Ok(Some(reply)) => reply,
                    Ok(None) => continue,
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

    /// When the current wait for the client must end: the per-command limit, or the end of
    /// the session's lifetime if that comes first.
    fn wait_until(&self, limit: Duration) -> Instant {
        (Instant::now() + limit).min(self.deadline)
    }

    /// Waits for the next command line (or SASL response), within the command timeout,
    /// unless shutdown comes first. A line already in the buffer wins over shutdown: it was
    /// sent before we stopped.
    async fn next_command(&mut self, line: &mut Vec<u8>) -> Input {
        let smtp = &self.settings.config.smtp;
        let max = smtp.max_line_length;
        let until = self.wait_until(smtp.command_timeout);
        // Flush outside the select, so that shutdown can only ever cancel a read.
        if self.conn.flush_if_idle().await.is_err() {
            return Input::Closed;
        }
        tokio::select! {
            biased;
            read = tokio::time::timeout_at(until, self.conn.read_line(line, max)) => match read {
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
        let hostname = &self.settings.config.hostname;
        if Instant::now() >= self.deadline {
            tracing::info!(client = %self.peer, "SMTP session reached smtp.max_session_duration");
            return Reply::new(
                421,
                format!("4.4.2 {hostname} Error: session lasted too long"),
            );
        }
        tracing::debug!(client = %self.peer, "SMTP session timed out");
        Reply::new(421, format!("4.4.2 {hostname} Error: timeout exceeded"))
    }

    /// Runs one command. `None`: nothing to send (STARTTLS has answered already).
    async fn execute(&mut self, line: &[u8]) -> Result<Option<Reply>, Gone> {
        let request = match parse(line) {
            Ok(request) => request,
            Err(reply) => return Ok(Some(reply)),
        };
        // Draining: finish what was in flight, start nothing new.
        if self.shutdown.is_shutdown() && !matches!(request, Request::Quit) {
            return Ok(Some(reply::SHUTTING_DOWN));
        }
        Ok(Some(match request {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data().await.map(Some),
            Request::Rset => self.rset(),
            Request::Noop { .. } => reply::OK,
            Request::Vrfy { .. } => reply::VRFY,
            Request::Help { .. } => reply::HELP,
            Request::Quit => reply::BYE,
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await.map(Some),
            Request::Expn { .. }
            | Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => reply::NOT_IMPLEMENTED,
            Request::Lhlo { .. } => reply::UNRECOGNIZED,
        }))
    }

    fn reload(&mut self) {
        self.settings = self.ctx.settings.borrow().clone();
    }

    /// SMTP AUTH in force on this connection: the listener's, else `smtp.auth`.
    fn auth_mode(&self) -> AuthMode {
        self.listener.auth.unwrap_or(self.settings.config.smtp.auth)
    }

    /// Credentials may cross this connection: it is encrypted or never leaves the machine.
    fn may_authenticate(&self) -> bool {
        self.tls || self.local
    }

    fn ehlo(&mut self, host: String, extended: bool) -> Reply {
        self.reload();
        self.tx = None;
        self.helo = Some(Helo {
            name: host,
            extended,
        });
        let config = &self.settings.config;
        if !extended {
            return Reply::new(250, config.hostname.clone());
        }
        let mut text = format!(
            "{}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES",
            config.hostname, config.smtp.max_message_size
        );
        if self.listener.tls == TlsMode::Starttls && !self.tls {
            text.push_str("\nSTARTTLS");
        }
        if self.auth_mode() != AuthMode::Off && self.may_authenticate() {
            text.push_str("\nAUTH PLAIN LOGIN");
        }
        text.push_str("\nHELP");
        Reply::new(250, text)
    }

    fn mail(&mut self, from: MailFrom<String>) -> Reply {
        if self.helo.is_none() {
            return reply::HELO_FIRST;
        }
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        self.reload();
        if self.auth_mode() == AuthMode::Required && self.user.is_none() {
            let starttls_would_help =
                !self.may_authenticate() && self.listener.tls == TlsMode::Starttls;
            return if starttls_would_help {
                reply::STARTTLS_FIRST
            } else {
                reply::AUTH_REQUIRED
            };
        }
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
        if let Some(user) = &self.user
            && !user.senders.is_empty()
            && !user.senders.iter().any(|p| matches_pattern(p, &sender))
        {
            tracing::info!(
                client = %self.peer,
                user = printable(&user.name, 64),
                from = %printable(&sender, 256),
                "refusing mail: sender not allowed for this user"
            );
            return reply::SENDER_NOT_ALLOWED;
        }
        if let Err(e) = self.ctx.spool.check_space() {
            tracing::warn!(client = %self.peer, error = %e, "refusing mail: no room in the spool");
            return reply::NO_STORAGE;
        }
        let hints = Hints {
            listener_tenant: self.listener.tenant.as_deref(),
            user_tenant: self.user.as_ref().map(|u| u.tenant.as_str()),
        };
        let config = &self.settings.config;
        let tenant = self
            .settings
            .router
            .route(&sender, hints)
            // A tenant bound to a listener or user may have gone in a reload.
            .filter(|t| config.tenant(t).is_some());
        let Some(tenant) = tenant else {
            tracing::info!(client = %self.peer, from = %sender, "refusing mail: no tenant for sender");
            return Reply::new(
                550,
                format!(
                    "5.7.1 <{}>: no tenant is configured to send mail from this sender",
                    printable(&sender, 256)
                ),
            );
        };
        let tenant = tenant.to_string();
        let per_minute = config.smtp.max_messages_per_client_per_minute;
        let now = std::time::Instant::now();
        if !self
            .ctx
            .limits
            .messages
            .try_acquire(self.peer, per_minute, MINUTE, now)
        {
            tracing::warn!(
                client = %self.peer,
                limit = per_minute,
                "refusing mail: smtp.max_messages_per_client_per_minute reached"
            );
            return reply::TOO_MANY_MESSAGES;
        }
        self.tx = Some(Transaction {
            tenant,
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

    /// STARTTLS (RFC 3207): `220`, then the handshake on the same connection, then a fresh
    /// start: everything learnt before TLS (EHLO, AUTH, a transaction) is forgotten, and
    /// whatever the client pipelined after the command is discarded unread. Answers itself.
    async fn starttls(&mut self) -> Result<Option<Reply>, Gone> {
        if self.tls {
            return Ok(Some(reply::TLS_ACTIVE));
        }
        if self.listener.tls != TlsMode::Starttls {
            return Ok(Some(reply::NO_TLS));
        }
        self.reload();
        let Ok(acceptor) = self.ctx.tls.acceptor(&self.settings) else {
            return Ok(Some(reply::NO_TLS));
        };
        self.conn.queue(&reply::READY_TLS);
        let (stream, discarded) = self.conn.take_stream().await.map_err(|_| Gone)?;
        if discarded > 0 {
            tracing::warn!(
                client = %self.peer,
                bytes = discarded,
                "discarded input pipelined after STARTTLS (a client bug or a command injection attempt)"
            );
        }
        let until = self.wait_until(self.settings.config.smtp.command_timeout);
        match tokio::time::timeout_at(until, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                self.conn.put_stream(Box::new(tls));
                self.tls = true;
                self.helo = None;
                self.user = None;
                self.tx = None;
                tracing::debug!(client = %self.peer, "STARTTLS done");
                Ok(None)
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %self.peer, error = %e, "STARTTLS handshake failed");
                Err(Gone)
            }
            Err(_) => {
                tracing::debug!(client = %self.peer, "STARTTLS handshake timed out");
                Err(Gone)
            }
        }
    }

    /// AUTH PLAIN or LOGIN (RFC 4954), then an Argon2 check off the async threads. Failures
    /// count against the client address; past `smtp.max_auth_failures` within
    /// `smtp.auth_failure_window` the address is refused for a while.
    async fn auth(&mut self, mechanism: u64, initial: String) -> Result<Reply, Gone> {
        self.reload();
        if self.auth_mode() == AuthMode::Off {
            return Ok(reply::NO_AUTH);
        }
        if self.helo.is_none() {
            return Ok(reply::HELO_FIRST);
        }
        if self.user.is_some() {
            return Ok(reply::ALREADY_AUTHENTICATED);
        }
        if self.tx.is_some() {
            return Ok(reply::AUTH_IN_TRANSACTION);
        }
        if !self.may_authenticate() {
            tracing::info!(client = %self.peer, "refusing AUTH without TLS from a remote client");
            return Ok(reply::ENCRYPTION_REQUIRED);
        }
        if mechanism != smtp_proto::AUTH_PLAIN && mechanism != smtp_proto::AUTH_LOGIN {
            return Ok(reply::UNKNOWN_MECHANISM);
        }
        let smtp = &self.settings.config.smtp;
        let (max_failures, window) = (smtp.max_auth_failures, smtp.auth_failure_window);
        let limits = &self.ctx.limits;
        if limits.auth_failures.is_limited(
            self.peer,
            max_failures,
            window,
            std::time::Instant::now(),
        ) {
            tracing::warn!(client = %self.peer, "refusing AUTH: too many failed attempts from this address");
            return Ok(reply::AUTH_LOCKED);
        }
        let credentials = match self.sasl_exchange(mechanism, initial).await? {
            Ok(credentials) => credentials,
            Err(reply) => return Ok(reply),
        };

        let settings = self.settings.clone();
        let smtp = &settings.config.smtp;
        let account = smtp.user(&credentials.user);
        // An unknown name costs a check as well (against another user's hash, whose result
        // is ignored), so response times do not tell which names exist.
        let Some(phc) = account
            .or(smtp.users.first())
            .map(|u| u.password_hash.expose().to_string())
        else {
            return Ok(reply::AUTH_FAILED);
        };
        let matched = {
            let Ok(_permit) = self.ctx.limits.verifications.acquire().await else {
                return Ok(reply::AUTH_TEMPORARY);
            };
            let name = credentials.user.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let c = credentials;
                auth::verify(&phc, &c.password)
            })
            .await;
            match checked {
                Ok(matched) => matched && account.is_some_and(|u| u.name == name),
                Err(e) => {
                    tracing::error!(error = %e, "password check failed to run");
                    return Ok(reply::AUTH_TEMPORARY);
                }
            }
        };
        let name = printable(account.map_or("", |u| u.name.as_str()), 64);
        match account {
            Some(user) if matched => {
                tracing::info!(client = %self.peer, user = %name, "authenticated");
                self.user = Some(User {
                    name: user.name.clone(),
                    tenant: user.tenant.clone(),
                    senders: user.senders.clone(),
                });
                Ok(reply::AUTH_OK)
            }
            _ => {
                self.ctx.limits.auth_failures.record(
                    self.peer,
                    max_failures,
                    window,
                    std::time::Instant::now(),
                );
                tracing::warn!(
                    client = %self.peer,
                    known_user = account.is_some(),
                    user = %name,
                    "authentication failed"
                );
                Ok(reply::AUTH_FAILED)
            }
        }
    }

    /// The `334` exchange of one mechanism, up to the name and password.
    async fn sasl_exchange(
        &mut self,
        mechanism: u64,
        initial: String,
    ) -> Result<Result<Credentials, Reply>, Gone> {
        let initial = (!initial.is_empty()).then_some(initial);
        let decoded = |line: &[u8]| {
            auth::decode(line).map_err(|e| match e {
                SaslError::Cancelled => reply::AUTH_CANCELLED,
                SaslError::Malformed => reply::AUTH_MALFORMED,
            })
        };
        macro_rules! step {
            ($r:expr) => {
                match $r {
                    Ok(v) => v,
                    Err(reply) => return Ok(Err(reply)),
                }
            };
        }
        if mechanism == smtp_proto::AUTH_PLAIN {
            let message = match initial {
                Some(text) => step!(decoded(text.as_bytes())),
                None => step!(decoded(&step!(self.challenge("").await?))),
            };
            return Ok(auth::plain(&message).map_err(|_| reply::AUTH_MALFORMED));
        }
        let user = match initial {
            Some(text) => step!(decoded(text.as_bytes())),
            None => step!(decoded(&step!(self.challenge(auth::LOGIN_USERNAME).await?))),
        };
        let user = step!(auth::username(&user).map_err(|_| reply::AUTH_MALFORMED));
        let password = step!(decoded(&step!(self.challenge(auth::LOGIN_PASSWORD).await?)));
        Ok(Ok(Credentials { user, password }))
    }

    /// Sends `334 text` and reads the client's answer line.
    async fn challenge(&mut self, text: &str) -> Result<Result<Vec<u8>, Reply>, Gone> {
        self.conn.queue(&Reply::new(334, text.to_string()));
        let mut line = Vec::new();
        Ok(match self.next_command(&mut line).await {
            Input::Line => Ok(line),
            Input::TooLong => Err(reply::AUTH_LINE_TOO_LONG),
            Input::Closed => return Err(Gone),
            Input::Timeout => Err(self.timeout_reply()),
            Input::Shutdown => Err(reply::SHUTTING_DOWN),
        })
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
            data::protocol(extended, self.tls, self.user.is_some()),
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
        match data::receive(&mut self.conn, incoming, max_size, timeout, self.deadline).await {
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
            user = self.user.as_ref().map(|u| printable(&u.name, 64)),
            tls = self.tls,
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
