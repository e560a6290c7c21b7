//! The SMTP server over real TCP on 127.0.0.1, with a spool in a temporary directory.
//! Every wait is bounded by [`WAIT`], so a broken server fails a test instead of hanging it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::conn::BoxStream;
use super::{ClientLimits, Context, ListenerOptions, SessionCount, TlsCache, serve};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::{Envelope, Spool};
use crate::server::Settings;
use crate::shutdown::{self, Trigger};

const WAIT: Duration = Duration::from_secs(10);

/// Routes `*@contoso.com` only: any other sender has no tenant.
const ROUTED: &str = r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@contoso.com"
senders = ["*@contoso.com"]
"#;

/// The default tenant: takes every sender no other tenant claims, the null sender included.
const DEFAULT: &str = r#"
[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@fabrikam.com"
"#;

const SMALL: &str = "max_message_size = 2048\nmax_recipients = 3\n";

struct Relay {
    addr: SocketAddr,
    spool: Spool,
    ctx: Arc<Context>,
    accepted: mpsc::UnboundedReceiver<Envelope>,
    settings: watch::Sender<Arc<Settings>>,
    trigger: Trigger,
    server: JoinHandle<()>,
    dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, smtp: &str, tenants: &str) -> Config {
    let text = format!(
        "state_dir = {:?}\nhostname = \"relay.test\"\n[smtp]\n{smtp}\n{tenants}",
        dir.display().to_string()
    );
    Config::from_toml(&text).expect("test config")
}

async fn start(smtp: &str) -> Relay {
    start_with(smtp, ROUTED, 0).await
}

async fn start_with(smtp: &str, tenants: &str, min_free_space: u64) -> Relay {
    start_listener(smtp, tenants, min_free_space, ListenerOptions::default()).await
}

async fn start_listener(
    smtp: &str,
    tenants: &str,
    min_free_space: u64,
    options: ListenerOptions,
) -> Relay {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = smtp.replace(TLS_KEYS, &test_cert().install(dir.path(), "relay"));
    let settings = Settings::new(config(dir.path(), &smtp, tenants));
    let spool = Spool::open(dir.path(), min_free_space).expect("spool");
    let (settings_tx, settings_rx) = watch::channel(settings);
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        settings: settings_rx,
        spool: spool.clone(),
        accepted: accepted_tx,
        metrics: Arc::new(Metrics::new()),
        sessions: SessionCount::default(),
        limits: ClientLimits::default(),
        tls: TlsCache::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = shutdown::channel();
    let server = tokio::spawn(serve(listener, options, ctx.clone(), shutdown, WAIT));
    Relay {
        addr,
        spool,
        ctx,
        accepted,
        settings: settings_tx,
        trigger,
        server,
        dir,
    }
}

impl Relay {
    async fn envelope(&mut self) -> Envelope {
        tokio::time::timeout(WAIT, self.accepted.recv())
            .await
            .expect("an envelope in time")
            .expect("channel open")
    }

    fn stored(&self) -> Vec<Envelope> {
        let (all, errors) = self.spool.scan().expect("scan");
        assert!(errors.is_empty(), "{errors:?}");
        all
    }

    fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.spool.root().join("tmp"))
            .expect("tmp")
            .count()
    }

    fn received(&self, tenant: &str) -> u64 {
        self.ctx
            .metrics
            .messages_received
            .get_or_create(&Metrics::tenant(tenant))
            .get()
    }
}

struct Client {
    reader: BufReader<ReadHalf<BoxStream>>,
    writer: WriteHalf<BoxStream>,
}

impl Client {
    /// Connects and returns the client with the server's first reply.
    async fn connect(addr: SocketAddr) -> (Client, String) {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut client = Client::over(Box::new(stream));
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// A client over any stream (TLS, an in-memory pipe), before the greeting.
    fn over(stream: BoxStream) -> Client {
        let (r, w) = tokio::io::split(stream);
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// The stream back, for a TLS handshake; nothing may be left unread.
    fn into_stream(self) -> BoxStream {
        assert!(self.reader.buffer().is_empty(), "unread server output");
        self.reader.into_inner().unsplit(self.writer)
    }

    /// Connects, checks the greeting and says EHLO.
    async fn ready(addr: SocketAddr) -> Client {
        let (mut c, greeting) = Client::connect(addr).await;
        assert_eq!(greeting, "220 relay.test ESMTP authrelay");
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250-relay.test"), "{ehlo}");
        c
    }

    async fn send(&mut self, data: &[u8]) {
        tokio::time::timeout(WAIT, self.writer.write_all(data))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Reads one whole reply; the lines of a multi-line reply are joined with `\n`.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("a reply in time")
                .expect("read");
            assert!(n > 0, "connection closed; got {lines:?}");
            let text = line
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("reply line without CRLF: {line:?}"));
            assert!(text.len() >= 4, "short reply line {text:?}");
            let last = text.as_bytes()[3] == b' ';
            lines.push(text.to_string());
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True once the server has closed the connection (and sent nothing more).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_to_end(&mut rest))
            .await
            .expect("close in time")
            .unwrap_or(0);
        n == 0
    }

