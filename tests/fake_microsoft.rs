//! Tests of the fake Microsoft itself (tests/support): if these pass, the fake speaks the
//! protocols the relay will meet at Microsoft, and its fault knobs do what they say.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::assertion::sign_jwt;
use support::smtp_client::dot_stuff;
use support::{
    App, Consent, FakeMicrosoft, GraphFault, SmtpClient, SmtpFault, SmtpStage, TokenFault, Via,
    app_certificate, client_assertion,
};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "0c1d2e3f-aaaa-bbbb-cccc-000000000001";
const SECRET: &str = "test-secret~not-real";
const MAILBOX: &str = "relay@contoso.com";
const SEND_AS: &str = "alerts@contoso.com";
const SMTP_SCOPE: &str = "https://outlook.office365.com/.default";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const DELEGATED_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
const WAIT: Duration = Duration::from_secs(5);

async fn fake_with_app() -> FakeMicrosoft {
    let fake = FakeMicrosoft::start().await;
    fake.add_app(
        App::new(TENANT, CLIENT, MAILBOX)
            .with_secret(SECRET)
            .with_send_as(&[SEND_AS]),
    );
    fake
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

async fn post_token(fake: &FakeMicrosoft, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = http()
        .post(fake.token_url(tenant))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON token response"))
}

async fn app_token(fake: &FakeMicrosoft, scope: &str) -> String {
    let (status, body) = post_token(
        fake,
        TENANT,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Asserts a Microsoft-shaped token error.
fn assert_aad(status: u16, body: &Value, want_status: u16, error: &str, code: u64) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    let desc = body["error_description"].as_str().unwrap_or("");
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
}

#[tokio::test]
async fn client_credentials_token_then_smtp_submission() {
    let fake = fake_with_app().await;
    let token = app_token(&fake, SMTP_SCOPE).await;

    let (mut c, greeting) = SmtpClient::connect(&fake.smtp_server()).await.unwrap();
    assert_eq!(greeting.code, 220);
    assert!(greeting.contains("Microsoft ESMTP MAIL Service ready"));
    let ehlo = c.ehlo("client.test").await.unwrap();
    assert_eq!(ehlo.code, 250);
    for ext in [
        "SIZE",
        "PIPELINING",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
    ] {
        assert!(ehlo.has_extension(ext), "{ext} missing: {ehlo}");
    }
    assert!(!ehlo.has_extension("AUTH"), "AUTH before TLS: {ehlo}");
    assert_eq!(
        ehlo.extension_params("SIZE"),
        Some(vec!["37748736".to_string()])
    );
    let early = c.command(&format!("MAIL FROM:<{MAILBOX}>")).await.unwrap();
    assert!(early.code == 530 && early.contains("5.7.57"), "{early}");
    let early = c.auth_xoauth2(MAILBOX, &token).await.unwrap();
    assert!(early.code == 530 && early.contains("5.7.57"), "{early}");

    assert_eq!(
        c.starttls(&fake.ca_pem(), "localhost").await.unwrap().code,
        220
    );
    let ehlo = c.ehlo("client.test").await.unwrap();
    assert_eq!(
        ehlo.extension_params("AUTH"),
        Some(vec!["LOGIN".to_string(), "XOAUTH2".to_string()])
    );
    assert!(!ehlo.has_extension("STARTTLS"));
    let no_auth = c.command(&format!("MAIL FROM:<{MAILBOX}>")).await.unwrap();
    assert!(
        no_auth.code == 530 && no_auth.contains("5.7.57"),
        "{no_auth}"
    );
    let auth = c.auth_xoauth2(MAILBOX, &token).await.unwrap();
    assert_eq!(auth.to_string(), "235 2.7.0 Authentication successful");

    let first = b"From: Relay <relay@contoso.com>\r\nTo: a@example.com\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n";
    let r = c
        .send_mail(MAILBOX, &["a@example.com", "b@example.com"], first)
        .await
        .unwrap();
    assert!(
        r.code == 250 && r.contains("2.6.0") && r.contains("Queued mail for delivery"),
        "{r}"
    );

    // Second message on the same connection, MAIL/RCPT/DATA pipelined in one write.
    c.send_raw(format!("MAIL FROM:<{SEND_AS}>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n").as_bytes())
        .await
        .unwrap();
    for want in [250, 250, 354] {
        assert_eq!(c.read_reply().await.unwrap().code, want);
    }
    c.send_raw(&dot_stuff(b"From: alerts@contoso.com\r\n\r\nsecond\r\n"))
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 250);

    // A lone "." right after DATA is an empty message.
    assert_eq!(
        c.send_mail(MAILBOX, &["d@example.com"], b"")
            .await
            .unwrap()
            .code,
        250
    );
    assert_eq!(c.command("RSET").await.unwrap().code, 250);
    assert_eq!(c.command("NOOP").await.unwrap().code, 250);
    assert_eq!(c.quit().await.unwrap().code, 221);

    let delivered = fake.wait_delivered(3, WAIT).await;
    assert_eq!(delivered[0].mail_from, MAILBOX);
    assert_eq!(delivered[0].rcpt_to, ["a@example.com", "b@example.com"]);
    assert_eq!(
        delivered[0].data,
        b"From: Relay <relay@contoso.com>\r\nTo: a@example.com\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"
    );
    assert_eq!(
        (delivered[0].via, delivered[0].user.as_str()),
        (Via::Smtp, MAILBOX)
    );
    assert_eq!(delivered[1].mail_from, SEND_AS);
    assert!(delivered[2].data.is_empty());
    assert_eq!(fake.smtp_connections(), 1);

    let commands = fake.smtp_commands();
    let pipelined = commands
        .iter()
        .find(|c| c.line == format!("MAIL FROM:<{SEND_AS}>"))
        .unwrap();
    assert!(pipelined.more_buffered && pipelined.tls, "{pipelined:?}");
    let log = fake.smtp_log();
    assert!(
        log.contains(&"AUTH XOAUTH2 <redacted>".to_string()),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.contains(&token)),
        "token leaked into the log"
    );
}

