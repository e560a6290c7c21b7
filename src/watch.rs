//! The client-secret expiry watcher.
//!
//! An Azure client secret lives at most two years, and when it expires mail stops with
//! `AADSTS7000222`. The watcher knows the expiry from `client_secret_expires` and, for a
//! certificate credential, from the certificate's notAfter. It exports the earliest one as
//! `authrelay_client_secret_expiry_timestamp_seconds{tenant}` and warns 30, 14, 7, 3 and 1
//! days ahead and then daily once it has passed: a WARN log line and, when the tenant has
//! `alert_to`, a short email. Which warnings went out is kept in `state_dir/watch.json`, so a
//! restart doesn't repeat them.
//!
//! The decision is the pure function [`thresholds_crossed`]; [`Watcher`] applies it with a
//! clock passed in; [`run`] is the hourly loop.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::config::{Tenant, format_time};
use crate::metrics::Metrics;
use crate::queue::Envelope;
use crate::server::Daemon;
use crate::shutdown::Shutdown;

/// Days before expiry at which a warning goes out, farthest first.
pub const WARN_DAYS: [u32; 5] = [30, 14, 7, 3, 1];

/// How often the loop looks again.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

const DAY: u64 = 86_400;

/// One warning step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// At most this many days are left (one of [`WARN_DAYS`]).
    Before(u32),
    /// The credential expired this many whole days ago (0 on the day it expired).
    Expired(u32),
}

impl Threshold {
    /// Later steps rank higher: Before(30) < Before(1) < Expired(0) < Expired(1) < ...
    fn rank(self) -> i64 {
        match self {
            Threshold::Before(d) => -i64::from(d),
            Threshold::Expired(d) => i64::from(d),
        }
    }
}

/// The warning due at `now` for a credential expiring at `expiry`, given the last one that
/// went out, or `None` when nothing new is due.
///
/// Only the most urgent step crossed is returned: a relay first started 10 days before
/// expiry warns once ("14 days"), not for 30 and 14 at once. After expiry one warning is due
/// per day.
pub fn thresholds_crossed(
    expiry: SystemTime,
    now: SystemTime,
    already_sent: Option<Threshold>,
) -> Option<Threshold> {
    let due = match expiry
        .duration_since(now)
        .ok()
        .filter(|left| !left.is_zero())
    {
        Some(left) => WARN_DAYS
            .iter()
            .rev()
            .find(|&&d| left <= Duration::from_secs(u64::from(d) * DAY))
            .map(|&d| Threshold::Before(d))?,
        None => {
            let past = now.duration_since(expiry).unwrap_or_default();
            Threshold::Expired(u32::try_from(past.as_secs() / DAY).unwrap_or(u32::MAX))
        }
    };
    match already_sent {
        Some(sent) if sent.rank() >= due.rank() => None,
        _ => Some(due),
    }
}

/// What kind of credential expires: the advice differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    ClientSecret,
    Certificate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialExpiry {
    pub expires: SystemTime,
    pub credential: Credential,
}

/// The earliest known expiry of the tenant's credential: `client_secret_expires`, and the
/// notAfter of `client_certificate_file` when one is set and readable.
pub fn credential_expiry(tenant: &Tenant) -> Option<CredentialExpiry> {
    let secret = tenant
        .client_secret_expires
        .map(|expires| CredentialExpiry {
            expires,
            credential: Credential::ClientSecret,
        });
    let cert = tenant
        .client_certificate_file
        .as_deref()
        .and_then(|p| certificate_expiry(p).ok())
        .map(|expires| CredentialExpiry {
            expires,
            credential: Credential::Certificate,
        });
    match (secret, cert) {
        (Some(s), Some(c)) => Some(if c.expires < s.expires { c } else { s }),
        (s, c) => s.or(c),
    }
}

/// The notAfter of the first certificate in a PEM file.
pub fn certificate_expiry(path: &Path) -> Result<SystemTime, String> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    certificate_not_after(der.as_ref())
        .ok_or_else(|| format!("{}: cannot read the certificate's validity", path.display()))
}

