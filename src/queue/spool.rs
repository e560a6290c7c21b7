//! The durable spool: the contract between the SMTP side and the delivery side.
//!
//! Layout under `state_dir/queue/`:
//!
//! ```text
//! tmp/       messages being received; anything here at start-up was never acknowledged
//! msg/ID     the message exactly as received (immutable once committed)
//! env/ID     the envelope and delivery state as JSON (rewritten atomically on every change)
//! ```
//!
//! A message counts as accepted only once its envelope file exists: the body is written and
//! fsynced, moved into `msg/`, then the envelope is written to `tmp/`, fsynced and renamed into
//! `env/`, and both directories are fsynced. Only after that does the client get its `250`.
//! A crash before the envelope rename leaves an orphan body, which recovery deletes: the client
//! never heard `250` for it, so it will send again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("less than {needed} bytes free in the spool")]
    DiskFull { needed: u64 },
    #[error("no queued message with id {0}")]
    NotFound(String),
    #[error("envelope {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptStatus {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub status: RcptStatus,
    /// The last upstream reply for this recipient, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for (another) delivery attempt.
    Queued,
    /// Permanently failed (bounced or could not bounce); kept until an operator deletes it.
    Failed,
}

/// Everything the delivery side needs to know about one message, besides its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub tenant: String,
    /// The envelope sender as the app gave it; empty for the null sender `<>`.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    /// Seconds since the Unix epoch.
    pub received_at: u64,
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    pub size: u64,
    pub state: State,
    #[serde(default)]
    pub attempts: u32,
    /// Seconds since the Unix epoch; 0 means as soon as possible.
    #[serde(default)]
    pub next_attempt: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// For a bounce we generated: never bounce a bounce.
    #[serde(default)]
    pub is_dsn: bool,
}

impl Envelope {
    pub fn new(tenant: &str, mail_from: &str, recipients: &[String], client: &str) -> Envelope {
        Envelope {
            id: String::new(),
            tenant: tenant.to_string(),
            mail_from: mail_from.to_string(),
            recipients: recipients
                .iter()
                .map(|a| Recipient {
                    address: a.clone(),
                    status: RcptStatus::Pending,
                    reply: None,
                })
                .collect(),
            received_at: unix_now(),
            client: client.to_string(),
            auth_user: None,
            size: 0,
            state: State::Queued,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            is_dsn: false,
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
    }

    pub fn age(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.received_at))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The on-disk queue. Cheap to clone; all methods are safe to call from many tasks because
/// every message has its own files and every change is a rename.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    min_free_space: u64,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Queue ids sort by arrival: microseconds since the epoch, then a per-process counter, then
/// the pid, so two daemons (or a restart within one microsecond) never collide.
fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("{micros:014X}{seq:04X}{:05X}", std::process::id() & 0xfffff)
}

/// Ids are generated by us; anything else (`../x`, a path) is refused before touching disk.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Spool {
    /// Opens (creating if needed) the spool under `state_dir/queue`, and removes what a crash
    /// left half-written: files in `tmp/` and bodies without an envelope.
    pub fn open(state_dir: &Path, min_free_space: u64) -> Result<Spool, SpoolError> {
        let root = state_dir.join("queue");
        for sub in ["tmp", "msg", "env"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        let spool = Spool {
            root,
            min_free_space,
        };
        spool.clean()?;
        Ok(spool)
    }

    /// Opens an existing spool for inspection (the `queue` command) without cleaning it up,
    /// since the daemon may be receiving into `tmp/` right now.
    pub fn inspect(state_dir: &Path) -> Result<Spool, SpoolError> {
        let root = state_dir.join("queue");
        if !root.join("env").is_dir() {
            return Err(SpoolError::Io {
                what: "open",
                path: root.join("env"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(Spool {
            root,
            min_free_space: 0,
        })
    }

    fn clean(&self) -> Result<(), SpoolError> {
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io("read", &tmp))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let msg = self.root.join("msg");
        for entry in std::fs::read_dir(&msg).map_err(io("read", &msg))?.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if !self.env_path(id).exists() {
                tracing::warn!(
                    queue_id = id,
                    "removing a message body that was never acknowledged"
                );
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.root.join("env").join(id)
    }

    pub fn msg_path(&self, id: &str) -> PathBuf {
        self.root.join("msg").join(id)
    }

    /// Refuses up front when the file system is nearly full, so that the client gets a
    /// temporary failure at MAIL rather than after sending the whole message.
    pub fn check_space(&self) -> Result<(), SpoolError> {
        if self.min_free_space == 0 {
            return Ok(());
        }
        match free_space(&self.root) {
            Some(free) if free < self.min_free_space => Err(SpoolError::DiskFull {
                needed: self.min_free_space,
            }),
            _ => Ok(()),
        }
    }

    /// Starts receiving a new message into `tmp/`.
    pub async fn create(&self) -> Result<Incoming, SpoolError> {
        self.check_space()?;
        let id = new_id();
        let path = self.root.join("tmp").join(&id);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io("create", &path))?;
        Ok(Incoming {
            spool: self.clone(),
            id,
            path,
            file: Some(tokio::io::BufWriter::with_capacity(64 * 1024, file)),
            size: 0,
        })
    }

    /// Writes a whole message at once (bounces, `send-test`).
    pub async fn store(&self, body: &[u8], envelope: Envelope) -> Result<Envelope, SpoolError> {
        let mut incoming = self.create().await?;
        incoming.write(body).await?;
        incoming.commit(envelope).await
    }

    /// Atomically replaces a message's envelope (delivery state changes).
    pub async fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let spool = self.clone();
        let envelope = envelope.clone();
        run_blocking(move || spool.write_envelope(&envelope)).await
    }

    fn write_envelope(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        if !valid_id(&envelope.id) {
            return Err(SpoolError::NotFound(envelope.id.clone()));
        }
        let json = serde_json::to_vec_pretty(envelope).map_err(|e| SpoolError::Corrupt {
            path: self.env_path(&envelope.id),
            reason: e.to_string(),
        })?;
        let tmp = self.root.join("tmp").join(format!("{}.env", envelope.id));
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        let written = f
            .write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(io("write", &tmp));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let dest = self.env_path(&envelope.id);
        std::fs::rename(&tmp, &dest).map_err(io("rename", &dest))?;
        sync_dir(&self.root.join("env"))
    }

    pub async fn load(&self, id: &str) -> Result<Envelope, SpoolError> {
        let spool = self.clone();
        let id = id.to_string();
        run_blocking(move || spool.load_blocking(&id)).await
    }

    pub fn load_blocking(&self, id: &str) -> Result<Envelope, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let path = self.env_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub async fn read_message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let path = self.msg_path(id);
        tokio::fs::read(&path).await.map_err(io("read", &path))
    }

    /// Removes a message (delivered, or deleted by an operator). The envelope goes first so
    /// that a crash in between leaves an orphan body, which start-up removes.
    pub async fn remove(&self, id: &str) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let env = self.env_path(id);
        match tokio::fs::remove_file(&env).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io("remove", &env)(e)),
        }
        let msg = self.msg_path(id);
        let _ = tokio::fs::remove_file(&msg).await;
        Ok(())
    }

    /// Every envelope on disk, oldest first. Unreadable envelopes are reported, not dropped:
    /// they stay on disk for an operator to look at.
    pub fn scan(&self) -> Result<(Vec<Envelope>, Vec<SpoolError>), SpoolError> {
        let dir = self.root.join("env");
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io("read", &dir))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_id(n))
            .collect();
        ids.sort();
        let mut envelopes = Vec::with_capacity(ids.len());
        let mut errors = Vec::new();
        for id in ids {
            match self.load_blocking(&id) {
                Ok(e) => envelopes.push(e),
                Err(SpoolError::NotFound(_)) => {} // delivered while we were scanning
                Err(e) => errors.push(e),
            }
        }
        Ok((envelopes, errors))
    }
}

