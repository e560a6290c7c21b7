//! Outbound: delivering one queued message to Exchange Online and saying what happened to
//! each recipient. The scheduler in `queue` decides when; this module decides nothing about
//! retries, it only reports.
//!
//! Each tenant picks its transport: SMTP AUTH with XOAUTH2 (`smtp`, below and in `smtp.rs`)
//! or Microsoft Graph `sendMail` (`graph.rs`). Both report the same [`Attempt`].

pub mod classify;
pub mod graph;
pub mod smtp;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::TlsConnector;

use crate::config::{Tenant, Transport};
use crate::oauth::TokenManager;
use classify::{Reply, Verdict, classify};
use smtp::{ConnectError, Target, TransactionResult, Upstream};

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptFate {
    Delivered,
    Failed,
    Deferred,
}

#[derive(Debug, Clone)]
pub struct RcptOutcome {
    pub address: String,
    pub fate: RcptFate,
    pub reply: String,
    /// Enhanced status for a DSN ("5.7.60"), or a generic one.
    pub status: String,
}

/// The result of one delivery attempt, for the scheduler to apply.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub recipients: Vec<RcptOutcome>,
    /// The worst verdict seen, which decides pauses, alerts and the failure metric.
    pub verdict: Verdict,
    /// One line for logs and `last_error`: the upstream reply or the connection error.
    pub summary: String,
}

impl Attempt {
    fn all(
        recipients: &[String],
        fate: RcptFate,
        verdict: Verdict,
        reply: &str,
        status: &str,
    ) -> Attempt {
        Attempt {
            recipients: recipients
                .iter()
                .map(|a| RcptOutcome {
                    address: a.clone(),
                    fate,
                    reply: reply.to_string(),
                    status: status.to_string(),
                })
                .collect(),
            verdict,
            summary: reply.to_string(),
        }
    }
}

/// Per-tenant facts the status page and `verify` show: did the last AUTH work, and when did
/// mail last go out.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHealth {
    /// `Some(true)` after a successful AUTH, `Some(false)` after a refusal.
    pub verified: Option<bool>,
    pub reason: Option<String>,
    pub last_delivery: Option<SystemTime>,
    /// A condition an operator must fix (auth disabled, token refused, throttled).
    pub alert: Option<String>,
}

/// Everything delivery needs that lives longer than one message.
pub struct Outbound {
    pub tokens: Arc<TokenManager>,
    pub hostname: String,
    connectors: Mutex<HashMap<String, (Option<std::path::PathBuf>, TlsConnector)>>,
    graph: graph::Clients,
    health: Mutex<HashMap<String, UpstreamHealth>>,
}

impl Outbound {
    pub fn new(tokens: Arc<TokenManager>, hostname: String) -> Outbound {
        Outbound {
            tokens,
            hostname,
            connectors: Mutex::new(HashMap::new()),
            graph: graph::Clients::default(),
            health: Mutex::new(HashMap::new()),
        }
    }

