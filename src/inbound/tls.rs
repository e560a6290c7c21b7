//! TLS for the listeners: STARTTLS (RFC 3207) and implicit TLS, with the certificate and key
//! named in `[smtp]`.
//!
//! The rustls server config is built from the settings in force when a session needs it and
//! kept until the settings change, so after SIGHUP new sessions get the renewed certificate
//! while sessions in progress keep theirs. It uses the `ring` provider explicitly, never the
//! process default (two providers in one binary make rustls refuse to pick).

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::server::Settings;

/// Whether a connection comes from this machine, so that credentials cross no network even
/// without TLS. The only kind of connection that may authenticate in clear text.
pub(super) fn is_local(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Builds the server side of TLS from PEM files.
pub(super) fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

/// An acceptor (or why there is none) and the version of the settings it was built from.
type Built = (Weak<Settings>, Result<TlsAcceptor, String>);

/// The acceptor for the settings in force, built once per version of the settings.
#[derive(Default)]
pub struct TlsCache {
    current: Mutex<Option<Built>>,
}

impl std::fmt::Debug for TlsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCache").finish_non_exhaustive()
    }
}

impl TlsCache {
    /// The acceptor for `settings`, or why there is none. A failure is logged once per
    /// version of the settings, not at every connection.
    pub(super) fn acceptor(&self, settings: &Arc<Settings>) -> Result<TlsAcceptor, String> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((version, acceptor)) = current.as_ref()
            && std::ptr::eq(version.as_ptr(), Arc::as_ptr(settings))
        {
            return acceptor.clone();
        }
        let smtp = &settings.config.smtp;
        let acceptor = match (&smtp.tls_certificate_file, &smtp.tls_key_file) {
            (Some(cert), Some(key)) => server_config(cert, key).map(TlsAcceptor::from),
            _ => Err("smtp.tls_certificate_file and smtp.tls_key_file are not set".into()),
        };
        if let Err(e) = &acceptor {
            tracing::error!(error = %e, "cannot load the TLS certificate; TLS is unavailable until the next reload");
        }
        *current = Some((Arc::downgrade(settings), acceptor.clone()));
        acceptor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_local() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(is_local(ip("127.0.0.1")));
        assert!(is_local(ip("127.8.9.10")));
        assert!(is_local(ip("::1")));
        assert!(is_local(ip("::ffff:127.0.0.1")));
        assert!(!is_local(ip("10.0.0.1")));
        assert!(!is_local(ip("::ffff:192.0.2.1")));
        assert!(!is_local(ip("2001:db8::1")));
        assert!(!is_local(ip("0.0.0.0")));
    }
}