    /// MAIL, RCPT each, DATA and the content; returns the final reply.
    async fn message(&mut self, from: &str, to: &[&str], content: &[u8]) -> String {
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Sender OK"
        );
        for rcpt in to {
            assert_eq!(
                self.cmd(&format!("RCPT TO:<{rcpt}>")).await,
                "250 2.1.5 Recipient OK"
            );
        }
        assert_eq!(
            self.cmd("DATA").await,
            "354 End data with <CR><LF>.<CR><LF>"
        );
        self.send(content).await;
        self.reply().await
    }
}

/// The queue id from `250 2.0.0 Ok: queued as ID`.
fn queued_id(reply: &str) -> &str {
    reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not accepted: {reply}"))
}

/// The stored message without our `Received:` header (its first line and the continuation
/// lines after it).
fn without_trace(message: &[u8]) -> &[u8] {
    assert!(message.starts_with(b"Received: "), "no trace header");
    let mut rest = message;
    let mut first = true;
    while first || rest.starts_with(b"\t") {
        first = false;
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => rest = &rest[i + 1..],
            None => return &[],
        }
    }
    rest
}

#[tokio::test]
async fn ehlo_helo_and_capabilities() {
    let relay = start(SMALL).await;
    let (mut c, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting, "220 relay.test ESMTP authrelay");
    assert_eq!(
        c.cmd("EHLO client.test").await,
        "250-relay.test\n250-PIPELINING\n250-SIZE 2048\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250 HELP"
    );
    assert_eq!(c.cmd("HELO client.test").await, "250 relay.test");
    assert!(c.cmd("EHLO").await.starts_with("501 5.5.4"));
    assert!(c.cmd("EHLO ").await.starts_with("501 5.5.4"));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    assert!(c.closed().await);
}

#[tokio::test]
async fn full_transaction_is_stored_and_handed_to_delivery() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com> BODY=8BITMIME SIZE=100")
            .await,
        "250 2.1.0 Sender OK"
    );
    for rcpt in ["bob@example.org", "BOB@example.org", "carol@example.org"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")).await,
            "250 2.1.5 Recipient OK"
        );
    }
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n").await;
    let reply = c.reply().await;
    let id = queued_id(&reply).to_string();

    let env = relay.envelope().await;
    assert_eq!(env.id, id);
    assert_eq!(env.tenant, "contoso");
    assert_eq!(env.mail_from, "alice@contoso.com");
    let rcpts: Vec<_> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["bob@example.org", "carol@example.org"]);
    assert_eq!(env.client, "127.0.0.1");

    let stored = relay.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(stored[0].recipients, env.recipients);
    let message = relay.spool.read_message(&id).await.expect("message");
    assert_eq!(stored[0].size, message.len() as u64);
    let head = String::from_utf8_lossy(&message).into_owned();
    let expected = format!(
        "Received: from client.test ([127.0.0.1])\r\n\tby relay.test (authrelay) with ESMTP id {id};\r\n\t"
    );
    assert!(head.starts_with(&expected), "{head}");
    assert_eq!(without_trace(&message), b"Subject: hi\r\n\r\nhello\r\n");
    assert_eq!(relay.tmp_files(), 0);
    assert_eq!(relay.received("contoso"), 1);

    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    assert!(c.closed().await);
}

#[tokio::test]
async fn dot_unstuffing() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    let reply = c
        .message(
            "alice@contoso.com",
            &["bob@example.org"],
            b"..x\r\nline\r\n..\r\n.end\r\n\r\n.\r\n",
        )
        .await;
    let id = queued_id(&reply).to_string();
    relay.envelope().await;
    let message = relay.spool.read_message(&id).await.expect("message");
    assert_eq!(without_trace(&message), b".x\r\nline\r\n.\r\nend\r\n\r\n");
}

#[tokio::test]
async fn empty_message_is_stored() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b".\r\n")
        .await;
    let id = queued_id(&reply).to_string();
    assert_eq!(relay.envelope().await.id, id);
    let message = relay.spool.read_message(&id).await.expect("message");
    assert_eq!(without_trace(&message), b"");
}

#[tokio::test]
async fn bare_lf_client() {
    let mut relay = start(SMALL).await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.send(b"HELO lf.test\n").await;
    assert_eq!(c.reply().await, "250 relay.test");
    c.send(b"MAIL FROM:alice@contoso.com\nRCPT TO:bob@example.org\nDATA\n")
        .await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"Subject: lf\n\n..hi\n.\n").await;
    let reply = c.reply().await;
    let id = queued_id(&reply).to_string();
    relay.envelope().await;
    let message = relay.spool.read_message(&id).await.expect("message");
    assert!(message.starts_with(b"Received: from lf.test ([127.0.0.1])"));
    assert!(String::from_utf8_lossy(&message).contains(" with SMTP id "));
    assert_eq!(without_trace(&message), b"Subject: lf\n\n.hi\n");
}

