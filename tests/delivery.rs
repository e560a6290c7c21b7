//! Delivery that survives Exchange Online: each row of the reply table, partial recipient
//! failures, bounces, pacing, connection reuse, and the rewrite seen from the far end.

mod support;

use std::time::{Duration, Instant};

use support::relay::{Options, Relay, TenantSpec, message};
use support::{Delivered, FakeMicrosoft, SmtpFault, SmtpStage};

const WAIT: Duration = Duration::from_secs(20);
const SENDER: &str = "app@app01.internal";

async fn setup_with(extra: &str, opts: Options<'_>) -> (FakeMicrosoft, Relay) {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com").extra(extra);
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], opts).await;
    (fake, relay)
}

async fn setup() -> (FakeMicrosoft, Relay) {
    setup_with("", Options::default()).await
}

fn is_bounce(d: &Delivered) -> bool {
    d.data_str().contains("multipart/report")
}

async fn wait_bounce(fake: &FakeMicrosoft) -> Delivered {
    fake.wait_until(WAIT, "a bounce", |f| f.delivered().iter().any(is_bounce))
        .await;
    fake.delivered()
        .into_iter()
        .find(is_bounce)
        .expect("bounce")
}

fn send_msg(to: &str, subject: &str) -> String {
    message(SENDER, to, subject)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sender_bounces_with_a_dsn_and_stays_visible_as_failed() {
    let (fake, relay) = setup().await;
    // One refusal: the bounce that follows must get through.
    fake.push_smtp_replies(
        SmtpStage::Mail,
        ["550 5.7.60 SMTP; Client does not have permissions to send as this sender"],
    );
    let r = relay
        .send(
            SENDER,
            &["a@example.org"],
            &send_msg("a@example.org", "denied"),
        )
        .await;
    assert_eq!(r.code, 250);
    relay.wait_log("refused permanently", WAIT).await;
    let dsn = wait_bounce(&fake).await;
    assert_eq!(dsn.rcpt_to, vec![SENDER]);
    let text = dsn.data_str();
    assert!(
        text.contains("5.7.60") && text.contains("a@example.org"),
        "{text}"
    );
    assert!(
        text.contains("Subject: denied"),
        "original headers are in the report"
    );
    assert!(
        !text.contains("Hello from the test suite."),
        "but not the original body"
    );
    let (_, out, _) = relay.command(&["queue", "list"]);
    assert!(out.contains("FAILED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_denied_is_permanent_at_mail_and_at_data() {
    // A From the tenant lists in send_as (so it is kept) but Exchange never granted:
    // refused at MAIL FROM with 5.7.60.
    let (fake, relay) = setup_with("send_as = [\"alerts@contoso.com\"]", Options::default()).await;
    let msg = "From: Alerts <alerts@contoso.com>\r\nTo: a@example.org\r\nSubject: send as\r\n\r\nbody\r\n";
    let r = relay.send(SENDER, &["a@example.org"], msg).await;
    assert_eq!(r.code, 250);
    let dsn = wait_bounce(&fake).await;
    assert!(dsn.data_str().contains("5.7.60"), "{}", dsn.data_str());
    assert_eq!(fake.delivered().iter().filter(|d| !is_bounce(d)).count(), 0);

    // The same refusal after DATA, as Exchange words it there.
    let (fake, relay) = setup().await;
    fake.push_smtp_replies(
        SmtpStage::DataEnd,
        ["554 5.2.252 SendAsDenied; relay@contoso.com not allowed to send as app@app01.internal; STOREDRV.Submission.Exception:SendAsDeniedException"],
    );
    relay
        .send(
            SENDER,
            &["a@example.org"],
            &send_msg("a@example.org", "data refusal"),
        )
        .await;
    let dsn = wait_bounce(&fake).await;
    assert!(dsn.data_str().contains("5.2.252"), "{}", dsn.data_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_refreshed_once_then_deferred_with_an_alert_never_bounced() {
    let (fake, relay) = setup().await;
    fake.set_smtp_fault(SmtpFault::AuthReply(
        "535 5.7.3 Authentication unsuccessful".into(),
    ));
    let r = relay
        .send(
            SENDER,
            &["a@example.org"],
            &send_msg("a@example.org", "auth"),
        )
        .await;
    assert_eq!(r.code, 250);
    relay.wait_log("refreshing it once", WAIT).await;
    let s = relay
        .wait_status("an alert", |s| !s["tenants"][0]["alert"].is_null())
        .await;
    assert_eq!(s["tenants"][0]["verified"], "Not Verified", "{s}");
    assert!(fake.token_requests() >= 2, "one refresh after the 535");
    assert!(fake.delivered().is_empty());
    assert_eq!(relay.queued().len(), 1, "deferred, not bounced");
    fake.set_smtp_fault(SmtpFault::None);
    fake.wait_delivered(1, WAIT).await;
    assert!(!is_bounce(&fake.delivered()[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_disabled_defers_and_alerts_loudly() {
    let (fake, relay) = setup().await;
    fake.set_smtp_fault(SmtpFault::AuthReply(
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.".into(),
    ));
    relay
        .send(
            SENDER,
            &["a@example.org"],
            &send_msg("a@example.org", "disabled"),
        )
        .await;
    let s = relay
        .wait_status("an alert", |s| {
            s["tenants"][0]["alert"]
                .as_str()
                .is_some_and(|a| a.contains("SMTP AUTH is disabled"))
        })
        .await;
    assert_eq!(s["queue"]["messages"], 1, "{s}");
    relay.wait_log("SMTP AUTH is disabled", WAIT).await;
    fake.set_smtp_fault(SmtpFault::None);
    fake.wait_delivered(1, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_quota_and_blocked_sender_pause_the_mailbox() {
    for (reply, reason) in [
        (
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            "4.3.2",
        ),
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            "SubmissionQuotaExceeded",
        ),
        (
            "550 5.2.254 Sender throttled due to continuous invalid recipients errors",
            "5.2.254",
        ),
    ] {
        let (fake, relay) = setup().await;
        fake.push_smtp_replies(SmtpStage::Mail, [reply]);
        relay
            .send(
                SENDER,
                &["a@example.org"],
                &send_msg("a@example.org", "paced"),
            )
            .await;
        let s = relay
            .wait_status("a paused mailbox", |s| {
                !s["tenants"][0]["paused_until"].is_null()
            })
            .await;
        assert!(
            s["tenants"][0]["paused_reason"]
                .as_str()
                .unwrap_or("")
                .contains(reason),
            "{s}"
        );
        assert_eq!(relay.queued().len(), 1, "{reply}: kept, not bounced");
        // While paused, nothing is sent: the only MAIL the fake saw is the throttled one.
        let mails = || {
            fake.smtp_log()
                .iter()
                .filter(|l| l.starts_with("MAIL"))
                .count()
        };
        assert_eq!(mails(), 1);
        // The operator says it is fixed: retry lifts the pause.
        let (code, _, err) = relay.command(&["queue", "retry", "--all"]);
        assert_eq!(code, 0, "{err}");
        fake.wait_delivered(1, WAIT).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_failure_is_retried_and_delivered() {
    let (fake, relay) = setup().await;
    fake.push_smtp_replies(
        SmtpStage::DataEnd,
        ["451 4.4.0 Temporary server error. Please try again later"],
    );
    relay
        .send(
            SENDER,
            &["a@example.org"],
            &send_msg("a@example.org", "retry"),
        )
        .await;
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(got.len(), 1);
    relay.wait_log("attempt=2", WAIT).await;
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_recipient_failure_retries_only_the_pending_ones() {
    let (fake, relay) = setup().await;
    fake.set_smtp_faults(vec![
        SmtpFault::RcptReply {
            addr: "gone@example.org".into(),
            reply: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found".into(),
        },
        SmtpFault::RcptReply {
            addr: "later@example.org".into(),
            reply: "451 4.4.0 try later".into(),
        },
    ]);
    let r = relay
        .send(
            SENDER,
            &["ok@example.org", "gone@example.org", "later@example.org"],
            &send_msg("ok@example.org", "partial"),
        )
        .await;
    assert_eq!(r.code, 250);
    let first = fake.wait_delivered(1, WAIT).await;
    assert_eq!(first[0].rcpt_to, vec!["ok@example.org"]);
    relay.wait_log("not delivered to all", WAIT).await;
    // Keep refusing gone@, let later@ through.
    fake.set_smtp_faults(vec![SmtpFault::RcptReply {
        addr: "gone@example.org".into(),
        reply: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found".into(),
    }]);
    fake.wait_until(WAIT, "later@ delivered", |f| {
        f.delivered()
            .iter()
            .any(|d| d.rcpt_to == vec!["later@example.org".to_string()])
    })
    .await;
    let dsn = wait_bounce(&fake).await;
    let text = dsn.data_str();
    assert!(
        text.contains("gone@example.org") && text.contains("5.1.10"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; ok@example.org"),
        "{text}"
    );
    let normal: Vec<_> = fake
        .delivered()
        .into_iter()
        .filter(|d| !is_bounce(d))
        .collect();
    assert_eq!(
        normal.len(),
        2,
        "ok@ once, later@ once: no recipient got it twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_for_a_null_sender() {
    let (fake, relay) = setup().await;
    fake.set_smtp_fault(SmtpFault::RcptReply {
        addr: "gone@example.org".into(),
        reply: "550 5.1.10 Recipient not found".into(),
    });
    let r = relay
        .send(
            "",
            &["gone@example.org"],
            &send_msg("gone@example.org", "null sender"),
        )
        .await;
    assert_eq!(r.code, 250);
    relay
        .wait_log("no bounce for a message with a null sender", WAIT)
        .await;
    assert!(fake.delivered().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_max_age_bounces() {
    let (fake, relay) = setup_with(
        "",
        Options {
            queue: "max_age = \"2s\"\nretry_initial = \"1s\"\nretry_max = \"1s\"",
            ..Options::default()
        },
    )
    .await;
    fake.set_smtp_fault(SmtpFault::RcptReply {
        addr: "slow@example.org".into(),
        reply: "451 4.4.0 try later".into(),
    });
    relay
        .send(
            SENDER,
            &["slow@example.org"],
            &send_msg("slow@example.org", "expires"),
        )
        .await;
    let dsn = wait_bounce(&fake).await;
    assert!(dsn.data_str().contains("4.4.7"), "{}", dsn.data_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_paced_under_the_mailbox_limit_without_a_throttling_reply() {
    // 30 messages per 2-second window stands in for Exchange's 30 a minute.
    let (fake, relay) = setup_with(
        "max_messages_per_minute = 30\nrate_window = \"2s\"",
        Options::default(),
    )
    .await;
    fake.set_smtp_rate_limit(30, Duration::from_secs(2));
    let started = Instant::now();
    let mut sessions = Vec::new();
    for s in 0..4 {
        let smtp = relay.smtp.to_string();
        sessions.push(tokio::spawn(async move {
            let (mut c, _) = support::SmtpClient::connect(&smtp).await.expect("connect");
            c.ehlo("burst").await.expect("ehlo");
            for i in 0..25 {
                let to = format!("r{s}-{i}@example.org");
                let r = c
                    .send_mail(SENDER, &[&to], message(SENDER, &to, "burst").as_bytes())
                    .await
                    .expect("send");
                assert_eq!(r.code, 250);
            }
            let _ = c.quit().await;
        }));
    }
    for s in sessions {
        s.await.expect("session");
    }
    let accept_time = started.elapsed();
    fake.wait_delivered(100, Duration::from_secs(30)).await;
    let total = started.elapsed();
    assert_eq!(
        fake.smtp_rate_refusals(),
        0,
        "Exchange never had to throttle us"
    );
    assert!(
        total >= Duration::from_secs(6),
        "100 messages at 30 per 2 s need over 6 s, took {total:?}"
    );
    assert!(
        accept_time < Duration::from_secs(5),
        "the app did not wait for pacing: {accept_time:?}"
    );
    assert!(
        fake.max_concurrent_smtp() <= 3,
        "at most max_connections upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_with_rset_between_messages() {
    let (fake, relay) = setup_with("max_connections = 1", Options::default()).await;
    let mut c = relay.session().await;
    for i in 0..5 {
        let to = format!("r{i}@example.org");
        let r = c
            .send_mail(SENDER, &[&to], send_msg(&to, "reuse").as_bytes())
            .await
            .expect("send");
        assert_eq!(r.code, 250);
    }
    fake.wait_delivered(5, WAIT).await;
    assert!(
        fake.smtp_connections() < 5,
        "{} connections for 5 messages",
        fake.smtp_connections()
    );
    assert!(
        fake.smtp_log().iter().any(|l| l == "RSET"),
        "{:?}",
        fake.smtp_log()
    );
    assert_eq!(fake.max_concurrent_smtp(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_upstream_drops_mid_data() {
    let (fake, relay) = setup().await;
    fake.set_smtp_fault(SmtpFault::DropMidData);
    for i in 0..3 {
        let to = format!("r{i}@example.org");
        relay.send(SENDER, &[&to], &send_msg(&to, "dropped")).await;
    }
    relay.wait_log("not delivered", WAIT).await;
    fake.set_smtp_fault(SmtpFault::None);
    let got = fake.wait_delivered(3, WAIT).await;
    let mut to: Vec<_> = got.iter().map(|d| d.rcpt_to[0].clone()).collect();
    to.sort();
    assert_eq!(
        to,
        vec!["r0@example.org", "r1@example.org", "r2@example.org"]
    );
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_mail_keeps_its_body_and_mime_mail_gets_the_signature_in_both_parts() {
    let (fake, relay) = setup_with(
        "signature = \"Sent by Contoso monitoring <ops>\"",
        Options::default(),
    )
    .await;
    let signed_body = "This is an S/MIME signed message\r\n\r\n--sig\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwEAAKCAMIIC\r\n--sig--\r\n";
    let signed = format!(
        "From: {SENDER}\r\nTo: a@example.org\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"sig\"\r\n\r\n{signed_body}"
    );
    relay.send(SENDER, &["a@example.org"], &signed).await;
    let got = fake.wait_delivered(1, WAIT).await;
    let data = got[0].data_str();
    let body = data.split_once("\r\n\r\n").map(|(_, b)| b).expect("body");
    assert_eq!(body, signed_body, "signed body changed");

    let alt = format!(
        "From: {SENDER}\r\nTo: b@example.org\r\nSubject: alt\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 status: all green\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        base64_lines("<html><body><p>Café status: <b>all green</b></p></body></html>")
    );
    relay.send(SENDER, &["b@example.org"], &alt).await;
    let got = fake.wait_delivered(2, WAIT).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&got[1].data)
        .expect("parses");
    let text = parsed.body_text(0).expect("text part");
    let html = parsed.body_html(0).expect("html part");
    assert!(
        text.contains("Café status: all green")
            && text.contains("Sent by Contoso monitoring <ops>"),
        "{text}"
    );
    assert!(
        html.contains("all green") && html.contains("Sent by Contoso monitoring &lt;ops&gt;"),
        "{html}"
    );
}

fn base64_lines(s: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(s);
    b.as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}
