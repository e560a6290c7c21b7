//! Certificate credentials: a JWT client assertion signed with the app's private key, the
//! form Microsoft recommends over client secrets (a secret is a password that expires; a
//! certificate's key never leaves this machine).
//!
//! Format (Microsoft identity platform "certificate credentials"): header
//! `{"alg":"RS256","typ":"JWT","x5t#S256":base64url(sha256(cert DER))}`, claims `aud` = the
//! token URL, `iss` = `sub` = client id, `jti` random, `nbf`/`iat` now, `exp` in 10 minutes.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Builds and signs an assertion. Errors are plain strings naming the file at fault.
pub fn sign(
    cert_file: &Path,
    key_file: &Path,
    client_id: &str,
    aud: &str,
) -> Result<String, String> {
    let cert = CertificateDer::from_pem_file(cert_file)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", cert_file.display()))?;
    let key = match PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key_file.display()))?
    {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => {
            return Err(format!(
                "{}: needs an RSA key (PKCS#8 or PKCS#1)",
                key_file.display()
            ));
        }
    }
    .map_err(|e| format!("{}: unusable RSA key: {e}", key_file.display()))?;

    let thumb = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t#S256": URL_SAFE_NO_PAD.encode(thumb.as_ref()),
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rng = SystemRandom::new();
    let mut jti = [0u8; 16];
    rng.fill(&mut jti)
        .map_err(|_| "no randomness available".to_string())?;
    let claims = serde_json::json!({
        "aud": aud,
        "iss": client_id,
        "sub": client_id,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut sig)
        .map_err(|_| "signing the client assertion failed".to_string())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}