#[tokio::test]
async fn oversized_message_is_refused_and_the_session_goes_on() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    big.extend_from_slice(b".\r\n");
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], &big)
        .await;
    assert_eq!(
        reply,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert!(relay.stored().is_empty());
    assert_eq!(relay.tmp_files(), 0);

    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b"small\r\n.\r\n")
        .await;
    let id = queued_id(&reply).to_string();
    assert_eq!(relay.envelope().await.id, id);
    assert_eq!(relay.stored().len(), 1);
}

#[tokio::test]
async fn declared_size_over_the_limit_is_refused_at_mail() {
    let relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com> SIZE=4096").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // No transaction was started: a new MAIL is not nested.
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com> SIZE=2048").await,
        "250 2.1.0 Sender OK"
    );
}

#[tokio::test]
async fn pipelined_commands_in_one_write() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    c.send(
        b"MAIL FROM:<alice@contoso.com>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n",
    )
    .await;
    // The four replies come back in one write, not one packet each.
    let first_read = tokio::time::timeout(WAIT, c.reader.fill_buf())
        .await
        .expect("replies in time")
        .expect("read");
    assert_eq!(
        first_read.iter().filter(|&&b| b == b'\n').count(),
        4,
        "{}",
        String::from_utf8_lossy(first_read)
    );
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    // The end of the content and the next commands in one write as well.
    c.send(b"one\r\n.\r\nMAIL FROM:<alice@contoso.com>\r\nRSET\r\nQUIT\r\n")
        .await;
    let reply = c.reply().await;
    let id = queued_id(&reply).to_string();
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.0.0 Ok");
    assert_eq!(c.reply().await, "221 2.0.0 Bye");
    assert!(c.closed().await);
    let env = relay.envelope().await;
    assert_eq!(env.id, id);
    assert_eq!(env.recipients.len(), 2);
}

#[tokio::test]
async fn too_many_recipients() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    for n in 0..3 {
        assert!(
            c.cmd(&format!("RCPT TO:<r{n}@example.org>"))
                .await
                .starts_with("250 ")
        );
    }
    assert_eq!(
        c.cmd("RCPT TO:<r3@example.org>").await,
        "452 4.5.3 Too many recipients"
    );
    // A duplicate of one already taken is still fine.
    assert!(c.cmd("RCPT TO:<r0@example.org>").await.starts_with("250 "));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"x\r\n.\r\n").await;
    queued_id(&c.reply().await);
    assert_eq!(relay.envelope().await.recipients.len(), 3);
}

#[tokio::test]
async fn sender_without_tenant_is_refused() {
    let relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<x@other.org>").await,
        "550 5.7.1 <x@other.org>: no tenant is configured to send mail from this sender"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<>").await,
        "550 5.7.1 <>: no tenant is configured to send mail from this sender"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert!(
        c.cmd("MAIL FROM:<bad address>")
            .await
            .starts_with("501 5.1.7")
    );
}

#[tokio::test]
async fn null_sender_goes_to_the_default_tenant() {
    let mut relay = start_with(SMALL, &format!("{ROUTED}{DEFAULT}"), 0).await;
    let mut c = Client::ready(relay.addr).await;
    let reply = c
        .message("", &["bob@example.org"], b"bounce\r\n.\r\n")
        .await;
    queued_id(&reply);
    let env = relay.envelope().await;
    assert_eq!(env.tenant, "fabrikam");
    assert_eq!(env.mail_from, "");
    assert_eq!(relay.received("fabrikam"), 1);
}

#[tokio::test]
async fn sequence_errors_and_other_verbs() {
    let relay = start(SMALL).await;
    let (mut c, _) = Client::connect(relay.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "503 5.5.1 EHLO/HELO first"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Need MAIL command");
    assert!(c.cmd("EHLO client.test").await.starts_with("250-"));
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "503 5.5.1 Nested MAIL command"
    );
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 No valid recipients");
    assert!(c.cmd("RCPT TO:<bob@example.org>").await.starts_with("250"));
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok");
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    assert_eq!(
        c.cmd("VRFY bob").await,
        "252 2.5.0 Cannot VRFY user, but will accept message"
    );
    assert!(c.cmd("EXPN list").await.starts_with("502 5.5.1"));
    assert!(c.cmd("HELP").await.starts_with("214 2.0.0"));
    assert_eq!(c.cmd("STARTTLS").await, "454 4.7.0 TLS not available");
    assert_eq!(
        c.cmd("AUTH PLAIN AGFAYg==").await,
        "503 5.5.1 Authentication not enabled"
    );
    assert!(c.cmd("BDAT 10 LAST").await.starts_with("502 5.5.1"));
    assert_eq!(c.cmd("FOO bar").await, "500 5.5.2 Command unrecognized");
    // EHLO resets the transaction.
    assert!(c.cmd("EHLO again.test").await.starts_with("250-"));
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
}

