//! TLS for the upstream: the system's trust store plus Mozilla's roots, plus the tenant's
//! `tls_ca_file` (a proxy in between, a sovereign cloud, or the test stand-in). One crypto
//! provider, ring, chosen explicitly: two providers in one process panic at start.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The system and Mozilla roots, loaded once: reading the system store takes milliseconds we
/// don't want on every connection.
fn base_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        roots
    })
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A connector trusting the base roots and, if given, the certificates in `ca_file`.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(Arc::new(client_config(ca_file)?)))
}

/// The client configuration behind [`connector`], also used for HTTPS to Microsoft Graph so
/// that both transports trust the same roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = base_roots().clone();
    if let Some(path) = ca_file {
        let err = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificates in file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
