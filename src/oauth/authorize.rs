//! The authorization code flow with PKCE (RFC 7636, S256) and `state`, for delegated tenants.
//!
//! A person opens `/oauth/TENANT/authorize` on the admin listener; [`Pending::start`] remembers
//! a fresh `state` with its PKCE verifier and sends the browser to Microsoft's sign-in page.
//! Microsoft sends the browser back to [`redirect_uri`] with `code` and `state`;
//! [`Pending::finish`] takes the remembered verifier (each `state` works once, for 10 minutes),
//! exchanges the code at the token endpoint and hands the token to the [`TokenManager`].
//!
//! The verifier never leaves this process except in the code exchange with Entra ID, and
//! neither it nor the code is logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{Config, Secret, Tenant};
use crate::server::Settings;

use super::{GrantError, TokenError, TokenManager, grant};

/// How long a sign-in may take between [`Pending::start`] and [`Pending::finish`].
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many sign-ins wait at once; starting another forgets the oldest.
pub const MAX_PENDING: usize = 64;

/// The admin route Microsoft redirects back to.
pub const CALLBACK_PATH: &str = "/oauth/callback";

#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error(
        "this sign-in link was already used or has expired (10 minutes); start again with `authrelay authorize TENANT` or the status page"
    )]
    UnknownState,
    #[error("no tenant named '{0}' in the configuration")]
    UnknownTenant(String),
    #[error("tenant '{0}' uses client_credentials: there is nothing to authorize")]
    NotDelegated(String),
    #[error(
        "tenant '{tenant}': cannot build the sign-in URL from authority and tenant_id: {reason}"
    )]
    BadUrl { tenant: String, reason: String },
    #[error("tenant '{tenant}': code exchange failed: {source}")]
    Grant { tenant: String, source: GrantError },
    #[error("tenant '{tenant}': cannot store the token: {source}")]
    Store { tenant: String, source: TokenError },
}

impl AuthorizeError {
    /// The tenant the failed sign-in was for, when known.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            AuthorizeError::UnknownState => None,
            AuthorizeError::UnknownTenant(t) | AuthorizeError::NotDelegated(t) => Some(t),
            AuthorizeError::BadUrl { tenant, .. }
            | AuthorizeError::Grant { tenant, .. }
            | AuthorizeError::Store { tenant, .. } => Some(tenant),
        }
    }
}

struct Entry {
    tenant: String,
    verifier: Secret,
    redirect_uri: String,
    created: Instant,
}

/// Sign-ins started and not yet finished, keyed by `state`. Expired entries are dropped on
/// every access; the map never holds more than [`MAX_PENDING`] entries.
pub struct Pending {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    max: usize,
}

impl Default for Pending {
    fn default() -> Self {
        Pending::new()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("waiting", &self.len())
            .finish()
    }
}

impl Pending {
    pub fn new() -> Pending {
        Pending::with_limits(PENDING_TTL, MAX_PENDING)
    }

    pub fn with_limits(ttl: Duration, max: usize) -> Pending {
        Pending {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
        }
    }

