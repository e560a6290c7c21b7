//! What the daemon knows about itself, gathered once per request for `/status`, the HTML
//! page, `/readyz` and the systemd status line, so that all four tell the same story.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Tenant, format_time};
use crate::oauth::TokenStatus;
use crate::outbound::UpstreamHealth;
use crate::queue::scheduler::QueueStats;
use crate::server::Daemon;
use crate::watch;

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub version: String,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub queue: QueueReport,
    pub tenants: Vec<TenantReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub messages: usize,
    pub oldest_age_seconds: u64,
    pub per_tenant: BTreeMap<String, usize>,
}

/// One tenant's row. Times are RFC 3339 strings; absent facts are `null`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    pub name: String,
    pub mailbox: String,
    /// `client_credentials`, `authorization_code` or `device_code`.
    pub flow: String,
    /// `smtp` or `graph`.
    pub transport: String,
    /// `Verified` or `Not Verified`.
    pub verified: String,
    /// Why the tenant is not verified; `null` when it is.
    pub reason: Option<String>,
    pub token_expires_at: Option<String>,
    pub token_error: Option<String>,
    pub token_error_kind: Option<String>,
    /// The earliest of `client_secret_expires` and the client certificate's notAfter.
    pub client_secret_expires_at: Option<String>,
    /// Whole days until that expiry; negative once it has passed.
    pub secret_days_left: Option<i64>,
    pub queue_depth: usize,
    pub last_delivery: Option<String>,
    pub paused_until: Option<String>,
    pub paused_reason: Option<String>,
    /// A condition an operator must fix (SMTP AUTH disabled, token refused upstream).
    pub alert: Option<String>,
    /// Delegated tenants get an Authorize button on the status page.
    pub delegated: bool,
}

pub const VERIFIED: &str = "Verified";
pub const NOT_VERIFIED: &str = "Not Verified";

impl TenantReport {
    pub fn is_verified(&self) -> bool {
        self.verified == VERIFIED
    }
}

/// Verified when the last upstream AUTH succeeded or, before any AUTH, when a usable token is
/// held. A token that has since become unusable with an error (secret expired, sign-in
/// needed) overrides an old success: the next delivery would fail before reaching AUTH.
pub fn verdict(
    tenant: &Tenant,
    token: &TokenStatus,
    health: &UpstreamHealth,
) -> Result<(), String> {
    let token_problem = || match (&token.error_kind, &token.error) {
        (Some(kind), Some(error)) => format!("{kind}: {error}"),
        (_, Some(error)) => error.clone(),
        _ if tenant.auth.is_delegated() && !token.has_refresh_token => format!(
            "needs_sign_in: not authorized yet: run `authrelay authorize {}` or use the Authorize button",
            tenant.name
        ),
        _ if token.expires_at.is_some() => "access token expired; renewal pending".to_string(),
        _ => "no token yet; the first token request is pending".to_string(),
    };
    if !token.usable() && token.error.is_some() {
        return Err(token_problem());
    }
    match health.verified {
        Some(true) => Ok(()),
        Some(false) => Err(health
            .reason
            .clone()
            .unwrap_or_else(|| "Exchange refused the last AUTH".into())),
        None if token.usable() => Ok(()),
        None => Err(token_problem()),
    }
}

/// Why the tenant cannot send right now as far as tokens go, for `/readyz`; `None` if it can.
pub fn token_unready(tenant: &Tenant, token: &TokenStatus) -> Option<String> {
    if token.usable() {
        return None;
    }
    let detail = match verdict(tenant, token, &UpstreamHealth::default()) {
        Err(reason) => reason,
        Ok(()) => "token expired".into(),
    };
    Some(format!(
        "tenant {}: no usable token ({detail})",
        tenant.name
    ))
}

/// Builds one tenant's row from the facts the parts of the daemon hold.
pub fn tenant_report(
    tenant: &Tenant,
    token: &TokenStatus,
    health: &UpstreamHealth,
    stats: &QueueStats,
    now: SystemTime,
) -> TenantReport {
    let verdict = verdict(tenant, token, health);
    let secret = watch::credential_expiry(tenant).map(|c| c.expires);
    let paused = stats.paused.get(&tenant.name);
    TenantReport {
        name: tenant.name.clone(),
        mailbox: tenant.mailbox.clone(),
        flow: tenant.auth.as_str().to_string(),
        transport: match tenant.transport {
            crate::config::Transport::Smtp => "smtp",
            crate::config::Transport::Graph => "graph",
        }
        .to_string(),
        verified: if verdict.is_ok() {
            VERIFIED
        } else {
            NOT_VERIFIED
        }
        .to_string(),
        reason: verdict.err(),
        token_expires_at: token.expires_at.map(format_time),
        token_error: token.error.clone(),
        token_error_kind: token.error_kind.map(str::to_string),
        client_secret_expires_at: secret.map(format_time),
        secret_days_left: secret.map(|s| watch::days_until(s, now)),
        queue_depth: stats.per_tenant.get(&tenant.name).copied().unwrap_or(0),
        last_delivery: health.last_delivery.map(format_time),
        paused_until: paused.map(|(left, _)| format_time(now + *left)),
        paused_reason: paused.map(|(_, why)| why.clone()),
        alert: health.alert.clone(),
        delegated: tenant.auth.is_delegated(),
    }
}

/// The whole report for the running daemon.
pub fn report(daemon: &Daemon, started: SystemTime) -> StatusReport {
    let settings = daemon.settings.borrow().clone();
    let stats = daemon.scheduler.stats();
    let now = SystemTime::now();
    let tenants = settings
        .config
        .tenants
        .iter()
        .map(|t| {
            tenant_report(
                t,
                &daemon.tokens.status(t),
                &daemon.outbound.health(&t.name),
                &stats,
                now,
            )
        })
        .collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: format_time(started),
        uptime_seconds: now.duration_since(started).unwrap_or_default().as_secs(),
        queue: QueueReport {
            messages: stats.messages,
            oldest_age_seconds: stats.oldest_age.as_secs(),
            per_tenant: stats.per_tenant.into_iter().collect(),
        },
        tenants,
    }
}

/// `/readyz`: the reasons the daemon is not ready; empty when it is.
pub fn unready_reasons(daemon: &Daemon) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Err(e) = daemon.spool.check_space() {
        reasons.push(format!("spool: {e}"));
    } else if let Err(e) = probe_writable(daemon.spool.root()) {
        reasons.push(format!(
            "spool: cannot write in {}: {e}",
            daemon.spool.root().display()
        ));
    }
    let settings = daemon.settings.borrow().clone();
    for t in &settings.config.tenants {
        if let Some(why) = token_unready(t, &daemon.tokens.status(t)) {
            reasons.push(why);
        }
    }
    reasons
}

static PROBE: AtomicU64 = AtomicU64::new(0);

/// Creates, syncs and removes a small file in `dir`: the spool is writable only if this works.
pub fn probe_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let name = format!(
        ".readyz-{}-{}",
        std::process::id(),
        PROBE.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(b"ok")?;
            f.sync_all()
        });
    let removed = std::fs::remove_file(&path);
    result?;
    removed
}

/// A short age for people: `42s`, `5m`, `3h`, `2d`.
pub fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
