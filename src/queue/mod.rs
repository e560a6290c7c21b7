//! The queue: durable storage ([`spool`]), the scheduler that decides what goes next
//! ([`scheduler`], [`pacing`]), the workers that hand messages to `outbound`
//! ([`delivery`]), and the bounces for what cannot be delivered ([`dsn`]).

pub mod delivery;
pub mod dsn;
pub mod pacing;
pub mod scheduler;
pub mod spool;

pub use spool::{Envelope, Incoming, RcptStatus, Recipient, Spool, SpoolError, State};