#[tokio::test]
async fn unknown_command_and_long_line_leave_the_session_usable() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(c.cmd("XYZZY").await, "500 5.5.2 Command unrecognized");
    let long = format!("NOOP {}", "x".repeat(20_000));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 Line too long");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b"x\r\n.\r\n")
        .await;
    queued_id(&reply);
    relay.envelope().await;
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    for _ in 0..20 {
        assert!(c.cmd("BOGUS").await.starts_with("500 "));
    }
    assert_eq!(c.cmd("BOGUS").await, "421 4.7.0 Too many errors");
    assert!(c.closed().await);
}

#[tokio::test]
async fn client_outside_the_allowlist_is_refused() {
    let relay = start(&format!("{SMALL}allowed_clients = [\"10.0.0.0/8\"]\n")).await;
    let (mut c, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting, "554 5.7.1 127.0.0.1 not allowed to relay");
    assert!(c.closed().await);
    assert_eq!(relay.ctx.sessions.active(), 0);
}

#[tokio::test]
async fn session_limit_is_enforced_and_released() {
    let relay = start(&format!("{SMALL}max_sessions = 1\n")).await;
    let mut first = Client::ready(relay.addr).await;
    let (mut second, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting, "421 4.7.0 Too many connections, try again later");
    assert!(second.closed().await);
    assert_eq!(relay.ctx.metrics.smtp_sessions_active.get(), 1);
    assert_eq!(first.cmd("QUIT").await, "221 2.0.0 Bye");
    assert!(first.closed().await);
    let (_third, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting, "220 relay.test ESMTP authrelay");
}

#[tokio::test]
async fn full_disk_is_refused_at_mail() {
    let relay = start_with(SMALL, ROUTED, u64::MAX).await;
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "452 4.3.1 Insufficient system storage"
    );
}

#[tokio::test]
async fn spool_failure_at_commit_is_never_a_250() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<bob@example.org>").await.starts_with("250"));
    // The rename into msg/ is going to fail.
    std::fs::remove_dir(relay.spool.root().join("msg")).expect("remove msg/");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: doomed\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await, "452 4.3.1 Insufficient system storage");
    assert!(relay.stored().is_empty());
    assert_eq!(relay.tmp_files(), 0);
    assert!(relay.accepted.try_recv().is_err());
    assert_eq!(relay.received("contoso"), 0);
    // The session is still usable.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
}

#[tokio::test]
async fn idle_client_times_out() {
    let relay = start(&format!("{SMALL}command_timeout = \"200ms\"\n")).await;
    let (mut c, _) = Client::connect(relay.addr).await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 relay.test Error: timeout exceeded"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn stalled_data_times_out_and_stores_nothing() {
    let relay = start(&format!("{SMALL}data_timeout = \"200ms\"\n")).await;
    let mut c = Client::ready(relay.addr).await;
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<bob@example.org>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: half\r\n").await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 relay.test Error: timeout exceeded"
    );
    assert!(c.closed().await);
    assert!(relay.stored().is_empty());
    assert_eq!(relay.tmp_files(), 0);
}

#[tokio::test]
async fn reload_applies_to_the_next_transaction() {
    let mut relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    let smaller = config(relay.dir.path(), "max_recipients = 1\n", ROUTED);
    relay.settings.send_replace(Settings::new(smaller));
    // The transaction in progress keeps the limit it started with.
    assert!(c.cmd("RCPT TO:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.org>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"x\r\n.\r\n").await;
    queued_id(&c.reply().await);
    assert_eq!(relay.envelope().await.recipients.len(), 2);
    // The next one gets the new one.
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.org>").await.starts_with("452"));
}

#[tokio::test]
async fn shutdown_finishes_data_and_closes_idle_sessions() {
    let mut relay = start(SMALL).await;
    let mut idle = Client::ready(relay.addr).await;
    let mut busy = Client::ready(relay.addr).await;
    assert!(
        busy.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250")
    );
    assert!(
        busy.cmd("RCPT TO:<bob@example.org>")
            .await
            .starts_with("250")
    );
    assert!(busy.cmd("DATA").await.starts_with("354"));
    busy.send(b"Subject: in flight\r\n\r\n").await;

    relay.trigger.fire();
    assert_eq!(idle.reply().await, "421 4.3.2 Service shutting down");
    assert!(idle.closed().await);

    busy.send(b"still here\r\n.\r\n").await;
    let reply = busy.reply().await;
    let id = queued_id(&reply).to_string();
    assert_eq!(relay.envelope().await.id, id);
    assert_eq!(busy.reply().await, "421 4.3.2 Service shutting down");
    assert!(busy.closed().await);

    tokio::time::timeout(WAIT, &mut relay.server)
        .await
        .expect("serve returns after draining")
        .expect("serve did not panic");
    assert_eq!(relay.ctx.sessions.active(), 0);
    assert_eq!(relay.ctx.metrics.smtp_sessions_active.get(), 0);
}

#[tokio::test]
async fn binary_garbage_gets_replies_not_a_crash() {
    let relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    c.send(b"\x00\xff\xfe MAIL\r\n").await;
    assert!(c.reply().await.starts_with("500 "));
    c.send(b"MAIL FROM:<\xff\x00@x>\r\n").await;
    assert!(c.reply().await.starts_with("501 "));
    c.send(b"RCPT TO:<a@b> \x01\x02=\x03\r\n").await;
    assert!(c.reply().await.starts_with("5"));
    c.send(b"\r\n").await;
    assert!(c.reply().await.starts_with("5"));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
}

// ---- Access control: AUTH, TLS, per-client limits ----

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use crate::config::{AuthMode, TlsMode};

fn b64(s: &str) -> String {
    BASE64.encode(s.as_bytes())
}

/// Two users: `app01` (tenant fabrikam, any sender) and `app02` (tenant contoso, only
/// `*@app02.internal`). Passwords `pw-one` and `pw-two`, hashed cheaply once.
fn users() -> &'static str {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS.get_or_init(|| {
        format!(
            "[[smtp.user]]\nname = \"app01\"\npassword_hash = \"{}\"\ntenant = \"fabrikam\"\n\n\
             [[smtp.user]]\nname = \"app02\"\npassword_hash = \"{}\"\ntenant = \"contoso\"\n\
             senders = [\"*@app02.internal\"]\n",
            super::auth::cheap_hash("pw-one"),
            super::auth::cheap_hash("pw-two"),
        )
    })
}

