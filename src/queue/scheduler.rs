//! The scheduler (Postfix's qmgr): which message goes next, for which mailbox, and when.
//!
//! It keeps only ids and times in memory; the spool on disk stays the truth. Each tenant has
//! a ready list, a timetable of deferred messages, a pacer and an optional pause (throttling,
//! quota). Delivery workers ask [`Scheduler::next`] for work and get a message only when the
//! mailbox may send it, so pacing holds however many workers there are.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::pacing::Pacer;
use super::spool::{Envelope, State, unix_now};
use crate::config::Tenant;
use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct TenantQueue {
    ready: VecDeque<String>,
    /// (due, id), earliest first.
    deferred: BTreeSet<(Instant, String)>,
    pacer: Option<Pacer>,
    paused_until: Option<Instant>,
    pause_reason: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    tenant: String,
    received_at: u64,
    recipients: u32,
}

#[derive(Debug, Default)]
struct Inner {
    tenants: HashMap<String, TenantQueue>,
    entries: HashMap<String, Entry>,
    /// (received_at, id) for the oldest-message gauge.
    by_age: BTreeSet<(u64, String)>,
    in_flight: HashSet<String>,
}

/// A message handed to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// When the pacer counted this message; see [`Scheduler::settle`].
    pub counted_at: Instant,
}

pub struct Scheduler {
    inner: Mutex<Inner>,
    /// Wakes workers when work arrives or a pause ends early (a retry from the operator).
    notify: Notify,
    metrics: std::sync::Arc<Metrics>,
}

/// Converts a Unix time in seconds to an `Instant` (now if it is in the past).
fn instant_at(unix: u64) -> Instant {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Instant::now() + Duration::from_secs(unix.saturating_sub(now_unix))
}

/// Snapshot for `/status` and the systemd status line.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub messages: usize,
    pub oldest_age: Duration,
    pub per_tenant: HashMap<String, usize>,
    pub paused: HashMap<String, (Duration, String)>,
}

impl Scheduler {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Scheduler {
        Scheduler {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or re-adds) a queued message; failed ones are not scheduled.
    pub fn insert(&self, env: &Envelope) {
        if env.state != State::Queued {
            return;
        }
        let mut inner = self.lock();
        if inner.in_flight.contains(&env.id) {
            return;
        }
        let pending = env.pending().count() as u32;
        if let Some(old) = inner.entries.insert(
            env.id.clone(),
            Entry {
                tenant: env.tenant.clone(),
                received_at: env.received_at,
                recipients: pending,
            },
        ) {
            // Re-inserted (operator retry): drop the old position first.
            let q = inner.tenants.entry(old.tenant).or_default();
            q.ready.retain(|i| i != &env.id);
            q.deferred.retain(|(_, i)| i != &env.id);
        }
        inner.by_age.insert((env.received_at, env.id.clone()));
        let q = inner.tenants.entry(env.tenant.clone()).or_default();
        if env.next_attempt <= unix_now() {
            q.ready.push_back(env.id.clone());
        } else {
            q.deferred
                .insert((instant_at(env.next_attempt), env.id.clone()));
        }
        drop(inner);
        self.update_gauges();
        self.notify.notify_waiters();
    }

    /// Schedules a message again after an attempt that left recipients pending.
    pub fn defer(&self, id: &str, tenant: &str, at: Instant, pending: u32) {
        let mut inner = self.lock();
        inner.in_flight.remove(id);
        if let Some(e) = inner.entries.get_mut(id) {
            e.recipients = pending;
        }
        inner
            .tenants
            .entry(tenant.to_string())
            .or_default()
            .deferred
            .insert((at, id.to_string()));
        drop(inner);
        self.notify.notify_waiters();
    }

    /// Forgets a message that is done (delivered, failed, deleted).
    pub fn finish(&self, id: &str) {
        let mut inner = self.lock();
        inner.in_flight.remove(id);
        if let Some(e) = inner.entries.remove(id) {
            inner.by_age.remove(&(e.received_at, id.to_string()));
            if let Some(q) = inner.tenants.get_mut(&e.tenant) {
                q.ready.retain(|i| i != id);
                q.deferred.retain(|(_, i)| i != id);
            }
        }
        drop(inner);
        self.update_gauges();
    }

    /// Stops handing out this tenant's messages for a while (throttling, quota).
    pub fn pause(&self, tenant: &str, for_: Duration, reason: &str) {
        let mut inner = self.lock();
        let q = inner.tenants.entry(tenant.to_string()).or_default();
        let until = Instant::now() + for_;
        if q.paused_until.is_none_or(|p| p < until) {
            q.paused_until = Some(until);
            q.pause_reason = Some(reason.to_string());
        }
    }

    /// Makes every deferred message of every tenant due now (`queue retry --all`), and lifts
    /// pauses: the operator says the problem is fixed.
    pub fn retry_all(&self) {
        let mut inner = self.lock();
        for q in inner.tenants.values_mut() {
            let due: Vec<_> = std::mem::take(&mut q.deferred)
                .into_iter()
                .map(|(_, id)| id)
                .collect();
            q.ready.extend(due);
            q.paused_until = None;
            q.pause_reason = None;
        }
        drop(inner);
        self.notify.notify_waiters();
    }

