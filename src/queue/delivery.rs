//! Delivery workers: take a message the scheduler hands out, rewrite it for the tenant's
//! mailbox, send it through `outbound`, and write down what happened, on disk first.
//!
//! Each tenant gets `max_connections` workers, and each worker holds at most one upstream
//! connection, so the mailbox never sees more concurrent connections than allowed. A worker
//! keeps its connection for the next message (Exchange is slow to greet and authenticate)
//! and closes it after a short idle time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::dsn;
use super::scheduler::{Job, Scheduler};
use super::spool::{Envelope, RcptStatus, Spool, State, unix_now};
use crate::config::{QueueConfig, Tenant};
use crate::metrics::Metrics;
use crate::outbound::classify::Verdict;
use crate::outbound::smtp::Upstream;
use crate::outbound::{Attempt, IDLE_CLOSE, Outbound, RcptFate, RcptOutcome};
use crate::rewrite;
use crate::server::Settings;
use crate::shutdown::Shutdown;

/// Everything the workers share.
pub struct Delivery {
    pub settings: watch::Receiver<Arc<Settings>>,
    pub spool: Spool,
    pub scheduler: Arc<Scheduler>,
    pub outbound: Arc<Outbound>,
    pub metrics: Arc<Metrics>,
}

/// Back-off after the `attempts`-th failed attempt: doubling from `retry_initial`, capped at
/// `retry_max`, with ±20 % jitter so messages deferred together don't retry in lockstep.
pub fn retry_delay(q: &QueueConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let base = q.retry_initial.saturating_mul(1u32 << exp).min(q.retry_max);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

impl Delivery {
    /// Runs the workers until shutdown: recovers the spool, feeds newly accepted mail to the
    /// scheduler, and keeps each tenant's worker count equal to its `max_connections`.
    pub async fn run(
        self: Arc<Self>,
        mut accepted: mpsc::UnboundedReceiver<Envelope>,
        mut shutdown: Shutdown,
    ) {
        self.recover();
        let mut recoveries = self.outbound.tokens.recoveries();
        let mut recoveries_open = true;
        let mut settings = self.settings.clone();
        let mut workers: HashMap<(String, usize), JoinHandle<()>> = HashMap::new();
        loop {
            workers.retain(|_, h| !h.is_finished());
            let current = settings.borrow_and_update().clone();
            for tenant in &current.config.tenants {
                for index in 0..tenant.max_connections {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        workers.entry((tenant.name.clone(), index))
                    {
                        let me = self.clone();
                        let name = tenant.name.clone();
                        let sd = shutdown.clone();
                        slot.insert(tokio::spawn(
                            async move { me.worker(name, index, sd).await },
                        ));
                    }
                }
            }
            tokio::select! {
                env = accepted.recv() => match env {
                    Some(env) => self.scheduler.insert(&env),
                    None => break,
                },
                r = settings.changed() => if r.is_err() { break },
                r = recoveries.recv(), if recoveries_open => match r {
                    Ok(tenant) => {
                        tracing::info!(tenant = %tenant, "a token is available again; sending deferred mail now");
                        self.scheduler.retry_tenant(&tenant);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for t in &current.config.tenants {
                            self.scheduler.retry_tenant(&t.name);
                        }
                    }
                    // The token manager outlives delivery; nothing more will come.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => recoveries_open = false,
                },
                _ = shutdown.recv() => break,
            }
        }
        // Workers see the same shutdown; wait for them to finish the message in hand.
        for (_, handle) in workers {
            let _ = handle.await;
        }
    }

    /// Puts every queued message on disk back on the schedule.
    fn recover(&self) {
        match self.spool.scan() {
            Ok((envelopes, errors)) => {
                for e in &errors {
                    tracing::error!(error = %e, "unreadable envelope left in the spool");
                }
                let queued = envelopes
                    .iter()
                    .filter(|e| e.state == State::Queued)
                    .count();
                for env in &envelopes {
                    self.scheduler.insert(env);
                }
                if queued > 0 {
                    tracing::info!(
                        queued,
                        failed = envelopes.len() - queued,
                        "recovered the queue"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot scan the spool"),
        }
    }

    async fn worker(self: Arc<Self>, tenant_name: String, index: usize, mut shutdown: Shutdown) {
        let mut settings = self.settings.clone();
        let mut conn: Option<Upstream> = None;
        loop {
            let current = settings.borrow_and_update().clone();
            let Some(tenant) = current.config.tenant(&tenant_name).cloned() else {
                break;
            };
            if index >= tenant.max_connections {
                break;
            }
            let idle = async {
                if conn.is_some() {
                    tokio::time::sleep(IDLE_CLOSE).await
                } else {
                    std::future::pending().await
                }
            };
            let job = tokio::select! {
                job = self.scheduler.next(&tenant) => job,
                _ = idle => {
                    if let Some(up) = conn.take() { up.quit().await; }
                    continue;
                }
                r = settings.changed() => { if r.is_err() { break } continue; }
                _ = shutdown.recv() => break,
            };
            if shutdown.is_shutdown() {
                self.scheduler.give_back(job, &tenant.name);
                break;
            }
            self.process(&current, &tenant, job, &mut conn).await;
        }
        if let Some(up) = conn.take() {
            up.quit().await;
        }
    }

    /// One attempt at one message, start to finish.
    async fn process(
        &self,
        settings: &Settings,
        tenant: &Tenant,
        job: Job,
        conn: &mut Option<Upstream>,
    ) {
        let id = job.id.clone();
        let mut env = match self.spool.load(&id).await {
            Ok(e) => e,
            Err(e) => {
                // Deleted by an operator, or unreadable: nothing to deliver.
                tracing::warn!(queue_id = %id, error = %e, "cannot load queued message");
                self.scheduler.finish(&id);
                return;
            }
        };
        let raw = match self.spool.read_message(&id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read message body; retrying later");
                self.retry_later(
                    &mut env,
                    tenant,
                    settings,
                    "cannot read message body from the spool",
                )
                .await;
                return;
            }
        };
        let recipients: Vec<String> = env.pending().map(|r| r.address.clone()).collect();
        if recipients.is_empty() {
            self.complete(&mut env, tenant).await;
            return;
        }
        let out = rewrite::rewrite(
            &raw,
            &rewrite::Rules {
                mailbox: &tenant.mailbox,
                from_name: tenant.from_name.as_deref(),
                send_as: &tenant.send_as,
                reply_to: tenant.reply_to.as_deref(),
                reply_to_mode: tenant.reply_to_mode,
                signature: tenant.signature.as_deref(),
                hostname: &settings.config.hostname,
                now: SystemTime::now(),
            },
        );
        // Only the rewritten copy goes out: holding the original too would double the memory
        // a large message takes while it is sent. A bounce reads the original again.
        drop(raw);
        let started = Instant::now();
        let attempt = self
            .outbound
            .deliver(tenant, conn, &out.envelope_from, &recipients, &out.message)
            .await;
        self.scheduler.settle(&tenant.name, &job);
        drop(out);
        let elapsed = started.elapsed();
        env.attempts += 1;
        self.log_attempt(&env, tenant, &attempt, elapsed);
        self.apply(&mut env, &attempt, tenant, settings).await;
    }

    fn log_attempt(&self, env: &Envelope, tenant: &Tenant, attempt: &Attempt, elapsed: Duration) {
        let count = |f| attempt.recipients.iter().filter(|r| r.fate == f).count();
        let (delivered, failed, deferred) = (
            count(RcptFate::Delivered),
            count(RcptFate::Failed),
            count(RcptFate::Deferred),
        );
        let rcpts = attempt
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let ms = elapsed.as_millis() as u64;
        if failed == 0 && deferred == 0 {
            tracing::info!(queue_id = %env.id, tenant = %tenant.name, to = %rcpts, reply = %attempt.summary, ms, attempt = env.attempts, "delivered");
        } else if failed > 0 && deferred == 0 && delivered == 0 {
            tracing::warn!(queue_id = %env.id, tenant = %tenant.name, to = %rcpts, reply = %attempt.summary, ms, attempt = env.attempts, "refused permanently");
        } else {
            tracing::warn!(queue_id = %env.id, tenant = %tenant.name, to = %rcpts, delivered, failed, deferred, reply = %attempt.summary, ms, attempt = env.attempts, "not delivered to all");
        }
    }

    /// Records the attempt's outcome on disk and schedules what comes next.
    async fn apply(
        &self,
        env: &mut Envelope,
        attempt: &Attempt,
        tenant: &Tenant,
        settings: &Settings,
    ) {
        if attempt.verdict != Verdict::Delivered {
            self.metrics
                .failure(&tenant.name, attempt.verdict.metric_kind());
        }
        if let Some(pause) = attempt.verdict.mailbox_pause() {
            tracing::warn!(tenant = %tenant.name, pause = ?pause, reply = %attempt.summary, "pausing the mailbox as Exchange asks");
            self.scheduler.pause(&tenant.name, pause, &attempt.summary);
        }
        let mut failed_now = Vec::new();
        for outcome in &attempt.recipients {
            let Some(r) = env
                .recipients
                .iter_mut()
                .find(|r| r.address == outcome.address && r.status == RcptStatus::Pending)
            else {
                continue;
            };
            r.reply = Some(outcome.reply.clone());
            match outcome.fate {
                RcptFate::Delivered => r.status = RcptStatus::Delivered,
                RcptFate::Failed => {
                    r.status = RcptStatus::Failed;
                    failed_now.push(outcome.clone());
                }
                RcptFate::Deferred => {}
            }
        }
        env.last_error = (attempt.verdict != Verdict::Delivered).then(|| attempt.summary.clone());
        // Past max_age, whatever is still pending is given up on.
        if env.pending().next().is_some() && env.age() >= settings.config.queue.max_age {
            for r in env
                .recipients
                .iter_mut()
                .filter(|r| r.status == RcptStatus::Pending)
            {
                r.status = RcptStatus::Failed;
                let why = format!(
                    "4.4.7 message expired after {}; last error: {}",
                    humantime::format_duration(settings.config.queue.max_age),
                    r.reply.clone().unwrap_or_else(|| attempt.summary.clone())
                );
                failed_now.push(RcptOutcome {
                    address: r.address.clone(),
                    fate: RcptFate::Failed,
                    reply: why.clone(),
                    status: "4.4.7".into(),
                });
                r.reply = Some(why);
            }
        }
        if !failed_now.is_empty() {
            self.bounce(env, &failed_now, tenant, settings).await;
        }
        if env.pending().next().is_some() {
            let mut delay = retry_delay(&settings.config.queue, env.attempts);
            if let Some(p) = attempt.verdict.mailbox_pause() {
                delay = delay.max(p);
            }
            self.defer(env, tenant, delay).await;
            return;
        }
        self.complete(env, tenant).await;
    }

    /// Every recipient has an answer: remove the message, or keep it as failed for the operator.
    async fn complete(&self, env: &mut Envelope, tenant: &Tenant) {
        let any_failed = env
            .recipients
            .iter()
            .any(|r| r.status == RcptStatus::Failed);
        let any_delivered = env
            .recipients
            .iter()
            .any(|r| r.status == RcptStatus::Delivered);
        if any_delivered {
            self.metrics
                .messages_delivered
                .get_or_create(&Metrics::tenant(&tenant.name))
                .inc();
        }
        if any_failed {
            env.state = State::Failed;
            if let Err(e) = self.spool.update(env).await {
                tracing::error!(queue_id = %env.id, error = %e, "cannot record failure");
            }
        } else if let Err(e) = self.spool.remove(&env.id).await {
            tracing::error!(queue_id = %env.id, error = %e, "cannot remove delivered message");
        }
        self.scheduler.finish(&env.id);
    }

    async fn retry_later(
        &self,
        env: &mut Envelope,
        tenant: &Tenant,
        settings: &Settings,
        why: &str,
    ) {
        env.attempts += 1;
        env.last_error = Some(why.to_string());
        let delay = retry_delay(&settings.config.queue, env.attempts);
        self.defer(env, tenant, delay).await;
    }

    /// Records the next attempt on disk, then puts the message back on the schedule.
    async fn defer(&self, env: &mut Envelope, tenant: &Tenant, delay: Duration) {
        env.next_attempt = unix_now() + delay.as_secs();
        if let Err(e) = self.spool.update(env).await {
            tracing::error!(queue_id = %env.id, error = %e, "cannot record delivery state");
        }
        let pending = env.pending().count() as u32;
        self.scheduler
            .defer(&env.id, &tenant.name, Instant::now() + delay, pending);
    }

    /// Tells the sender (or the tenant's `bounce_to`) what could not be delivered.
    async fn bounce(
        &self,
        env: &Envelope,
        failures: &[RcptOutcome],
        tenant: &Tenant,
        settings: &Settings,
    ) {
        self.metrics
            .messages_bounced
            .get_or_create(&Metrics::tenant(&tenant.name))
            .inc();
        if env.is_dsn || (env.mail_from.is_empty() && tenant.bounce_to.is_none()) {
            tracing::warn!(queue_id = %env.id, tenant = %tenant.name, "no bounce for a message with a null sender");
            return;
        }
        // The body is still in the spool (it goes only once every recipient has an answer).
        let raw = match self.spool.read_message(&env.id).await {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(queue_id = %env.id, error = %e, "bounce without the original message: cannot read it");
                Vec::new()
            }
        };
        let to = tenant
            .bounce_to
            .clone()
            .unwrap_or_else(|| env.mail_from.clone());
        let failures: Vec<dsn::Failure<'_>> = failures
            .iter()
            .map(|f| dsn::Failure {
                recipient: &f.address,
                status: &f.status,
                diagnostic: &f.reply,
                action: dsn::Action::Failed,
            })
            .collect();
        let from = format!("MAILER-DAEMON@{}", settings.config.hostname);
        let report = dsn::build(&dsn::Dsn {
            reporting_host: &settings.config.hostname,
            from: &from,
            to: &to,
            queue_id: &env.id,
            arrival: SystemTime::UNIX_EPOCH + Duration::from_secs(env.received_at),
            original_envelope_from: &env.mail_from,
            failures: &failures,
            original: &raw,
            now: SystemTime::now(),
        });
        let mut bounce = Envelope::new(&tenant.name, "", std::slice::from_ref(&to), "localhost");
        bounce.is_dsn = true;
        match self.spool.store(&report, bounce).await {
            Ok(stored) => {
                tracing::info!(queue_id = %env.id, bounce_id = %stored.id, tenant = %tenant.name, to = %to, "bounce queued");
                self.scheduler.insert(&stored);
            }
            Err(e) => tracing::error!(queue_id = %env.id, error = %e, "cannot queue bounce"),
        }
    }
}