/// `[smtp]` keys, then the users.
fn with_users(keys: &str) -> String {
    format!("{SMALL}{keys}\n{}", users())
}

async fn start_auth(keys: &str, options: ListenerOptions) -> Relay {
    start_listener(&with_users(keys), &format!("{ROUTED}{DEFAULT}"), 0, options).await
}

fn listener(tls: TlsMode, auth: Option<AuthMode>) -> ListenerOptions {
    ListenerOptions {
        tls,
        auth,
        tenant: None,
    }
}

/// A self-signed certificate for `localhost`, as PEM and DER.
struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn new() -> TestCert {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: signing_key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns the `[smtp]` keys naming them.
    fn install(&self, dir: &Path, name: &str) -> String {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        format!(
            "tls_certificate_file = {:?}\ntls_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    }
}

/// One certificate for the whole test run (generating one takes a moment).
fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(TestCert::new)
}

/// In `[smtp]` text given to [`start_listener`]: replaced by the keys naming
/// [`test_cert`], written into the relay's directory as `relay.crt` and `relay.key`.
const TLS_KEYS: &str = "#tls-keys#\n";

/// A TLS client handshake over `stream`, trusting only `trust`.
async fn tls_connect(stream: BoxStream, trust: &CertificateDer<'static>) -> BoxStream {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).expect("trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("handshake in time")
        .expect("handshake");
    Box::new(tls)
}

/// A session served over an in-memory pipe as if the client were at `peer`, on a
/// connection that is (`tls = true`) or is not encrypted: how the "remote client" rules are
/// tested without a second machine.
async fn session_from(
    relay: &Relay,
    peer: &str,
    tls: bool,
    options: ListenerOptions,
) -> (Client, Trigger) {
    let peer: IpAddr = peer.parse().expect("ip");
    let (client, server) = tokio::io::duplex(64 * 1024);
    let guard = relay
        .ctx
        .sessions
        .try_open(100, 100, peer, &relay.ctx.metrics)
        .expect("session slot");
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(super::session::serve_stream(
        Box::new(server),
        peer,
        tls,
        Arc::new(options),
        relay.ctx.clone(),
        shutdown,
        Some(guard),
    ));
    let mut c = Client::over(Box::new(client));
    assert_eq!(c.reply().await, "220 relay.test ESMTP authrelay");
    (c, trigger)
}

#[tokio::test]
async fn auth_off_is_neither_offered_nor_accepted() {
    let relay = start_auth("", ListenerOptions::default()).await;
    let mut c = Client::ready(relay.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "503 5.5.1 Authentication not enabled"
    );
}

#[tokio::test]
async fn auth_optional_plain_and_routing_by_user() {
    let mut relay = start_auth("auth = \"optional\"\n", ListenerOptions::default()).await;
    let mut c = Client::ready(relay.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN\n"), "{ehlo}");
    // Without AUTH, mail is routed by sender as usual.
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b"x\r\n.\r\n")
        .await;
    queued_id(&reply);
    assert_eq!(relay.envelope().await.tenant, "contoso");
    // app01's mail goes through fabrikam, whatever the sender's domain says.
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "503 5.5.1 Already authenticated"
    );
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b"y\r\n.\r\n")
        .await;
    let id = queued_id(&reply).to_string();
    assert_eq!(relay.envelope().await.tenant, "fabrikam");
    let message = relay.spool.read_message(&id).await.expect("message");
    assert!(
        String::from_utf8_lossy(&message).contains(" with ESMTPA id "),
        "{}",
        String::from_utf8_lossy(&message)
    );
}

