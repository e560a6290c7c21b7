//! The queue: durable storage ([`spool`]) and the scheduler that hands messages to delivery.

pub mod spool;

pub use spool::{Envelope, Incoming, RcptStatus, Recipient, Spool, SpoolError, State};
