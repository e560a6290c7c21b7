//! Limits per client address, so that one noisy or hostile app cannot hurt the others:
//! messages per minute, failed AUTH attempts, and how many password checks run at once.
//!
//! Rates use GCRA (the "generic cell rate algorithm", a leaky bucket that stores one instant
//! per client): `limit` events per `window` may come in one burst, after which one more is
//! allowed every `window / limit`. The maps hold at most [`MAX_CLIENTS`] addresses; entries
//! that have drained are dropped first when the map is full, then the ones closest to
//! draining, so memory stays bounded whatever the number of addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Most client addresses one rate map remembers.
pub(super) const MAX_CLIENTS: usize = 10_000;

/// Password checks (Argon2, memory-hard on purpose) running at once over all sessions: a
/// flood of AUTH attempts queues here instead of eating every core and gigabytes of memory.
const CONCURRENT_VERIFICATIONS: usize = 2;

/// What the sessions share about client addresses. Build it with `ClientLimits::default()`.
pub struct ClientLimits {
    pub(super) messages: Rate,
    pub(super) auth_failures: Rate,
    pub(super) verifications: Semaphore,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            messages: Rate::default(),
            auth_failures: Rate::default(),
            verifications: Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits").finish_non_exhaustive()
    }
}

/// One GCRA rate per client address.
#[derive(Debug, Default)]
pub(super) struct Rate {
    /// The "theoretical arrival time" per address: when its bucket is empty again.
    clients: Mutex<HashMap<IpAddr, Instant>>,
}

/// The spacing between events and the burst allowed, for `limit` per `window`.
fn shape(limit: u32, window: Duration) -> (Duration, Duration) {
    let interval = window / limit.max(1);
    (interval, window.saturating_sub(interval))
}

impl Rate {
    /// Counts one event for `ip` if it is within `limit` per `window`; false (and nothing
    /// counted) if not. `limit` 0 means no limit.
    pub fn try_acquire(&self, ip: IpAddr, limit: u32, window: Duration, now: Instant) -> bool {
        if limit == 0 {
            return true;
        }
        let (interval, burst) = shape(limit, window);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let key = ip.to_canonical();
        let tat = clients.get(&key).copied().unwrap_or(now).max(now);
        if tat.duration_since(now) > burst {
            return false;
        }
        if !clients.contains_key(&key) {
            make_room(&mut clients, now);
        }
        clients.insert(key, tat + interval);
        true
    }

    /// Whether `ip` has used up its allowance (without counting anything).
    pub fn is_limited(&self, ip: IpAddr, limit: u32, window: Duration, now: Instant) -> bool {
        if limit == 0 {
            return false;
        }
        let (_, burst) = shape(limit, window);
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .get(&ip.to_canonical())
            .is_some_and(|tat| tat.saturating_duration_since(now) > burst)
    }

    /// Counts one event for `ip` unconditionally (a failure that already happened).
    pub fn record(&self, ip: IpAddr, limit: u32, window: Duration, now: Instant) {
        if limit == 0 {
            return;
        }
        let (interval, _) = shape(limit, window);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let key = ip.to_canonical();
        let tat = clients.get(&key).copied().unwrap_or(now).max(now);
        if !clients.contains_key(&key) {
            make_room(&mut clients, now);
        }
        clients.insert(key, tat + interval);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Keeps the map under [`MAX_CLIENTS`]: drained entries go first, then the one that would
/// drain soonest.
fn make_room(clients: &mut HashMap<IpAddr, Instant>, now: Instant) {
    if clients.len() < MAX_CLIENTS {
        return;
    }
    clients.retain(|_, tat| *tat > now);
    while clients.len() >= MAX_CLIENTS {
        let Some(oldest) = clients.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip) else {
            return;
        };
        clients.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn burst_then_steady_rate() {
        let r = Rate::default();
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let a = ip("127.0.0.1");
        for _ in 0..3 {
            assert!(r.try_acquire(a, 3, min, t0));
        }
        assert!(!r.try_acquire(a, 3, min, t0));
        assert!(!r.try_acquire(a, 3, min, t0 + Duration::from_secs(19)));
        // One more every 20 s.
        assert!(r.try_acquire(a, 3, min, t0 + Duration::from_secs(20)));
        assert!(!r.try_acquire(a, 3, min, t0 + Duration::from_secs(21)));
        // Another address has its own allowance; the mapped form is the same address.
        assert!(r.try_acquire(ip("127.0.0.2"), 3, min, t0));
        assert!(!r.try_acquire(ip("::ffff:127.0.0.1"), 3, min, t0 + Duration::from_secs(21)));
        // A full window later the whole burst is back.
        let later = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            assert!(r.try_acquire(a, 3, min, later));
        }
        // 0 means unlimited.
        for _ in 0..100 {
            assert!(r.try_acquire(a, 0, min, t0));
        }
    }

    #[test]
    fn failures_lock_out_then_cool_down() {
        let r = Rate::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let a = ip("192.0.2.7");
        for n in 0..5 {
            assert!(!r.is_limited(a, 5, window, t0), "after {n} failures");
            r.record(a, 5, window, t0);
        }
        assert!(r.is_limited(a, 5, window, t0));
        assert!(r.is_limited(a, 5, window, t0 + Duration::from_secs(59)));
        assert!(!r.is_limited(a, 5, window, t0 + Duration::from_secs(60)));
        assert!(!r.is_limited(ip("192.0.2.8"), 5, window, t0));
    }

    #[test]
    fn memory_is_bounded() {
        let r = Rate::default();
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        for n in 0..(MAX_CLIENTS as u32 + 500) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            r.record(a, 5, min, t0 + Duration::from_millis(u64::from(n)));
        }
        assert!(r.len() <= MAX_CLIENTS);
        // The newest is still remembered.
        let last = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_CLIENTS as u32 + 499,
        ));
        assert!(r.len() >= MAX_CLIENTS - 1);
        r.record(last, 1, min, t0);
        assert!(r.is_limited(last, 1, min, t0));
    }
}