#[tokio::test]
async fn auth_required_login_and_plain_without_initial_response() {
    let mut relay = start_auth("auth = \"required\"\n", ListenerOptions::default()).await;
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "530 5.7.0 Authentication required"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("app02")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64("pw-two")).await,
        "235 2.7.0 Authentication successful"
    );
    // app02 may only use *@app02.internal.
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "550 5.7.1 Sender address not allowed for this user"
    );
    let reply = c
        .message("cron@APP02.internal", &["bob@example.org"], b"x\r\n.\r\n")
        .await;
    queued_id(&reply);
    assert_eq!(relay.envelope().await.tenant, "contoso");

    // PLAIN with the credentials in a second step, LOGIN with the name up front.
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(
        c.cmd(&b64("app01\0app01\0pw-one")).await,
        "235 2.7.0 Authentication successful"
    );
    let mut c = Client::ready(relay.addr).await;
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", b64("app01"))).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&b64("pw-one")).await,
        "235 2.7.0 Authentication successful"
    );
    assert!(
        c.cmd("MAIL FROM:<anyone@anywhere.example>")
            .await
            .starts_with("250 ")
    );
}

#[tokio::test]
async fn bad_credentials_and_malformed_exchanges() {
    let relay = start_auth("auth = \"optional\"\n", ListenerOptions::default()).await;
    let mut c = Client::ready(relay.addr).await;
    let invalid = "535 5.7.8 Authentication credentials invalid";
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0wrong")))
            .await,
        invalid
    );
    // Another user's password, an unknown user: the same answer.
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-two")))
            .await,
        invalid
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0nobody\0pw-one")))
            .await,
        invalid
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("*").await, "501 5.0.0 Authentication cancelled");
    assert_eq!(
        c.cmd("AUTH PLAIN %%%").await,
        "501 5.5.2 Cannot decode response"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("admin\0app01\0pw-one")))
            .await,
        "501 5.5.2 Cannot decode response"
    );
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "504 5.5.4 Unrecognized authentication type"
    );
    assert!(
        c.cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250 ")
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "503 5.5.1 AUTH not permitted during a mail transaction"
    );
    // Before EHLO.
    let (mut fresh, _) = Client::connect(relay.addr).await;
    assert_eq!(
        fresh
            .cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "503 5.5.1 EHLO/HELO first"
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_address_out() {
    let relay = start_auth(
        "auth = \"optional\"\nmax_auth_failures = 3\n",
        ListenerOptions::default(),
    )
    .await;
    let mut c = Client::ready(relay.addr).await;
    for _ in 0..3 {
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0guess")))
                .await,
            "535 5.7.8 Authentication credentials invalid"
        );
    }
    let locked = "454 4.7.0 Too many failed attempts, try again later";
    // Now even the right password is not checked, in this session or a new one.
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        locked
    );
    let mut again = Client::ready(relay.addr).await;
    assert_eq!(again.cmd("AUTH LOGIN").await, locked);
    // Mail without AUTH still flows on an optional listener.
    assert!(
        again
            .cmd("MAIL FROM:<alice@contoso.com>")
            .await
            .starts_with("250 ")
    );
}

#[tokio::test]
async fn remote_clients_must_use_tls_to_authenticate() {
    let relay = start_auth("auth = \"optional\"\n", ListenerOptions::default()).await;
    // Loopback: allowed in clear text (tested above). From another machine without TLS:
    let (mut c, _t) = session_from(&relay, "192.0.2.10", false, ListenerOptions::default()).await;
    let ehlo = c.cmd("EHLO remote.test").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    // A listener that requires AUTH sends such a client to STARTTLS first, where it can.
    let required = listener(TlsMode::Starttls, Some(AuthMode::Required));
    let (mut c, _t2) = session_from(&relay, "192.0.2.10", false, required.clone()).await;
    let ehlo = c.cmd("EHLO remote.test").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    let plain_only = listener(TlsMode::None, Some(AuthMode::Required));
    let (mut c, _t4) = session_from(&relay, "192.0.2.10", false, plain_only).await;
    c.cmd("EHLO remote.test").await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "530 5.7.0 Authentication required"
    );
    // The same remote client over an encrypted connection may.
    let (mut c, _t3) = session_from(&relay, "192.0.2.10", true, required).await;
    let ehlo = c.cmd("EHLO remote.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await,
        "235 2.7.0 Authentication successful"
    );
}

#[tokio::test]
async fn listener_auth_and_tenant_override_the_defaults() {
    let options = ListenerOptions {
        tls: TlsMode::None,
        auth: Some(AuthMode::Off),
        tenant: Some("fabrikam".into()),
    };
    let mut relay = start_auth("auth = \"required\"\n", options).await;
    let mut c = Client::ready(relay.addr).await;
    // AUTH is off here despite [smtp] auth = "required"; the listener's tenant takes the mail.
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b"x\r\n.\r\n")
        .await;
    queued_id(&reply);
    assert_eq!(relay.envelope().await.tenant, "fabrikam");
}

