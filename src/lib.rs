//! authrelay: a local SMTP relay that delivers to Microsoft 365 with OAuth 2.0 (XOAUTH2).

pub mod queue;
pub mod rewrite;
