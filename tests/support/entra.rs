//! Entra ID (Microsoft identity platform v2.0) endpoints: `/token`, `/authorize`,
//! `/devicecode`, on the fake's HTTP listener.
//!
//! They follow Microsoft's wire format closely (form bodies, `AADSTS` error codes inside
//! `error_description`, `error_codes`, refresh-token rotation, no refresh token for client
//! credentials) because the relay's token manager classifies failures by these exact fields.
//! The simulated user consents automatically (or declines, see `Consent`): there is no UI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::assertion;
use super::directory::{
    App, Audience, AuthCode, Consent, DeviceCode, Shared, State as Dir, TokenFault, guid,
    random_token, timestamp,
};

pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const AUTH_CODE_LIFETIME: Duration = Duration::from_secs(600);

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
}

/// A Microsoft-shaped OAuth error: HTTP status, OAuth `error`, AADSTS number and message.
#[derive(Debug)]
pub(crate) struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

fn aad(status: u16, error: &'static str, code: u32, message: impl Into<String>) -> AadError {
    AadError {
        status: StatusCode::from_u16(status).expect("valid status"),
        error,
        code,
        message: message.into(),
    }
}

fn missing(param: &str) -> AadError {
    aad(
        400,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

impl AadError {
    fn description(&self, trace: &str, correlation: &str, ts: &str) -> String {
        format!(
            "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {ts}",
            self.code, self.message
        )
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let (trace, correlation, ts) = (guid(), guid(), timestamp());
        let body = json!({
            "error": self.error,
            "error_description": self.description(&trace, &correlation, &ts),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

// ----- /token ---------------------------------------------------------------------------------

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let params: HashMap<String, String> = form
        .map(|Form(pairs)| pairs.into_iter().collect())
        .unwrap_or_default();
    let basic = basic_credentials(&headers);
    let token_url = format!("{}/{tenant}/oauth2/v2.0/token", shared.authority);
    shared.with(|s| {
        let grant_type = params.get("grant_type").cloned().unwrap_or_default();
        s.token_requests.push(grant_type);
        match handle_token(s, &tenant, &params, basic, &token_url) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store, no-cache")],
                axum::Json(body),
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    })
}

/// How the client proved who it is.
#[derive(Debug, PartialEq, Eq)]
enum ClientAuth {
    Public,
    Secret,
    Certificate,
}

fn handle_token(
    s: &mut Dir,
    tenant: &str,
    p: &HashMap<String, String>,
    basic: Option<(String, String)>,
    token_url: &str,
) -> Result<Value, AadError> {
    let (client_id, secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (p.get("client_id").cloned(), p.get("client_secret").cloned()),
    };
    let shown_id = client_id.clone().unwrap_or_default();
    match s.token_fault {
        TokenFault::None => {}
        TokenFault::Unavailable => {
            return Err(aad(
                503,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            ));
        }
        TokenFault::InvalidGrant => {
            return Err(aad(
                400,
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity. The token was issued on \
                 2025-01-01T00:00:00.0000000Z and was inactive for 90.00:00:00.",
            ));
        }
        TokenFault::SecretExpired => {
            return Err(aad(
                401,
                "invalid_client",
                7000222,
                format!(
                    "The provided client secret keys for app '{shown_id}' are expired. Visit the \
                     Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, \
                     or consider using certificate credentials for added security: \
                     https://aka.ms/certCreds."
                ),
            ));
        }
        TokenFault::WrongSecret => return Err(wrong_secret(&shown_id)),
    }
    if !s.tenant_exists(tenant) {
        return Err(unknown_tenant(tenant));
    }
    let grant_type = p.get("grant_type").ok_or_else(|| missing("grant_type"))?;
    let client_id = client_id.ok_or_else(|| missing("client_id"))?;
    let app = s
        .find_app(tenant, &client_id)
        .cloned()
        .ok_or_else(|| unknown_client(&client_id, tenant))?;
    let auth = authenticate_client(&app, secret.as_deref(), p, token_url)?;

    match grant_type.as_str() {
        "client_credentials" => {
            if auth == ClientAuth::Public {
                return Err(aad(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' \
                     or 'client_secret'.",
                ));
            }
            let scope = p.get("scope").ok_or_else(|| missing("scope"))?;
            let audience = app_only_audience(scope)?;
            let access = s.issue_access_token(&app, audience, false);
            // Like Microsoft: no refresh token and no scope for client credentials.
            Ok(token_body(access, s.token_lifetime, None, None))
        }
        "authorization_code" => {
            let code = p.get("code").ok_or_else(|| missing("code"))?;
            let c = s.auth_codes.get_mut(code).ok_or_else(malformed_grant)?;
            if c.redeemed {
                return Err(aad(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new \
                     valid code or use an existing refresh token.",
                ));
            }
            if !c.tenant_id.eq_ignore_ascii_case(tenant) || c.client_id != app.client_id {
                return Err(invalid_grant_malformed());
            }
            if Instant::now() >= c.expires {
                return Err(aad(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to \
                     inactivity. Send a new interactive authorization request for this user and \
                     resource.",
                ));
            }
            let redirect_uri = p
                .get("redirect_uri")
                .ok_or_else(|| missing("redirect_uri"))?;
            if *redirect_uri != c.redirect_uri {
                return Err(aad(
                    400,
                    "invalid_grant",
                    500112,
                    format!(
                        "The reply address '{redirect_uri}' does not match the reply address '{}' \
                         provided when requesting Authorization code.",
                        c.redirect_uri
                    ),
                ));
            }
            let verifier = p.get("code_verifier").map(String::as_str).unwrap_or("");
            if pkce_s256(verifier) != c.code_challenge {
                return Err(aad(
                    400,
                    "invalid_grant",
                    50148,
                    "The code_verifier does not match the code_challenge supplied in the \
                     authorization request for PKCE.",
                ));
            }
            c.redeemed = true;
            let scope = c.scope.clone();
            issue_delegated(s, &app, &scope)
        }
        "refresh_token" => {
            let rt = p
                .get("refresh_token")
                .ok_or_else(|| missing("refresh_token"))?;
            let r = s.refresh_tokens.get_mut(rt).ok_or_else(malformed_grant)?;
            if !r.tenant_id.eq_ignore_ascii_case(tenant) || r.client_id != app.client_id {
                return Err(invalid_grant_malformed());
            }
            if r.redeemed {
                return Err(aad(
                    400,
                    "invalid_grant",
                    70043,
                    "The refresh token has expired or is invalid due to sign-in frequency checks \
                     by conditional access. (This fake invalidates a refresh token once it has \
                     been redeemed: use the rotated one.)",
                ));
            }
            r.redeemed = true;
            let scope = p.get("scope").cloned().unwrap_or_else(|| r.scope.clone());
            let (audience, granted, _) = delegated_scope(&scope)?;
            let access = s.issue_access_token(&app, audience, true);
            let refresh = s.issue_refresh_token(&app, &scope);
            Ok(token_body(
                access,
                s.token_lifetime,
                Some(refresh),
                Some(&granted),
            ))
        }
        DEVICE_CODE_GRANT => {
            let dc = p
                .get("device_code")
                .or_else(|| p.get("code"))
                .ok_or_else(|| missing("device_code"))?;
            let consent = s.consent;
            let d = s.device_codes.get_mut(dc).ok_or_else(malformed_grant)?;
            if !d.tenant_id.eq_ignore_ascii_case(tenant) || d.client_id != app.client_id {
                return Err(invalid_grant_malformed());
            }
            if d.redeemed {
                return Err(aad(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new \
                     valid code or use an existing refresh token.",
                ));
            }
            let now = Instant::now();
            if now >= d.expires {
                return Err(aad(
                    400,
                    "expired_token",
                    70019,
                    "Verification code expired.",
                ));
            }
            let too_fast = d.last_poll.is_some_and(|last| {
                now.duration_since(last) + Duration::from_millis(100) < d.interval
            });
            d.last_poll = Some(now);
            if too_fast {
                return Err(aad(
                    400,
                    "slow_down",
                    70016,
                    format!(
                        "OAuth 2.0 device flow error. Polled faster than the interval of {} s.",
                        d.interval.as_secs()
                    ),
                ));
            }
            if d.pending_polls_left > 0 {
                d.pending_polls_left -= 1;
                return Err(aad(
                    400,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                ));
            }
            if consent == Consent::Deny {
                return Err(aad(
                    400,
                    "authorization_declined",
                    65004,
                    "User declined to consent to access the app.",
                ));
            }
            d.redeemed = true;
            let scope = d.scope.clone();
            issue_delegated(s, &app, &scope)
        }
        other => Err(aad(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

fn issue_delegated(s: &mut Dir, app: &App, scope: &str) -> Result<Value, AadError> {
    let (audience, granted, offline) = delegated_scope(scope)?;
    let access = s.issue_access_token(app, audience, true);
    let refresh = offline.then(|| s.issue_refresh_token(app, scope));
    Ok(token_body(
        access,
        s.token_lifetime,
        refresh,
        Some(&granted),
    ))
}

fn token_body(
    access: String,
    lifetime: u64,
    refresh: Option<String>,
    scope: Option<&str>,
) -> Value {
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access,
    });
    if let Some(scope) = scope {
        body["scope"] = Value::from(scope);
    }
    if let Some(refresh) = refresh {
        body["refresh_token"] = Value::from(refresh);
    }
    body
}

fn authenticate_client(
    app: &App,
    secret: Option<&str>,
    p: &HashMap<String, String>,
    token_url: &str,
) -> Result<ClientAuth, AadError> {
    if let Some(jwt) = p.get("client_assertion") {
        if p.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return Err(aad(
                400,
                "invalid_request",
                7000216,
                format!("'client_assertion_type' is missing or not '{JWT_BEARER}'."),
            ));
        }
        let Some(cert_pem) = &app.certificate_pem else {
            return Err(aad(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not \
                 found.]",
            ));
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        return assertion::verify(jwt, cert_pem, &app.client_id, token_url, now)
            .map(|()| ClientAuth::Certificate)
            .map_err(|e| aad(401, "invalid_client", e.code, e.message));
    }
    if let Some(secret) = secret {
        return match (&app.client_secret, &app.certificate_pem) {
            (Some(expected), _) if expected == secret => Ok(ClientAuth::Secret),
            (Some(_), _) | (None, Some(_)) => Err(wrong_secret(&app.client_id)),
            (None, None) => Err(aad(
                401,
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be \
                 presented.",
            )),
        };
    }
    if app.is_confidential() {
        return Err(aad(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        ));
    }
    Ok(ClientAuth::Public)
}

fn wrong_secret(client_id: &str) -> AadError {
    aad(
        401,
        "invalid_client",
        7000215,
        format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app \
             '{client_id}'."
        ),
    )
}

fn unknown_tenant(tenant: &str) -> AadError {
    aad(
        400,
        "invalid_request",
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud."
        ),
    )
}

fn unknown_client(client_id: &str, tenant: &str) -> AadError {
    aad(
        400,
        "unauthorized_client",
        700016,
        format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant}'. \
             This can happen if the application has not been installed by the administrator of \
             the tenant or consented to by any user in the tenant. You may have sent your \
             authentication request to the wrong tenant."
        ),
    )
}

fn malformed_grant() -> AadError {
    aad(
        400,
        "invalid_grant",
        9002313,
        "Invalid request. Request is malformed or invalid.",
    )
}

fn invalid_grant_malformed() -> AadError {
    aad(
        400,
        "invalid_grant",
        70000,
        "Provided grant is invalid or malformed.",
    )
}

/// `client_credentials` needs exactly one `{resource}/.default` scope.
fn app_only_audience(scope: &str) -> Result<Audience, AadError> {
    let parts: Vec<&str> = scope.split_whitespace().collect();
    let [one] = parts.as_slice() else {
        return Err(aad(
            400,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        ));
    };
    let Some(resource) = one.strip_suffix("/.default") else {
        return Err(aad(
            400,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {one} is not valid. Client credential flows must \
                 have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        ));
    };
    resource_audience(resource).ok_or_else(|| unknown_resource(resource))
}

fn resource_audience(resource: &str) -> Option<Audience> {
    match resource.to_ascii_lowercase().trim_end_matches('/') {
        "https://outlook.office365.com" | "https://outlook.office.com" => Some(Audience::Smtp),
        "https://graph.microsoft.com" => Some(Audience::Graph),
        _ => None,
    }
}

fn unknown_resource(resource: &str) -> AadError {
    aad(
        400,
        "invalid_resource",
        500011,
        format!("The resource principal named {resource} was not found in the tenant."),
    )
}

/// Delegated scopes: one resource (Exchange or Graph) plus OIDC scopes and `offline_access`.
/// Returns the audience, the granted scope string, and whether a refresh token is due.
fn delegated_scope(scope: &str) -> Result<(Audience, String, bool), AadError> {
    let mut offline = false;
    let mut audiences = Vec::new();
    let mut granted = Vec::new();
    for part in scope.split_whitespace() {
        match part.to_ascii_lowercase().as_str() {
            "offline_access" => offline = true,
            "openid" | "profile" | "email" => {}
            lower => {
                let audience = match lower.rfind('/') {
                    Some(slash) if lower.contains("://") => resource_audience(&lower[..slash])
                        .ok_or_else(|| unknown_resource(&part[..slash]))?,
                    // A bare permission name ("Mail.Send") means Graph, as at Microsoft.
                    _ => Audience::Graph,
                };
                if !audiences.contains(&audience) {
                    audiences.push(audience);
                }
                granted.push(part.to_string());
            }
        }
    }
    match audiences.as_slice() {
        [] => Ok((Audience::Graph, "openid profile User.Read".into(), offline)),
        [one] => Ok((*one, granted.join(" "), offline)),
        _ => Err(aad(
            400,
            "invalid_scope",
            28000,
            format!(
                "Provided value for the input parameter scope is not valid because it contains \
                 more than one resource. Scope {scope} is not valid."
            ),
        )),
    }
}

/// PKCE S256: base64url(SHA-256(verifier)) without padding.
pub(crate) fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Client id and secret from `Authorization: Basic` (each form-urlencoded, RFC 6749 2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ----- /authorize ------------------------------------------------------------------------------

async fn authorize(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    shared.with(|s| authorize_in(s, &tenant, &q))
}

fn authorize_in(s: &mut Dir, tenant: &str, q: &HashMap<String, String>) -> Response {
    // Problems with the client or the redirect URI are shown to the user, never redirected.
    if !s.tenant_exists(tenant) {
        return error_page(unknown_tenant(tenant));
    }
    let Some(client_id) = q.get("client_id") else {
        return error_page(missing("client_id"));
    };
    let Some(app) = s.find_app(tenant, client_id).cloned() else {
        return error_page(unknown_client(client_id, tenant));
    };
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return error_page(missing("redirect_uri"));
    };
    let registered = app.redirect_uris.is_empty() || app.redirect_uris.contains(redirect_uri);
    let parsed = reqwest::Url::parse(redirect_uri);
    let (true, Ok(redirect)) = (registered, parsed) else {
        return error_page(aad(
            400,
            "invalid_request",
            50011,
            format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the \
                 redirect URIs configured for the application '{client_id}'."
            ),
        ));
    };
    let state = q.get("state");
    let back = |pairs: &[(&str, &str)]| -> Response {
        let mut url = redirect.clone();
        {
            let mut qp = url.query_pairs_mut();
            for (k, v) in pairs {
                qp.append_pair(k, v);
            }
            if let Some(state) = state {
                qp.append_pair("state", state);
            }
        }
        (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
    };
    let back_err = |e: AadError| {
        let desc = e.description(&guid(), &guid(), &timestamp());
        back(&[("error", e.error), ("error_description", &desc)])
    };

    if q.get("response_type").map(String::as_str) != Some("code") {
        return back_err(aad(
            400,
            "unsupported_response_type",
            700054,
            "response_type must be 'code' for this application.",
        ));
    }
    let Some(scope) = q.get("scope") else {
        return back_err(missing("scope"));
    };
    if let Err(e) = delegated_scope(scope) {
        return back_err(e);
    }
    let challenge = q.get("code_challenge").filter(|c| !c.is_empty());
    let method = q.get("code_challenge_method").map(String::as_str);
    let Some(challenge) = challenge.filter(|_| method == Some("S256")) else {
        return back_err(aad(
            400,
            "invalid_request",
            9002325,
            "Proof Key for Code Exchange is required: send code_challenge with \
             code_challenge_method=S256.",
        ));
    };
    if s.consent == Consent::Deny {
        return back_err(aad(
            400,
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        ));
    }
    let code = format!("fake-code.{}", random_token(32));
    s.auth_codes.insert(
        code.clone(),
        AuthCode {
            tenant_id: tenant.into(),
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge.clone(),
            scope: scope.clone(),
            expires: Instant::now() + AUTH_CODE_LIFETIME,
            redeemed: false,
        },
    );
    back(&[("code", &code), ("session_state", &guid())])
}

fn error_page(e: AadError) -> Response {
    let desc = e.description(&guid(), &guid(), &timestamp());
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<html><body><h1>Sign in</h1><p>Sorry, but we're having trouble signing you in.</p>\
             <pre>{desc}</pre></body></html>"
        ),
    )
        .into_response()
}