#[tokio::test]
async fn starttls_upgrades_and_resets_the_session() {
    let cert = test_cert();
    let mut relay = start_auth(
        &format!("auth = \"required\"\n{TLS_KEYS}"),
        listener(TlsMode::Starttls, None),
    )
    .await;
    let (mut c, _) = Client::connect(relay.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("250-STARTTLS\n"), "{ehlo}");
    // Loopback may authenticate before TLS; STARTTLS forgets it (RFC 3207 4.2).
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await
            .starts_with("235 ")
    );
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let mut c = Client::over(tls_connect(c.into_stream(), &cert.der).await);
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "503 5.5.1 EHLO/HELO first"
    );
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active");
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "530 5.7.0 Authentication required"
    );
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0app01\0pw-one")))
            .await
            .starts_with("235 ")
    );
    let reply = c
        .message(
            "alice@contoso.com",
            &["bob@example.org"],
            b"secret\r\n.\r\n",
        )
        .await;
    let id = queued_id(&reply).to_string();
    assert_eq!(relay.envelope().await.tenant, "fabrikam");
    let message = relay.spool.read_message(&id).await.expect("message");
    assert!(String::from_utf8_lossy(&message).contains(" with ESMTPSA id "));
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let cert = test_cert();
    let relay = start_listener(
        &format!("{SMALL}{TLS_KEYS}"),
        ROUTED,
        0,
        listener(TlsMode::Starttls, None),
    )
    .await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO client.test").await;
    // The classic injection: commands sent in clear text with STARTTLS, hoping the server
    // runs them inside the TLS session.
    c.send(b"STARTTLS\r\nMAIL FROM:<mallory@contoso.com>\r\nRCPT TO:<victim@example.org>\r\n")
        .await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let mut c = Client::over(tls_connect(c.into_stream(), &cert.der).await);
    // The first reply over TLS answers our EHLO, not an injected command.
    assert!(
        c.cmd("EHLO client.test")
            .await
            .starts_with("250-relay.test")
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.org>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
}