/// A message being received. Dropping it without [`Incoming::commit`] discards it.
pub struct Incoming {
    spool: Spool,
    id: String,
    path: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    size: u64,
}

impl Incoming {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(chunk)
            .await
            .map_err(io("write", &self.path))?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Makes the message durable and visible to delivery. Returns the envelope as stored.
    pub async fn commit(mut self, mut envelope: Envelope) -> Result<Envelope, SpoolError> {
        if let Some(mut file) = self.file.take() {
            file.flush().await.map_err(io("write", &self.path))?;
            let file = file.into_inner();
            file.sync_all().await.map_err(io("fsync", &self.path))?;
        }
        envelope.id = self.id.clone();
        envelope.size = self.size;
        let spool = self.spool.clone();
        let tmp = self.path.clone();
        let env = envelope.clone();
        run_blocking(move || {
            let dest = spool.msg_path(&env.id);
            std::fs::rename(&tmp, &dest).map_err(io("rename", &dest))?;
            sync_dir(&spool.root.join("msg"))?;
            if let Err(e) = spool.write_envelope(&env) {
                let _ = std::fs::remove_file(&dest);
                return Err(e);
            }
            Ok(())
        })
        .await?;
        // The body now lives in msg/; nothing for Drop to clean.
        self.path = PathBuf::new();
        Ok(envelope)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", path))
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(SpoolError::Io {
            what: "run",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_recover_and_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        let mut inc = spool.create().await.expect("create");
        inc.write(b"Subject: x\r\n\r\nhello\r\n")
            .await
            .expect("write");
        let env = Envelope::new("t", "a@b.c", &["x@y.z".into()], "127.0.0.1");
        let env = inc.commit(env).await.expect("commit");
        assert_eq!(env.size, 21);

        // An abandoned receive and an orphan body disappear on reopen; the committed stays.
        let abandoned = spool.create().await.expect("create");
        std::mem::forget(abandoned);
        std::fs::write(spool.msg_path("ORPHAN1"), b"x").expect("orphan");
        let spool = Spool::open(dir.path(), 0).expect("reopen");
        assert_eq!(
            std::fs::read_dir(spool.root().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
        assert!(!spool.msg_path("ORPHAN1").exists());
        let (all, errors) = spool.scan().expect("scan");
        assert!(errors.is_empty());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, env.id);
        assert_eq!(
            spool.read_message(&env.id).await.expect("read"),
            b"Subject: x\r\n\r\nhello\r\n"
        );

        spool.remove(&env.id).await.expect("remove");
        assert!(matches!(
            spool.load(&env.id).await,
            Err(SpoolError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn ids_are_unique_and_safe() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(valid_id(&a));
        assert!(!valid_id("../etc"));
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        assert!(matches!(
            spool.load("../x").await,
            Err(SpoolError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn full_disk_is_refused_up_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), u64::MAX).expect("open");
        assert!(matches!(
            spool.create().await,
            Err(SpoolError::DiskFull { .. })
        ));
    }
}
