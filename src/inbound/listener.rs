//! The accept loop: who may connect, how many at once, and how the listener winds down.
//!
//! Refusals (client not allowed, too many sessions) are decided before a session exists and
//! are answered with one non-blocking write of the reply, then the socket is closed: a flood
//! of refused connections costs no task and can never stall the loop.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::Context;
use super::reply::{self, Reply};
use super::session;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The number of open SMTP sessions over every listener, so that `smtp.max_sessions` is one
/// limit for the whole daemon. A counter rather than a semaphore because the limit is read
/// from the settings in force at each connection, so a reload that changes it applies at
/// once. Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct SessionCount(Arc<AtomicUsize>);

impl SessionCount {
    /// Sessions open right now.
    pub fn active(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts a new session if fewer than `max` are open.
    fn try_open(&self, max: usize, metrics: &Arc<Metrics>) -> Option<SessionGuard> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics.smtp_sessions_active.inc();
        Some(SessionGuard {
            count: self.0.clone(),
            metrics: metrics.clone(),
        })
    }
}

/// One open session in the count and in `smtp_sessions_active`; dropping it (however the
/// session ends, a panic included) takes it out of both, so neither can leak.
pub(super) struct SessionGuard {
    count: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
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
    ctx: Arc<Context>,
    mut shutdown: Shutdown,
    drain: Duration,
) {
    let local = listener.local_addr().ok();
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
    let Some(guard) = ctx.sessions.try_open(smtp.max_sessions, &ctx.metrics) else {
        tracing::warn!(
            client = %ip.to_canonical(),
            max_sessions = smtp.max_sessions,
            "connection refused: too many SMTP sessions"
        );
        refuse(stream, &reply::TOO_MANY_CONNECTIONS);
        return None;
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
        let a = count.try_open(2, &metrics).expect("first");
        let b = count.try_open(2, &metrics).expect("second");
        assert!(count.try_open(2, &metrics).is_none());
        assert_eq!(metrics.smtp_sessions_active.get(), 2);
        drop(a);
        assert_eq!(count.active(), 1);
        let _c = count.try_open(2, &metrics).expect("room again");
        drop(b);
        assert_eq!(count.active(), 1);
        assert_eq!(metrics.smtp_sessions_active.get(), 1);
    }
}