#[tokio::test]
async fn starttls_is_refused_where_not_configured() {
    let relay = start(SMALL).await;
    let mut c = Client::ready(relay.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").await, "454 4.7.0 TLS not available");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
}

#[tokio::test]
async fn implicit_tls_listener() {
    let cert = test_cert();
    let mut relay = start_listener(
        &format!("{SMALL}{TLS_KEYS}"),
        ROUTED,
        0,
        listener(TlsMode::Implicit, None),
    )
    .await;
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let mut c = Client::over(tls_connect(Box::new(tcp), &cert.der).await);
    assert_eq!(c.reply().await, "220 relay.test ESMTP authrelay");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let reply = c
        .message("alice@contoso.com", &["bob@example.org"], b"hi\r\n.\r\n")
        .await;
    let id = queued_id(&reply).to_string();
    assert_eq!(relay.envelope().await.id, id);
    let message = relay.spool.read_message(&id).await.expect("message");
    assert!(String::from_utf8_lossy(&message).contains(" with ESMTPS id "));

    // A client that does not speak TLS gets nothing and is closed.
    let (mut plain, _) = (
        Client::over(Box::new(
            TcpStream::connect(relay.addr).await.expect("connect"),
        )),
        (),
    );
    plain.send(b"EHLO client.test\r\n").await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.reader.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(!String::from_utf8_lossy(&rest).contains("250"), "{rest:?}");
}

#[tokio::test]
async fn reloaded_certificate_applies_to_new_sessions() {
    let old = test_cert();
    let relay = start_listener(
        &format!("{SMALL}{TLS_KEYS}"),
        ROUTED,
        0,
        listener(TlsMode::Implicit, None),
    )
    .await;
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let mut c = Client::over(tls_connect(Box::new(tcp), &old.der).await);
    assert!(c.reply().await.starts_with("220 "));

    let renewed = TestCert::new();
    let text = format!("{SMALL}{}", renewed.install(relay.dir.path(), "renewed"));
    relay
        .settings
        .send_replace(Settings::new(config(relay.dir.path(), &text, ROUTED)));
    let tcp = TcpStream::connect(relay.addr).await.expect("connect");
    let mut c2 = Client::over(tls_connect(Box::new(tcp), &renewed.der).await);
    assert!(c2.reply().await.starts_with("220 "));
    // The session that started before the reload goes on.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
}

#[tokio::test]
async fn per_client_session_limit() {
    let relay = start(&format!("{SMALL}max_sessions_per_client = 2\n")).await;
    let _a = Client::ready(relay.addr).await;
    let mut b = Client::ready(relay.addr).await;
    let (mut c, greeting) = Client::connect(relay.addr).await;
    assert_eq!(
        greeting,
        "421 4.7.0 Too many connections from your address, try again later"
    );
    assert!(c.closed().await);
    assert_eq!(b.cmd("QUIT").await, "221 2.0.0 Bye");
    assert!(b.closed().await);
    let (_d, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting, "220 relay.test ESMTP authrelay");
}

#[tokio::test]
async fn per_client_message_rate() {
    let mut relay = start(&format!("{SMALL}max_messages_per_client_per_minute = 2\n")).await;
    let mut c = Client::ready(relay.addr).await;
    for _ in 0..2 {
        let reply = c
            .message("alice@contoso.com", &["bob@example.org"], b"x\r\n.\r\n")
            .await;
        queued_id(&reply);
        relay.envelope().await;
    }
    assert_eq!(
        c.cmd("MAIL FROM:<alice@contoso.com>").await,
        "451 4.7.1 Too many messages, slow down"
    );
    // The limit is per address, not per session.
    let mut other = Client::ready(relay.addr).await;
    assert_eq!(
        other.cmd("MAIL FROM:<alice@contoso.com>").await,
        "451 4.7.1 Too many messages, slow down"
    );
    // Refused MAILs did not start a transaction.
    assert_eq!(
        other.cmd("RCPT TO:<bob@example.org>").await,
        "503 5.5.1 Need MAIL command"
    );
}

#[tokio::test]
async fn session_lifetime_is_capped() {
    let relay = start(&format!("{SMALL}max_session_duration = \"400ms\"\n")).await;
    let mut c = Client::ready(relay.addr).await;
    // Busy, never idle for long, yet the session ends.
    let start = std::time::Instant::now();
    loop {
        let reply = c.cmd("NOOP").await;
        if reply.starts_with("421 ") {
            assert_eq!(reply, "421 4.4.2 relay.test Error: session lasted too long");
            break;
        }
        assert_eq!(reply, "250 2.0.0 Ok");
        assert!(start.elapsed() < WAIT, "session never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.closed().await);
}

/// Whether `program` is on the PATH; tests that need it say so when it is not.
fn installed(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if !found {
        eprintln!("SKIPPED: {program} not installed");
    }
    found
}

/// Runs a client program to completion (bounded by [`WAIT`] times three) without blocking
/// the runtime the server runs on.
async fn run_client(program: &str, args: &[String], stdin: &[u8]) -> std::process::Output {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn client");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    tokio::time::timeout(WAIT * 3, child.wait_with_output())
        .await
        .expect("client finished in time")
        .expect("client output")
}

#[tokio::test]
async fn swaks_starttls_and_auth_login() {
    if !installed("swaks") {
        return;
    }
    let mut relay = start_auth(
        &format!("auth = \"required\"\n{TLS_KEYS}"),
        listener(TlsMode::Starttls, None),
    )
    .await;
    let args: Vec<String> = [
        "--server",
        "127.0.0.1",
        "--port",
        &relay.addr.port().to_string(),
        "--helo",
        "swaks.test",
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        "app02",
        "--auth-password",
        "pw-two",
        "--from",
        "cron@app02.internal",
        "--to",
        "bob@example.org",
        "--header",
        "Subject: from swaks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_client("swaks", &args, b"").await;
    assert!(
        out.status.success(),
        "swaks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = relay.envelope().await;
    assert_eq!(env.tenant, "contoso");
    assert_eq!(env.mail_from, "cron@app02.internal");
    let message = relay.spool.read_message(&env.id).await.expect("message");
    let text = String::from_utf8_lossy(&message);
    assert!(text.contains(" with ESMTPSA id "), "{text}");
    assert!(text.contains("Subject: from swaks"), "{text}");
}

#[tokio::test]
async fn msmtp_implicit_tls_and_auth_plain() {
    if !installed("msmtp") {
        return;
    }
    let mut relay = start_auth(
        &format!("auth = \"required\"\n{TLS_KEYS}"),
        listener(TlsMode::Implicit, None),
    )
    .await;
    let args: Vec<String> = [
        "--host=127.0.0.1".to_string(),
        format!("--port={}", relay.addr.port()),
        "--domain=msmtp.test".into(),
        "--tls=on".into(),
        "--tls-starttls=off".into(),
        format!(
            "--tls-trust-file={}",
            relay.dir.path().join("relay.crt").display()
        ),
        "--tls-host-override=localhost".into(),
        "--auth=plain".into(),
        "--user=app01".into(),
        "--passwordeval=echo pw-one".into(),
        "--from=alice@contoso.com".into(),
        "bob@example.org".into(),
    ]
    .to_vec();
    let out = run_client(
        "msmtp",
        &args,
        b"Subject: from msmtp\n\n.leading dot\nbody\n",
    )
    .await;
    assert!(
        out.status.success(),
        "msmtp failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = relay.envelope().await;
    // app01's tenant, not the sender's.
    assert_eq!(env.tenant, "fabrikam");
    let message = relay.spool.read_message(&env.id).await.expect("message");
    let text = String::from_utf8_lossy(&message);
    assert!(text.contains(" with ESMTPSA id "), "{text}");
    assert!(text.contains("\n.leading dot\r\nbody"), "{text:?}");
}
