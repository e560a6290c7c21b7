//! The durable spool (placeholder: only the DSN builder lives here so far).

pub mod dsn;