// ----- /devicecode -----------------------------------------------------------------------------

async fn devicecode(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let p: HashMap<String, String> = form
        .map(|Form(pairs)| pairs.into_iter().collect())
        .unwrap_or_default();
    shared.with(|s| match devicecode_in(s, &tenant, &p) {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    })
}

fn devicecode_in(
    s: &mut Dir,
    tenant: &str,
    p: &HashMap<String, String>,
) -> Result<Value, AadError> {
    if !s.tenant_exists(tenant) {
        return Err(unknown_tenant(tenant));
    }
    let client_id = p.get("client_id").ok_or_else(|| missing("client_id"))?;
    if s.find_app(tenant, client_id).is_none() {
        return Err(unknown_client(client_id, tenant));
    }
    let scope = p.get("scope").ok_or_else(|| missing("scope"))?;
    delegated_scope(scope)?;
    let device_code = format!("fake-dc.{}", random_token(48));
    let user_code = user_code();
    let lifetime = s.device_code_lifetime;
    let interval = s.device_interval;
    s.device_codes.insert(
        device_code.clone(),
        DeviceCode {
            tenant_id: tenant.into(),
            client_id: client_id.clone(),
            scope: scope.clone(),
            expires: Instant::now() + Duration::from_secs(lifetime),
            interval: Duration::from_secs(interval),
            pending_polls_left: s.device_pending_polls,
            last_poll: None,
            redeemed: false,
        },
    );
    let verification_uri = "https://microsoft.com/devicelogin";
    Ok(json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": verification_uri,
        "expires_in": lifetime,
        "interval": interval,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the \
             code {user_code} to authenticate."
        ),
    }))
}

fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..9)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