    /// How many sign-ins are waiting (expired ones not counted).
    pub fn len(&self) -> usize {
        let mut entries = self.lock();
        self.prune(&mut entries, Instant::now());
        entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a sign-in for `tenant`: remembers a new `state` and PKCE verifier and returns
    /// the Microsoft URL to send the browser to. `redirect_uri` must be registered in the
    /// app (Authentication, platform "Web") exactly as given; see [`redirect_uri`].
    pub fn start(&self, tenant: &Tenant, redirect_uri: &str) -> Result<String, AuthorizeError> {
        if !tenant.auth.is_delegated() {
            return Err(AuthorizeError::NotDelegated(tenant.name.clone()));
        }
        let verifier = random_b64(32);
        let state = random_b64(16);
        let url = authorize_url(tenant, redirect_uri, &state, &challenge(&verifier))?;
        self.insert(
            state,
            Entry {
                tenant: tenant.name.clone(),
                verifier: Secret(verifier),
                redirect_uri: redirect_uri.to_string(),
                created: Instant::now(),
            },
        );
        Ok(url)
    }

    /// Completes a sign-in: takes `state` (it works once), exchanges `code` for tokens and
    /// stores them. Returns the tenant's name.
    pub async fn finish(
        &self,
        tokens: &TokenManager,
        settings: &Settings,
        state: &str,
        code: &str,
    ) -> Result<String, AuthorizeError> {
        let entry = self
            .take(state, Instant::now())
            .ok_or(AuthorizeError::UnknownState)?;
        // Use the configuration in force now: a reload may have changed the client.
        let tenant = settings
            .config
            .tenant(&entry.tenant)
            .ok_or_else(|| AuthorizeError::UnknownTenant(entry.tenant.clone()))?;
        let granted = grant::authorization_code(
            tokens.http(),
            tenant,
            code,
            entry.verifier.expose(),
            &entry.redirect_uri,
        )
        .await
        .map_err(|source| AuthorizeError::Grant {
            tenant: entry.tenant.clone(),
            source,
        })?;
        if granted.refresh_token.is_none() {
            tracing::warn!(tenant = %tenant.name, "sign-in returned no refresh token (is offline_access in the scope?); the token cannot be renewed without signing in again");
        }
        tokens
            .accept_grant(tenant, granted)
            .map_err(|source| AuthorizeError::Store {
                tenant: entry.tenant.clone(),
                source,
            })?;
        tracing::info!(tenant = %tenant.name, mailbox = %tenant.mailbox, "signed in; token stored");
        Ok(entry.tenant)
    }

    /// Forgets `state` (Microsoft reported an error instead of a code) and returns the tenant
    /// it was for, if it was known and not expired.
    pub fn cancel(&self, state: &str) -> Option<String> {
        self.take(state, Instant::now()).map(|e| e.tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prune(&self, entries: &mut HashMap<String, Entry>, now: Instant) {
        entries.retain(|_, e| now.saturating_duration_since(e.created) < self.ttl);
    }

    fn insert(&self, state: String, entry: Entry) {
        let mut entries = self.lock();
        self.prune(&mut entries, entry.created);
        while entries.len() >= self.max {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
        entries.insert(state, entry);
    }

    fn take(&self, state: &str, now: Instant) -> Option<Entry> {
        let mut entries = self.lock();
        self.prune(&mut entries, now);
        entries.remove(state)
    }
}

/// Where Microsoft sends the browser back to after sign-in, or `None` when the admin listener
/// is disabled and no `admin.public_url` is set.
///
/// - With `admin.public_url` (an https reverse proxy, say): `{public_url}/oauth/callback`; a
///   `public_url` that already ends in `/oauth/callback` is used as it is.
/// - Else, when `admin.listen` is a loopback or unspecified address:
///   `http://localhost:{port}/oauth/callback`. Entra ID accepts plain `http` redirect URIs only
///   for `localhost` (not `127.0.0.1`), so this is the form to register in the app
///   (Authentication, platform "Web"). The browser must then reach the admin port as
///   `localhost`: on the server itself, or through `ssh -L 9925:127.0.0.1:9925 server`.
/// - Else `http://{listen}/oauth/callback`, which Entra ID will refuse to register: set
///   `public_url` to an https URL in front of the admin listener instead.
pub fn redirect_uri(config: &Config) -> Option<String> {
    admin_base_url(config).map(|base| format!("{base}{CALLBACK_PATH}"))
}

/// The admin listener's URL as a browser should use it (no trailing slash): the base of
/// [`redirect_uri`], and of the `/oauth/TENANT/authorize` link the CLI prints.
pub fn admin_base_url(config: &Config) -> Option<String> {
    if let Some(url) = config
        .admin
        .public_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let url = url.trim_end_matches('/');
        return Some(url.strip_suffix(CALLBACK_PATH).unwrap_or(url).to_string());
    }
    let listen = config.admin.listen?;
    let ip = listen.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        Some(format!("http://localhost:{}", listen.port()))
    } else {
        Some(format!("http://{listen}"))
    }
}

/// The PKCE S256 challenge: base64url(SHA-256(verifier)), no padding.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// `len` random bytes from the system CSPRNG, base64url without padding.
fn random_b64(len: usize) -> String {
    let mut buf = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut buf)
        // The kernel's random source failing leaves nothing safe to do.
        .expect("system random source");
    URL_SAFE_NO_PAD.encode(&buf)
}

/// Microsoft's authorize URL with every parameter query-encoded. `login_hint` pre-fills the
/// tenant's mailbox: the token must belong to the mailbox that sends.
fn authorize_url(
    tenant: &Tenant,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> Result<String, AuthorizeError> {
    let scope = tenant.effective_scope();
    let params = [
        ("client_id", tenant.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", redirect_uri),
        ("response_mode", "query"),
        ("scope", scope.as_str()),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("prompt", "select_account"),
        ("login_hint", tenant.mailbox.as_str()),
    ];
    reqwest::Url::parse_with_params(&tenant.endpoint("authorize"), params)
        .map(String::from)
        .map_err(|e| AuthorizeError::BadUrl {
            tenant: tenant.name.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
state_dir = "/nonexistent"
[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
auth = "authorization_code"
mailbox = "relay+alerts@fabrikam.com"
senders = ["*@fabrikam.com"]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@contoso.com"
"#;

    fn config() -> Config {
        Config::from_toml(CONFIG).expect("valid config")
    }

    fn query(url: &str) -> HashMap<String, String> {
        reqwest::Url::parse(url)
            .expect("url")
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn pkce_challenge_matches_rfc7636_appendix_b() {
        // The octets, verifier and challenge exactly as printed in RFC 7636 Appendix B.
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212,
            37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = URL_SAFE_NO_PAD.encode(octets);
        assert_eq!(verifier, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifier_and_state_are_random_and_well_formed() {
        let v = random_b64(32);
        assert_eq!(v.len(), 43);
        assert!(
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(v, random_b64(32));
        assert!(random_b64(16).len() >= 22);
    }

    #[test]
    fn authorize_url_carries_every_parameter_encoded() {
        let c = config();
        let t = c.tenant("fabrikam").expect("tenant");
        let redirect = "http://localhost:9925/oauth/callback";
        let pending = Pending::new();
        let url = pending.start(t, redirect).expect("start");
        assert!(
            url.starts_with(
                "https://login.microsoftonline.com/fabrikam.onmicrosoft.com/oauth2/v2.0/authorize?"
            ),
            "{url}"
        );
        // Reserved characters are percent-encoded in the raw URL.
        assert!(
            url.contains("redirect_uri=http%3A%2F%2Flocalhost%3A9925%2Foauth%2Fcallback"),
            "{url}"
        );
        assert!(
            url.contains("scope=https%3A%2F%2Foutlook.office.com%2FSMTP.Send+offline_access"),
            "{url}"
        );
        assert!(
            url.contains("login_hint=relay%2Balerts%40fabrikam.com"),
            "{url}"
        );

        let q = query(&url);
        assert_eq!(q["client_id"], "11111111-2222-3333-4444-555555555555");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], redirect);
        assert_eq!(q["response_mode"], "query");
        assert_eq!(
            q["scope"],
            "https://outlook.office.com/SMTP.Send offline_access"
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["prompt"], "select_account");
        assert_eq!(q["login_hint"], "relay+alerts@fabrikam.com");
        assert_eq!(q["code_challenge"].len(), 43);

        // The state in the URL is the one remembered, with the verifier of that challenge.
        let entry = pending.take(&q["state"], Instant::now()).expect("pending");
        assert_eq!(entry.tenant, "fabrikam");
        assert_eq!(entry.redirect_uri, redirect);
        assert_eq!(challenge(entry.verifier.expose()), q["code_challenge"]);
        // Once only.
        assert!(pending.take(&q["state"], Instant::now()).is_none());
    }

    #[test]
    fn client_credentials_tenants_have_nothing_to_authorize() {
        let c = config();
        let t = c.tenant("contoso").expect("tenant");
        let pending = Pending::new();
        assert!(matches!(
            pending.start(t, "http://localhost:9925/oauth/callback"),
            Err(AuthorizeError::NotDelegated(_))
        ));
        assert!(pending.is_empty());
    }

    #[test]
    fn expired_state_is_refused() {
        let c = config();
        let t = c.tenant("fabrikam").expect("tenant");
        let pending = Pending::new();
        let url = pending
            .start(t, "http://localhost:1/oauth/callback")
            .expect("start");
        let state = query(&url)["state"].clone();
        let later = Instant::now() + PENDING_TTL + Duration::from_secs(1);
        assert!(pending.take(&state, later).is_none());
        // Pruned, not just hidden.
        assert!(pending.take(&state, Instant::now()).is_none());
        assert_eq!(pending.cancel("never-issued"), None);
    }

    #[tokio::test]
    async fn finish_refuses_unknown_and_expired_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config();
        c.state_dir = dir.path().to_path_buf();
        let tokens = TokenManager::new(
            dir.path(),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .expect("token manager");
        let settings = Settings::new(c.clone());
        let err = tokens
            .authorizations
            .finish(&tokens, &settings, "forged", "code")
            .await
            .expect_err("unknown state");
        assert!(matches!(err, AuthorizeError::UnknownState), "{err}");

        let short = Pending::with_limits(Duration::from_millis(1), 8);
        let url = short
            .start(
                c.tenant("fabrikam").expect("tenant"),
                "http://localhost:1/oauth/callback",
            )
            .expect("start");
        std::thread::sleep(Duration::from_millis(5));
        let err = short
            .finish(&tokens, &settings, &query(&url)["state"], "code")
            .await
            .expect_err("expired state");
        assert!(matches!(err, AuthorizeError::UnknownState), "{err}");
    }

    #[tokio::test]
    async fn finish_exchanges_the_code_with_the_verifier_and_stores_the_token() {
        let fake = test_entra::FakeEntra::start(1, 60).await;
        fake.respond(
            200,
            r#"{"access_token":"at-1","refresh_token":"rt-1","expires_in":3600}"#,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = TokenManager::new(
            dir.path(),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .expect("token manager");
        let config = fake.config();
        let settings = Settings::new(config.clone());
        let tenant = config.tenant("fake").expect("tenant");
        let redirect = "http://localhost:9925/oauth/callback";
        let url = tokens
            .authorizations
            .start(tenant, redirect)
            .expect("start");
        let q = query(&url);
        assert!(url.starts_with(&format!("{}/fake-tenant/oauth2/v2.0/authorize?", fake.base)));

        let name = tokens
            .authorizations
            .finish(&tokens, &settings, &q["state"], "the-code")
            .await
            .expect("finish");
        assert_eq!(name, "fake");
        let forms = fake.token_requests();
        assert_eq!(forms.len(), 1);
        let form = &forms[0];
        assert_eq!(form["grant_type"], "authorization_code");
        assert_eq!(form["code"], "the-code");
        assert_eq!(form["redirect_uri"], redirect);
        assert_eq!(form["client_id"], "fake-client");
        assert_eq!(challenge(&form["code_verifier"]), q["code_challenge"]);
        assert!(!form.contains_key("client_secret"));
        assert_eq!(tokens.token(tenant).await.expect("token").expose(), "at-1");
        assert!(tokens.status(tenant).has_refresh_token);

        // The state is spent; a second callback (a reload of the page) is refused.
        let again = tokens
            .authorizations
            .finish(&tokens, &settings, &q["state"], "the-code")
            .await
            .expect_err("spent");
        assert!(matches!(again, AuthorizeError::UnknownState));
    }

    #[tokio::test]
    async fn finish_reports_what_entra_refused() {
        let fake = test_entra::FakeEntra::start(1, 60).await;
        fake.respond(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS54005: OAuth2 Authorization code was already redeemed."}"#,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = TokenManager::new(
            dir.path(),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .expect("token manager");
        let config = fake.config();
        let settings = Settings::new(config.clone());
        let url = tokens
            .authorizations
            .start(
                config.tenant("fake").expect("tenant"),
                "http://localhost:1/oauth/callback",
            )
            .expect("start");
        let err = tokens
            .authorizations
            .finish(&tokens, &settings, &query(&url)["state"], "old-code")
            .await
            .expect_err("refused");
        assert_eq!(err.tenant(), Some("fake"));
        assert!(err.to_string().contains("AADSTS54005"), "{err}");
        assert!(
            !tokens
                .status(config.tenant("fake").expect("tenant"))
                .usable()
        );
    }

    #[test]
    fn pending_map_is_bounded_and_forgets_the_oldest() {
        let c = config();
        let t = c.tenant("fabrikam").expect("tenant");
        let pending = Pending::with_limits(PENDING_TTL, 4);
        let first =
            query(&pending.start(t, "http://localhost:1/cb").expect("start"))["state"].clone();
        for _ in 0..20 {
            pending.start(t, "http://localhost:1/cb").expect("start");
        }
        assert_eq!(pending.len(), 4);
        assert!(pending.cancel(&first).is_none());
        assert_eq!(Pending::new().max, MAX_PENDING);
    }

    #[test]
    fn redirect_uri_uses_localhost_for_loopback_listeners() {
        let mut c = config();
        assert_eq!(
            redirect_uri(&c).as_deref(),
            Some("http://localhost:9925/oauth/callback")
        );
        c.admin.listen = Some("[::1]:8080".parse().expect("addr"));
        assert_eq!(
            redirect_uri(&c).as_deref(),
            Some("http://localhost:8080/oauth/callback")
        );
        c.admin.listen = Some("0.0.0.0:9925".parse().expect("addr"));
        assert_eq!(
            redirect_uri(&c).as_deref(),
            Some("http://localhost:9925/oauth/callback")
        );
        c.admin.listen = Some("192.0.2.7:9925".parse().expect("addr"));
        assert_eq!(
            redirect_uri(&c).as_deref(),
            Some("http://192.0.2.7:9925/oauth/callback")
        );
        c.admin.public_url = Some("https://relay.example.com/authrelay/".into());
        assert_eq!(
            redirect_uri(&c).as_deref(),
            Some("https://relay.example.com/authrelay/oauth/callback")
        );
        c.admin.public_url = Some("https://relay.example.com/oauth/callback".into());
        assert_eq!(
            redirect_uri(&c).as_deref(),
            Some("https://relay.example.com/oauth/callback")
        );
        assert_eq!(
            admin_base_url(&c).as_deref(),
            Some("https://relay.example.com")
        );
        c.admin.public_url = None;
        c.admin.listen = None;
        assert_eq!(redirect_uri(&c), None);
    }
}

/// A scripted stand-in for Entra ID's `/token` and `/devicecode` endpoints, for unit tests of
/// the flows here and in `device` and `admin::oauth`. (The full fake Microsoft for the
/// integration tests lives in `tests/support/`.)
#[cfg(test)]
pub(crate) mod test_entra {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::routing::post;
    use axum::{Form, Router};

    use crate::config::{AuthFlow, Config, Tenant};

    #[derive(Default)]
    struct Inner {
        script: VecDeque<(u16, String)>,
        token_forms: Vec<HashMap<String, String>>,
        devicecode: String,
    }

    type Shared = Arc<Mutex<Inner>>;

    pub(crate) struct FakeEntra {
        pub base: String,
        inner: Shared,
    }

    impl FakeEntra {
        /// Serves on a free loopback port; `/devicecode` answers with this poll interval and
        /// lifetime.
        pub async fn start(interval: u64, expires_in: u64) -> FakeEntra {
            let inner = Shared::default();
            inner.lock().expect("lock").devicecode = serde_json::json!({
                "device_code": "fake-device-code",
                "user_code": "FAKE-CODE",
                "verification_uri": "https://microsoft.com/devicelogin",
                "expires_in": expires_in,
                "interval": interval,
                "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code FAKE-CODE to authenticate.",
            })
            .to_string();
            let app = Router::new()
                .route("/{tid}/oauth2/v2.0/token", post(token))
                .route("/{tid}/oauth2/v2.0/devicecode", post(devicecode))
                .with_state(inner.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            FakeEntra { base, inner }
        }

        /// Queues the next `/token` answer; with none queued it answers `invalid_grant`.
        pub fn respond(&self, status: u16, body: &str) {
            let mut inner = self.inner.lock().expect("lock");
            inner.script.push_back((status, body.to_string()));
        }

        /// The forms posted to `/token` so far.
        pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
            self.inner.lock().expect("lock").token_forms.clone()
        }

        /// Tenant `fake` (authorization_code, routed by sender) and the default tenant `app`
        /// (client_credentials), both pointing at this fake.
        pub fn config(&self) -> Config {
            Config::from_toml(&format!(
                r#"
state_dir = "/nonexistent"
[[tenant]]
name = "fake"
tenant_id = "fake-tenant"
client_id = "fake-client"
auth = "authorization_code"
mailbox = "relay@fake.example"
senders = ["*@fake.example"]
authority = "{base}"

[[tenant]]
name = "app"
tenant_id = "fake-tenant"
client_id = "app-client"
client_secret = "app-secret"
mailbox = "app@fake.example"
authority = "{base}"
"#,
                base = self.base
            ))
            .expect("valid config")
        }

        /// Tenant `fake` with the given delegated flow.
        pub fn tenant(&self, auth: &str) -> Tenant {
            let mut t = self.config().tenant("fake").expect("tenant").clone();
            t.auth = match auth {
                "device_code" => AuthFlow::DeviceCode,
                _ => AuthFlow::AuthorizationCode,
            };
            t
        }
    }

    async fn token(
        State(inner): State<Shared>,
        Form(form): Form<HashMap<String, String>>,
    ) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
        let mut inner = inner.lock().expect("lock");
        inner.token_forms.push(form);
        let (status, body) = inner.script.pop_front().unwrap_or_else(|| {
            (
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS70000: nothing scripted"}"#
                    .into(),
            )
        });
        (
            StatusCode::from_u16(status).expect("status"),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
    }

    async fn devicecode(
        State(inner): State<Shared>,
    ) -> ([(header::HeaderName, &'static str); 1], String) {
        let body = inner.lock().expect("lock").devicecode.clone();
        ([(header::CONTENT_TYPE, "application/json")], body)
    }
}
