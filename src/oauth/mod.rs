//! OAuth 2.0 tokens for each tenant: getting them, keeping them fresh, and saying clearly
//! what is wrong when Entra ID refuses.
//!
//! Delivery asks [`TokenManager::token`] and, while the refresh loop is healthy, always gets a
//! cached token at once: the loop renews each token ahead of expiry (by a fifth of its
//! lifetime, at most 10 minutes) whether or not mail flows, so delegated refresh tokens never
//! hit Microsoft's 90-day inactivity limit. A fetch inline with delivery happens only when
//! the loop could not keep up (first start, endpoint down).

pub mod assertion;
pub mod authorize;
pub mod device;
pub mod grant;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::config::{Secret, Tenant};
use crate::metrics::Metrics;
use crate::server::Settings;
use crate::shutdown::Shutdown;

pub use grant::{GrantError, Granted};
use store::{StoredToken, TokenStore};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("not authorized yet: run `authrelay authorize {0}` or use the status page")]
    NotAuthorized(String),
    #[error("token store: {0}")]
    Store(#[from] store::StoreError),
    /// The last request failed moments ago; the refresh loop retries after a back-off.
    #[error("{text} (retrying with back-off)")]
    Backoff {
        kind: &'static str,
        text: String,
        transient: bool,
    },
}

impl TokenError {
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Grant(g) => g.is_transient(),
            TokenError::NotAuthorized(_) => false,
            TokenError::Store(_) => true,
            TokenError::Backoff { transient, .. } => *transient,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Grant(g) => g.kind(),
            TokenError::NotAuthorized(_) => "needs_sign_in",
            TokenError::Store(_) => "token_store",
            TokenError::Backoff { kind, .. } => kind,
        }
    }
}

/// What `/status`, metrics and `verify` show about a tenant's token.
#[derive(Debug, Clone, Default)]
pub struct TokenStatus {
    pub expires_at: Option<SystemTime>,
    pub has_refresh_token: bool,
    /// The last refresh error, cleared by the next success.
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
    pub last_refresh: Option<SystemTime>,
}

impl TokenStatus {
    /// A token delivery can use right now.
    pub fn usable(&self) -> bool {
        self.expires_at.is_some_and(|e| e > SystemTime::now())
    }
}

#[derive(Default)]
struct Slot {
    /// Serialises token requests for one tenant so a burst of deliveries makes one request.
    fetch: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    token: Option<StoredToken>,
    loaded: bool,
    error: Option<TokenErrorInfo>,
    failures: u32,
    retry_at: Option<SystemTime>,
    last_refresh: Option<SystemTime>,
}

#[derive(Clone)]
struct TokenErrorInfo {
    kind: &'static str,
    text: String,
    transient: bool,
}

pub struct TokenManager {
    http: reqwest::Client,
    store: TokenStore,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    metrics: Arc<Metrics>,
    wake: tokio::sync::Notify,
    /// Names of tenants that hold a usable token again after a failure (see [`Self::recoveries`]).
    recovered: tokio::sync::broadcast::Sender<String>,
    /// Authorization code sign-ins started from the admin listener and not yet finished.
    pub authorizations: authorize::Pending,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long before expiry a token is renewed: a fifth of its lifetime, at most 10 minutes.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(600))
}

