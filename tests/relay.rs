//! The first working relay, end to end: an app speaks plain SMTP to the real `authrelay`
//! binary, which queues durably and relays over STARTTLS + XOAUTH2 to the fake Exchange.

mod support;

use std::time::Duration;

use support::relay::{Options, Relay, TenantSpec, message};
use support::{FakeMicrosoft, SmtpClient, header};

const WAIT: Duration = Duration::from_secs(20);

async fn setup(opts: Options<'_>) -> (FakeMicrosoft, Relay) {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com").extra("from_name = \"Contoso Alerts\"");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], opts).await;
    (fake, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_with_the_from_rewritten_to_the_mailbox() {
    let (fake, relay) = setup(Options::default()).await;
    let r = relay
        .send(
            "cron@app01.internal",
            &["ops@example.org"],
            &message("cron@app01.internal", "ops@example.org", "nightly"),
        )
        .await;
    assert_eq!(r.code, 250, "{}", r.text());
    assert!(r.text().contains("queued as"), "{}", r.text());

    let got = fake.wait_delivered(1, WAIT).await;
    let d = &got[0];
    assert_eq!(
        d.mail_from, "relay@contoso.com",
        "envelope sender is the mailbox"
    );
    assert_eq!(d.rcpt_to, vec!["ops@example.org"]);
    assert_eq!(d.user, "relay@contoso.com");
    let data = d.data_str();
    assert_eq!(
        header(&data, "From"),
        vec!["Contoso Alerts <relay@contoso.com>"],
        "{data}"
    );
    assert_eq!(header(&data, "X-Original-From").len(), 1, "{data}");
    assert!(header(&data, "X-Original-From")[0].contains("cron@app01.internal"));
    assert!(header(&data, "Sender").is_empty());
    assert!(data.contains("Hello from the test suite."));
    relay.wait_queued(0, WAIT).await;
    // One line per accepted message and per delivery, with queue id and tenant.
    relay.wait_log("delivered", WAIT).await;
    let logs = relay.logs();
    let accepted = logs
        .lines()
        .find(|l| l.contains(" accepted "))
        .expect("an accepted line");
    assert!(
        accepted.contains("queue_id=")
            && accepted.contains("contoso")
            && accepted.contains("recipients=1"),
        "{accepted}"
    );
    let delivered = logs
        .lines()
        .find(|l| l.contains(" delivered "))
        .expect("a delivered line");
    assert!(
        delivered.contains("queue_id=") && delivered.contains("reply=250 2.6.0"),
        "{delivered}"
    );
    assert!(
        !logs.contains("contoso-secret"),
        "the client secret leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_upstream_keeps_mail_queued_until_it_returns() {
    let (fake, relay) = setup(Options::default()).await;
    fake.refuse_smtp_connections().await;
    let r = relay
        .send(
            "app@app01.internal",
            &["a@example.org"],
            &message("app@app01.internal", "a@example.org", "while down"),
        )
        .await;
    assert_eq!(r.code, 250);
    relay.wait_log("not delivered", WAIT).await;
    assert_eq!(relay.queued().len(), 1);
    assert!(fake.delivered().is_empty());

    fake.accept_smtp_connections().await;
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, vec!["a@example.org"]);
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_survives_a_crash_and_goes_out_after_restart() {
    let (fake, mut relay) = setup(Options::default()).await;
    fake.refuse_smtp_connections().await;
    for i in 0..3 {
        let r = relay
            .send(
                "app@app01.internal",
                &["a@example.org"],
                &message("app@app01.internal", "a@example.org", &format!("m{i}")),
            )
            .await;
        assert_eq!(r.code, 250);
    }
    assert_eq!(relay.queued().len(), 3);
    relay.kill();
    fake.accept_smtp_connections().await;
    relay.launch().await;
    let got = fake.wait_delivered(3, WAIT).await;
    let mut subjects: Vec<String> = got
        .iter()
        .map(|d| header(&d.data_str(), "Subject")[0].to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, vec!["m0", "m1", "m2"]);
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_gets_552_and_the_session_goes_on() {
    let (fake, relay) = setup(Options {
        smtp: "max_message_size = 2048",
        ..Options::default()
    })
    .await;
    let mut c = relay.session().await;
    let big = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(70)).repeat(60)
    );
    let r = c
        .send_mail("app@app01.internal", &["a@example.org"], big.as_bytes())
        .await
        .expect("send");
    assert_eq!(r.code, 552, "{}", r.text());
    assert!(r.text().contains("5.3.4"));
    let r = c
        .send_mail(
            "app@app01.internal",
            &["b@example.org"],
            message("app@app01.internal", "b@example.org", "small").as_bytes(),
        )
        .await
        .expect("send");
    assert_eq!(r.code, 250, "{}", r.text());
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, vec!["b@example.org"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_get_their_replies_in_order() {
    let (fake, relay) = setup(Options::default()).await;
    let mut c = relay.session().await;
    c.send_raw(b"MAIL FROM:<app@app01.internal>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await
        .expect("write");
    let codes = [
        c.read_reply().await.expect("r").code,
        c.read_reply().await.expect("r").code,
        c.read_reply().await.expect("r").code,
        c.read_reply().await.expect("r").code,
    ];
    assert_eq!(codes, [250, 250, 250, 354]);
    c.send_raw(b"Subject: piped\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
        .await
        .expect("write");
    assert_eq!(c.read_reply().await.expect("r").code, 250);
    assert_eq!(c.read_reply().await.expect("r").code, 221);
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(got[0].rcpt_to.len(), 2);
    assert!(
        got[0].data_str().contains("\r\n.leading dot\r\n"),
        "dot-unstuffed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_the_allowlist_is_refused_at_connect() {
    let (_fake, relay) = setup(Options {
        smtp: "allowed_clients = [\"10.0.0.0/8\"]",
        ..Options::default()
    })
    .await;
    let (_, greeting) = SmtpClient::connect(&relay.smtp.to_string())
        .await
        .expect("connect");
    assert_eq!(greeting.code, 554, "{}", greeting.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_no_tenant_accepts_is_refused_at_mail() {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com").extra("senders = [\"*@contoso.com\"]");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    let mut c = relay.session().await;
    let r = c
        .command("MAIL FROM:<someone@elsewhere.org>")
        .await
        .expect("mail");
    assert_eq!(r.code, 550, "{}", r.text());
    assert!(r.text().contains("5.7.1"));
    let r = c
        .command("MAIL FROM:<app@contoso.com>")
        .await
        .expect("mail");
    assert_eq!(r.code, 250, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_the_bad_key_and_exits_2() {
    let (_fake, relay) = setup(Options::default()).await;
    let (code, out, _) = relay.command(&["check-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("[[tenant]]") && out.contains("<redacted>") && !out.contains("contoso-secret"),
        "{out}"
    );

    let bad = relay
        .config()
        .replace("mailbox = \"relay@contoso.com\"", "mailbox = \"relay\"");
    std::fs::write(&relay.config_path, bad).expect("write");
    let (code, _, err) = relay.command(&["check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("tenant[contoso].mailbox"), "{err}");
}