    fn connector(&self, tenant: &Tenant) -> Result<TlsConnector, tls::TlsError> {
        let mut map = self.connectors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ca, c)) = map.get(&tenant.name) {
            if *ca == tenant.tls_ca_file {
                return Ok(c.clone());
            }
        }
        let c = tls::connector(tenant.tls_ca_file.as_deref())?;
        map.insert(tenant.name.clone(), (tenant.tls_ca_file.clone(), c.clone()));
        Ok(c)
    }

    pub fn health(&self, tenant: &str) -> UpstreamHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    fn set_health(&self, tenant: &str, f: impl FnOnce(&mut UpstreamHealth)) {
        let mut map = self.health.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(tenant.to_string()).or_default());
    }

    /// The upstream accepted our credentials: the tenant is Verified and any alert is over.
    fn mark_verified(&self, tenant: &str) {
        self.set_health(tenant, |h| {
            h.verified = Some(true);
            h.reason = None;
            h.alert = None;
        });
    }

    /// The upstream refused our credentials or setup: an operator must act, so say it loudly
    /// in the log and on `/status`.
    fn mark_refused(&self, tenant: &str, reason: String, alert: String) {
        tracing::error!(tenant = %tenant, reply = %reason, "{alert}");
        self.set_health(tenant, |h| {
            h.verified = Some(false);
            h.reason = Some(reason);
            h.alert = Some(alert);
        });
    }

    /// Opens an authenticated connection, refreshing the token once if it is refused.
    pub async fn connect(&self, tenant: &Tenant) -> Result<Upstream, (Verdict, String)> {
        let connector = self
            .connector(tenant)
            .map_err(|e| (Verdict::Transient, e.to_string()))?;
        let (host, port) = tenant.smtp_host_port();
        let target = Target {
            host: &host,
            port,
            connector,
            helo: &self.hostname,
            mailbox: &tenant.mailbox,
            timeout: tenant.upstream_timeout,
        };
        let mut token = self.tokens.token(tenant).await.map_err(|e| {
            let verdict = if e.is_transient() {
                Verdict::Transient
            } else {
                Verdict::AuthRejected
            };
            (verdict, format!("no token: {e}"))
        })?;
        let mut refreshed = false;
        loop {
            match Upstream::connect(&target, &token).await {
                Ok(up) => {
                    self.mark_verified(&tenant.name);
                    return Ok(up);
                }
                Err(ConnectError::Refused(reply)) => {
                    let verdict = classify(&reply);
                    if verdict == Verdict::AuthRejected && !refreshed {
                        // A token Exchange no longer accepts (revoked, permissions changed):
                        // get a new one and try exactly once more.
                        refreshed = true;
                        tracing::info!(tenant = %tenant.name, reply = %reply, "token refused upstream; refreshing it once");
                        token = self
                            .tokens
                            .refresh(tenant, Some(&token))
                            .await
                            .map_err(|e| (Verdict::AuthRejected, format!("no token: {e}")))?;
                        continue;
                    }
                    if matches!(verdict, Verdict::AuthRejected | Verdict::AuthDisabled) {
                        let text = reply.to_string();
                        let alert = if verdict == Verdict::AuthDisabled {
                            format!(
                                "SMTP AUTH is disabled for {} (an admin must enable it): {text}",
                                tenant.mailbox
                            )
                        } else {
                            format!("Exchange refused the token for {}: {text}", tenant.mailbox)
                        };
                        self.mark_refused(&tenant.name, text, alert);
                    }
                    return Err((verdict, reply.to_string()));
                }
                Err(e) => return Err((Verdict::Transient, e.to_string())),
            }
        }
    }

    /// Delivers `body` (already rewritten) to the recipients over the tenant's transport.
    /// Over SMTP, reuses `conn` when it holds a live connection and leaves one there when the
    /// connection is still good afterwards; Graph needs no connection of ours.
    pub async fn deliver(
        &self,
        tenant: &Tenant,
        conn: &mut Option<Upstream>,
        mail_from: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Attempt {
        let started = Instant::now();
        let (attempt, upstream) = match tenant.transport {
            Transport::Smtp => (
                self.deliver_smtp(tenant, conn, mail_from, recipients, body)
                    .await,
                "Exchange",
            ),
            // Graph takes the sender from the From header; the envelope sender has no place.
            Transport::Graph => (
                graph::deliver(self, tenant, recipients, body).await,
                "Graph",
            ),
        };
        if attempt
            .recipients
            .iter()
            .any(|r| r.fate == RcptFate::Delivered)
        {
            self.set_health(&tenant.name, |h| h.last_delivery = Some(SystemTime::now()));
        }
        if attempt.verdict.mailbox_pause().is_some() {
            self.set_health(&tenant.name, |h| {
                h.alert = Some(format!("mailbox paused by {upstream}: {}", attempt.summary))
            });
        }
        tracing::debug!(tenant = %tenant.name, elapsed = ?started.elapsed(), "attempt finished");
        attempt
    }

    async fn deliver_smtp(
        &self,
        tenant: &Tenant,
        conn: &mut Option<Upstream>,
        mail_from: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Attempt {
        if conn.is_none() {
            match self.connect(tenant).await {
                Ok(up) => *conn = Some(up),
                Err((verdict, text)) => {
                    let status = if verdict == Verdict::Permanent {
                        "5.0.0"
                    } else {
                        "4.4.1"
                    };
                    // A refusal at connect time is about us or the mailbox, never about this
                    // message: defer, whatever its code says.
                    let fate = RcptFate::Deferred;
                    let verdict = if verdict == Verdict::Permanent {
                        Verdict::Transient
                    } else {
                        verdict
                    };
                    return Attempt::all(recipients, fate, verdict, &text, status);
                }
            }
        }
        let Some(up) = conn.as_mut() else {
            return Attempt::all(
                recipients,
                RcptFate::Deferred,
                Verdict::Transient,
                "no connection",
                "4.4.1",
            );
        };
        let result = up.send(mail_from, recipients, body).await;
        let attempt = match result {
            Ok(r) => judge(recipients, &r),
            Err(e) => {
                // The connection broke mid-transaction: whatever happened upstream, we don't
                // know it was accepted, so retry (at-least-once delivery).
                *conn = None;
                Attempt::all(
                    recipients,
                    RcptFate::Deferred,
                    Verdict::Transient,
                    &e.to_string(),
                    "4.4.2",
                )
            }
        };
        // After a reply that pauses the mailbox, or a connection-level refusal, start afresh.
        if attempt.verdict.mailbox_pause().is_some()
            || matches!(
                attempt.verdict,
                Verdict::AuthRejected | Verdict::AuthDisabled
            )
        {
            if let Some(up) = conn.take() {
                up.quit().await;
            }
        }
        attempt
    }
}

/// Turns the replies of one transaction into per-recipient fates.
fn judge(recipients: &[String], r: &TransactionResult) -> Attempt {
    if let Some(mail) = &r.mail {
        let verdict = classify(mail);
        let fate = if verdict.is_permanent() {
            RcptFate::Failed
        } else {
            RcptFate::Deferred
        };
        return Attempt::all(
            recipients,
            fate,
            verdict,
            &mail.to_string(),
            &status_of(mail),
        );
    }
    let mut worst = Verdict::Delivered;
    let mut summary = String::new();
    let data_verdict = r.data.as_ref().map(classify);
    let mut out = Vec::with_capacity(recipients.len());
    for (addr, rcpt_reply) in &r.rcpt {
        let (reply, verdict): (&Reply, Verdict) = if rcpt_reply.is_positive() {
            match (&r.data, data_verdict) {
                (Some(d), Some(v)) => (d, v),
                // DATA never got a final answer: treat as a temporary failure.
                _ => (rcpt_reply, Verdict::Transient),
            }
        } else {
            (rcpt_reply, classify(rcpt_reply))
        };
        let fate = match verdict {
            Verdict::Delivered => RcptFate::Delivered,
            Verdict::Permanent => RcptFate::Failed,
            _ => RcptFate::Deferred,
        };
        if severity(verdict) > severity(worst) {
            worst = verdict;
        }
        if verdict != Verdict::Delivered && summary.is_empty() {
            summary = reply.to_string();
        }
        out.push(RcptOutcome {
            address: addr.clone(),
            fate,
            reply: reply.to_string(),
            status: status_of(reply),
        });
    }
    if summary.is_empty() {
        summary = r
            .data
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "no reply".into());
    }
    Attempt {
        recipients: out,
        verdict: worst,
        summary,
    }
}

