//! Inbound SMTP: where local apps hand us mail.

mod conn;
mod data;
mod reply;
