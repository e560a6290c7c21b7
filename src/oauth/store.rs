//! The token store: one file per tenant under `state_dir/tokens/`, so a restart reuses the
//! current access token and, for delegated tenants, keeps the refresh token that a person
//! once granted. Files are mode 0600 and replaced atomically (temp file, fsync, rename): a
//! crash mid-write must never lose a rotated refresh token, because the old one is already
//! invalid at Microsoft.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: unreadable token file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub access_token: String,
    /// Unix milliseconds (short test lifetimes need better than seconds).
    pub expires_at_ms: u64,
    /// Unix milliseconds when it was granted, to compute the lifetime for the refresh margin.
    pub obtained_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Which client id and scope the token was granted for; a config change invalidates it.
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub scope: String,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish()
    }
}

impl StoredToken {
    pub fn access(&self) -> Secret {
        Secret(self.access_token.clone())
    }
    pub fn refresh(&self) -> Option<Secret> {
        self.refresh_token.clone().map(Secret)
    }
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_at_ms)
    }
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(self.obtained_at_ms))
    }
}

#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    pub fn open(state_dir: &Path) -> Result<TokenStore, StoreError> {
        let dir = state_dir.join("tokens");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        // The directory holds credentials: owner only.
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        Ok(TokenStore { dir })
    }

    pub fn path(&self, tenant: &str) -> PathBuf {
        self.dir.join(format!("{tenant}.json"))
    }

    pub fn load(&self, tenant: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path(tenant);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    pub fn save(&self, tenant: &str, token: &StoredToken) -> Result<(), StoreError> {
        let path = self.path(tenant);
        let tmp = self.dir.join(format!(".{tenant}.json.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let json = serde_json::to_vec_pretty(token).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    pub fn remove(&self, tenant: &str) {
        let _ = std::fs::remove_file(self.path(tenant));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_atomically_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::open(dir.path()).expect("open");
        assert!(store.load("t").expect("load").is_none());
        let tok = StoredToken {
            access_token: "at".into(),
            expires_at_ms: 100_000,
            obtained_at_ms: 40_000,
            refresh_token: Some("rt1".into()),
            client_id: "c".into(),
            scope: "s".into(),
        };
        store.save("t", &tok).expect("save");
        let again = StoredToken {
            refresh_token: Some("rt2".into()),
            ..tok
        };
        store.save("t", &again).expect("save again");
        let loaded = store.load("t").expect("load").expect("present");
        assert_eq!(loaded.refresh_token.as_deref(), Some("rt2"));
        assert_eq!(loaded.lifetime(), Duration::from_secs(60));
        let mode = std::fs::metadata(store.path("t"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{loaded:?}").contains("rt2"));
    }
}
