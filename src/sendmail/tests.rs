//! sendmail: argument parsing, message preparation, and whole submissions to an in-process
//! listener on 127.0.0.1 with a spool in a temporary directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::*;
use crate::config::Config;
use crate::inbound::{self, ClientLimits, Context, ListenerOptions, SessionCount, TlsCache};
use crate::metrics::Metrics;
use crate::queue::{Envelope, Spool};
use crate::server::Settings;
use crate::shutdown::{self, Trigger};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn parsed(list: &[&str]) -> Options {
    parse_args(&args(list)).unwrap_or_else(|f| panic!("{list:?}: {}", f.message))
}

fn usage_error(list: &[&str]) -> String {
    let f = parse_args(&args(list)).expect_err("usage error");
    assert_eq!(f.code, EX_USAGE);
    f.message
}

#[test]
fn flags_as_cron_php_and_friends_use_them() {
    // PHP's default sendmail_path.
    let o = parsed(&["-t", "-i"]);
    assert!(o.recipients_from_headers);
    assert!(o.recipients.is_empty());
    assert_eq!(parsed(&["-ti"]), o);
    assert_eq!(parsed(&["-it"]), o);
    // cron (Debian): -FCronDaemon -i -B8BITMIME -oem user
    let o = parsed(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]);
    assert_eq!(o.full_name.as_deref(), Some("CronDaemon"));
    assert_eq!(o.recipients, ["root"]);
    // Values attached or separate.
    let o = parsed(&["-f", "app@x.example", "-F", "App Name", "a@b.example"]);
    assert_eq!(o.from.as_deref(), Some("app@x.example"));
    assert_eq!(o.full_name.as_deref(), Some("App Name"));
    assert_eq!(
        parsed(&["-fapp@x.example"]).from.as_deref(),
        Some("app@x.example")
    );
    assert_eq!(
        parsed(&["-r", "app@x.example"]).from.as_deref(),
        Some("app@x.example")
    );
    // Ignored, with their values consumed.
    let o = parsed(&[
        "-odi",
        "-oi",
        "-B",
        "8BITMIME",
        "-N",
        "never",
        "-R",
        "hdrs",
        "-X",
        "/tmp/log",
        "-V",
        "envid",
        "-O",
        "DeliveryMode=b",
        "-h",
        "3",
        "-v",
        "-m",
        "-bm",
        "-Am",
        "-ee",
        "-U",
        "to@x.example",
    ]);
    assert_eq!(o.recipients, ["to@x.example"]);
    assert!(o.verbose);
    // `--` ends the options; a lone `-` is a recipient-ish argument.
    let o = parsed(&["-i", "--", "-t", "b@c.example"]);
    assert_eq!(o.recipients, ["-t", "b@c.example"]);
    assert!(!o.recipients_from_headers);
    assert_eq!(
        parsed(&["-C", "/etc/authrelay/other.toml"]).config,
        Some(PathBuf::from("/etc/authrelay/other.toml"))
    );
    assert!(parsed(&["-bi"]).nothing_to_do);
}

#[test]
fn bad_usage_is_reported() {
    assert!(usage_error(&["-f"]).contains("-f needs a value"));
    assert!(usage_error(&["-Z"]).contains("unknown option -Z"));
    assert!(usage_error(&["-bp"]).contains("-bp is not supported"));
    assert!(usage_error(&["-bs"]).contains("not supported"));
    assert!(usage_error(&["-q"]).contains("-q is not supported"));
}

fn prepared(list: &[&str], input: &str) -> Prepared {
    prepare(&parsed(list), input.as_bytes(), "host.example", "cron")
        .unwrap_or_else(|f| panic!("{}", f.message))
}

fn text(p: &Prepared) -> String {
    String::from_utf8(p.message.clone()).expect("utf-8")
}

#[test]
fn recipients_from_headers_and_bcc_removed() {
    let input = "To: Alice <alice@a.example>, bob@b.example\n\
                 Cc: \"Doe, Carol\" <carol@c.example>\n\
                 Bcc: dave@d.example,\n\terin@e.example\n\
                 Subject: report\n\
                 \n\
                 Body line\n.\nBcc: not a header\n";
    let p = prepared(&["-t", "-i", "extra@x.example"], input);
    assert_eq!(
        p.recipients,
        [
            "extra@x.example",
            "alice@a.example",
            "bob@b.example",
            "carol@c.example",
            "dave@d.example",
            "erin@e.example"
        ]
    );
    assert_eq!(p.from, "cron@host.example");
    let t = text(&p);
    assert!(!t.contains("dave@"), "{t}");
    assert!(!t.contains("erin@"), "{t}");
    assert!(
        t.contains("\r\nTo: Alice <alice@a.example>, bob@b.example\r\n"),
        "{t}"
    );
    assert!(
        t.contains("\r\nSubject: report\r\n\r\nBody line\r\n.\r\nBcc: not a header\r\n"),
        "{t}"
    );
    assert!(t.starts_with("From: cron@host.example\r\nDate: "), "{t}");
    assert!(
        t.contains("\r\nMessage-ID: <") && t.contains("@host.example>\r\n"),
        "{t}"
    );
    // Every line ends in CRLF.
    assert!(!t.replace("\r\n", "").contains('\n'), "{t:?}");
    // Group syntax and no recipients in the headers.
    let p = prepared(
        &["-t", "x@y.example"],
        "To: undisclosed-recipients:;\n\nhi\n",
    );
    assert_eq!(p.recipients, ["x@y.example"]);
    let f = prepare(&parsed(&["-t"]), b"Subject: none\n\nhi\n", "h", "u").expect_err("none");
    assert_eq!(f.code, EX_USAGE);
    assert!(f.message.contains("no To, Cc or Bcc"), "{}", f.message);
}

