//! authrelay: a local SMTP relay that delivers to Microsoft 365 with OAuth 2.0 (XOAUTH2).
//!
//! The modules follow a message's journey: [`inbound`] accepts it over SMTP, [`routing`]
//! picks its tenant, [`queue`] makes it durable and schedules delivery, [`rewrite`] turns it
//! into something Exchange Online will take from our mailbox, and [`outbound`] delivers it
//! with a token from [`oauth`]. [`admin`], [`watch`] and [`systemd`] are how operators see it.

pub mod config;
pub mod inbound;
pub mod metrics;
pub mod queue;
pub mod routing;
pub mod server;
pub mod shutdown;
