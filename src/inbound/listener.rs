//! The accept loop: who may connect, how many at once, and how the listener winds down.
//!
//! Refusals (client not allowed, too many sessions) are decided before a session exists and
//! are answered with one non-blocking write of the reply, then the socket is closed: a flood
//! of refused connections costs no task and can never stall the loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::Context;
use super::reply::{self, Reply};
use super::session;
use crate::config::ListenerOptions;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The number of open SMTP sessions over every listener, so that `smtp.max_sessions` is one
/// limit for the whole daemon, and per client address for `smtp.max_sessions_per_client`.
/// Counters rather than semaphores because the limits are read from the settings in force at
/// each connection, so a reload that changes them applies at once. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct SessionCount {
    total: Arc<AtomicUsize>,
    /// Open sessions per client address; an address leaves the map with its last session, so
    /// the map never holds more than `smtp.max_sessions` entries.
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a connection got no session.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Full {
    Total,
    Client,
}

impl SessionCount {
    /// Sessions open right now.
    pub fn active(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Sessions open right now from `ip`.
    pub fn active_from(&self, ip: IpAddr) -> usize {
        self.clients().get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new session from `ip` if fewer than `max` are open in all and fewer than
    /// `max_per_client` from that address.
    pub(super) fn try_open(
        &self,
        max: usize,
        max_per_client: usize,
        ip: IpAddr,
        metrics: &Arc<Metrics>,
    ) -> Result<SessionGuard, Full> {
        let ip = ip.to_canonical();
        let mut clients = self.clients();
        if clients.get(&ip).copied().unwrap_or(0) >= max_per_client {
            return Err(Full::Client);
        }
        self.total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Full::Total)?;
        *clients.entry(ip).or_insert(0) += 1;
        drop(clients);
        metrics.smtp_sessions_active.inc();
        Ok(SessionGuard {
            count: self.clone(),
            ip,
            metrics: metrics.clone(),
        })
    }
}

/// One open session in the counts and in `smtp_sessions_active`; dropping it (however the
/// session ends, a panic included) takes it out of all of them, so none can leak.
pub(super) struct SessionGuard {
    count: SessionCount,
    ip: IpAddr,
    metrics: Arc<Metrics>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        {
            let mut clients = self.count.clients();
            if let Some(n) = clients.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    clients.remove(&self.ip);
                }
            }
        }
        self.count.total.fetch_sub(1, Ordering::SeqCst);
        self.metrics.smtp_sessions_active.dec();
    }
}

/// Whether `ip` is in one of `nets`. An IPv4 client on a dual-stack socket shows up as
/// `::ffff:a.b.c.d`; it matches the IPv4 networks (and any IPv6 net spelled for it).
pub(super) fn is_allowed(ip: IpAddr, nets: &[IpNet]) -> bool {
    let canonical = ip.to_canonical();
    nets.iter()
        .any(|net| net.contains(&ip) || net.contains(&canonical))
}

