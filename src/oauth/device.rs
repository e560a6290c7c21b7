//! The device code flow (RFC 8628) for delegated tenants on hosts without a browser: Entra ID
//! hands out a short user code, a person enters it at `https://microsoft.com/devicelogin` on
//! any device and signs in as the tenant's mailbox, and we poll the token endpoint until that
//! is done.
//!
//! The app registration must allow public client flows (Authentication, "Allow public client
//! flows"). The device code itself is a credential until it expires: it is never logged.

use std::time::{Duration, Instant};

use crate::config::Tenant;

use super::TokenManager;
use super::grant::{self, GrantError};

pub use super::grant::DeviceCode;

/// RFC 8628 section 3.5: on `slow_down` the interval grows by 5 seconds for good.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Network errors while polling are retried this many times in a row before giving up.
const MAX_TRANSIENT: u32 = 3;

/// What to tell the person: Microsoft's own `message` ("To sign in, use a web browser to open
/// the page https://microsoft.com/devicelogin and enter the code ... to authenticate."), or
/// the same built from the URI and code when the message is missing.
pub fn instructions(dc: &DeviceCode) -> String {
    if dc.message.trim().is_empty() {
        format!(
            "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
            dc.verification_uri, dc.user_code
        )
    } else {
        dc.message.trim().to_string()
    }
}

/// Runs the whole flow: asks `/devicecode`, shows the code through `out`, polls `/token`
/// every `interval` seconds (as the response says, at least 1) until the person has signed
/// in, then stores the token with [`TokenManager::accept_grant`].
///
/// `authorization_pending` keeps polling, `slow_down` adds 5 seconds to the interval, the
/// code's `expires_in` ends the wait with [`GrantError::NeedsSignIn`], and any other refusal
/// (declined, bad code, wrong client) is returned as it is.
pub async fn run(
    http: &reqwest::Client,
    tenant: &Tenant,
    tokens: &TokenManager,
    mut out: impl FnMut(&DeviceCode),
) -> Result<(), GrantError> {
    let dc = grant::device_code_start(http, tenant).await?;
    out(&dc);
    let expires = Duration::from_secs(dc.expires_in);
    let deadline = Instant::now() + expires;
    let mut interval = Duration::from_secs(dc.interval.max(1));
    let mut transient = 0;
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(GrantError::NeedsSignIn(format!(
                "the code expired after {} without sign-in; run the device flow again",
                humantime::format_duration(expires)
            )));
        }
        match grant::device_code_poll(http, tenant, &dc.device_code).await {
            Ok(granted) => {
                tokens
                    .accept_grant(tenant, granted)
                    .map_err(|e| GrantError::Local(format!("cannot store the token: {e}")))?;
                tracing::debug!(tenant = %tenant.name, mailbox = %tenant.mailbox, "signed in with a device code; token stored");
                return Ok(());
            }
            Err(e) => match next_interval(interval, &e, &mut transient) {
                Some(next) => interval = next,
                None => return Err(e),
            },
        }
    }
}

