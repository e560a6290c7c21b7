//! Inbound SMTP: where local apps hand us mail.
//!
//! Plain SMTP (RFC 5321) with PIPELINING, SIZE, 8BITMIME and ENHANCEDSTATUSCODES, for clients
//! on an allowlist. Command lines are parsed by `smtp-proto`; the session state machine,
//! limits, timeouts and DATA handling are ours. A message is acknowledged with `250` only
//! after the spool has made it durable, and then handed to delivery through
//! [`Context::accepted`].
//!
//! Access control beyond the allowlist: optional SMTP AUTH (PLAIN, LOGIN) against
//! `[[smtp.user]]`, STARTTLS and implicit TLS listeners, and limits per client address
//! (sessions, messages per minute, failed logins) so one noisy app cannot crowd out the rest.
//!
//! - `listener`: accept loop, client allowlist, the session limits, draining
//! - `session`: the state machine over one connection (STARTTLS and AUTH included)
//! - `auth`: SASL PLAIN and LOGIN decoding, Argon2 password checks
//! - `tls`: the rustls server config from `[smtp]`, rebuilt on reload
//! - `limits`: per-client rates (messages, failed logins)
//! - `data`: DATA content, dot-unstuffing streamed into the spool, the trace header
//! - `conn`: bounded line reads and batched replies
//! - `reply`: the reply texts

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::queue::{Envelope, Spool};
use crate::server::Settings;

mod auth;
mod conn;
mod data;
mod limits;
mod listener;
mod reply;
mod session;
mod tls;

pub use crate::config::ListenerOptions;
pub use auth::hash_password;
pub use data::{Feed, Unstuffer};
pub use limits::ClientLimits;
pub use listener::SessionCount;
pub use tls::TlsCache;

/// What every SMTP session shares. One per daemon, shared by all listeners.
pub struct Context {
    /// The settings in force; read once per session and again at each transaction.
    pub settings: watch::Receiver<Arc<Settings>>,
    pub spool: Spool,
    /// Every committed envelope is sent here for the delivery side to pick up.
    pub accepted: mpsc::UnboundedSender<Envelope>,
    pub metrics: Arc<Metrics>,
    /// Open sessions over all listeners, checked against `smtp.max_sessions` at each accept.
    /// Build it with `SessionCount::default()`.
    pub sessions: SessionCount,
    /// Per-client message rates and failed logins. `ClientLimits::default()`.
    pub limits: ClientLimits,
    /// The TLS server config for the settings in force. `TlsCache::default()`.
    pub tls: TlsCache,
}

/// Serves one bound listener until shutdown, then stops accepting and waits (bounded by
/// `drain`) for sessions in flight to finish: a session in the middle of DATA finishes its
/// message; idle sessions get `421 4.3.2 Service shutting down` and are closed. Sessions still
/// open when `drain` runs out are cut off; nothing they were sending had been acknowledged.
///
/// `options` are the listener's own (TLS mode, AUTH override, bound tenant), as
/// [`crate::config::SmtpConfig::listeners`] gives them; they hold until restart, while
/// everything under `[smtp]` (users, certificate, limits) follows reloads.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: ListenerOptions,
    ctx: Arc<Context>,
    shutdown: crate::shutdown::Shutdown,
    drain: std::time::Duration,
) {
    listener::serve(listener, options, ctx, shutdown, drain).await;
}

/// Runs one SMTP session over any byte stream, as if `peer` had connected to a plain listener
/// with `options`: the same state machine, limits and spool as a listener's sessions, without
/// the allowlist and the session count (the caller decides who gets here). For tests and
/// fuzzing over an in-memory pipe such as `tokio::io::duplex`; returns when the session ends.
pub async fn serve_stream<S>(
    stream: S,
    peer: std::net::IpAddr,
    options: ListenerOptions,
    ctx: Arc<Context>,
    shutdown: crate::shutdown::Shutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let options = Arc::new(options);
    session::serve_stream(Box::new(stream), peer, false, options, ctx, shutdown, None).await;
}

/// A cheap Argon2 hash for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn cheap_hash_for_tests(password: &str) -> String {
    auth::cheap_hash(password)
}

#[cfg(test)]
mod tests;
