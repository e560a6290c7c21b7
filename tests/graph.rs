//! The Graph transport end to end: an app speaks plain SMTP to the real `authrelay` binary,
//! which relays through the fake Microsoft Graph `sendMail` (`transport = "graph"`).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::relay::{Options, Relay, TenantSpec, message};
use support::{Delivered, FakeMicrosoft, GraphFault, TokenFault, Via, header};

const WAIT: Duration = Duration::from_secs(15);

/// A Graph tenant `contoso` sending as `relay@contoso.com`; `extra` adds TOML lines.
async fn setup(extra: &str, send_as: &[&str]) -> (FakeMicrosoft, Relay) {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com").extra(&format!(
        "transport = \"graph\"\ngraph_endpoint = \"{}\"\nfrom_name = \"Contoso Alerts\"\n{extra}",
        fake.graph_endpoint()
    ));
    t.register(&fake, send_as);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    (fake, relay)
}

/// The message with every run of whitespace (folds included) made one space.
fn flat(d: &Delivered) -> String {
    d.data_str()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tenant's row of `/status`.
async fn status(relay: &Relay) -> Value {
    let (code, body) = relay.get("/status").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("status JSON");
    v["tenants"][0].clone()
}

/// Waits (bounded) until the tenant's `/status` alert contains `needle`.
async fn wait_alert(relay: &Relay, needle: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = status(relay).await;
        if t["alert"].as_str().is_some_and(|a| a.contains(needle)) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no alert with {needle:?} in /status: {t}\n{}",
            relay.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(relay: &Relay, from: &str, to: &[&str], msg: &str) {
    let r = relay.send(from, to, msg).await;
    assert_eq!(r.code, 250, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_through_graph_with_the_from_rewritten() {
    let (fake, relay) = setup("", &[]).await;
    send(
        &relay,
        "cron@app01.internal",
        &["ops@example.org"],
        &message("cron@app01.internal", "ops@example.org", "nightly"),
    )
    .await;
    let got = fake.wait_delivered(1, WAIT).await;
    let d = &got[0];
    assert_eq!(d.via, Via::Graph);
    assert_eq!(d.user, "relay@contoso.com");
    assert_eq!(d.rcpt_to, vec!["ops@example.org"]);
    let data = d.data_str();
    assert_eq!(
        header(&data, "From"),
        vec!["Contoso Alerts <relay@contoso.com>"],
        "{data}"
    );
    assert!(header(&data, "X-Original-From")[0].contains("cron@app01.internal"));
    assert!(
        header(&data, "Bcc").is_empty(),
        "every recipient is in To: {data}"
    );
    assert!(data.contains("Hello from the test suite."));
    relay.wait_queued(0, WAIT).await;
    relay.wait_log(" delivered ", WAIT).await;
    let logs = relay.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(" delivered "))
        .expect("a delivered line");
    assert!(line.contains("reply=HTTP 202 Accepted"), "{line}");
    assert_eq!(fake.smtp_connections(), 0, "nothing went over SMTP");
    assert!(!logs.contains("contoso-secret"), "the secret leaked");
    assert!(!logs.contains("fake-at."), "an access token leaked");
    let t = status(&relay).await;
    assert_eq!(t["transport"], "graph");
    assert_eq!(t["verified"], "Verified");
    assert!(t["last_delivery"].is_string(), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_only_recipients_are_a_bcc_in_what_graph_gets() {
    let (fake, relay) = setup("", &[]).await;
    // To names ops, Cc names boss; the envelope has ops and audit (a Bcc), not boss.
    let msg = "From: App <app@app01.internal>\r\nTo: <ops@example.org>\r\nCc: Boss <boss@example.org>\r\nSubject: bcc\r\n\r\nbody\r\n";
    send(
        &relay,
        "app@app01.internal",
        &["ops@example.org", "audit@example.org"],
        msg,
    )
    .await;
    let got = fake.wait_delivered(1, WAIT).await;
    let data = got[0].data_str();
    assert_eq!(header(&data, "Bcc"), vec!["<audit@example.org>"], "{data}");
    assert_eq!(header(&data, "To"), vec!["<ops@example.org>"]);
    assert_eq!(header(&data, "Cc"), vec!["Boss <boss@example.org>"]);
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    // Graph sends to the header recipients: the Cc outside the envelope too (documented).
    assert_eq!(
        rcpts,
        vec!["audit@example.org", "boss@example.org", "ops@example.org"]
    );
    relay
        .wait_log("not envelope recipients: Graph sends to them as well", WAIT)
        .await;
    assert!(relay.logs().contains("addresses=boss@example.org"));
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_unavailable_back_off_as_graph_asks_then_deliver() {
    let (fake, relay) = setup("", &[]).await;
    fake.push_graph_faults([
        GraphFault::TooManyRequests { retry_after: 1 },
        GraphFault::Unavailable { retry_after: 1 },
    ]);
    let started = Instant::now();
    send(
        &relay,
        "app@app01.internal",
        &["a@example.org"],
        &message("app@app01.internal", "a@example.org", "busy"),
    )
    .await;
    let got = fake.wait_delivered(1, WAIT).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two pauses of at least the Retry-After each: {:?}",
        started.elapsed()
    );
    assert_eq!(got[0].rcpt_to, vec!["a@example.org"]);
    assert_eq!(fake.graph_requests(), 3);
    let logs = relay.logs();
    assert!(logs.contains("HTTP 429 ApplicationThrottled"), "{logs}");
    assert!(logs.contains("HTTP 503 ServiceUnavailable"), "{logs}");
    assert_eq!(logs.matches("pausing the mailbox").count(), 2, "{logs}");
    assert!(!logs.contains("bounce queued"));
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once_then_the_message_goes() {
    let (fake, relay) = setup("", &[]).await;
    // The refresh loop fetches the first token at start.
    fake.wait_until(WAIT, "the first token", |f| f.token_requests() >= 1)
        .await;
    let before = fake.token_requests();
    fake.push_graph_faults([GraphFault::Unauthorized]);
    send(
        &relay,
        "app@app01.internal",
        &["a@example.org"],
        &message("app@app01.internal", "a@example.org", "401 once"),
    )
    .await;
    fake.wait_delivered(1, WAIT).await;
    assert_eq!(fake.token_requests(), before + 1, "exactly one refresh");
    assert_eq!(fake.graph_requests(), 2);
    assert!(
        relay
            .logs()
            .contains("Graph refused the token; refreshing it once")
    );
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_graph_keeps_refusing_defers_and_alerts() {
    let (fake, relay) = setup("", &[]).await;
    fake.set_graph_fault(GraphFault::Unauthorized);
    send(
        &relay,
        "app@app01.internal",
        &["a@example.org"],
        &message("app@app01.internal", "a@example.org", "401 always"),
    )
    .await;
    let t = wait_alert(&relay, "Graph refused the token for relay@contoso.com").await;
    assert!(
        t["alert"]
            .as_str()
            .is_some_and(|a| a.contains("HTTP 401 InvalidAuthenticationToken")),
        "{t}"
    );
    assert_eq!(t["verified"], "Not Verified", "{t}");
    assert_eq!(relay.queued().len(), 1, "still queued");
    assert!(fake.delivered().is_empty());
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("authrelay_delivery_failures_total")
                && l.contains("kind=\"auth\"")),
        "{metrics}"
    );
    // The operator fixes the permission: the message goes at its next retry.
    fake.set_graph_fault(GraphFault::None);
    fake.wait_delivered(1, WAIT).await;
    relay.wait_queued(0, WAIT).await;
    assert!(!relay.logs().contains("bounce queued"));
    let t = status(&relay).await;
    assert_eq!(t["verified"], "Verified", "{t}");
    assert!(t["alert"].is_null(), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_defers_and_alerts_without_bouncing() {
    let (fake, relay) = setup("", &[]).await;
    fake.set_graph_fault(GraphFault::Forbidden);
    send(
        &relay,
        "app@app01.internal",
        &["a@example.org"],
        &message("app@app01.internal", "a@example.org", "403"),
    )
    .await;
    let t = wait_alert(
        &relay,
        "HTTP 403 ErrorAccessDenied: Access is denied. Check credentials and try again.",
    )
    .await;
    assert!(
        t["alert"].as_str().is_some_and(|a| a.contains("Mail.Send")),
        "the alert says what to check: {t}"
    );
    // Still deferred after a retry: never a bounce for a configuration problem.
    relay.wait_log("attempt=2", WAIT).await;
    assert_eq!(relay.queued().len(), 1);
    assert!(fake.delivered().is_empty());
    assert!(!relay.logs().contains("bounce queued"));
    fake.set_graph_fault(GraphFault::None);
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(header(&got[0].data_str(), "Subject"), vec!["403"]);
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_mime_bounces_to_the_sender_with_graphs_reason() {
    let (fake, relay) = setup("", &[]).await;
    fake.push_graph_faults([GraphFault::BadRequest {
        code: "ErrorMimeContentInvalid".into(),
        message: "Invalid MIME content.".into(),
    }]);
    send(
        &relay,
        "cron@app01.internal",
        &["ops@example.org"],
        &message("cron@app01.internal", "ops@example.org", "broken"),
    )
    .await;
    // The bounce goes out through the same Graph tenant.
    let got = fake.wait_delivered(1, WAIT).await;
    let dsn = &got[0];
    assert_eq!(dsn.via, Via::Graph);
    assert_eq!(dsn.rcpt_to, vec!["cron@app01.internal"]);
    let text = flat(dsn);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("5.6.0"), "{text}");
    assert!(
        text.contains("HTTP 400 ErrorMimeContentInvalid: Invalid MIME content."),
        "{text}"
    );
    assert_eq!(fake.graph_requests(), 2);
    // The original stays in the spool as failed, for the operator.
    relay.wait_queued(1, WAIT).await;
    let (_, out, _) = relay.command(&["queue", "list"]);
    assert!(out.contains("FAILED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_denied_is_permanent_for_that_message() {
    // The config keeps alerts@ as From, but the mailbox has no Send As right for it.
    let (fake, relay) = setup("send_as = [\"alerts@contoso.com\"]", &[]).await;
    send(
        &relay,
        "alerts@contoso.com",
        &["ops@example.org"],
        &message("alerts@contoso.com", "ops@example.org", "send as"),
    )
    .await;
    let got = fake.wait_delivered(1, WAIT).await;
    let text = flat(&got[0]);
    assert_eq!(got[0].rcpt_to, vec!["alerts@contoso.com"]);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("5.7.60"), "{text}");
    assert!(text.contains("HTTP 403 ErrorSendAsDenied"), "{text}");
    // About one message, not the setup: no alert.
    assert!(status(&relay).await["alert"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_big_for_graph_bounces_with_the_reason() {
    let (fake, relay) = setup("", &[]).await;
    // 3.3 MB of text: about 4.4 MB as base64, over Graph's 4 MB.
    let line = format!("{}\r\n", "x".repeat(76));
    let big = format!(
        "From: <app@app01.internal>\r\nTo: <ops@example.org>\r\nSubject: big\r\n\r\n{}",
        line.repeat(42_000)
    );
    send(&relay, "app@app01.internal", &["ops@example.org"], &big).await;
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(
        got[0].rcpt_to,
        vec!["app@app01.internal"],
        "only the bounce"
    );
    let text = flat(&got[0]);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(
        text.contains("5.3.4 message too large for the Graph transport ("),
        "{text}"
    );
    assert!(
        text.contains(
            "bytes base64, limit 4 MB); use transport = \"smtp\" or send smaller attachments"
        ),
        "{text}"
    );
    assert_eq!(fake.graph_requests(), 1, "the big one was never sent");
    relay.wait_log("refused permanently", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_a_graph_tenant_without_sending() {
    let (fake, relay) = setup("", &[]).await;
    let (code, out, err) = relay.command(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "contoso: Verified");
    assert_eq!(fake.graph_requests(), 0, "verify sent nothing");

    // The token the store holds is dead and Entra refuses the secret.
    fake.set_token_fault(TokenFault::WrongSecret);
    fake.expire_access_tokens();
    let (code, out, err) = relay.command(&["verify", "contoso"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("contoso: Not Verified: "), "{out}");
    assert!(out.contains("AADSTS7000215"), "{out}");
    assert_eq!(fake.graph_requests(), 0);
}
