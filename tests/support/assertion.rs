//! JWT client assertions (RFC 7523), the certificate credential of an Entra app.
//!
//! [`client_assertion`] builds one the way Microsoft documents it (RS256, `x5t#S256` header,
//! `aud` = token URL, `iss` = `sub` = client id) so tests can drive the fake by hand; the relay
//! has its own implementation in `src/`. [`verify`] is the fake Entra's side of the check.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use super::directory::random_token;

/// A client assertion for `client_id`, valid for 10 minutes, signed RS256 with `key_pem`
/// (PKCS#8 PEM) and naming `cert_pem` by its SHA-256 thumbprint.
pub fn client_assertion(cert_pem: &str, key_pem: &str, client_id: &str, token_url: &str) -> String {
    let now = unix_now();
    let header = json!({ "alg": "RS256", "typ": "JWT", "x5t#S256": x5t_s256(cert_pem) });
    let claims = json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": random_token(16),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    sign_jwt(key_pem, &header, &claims)
}

/// Signs arbitrary header and claims (for negative tests: expired, wrong `aud`, PS256 ...).
/// `header["alg"]` picks the algorithm: `RS256` (default) or `PS256`.
pub fn sign_jwt(key_pem: &str, header: &Value, claims: &Value) -> String {
    let alg: &'static dyn signature::RsaEncoding = match header["alg"].as_str() {
        Some("PS256") => &signature::RSA_PSS_SHA256,
        _ => &signature::RSA_PKCS1_SHA256,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).expect("PKCS#8 PEM key");
    let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("RSA PKCS#8 key");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(alg, &SystemRandom::new(), input.as_bytes(), &mut sig)
        .expect("RSA signing");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// base64url(SHA-256(certificate DER)): the `x5t#S256` header value.
pub fn x5t_s256(cert_pem: &str) -> String {
    let der = cert_der(cert_pem).expect("certificate PEM");
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der))
}

/// base64url(SHA-1(certificate DER)): the legacy `x5t` header value, still accepted.
pub fn x5t_sha1(cert_pem: &str) -> String {
    let der = cert_der(cert_pem).expect("certificate PEM");
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &der,
    ))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn cert_der(cert_pem: &str) -> Option<Vec<u8>> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// Why an assertion was refused: an AADSTS number and message.
#[derive(Debug)]
pub(crate) struct AssertionError {
    pub code: u32,
    pub message: String,
}

fn refuse(code: u32, message: impl Into<String>) -> AssertionError {
    AssertionError {
        code,
        message: message.into(),
    }
}

/// Checks a client assertion against the app's registered certificate, as Entra does:
/// signature (RS256 or PS256) by the certificate's key, thumbprint header, `aud`, `iss`,
/// `sub`, `exp`, `nbf`, `jti`.
pub(crate) fn verify(
    jwt: &str,
    cert_pem: &str,
    client_id: &str,
    token_url: &str,
    now: u64,
) -> Result<(), AssertionError> {
    let malformed = |why: &str| refuse(50027, format!("JWT token is invalid or malformed. {why}"));
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h64, c64, s64] = parts.as_slice() else {
        return Err(malformed("A JWT has three dot-separated parts."));
    };
    let decode_json = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let header = decode_json(h64).ok_or_else(|| malformed("The header is not base64url JSON."))?;
    let claims = decode_json(c64).ok_or_else(|| malformed("The payload is not base64url JSON."))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| malformed("The signature is not base64url."))?;

    let der =
        cert_der(cert_pem).ok_or_else(|| malformed("The registered certificate is unreadable."))?;
    let (presented, expected) = if let Some(t) = header["x5t#S256"].as_str() {
        (
            t.to_string(),
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der)),
        )
    } else if let Some(t) = header["x5t"].as_str() {
        (
            t.to_string(),
            URL_SAFE_NO_PAD.encode(ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                &der,
            )),
        )
    } else {
        return Err(refuse(
            700027,
            "Client assertion failed signature validation. [Reason - The key was not found., \
             no 'x5t#S256' or 'x5t' header in the assertion]",
        ));
    };
    if presented != expected {
        return Err(refuse(
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not \
                 registered on application. [Reason - The key was not found., Thumbprint of key \
                 used by client: '{presented}']"
            ),
        ));
    }
    let alg: &dyn signature::VerificationAlgorithm = match header["alg"].as_str() {
        Some("RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &signature::RSA_PSS_2048_8192_SHA256,
        other => {
            return Err(refuse(
                5002730,
                format!(
                    "Invalid JWT token. Unsupported signing algorithm {other:?}: use RS256 or PS256."
                ),
            ));
        }
    };
    let public_key = rsa_public_key(&der)
        .ok_or_else(|| malformed("The registered certificate has no RSA key."))?;
    let signed = format!("{h64}.{c64}");
    UnparsedPublicKey::new(alg, public_key)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| {
            refuse(
                7000274,
                "Client assertion contains an invalid signature. [Reason - Key was found, but use \
                 of the key to verify the signature failed.]",
            )
        })?;

    if claims["aud"].as_str() != Some(token_url) {
        return Err(malformed(&format!(
            "The 'aud' claim {} is not the token endpoint '{token_url}'.",
            claims["aud"]
        )));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err(refuse(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let exp = claims["exp"]
        .as_u64()
        .ok_or_else(|| malformed("The 'exp' claim is missing."))?;
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if exp <= now || nbf > now + 300 {
        return Err(refuse(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {now}, \
                 assertion valid from {nbf}, expiry time of assertion {exp}."
            ),
        ));
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err(malformed("The 'jti' claim is missing."));
    }
    Ok(())
}

/// The `RSAPublicKey` inside a certificate's SubjectPublicKeyInfo, the form ring verifies with.
/// A minimal DER walk: Certificate > TBSCertificate > (version, serial, signature, issuer,
/// validity, subject) > SubjectPublicKeyInfo > BIT STRING.
fn rsa_public_key(cert_der: &[u8]) -> Option<&[u8]> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (0x30, cert, _) = der_tlv(cert_der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after_version) = der_tlv(rest)?;
    if tag == 0xa0 {
        rest = after_version;
    }
    for _ in 0..5 {
        rest = der_tlv(rest)?.2;
    }
    let (0x30, spki, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x30, alg, after_alg) = der_tlv(spki)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(alg)? else {
        return None;
    };
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (0x03, bits, _) = der_tlv(after_alg)? else {
        return None;
    };
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

/// One DER tag-length-value: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}
