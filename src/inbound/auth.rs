//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, checked against
//! Argon2 password hashes from `[[smtp.user]]`.
//!
//! The exchange itself (the `334` challenges) lives in the session; this module decodes what
//! the client sends and checks passwords. Passwords are never logged, echoed or kept beyond
//! the check.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// `334` challenges of the LOGIN mechanism: "Username:" and "Password:" in base64.
pub(super) const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
pub(super) const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// A name and password a client offered.
pub(super) struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.password.fill(0);
    }
}

/// Why a client's SASL message is not usable.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SaslError {
    /// The client answered `*` (RFC 4954 4).
    Cancelled,
    /// Not base64, or not the shape the mechanism prescribes.
    Malformed,
}

/// Decodes one base64 line of the exchange (the CRLF already removed). `*` cancels; `=` is
/// an empty initial response.
pub(super) fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        _ => BASE64.decode(line).map_err(|_| SaslError::Malformed),
    }
}

/// PLAIN: `authzid NUL authcid NUL password`. We only act as the user who authenticates, so
/// an authorisation identity other than that user is refused.
pub(super) fn plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let user = username(user)?;
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        user,
        password: password.to_vec(),
    })
}

/// A user name as the client sent it: UTF-8, no NUL.
pub(super) fn username(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.contains(&0) {
        return Err(SaslError::Malformed);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::Malformed)
}

/// Whether `password` matches the PHC string `phc`. Slow on purpose: call it off the async
/// threads.
pub(super) fn verify(phc: &str, password: &[u8]) -> bool {
    Argon2::default().verify_password(password, phc).is_ok()
}

/// Hashes a password for `[[smtp.user]] password_hash`: Argon2id with the crate's default
/// parameters and a random salt, as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// A hash as [`hash_password`] makes it, with the cheapest parameters Argon2 allows, so
/// tests in debug builds do not spend seconds per check.
#[cfg(test)]
pub(crate) fn cheap_hash(password: &str) -> String {
    use argon2::{Algorithm, Params, Version};
    let params = Params::new(8, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let c = plain(b"\0app01\0pw").expect("plain");
        assert_eq!(
            (c.user.as_str(), c.password.as_slice()),
            ("app01", &b"pw"[..])
        );
        let c = plain(b"app01\0app01\0p\0w").expect("authzid = authcid");
        assert_eq!(c.password, b"p\0w");
        assert!(plain(b"admin\0app01\0pw").is_err());
        assert!(plain(b"app01pw").is_err());
        assert!(plain(b"\0app01").is_err());
        assert!(plain(b"\0\xff\0pw").is_err());
    }

    #[test]
    fn decoding() {
        assert_eq!(decode(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode(b"="), Ok(Vec::new()));
        assert_eq!(decode(b"AGEAYg=="), Ok(b"\0a\0b".to_vec()));
        assert_eq!(decode(b"AGEAYg== "), Ok(b"\0a\0b".to_vec()));
        assert_eq!(decode(b"not base64!"), Err(SaslError::Malformed));
        assert_eq!(
            BASE64.decode(LOGIN_USERNAME).expect("b64"),
            b"Username:".to_vec()
        );
        assert_eq!(
            BASE64.decode(LOGIN_PASSWORD).expect("b64"),
            b"Password:".to_vec()
        );
    }

    #[test]
    fn hashes_verify() {
        let h = cheap_hash("correct horse");
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify(&h, b"correct horse"));
        assert!(!verify(&h, b"correct horse "));
        assert!(!verify("not a hash", b"x"));
    }
}
