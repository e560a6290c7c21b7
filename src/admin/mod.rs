//! The admin HTTP listener (loopback by default, `[admin] listen`):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /metrics` | Prometheus metrics: OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format 0.0.4 (curl, `promtool check metrics`) |
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200 `{"ready":true}` when the spool is writable and every tenant holds a usable token, else 503 with the reasons |
//! | `GET /status` | JSON: version, uptime, queue, one entry per tenant |
//! | `GET /` | the HTML status page with an Authorize button per delegated tenant |
//! | `POST /queue/{id}/retry`, `POST /queue/retry`, `POST /queue/{id}/delete` | sent by `authrelay queue` after it changed the spool, so the scheduler follows |
//! | `/oauth/...` | the sign-in flow ([`oauth`]) |
//!
//! Everything except the three monitoring endpoints answers only to a `Host` that is an IP
//! address, `localhost`, the configured `hostname` or the host of `admin.public_url`: a web
//! page cannot reach the listener through DNS rebinding. The queue endpoints refuse requests
//! that carry an `Origin` header, so a web page cannot post to them either.

pub mod oauth;
pub mod page;
pub mod status;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::{FailureLabels, Metrics, RefreshLabels};
use crate::queue::spool::valid_id;
use crate::queue::{SpoolError, State as MessageState};
use crate::server::Daemon;
use crate::shutdown::Shutdown;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// When the daemon started (the first call fixes it; `serve` calls it at start-up).
pub fn started_at() -> SystemTime {
    *STARTED.get_or_init(SystemTime::now)
}

/// Serves the admin routes on `listener` until shutdown.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>, mut shutdown: Shutdown) {
    started_at();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener: /metrics /healthz /readyz /status /");
    }
    let app = router(daemon);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener stopped");
    }
}

/// All admin routes, for [`serve`] and tests.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/queue/retry", post(queue_retry_all))
        .route("/queue/{id}/retry", post(queue_retry))
        .route("/queue/{id}/delete", post(queue_delete))
        .merge(oauth::routes())
        .layer(middleware::from_fn_with_state(daemon.clone(), guard))
        .with_state(daemon)
}

