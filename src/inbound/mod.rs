//! Inbound SMTP: where local apps hand us mail.
