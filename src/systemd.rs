//! Telling systemd how the daemon is doing (`sd_notify(3)`): READY=1 once the listeners are
//! bound, a STATUS= line every 30 seconds, WATCHDOG=1 while the parts that move mail are
//! alive, RELOADING=1 and READY=1 around a SIGHUP reload (what `Type=notify-reload` expects),
//! and STOPPING=1 on drain.
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd, or a
//! unit with a type other than notify).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::{AbortHandle, JoinHandle};

use crate::admin::status::StatusReport;
use crate::server::Daemon;
use crate::shutdown::Shutdown;
use crate::watch::in_days;

/// How often the STATUS= line is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Whether a service manager listens.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Start-up is complete: the SMTP and admin listeners are bound.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins. `Type=notify-reload` (systemd 253+) wants MONOTONIC_USEC with it and a
/// READY=1 when done, whether the new config was taken or refused.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading configuration"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The drain begins: no new connections, work in flight finishes.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: finishing work in flight, the queue stays on disk"),
    ]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// The STATUS= line: `3 queued (oldest 5m); contoso: Verified, secret expires in 12 days`.
pub fn status_line(report: &StatusReport) -> String {
    let mut line = format!("{} queued", report.queue.messages);
    if report.queue.messages > 0 {
        line.push_str(&format!(
            " (oldest {})",
            crate::admin::status::short_age(Duration::from_secs(report.queue.oldest_age_seconds))
        ));
    }
    for t in &report.tenants {
        line.push_str(&format!("; {}: {}", t.name, t.verified));
        if !t.is_verified() {
            if let Some(kind) = &t.token_error_kind {
                line.push_str(&format!(" ({kind})"));
            }
        }
        match t.secret_days_left {
            Some(d) if d < 0 => line.push_str(", secret EXPIRED"),
            Some(d) => line.push_str(&format!(", secret expires in {}", in_days(d))),
            None => {}
        }
        if t.paused_until.is_some() {
            line.push_str(", paused");
        }
    }
    // One line, whatever a tenant name or reason holds.
    line.replace(['\n', '\r'], " ")
}

/// Refreshes the STATUS= line until shutdown (returns at once without systemd).
pub async fn run_status(daemon: Arc<Daemon>, mut shutdown: Shutdown) {
    if !enabled() {
        return;
    }
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let report = crate::admin::status::report(&daemon, crate::admin::started_at());
                status(&status_line(&report));
            }
            _ = shutdown.recv() => return,
        }
    }
}

/// WATCHDOG=1 at half of `WATCHDOG_USEC`, sent from the main loop and only while the tasks
/// that move mail (delivery with its scheduler, the token refresh loop) are running and the
/// scheduler answers. If one of them dies, pings stop and systemd restarts the service
/// (`Restart=on-failure`) once `WatchdogSec` passes.
pub struct Watchdog {
    interval: Option<tokio::time::Interval>,
    watched: Vec<(&'static str, AbortHandle)>,
    daemon: Arc<Daemon>,
    failed: bool,
}

impl Watchdog {
    pub fn new(daemon: Arc<Daemon>) -> Watchdog {
        let interval = if enabled() {
            sd_notify::watchdog_enabled().map(|d| {
                let mut i = tokio::time::interval((d / 2).max(Duration::from_millis(100)));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            })
        } else {
            None
        };
        if let Some(i) = &interval {
            tracing::debug!(every = ?i.period(), "systemd watchdog enabled");
        }
        Watchdog {
            interval,
            watched: Vec::new(),
            daemon,
            failed: false,
        }
    }

    /// Pings only while `task` runs.
    pub fn watch<T>(&mut self, name: &'static str, task: &JoinHandle<T>) {
        self.watched.push((name, task.abort_handle()));
    }

    /// Resolves when the next ping is due; never without a watchdog.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether everything watched is alive; logs the first failure.
    pub fn healthy(&mut self) -> bool {
        if let Some((name, _)) = self.watched.iter().find(|(_, h)| h.is_finished()) {
            if !self.failed {
                self.failed = true;
                tracing::error!(
                    task = name,
                    "a core task stopped; no more watchdog pings, systemd will restart the service"
                );
            }
            return false;
        }
        // Takes the scheduler's lock: a deadlock there stops the pings too.
        let _ = self.daemon.scheduler.stats();
        true
    }

    /// Sends WATCHDOG=1 if everything is healthy.
    pub fn ping(&mut self) {
        if self.healthy() {
            send(&[NotifyState::Watchdog]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{QueueReport, StatusReport, TenantReport};

    fn tenant(name: &str, verified: bool, days: Option<i64>) -> TenantReport {
        TenantReport {
            name: name.into(),
            mailbox: format!("relay@{name}.com"),
            flow: "client_credentials".into(),
            transport: "smtp".into(),
            verified: if verified { "Verified" } else { "Not Verified" }.into(),
            reason: (!verified).then(|| "secret_expired: AADSTS7000222\nmore".into()),
            token_expires_at: None,
            token_error: None,
            token_error_kind: (!verified).then(|| "secret_expired".into()),
            client_secret_expires_at: None,
            secret_days_left: days,
            queue_depth: 0,
            last_delivery: None,
            paused_until: None,
            paused_reason: None,
            alert: None,
            delegated: false,
        }
    }

    #[test]
    fn status_line_is_one_short_line() {
        let report = StatusReport {
            version: "0.1.0".into(),
            started_at: String::new(),
            uptime_seconds: 10,
            queue: QueueReport {
                messages: 3,
                oldest_age_seconds: 300,
                per_tenant: Default::default(),
            },
            tenants: vec![
                tenant("contoso", true, Some(12)),
                tenant("fabrikam", false, Some(-2)),
                tenant("tailspin\nx", true, None),
            ],
        };
        assert_eq!(
            status_line(&report),
            "3 queued (oldest 5m); contoso: Verified, secret expires in 12 days; fabrikam: Not Verified (secret_expired), secret EXPIRED; tailspin x: Verified"
        );
    }

    #[tokio::test]
    async fn watchdog_stops_pinging_when_a_core_task_dies() {
        let t = crate::admin::testing::daemon("");
        let mut w = Watchdog::new(t.daemon.clone());
        let alive = tokio::spawn(std::future::pending::<()>());
        let dying = tokio::spawn(async {});
        w.watch("alive", &alive);
        assert!(w.healthy());
        w.watch("dying", &dying);
        while !dying.is_finished() {
            tokio::task::yield_now().await;
        }
        assert!(!w.healthy());
        // Without NOTIFY_SOCKET (as under `cargo test`) these are no-ops.
        ready("test");
        reloading();
        stopping();
        alive.abort();
    }
}
