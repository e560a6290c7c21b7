//! authrelay: a local SMTP relay that delivers to Microsoft 365 with OAuth 2.0 (XOAUTH2).
//!
//! The modules follow a message's journey: [`inbound`] accepts it over SMTP, [`routing`]
//! picks its tenant, [`queue`] makes it durable and schedules delivery, [`rewrite`] turns it
//! into something Exchange Online will take from our mailbox, and [`outbound`] delivers it
//! with a token from [`oauth`]. [`server`] wires them together; [`cli`] holds the one-shot
//! commands. Around them, [`admin`] serves metrics, health and the status page, [`watch`]
//! warns before a tenant's client secret expires, and [`systemd`] keeps the service manager
//! informed.

pub mod admin;
pub mod cli;
pub mod config;
pub mod inbound;
pub mod metrics;
pub mod oauth;
pub mod outbound;
pub mod queue;
pub mod rewrite;
pub mod routing;
pub mod sendmail;
pub mod server;
pub mod shutdown;
pub mod submit;
pub mod systemd;
pub mod watch;