impl TokenManager {
    pub fn new(
        state_dir: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> Result<TokenManager, TokenError> {
        Ok(TokenManager {
            http: grant::http_client(),
            store: TokenStore::open(state_dir)?,
            slots: Mutex::new(HashMap::new()),
            metrics,
            wake: tokio::sync::Notify::new(),
            recovered: tokio::sync::broadcast::channel(64).0,
            authorizations: authorize::Pending::new(),
        })
    }

    /// Tells of each tenant whose token requests failed and that holds a usable token again
    /// (the endpoint is back, a new secret was loaded, someone signed in), so that mail
    /// deferred for want of a token can go at once instead of sitting out its back-off.
    pub fn recoveries(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.recovered.subscribe()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn slot(&self, tenant: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(tenant.to_string()).or_default().clone()
    }

    /// The cached token, loading the store on first use; a token granted for another client
    /// id or scope (the config changed) is ignored.
    fn cached(&self, tenant: &Tenant, slot: &Slot) -> Option<StoredToken> {
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.loaded {
            st.loaded = true;
            match self.store.load(&tenant.name) {
                Ok(Some(t))
                    if t.client_id == tenant.client_id && t.scope == tenant.effective_scope() =>
                {
                    self.metrics
                        .token_expiry
                        .get_or_create(&Metrics::tenant(&tenant.name))
                        .set((t.expires_at_ms / 1000) as i64);
                    st.token = Some(t);
                }
                Ok(Some(_)) => {
                    tracing::info!(tenant = %tenant.name, "stored token was granted for another client id or scope; ignoring it");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(tenant = %tenant.name, error = %e, "cannot read stored token")
                }
            }
        }
        st.token.clone()
    }

    /// A usable access token: the cached one while it has a safe margin left, else a new one.
    pub async fn token(&self, tenant: &Tenant) -> Result<Secret, TokenError> {
        let slot = self.slot(&tenant.name);
        if let Some(t) = self.cached(tenant, &slot) {
            if still_good(&t) {
                return Ok(t.access());
            }
        }
        // The refresh loop normally renews ahead of time; getting here means it could not.
        tracing::info!(tenant = %tenant.name, "no fresh token cached; fetching one inline");
        self.renew(tenant, &slot, None).await
    }

    /// Forces a new token, unless another task already replaced `rejected` (so a burst of
    /// 535 replies leads to one request, not one per message).
    pub async fn refresh(
        &self,
        tenant: &Tenant,
        rejected: Option<&Secret>,
    ) -> Result<Secret, TokenError> {
        let slot = self.slot(&tenant.name);
        self.cached(tenant, &slot);
        self.renew(tenant, &slot, Some(rejected.cloned())).await
    }

    async fn renew(
        &self,
        tenant: &Tenant,
        slot: &Slot,
        force: Option<Option<Secret>>,
    ) -> Result<Secret, TokenError> {
        let _guard = slot.fetch.lock().await;
        // Someone else may have renewed while we waited for the lock.
        let (current, backoff) = {
            let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            let backoff = st
                .retry_at
                .filter(|at| *at > SystemTime::now())
                .and(st.error.clone());
            (st.token.clone(), backoff)
        };
        // A delivery asking during the back-off after a failed request gets that failure
        // again instead of a new request: a full queue must not hammer Entra ID in an outage.
        if force.is_none() {
            if let Some(e) = backoff {
                if current.as_ref().is_none_or(|t| !still_good(t)) {
                    return Err(TokenError::Backoff {
                        kind: e.kind,
                        text: e.text,
                        transient: e.transient,
                    });
                }
            }
        }
        if let Some(t) = &current {
            let replaced = match &force {
                None => still_good(t),
                Some(Some(rejected)) => t.access_token != rejected.expose() && still_good(t),
                Some(None) => false,
            };
            if replaced {
                return Ok(t.access());
            }
        }
        let result = self.request(tenant, current.as_ref()).await;
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(granted) => {
                let now = SystemTime::now();
                let token = StoredToken {
                    access_token: granted.access_token.expose().to_string(),
                    expires_at_ms: unix_ms(granted.expires_at),
                    obtained_at_ms: unix_ms(now),
                    // Microsoft rotates refresh tokens; keep the old one only if none came back.
                    refresh_token: granted
                        .refresh_token
                        .map(|s| s.0)
                        .or_else(|| current.and_then(|c| c.refresh_token)),
                    client_id: tenant.client_id.clone(),
                    scope: tenant.effective_scope(),
                };
                if let Err(e) = self.store.save(&tenant.name, &token) {
                    // Keep going with the token in memory; a delegated tenant would lose its
                    // rotated refresh token on restart, so say so loudly.
                    tracing::error!(tenant = %tenant.name, error = %e, "cannot save token");
                }
                self.metrics
                    .token_expiry
                    .get_or_create(&Metrics::tenant(&tenant.name))
                    .set((token.expires_at_ms / 1000) as i64);
                self.metrics.refresh(&tenant.name, true);
                if st.error.is_some() {
                    tracing::info!(tenant = %tenant.name, "token endpoint works again");
                    let _ = self.recovered.send(tenant.name.clone());
                }
                tracing::debug!(tenant = %tenant.name, expires_in = ?granted.lifetime, "token renewed");
                let secret = token.access();
                st.token = Some(token);
                st.error = None;
                st.failures = 0;
                st.retry_at = None;
                st.last_refresh = Some(now);
                Ok(secret)
            }
            Err(e) => {
                self.metrics.refresh(&tenant.name, false);
                st.failures = st.failures.saturating_add(1);
                st.retry_at = Some(SystemTime::now() + retry_delay(st.failures, e.is_transient()));
                let info = TokenErrorInfo {
                    kind: e.kind(),
                    text: e.to_string(),
                    transient: e.is_transient(),
                };
                let changed = st.error.as_ref().is_none_or(|old| old.text != info.text);
                if changed {
                    if info.transient {
                        tracing::warn!(tenant = %tenant.name, state = info.kind, error = %info.text, "token request failed; mail stays queued");
                    } else {
                        tracing::error!(tenant = %tenant.name, state = info.kind, error = %info.text, "token request refused; an operator must act, mail stays queued");
                    }
                }
                st.error = Some(info);
                Err(e)
            }
        }
    }

    async fn request(
        &self,
        tenant: &Tenant,
        current: Option<&StoredToken>,
    ) -> Result<Granted, TokenError> {
        if !tenant.auth.is_delegated() {
            return Ok(grant::client_credentials(&self.http, tenant).await?);
        }
        // The file is the truth: `authrelay verify` or `authorize` may have rotated the
        // refresh token since we loaded it, and the old one is then dead at Microsoft.
        let on_disk = self
            .store
            .load(&tenant.name)
            .ok()
            .flatten()
            .filter(|t| t.client_id == tenant.client_id);
        let refresh = on_disk
            .as_ref()
            .and_then(StoredToken::refresh)
            .or_else(|| current.and_then(StoredToken::refresh));
        match refresh {
            Some(rt) => Ok(grant::refresh_token(&self.http, tenant, &rt).await?),
            None => Err(TokenError::NotAuthorized(tenant.name.clone())),
        }
    }

    /// Stores a token obtained by an interactive flow (authorization code, device code).
    pub fn accept_grant(&self, tenant: &Tenant, granted: Granted) -> Result<(), TokenError> {
        let slot = self.slot(&tenant.name);
        let now = SystemTime::now();
        let token = StoredToken {
            access_token: granted.access_token.expose().to_string(),
            expires_at_ms: unix_ms(granted.expires_at),
            obtained_at_ms: unix_ms(now),
            refresh_token: granted.refresh_token.map(|s| s.0),
            client_id: tenant.client_id.clone(),
            scope: tenant.effective_scope(),
        };
        self.store.save(&tenant.name, &token)?;
        self.metrics
            .token_expiry
            .get_or_create(&Metrics::tenant(&tenant.name))
            .set((token.expires_at_ms / 1000) as i64);
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.error.is_some() {
            let _ = self.recovered.send(tenant.name.clone());
        }
        st.token = Some(token);
        st.loaded = true;
        st.error = None;
        st.failures = 0;
        st.retry_at = None;
        st.last_refresh = Some(now);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    pub fn status(&self, tenant: &Tenant) -> TokenStatus {
        let slot = self.slot(&tenant.name);
        let token = self.cached(tenant, &slot);
        let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        TokenStatus {
            expires_at: token.as_ref().map(StoredToken::expires),
            has_refresh_token: token.as_ref().is_some_and(|t| t.refresh_token.is_some()),
            error: st.error.as_ref().map(|e| e.text.clone()),
            error_kind: st.error.as_ref().map(|e| e.kind),
            last_refresh: st.last_refresh,
        }
    }

    /// When this tenant's token should next be renewed by the loop.
    fn due(&self, tenant: &Tenant) -> SystemTime {
        let slot = self.slot(&tenant.name);
        let token = self.cached(tenant, &slot);
        let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(retry) = st.retry_at {
            // A refusal that needs a person (sign-in, expired secret) is retried slowly; the
            // operator's fix (re-authorize, reload) wakes the loop anyway.
            return retry;
        }
        match token {
            Some(t) => t.expires() - refresh_margin(t.lifetime()),
            // No token yet: due at once (the epoch is before any `now` the loop compares with).
            None => UNIX_EPOCH,
        }
    }

    /// Keeps every tenant's token fresh until shutdown.
    pub async fn run_refresh_loop(
        self: Arc<Self>,
        mut settings: tokio::sync::watch::Receiver<Arc<Settings>>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let current = settings.borrow_and_update().clone();
            let now = SystemTime::now();
            let mut next = now + Duration::from_secs(3600);
            for tenant in &current.config.tenants {
                let mut due = self.due(tenant);
                if due <= now {
                    let _ = self.refresh(tenant, None).await;
                    due = self.due(tenant);
                }
                next = next.min(due);
            }
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(50));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                r = settings.changed() => if r.is_err() { return },
                _ = shutdown.recv() => return,
            }
        }
    }

    /// Wakes the refresh loop after a reload: the operator may have fixed what made the
    /// last request fail (new secret, `authorize --device` in another process), so forget
    /// the back-off and re-read the token store.
    pub fn wake(&self) {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            st.retry_at = None;
            st.loaded = false;
        }
        self.wake.notify_one();
    }
}

/// Good for delivery: more than a tenth of its lifetime (at most a minute) left.
fn still_good(t: &StoredToken) -> bool {
    let margin = (t.lifetime() / 10).min(Duration::from_secs(60));
    t.expires() > SystemTime::now() + margin
}

/// Back-off for failed token requests: 2 s doubling to a minute while the endpoint is
/// unreachable (it will come back by itself), to 5 minutes when Entra refused (a person
/// must act, and a reload retries at once), with ±20 % jitter so many relays behind one
/// outage don't return in step.
fn retry_delay(failures: u32, transient: bool) -> Duration {
    let cap = Duration::from_secs(if transient { 60 } else { 300 });
    let base = Duration::from_secs(2)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(8))
        .min(cap);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_fifth_capped_at_ten_minutes() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(600)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(3)),
            Duration::from_millis(600)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(1800)),
            Duration::from_secs(360)
        );
    }

    #[test]
    fn retry_delay_grows_and_caps() {
        assert!(retry_delay(1, true) <= Duration::from_millis(2400));
        assert!(retry_delay(4, false) >= Duration::from_millis(12800));
        assert!(retry_delay(40, false) <= Duration::from_secs(360));
        assert!(retry_delay(40, true) <= Duration::from_secs(72));
    }
}
