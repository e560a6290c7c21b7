//! The admin listener's OAuth routes for delegated tenants:
//!
//! - `GET /oauth/{tenant}/authorize`: 302 to Microsoft's sign-in page (authorization code with
//!   PKCE; see [`crate::oauth::authorize`]).
//! - `GET /oauth/callback`: where Microsoft sends the browser back, with `code` and `state`, or
//!   with `error` and `error_description` when sign-in was refused. Answers with a small HTML
//!   page saying what happened.
//!
//! Neither the code nor the state is logged; the pages carry `Referrer-Policy: no-referrer` so
//! the code in the callback URL does not travel further.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::oauth::GrantError;
use crate::oauth::authorize::{self, AuthorizeError};
use crate::server::Daemon;

/// The routes, for the admin server to `.merge()`.
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/oauth/{tenant}/authorize", get(start))
        .route(authorize::CALLBACK_PATH, get(callback))
}

async fn start(State(daemon): State<Arc<Daemon>>, Path(name): Path<String>) -> Response {
    let settings = daemon.settings.borrow().clone();
    let Some(tenant) = settings.config.tenant(&name) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no tenant named '{name}' in the configuration\n"),
        );
    };
    if !tenant.auth.is_delegated() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!(
                "tenant '{name}' uses client_credentials: there is nothing to authorize (the app's own credentials get its tokens)\n"
            ),
        );
    }
    let Some(redirect) = authorize::redirect_uri(&settings.config) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no redirect URI: set admin.listen or admin.public_url\n".into(),
        );
    };
    match daemon.tokens.authorizations.start(tenant, &redirect) {
        Ok(url) => {
            tracing::info!(tenant = %name, redirect_uri = %redirect, "sign-in started; sending the browser to Microsoft");
            (
                StatusCode::FOUND,
                [
                    (header::LOCATION, url),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ],
            )
                .into_response()
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// What Microsoft puts in the callback's query string (`response_mode=query`).
#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(daemon): State<Arc<Daemon>>,
    query: Result<Query<Callback>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return failure(
            StatusCode::BAD_REQUEST,
            None,
            "The sign-in response could not be read.",
            None,
        );
    };
    if let Some(error) = q.error.as_deref() {
        // Sign-in refused or cancelled; the state is spent either way.
        let tenant = q
            .state
            .as_deref()
            .and_then(|s| daemon.tokens.authorizations.cancel(s));
        let detail = match q.error_description.as_deref() {
            Some(d) if !d.trim().is_empty() => format!("{error}: {}", d.trim()),
            _ => error.to_string(),
        };
        tracing::warn!(
            tenant = tenant.as_deref().unwrap_or("?"),
            error,
            "sign-in refused by Microsoft"
        );
        return failure(
            StatusCode::BAD_REQUEST,
            tenant.as_deref(),
            "Microsoft did not grant access.",
            Some(&detail),
        );
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return failure(
            StatusCode::BAD_REQUEST,
            None,
            "The sign-in response has no code or state. Start again from the status page.",
            None,
        );
    };
    let settings = daemon.settings.borrow().clone();
    match daemon
        .tokens
        .authorizations
        .finish(&daemon.tokens, &settings, state, code)
        .await
    {
        Ok(name) => {
            let mailbox = settings
                .config
                .tenant(&name)
                .map(|t| t.mailbox.as_str())
                .unwrap_or("?");
            success(&name, mailbox)
        }
        Err(e) => {
            let status = match &e {
                AuthorizeError::Grant {
                    source: GrantError::Unreachable(_),
                    ..
                } => StatusCode::BAD_GATEWAY,
                AuthorizeError::Store { .. } | AuthorizeError::BadUrl { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            if !matches!(e, AuthorizeError::UnknownState) {
                tracing::warn!(tenant = e.tenant().unwrap_or("?"), error = %e, "sign-in failed");
            }
            failure(
                status,
                e.tenant(),
                "Authentication failed.",
                Some(&e.to_string()),
            )
        }
    }
}

fn success(tenant: &str, mailbox: &str) -> Response {
    let body = format!(
        "<h1 class=\"ok\">Authentication successful</h1>\n\
         <p>Tenant <strong>{t}</strong> now holds a token for <strong>{m}</strong>. \
         authrelay keeps it fresh from here on; you can close this page.</p>\n\
         <p><a href=\"../\">Back to the status page</a></p>\n",
        t = escape(tenant),
        m = escape(mailbox),
    );
    page(StatusCode::OK, "Authentication successful", &body)
}

fn failure(status: StatusCode, tenant: Option<&str>, what: &str, detail: Option<&str>) -> Response {
    let mut body = String::from("<h1 class=\"err\">Authentication failed</h1>\n");
    match tenant {
        Some(t) => body.push_str(&format!(
            "<p>Tenant <strong>{}</strong>: {}</p>\n",
            escape(t),
            escape(what)
        )),
        None => body.push_str(&format!("<p>{}</p>\n", escape(what))),
    }
    if let Some(d) = detail {
        body.push_str(&format!("<pre>{}</pre>\n", escape(d)));
    }
    body.push_str("<p>");
    if let Some(t) = tenant {
        // Relative to /oauth/callback, so it also works behind a path-prefixed public_url.
        body.push_str(&format!(
            "<a href=\"{}/authorize\">Try again</a> &middot; ",
            escape(t)
        ));
    }
    body.push_str("<a href=\"../\">Back to the status page</a></p>\n");
    page(status, "Authentication failed", &body)
}

/// A complete, self-contained page: no scripts, no external resources.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>authrelay: {title}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }}\n\
         h1 {{ font-size: 1.4rem; }}\n.ok {{ color: #1a7f37; }}\n.err {{ color: #b42318; }}\n\
         pre {{ white-space: pre-wrap; word-break: break-word; background: #f4f4f4; padding: .75rem; border-radius: 4px; }}\n\
         </style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        title = escape(title),
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response()
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

use super::page::escape;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::oauth::TokenManager;
    use crate::oauth::authorize::test_entra::FakeEntra;
    use crate::outbound::Outbound;
    use crate::queue::Spool;
    use crate::queue::scheduler::Scheduler;
    use crate::server::Settings;

    struct Admin {
        base: String,
        http: reqwest::Client,
        daemon: Arc<Daemon>,
        _dir: tempfile::TempDir,
    }

    async fn admin(fake: &FakeEntra) -> Admin {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = fake.config();
        config.state_dir = dir.path().to_path_buf();
        let metrics = Arc::new(Metrics::new());
        let tokens = Arc::new(TokenManager::new(dir.path(), metrics.clone()).expect("tokens"));
        let (_tx, settings) = tokio::sync::watch::channel(Settings::new(config));
        let daemon = Arc::new(Daemon {
            settings,
            spool: Spool::open(dir.path(), 0).expect("spool"),
            scheduler: Arc::new(Scheduler::new(metrics.clone())),
            outbound: Arc::new(Outbound::new(tokens.clone(), "relay.test".into())),
            tokens,
            metrics,
        });
        let app = routes().with_state(daemon.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Admin {
            base,
            http,
            daemon,
            _dir: dir,
        }
    }

    impl Admin {
        async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
            let resp = self
                .http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request");
            let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
            let headers = resp.headers().clone();
            (status, headers, resp.text().await.expect("body"))
        }

        /// Starts a sign-in and returns the `state` Microsoft would echo back.
        async fn start(&self, tenant: &str) -> String {
            let (status, headers, _) = self.get(&format!("/oauth/{tenant}/authorize")).await;
            assert_eq!(status, StatusCode::FOUND);
            let location = headers[header::LOCATION].to_str().expect("ascii");
            reqwest::Url::parse(location)
                .expect("url")
                .query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .expect("state")
        }
    }

    #[tokio::test]
    async fn authorize_redirects_to_microsoft_for_delegated_tenants_only() {
        let fake = FakeEntra::start(1, 60).await;
        let a = admin(&fake).await;
        let (status, headers, _) = a.get("/oauth/fake/authorize").await;
        assert_eq!(status, StatusCode::FOUND);
        let location = headers[header::LOCATION].to_str().expect("ascii");
        assert!(
            location.starts_with(&format!(
                "{}/fake-tenant/oauth2/v2.0/authorize?client_id=fake-client&",
                fake.base
            )),
            "{location}"
        );
        assert!(
            location.contains("code_challenge_method=S256"),
            "{location}"
        );
        assert!(
            location.contains("redirect_uri=http%3A%2F%2Flocalhost%3A9925%2Foauth%2Fcallback"),
            "{location}"
        );
        assert_eq!(a.daemon.tokens.authorizations.len(), 1);

        let (status, _, body) = a.get("/oauth/nobody/authorize").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no tenant named 'nobody'"), "{body}");

        let (status, _, body) = a.get("/oauth/app/authorize").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("client_credentials"), "{body}");
    }

    #[tokio::test]
    async fn callback_exchanges_the_code_and_says_so() {
        let fake = FakeEntra::start(1, 60).await;
        fake.respond(
            200,
            r#"{"access_token":"at-web","refresh_token":"rt-web","expires_in":3600}"#,
        );
        let a = admin(&fake).await;
        let state = a.start("fake").await;
        let (status, headers, body) = a
            .get(&format!("/oauth/callback?code=c0de&state={state}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("Authentication successful"), "{body}");
        assert!(body.contains("<strong>fake</strong>"), "{body}");
        assert!(body.contains("relay@fake.example"), "{body}");
        assert!(body.contains("href=\"../\""), "{body}");
        assert!(!body.contains("<script"), "{body}");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(fake.token_requests()[0]["code"], "c0de");
        let settings = a.daemon.settings.borrow().clone();
        let tenant = settings.config.tenant("fake").expect("tenant");
        assert!(a.daemon.tokens.status(tenant).usable());

        // Reloading the page: the state is spent.
        let (status, _, body) = a
            .get(&format!("/oauth/callback?code=c0de&state={state}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("already used or has expired"), "{body}");
    }

    #[tokio::test]
    async fn callback_shows_microsofts_refusal_escaped() {
        let fake = FakeEntra::start(1, 60).await;
        let a = admin(&fake).await;
        let state = a.start("fake").await;
        let (status, _, body) = a
            .get(&format!(
                "/oauth/callback?error=access_denied&error_description=AADSTS65004%3A+User+declined+%3Cscript%3Ealert(1)%3C%2Fscript%3E&state={state}"
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("Authentication failed"), "{body}");
        assert!(body.contains("<strong>fake</strong>"), "{body}");
        assert!(
            body.contains(
                "access_denied: AADSTS65004: User declined &lt;script&gt;alert(1)&lt;/script&gt;"
            ),
            "{body}"
        );
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains("href=\"fake/authorize\""), "{body}");
        assert!(a.daemon.tokens.authorizations.is_empty());
        assert!(fake.token_requests().is_empty());
    }

    #[tokio::test]
    async fn callback_refuses_forged_or_incomplete_responses() {
        let fake = FakeEntra::start(1, 60).await;
        let a = admin(&fake).await;
        let (status, _, body) = a.get("/oauth/callback?code=x&state=forged").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("already used or has expired"), "{body}");
        let (status, _, body) = a.get("/oauth/callback").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("no code or state"), "{body}");
        assert!(fake.token_requests().is_empty());

        // Entra refuses the code: the reason is shown.
        fake.respond(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS70008: The provided authorization code or refresh token has expired."}"#,
        );
        let state = a.start("fake").await;
        let (status, _, body) = a
            .get(&format!("/oauth/callback?code=stale&state={state}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("AADSTS70008"), "{body}");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