#[test]
fn headers_added_only_when_missing() {
    let input = "From: App <app@x.example>\nDate: Tue, 30 Jun 2026 12:00:00 +0000\nMessage-ID: <1@x>\nSubject: s\n\nb\n";
    let t = text(&prepared(&["-F", "Ignored", "a@b.example"], input));
    assert!(
        t.starts_with("From: App <app@x.example>\r\nDate: Tue"),
        "{t}"
    );
    assert_eq!(t.matches("From:").count(), 1);
    assert_eq!(t.matches("Message-ID:").count(), 1);
    // -F names the added From; odd names are quoted, non-ASCII encoded, newlines dropped.
    let t = text(&prepared(
        &["-F", "Cron Daemon", "a@b.example"],
        "Subject: s\n\nb\n",
    ));
    assert!(
        t.starts_with("From: Cron Daemon <cron@host.example>\r\n"),
        "{t}"
    );
    let t = text(&prepared(&["-F", "Doe, \"J\"", "a@b.example"], "\nb\n"));
    assert!(
        t.starts_with("From: \"Doe, \\\"J\\\"\" <cron@host.example>\r\n"),
        "{t}"
    );
    let t = text(&prepared(
        &["-F", "Zoë\r\nBcc: x@y", "a@b.example"],
        "\nb\n",
    ));
    assert!(t.starts_with("From: =?UTF-8?B?"), "{t}");
    assert!(!t.contains("Bcc"), "{t}");
    // A message without any header: the body is kept whole, after our headers.
    let t = text(&prepared(
        &["a@b.example"],
        "just text\nmore: not a header? yes\n",
    ));
    assert!(
        t.ends_with("\r\n\r\njust text\r\nmore: not a header? yes\r\n"),
        "{t}"
    );
    // An mbox "From " line is dropped.
    let t = text(&prepared(
        &["a@b.example"],
        "From cron Tue Jun 30 12:00:00 2026\nSubject: s\n\nb\n",
    ));
    assert!(!t.contains("From cron"), "{t}");
    assert!(t.contains("\r\nSubject: s\r\n\r\nb\r\n"), "{t}");
}

#[test]
fn addresses_are_qualified() {
    let p = prepared(
        &["root", "<ops@x.example>", "a@b.example, c@d.example"],
        "\nb\n",
    );
    assert_eq!(
        p.recipients,
        [
            "root@host.example",
            "ops@x.example",
            "a@b.example",
            "c@d.example"
        ]
    );
    assert_eq!(
        prepared(&["-f", "app", "a@b.example"], "\n").from,
        "app@host.example"
    );
    assert_eq!(prepared(&["-f", "<>", "a@b.example"], "\n").from, "");
    assert_eq!(prepared(&["-f", "", "a@b.example"], "\n").from, "");
    // The null sender still gets a From header, the invoking user's.
    let t = text(&prepared(&["-f", "<>", "a@b.example"], "\nb\n"));
    assert!(t.starts_with("From: cron@host.example\r\n"), "{t}");
    // Duplicates go once.
    let p = prepared(&["-t", "a@b.example"], "To: A@B.example\n\nb\n");
    assert_eq!(p.recipients, ["a@b.example"]);
    let f = prepare(&parsed(&["a b@c"]), b"\n", "h", "u").expect_err("bad");
    assert_eq!(f.code, EX_USAGE);
}

#[test]
fn login_name_is_plausible() {
    let n = login_name();
    assert!(!n.is_empty() && !n.contains('@'), "{n}");
}

// ---- Whole submissions to an in-process listener ----

const ROUTED: &str = r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@contoso.com"
senders = ["*@contoso.com"]
"#;

struct Relay {
    config: Config,
    spool: Spool,
    accepted: mpsc::UnboundedReceiver<Envelope>,
    _trigger: Trigger,
    _dir: tempfile::TempDir,
}

