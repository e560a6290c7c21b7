//! Inbound SMTP: where local apps hand us mail.
//!
//! Plain SMTP (RFC 5321) with PIPELINING, SIZE, 8BITMIME and ENHANCEDSTATUSCODES, for clients
//! on an allowlist. Command lines are parsed by `smtp-proto`; the session state machine,
//! limits, timeouts and DATA handling are ours. A message is acknowledged with `250` only
//! after the spool has made it durable, and then handed to delivery through
//! [`Context::accepted`].
//!
//! - `listener`: accept loop, client allowlist, the global session limit, draining
//! - `session`: the state machine over one connection
//! - `data`: DATA content, dot-unstuffing streamed into the spool, the trace header
//! - `conn`: bounded line reads and batched replies
//! - `reply`: the reply texts

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::queue::{Envelope, Spool};
use crate::server::Settings;

mod conn;
mod data;
mod listener;
mod reply;
mod session;

pub use listener::SessionCount;

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
}

/// Serves one bound listener until shutdown, then stops accepting and waits (bounded by
/// `drain`) for sessions in flight to finish: a session in the middle of DATA finishes its
/// message; idle sessions get `421 4.3.2 Service shutting down` and are closed. Sessions still
/// open when `drain` runs out are cut off; nothing they were sending had been acknowledged.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Context>,
    shutdown: crate::shutdown::Shutdown,
    drain: std::time::Duration,
) {
    listener::serve(listener, ctx, shutdown, drain).await;
}

#[cfg(test)]
mod tests;
