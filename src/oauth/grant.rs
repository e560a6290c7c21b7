//! The token endpoint requests: one function per OAuth 2.0 grant Microsoft Entra ID offers us.
//!
//! Plain form posts with reqwest rather than a generic OAuth crate: Entra's error bodies carry
//! `AADSTS` codes that decide what an operator must do (sign in again, renew the secret), and
//! the certificate flow needs a signed client assertion; both are clearer written out.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::{Secret, Tenant};

use super::assertion;

/// How a token request failed, in the terms an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A person must sign in again (`invalid_grant`, `interaction_required`).
    #[error("needs sign-in: {0}")]
    NeedsSignIn(String),
    /// The Azure client secret has expired (AADSTS7000222).
    #[error("client secret expired: {0}")]
    SecretExpired(String),
    /// The client secret or certificate is wrong (AADSTS7000215 and friends).
    #[error("wrong client secret: {0}")]
    WrongSecret(String),
    /// The endpoint could not be reached or answered 5xx; worth retrying.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// Anything else Entra refused (bad scope, unknown client, ...): a configuration problem.
    #[error("token request refused: {0}")]
    Refused(String),
    /// Local problem: unreadable secret file, bad certificate or key.
    #[error("local configuration: {0}")]
    Local(String),
    /// Device code flow: the user has not finished yet.
    #[error("authorization pending")]
    Pending,
    /// Device code flow: poll more slowly.
    #[error("slow down")]
    SlowDown,
}

impl GrantError {
    /// Transient errors are retried with back-off; the others wait for an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, GrantError::Unreachable(_))
    }

    /// Short machine-readable name used in `/status` and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GrantError::NeedsSignIn(_) => "needs_sign_in",
            GrantError::SecretExpired(_) => "secret_expired",
            GrantError::WrongSecret(_) => "wrong_secret",
            GrantError::Unreachable(_) => "unreachable",
            GrantError::Refused(_) => "refused",
            GrantError::Local(_) => "local_config",
            GrantError::Pending => "pending",
            GrantError::SlowDown => "slow_down",
        }
    }
}

/// A successful token response.
#[derive(Clone)]
pub struct Granted {
    pub access_token: Secret,
    pub expires_at: SystemTime,
    pub lifetime: Duration,
    pub refresh_token: Option<Secret>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// The reqwest client for Entra: no redirects (a redirect from a token endpoint is never
/// right), bounded time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("authrelay/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Adds whatever identifies this app: secret, certificate assertion, or nothing (public client).
fn client_auth(tenant: &Tenant, form: &mut Vec<(&'static str, String)>) -> Result<(), GrantError> {
    form.push(("client_id", tenant.client_id.clone()));
    if let (Some(cert), Some(key)) = (&tenant.client_certificate_file, &tenant.client_key_file) {
        let jwt = assertion::sign(cert, key, &tenant.client_id, &tenant.endpoint("token"))
            .map_err(GrantError::Local)?;
        form.push((
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ));
        form.push(("client_assertion", jwt));
    } else if let Some(secret) = tenant
        .load_secret()
        .map_err(|e| GrantError::Local(e.to_string()))?
    {
        form.push(("client_secret", secret.expose().to_string()));
    }
    Ok(())
}

pub async fn client_credentials(
    http: &reqwest::Client,
    tenant: &Tenant,
) -> Result<Granted, GrantError> {
    let form = vec![
        ("grant_type", "client_credentials".to_string()),
        ("scope", tenant.effective_scope()),
    ];
    token_request(http, tenant, form).await
}

pub async fn refresh_token(
    http: &reqwest::Client,
    tenant: &Tenant,
    refresh: &Secret,
) -> Result<Granted, GrantError> {
    let form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh.expose().to_string()),
        ("scope", tenant.effective_scope()),
    ];
    token_request(http, tenant, form).await
}

pub async fn authorization_code(
    http: &reqwest::Client,
    tenant: &Tenant,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> Result<Granted, GrantError> {
    let form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("code_verifier", verifier.to_string()),
        ("redirect_uri", redirect_uri.to_string()),
        ("scope", tenant.effective_scope()),
    ];
    token_request(http, tenant, form).await
}

/// What `/devicecode` returns: show `message` (or the URI and code) to the person.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in: u64,
    #[serde(default = "default_interval")]
    pub interval: u64,
    #[serde(default)]
    pub message: String,
}

fn default_interval() -> u64 {
    5
}