/// Orders verdicts so the one that matters most for the mailbox wins.
fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Delivered => 0,
        Verdict::Permanent => 1,
        Verdict::Transient => 2,
        Verdict::Throttled(_) => 3,
        Verdict::AuthRejected => 4,
        Verdict::AuthDisabled => 5,
        Verdict::SenderBlocked(_) => 6,
        Verdict::QuotaExceeded(_) => 7,
    }
}

fn status_of(reply: &Reply) -> String {
    if !reply.status.is_empty() {
        return reply.status.clone();
    }
    match reply.code {
        200..=299 => "2.0.0".into(),
        400..=499 => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// How long a connection may sit idle before we close it (Exchange closes idle ones too).
pub const IDLE_CLOSE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(mail: Option<Reply>, rcpt: &[(&str, Reply)], data: Option<Reply>) -> TransactionResult {
        TransactionResult {
            mail,
            rcpt: rcpt
                .iter()
                .map(|(a, r)| (a.to_string(), r.clone()))
                .collect(),
            data,
        }
    }

    #[test]
    fn partial_recipient_failure() {
        let ok = Reply::new(250, "2.1.5", "Recipient OK");
        let bad = Reply::new(550, "5.1.10", "RecipientNotFound");
        let later = Reply::new(451, "4.4.0", "try later");
        let r = tr(
            None,
            &[("a@x", ok.clone()), ("b@x", bad), ("c@x", later)],
            Some(Reply::new(250, "2.6.0", "Queued")),
        );
        let a = judge(&["a@x".into(), "b@x".into(), "c@x".into()], &r);
        let fates: Vec<_> = a.recipients.iter().map(|r| r.fate).collect();
        assert_eq!(
            fates,
            vec![RcptFate::Delivered, RcptFate::Failed, RcptFate::Deferred]
        );
        assert_eq!(a.recipients[1].status, "5.1.10");
        assert_eq!(a.verdict, Verdict::Transient);
    }

    #[test]
    fn send_as_denied_at_data_fails_everyone() {
        let ok = Reply::new(250, "2.1.5", "Recipient OK");
        let denied = Reply::new(554, "5.2.252", "SendAsDenied; not allowed");
        let r = tr(None, &[("a@x", ok.clone()), ("b@x", ok)], Some(denied));
        let a = judge(&["a@x".into(), "b@x".into()], &r);
        assert!(a.recipients.iter().all(|r| r.fate == RcptFate::Failed));
        assert!(a.summary.contains("SendAsDenied"));
    }

    #[test]
    fn refused_sender_applies_to_all() {
        let r = tr(Some(Reply::new(550, "5.7.60", "no send as")), &[], None);
        let a = judge(&["a@x".into()], &r);
        assert_eq!(a.recipients[0].fate, RcptFate::Failed);
        let r = tr(
            Some(Reply::new(432, "4.3.2", "concurrent connections")),
            &[],
            None,
        );
        let a = judge(&["a@x".into()], &r);
        assert_eq!(a.recipients[0].fate, RcptFate::Deferred);
        assert!(a.verdict.mailbox_pause().is_some());
    }
}