/// One DER element: (tag, contents, what follows).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Walks `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } ... }`
/// (RFC 5280 section 4.1) far enough to read notAfter. That is all the watcher needs, so no
/// X.509 crate.
pub fn certificate_not_after(der: &[u8]) -> Option<SystemTime> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = der_next(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_next(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = der_next(tbs)?;
    if tag == 0xa0 {
        // The version was present; what we just skipped was it, so skip the serial too.
        rest = der_next(rest)?.2;
    }
    let rest = der_next(rest)?.2; // signature algorithm
    let rest = der_next(rest)?.2; // issuer
    let (SEQUENCE, validity, _) = der_next(rest)? else {
        return None;
    };
    let (_, _, after_not_before) = der_next(validity)?;
    let (tag, value, _) = der_next(after_not_before)?;
    parse_asn1_time(tag, value)
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18), the
/// forms RFC 5280 allows.
fn parse_asn1_time(tag: u8, value: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<i32>().ok());
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
    let month = time::Month::try_from(u8::try_from(field(0)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(field(1)?).ok()?).ok()?;
    let t = time::Time::from_hms(
        u8::try_from(field(2)?).ok()?,
        u8::try_from(field(3)?).ok()?,
        u8::try_from(field(4)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(t).assume_utc().into())
}

/// What went out for one tenant, remembered across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Sent {
    /// The expiry (Unix seconds) the warnings were about; a new secret starts afresh.
    expires: u64,
    last: Threshold,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    tenants: BTreeMap<String, Sent>,
}

/// A warning that went out (returned for tests and the caller's logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub tenant: String,
    pub threshold: Threshold,
    pub days_left: i64,
    pub expires: SystemTime,
    pub credential: Credential,
    /// The queue id of the alert email, when one was queued.
    pub email: Option<String>,
}

impl Notice {
    fn what(&self) -> &'static str {
        match self.credential {
            Credential::ClientSecret => "client secret",
            Credential::Certificate => "client certificate",
        }
    }

    fn advice(&self) -> &'static str {
        match self.credential {
            Credential::ClientSecret => {
                "create a new client secret in Entra ID > App registrations > Certificates & secrets, then update client_secret(_file) and client_secret_expires and reload"
            }
            Credential::Certificate => {
                "upload a new certificate in Entra ID > App registrations > Certificates & secrets, then update client_certificate_file/client_key_file and reload"
            }
        }
    }

    /// One line for people: "the client secret of tenant contoso expires in 12 days (...)".
    pub fn summary(&self) -> String {
        let date = format_time(self.expires);
        match self.threshold {
            Threshold::Before(_) => format!(
                "the {} of tenant {} expires in {} ({date})",
                self.what(),
                self.tenant,
                in_days(self.days_left)
            ),
            Threshold::Expired(_) => format!(
                "the {} of tenant {} EXPIRED on {date}; mail for this tenant stops until it is replaced",
                self.what(),
                self.tenant
            ),
        }
    }
}

/// Applies [`thresholds_crossed`] to every tenant and remembers what went out.
pub struct Watcher {
    path: PathBuf,
    state: State,
}

impl Watcher {
    /// Loads what was already sent from `state_dir/watch.json` (a missing or unreadable file
    /// means nothing was; the worst case is a repeated warning).
    pub fn open(state_dir: &Path) -> Watcher {
        let path = state_dir.join("watch.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable watcher state");
                State::default()
            }),
            Err(_) => State::default(),
        };
        Watcher { path, state }
    }

    /// Checks every tenant at `now`: sets the expiry metric, and logs (and mails) each warning
    /// that is due. Returns the warnings that went out.
    pub async fn check(&mut self, daemon: &Daemon, now: SystemTime) -> Vec<Notice> {
        let settings = daemon.settings.borrow().clone();
        let mut notices = Vec::new();
        for tenant in &settings.config.tenants {
            if let Some(cert) = &tenant.client_certificate_file {
                if let Err(e) = certificate_expiry(cert) {
                    tracing::warn!(tenant = %tenant.name, error = %e, "cannot tell when the client certificate expires");
                }
            }
            let label = Metrics::tenant(&tenant.name);
            let Some(expiry) = credential_expiry(tenant) else {
                daemon.metrics.client_secret_expiry.remove(&label);
                self.state.tenants.remove(&tenant.name);
                continue;
            };
            daemon
                .metrics
                .client_secret_expiry
                .get_or_create(&label)
                .set(unix(expiry.expires) as i64);
            let sent = self
                .state
                .tenants
                .get(&tenant.name)
                .filter(|s| s.expires == unix(expiry.expires))
                .map(|s| s.last);
            let Some(threshold) = thresholds_crossed(expiry.expires, now, sent) else {
                continue;
            };
            let mut notice = Notice {
                tenant: tenant.name.clone(),
                threshold,
                days_left: days_until(expiry.expires, now),
                expires: expiry.expires,
                credential: expiry.credential,
                email: None,
            };
            tracing::warn!(
                tenant = %tenant.name,
                days_left = notice.days_left,
                expires = %format_time(expiry.expires),
                credential = notice.what(),
                "{}: {}",
                notice.summary(),
                notice.advice()
            );
            if let Some(to) = &tenant.alert_to {
                notice.email =
                    send_alert(daemon, tenant, to, &notice, &settings.config.hostname, now).await;
            }
            self.state.tenants.insert(
                tenant.name.clone(),
                Sent {
                    expires: unix(expiry.expires),
                    last: threshold,
                },
            );
            notices.push(notice);
        }
        if !notices.is_empty() {
            if let Err(e) = self.save() {
                tracing::error!(path = %self.path.display(), error = %e, "cannot save watcher state; warnings may repeat after a restart");
            }
        }
        notices
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync the directory.
    fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.state).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Whole days from `now` until `t`, rounded down (so negative once `t` has passed).
