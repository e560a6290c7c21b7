//! An operable daemon: metrics after traffic, readiness, the status page in a real browser,
//! reload under an open session, drain with a message in flight, queue commands while running.

mod support;

use std::process::Command;
use std::time::Duration;

use support::relay::{Options, Relay, TenantSpec, message};
use support::{FakeMicrosoft, SmtpClient, SmtpFault};

const WAIT: Duration = Duration::from_secs(20);
const SENDER: &str = "app@app01.internal";

async fn setup() -> (FakeMicrosoft, Relay) {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com")
        .extra("client_secret_expires = \"2027-06-30\"");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    (fake, relay)
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic() {
    let (fake, relay) = setup().await;
    for i in 0..3 {
        relay
            .send(
                SENDER,
                &["a@example.org"],
                &message(SENDER, "a@example.org", &format!("m{i}")),
            )
            .await;
    }
    fake.wait_delivered(3, WAIT).await;
    relay.wait_queued(0, WAIT).await;
    fake.set_smtp_fault(SmtpFault::RcptReply {
        addr: "gone@example.org".into(),
        reply: "550 5.1.10 Recipient not found".into(),
    });
    relay
        .send(
            SENDER,
            &["gone@example.org"],
            &message(SENDER, "gone@example.org", "bad"),
        )
        .await;
    relay.wait_log("refused permanently", WAIT).await;
    // The bounce goes out through the same tenant: 3 messages plus the DSN.
    fake.wait_delivered(4, WAIT).await;
    relay.wait_queued(1, WAIT).await;

    let (code, text) = relay.get("/metrics").await;
    assert_eq!(code, 200);
    let t = "{tenant=\"contoso\"}";
    assert_eq!(
        metric(&text, &format!("authrelay_messages_received_total{t}")),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("authrelay_messages_delivered_total{t}")),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("authrelay_messages_bounced_total{t}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "authrelay_delivery_failures_total{tenant=\"contoso\",kind=\"permanent\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!("authrelay_token_expiry_timestamp_seconds{t}")
        )
        .is_some_and(|v| v > 1.7e9)
    );
    assert_eq!(
        metric(
            &text,
            &format!("authrelay_client_secret_expiry_timestamp_seconds{t}")
        ),
        Some(1_814_313_600.0),
        "2027-06-30T00:00:00Z"
    );
    assert!(
        metric(
            &text,
            "authrelay_token_refresh_total{tenant=\"contoso\",result=\"ok\"}"
        )
        .is_some_and(|v| v >= 1.0)
    );
    for name in [
        "authrelay_queue_messages",
        "authrelay_queue_oldest_age_seconds",
        "authrelay_smtp_sessions_active",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }
    assert!(text.contains("authrelay_build_info{version="), "{text}");

    // The exposition passes Prometheus's own checker, where it is installed.
    if let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED: promtool not installed; metrics format not cross-checked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_token() {
    let fake = FakeMicrosoft::start().await;
    fake.set_token_fault(support::TokenFault::WrongSecret);
    let t = TenantSpec::new("contoso", "relay@contoso.com");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    let (code, _) = relay.get("/healthz").await;
    assert_eq!(code, 200);
    relay
        .wait_get("/readyz", |code, body| {
            code == 503 && body.contains("wrong_secret")
        })
        .await;
    fake.set_token_fault(support::TokenFault::None);
    relay.signal("HUP");
    relay.wait_get("/readyz", |code, _| code == 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_new_transactions_and_keeps_open_sessions() {
    let (fake, relay) = setup().await;
    let mut open = relay.session().await;
    let r = open
        .command(&format!("MAIL FROM:<{SENDER}>"))
        .await
        .expect("mail");
    assert_eq!(r.code, 250);

    // A broken config is refused; the old one keeps running.
    let good = relay.config();
    std::fs::write(
        &relay.config_path,
        good.replace("mailbox = \"relay@contoso.com\"", "mailbox = \"nope\""),
    )
    .expect("write");
    relay.signal("HUP");
    relay.wait_log("reload refused", WAIT).await;

    // A good change applies: the recipient limit drops to 1 for the next transaction.
    std::fs::write(
        &relay.config_path,
        good.replace("[smtp]\n", "[smtp]\nmax_recipients = 1\n"),
    )
    .expect("write");
    relay.signal("HUP");
    relay.wait_log("configuration reloaded", WAIT).await;

    // The session opened before the reload goes on and completes its message.
    assert_eq!(
        open.command("RCPT TO:<a@example.org>")
            .await
            .expect("rcpt")
            .code,
        250
    );
    let r = open
        .data(message(SENDER, "a@example.org", "across reload").as_bytes())
        .await
        .expect("data");
    assert_eq!(r.code, 250, "{}", r.text());
    // The next transaction sees the new limit.
    assert_eq!(
        open.command(&format!("MAIL FROM:<{SENDER}>"))
            .await
            .expect("mail")
            .code,
        250
    );
    assert_eq!(
        open.command("RCPT TO:<a@example.org>")
            .await
            .expect("rcpt")
            .code,
        250
    );
    assert_eq!(
        open.command("RCPT TO:<b@example.org>")
            .await
            .expect("rcpt")
            .code,
        452
    );
    let _ = open.quit().await;
    fake.wait_delivered(1, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_message_in_flight_and_loses_nothing() {
    let (fake, mut relay) = setup().await;
    fake.refuse_smtp_connections().await;
    let mut c = relay.session().await;
    assert_eq!(
        c.command(&format!("MAIL FROM:<{SENDER}>"))
            .await
            .expect("mail")
            .code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<a@example.org>")
            .await
            .expect("rcpt")
            .code,
        250
    );
    assert_eq!(c.command("DATA").await.expect("data").code, 354);
    c.send_raw(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .await
        .expect("write");

    relay.signal("TERM");
    relay.wait_log("shutting down", WAIT).await;
    // New connections are no longer taken.
    let refused = SmtpClient::connect(&relay.smtp.to_string()).await;
    assert!(
        refused.map(|(_, g)| g.code != 220).unwrap_or(true),
        "still accepting during drain"
    );
    // The session in the middle of DATA finishes its message.
    c.send_raw(b"second half\r\n.\r\n").await.expect("write");
    let r = c.read_reply().await.expect("reply");
    assert_eq!(r.code, 250, "{}", r.text());
    let status = relay.stop().await;
    assert!(status.success(), "exit status {status}\n{}", relay.logs());
    assert_eq!(relay.queued().len(), 1, "left on disk for the next start");

    fake.accept_smtp_connections().await;
    relay.launch().await;
    let got = fake.wait_delivered(1, WAIT).await;
    assert!(got[0].data_str().contains("first half\r\nsecond half"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_work_while_the_daemon_runs() {
    let (fake, relay) = setup().await;
    fake.set_smtp_fault(SmtpFault::RcptReply {
        addr: "later@example.org".into(),
        reply: "451 4.4.0 try later".into(),
    });
    relay
        .send(
            SENDER,
            &["later@example.org"],
            &message(SENDER, "later@example.org", "one"),
        )
        .await;
    relay
        .send(
            SENDER,
            &["later@example.org"],
            &message(SENDER, "later@example.org", "two"),
        )
        .await;
    relay.wait_log("not delivered", WAIT).await;
    let (code, out, _) = relay.command(&["queue", "list"]);
    assert_eq!(code, 0);
    let ids: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    let (code, out, _) = relay.command(&["queue", "show", &ids[0]]);
    assert_eq!(code, 0);
    assert!(
        out.contains("later@example.org") && out.contains("Subject: one"),
        "{out}"
    );
    let (code, _, err) = relay.command(&["queue", "delete", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(relay.queued().len(), 1);
    fake.set_smtp_fault(SmtpFault::None);
    let (code, _, err) = relay.command(&["queue", "retry", &ids[1]]);
    assert_eq!(code, 0, "{err}");
    let got = fake.wait_delivered(1, WAIT).await;
    assert!(got[0].data_str().contains("Subject: two"));
    relay.wait_queued(0, WAIT).await;
    let (code, _, err) = relay.command(&["queue", "show", "NOSUCHID"]);
    assert_ne!(code, 0);
    assert!(err.contains("NOSUCHID"), "{err}");
}

/// The status page in a real browser: the rows render, and following the Authorize button
/// (a plain GET form) signs the tenant in against the fake Microsoft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }) else {
        eprintln!("SKIPPED: chromium not installed; status page not checked in a browser");
        return;
    };
    let fake = FakeMicrosoft::start().await;
    let app = TenantSpec::new("contoso", "relay@contoso.com")
        .extra("client_secret_expires = \"2027-06-30\"");
    app.register(&fake, &[]);
    let delegated = TenantSpec::new("fabrikam", "relay@fabrikam.com")
        .extra("auth = \"authorization_code\"\nsenders = [\"*@fabrikam.com\"]");
    delegated.register(&fake, &[]);
    let relay = Relay::start(&fake, &[app, delegated], Options::default()).await;
    let profile = tempfile::tempdir().expect("profile");
    let dump = |url: String| {
        let chromium = chromium.to_string();
        let profile = profile.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("--dump-dom")
                .arg(url)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(60), out)
                .await
                .expect("chromium timed out")
                .expect("chromium");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    // Wait until contoso has a token, so its row reads Verified.
    relay
        .wait_get("/status", |_, body| {
            body.contains("\"verified\":\"Verified\"")
        })
        .await;
    let page = dump(format!("http://localhost:{}/", relay.admin.port())).await;
    assert!(
        page.contains("relay@contoso.com") && page.contains("relay@fabrikam.com"),
        "{page}"
    );
    assert!(
        page.contains("Verified") && page.contains("Not Verified"),
        "{page}"
    );
    assert!(page.contains("2027-06-30"), "secret expiry shown: {page}");
    assert!(
        page.contains("action=\"oauth/fabrikam/authorize\"")
            || page.contains("/oauth/fabrikam/authorize"),
        "{page}"
    );
    assert!(
        !page.contains("oauth/contoso/authorize"),
        "no Authorize button for an app-only tenant"
    );

    let done = dump(format!(
        "http://localhost:{}/oauth/fabrikam/authorize",
        relay.admin.port()
    ))
    .await;
    assert!(done.contains("Authentication successful"), "{done}");
    let page = dump(format!("http://localhost:{}/", relay.admin.port())).await;
    assert!(
        !page.contains("Not Verified"),
        "both tenants verified after sign-in: {page}"
    );
}