    /// Makes every deferred message of one tenant due now, leaving any pause in place: what
    /// kept them back (no token) is gone, but Exchange's throttling still holds.
    pub fn retry_tenant(&self, tenant: &str) {
        let mut inner = self.lock();
        let Some(q) = inner.tenants.get_mut(tenant) else {
            return;
        };
        let due: Vec<_> = std::mem::take(&mut q.deferred)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        q.ready.extend(due);
        drop(inner);
        self.notify.notify_waiters();
    }

    /// Whether the scheduler knows the message (queued or in flight).
    pub fn contains(&self, id: &str) -> bool {
        self.lock().entries.contains_key(id)
    }

    pub fn is_in_flight(&self, id: &str) -> bool {
        self.lock().in_flight.contains(id)
    }

    /// Waits until one of `tenant`'s messages may be sent now, and hands it out.
    pub async fn next(&self, tenant: &Tenant) -> Job {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut inner = self.lock();
                let Inner {
                    tenants,
                    entries,
                    in_flight,
                    ..
                } = &mut *inner;
                let q = tenants.entry(tenant.name.clone()).or_default();
                let now = Instant::now();
                let pacer = q.pacer.get_or_insert_with(|| {
                    Pacer::new(
                        tenant.max_messages_per_minute,
                        tenant.rate_window,
                        tenant.max_recipients_per_day,
                    )
                });
                pacer.set_limits(
                    tenant.max_messages_per_minute,
                    tenant.rate_window,
                    tenant.max_recipients_per_day,
                );
                while q.deferred.first().is_some_and(|(due, _)| *due <= now) {
                    if let Some((_, id)) = q.deferred.pop_first() {
                        q.ready.push_back(id);
                    }
                }
                let mut wake_at = q.deferred.first().map(|(due, _)| *due);
                match q.paused_until {
                    Some(until) if until > now => wake_at = Some(until),
                    _ => {
                        q.paused_until = None;
                        q.pause_reason = None;
                        // Drop ids that were finished or deleted while waiting.
                        while q.ready.front().is_some_and(|id| !entries.contains_key(id)) {
                            q.ready.pop_front();
                        }
                        if let Some(id) = q.ready.front().cloned() {
                            let rcpts = entries.get(&id).map(|e| e.recipients).unwrap_or(1);
                            match pacer.wait_for(now, rcpts) {
                                None => {
                                    pacer.record(now, rcpts);
                                    q.ready.pop_front();
                                    in_flight.insert(id.clone());
                                    return Job {
                                        id,
                                        counted_at: now,
                                    };
                                }
                                Some(t) => wake_at = Some(wake_at.map_or(t, |w| w.min(t))),
                            }
                        }
                    }
                }
                wake_at
            };
            match wake_at {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Moves the pacer's count for this job from when it was handed out to now, when the
    /// upstream has answered: Exchange counts a message when it accepts it, and a slow
    /// connect would otherwise let our window slide ahead of Exchange's.
    pub fn settle(&self, tenant: &str, job: &Job) {
        let mut inner = self.lock();
        if let Some(p) = inner.tenants.get_mut(tenant).and_then(|q| q.pacer.as_mut()) {
            p.settle(job.counted_at, Instant::now());
        }
    }

    /// Gives a job back untouched (shutdown before it started).
    pub fn give_back(&self, job: Job, tenant: &str) {
        let mut inner = self.lock();
        inner.in_flight.remove(&job.id);
        inner
            .tenants
            .entry(tenant.to_string())
            .or_default()
            .ready
            .push_front(job.id);
    }

    pub fn stats(&self) -> QueueStats {
        let inner = self.lock();
        let now = unix_now();
        let mut per_tenant: HashMap<String, usize> = HashMap::new();
        for e in inner.entries.values() {
            *per_tenant.entry(e.tenant.clone()).or_default() += 1;
        }
        let instant_now = Instant::now();
        let paused = inner
            .tenants
            .iter()
            .filter_map(|(name, q)| {
                let until = q.paused_until.filter(|u| *u > instant_now)?;
                Some((
                    name.clone(),
                    (
                        until - instant_now,
                        q.pause_reason.clone().unwrap_or_default(),
                    ),
                ))
            })
            .collect();
        QueueStats {
            messages: inner.entries.len(),
            oldest_age: inner
                .by_age
                .first()
                .map(|(t, _)| Duration::from_secs(now.saturating_sub(*t)))
                .unwrap_or_default(),
            per_tenant,
            paused,
        }
    }

    /// Sets `queue_messages` and `queue_oldest_age_seconds`. Called on every insert and
    /// finish, so it reads only the two numbers it needs (O(1) and O(log n)): building the
    /// full [`QueueStats`] here made each insert O(queue length), and the recovery of a
    /// 100,000-message spool quadratic (minutes of CPU before the queue was scheduled).
    pub fn update_gauges(&self) {
        let (messages, oldest) = {
            let inner = self.lock();
            (inner.entries.len(), inner.by_age.first().map(|(t, _)| *t))
        };
        let oldest_age = oldest.map_or(0, |t| unix_now().saturating_sub(t));
        self.metrics.queue_messages.set(messages as i64);
        self.metrics.queue_oldest_age_seconds.set(oldest_age as i64);
    }
}