#[tokio::test]
async fn xoauth2_rejects_wrong_user_audience_and_expired_tokens() {
    let fake = fake_with_app().await;
    let smtp_token = app_token(&fake, SMTP_SCOPE).await;
    let graph_token = app_token(&fake, GRAPH_SCOPE).await;
    let (mut c, _) = SmtpClient::connect(&fake.smtp_server()).await.unwrap();
    c.ehlo("client.test").await.unwrap();
    c.starttls(&fake.ca_pem(), "localhost").await.unwrap();
    c.ehlo("client.test").await.unwrap();

    for (user, token) in [
        ("someone.else@contoso.com", smtp_token.as_str()),
        (MAILBOX, graph_token.as_str()),
        (MAILBOX, "not-a-token-we-issued"),
    ] {
        let r = c.auth_xoauth2(user, token).await.unwrap();
        assert!(
            r.code == 535 && r.contains("5.7.3 Authentication unsuccessful"),
            "{r}"
        );
    }
    let basic = c.command("AUTH LOGIN").await.unwrap();
    assert_eq!(basic.code, 334);
    c.command("dXNlcg==").await.unwrap();
    let basic = c.command("cGFzcw==").await.unwrap();
    assert!(basic.code == 535 && basic.contains("5.7.139"), "{basic}");
    assert_eq!(fake.auth_failures(), 4);

    // The two-step form: AUTH XOAUTH2, 334, then the initial response.
    assert_eq!(c.command("AUTH XOAUTH2").await.unwrap().code, 334);
    let ok = c
        .command(&support::smtp_client::xoauth2(MAILBOX, &smtp_token))
        .await
        .unwrap();
    assert_eq!(ok.code, 235);
    assert!(fake.smtp_log().contains(&"<redacted>".to_string()));

    fake.expire_access_tokens();
    let err = SmtpClient::login(&fake.smtp_server(), &fake.ca_pem(), MAILBOX, &smtp_token)
        .await
        .err()
        .expect("expired token refused");
    assert!(err.to_string().contains("535 5.7.3"), "{err}");
}