/// How long to pause after a failed accept (out of file descriptors, say) before trying again,
/// so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// See [`crate::inbound::serve`].
pub(super) async fn serve(
    listener: TcpListener,
    options: ListenerOptions,
    ctx: Arc<Context>,
    mut shutdown: Shutdown,
    drain: Duration,
) {
    let local = listener.local_addr().ok();
    let options = Arc::new(options);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown first: once it is asked for, no connection is taken any more.
            biased;
            () = shutdown.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(guard) = admit(&stream, peer.ip(), &ctx) {
                        sessions.spawn(session::run(
                            stream,
                            peer.ip().to_canonical(),
                            options.clone(),
                            ctx.clone(),
                            shutdown.clone(),
                            guard,
                        ));
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = ?local, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = sessions.join_next(), if !sessions.is_empty() => report(done),
        }
    }
    drop(listener);

    if !sessions.is_empty() {
        tracing::info!(
            listener = ?local,
            sessions = sessions.len(),
            "waiting for SMTP sessions to finish"
        );
    }
    let drained = tokio::time::timeout(drain, async {
        while let Some(done) = sessions.join_next().await {
            report(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = ?local,
            sessions = sessions.len(),
            "SMTP sessions still open after the drain period; closing them (no message they were sending was acknowledged)"
        );
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
}

/// Decides whether a new connection gets a session; answers it if not.
fn admit(stream: &TcpStream, ip: IpAddr, ctx: &Context) -> Option<SessionGuard> {
    let settings = ctx.settings.borrow().clone();
    let smtp = &settings.config.smtp;
    if !is_allowed(ip, &smtp.allowed_clients) {
        let ip = ip.to_canonical();
        tracing::warn!(client = %ip, "connection refused: not in smtp.allowed_clients");
        refuse(
            stream,
            &Reply::new(554, format!("5.7.1 {ip} not allowed to relay")),
        );
        return None;
    }
    let opened = ctx.sessions.try_open(
        smtp.max_sessions,
        smtp.max_sessions_per_client,
        ip,
        &ctx.metrics,
    );
    let guard = match opened {
        Ok(guard) => guard,
        Err(Full::Total) => {
            tracing::warn!(
                client = %ip.to_canonical(),
                max_sessions = smtp.max_sessions,
                "connection refused: too many SMTP sessions"
            );
            refuse(stream, &reply::TOO_MANY_CONNECTIONS);
            return None;
        }
        Err(Full::Client) => {
            tracing::warn!(
                client = %ip.to_canonical(),
                max_sessions_per_client = smtp.max_sessions_per_client,
                "connection refused: too many SMTP sessions from this client"
            );
            refuse(stream, &reply::TOO_MANY_CLIENT_CONNECTIONS);
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    Some(guard)
}

/// Best effort: a fresh socket's send buffer always has room for one line, and if it does not
/// the client is not worth waiting for.
fn refuse(stream: &TcpStream, reply: &Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = stream.try_write(&out);
}

fn report(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "SMTP session task panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn allowlist_matches_mapped_addresses() {
        let v4 = nets(&["127.0.0.0/8", "::1/128"]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(is_allowed(ip("127.0.0.1"), &v4));
        assert!(is_allowed(ip("::ffff:127.0.0.5"), &v4));
        assert!(is_allowed(ip("::1"), &v4));
        assert!(!is_allowed(ip("10.0.0.1"), &v4));
        assert!(!is_allowed(ip("::ffff:10.0.0.1"), &v4));
        assert!(!is_allowed(ip("::2"), &v4));
        let v6 = nets(&["::ffff:10.0.0.0/104"]);
        assert!(is_allowed(ip("::ffff:10.1.2.3"), &v6));
        assert!(!is_allowed(ip("127.0.0.1"), &v6));
    }

    #[test]
    fn session_count_is_bounded_and_released() {
        let metrics = Arc::new(Metrics::new());
        let count = SessionCount::default();
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let a = count.try_open(2, 10, ip, &metrics).expect("first");
        let b = count.try_open(2, 10, ip, &metrics).expect("second");
        assert_eq!(count.try_open(2, 10, ip, &metrics).err(), Some(Full::Total));
        assert_eq!(metrics.smtp_sessions_active.get(), 2);
        drop(a);
        assert_eq!(count.active(), 1);
        let _c = count.try_open(2, 10, ip, &metrics).expect("room again");
        drop(b);
        assert_eq!(count.active(), 1);
        assert_eq!(metrics.smtp_sessions_active.get(), 1);
    }

    #[test]
    fn per_client_count_is_bounded_and_released() {
        let metrics = Arc::new(Metrics::new());
        let count = SessionCount::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let first = count.try_open(10, 2, a, &metrics).expect("first");
        let _second = count.try_open(10, 2, mapped, &metrics).expect("second");
        assert_eq!(count.try_open(10, 2, a, &metrics).err(), Some(Full::Client));
        let _other = count.try_open(10, 2, b, &metrics).expect("another client");
        assert_eq!(count.active_from(a), 2);
        drop(first);
        assert_eq!(count.active_from(a), 1);
        let _third = count.try_open(10, 2, a, &metrics).expect("room again");
        assert_eq!(count.active(), 3);
    }
}
