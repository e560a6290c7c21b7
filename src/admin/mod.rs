//! Admin HTTP.
pub mod oauth;