pub async fn device_code_start(
    http: &reqwest::Client,
    tenant: &Tenant,
) -> Result<DeviceCode, GrantError> {
    let form = [
        ("client_id", tenant.client_id.clone()),
        ("scope", tenant.effective_scope()),
    ];
    let body = send_form(http, &tenant.endpoint("devicecode"), &form).await?;
    serde_json::from_slice(&body)
        .map_err(|e| GrantError::Refused(format!("unreadable device code response: {e}")))
}

pub async fn device_code_poll(
    http: &reqwest::Client,
    tenant: &Tenant,
    device_code: &str,
) -> Result<Granted, GrantError> {
    let form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:device_code".to_string(),
        ),
        ("device_code", device_code.to_string()),
    ];
    token_request(http, tenant, form).await
}

/// A grant at the token endpoint, with the app's own authentication added.
async fn token_request(
    http: &reqwest::Client,
    tenant: &Tenant,
    mut form: Vec<(&'static str, String)>,
) -> Result<Granted, GrantError> {
    client_auth(tenant, &mut form)?;
    let body = send_form(http, &tenant.endpoint("token"), &form).await?;
    let t: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| GrantError::Refused(format!("unreadable token response: {e}")))?;
    let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600).max(1));
    Ok(Granted {
        access_token: Secret(t.access_token),
        expires_at: SystemTime::now() + lifetime,
        lifetime,
        refresh_token: t.refresh_token.map(Secret),
    })
}

/// Posts a form; a success status gives the body, anything else is classified.
async fn send_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&'static str, String)],
) -> Result<Vec<u8>, GrantError> {
    let resp = http
        .post(url)
        .form(form)
        .send()
        .await
        .map_err(|e| GrantError::Unreachable(describe(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| GrantError::Unreachable(describe(&e)))?;
    if status.is_success() {
        Ok(body.to_vec())
    } else {
        Err(classify(status, &body))
    }
}

/// reqwest errors mention the URL, which is fine (it holds no secret), and their source chain.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Maps an error response to what it means for us. Pure, so it is tested without a server.
pub fn classify(status: reqwest::StatusCode, body: &[u8]) -> GrantError {
    let err: ErrorResponse = serde_json::from_slice(body).unwrap_or_default();
    // The first line of the description holds the AADSTS code and text; the rest is trace ids.
    let first_line = err.error_description.lines().next().unwrap_or("").trim();
    let text = if first_line.is_empty() {
        format!("HTTP {status} {}", err.error)
    } else {
        format!("{}: {first_line}", err.error)
    };
    let has = |code: u64| {
        err.error_codes.contains(&code) || first_line.contains(&format!("AADSTS{code}"))
    };
    match err.error.as_str() {
        "authorization_pending" => GrantError::Pending,
        "slow_down" => GrantError::SlowDown,
        "invalid_grant" | "interaction_required" | "expired_token" | "access_denied" => {
            GrantError::NeedsSignIn(text)
        }
        "invalid_client" if has(7000222) => GrantError::SecretExpired(text),
        "invalid_client" => GrantError::WrongSecret(text),
        "temporarily_unavailable" => GrantError::Unreachable(text),
        _ if status.is_server_error() || status.as_u16() == 429 => GrantError::Unreachable(text),
        _ if has(7000222) => GrantError::SecretExpired(text),
        _ if has(7000215) => GrantError::WrongSecret(text),
        _ => GrantError::Refused(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn classifies_entra_errors() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app 'x' are expired.\r\nTrace ID: 1","error_codes":[7000222]}"#;
        let e = classify(StatusCode::UNAUTHORIZED, body);
        assert_eq!(e.kind(), "secret_expired");
        assert!(e.to_string().contains("AADSTS7000222"));
        assert!(!e.to_string().contains("Trace ID"));

        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#;
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, body).kind(),
            "wrong_secret"
        );

        let body = br#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity."}"#;
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, body).kind(),
            "needs_sign_in"
        );

        let body = br#"{"error":"authorization_pending"}"#;
        assert_eq!(classify(StatusCode::BAD_REQUEST, body), GrantError::Pending);

        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b"oops").kind(),
            "unreachable"
        );
        let body = br#"{"error":"invalid_scope","error_description":"AADSTS70011: bad scope"}"#;
        assert_eq!(classify(StatusCode::BAD_REQUEST, body).kind(), "refused");
        assert!(!classify(StatusCode::BAD_REQUEST, body).is_transient());
    }
}