#[tokio::test]
async fn send_as_is_enforced_on_envelope_and_header() {
    let fake = fake_with_app().await;
    let token = app_token(&fake, SMTP_SCOPE).await;
    let mut c = SmtpClient::login(&fake.smtp_server(), &fake.ca_pem(), MAILBOX, &token)
        .await
        .unwrap();

    let r = c
        .send_mail(
            "ceo@contoso.com",
            &["x@example.com"],
            b"From: ceo@contoso.com\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    assert!(r.code == 550 && r.contains("5.7.60"), "{r}");
    c.command("RSET").await.unwrap();

    let r = c
        .send_mail(
            MAILBOX,
            &["x@example.com"],
            b"From: \"The CEO\" <ceo@contoso.com>\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    assert!(r.code == 554 && r.contains("5.2.252 SendAsDenied"), "{r}");
    assert!(
        r.contains(&format!("{MAILBOX} not allowed to send as ceo@contoso.com")),
        "{r}"
    );

    let r = c
        .send_mail(
            SEND_AS,
            &["x@example.com"],
            b"From: Alerts <Alerts@Contoso.com>\r\n\r\nhi\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(fake.wait_delivered(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn smtp_faults_combine_and_clear() {
    let fake = fake_with_app().await;
    let token = app_token(&fake, SMTP_SCOPE).await;
    let (server, ca) = (fake.smtp_server(), fake.ca_pem());
    let msg: &[u8] = b"From: relay@contoso.com\r\n\r\nhi\r\n";

    fake.set_smtp_faults(vec![
        SmtpFault::DelayData(Duration::from_millis(150)),
        SmtpFault::RcptReply {
            addr: "gone@example.com".into(),
            reply: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found".into(),
        },
    ]);
    let mut c = SmtpClient::login(&server, &ca, MAILBOX, &token)
        .await
        .unwrap();
    assert_eq!(
        c.command(&format!("MAIL FROM:<{MAILBOX}>"))
            .await
            .unwrap()
            .code,
        250
    );
    let gone = c.command("RCPT TO:<gone@example.com>").await.unwrap();
    assert!(gone.code == 550 && gone.contains("5.1.10"), "{gone}");
    assert_eq!(
        c.command("RCPT TO:<ok@example.com>").await.unwrap().code,
        250
    );
    let started = Instant::now();
    assert_eq!(c.data(msg).await.unwrap().code, 250);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(fake.delivered()[0].rcpt_to, ["ok@example.com"]);

    // One-shot scripted reply, then back to normal.
    fake.set_smtp_fault(SmtpFault::None);
    fake.push_smtp_replies(SmtpStage::DataEnd, ["451 4.3.2 Temporary server error"]);
    let r = c
        .send_mail(MAILBOX, &["ok@example.com"], msg)
        .await
        .unwrap();
    assert!(r.code == 451 && r.contains("4.3.2"), "{r}");
    assert_eq!(
        c.send_mail(MAILBOX, &["ok@example.com"], msg)
            .await
            .unwrap()
            .code,
        250
    );

    fake.set_smtp_fault(SmtpFault::DataReply(
        "554 5.2.0 SubmissionQuotaExceeded".into(),
    ));
    let r = c
        .send_mail(MAILBOX, &["ok@example.com"], msg)
        .await
        .unwrap();
    assert_eq!(r.to_string(), "554 5.2.0 SubmissionQuotaExceeded");
    assert_eq!(fake.delivered().len(), 2);

    fake.set_smtp_fault(SmtpFault::AuthReply(
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.".into(),
    ));
    let err = SmtpClient::login(&server, &ca, MAILBOX, &token)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("5.7.139"), "{err}");

    fake.set_smtp_fault(SmtpFault::Greeting421);
    let (_, greeting) = SmtpClient::connect(&server).await.unwrap();
    assert!(
        greeting.code == 421 && greeting.contains("4.3.2"),
        "{greeting}"
    );

    fake.set_smtp_fault(SmtpFault::DropMidData);
    let mut c2 = SmtpClient::login(&server, &ca, MAILBOX, &token)
        .await
        .unwrap();
    let dropped = c2.send_mail(MAILBOX, &["ok@example.com"], msg).await;
    assert!(
        dropped.is_err(),
        "expected a dropped connection, got {dropped:?}"
    );

    fake.set_smtp_fault(SmtpFault::None);
    fake.refuse_smtp_connections().await;
    let refused = tokio::net::TcpStream::connect(fake.smtp_addr()).await;
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    fake.accept_smtp_connections().await;
    let mut c3 = SmtpClient::login(&server, &ca, MAILBOX, &token)
        .await
        .unwrap();
    assert_eq!(
        c3.send_mail(MAILBOX, &["ok@example.com"], msg)
            .await
            .unwrap()
            .code,
        250
    );

    // Per-mailbox connection limit, as Exchange's 3 concurrent connections.
    fake.set_smtp_mailbox_limit(Some(1));
    let mut c4 = SmtpClient::login(&server, &ca, MAILBOX, &token)
        .await
        .unwrap();
    let r = c4.command(&format!("MAIL FROM:<{MAILBOX}>")).await.unwrap();
    assert!(r.code == 432 && r.contains("4.3.2"), "{r}");
    assert!(fake.max_concurrent_smtp() >= 2);
    drop((c, c2, c3, c4));
    fake.wait_until(WAIT, "all SMTP sessions closed", |f| {
        f.current_smtp_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn token_endpoint_answers_like_entra() {
    let fake = fake_with_app().await;
    let cc = |secret: &'static str, scope: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", secret),
            ("scope", scope),
        ]
    };

    let (status, body) = post_token(&fake, TENANT, &cc(SECRET, SMTP_SCOPE)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body.get("refresh_token").is_none(), "{body}");

    let (s, b) = post_token(&fake, TENANT, &cc("wrong", SMTP_SCOPE)).await;
    assert_aad(s, &b, 401, "invalid_client", 7000215);
    let (s, b) = post_token(&fake, "no-such-tenant", &cc(SECRET, SMTP_SCOPE)).await;
    assert_aad(s, &b, 400, "invalid_request", 90002);
    let (s, b) = post_token(
        &fake,
        TENANT,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
            ("client_secret", SECRET),
            ("scope", SMTP_SCOPE),
        ],
    )
    .await;
    assert_aad(s, &b, 400, "unauthorized_client", 700016);
    let (s, b) = post_token(
        &fake,
        TENANT,
        &cc(SECRET, "https://outlook.office.com/SMTP.Send"),
    )
    .await;
    assert_aad(s, &b, 400, "invalid_scope", 1002012);

    fake.set_token_fault(TokenFault::SecretExpired);
    let (s, b) = post_token(&fake, TENANT, &cc(SECRET, SMTP_SCOPE)).await;
    assert_aad(s, &b, 401, "invalid_client", 7000222);
    fake.set_token_fault(TokenFault::InvalidGrant);
    let (s, b) = post_token(&fake, TENANT, &cc(SECRET, SMTP_SCOPE)).await;
    assert_aad(s, &b, 400, "invalid_grant", 700082);
    fake.set_token_fault(TokenFault::WrongSecret);
    let (s, b) = post_token(&fake, TENANT, &cc(SECRET, SMTP_SCOPE)).await;
    assert_aad(s, &b, 401, "invalid_client", 7000215);
    fake.set_token_fault(TokenFault::Unavailable);
    let (s, _) = post_token(&fake, TENANT, &cc(SECRET, SMTP_SCOPE)).await;
    assert_eq!(s, 503);
    fake.set_token_fault(TokenFault::None);

    // HTTP Basic client authentication, and a shorter lifetime.
    fake.set_token_lifetime(120);
    let resp = http()
        .post(fake.token_url(TENANT))
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", GRAPH_SCOPE)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 120);

    assert_eq!(fake.token_requests(), 10);
    assert_eq!(fake.token_requests_for("client_credentials"), 10);
}

fn pkce_pair() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

/// Follows `/authorize` one hop and returns the query of the `Location` it redirects to.
async fn authorize(
    fake: &FakeMicrosoft,
    query: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let resp = http()
        .get(format!(
            "{}/{TENANT}/oauth2/v2.0/authorize",
            fake.authority()
        ))
        .query(query)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap();
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn authorization_code_with_pkce_and_refresh_rotation() {
    let fake = fake_with_app().await;
    let redirect = "http://127.0.0.1:9925/oauth/callback";
    let (verifier, challenge) = pkce_pair();
    let base = [
        ("client_id", CLIENT),
        ("response_type", "code"),
        ("redirect_uri", redirect),
        ("scope", DELEGATED_SCOPE),
        ("state", "st-123"),
    ];

    let no_pkce = authorize(&fake, &base).await;
    assert_eq!(no_pkce["error"], "invalid_request");
    assert_eq!(no_pkce["state"], "st-123");

    let mut with_pkce = base.to_vec();
    with_pkce.extend([
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    let granted = authorize(&fake, &with_pkce).await;
    assert_eq!(granted["state"], "st-123");
    let code = granted["code"].clone();

    let redeem = |verifier: String| {
        let code = code.clone();
        let fake = fake.clone();
        async move {
            post_token(
                &fake,
                TENANT,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", CLIENT),
                    ("client_secret", SECRET),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    let (s, b) = redeem("not-the-verifier".into()).await;
    assert_aad(s, &b, 400, "invalid_grant", 50148);
    let (s, tokens) = redeem(verifier.clone()).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["scope"], "https://outlook.office.com/SMTP.Send");
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let (s, b) = redeem(verifier).await;
    assert_aad(s, &b, 400, "invalid_grant", 54005);

    // The delegated access token works for SMTP AUTH as the mailbox.
    let at = tokens["access_token"].as_str().unwrap();
    SmtpClient::login(&fake.smtp_server(), &fake.ca_pem(), MAILBOX, at)
        .await
        .unwrap();

    let refresh = |rt: String| {
        let fake = fake.clone();
        async move {
            post_token(
                &fake,
                TENANT,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", CLIENT),
                    ("client_secret", SECRET),
                    ("refresh_token", &rt),
                    ("scope", DELEGATED_SCOPE),
                ],
            )
            .await
        }
    };
    let (s, b) = refresh(rt1.clone()).await;
    assert_eq!(s, 200, "{b}");
    let rt2 = b["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let (s, b) = refresh(rt1).await;
    assert_aad(s, &b, 400, "invalid_grant", 70043);
    let (s, b) = refresh(rt2).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fake.token_requests_for("refresh_token"), 3);

    fake.set_consent(Consent::Deny);
    let denied = authorize(&fake, &with_pkce).await;
    assert_eq!(denied["error"], "access_denied");
}

#[tokio::test]
async fn device_code_pending_slow_down_then_tokens() {
    let fake = FakeMicrosoft::start().await;
    let public_client = "0c1d2e3f-aaaa-bbbb-cccc-000000000002";
    fake.add_app(App::new(TENANT, public_client, MAILBOX));

    let start = |fake: FakeMicrosoft| async move {
        let resp = http()
            .post(format!(
                "{}/{TENANT}/oauth2/v2.0/devicecode",
                fake.authority()
            ))
            .form(&[("client_id", public_client), ("scope", DELEGATED_SCOPE)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    let dc = start(fake.clone()).await;
    assert_eq!(dc["interval"], 1);
    assert!(
        dc["message"]
            .as_str()
            .unwrap()
            .contains(dc["user_code"].as_str().unwrap())
    );
    let device_code = dc["device_code"].as_str().unwrap().to_string();
    let poll = |code: String| {
        let fake = fake.clone();
        async move {
            post_token(
                &fake,
                TENANT,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", public_client),
                    ("device_code", &code),
                ],
            )
            .await
        }
    };

    let (s, b) = poll(device_code.clone()).await;
    assert_aad(s, &b, 400, "authorization_pending", 70016);
    let (s, b) = poll(device_code.clone()).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("slow_down")), "{b}");
    // The client must wait `interval` between polls; that is the protocol, not a guess.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, b) = poll(device_code.clone()).await;
    assert_eq!(b["error"], "authorization_pending", "{s} {b}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, tokens) = poll(device_code.clone()).await;
    assert_eq!(s, 200, "{tokens}");
    assert!(tokens["refresh_token"].is_string());

    fake.set_device_code_lifetime(0);
    let expired = start(fake.clone()).await;
    let (s, b) = poll(expired["device_code"].as_str().unwrap().to_string()).await;
    assert_aad(s, &b, 400, "expired_token", 70019);
}

#[tokio::test]
async fn certificate_client_assertion_is_verified() {
    let fake = FakeMicrosoft::start().await;
    let cert = app_certificate("authrelay test app");
    let unregistered = app_certificate("some other app");
    fake.add_app(App::new(TENANT, CLIENT, MAILBOX).with_certificate(&cert.cert_pem));
    let token_url = fake.token_url(TENANT);

    let try_assertion = |assertion: String| {
        let fake = fake.clone();
        async move {
            post_token(
                &fake,
                TENANT,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT),
                    ("scope", SMTP_SCOPE),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ],
            )
            .await
        }
    };

    let good = client_assertion(&cert.cert_pem, &cert.key_pem, CLIENT, &token_url);
    let (s, b) = try_assertion(good.clone()).await;
    assert_eq!(s, 200, "{b}");

    // Header and claims of one assertion with the signature of another.
    let other = client_assertion(&cert.cert_pem, &cert.key_pem, CLIENT, &token_url);
    let spliced = format!(
        "{}.{}",
        good.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    let (s, b) = try_assertion(spliced).await;
    assert_aad(s, &b, 401, "invalid_client", 7000274);

    let wrong_aud = client_assertion(
        &cert.cert_pem,
        &cert.key_pem,
        CLIENT,
        "https://login.microsoftonline.com/x/oauth2/v2.0/token",
    );
    let (s, b) = try_assertion(wrong_aud).await;
    assert_aad(s, &b, 401, "invalid_client", 50027);

    let not_registered = client_assertion(
        &unregistered.cert_pem,
        &unregistered.key_pem,
        CLIENT,
        &token_url,
    );
    let (s, b) = try_assertion(not_registered).await;
    assert_aad(s, &b, 401, "invalid_client", 700027);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| json!({"aud": token_url, "iss": CLIENT, "sub": CLIENT, "jti": "j1", "nbf": now - 900, "exp": exp});
    let header = |alg: &str| json!({"alg": alg, "typ": "JWT", "x5t#S256": support::x5t_s256(&cert.cert_pem)});
    let (s, b) = try_assertion(sign_jwt(&cert.key_pem, &header("RS256"), &claims(now - 60))).await;
    assert_aad(s, &b, 401, "invalid_client", 700024);
    let (s, b) = try_assertion(sign_jwt(
        &cert.key_pem,
        &header("PS256"),
        &claims(now + 300),
    ))
    .await;
    assert_eq!(s, 200, "PS256: {b}");
}

#[tokio::test]
async fn graph_send_mail_accepts_mime_and_refuses_bad_requests() {
    let fake = fake_with_app().await;
    let graph = app_token(&fake, GRAPH_SCOPE).await;
    let smtp = app_token(&fake, SMTP_SCOPE).await;
    let url = format!("{}/v1.0/users/{MAILBOX}/sendMail", fake.graph_endpoint());
    let mime = b"From: relay@contoso.com\r\nTo: \"Doe, J\" <j@example.com>, k@example.com\r\nCc: c@example.com\r\nBcc: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
    let send = |token: String, body: String| {
        let url = url.clone();
        async move {
            let resp = http()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
            (status, retry_after, body)
        }
    };
    let b64 = STANDARD.encode(mime);

    let (s, _, b) = send(graph.clone(), b64.clone()).await;
    assert_eq!(s, 202, "{b}");
    let d = &fake.wait_delivered(1, WAIT).await[0];
    assert_eq!(d.via, Via::Graph);
    assert_eq!(d.mail_from, MAILBOX);
    assert_eq!(
        d.rcpt_to,
        [
            "j@example.com",
            "k@example.com",
            "c@example.com",
            "b@example.com"
        ]
    );
    assert_eq!(d.data, mime);

    let (s, _, b) = send(smtp, b64.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    let (s, _, _) = send("garbage".into(), b64.clone()).await;
    assert_eq!(s, 401);
    let (s, _, b) = send(graph.clone(), "not base64 !!".into()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("ErrorMimeContentInvalidBase64String"))
    );
    let (s, _, b) = send(graph.clone(), STANDARD.encode("just one line")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("ErrorMimeContentInvalid"))
    );
    let (s, _, _) = send(graph.clone(), "A".repeat(4 * 1024 * 1024 + 4)).await;
    assert_eq!(s, 413);

    fake.push_graph_faults([GraphFault::TooManyRequests { retry_after: 7 }]);
    let (s, retry, _) = send(graph.clone(), b64.clone()).await;
    assert_eq!((s, retry.as_deref()), (429, Some("7")));
    fake.set_graph_fault(GraphFault::Forbidden);
    let (s, _, b) = send(graph.clone(), b64.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("ErrorAccessDenied"))
    );
    fake.set_graph_fault(GraphFault::None);
    assert_eq!(send(graph.clone(), b64).await.0, 202);
    assert_eq!(fake.delivered().len(), 2);

    let me = http()
        .get(format!("{}/v1.0/users/{MAILBOX}", fake.graph_endpoint()))
        .bearer_auth(&graph)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["mail"], MAILBOX);
}

#[tokio::test]
#[should_panic(expected = "timed out after 100ms waiting for 1 delivered message(s)")]
async fn wait_delivered_panics_with_a_report_on_timeout() {
    let fake = fake_with_app().await;
    fake.wait_delivered(1, Duration::from_millis(100)).await;
}
