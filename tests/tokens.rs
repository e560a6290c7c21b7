//! Tokens that never make mail wait: every OAuth flow end to end through the real binary and
//! the fake Entra ID, the token store on disk, the refresh loop, and token errors as states.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::relay::{Options, Relay, TenantSpec, message};
use support::{FakeMicrosoft, TokenFault};

const WAIT: Duration = Duration::from_secs(20);

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_string()
}

/// Signs in the way a person does from the status page: the Authorize link, Microsoft's
/// consent (the fake consents at once), back to our callback.
async fn authorize_like_a_browser(relay: &Relay, tenant: &str) -> String {
    let b = browser();
    let r = b
        .get(format!("http://{}/oauth/{tenant}/authorize", relay.admin))
        .send()
        .await
        .expect("authorize");
    assert_eq!(r.status().as_u16(), 302);
    let microsoft = location(&r);
    assert!(
        microsoft.contains("code_challenge_method=S256") && microsoft.contains("state="),
        "{microsoft}"
    );
    let r = b.get(&microsoft).send().await.expect("fake authorize");
    assert_eq!(
        r.status().as_u16(),
        302,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let callback = location(&r);
    assert!(callback.contains("/oauth/callback?code="), "{callback}");
    let r = b.get(&callback).send().await.expect("callback");
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    body
}

fn token_file(relay: &Relay, tenant: &str) -> serde_json::Value {
    let path = relay
        .state_dir()
        .join("tokens")
        .join(format!("{tenant}.json"));
    let mode = std::fs::metadata(&path)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file must be owner-only");
    serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_from_the_status_page_then_mail_flows() {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com").extra("auth = \"authorization_code\"");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;

    // Not yet authorized: mail waits, the page says why.
    let r = relay
        .send(
            "app@x.org",
            &["a@example.org"],
            &message("app@x.org", "a@example.org", "before"),
        )
        .await;
    assert_eq!(r.code, 250);
    let s = relay
        .wait_status("needs sign-in", |s| {
            s["tenants"][0]["verified"] == "Not Verified"
        })
        .await;
    assert!(s["tenants"][0]["delegated"] == true, "{s}");
    let (_, page) = relay.get("/").await;
    assert!(
        page.contains("/oauth/contoso/authorize"),
        "an Authorize button: {page}"
    );

    let body = authorize_like_a_browser(&relay, "contoso").await;
    assert!(body.contains("Authentication successful"), "{body}");
    let file = token_file(&relay, "contoso");
    assert!(file["refresh_token"].is_string());
    assert_eq!(fake.token_requests_for("authorization_code"), 1);

    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(got[0].user, "relay@contoso.com");
    relay
        .wait_status("Verified", |s| s["tenants"][0]["verified"] == "Verified")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_from_a_headless_shell() {
    let fake = FakeMicrosoft::start().await;
    fake.set_device_interval(1);
    fake.set_device_pending_polls(1);
    let t = TenantSpec::new("contoso", "relay@contoso.com")
        .without_secret()
        .extra("auth = \"device_code\"");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    let r = relay
        .send(
            "app@x.org",
            &["a@example.org"],
            &message("app@x.org", "a@example.org", "queued first"),
        )
        .await;
    assert_eq!(r.code, 250);

    let (code, out, err) = relay.command(&["authorize", "contoso", "--device"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("enter the code") || out.contains("devicelogin") || out.contains("code"),
        "{out}"
    );
    assert!(out.contains("contoso: authorized"), "{out}");
    token_file(&relay, "contoso");
    // The operator reloads; the daemon picks up the stored token and the queued mail goes.
    relay.signal("HUP");
    let got = fake.wait_delivered(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, vec!["a@example.org"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_only_with_a_certificate_instead_of_a_secret() {
    let fake = FakeMicrosoft::start().await;
    let cert = support::app_certificate("authrelay-contoso");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("app.crt"), dir.path().join("app.key"));
    std::fs::write(&cert_file, &cert.cert_pem).expect("cert");
    std::fs::write(&key_file, &cert.key_pem).expect("key");
    let t = TenantSpec::new("contoso", "relay@contoso.com")
        .without_secret()
        .extra(&format!(
            "client_certificate_file = \"{}\"\nclient_key_file = \"{}\"",
            cert_file.display(),
            key_file.display()
        ));
    let pem = cert.cert_pem.clone();
    t.register_app(&fake, &[], move |a| a.with_certificate(&pem));
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    let r = relay
        .send(
            "app@x.org",
            &["a@example.org"],
            &message("app@x.org", "a@example.org", "cert"),
        )
        .await;
    assert_eq!(r.code, 250);
    fake.wait_delivered(1, WAIT).await;
    assert!(fake.token_requests_for("client_credentials") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed_ahead_and_mail_never_waits() {
    let fake = FakeMicrosoft::start().await;
    fake.set_token_lifetime(3);
    let t = TenantSpec::new("contoso", "relay@contoso.com")
        .extra("auth = \"authorization_code\"\nmax_messages_per_minute = 1000");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    authorize_like_a_browser(&relay, "contoso").await;

    // Mail for 20 seconds, one message every 400 ms, while 3-second tokens come and go.
    let mut refresh_tokens = std::collections::HashSet::new();
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(20) {
        let r = relay
            .send(
                "app@x.org",
                &["a@example.org"],
                &message("app@x.org", "a@example.org", &format!("m{sent}")),
            )
            .await;
        assert_eq!(r.code, 250);
        sent += 1;
        if let Some(rt) = token_file(&relay, "contoso")["refresh_token"].as_str() {
            refresh_tokens.insert(rt.to_string());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    fake.wait_delivered(sent, WAIT).await;
    assert!(
        refresh_tokens.len() >= 4,
        "the refresh token rotated only {} times",
        refresh_tokens.len()
    );
    let refreshes = fake.token_requests_for("refresh_token");
    assert!(
        refreshes >= 5,
        "expected a refresh every ~2.4 s, saw {refreshes}"
    );
    let logs = relay.logs();
    assert!(
        !logs.contains("fetching one inline"),
        "a delivery waited on a token fetch:\n{logs}"
    );
    assert_eq!(fake.auth_failures(), 0, "an expired token reached Exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_stored_token() {
    let fake = FakeMicrosoft::start().await;
    let t = TenantSpec::new("contoso", "relay@contoso.com");
    t.register(&fake, &[]);
    let mut relay = Relay::start(&fake, &[t], Options::default()).await;
    relay
        .send(
            "app@x.org",
            &["a@example.org"],
            &message("app@x.org", "a@example.org", "one"),
        )
        .await;
    fake.wait_delivered(1, WAIT).await;
    let before = fake.token_requests();
    assert!(before >= 1);
    assert!(relay.stop().await.success());
    relay.launch().await;
    relay
        .send(
            "app@x.org",
            &["a@example.org"],
            &message("app@x.org", "a@example.org", "two"),
        )
        .await;
    fake.wait_delivered(2, WAIT).await;
    assert_eq!(
        fake.token_requests(),
        before,
        "the stored token should have been reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_keeps_mail_queued_until_it_returns() {
    let fake = FakeMicrosoft::start().await;
    fake.set_token_fault(TokenFault::Unavailable);
    let t = TenantSpec::new("contoso", "relay@contoso.com");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    let r = relay
        .send(
            "app@x.org",
            &["a@example.org"],
            &message("app@x.org", "a@example.org", "down"),
        )
        .await;
    assert_eq!(r.code, 250);
    relay
        .wait_status("unreachable with the message queued", |s| {
            s["tenants"][0]["token_error_kind"] == "unreachable" && s["queue"]["messages"] == 1
        })
        .await;
    let (code, _) = relay.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(fake.delivered().is_empty());

    fake.set_token_fault(TokenFault::None);
    fake.wait_delivered(1, WAIT).await;
    relay.wait_queued(0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_secret_is_shown_and_nothing_is_lost() {
    let fake = FakeMicrosoft::start().await;
    fake.set_token_fault(TokenFault::SecretExpired);
    let t = TenantSpec::new("contoso", "relay@contoso.com");
    t.register(&fake, &[]);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    for i in 0..3 {
        let r = relay
            .send(
                "app@x.org",
                &["a@example.org"],
                &message("app@x.org", "a@example.org", &format!("s{i}")),
            )
            .await;
        assert_eq!(r.code, 250);
    }
    let s = relay
        .wait_status("secret expired", |s| {
            s["tenants"][0]["token_error_kind"] == "secret_expired"
        })
        .await;
    let t = &s["tenants"][0];
    assert_eq!(t["verified"], "Not Verified", "{s}");
    assert!(
        t["token_error"]
            .as_str()
            .unwrap_or("")
            .contains("AADSTS7000222"),
        "{s}"
    );
    relay.wait_log("client secret expired", WAIT).await;
    assert_eq!(relay.queued().len(), 3, "nothing bounced, nothing dropped");
    let (code, body) = relay.get("/readyz").await;
    assert_eq!(code, 503, "{body}");

    // The operator puts a new secret in place and reloads.
    fake.set_token_fault(TokenFault::None);
    relay.signal("HUP");
    fake.wait_delivered(3, WAIT).await;
    relay.wait_queued(0, WAIT).await;
    let (code, _) = relay.get("/readyz").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_tenant() {
    let fake = FakeMicrosoft::start().await;
    let good = TenantSpec::new("contoso", "relay@contoso.com");
    good.register(&fake, &[]);
    let bad =
        TenantSpec::new("fabrikam", "relay@fabrikam.com").extra("senders = [\"*@fabrikam.com\"]");
    // fabrikam's app is not registered at Microsoft: its token request is refused.
    let relay = Relay::start(&fake, &[good, bad], Options::default()).await;
    let (code, out, _) = relay.command(&["verify", "contoso"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "contoso: Verified");
    let (code, out, _) = relay.command(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("contoso: Verified"), "{out}");
    assert!(out.contains("fabrikam: Not Verified: "), "{out}");
}