/// The wait before the next poll after `err`, or `None` to stop polling and report `err`.
fn next_interval(interval: Duration, err: &GrantError, transient: &mut u32) -> Option<Duration> {
    match err {
        GrantError::Pending => {
            *transient = 0;
            Some(interval)
        }
        GrantError::SlowDown => {
            *transient = 0;
            Some(interval + SLOW_DOWN_STEP)
        }
        GrantError::Unreachable(why) if *transient < MAX_TRANSIENT => {
            *transient += 1;
            tracing::warn!(error = %why, "token endpoint unreachable while waiting for sign-in; still polling");
            Some(interval)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::authorize::test_entra::FakeEntra;
    use std::sync::Arc;

    #[test]
    fn polling_rules_follow_rfc8628() {
        let i = Duration::from_secs(5);
        let mut t = 0;
        assert_eq!(next_interval(i, &GrantError::Pending, &mut t), Some(i));
        assert_eq!(
            next_interval(i, &GrantError::SlowDown, &mut t),
            Some(Duration::from_secs(10))
        );
        let down = GrantError::Unreachable("connection refused".into());
        for _ in 0..MAX_TRANSIENT {
            assert_eq!(next_interval(i, &down, &mut t), Some(i));
        }
        assert_eq!(next_interval(i, &down, &mut t), None);
        assert_eq!(next_interval(i, &GrantError::Pending, &mut t), Some(i));
        assert_eq!(t, 0);
        let declined = GrantError::Refused("authorization_declined".into());
        assert_eq!(next_interval(i, &declined, &mut t), None);
        let expired = GrantError::NeedsSignIn("expired_token".into());
        assert_eq!(next_interval(i, &expired, &mut t), None);
    }

    #[test]
    fn instructions_fall_back_to_uri_and_code() {
        let mut dc = DeviceCode {
            device_code: "dev".into(),
            user_code: "ABCD-1234".into(),
            verification_uri: "https://microsoft.com/devicelogin".into(),
            expires_in: 900,
            interval: 5,
            message: String::new(),
        };
        assert_eq!(
            instructions(&dc),
            "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-1234 to authenticate."
        );
        dc.message = "Hello\n".into();
        assert_eq!(instructions(&dc), "Hello");
    }

    fn setup(fake: &FakeEntra) -> (tempfile::TempDir, Tenant, TokenManager) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tenant = fake.tenant("device_code");
        let tokens = TokenManager::new(dir.path(), Arc::new(crate::metrics::Metrics::new()))
            .expect("tokens");
        (dir, tenant, tokens)
    }

    #[tokio::test]
    async fn polls_while_pending_then_stores_the_token() {
        let fake = FakeEntra::start(1, 60).await;
        fake.respond(400, r#"{"error":"authorization_pending"}"#);
        fake.respond(
            200,
            r#"{"access_token":"at-device","refresh_token":"rt-device","expires_in":3600}"#,
        );
        let (_dir, tenant, tokens) = setup(&fake);
        let mut shown = Vec::new();
        run(tokens.http(), &tenant, &tokens, |dc| {
            shown.push(instructions(dc))
        })
        .await
        .expect("signed in");
        assert_eq!(shown.len(), 1);
        assert!(shown[0].contains("FAKE-CODE"), "{shown:?}");
        let forms = fake.token_requests();
        assert_eq!(forms.len(), 2);
        assert_eq!(
            forms[0]["grant_type"],
            "urn:ietf:params:oauth:grant-type:device_code"
        );
        assert_eq!(forms[0]["device_code"], "fake-device-code");
        let status = tokens.status(&tenant);
        assert!(status.usable() && status.has_refresh_token);
        assert_eq!(
            tokens.token(&tenant).await.expect("token").expose(),
            "at-device"
        );
    }

    #[tokio::test]
    async fn a_declined_sign_in_stops_polling() {
        let fake = FakeEntra::start(1, 60).await;
        fake.respond(
            400,
            r#"{"error":"authorization_declined","error_description":"AADSTS70000: The user declined."}"#,
        );
        let (_dir, tenant, tokens) = setup(&fake);
        let err = run(tokens.http(), &tenant, &tokens, |_| {})
            .await
            .expect_err("declined");
        assert!(err.to_string().contains("authorization_declined"), "{err}");
        assert!(!tokens.status(&tenant).usable());
    }

    #[tokio::test]
    async fn gives_up_when_the_code_expires() {
        let fake = FakeEntra::start(1, 1).await;
        let (_dir, tenant, tokens) = setup(&fake);
        let err = run(tokens.http(), &tenant, &tokens, |_| {})
            .await
            .expect_err("expired");
        assert_eq!(err.kind(), "needs_sign_in");
        assert!(fake.token_requests().is_empty());
    }
}