/// The DNS-rebinding and cross-site guard described in the module docs.
async fn guard(State(daemon): State<Arc<Daemon>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let allowed = {
        let settings = daemon.settings.borrow();
        host_allowed(
            host,
            &settings.config.hostname,
            settings.config.admin.public_url.as_deref(),
        )
    };
    if !allowed {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "unknown Host: use an IP address, localhost, the configured hostname or admin.public_url\n",
        )
            .into_response();
    }
    if req.method() == Method::POST
        && path.starts_with("/queue/")
        && req.headers().contains_key(header::ORIGIN)
    {
        return (
            StatusCode::FORBIDDEN,
            "queue changes come from `authrelay queue`, not from web pages\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// Whether a `Host` header names this daemon (see the module docs). No header (HTTP/1.0
/// tools) is allowed: browsers always send one.
pub fn host_allowed(host: Option<&str>, hostname: &str, public_url: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || name.eq_ignore_ascii_case(hostname)
    {
        return true;
    }
    public_url
        .and_then(|u| u.split_once("://").map(|(_, rest)| rest))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .map(|authority| {
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            if authority.starts_with('[') {
                authority
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim_start_matches('[')
                    .to_ascii_lowercase()
            } else {
                authority
                    .rsplit_once(':')
                    .map_or(authority, |(n, _)| n)
                    .to_ascii_lowercase()
            }
        })
        .is_some_and(|public| public == name)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn healthz() -> Response {
    no_store((StatusCode::OK, "ok\n").into_response())
}

async fn readyz(State(daemon): State<Arc<Daemon>>) -> Response {
    let d = daemon.clone();
    let reasons = tokio::task::spawn_blocking(move || status::unready_reasons(&d))
        .await
        .unwrap_or_else(|e| vec![format!("readiness check failed: {e}")]);
    let r = if reasons.is_empty() {
        (StatusCode::OK, axum::Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    };
    no_store(r)
}

async fn status_json(State(daemon): State<Arc<Daemon>>) -> Response {
    no_store(axum::Json(status::report(&daemon, started_at())).into_response())
}

async fn index(State(daemon): State<Arc<Daemon>>) -> Response {
    let html = page::render(&status::report(&daemon, started_at()));
    let mut r = no_store(html_response(html));
    let h = r.headers_mut();
    // No scripts at all; styles inline only; never framed (the Authorize button).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn html_response(html: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html,
    )
        .into_response()
}

async fn metrics(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    daemon.scheduler.update_gauges();
    touch_series(&daemon);
    let text = daemon.metrics.encode();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (content_type, body) = if wants_openmetrics(accept) {
        (OPENMETRICS, text)
    } else {
        (TEXT_FORMAT, openmetrics_to_text(&text))
    };
    no_store(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Creates each configured tenant's counters at zero, so they exist from the first scrape:
/// `rate()` and `increase()` (and the alert rules built on them) then see the first event
/// instead of a series that starts at 1. Gauges holding timestamps are left alone: a zero
/// there would read as "expired in 1970".
fn touch_series(daemon: &Daemon) {
    let settings = daemon.settings.borrow().clone();
    let m = &daemon.metrics;
    for t in &settings.config.tenants {
        let label = Metrics::tenant(&t.name);
        let _ = m.messages_received.get_or_create(&label);
        let _ = m.messages_delivered.get_or_create(&label);
        let _ = m.messages_bounced.get_or_create(&label);
        for kind in ["transient", "permanent", "auth"] {
            let _ = m.delivery_failures.get_or_create(&FailureLabels {
                tenant: t.name.clone(),
                kind: kind.into(),
            });
        }
        for result in ["ok", "error"] {
            let _ = m.token_refresh.get_or_create(&RefreshLabels {
                tenant: t.name.clone(),
                result: result.into(),
            });
        }
    }
}

/// Whether the `Accept` header asks for OpenMetrics (with a non-zero quality).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        media.eq_ignore_ascii_case("application/openmetrics-text")
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// Turns prometheus-client's OpenMetrics text into the classic text format 0.0.4, which is
/// what `promtool check metrics` (and older scrapers) parse. The two differ where it matters
/// here: OpenMetrics names a counter family without `_total` in `# HELP`/`# TYPE` while its
/// samples carry it (the classic parser then sees an untyped `_total` family with no help),
/// and it ends with `# EOF` and may carry `# UNIT`.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let tail = if *prefix == "# HELP " {
                // The classic format escapes only backslash and newline in help text.
                tail.replace("\\\"", "\"")
            } else if tail == "unknown" {
                "untyped".to_string()
            } else {
                tail.to_string()
            };
            Some(format!("{prefix}{name} {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn json_error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({"error": msg.into()}))).into_response()
}

/// `POST /queue/{id}/retry`: re-reads the envelope `authrelay queue retry` just rewrote and
/// schedules it now.
async fn queue_retry(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return json_error(StatusCode::BAD_REQUEST, "not a queue id");
    }
    match daemon.spool.load(&id).await {
        Ok(env) if env.state == MessageState::Queued => {
            daemon.scheduler.insert(&env);
            tracing::info!(queue_id = %id, "retry requested by the operator");
            axum::Json(json!({
                "id": id,
                "scheduled": true,
                "in_flight": daemon.scheduler.is_in_flight(&id),
            }))
            .into_response()
        }
        Ok(_) => json_error(
            StatusCode::CONFLICT,
            "the message has failed permanently; `authrelay queue retry ID` puts it back in the queue",
        ),
        Err(SpoolError::NotFound(_)) => json_error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /queue/retry`: picks up every queued envelope (retried failures included) and makes
/// everything due now, lifting pauses.
async fn queue_retry_all(State(daemon): State<Arc<Daemon>>) -> Response {
    let spool = daemon.spool.clone();
    let scanned = tokio::task::spawn_blocking(move || spool.scan()).await;
    let envelopes = match scanned {
        Ok(Ok((envelopes, _))) => envelopes,
        Ok(Err(e)) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut scheduled = 0usize;
    for env in envelopes.iter().filter(|e| e.state == MessageState::Queued) {
        daemon.scheduler.insert(env);
        scheduled += 1;
    }
    daemon.scheduler.retry_all();
    tracing::info!(
        scheduled,
        "retry of the whole queue requested by the operator"
    );
    axum::Json(json!({"scheduled": scheduled})).into_response()
}

/// `POST /queue/{id}/delete`: forgets a message `authrelay queue delete` removed from disk.
/// A message still in the spool is not forgotten: the disk stays the truth.
async fn queue_delete(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return json_error(StatusCode::BAD_REQUEST, "not a queue id");
    }
    match daemon.spool.load(&id).await {
        Err(SpoolError::NotFound(_)) => {
            daemon.scheduler.finish(&id);
            tracing::info!(queue_id = %id, "message deleted by the operator");
            axum::Json(json!({"id": id, "forgotten": true})).into_response()
        }
        Ok(_) => json_error(
            StatusCode::CONFLICT,
            "the message is still in the spool; delete it with `authrelay queue delete ID`",
        ),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A daemon over a temporary state directory, for this module's and the watcher's tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::config::{Config, Secret};
    use crate::metrics::Metrics;
    use crate::oauth::{Granted, TokenManager};
    use crate::outbound::Outbound;
    use crate::queue::Spool;
    use crate::queue::scheduler::Scheduler;
    use crate::server::{Daemon, Settings};

    /// Two tenants: `contoso` (client credentials, secret expiring 2027-06-30, alerts to
    /// it@contoso.com) and `fabrikam` (delegated, never signed in).
    pub const CONFIG: &str = r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
client_secret_expires = "2027-06-30"
mailbox = "relay@contoso.com"
alert_to = "it@contoso.com"

[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
client_id = "def"
auth = "authorization_code"
mailbox = "relay@fabrikam.com"
senders = ["*@fabrikam.com"]
"#;

    pub struct TestDaemon {
        pub dir: tempfile::TempDir,
        pub daemon: Arc<Daemon>,
        pub settings: tokio::sync::watch::Sender<Arc<Settings>>,
    }

    pub fn config(dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            "state_dir = {:?}\nhostname = \"relay01\"\n{CONFIG}{extra}",
            dir.display().to_string()
        );
        Config::from_toml(&text).expect("test config")
    }

    pub fn daemon(extra: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), extra);
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(&config.state_dir, 0).expect("spool");
        let tokens =
            Arc::new(TokenManager::new(&config.state_dir, metrics.clone()).expect("tokens"));
        let outbound = Arc::new(Outbound::new(tokens.clone(), config.hostname.clone()));
        let scheduler = Arc::new(Scheduler::new(metrics.clone()));
        let (settings, rx) = tokio::sync::watch::channel(Settings::new(config));
        let daemon = Arc::new(Daemon {
            settings: rx,
            spool,
            scheduler,
            outbound,
            tokens,
            metrics,
        });
        TestDaemon {
            dir,
            daemon,
            settings,
        }
    }

    /// Hands `tenant` a token valid for an hour, as a finished sign-in would.
    pub fn give_token(d: &Daemon, tenant: &str) {
        let settings = d.settings.borrow().clone();
        let t = settings.config.tenant(tenant).expect("tenant");
        d.tokens
            .accept_grant(
                t,
                Granted {
                    access_token: Secret("access".into()),
                    expires_at: SystemTime::now() + Duration::from_secs(3600),
                    lifetime: Duration::from_secs(3600),
                    refresh_token: t.auth.is_delegated().then(|| Secret("refresh".into())),
                },
            )
            .expect("accept grant");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Envelope;
    use testing::{daemon, give_token};

    /// Serves the router on a loopback port; returns its base URL.
    async fn start(d: &Arc<Daemon>) -> (String, crate::shutdown::Trigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (trigger, shutdown) = crate::shutdown::channel();
        tokio::spawn(serve(listener, d.clone(), shutdown));
        (base, trigger)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    /// The contract's metric names (design.md), as the classic text format names them.
    const CONTRACT: [&str; 11] = [
        "authrelay_messages_received_total",
        "authrelay_messages_delivered_total",
        "authrelay_delivery_failures_total",
        "authrelay_messages_bounced_total",
        "authrelay_queue_messages",
        "authrelay_queue_oldest_age_seconds",
        "authrelay_token_expiry_timestamp_seconds",
        "authrelay_token_refresh_total",
        "authrelay_client_secret_expiry_timestamp_seconds",
        "authrelay_smtp_sessions_active",
        "authrelay_build_info",
    ];

    #[tokio::test]
    async fn metrics_carry_every_contract_name_in_both_formats() {
        let t = daemon("");
        give_token(&t.daemon, "contoso");
        // The watcher's first check (at start-up) sets the secret expiry gauge.
        crate::watch::Watcher::open(t.dir.path())
            .check(&t.daemon, std::time::SystemTime::now())
            .await;
        let (base, _stop) = start(&t.daemon).await;
        let r = client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], TEXT_FORMAT);
        let text = r.text().await.expect("body");
        for name in CONTRACT {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} missing:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"));
        // Per-tenant counters exist from the first scrape, at zero.
        assert!(
            text.contains("authrelay_token_refresh_total{tenant=\"fabrikam\",result=\"error\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("authrelay_delivery_failures_total{tenant=\"contoso\",kind=\"auth\"} 0"),
            "{text}"
        );
        assert!(text.contains("authrelay_build_info{version=\""), "{text}");
        assert!(
            text.contains("authrelay_token_expiry_timestamp_seconds{tenant=\"contoso\"} "),
            "{text}"
        );

        // Prometheus asks for OpenMetrics and gets it unchanged.
        let r = client()
            .get(format!("{base}/metrics"))
            .header(
                header::ACCEPT,
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            )
            .send()
            .await
            .expect("get");
        assert_eq!(r.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let om = r.text().await.expect("body");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE authrelay_messages_received counter\n"));
        assert!(om.contains("authrelay_messages_received_total{tenant=\"contoso\"} 0"));
    }

    #[test]
    fn openmetrics_becomes_classic_text() {
        let om = "# HELP a_things Things seen.\n# TYPE a_things counter\na_things_total{x=\"1\"} 3\n# HELP a_level Level.\n# TYPE a_level gauge\n# UNIT a_level seconds\na_level 2\n# TYPE a_odd unknown\na_odd 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_things_total Things seen.\n# TYPE a_things_total counter\na_things_total{x=\"1\"} 3\n# HELP a_level Level.\n# TYPE a_level gauge\na_level 2\n# TYPE a_odd untyped\na_odd 1\n"
        );
        assert!(wants_openmetrics(
            "application/openmetrics-text; version=1.0.0"
        ));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0, text/plain"
        ));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(""));
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let t = daemon("");
        give_token(&t.daemon, "contoso");
        let (base, _stop) = start(&t.daemon).await;
        let c = client();
        let r = c.get(format!("{base}/healthz")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body").trim(), "ok");

        // fabrikam is delegated and nobody signed in yet.
        let r = c.get(format!("{base}/readyz")).send().await.expect("get");
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["ready"], false);
        let reasons = v["reasons"].as_array().expect("reasons");
        assert_eq!(reasons.len(), 1, "{v}");
        let reason = reasons[0].as_str().expect("str");
        assert!(
            reason.starts_with("tenant fabrikam: no usable token (needs_sign_in: "),
            "{reason}"
        );
        assert!(reason.contains("authrelay authorize fabrikam"), "{reason}");

        give_token(&t.daemon, "fabrikam");
        let r = c.get(format!("{base}/readyz")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v, json!({"ready": true}));
        // The probe leaves nothing behind.
        let leftovers: Vec<_> = std::fs::read_dir(t.daemon.spool.root())
            .expect("root")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".readyz"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn readiness_fails_when_the_spool_is_not_writable() {
        let t = daemon("");
        give_token(&t.daemon, "contoso");
        give_token(&t.daemon, "fabrikam");
        assert!(status::unready_reasons(&t.daemon).is_empty());
        // A spool on a full disk (min_free_space beyond any disk) is not ready.
        let full = crate::queue::Spool::open(t.dir.path(), u64::MAX).expect("spool");
        let d = Daemon {
            settings: t.daemon.settings.clone(),
            spool: full,
            scheduler: t.daemon.scheduler.clone(),
            outbound: t.daemon.outbound.clone(),
            tokens: t.daemon.tokens.clone(),
            metrics: t.daemon.metrics.clone(),
        };
        let reasons = status::unready_reasons(&d);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("spool: "), "{reasons:?}");
        // And a directory that cannot take a file fails the probe.
        assert!(status::probe_writable(&t.dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn status_json_has_the_documented_shape() {
        let t = daemon("");
        give_token(&t.daemon, "contoso");
        let mut env = Envelope::new(
            "contoso",
            "app@contoso.com",
            &["x@example.com".into()],
            "127.0.0.1",
        );
        env.received_at -= 90;
        let env = t
            .daemon
            .spool
            .store(b"Subject: hi\r\n\r\nhello\r\n", env)
            .await
            .expect("store");
        t.daemon.scheduler.insert(&env);
        t.daemon.scheduler.pause(
            "contoso",
            std::time::Duration::from_secs(600),
            "throttled: 432 4.3.2",
        );
        let (base, _stop) = start(&t.daemon).await;
        let v: serde_json::Value = client()
            .get(format!("{base}/status"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert!(v["uptime_seconds"].is_u64());
        assert_eq!(v["queue"]["messages"], 1);
        assert!(v["queue"]["oldest_age_seconds"].as_u64().expect("age") >= 90);
        assert_eq!(v["queue"]["per_tenant"]["contoso"], 1);
        let tenants = v["tenants"].as_array().expect("tenants");
        assert_eq!(tenants.len(), 2);
        let c = &tenants[0];
        for key in [
            "name",
            "mailbox",
            "flow",
            "transport",
            "verified",
            "reason",
            "token_expires_at",
            "token_error",
            "client_secret_expires_at",
            "secret_days_left",
            "queue_depth",
            "last_delivery",
            "paused_until",
            "paused_reason",
            "alert",
        ] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
        assert_eq!(c["name"], "contoso");
        assert_eq!(c["mailbox"], "relay@contoso.com");
        assert_eq!(c["flow"], "client_credentials");
        assert_eq!(c["transport"], "smtp");
        assert_eq!(c["verified"], "Verified");
        assert_eq!(c["reason"], serde_json::Value::Null);
        assert!(
            c["token_expires_at"]
                .as_str()
                .expect("rfc3339")
                .ends_with('Z')
        );
        assert_eq!(c["client_secret_expires_at"], "2027-06-30T00:00:00Z");
        assert!(c["secret_days_left"].is_i64());
        assert_eq!(c["queue_depth"], 1);
        assert_eq!(c["paused_reason"], "throttled: 432 4.3.2");
        assert!(c["paused_until"].is_string());
        let f = &tenants[1];
        assert_eq!(f["verified"], "Not Verified");
        assert!(
            f["reason"]
                .as_str()
                .expect("reason")
                .starts_with("needs_sign_in"),
            "{f}"
        );
        assert_eq!(f["client_secret_expires_at"], serde_json::Value::Null);
        assert_eq!(f["queue_depth"], 0);
    }

    #[tokio::test]
    async fn page_renders_with_authorize_button_and_safe_headers() {
        let t = daemon("");
        let (base, _stop) = start(&t.daemon).await;
        let r = client().get(format!("{base}/")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .expect("csp")
                .contains("default-src 'none'")
        );
        let html = r.text().await.expect("body");
        assert!(html.contains("<form method=\"get\" action=\"/oauth/fabrikam/authorize\">"));
        assert!(!html.contains("/oauth/contoso/authorize"));
        assert!(html.contains("relay@contoso.com"));
    }

    #[tokio::test]
    async fn foreign_hosts_and_web_origins_are_refused() {
        let t = daemon("");
        let (base, _stop) = start(&t.daemon).await;
        let c = client();
        let r = c
            .get(format!("{base}/status"))
            .header(header::HOST, "attacker.example")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
        // Monitoring stays reachable under any name.
        let r = c
            .get(format!("{base}/metrics"))
            .header(header::HOST, "relay.corp.example:9925")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        for host in [
            "localhost:9925",
            "relay01:9925",
            "127.0.0.1:9925",
            "[::1]:9925",
        ] {
            let r = c
                .get(format!("{base}/status"))
                .header(header::HOST, host)
                .send()
                .await
                .expect("get");
            assert_eq!(r.status(), 200, "{host}");
        }
        let r = c
            .post(format!("{base}/queue/retry"))
            .header(header::ORIGIN, "https://attacker.example")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn host_names_allowed() {
        assert!(host_allowed(None, "relay01", None));
        assert!(host_allowed(Some("127.0.0.1:9925"), "relay01", None));
        assert!(host_allowed(Some("[::1]:9925"), "relay01", None));
        assert!(host_allowed(Some("LOCALHOST"), "relay01", None));
        assert!(host_allowed(Some("relay01:9925"), "relay01", None));
        assert!(!host_allowed(Some("relay01.corp.example"), "relay01", None));
        assert!(host_allowed(
            Some("relay01.corp.example"),
            "relay01",
            Some("https://relay01.corp.example:8443/oauth/callback")
        ));
        assert!(!host_allowed(
            Some("evil.example"),
            "relay01",
            Some("https://relay01.corp.example/")
        ));
        assert!(!host_allowed(Some("[::1"), "relay01", None));
    }

    #[tokio::test]
    async fn queue_endpoints_follow_the_spool() {
        let t = daemon("");
        let (base, _stop) = start(&t.daemon).await;
        let c = client();
        let mut env = Envelope::new(
            "contoso",
            "app@contoso.com",
            &["x@example.com".into()],
            "127.0.0.1",
        );
        env.next_attempt = crate::queue::spool::unix_now() + 3600;
        let env = t
            .daemon
            .spool
            .store(b"Subject: hi\r\n\r\nhello\r\n", env)
            .await
            .expect("store");
        assert!(!t.daemon.scheduler.contains(&env.id));

        // `queue retry ID` rewrote the envelope; the daemon picks it up.
        let r = c
            .post(format!("{base}/queue/{}/retry", env.id))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        assert!(t.daemon.scheduler.contains(&env.id));
        let r = c
            .post(format!("{base}/queue/NOSUCHID/retry"))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 404);
        let r = c
            .post(format!("{base}/queue/..%2Fx/retry"))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400);

        let r = c
            .post(format!("{base}/queue/retry"))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["scheduled"], 1);

        // Still on disk: not forgotten.
        let r = c
            .post(format!("{base}/queue/{}/delete", env.id))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 409);
        assert!(t.daemon.scheduler.contains(&env.id));
        // `queue delete ID` removed it; the daemon forgets it.
        t.daemon.spool.remove(&env.id).await.expect("remove");
        let r = c
            .post(format!("{base}/queue/{}/delete", env.id))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        assert!(!t.daemon.scheduler.contains(&env.id));
        assert_eq!(t.daemon.scheduler.stats().messages, 0);
    }
}