async fn relay(smtp: &str, min_free_space: u64) -> Relay {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let text = format!(
        "state_dir = {:?}\nhostname = \"relay.test\"\n[smtp]\nlisten = [\"{addr}\"]\n{smtp}\n{ROUTED}",
        dir.path().display().to_string()
    );
    let config = Config::from_toml(&text).expect("config");
    let spool = Spool::open(dir.path(), min_free_space).expect("spool");
    let (_settings_tx, settings) = watch::channel(Settings::new(config.clone()));
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        settings,
        spool: spool.clone(),
        accepted: accepted_tx,
        metrics: Arc::new(Metrics::new()),
        sessions: SessionCount::default(),
        limits: ClientLimits::default(),
        tls: TlsCache::default(),
    });
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(inbound::serve(
        listener,
        ListenerOptions::default(),
        ctx,
        shutdown,
        Duration::from_secs(5),
    ));
    Relay {
        config,
        spool,
        accepted,
        _trigger: trigger,
        _dir: dir,
    }
}

#[tokio::test]
async fn sendmail_t_delivers_to_to_cc_and_bcc_without_the_bcc_header() {
    let mut relay = relay("", 0).await;
    let input = b"From: Monitoring <monitor@contoso.com>\n\
                  To: alice@example.org\n\
                  Cc: Bob <bob@example.org>\n\
                  Bcc: carol@example.org\n\
                  Subject: disk almost full\n\
                  \n\
                  /var is at 91%\n.\n..and a dot line\n";
    let code = run(
        &args(&["-t", "-i", "-f", "monitor@contoso.com"]),
        input,
        &relay.config,
    )
    .await;
    assert_eq!(code, EX_OK);
    let envelope = tokio::time::timeout(Duration::from_secs(10), relay.accepted.recv())
        .await
        .expect("in time")
        .expect("envelope");
    let (stored, errors) = relay.spool.scan().expect("scan");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, envelope.id);
    assert_eq!(stored[0].mail_from, "monitor@contoso.com");
    let rcpts: Vec<_> = stored[0]
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        rcpts,
        ["alice@example.org", "bob@example.org", "carol@example.org"]
    );
    let message = relay
        .spool
        .read_message(&stored[0].id)
        .await
        .expect("message");
    let text = String::from_utf8_lossy(&message);
    assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
    assert!(!text.contains("carol"), "{text}");
    assert!(
        text.contains("\r\nTo: alice@example.org\r\nCc: Bob <bob@example.org>\r\n"),
        "{text}"
    );
    // Dot lines survive the trip (stuffed on the wire, unstuffed in the spool).
    assert!(
        text.ends_with("\r\n\r\n/var is at 91%\r\n.\r\n..and a dot line\r\n"),
        "{text:?}"
    );
    assert!(!text.replace("\r\n", "").contains('\n'));
}

#[tokio::test]
async fn exit_codes_say_what_went_wrong() {
    let relay = relay("", 0).await;
    let msg = b"Subject: x\n\nx\n";
    // A sender no tenant takes: 550 at MAIL, permanent.
    assert_eq!(
        run(
            &args(&["-f", "x@other.example", "a@example.org"]),
            msg,
            &relay.config
        )
        .await,
        EX_UNAVAILABLE
    );
    assert_eq!(run(&args(&["-Z"]), msg, &relay.config).await, EX_USAGE);
    assert_eq!(run(&args(&["-i"]), msg, &relay.config).await, EX_USAGE);
    assert_eq!(run(&args(&["-bi"]), msg, &relay.config).await, EX_OK);
    let f = send(
        &parsed(&["-f", "x@other.example", "a@example.org"]),
        msg,
        &relay.config,
    )
    .await
    .expect_err("refused");
    assert!(f.message.contains("550 5.7.1"), "{}", f.message);

    // A full spool: 452 at MAIL, temporary.
    let full = relay_full().await;
    assert_eq!(
        run(
            &args(&["-f", "app@contoso.com", "a@example.org"]),
            msg,
            &full.config
        )
        .await,
        EX_TEMPFAIL
    );
    // Nobody listening: temporary.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut config = relay.config.clone();
    config.smtp.listen = vec![closed];
    let f = send(
        &parsed(&["-f", "app@contoso.com", "a@example.org"]),
        msg,
        &config,
    )
    .await
    .expect_err("no relay");
    assert_eq!(f.code, EX_TEMPFAIL);
    assert!(f.message.contains("cannot connect"), "{}", f.message);
    // No listener sendmail can use.
    config.smtp.listen = Vec::new();
    let f = send(&parsed(&["a@example.org"]), msg, &config)
        .await
        .expect_err("no listener");
    assert_eq!(f.code, EX_CONFIG);
}

async fn relay_full() -> Relay {
    relay("", u64::MAX).await
}

#[test]
fn submission_address_prefers_loopback_and_maps_wildcards() {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
    let mut c = Config::from_toml(ROUTED).expect("config");
    c.smtp.listen = vec![addr("10.1.2.3:25"), addr("0.0.0.0:2525")];
    assert_eq!(c.smtp.submission_address(), Some(addr("127.0.0.1:2525")));
    c.smtp.listen = vec![addr("[::]:2525")];
    assert_eq!(c.smtp.submission_address(), Some(addr("[::1]:2525")));
    c.smtp.listen = vec![addr("10.1.2.3:25")];
    assert_eq!(c.smtp.submission_address(), Some(addr("10.1.2.3:25")));
}