pub fn days_until(t: SystemTime, now: SystemTime) -> i64 {
    let secs: i64 = match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    secs.div_euclid(DAY as i64)
}

/// "12 days", "1 day", "less than a day".
pub fn in_days(days: i64) -> String {
    match days {
        ..=0 => "less than a day".into(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The alert email, from the tenant's mailbox to `to`.
pub fn alert_message(
    tenant: &Tenant,
    to: &str,
    notice: &Notice,
    hostname: &str,
    now: SystemTime,
) -> Vec<u8> {
    use time::format_description::well_known::Rfc2822;
    let date = time::OffsetDateTime::from(now)
        .format(&Rfc2822)
        .unwrap_or_default();
    let subject = match notice.threshold {
        Threshold::Before(_) => format!(
            "[authrelay] {} for {} expires in {}",
            notice.what(),
            tenant.name,
            in_days(notice.days_left)
        ),
        Threshold::Expired(_) => format!(
            "[authrelay] {} for {} has EXPIRED",
            notice.what(),
            tenant.name
        ),
    };
    format!(
        "From: authrelay <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{stamp}.{tenant}.expiry@{hostname}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {summary}.\r\n\
         \r\n\
         What to do: {advice}.\r\n\
         \r\n\
         Tenant: {tenant}\r\n\
         Mailbox: {from}\r\n\
         Expires: {expires}\r\n\
         \r\n\
         -- \r\n\
         authrelay on {hostname}\r\n",
        from = tenant.mailbox,
        stamp = unix(now),
        tenant = tenant.name,
        summary = notice.summary(),
        advice = notice.advice(),
        expires = format_time(notice.expires),
    )
    .into_bytes()
}

/// Queues the alert email for the tenant itself; returns its queue id.
async fn send_alert(
    daemon: &Daemon,
    tenant: &Tenant,
    to: &str,
    notice: &Notice,
    hostname: &str,
    now: SystemTime,
) -> Option<String> {
    let body = alert_message(tenant, to, notice, hostname, now);
    let env = Envelope::new(&tenant.name, "", &[to.to_string()], "localhost");
    match daemon.spool.store(&body, env).await {
        Ok(env) => {
            daemon.scheduler.insert(&env);
            tracing::info!(tenant = %tenant.name, to, queue_id = %env.id, "queued the expiry alert email");
            Some(env.id)
        }
        Err(e) => {
            tracing::error!(tenant = %tenant.name, to, error = %e, "cannot queue the expiry alert email");
            None
        }
    }
}

/// Checks at start, then every hour and after each reload, until shutdown.
pub async fn run(daemon: Arc<Daemon>, mut shutdown: Shutdown) {
    let state_dir = daemon.settings.borrow().config.state_dir.clone();
    let mut watcher = Watcher::open(&state_dir);
    let mut settings = daemon.settings.clone();
    loop {
        settings.mark_unchanged();
        watcher.check(&daemon, SystemTime::now()).await;
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            r = settings.changed() => if r.is_err() { return },
            _ = shutdown.recv() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::daemon;
    use crate::config::parse_expiry;
    use crate::server::Settings;

    const H: u64 = 3600;

    fn at(expiry: SystemTime, offset_secs: i64) -> SystemTime {
        if offset_secs >= 0 {
            expiry + Duration::from_secs(offset_secs as u64)
        } else {
            expiry - Duration::from_secs((-offset_secs) as u64)
        }
    }

    #[test]
    fn each_step_fires_once_in_order() {
        let e = parse_expiry("2027-06-30").expect("date");
        let d = |days: i64| days * DAY as i64;
        use Threshold::*;
        let cases: &[(i64, Option<Threshold>, Option<Threshold>)] = &[
            (-d(40), None, None),
            (-d(30) - 1, None, None),
            (-d(30), None, Some(Before(30))),
            (-d(30) + 1, Some(Before(30)), None),
            (-d(20), Some(Before(30)), None),
            (-d(14), Some(Before(30)), Some(Before(14))),
            (-d(10), Some(Before(14)), None),
            // First start 10 days before: only the most urgent step, once.
            (-d(10), None, Some(Before(14))),
            (-d(7), Some(Before(14)), Some(Before(7))),
            (-d(3), Some(Before(7)), Some(Before(3))),
            (-d(1), Some(Before(3)), Some(Before(1))),
            (-(H as i64), Some(Before(1)), None),
            // Down for a while: the relay warns for 1 day once it is back, not for 30..3.
            (-(H as i64), None, Some(Before(1))),
            (0, Some(Before(1)), Some(Expired(0))),
            (5 * H as i64, Some(Expired(0)), None),
            (d(1), Some(Expired(0)), Some(Expired(1))),
            (d(1) + 1, Some(Expired(1)), None),
            (d(4), Some(Expired(1)), Some(Expired(4))),
            (d(400), Some(Expired(4)), Some(Expired(400))),
        ];
        for (offset, sent, want) in cases {
            assert_eq!(
                thresholds_crossed(e, at(e, *offset), *sent),
                *want,
                "offset {offset}s, sent {sent:?}"
            );
        }
    }

    #[test]
    fn days_are_whole_and_negative_after_expiry() {
        let e = parse_expiry("2027-06-30").expect("date");
        assert_eq!(days_until(e, at(e, -(12 * DAY as i64) - 5)), 12);
        assert_eq!(days_until(e, at(e, -(12 * DAY as i64) + 5)), 11);
        assert_eq!(days_until(e, at(e, -1)), 0);
        assert_eq!(days_until(e, at(e, 1)), -1);
        assert_eq!(in_days(0), "less than a day");
        assert_eq!(in_days(1), "1 day");
        assert_eq!(in_days(12), "12 days");
    }

    /// Hourly checks from 45 days before to 3 days after expiry, with a restart in the
    /// middle: each step fires exactly once, each queues one alert email, the state survives
    /// the restart.
    #[tokio::test]
    async fn hourly_checks_warn_once_per_step_across_a_restart() {
        let t = daemon("");
        let e = parse_expiry("2027-06-30").expect("date");
        let mut watcher = Watcher::open(t.dir.path());
        let mut fired = Vec::new();
        let start = -45 * DAY as i64;
        let end = 3 * DAY as i64 + 1;
        let restart_at = -5 * DAY as i64;
        let mut offset = start;
        while offset <= end {
            if offset == restart_at {
                watcher = Watcher::open(t.dir.path());
            }
            for n in watcher.check(&t.daemon, at(e, offset)).await {
                assert_eq!(n.tenant, "contoso");
                assert!(n.email.is_some(), "alert_to is set: an email is queued");
                fired.push((n.threshold, n.days_left));
            }
            offset += H as i64;
        }
        use Threshold::*;
        assert_eq!(
            fired,
            vec![
                (Before(30), 30),
                (Before(14), 14),
                (Before(7), 7),
                (Before(3), 3),
                (Before(1), 1),
                (Expired(0), 0),
                (Expired(1), -1),
                (Expired(2), -2),
                (Expired(3), -3),
            ]
        );
        // One email per warning, to alert_to, with the null sender, for the tenant itself.
        let (queued, errors) = t.daemon.spool.scan().expect("scan");
        assert!(errors.is_empty());
        assert_eq!(queued.len(), fired.len());
        for env in &queued {
            assert_eq!(env.tenant, "contoso");
            assert_eq!(env.mail_from, "");
            assert_eq!(env.recipients[0].address, "it@contoso.com");
            assert!(t.daemon.scheduler.contains(&env.id));
        }
        let body = t
            .daemon
            .spool
            .read_message(&queued[0].id)
            .await
            .expect("body");
        let body = String::from_utf8(body).expect("utf8");
        assert!(
            body.contains("Subject: [authrelay] client secret for contoso expires in 30 days\r\n"),
            "{body}"
        );
        assert!(body.contains("Certificates & secrets"), "{body}");
        assert!(body.contains("Auto-Submitted: auto-generated\r\n"));

        // The metric holds the expiry.
        let metrics = t.daemon.metrics.encode();
        assert!(
            metrics.contains(&format!(
                "authrelay_client_secret_expiry_timestamp_seconds{{tenant=\"contoso\"}} {}\n",
                unix(e)
            )),
            "{metrics}"
        );

        // A restart right after the last warning repeats nothing.
        let mut again = Watcher::open(t.dir.path());
        assert!(again.check(&t.daemon, at(e, end)).await.is_empty());
        let saved = std::fs::read_to_string(t.dir.path().join("watch.json")).expect("state");
        assert!(saved.contains("\"expired\": 3"), "{saved}");
    }

    #[tokio::test]
    async fn a_new_secret_starts_afresh_and_a_removed_one_clears_the_metric() {
        let t = daemon("");
        let e = parse_expiry("2027-06-30").expect("date");
        let mut w = Watcher::open(t.dir.path());
        assert_eq!(w.check(&t.daemon, at(e, -(2 * DAY as i64))).await.len(), 1);
        assert!(
            w.check(&t.daemon, at(e, -(2 * DAY as i64)))
                .await
                .is_empty()
        );

        // The operator rotated the secret and reloaded: a new expiry, no warning due yet.
        let mut config = t.daemon.settings.borrow().config.clone();
        config.tenants[0].client_secret_expires = Some(parse_expiry("2029-06-30").expect("date"));
        t.settings.send_replace(Settings::new(config.clone()));
        assert!(
            w.check(&t.daemon, at(e, -(2 * DAY as i64)))
                .await
                .is_empty()
        );
        let later = parse_expiry("2029-06-30").expect("date");
        let n = w.check(&t.daemon, at(later, -(20 * DAY as i64))).await;
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].threshold, Threshold::Before(30));

        config.tenants[0].client_secret_expires = None;
        t.settings.send_replace(Settings::new(config));
        assert!(w.check(&t.daemon, SystemTime::now()).await.is_empty());
        assert!(!t.daemon.metrics.encode().contains("client_secret_expiry"));
    }

    fn cert_pem(year: i32) -> String {
        let mut params =
            rcgen::CertificateParams::new(vec!["authrelay.test".to_string()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 3, 4);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn certificate_not_after_is_read_from_utc_and_generalized_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (year, want) in [
            (2030, "2030-03-04T00:00:00Z"),
            (2051, "2051-03-04T00:00:00Z"),
        ] {
            let path = dir.path().join(format!("{year}.pem"));
            std::fs::write(&path, cert_pem(year)).expect("write");
            assert_eq!(
                format_time(certificate_expiry(&path).expect("expiry")),
                want
            );
        }
        assert!(certificate_expiry(&dir.path().join("none.pem")).is_err());
        assert_eq!(certificate_not_after(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(certificate_not_after(b""), None);
        assert_eq!(certificate_not_after(b"\x30\x84\xff\xff\xff\xff"), None);
    }

    #[tokio::test]
    async fn a_certificate_expiring_first_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, cert_pem(2027)).expect("write");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "unused").expect("write");
        let t = daemon("");
        let mut config = t.daemon.settings.borrow().config.clone();
        let tenant = &mut config.tenants[0];
        tenant.client_secret = None;
        tenant.client_certificate_file = Some(cert);
        tenant.client_key_file = Some(key);
        let got = credential_expiry(tenant).expect("expiry");
        assert_eq!(got.credential, Credential::Certificate);
        assert_eq!(format_time(got.expires), "2027-03-04T00:00:00Z");
        t.settings.send_replace(Settings::new(config));
        let mut w = Watcher::open(t.dir.path());
        let e = parse_expiry("2027-03-04").expect("date");
        let n = w.check(&t.daemon, at(e, -(6 * DAY as i64))).await;
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].credential, Credential::Certificate);
        assert!(
            n[0].summary()
                .starts_with("the client certificate of tenant contoso expires in 6 days"),
            "{}",
            n[0].summary()
        );
    }
}
