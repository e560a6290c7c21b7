//! Configuration: built-in defaults, then the TOML file, then `AUTHRELAY_` environment
//! variables (`__` separates nesting levels, so `AUTHRELAY_SMTP__LISTEN` sets `smtp.listen`).
//!
//! Loading is split from validation so that every problem an operator can make is reported
//! with the key it concerns (`tenant[contoso].mailbox: ...`), not as a serde backtrace.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the config lives when neither `--config` nor `AUTHRELAY_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/authrelay/authrelay.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Holds `queue/` and `tokens/`. Default: `$STATE_DIRECTORY` (systemd), else `./var`.
    pub state_dir: PathBuf,
    /// Name used in EHLO upstream, Message-ID and DSNs. Default: the machine's host name.
    pub hostname: String,
    pub smtp: SmtpConfig,
    pub admin: AdminConfig,
    pub queue: QueueConfig,
    pub log: LogConfig,
    #[serde(rename = "tenant")]
    pub tenants: Vec<Tenant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_clients: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Concurrent sessions over all listeners; further connections get 421.
    pub max_sessions: usize,
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Longest command line accepted (RFC 5321 says 512; some clients send more).
    pub max_line_length: usize,
    /// SMTP AUTH on the listeners (each `[[smtp.listener]]` may override it).
    pub auth: AuthMode,
    /// The accounts SMTP AUTH checks, `[[smtp.user]]`.
    #[serde(rename = "user")]
    pub users: Vec<SmtpUser>,
    /// Listeners with options, `[[smtp.listener]]`, besides the plain ones in `listen`.
    #[serde(rename = "listener")]
    pub listener: Vec<ListenerConfig>,
    /// PEM certificate chain and key for STARTTLS and implicit TLS listeners; read again on
    /// reload, so a renewed certificate applies to new sessions after SIGHUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Concurrent sessions from one client address.
    pub max_sessions_per_client: usize,
    /// Messages (accepted MAIL commands) per minute from one client address; 0 = unlimited.
    pub max_messages_per_client_per_minute: u32,
    /// The longest a session may last, however busy it is: a cap on slow clients.
    #[serde(with = "duration")]
    pub max_session_duration: Duration,
    /// Failed AUTH attempts from one client address allowed within `auth_failure_window`;
    /// after that the address gets one more try per `auth_failure_window / max_auth_failures`.
    pub max_auth_failures: u32,
    #[serde(with = "duration")]
    pub auth_failure_window: Duration,
}

/// Whether a listener offers SMTP AUTH, and whether it insists on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Off,
    Optional,
    Required,
}

/// TLS on a listener: none, STARTTLS on request (RFC 3207), or TLS from the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    None,
    Starttls,
    Implicit,
}

/// One `[[smtp.user]]`: an account for SMTP AUTH.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpUser {
    pub name: String,
    /// Argon2 PHC string from `authrelay hash-password`.
    pub password_hash: Secret,
    /// The tenant this user's mail goes out through, whatever the sender.
    pub tenant: String,
    /// Envelope senders this user may use (`*` matches anything); none = any.
    #[serde(default)]
    pub senders: Vec<String>,
}

/// One `[[smtp.listener]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// Mail received here goes out through this tenant, whoever sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub tls: TlsMode,
    /// Overrides `smtp.auth` for this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
}

/// What a bound listener passes to each of its sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerOptions {
    pub tls: TlsMode,
    /// None: `smtp.auth` in force.
    pub auth: Option<AuthMode>,
    pub tenant: Option<String>,
}

impl SmtpConfig {
    /// Every listener to bind: the plain addresses of `listen`, then `[[smtp.listener]]`.
    pub fn listeners(&self) -> Vec<(SocketAddr, ListenerOptions)> {
        self.listen
            .iter()
            .map(|a| (*a, ListenerOptions::default()))
            .chain(self.listener.iter().map(|l| {
                (
                    l.address,
                    ListenerOptions {
                        tls: l.tls,
                        auth: l.auth,
                        tenant: l.tenant.clone(),
                    },
                )
            }))
            .collect()
    }

    /// Where a local program (`sendmail`, `send-test`) hands in mail: the first listener that
    /// takes plain SMTP without AUTH, loopback ones first. A wildcard address (0.0.0.0, ::)
    /// is reached over loopback.
    pub fn submission_address(&self) -> Option<SocketAddr> {
        let usable = self.listeners().into_iter().filter(|(_, o)| {
            o.tls != TlsMode::Implicit && o.auth.unwrap_or(self.auth) != AuthMode::Required
        });
        let mut best: Option<SocketAddr> = None;
        for (addr, _) in usable {
            let mut addr = addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            if addr.ip().to_canonical().is_loopback() {
                return Some(addr);
            }
            best.get_or_insert(addr);
        }
        best
    }

    pub fn user(&self, name: &str) -> Option<&SmtpUser> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Empty string disables the admin listener.
    #[serde(
        deserialize_with = "optional_addr",
        serialize_with = "ser_optional_addr"
    )]
    pub listen: Option<SocketAddr>,
    /// The URL Microsoft redirects back to after sign-in; default `http://{listen}/oauth/callback`.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(with = "duration")]
    pub max_age: Duration,
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    #[serde(with = "duration")]
    pub retry_max: Duration,
    /// Refuse new mail with 452 when the spool's file system has less than this many bytes free.
    pub min_free_space: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `RUST_LOG`-style filter, e.g. `info` or `authrelay=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFlow {
    ClientCredentials,
    AuthorizationCode,
    DeviceCode,
}

impl AuthFlow {
    pub fn is_delegated(self) -> bool {
        !matches!(self, AuthFlow::ClientCredentials)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFlow::ClientCredentials => "client_credentials",
            AuthFlow::AuthorizationCode => "authorization_code",
            AuthFlow::DeviceCode => "device_code",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Smtp,
    Graph,
}

pub use crate::rewrite::ReplyToMode;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// PEM certificate (and `client_key_file`, PEM PKCS#8 key) for a JWT client assertion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_expiry",
        serialize_with = "ser_optional_expiry"
    )]
    pub client_secret_expires: Option<SystemTime>,
    #[serde(default = "default_auth")]
    pub auth: AuthFlow,
    pub mailbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    #[serde(default)]
    pub send_as: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub reply_to_mode: ReplyToMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default)]
    pub senders: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_to: Option<String>,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_smtp_server")]
    pub smtp_server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default)]
    pub transport: Transport,
    #[serde(default = "default_graph_endpoint")]
    pub graph_endpoint: String,
    #[serde(default = "default_rate")]
    pub max_messages_per_minute: u32,
    #[serde(default = "default_daily")]
    pub max_recipients_per_day: u32,
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Length of the pacing window; one minute in production, shorter in tests.
    #[serde(default = "default_rate_window", with = "duration")]
    pub rate_window: Duration,
    #[serde(default = "default_upstream_timeout", with = "duration")]
    pub upstream_timeout: Duration,
}

fn default_auth() -> AuthFlow {
    AuthFlow::ClientCredentials
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_smtp_server() -> String {
    "smtp.office365.com:587".into()
}
fn default_graph_endpoint() -> String {
    "https://graph.microsoft.com".into()
}
fn default_rate() -> u32 {
    30
}
fn default_daily() -> u32 {
    10_000
}
fn default_connections() -> usize {
    3
}
fn default_rate_window() -> Duration {
    Duration::from_secs(60)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Tenant {
    /// The OAuth scope for this tenant's flow and transport, unless `scope` overrides it.
    pub fn effective_scope(&self) -> String {
        if let Some(s) = &self.scope {
            return s.clone();
        }
        match (self.transport, self.auth.is_delegated()) {
            (Transport::Smtp, false) => "https://outlook.office365.com/.default".into(),
            (Transport::Smtp, true) => "https://outlook.office.com/SMTP.Send offline_access".into(),
            (Transport::Graph, false) => "https://graph.microsoft.com/.default".into(),
            (Transport::Graph, true) => {
                "https://graph.microsoft.com/Mail.Send offline_access".into()
            }
        }
    }

    pub fn endpoint(&self, what: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/{what}",
            self.authority.trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// The client secret, from the config or from `client_secret_file` (read at each use so
    /// a rotated credential file needs no restart).
    pub fn load_secret(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(s) = &self.client_secret {
            return Ok(Some(s.clone()));
        }
        match &self.client_secret_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| Some(Secret(s.trim().to_string())))
                .map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    source: e,
                }),
            None => Ok(None),
        }
    }

    /// The host and port of `smtp_server`.
    pub fn smtp_host_port(&self) -> (String, u16) {
        match self.smtp_server.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse().unwrap_or(587),
            ),
            None => (self.smtp_server.clone(), 587),
        }
    }
}

/// A secret string: never printed, never logged.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: std::env::var_os("STATE_DIRECTORY")
                // systemd may pass several colon-separated directories; the first is ours.
                .and_then(|v| {
                    v.to_str()
                        .and_then(|s| s.split(':').next())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| PathBuf::from("./var")),
            hostname: system_hostname(),
            smtp: SmtpConfig {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
                allowed_clients: vec![
                    "127.0.0.0/8".parse().expect("literal"),
                    "::1/128".parse().expect("literal"),
                ],
                max_message_size: 36_700_160,
                max_recipients: 500,
                max_sessions: 100,
                command_timeout: Duration::from_secs(300),
                data_timeout: Duration::from_secs(600),
                max_line_length: 4096,
                auth: AuthMode::Off,
                users: Vec::new(),
                listener: Vec::new(),
                tls_certificate_file: None,
                tls_key_file: None,
                max_sessions_per_client: 20,
                max_messages_per_client_per_minute: 0,
                max_session_duration: Duration::from_secs(3600),
                max_auth_failures: 5,
                auth_failure_window: Duration::from_secs(300),
            },
            admin: AdminConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 9925))),
                public_url: None,
            },
            queue: QueueConfig {
                max_age: Duration::from_secs(5 * 86400),
                retry_initial: Duration::from_secs(30),
                retry_max: Duration::from_secs(1800),
                min_free_space: 64 * 1024 * 1024,
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            tenants: Vec::new(),
        }
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Which file to read: `--config`, else `AUTHRELAY_CONFIG`, else the default path.
    pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
        cli.map(Path::to_path_buf)
            .or_else(|| std::env::var_os("AUTHRELAY_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Loads defaults < file < environment and validates the result. Beyond
    /// [`Config::from_toml`], this checks what needs the file system: that a file holding
    /// secrets is not readable by every user, and that the TLS certificate and key load.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let config = Self::from_toml(&text)?;
        let mode = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .map_err(|e| ConfigError::Read {
                path: path.display().to_string(),
                source: e,
            })?;
        check_exposure(&config, path, mode)?;
        config.check_tls_files()?;
        Ok(config)
    }

    /// Same as [`Config::load`] for config text already in memory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let env = || {
            Env::prefixed("AUTHRELAY_")
                .ignore(&["config"])
                .split("__")
                .lowercase(true)
        };
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .merge(env())
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        // The default `listen` is for configs that say nothing about listeners: once there is
        // an `[[smtp.listener]]`, only an explicit `listen` adds plain listeners.
        let listen_given = Figment::from(Toml::string(text))
            .merge(env())
            .contains("smtp.listen");
        if !listen_given && !config.smtp.listener.is_empty() {
            config.smtp.listen.clear();
        }
        config.validate()?;
        Ok(config)
    }

    /// Whether secrets are written in the config itself (rather than in files it names).
    pub fn has_inline_secrets(&self) -> bool {
        self.tenants.iter().any(|t| t.client_secret.is_some()) || !self.smtp.users.is_empty()
    }

    /// The certificate chain and key named in `[smtp]` parse as PEM (when set).
    fn check_tls_files(&self) -> Result<(), ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        if let Some(path) = &self.smtp.tls_certificate_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    invalid(
                        "smtp.tls_certificate_file",
                        format!("{}: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(invalid(
                    "smtp.tls_certificate_file",
                    format!("{}: no PEM certificate in it", path.display()),
                ));
            }
        }
        if let Some(path) = &self.smtp.tls_key_file {
            PrivateKeyDer::from_pem_file(path)
                .map_err(|e| invalid("smtp.tls_key_file", format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.smtp.listeners().is_empty() {
            return Err(invalid(
                "smtp.listen",
                "at least one address (or one [[smtp.listener]]) is required",
            ));
        }
        if self.smtp.max_message_size < 1024 {
            return Err(invalid(
                "smtp.max_message_size",
                "must be at least 1024 bytes",
            ));
        }
        if self.smtp.max_recipients == 0 {
            return Err(invalid("smtp.max_recipients", "must be at least 1"));
        }
        if self.smtp.max_line_length < 512 {
            return Err(invalid(
                "smtp.max_line_length",
                "must be at least 512 (RFC 5321)",
            ));
        }
        if self.queue.retry_initial.is_zero() || self.queue.retry_max < self.queue.retry_initial {
            return Err(invalid(
                "queue.retry_max",
                "must be at least queue.retry_initial, which must be above zero",
            ));
        }
        if self.tenants.is_empty() {
            return Err(invalid("tenant", "at least one [[tenant]] is required"));
        }
        let mut names = HashSet::new();
        let mut defaults = Vec::new();
        for t in &self.tenants {
            let key = |k: &str| format!("tenant[{}].{k}", t.name);
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    format!("tenant[{}].name", t.name),
                    "must be non-empty and use only letters, digits, '-' and '_'",
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(key("name"), "is used by two tenants"));
            }
            if t.tenant_id.is_empty() {
                return Err(invalid(key("tenant_id"), "is required"));
            }
            if !t.auth.is_delegated()
                && matches!(
                    t.tenant_id.as_str(),
                    "common" | "organizations" | "consumers"
                )
            {
                return Err(invalid(
                    key("tenant_id"),
                    "client_credentials needs the directory (tenant) id or domain, not 'common'",
                ));
            }
            if t.client_id.is_empty() {
                return Err(invalid(key("client_id"), "is required"));
            }
            if !is_address(&t.mailbox) {
                return Err(invalid(key("mailbox"), "must be an email address"));
            }
            for a in t
                .send_as
                .iter()
                .chain(t.reply_to.iter())
                .chain(t.bounce_to.iter())
            {
                if !is_address(a) {
                    return Err(invalid(
                        key("send_as"),
                        format!("'{a}' is not an email address"),
                    ));
                }
            }
            let has_cert = t.client_certificate_file.is_some();
            if has_cert != t.client_key_file.is_some() {
                return Err(invalid(
                    key("client_key_file"),
                    "client_certificate_file and client_key_file go together",
                ));
            }
            let secrets = usize::from(t.client_secret.is_some())
                + usize::from(t.client_secret_file.is_some())
                + usize::from(has_cert);
            if secrets > 1 {
                return Err(invalid(
                    key("client_secret"),
                    "set only one of client_secret, client_secret_file, client_certificate_file",
                ));
            }
            if secrets == 0 && t.auth == AuthFlow::ClientCredentials {
                return Err(invalid(
                    key("client_secret"),
                    "client_credentials needs client_secret, client_secret_file or client_certificate_file",
                ));
            }
            if !(t.authority.starts_with("https://") || t.authority.starts_with("http://")) {
                return Err(invalid(key("authority"), "must be an http(s) URL"));
            }
            if !t.graph_endpoint.starts_with("https://") && !t.graph_endpoint.starts_with("http://")
            {
                return Err(invalid(key("graph_endpoint"), "must be an http(s) URL"));
            }
            match t.smtp_server.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => return Err(invalid(key("smtp_server"), "must be host:port")),
            }
            if t.max_messages_per_minute == 0 {
                return Err(invalid(
                    key("max_messages_per_minute"),
                    "must be at least 1",
                ));
            }
            if t.max_connections == 0 {
                return Err(invalid(key("max_connections"), "must be at least 1"));
            }
            if t.rate_window.is_zero() {
                return Err(invalid(key("rate_window"), "must be above zero"));
            }
            for p in &t.senders {
                if p.is_empty() || p.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        key("senders"),
                        format!("'{p}' is not a sender pattern"),
                    ));
                }
            }
            if t.senders.is_empty() {
                defaults.push(t.name.as_str());
            }
        }
        if defaults.len() > 1 {
            return Err(invalid(
                "tenant",
                format!(
                    "tenants {} have no senders; only one tenant may be the default",
                    defaults.join(", ")
                ),
            ));
        }
        self.validate_access()
    }

    /// `[smtp]` access control: listeners, TLS, users, limits. Runs after the tenants are
    /// known to be valid, so references to them can be checked.
    fn validate_access(&self) -> Result<(), ConfigError> {
        let smtp = &self.smtp;
        if smtp.max_sessions == 0 {
            return Err(invalid("smtp.max_sessions", "must be at least 1"));
        }
        if smtp.max_sessions_per_client == 0 {
            return Err(invalid(
                "smtp.max_sessions_per_client",
                "must be at least 1",
            ));
        }
        if smtp.max_session_duration.is_zero() {
            return Err(invalid("smtp.max_session_duration", "must be above zero"));
        }
        if smtp.max_auth_failures > 0 && smtp.auth_failure_window.is_zero() {
            return Err(invalid("smtp.auth_failure_window", "must be above zero"));
        }
        if smtp.tls_certificate_file.is_some() != smtp.tls_key_file.is_some() {
            return Err(invalid(
                "smtp.tls_key_file",
                "tls_certificate_file and tls_key_file go together",
            ));
        }
        let mut addresses = HashSet::new();
        for (addr, options) in smtp.listeners() {
            let key = |k: &str| format!("smtp.listener[{addr}].{k}");
            if !addresses.insert(addr) {
                return Err(invalid(
                    key("address"),
                    "is bound twice (in smtp.listen and [[smtp.listener]], or two listeners)",
                ));
            }
            if options.tls != TlsMode::None && smtp.tls_certificate_file.is_none() {
                return Err(invalid(
                    key("tls"),
                    "a TLS listener needs smtp.tls_certificate_file and smtp.tls_key_file",
                ));
            }
            if let Some(t) = &options.tenant
                && self.tenant(t).is_none()
            {
                return Err(invalid(key("tenant"), format!("no tenant named '{t}'")));
            }
            if options.auth.unwrap_or(smtp.auth) != AuthMode::Off && smtp.users.is_empty() {
                return Err(invalid(
                    "smtp.user",
                    format!("AUTH is enabled on {addr} but no [[smtp.user]] is configured"),
                ));
            }
        }
        let mut names = HashSet::new();
        for u in &smtp.users {
            let key = |k: &str| format!("smtp.user[{}].{k}", u.name);
            if u.name.is_empty()
                || u.name.len() > 255
                || u.name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    key("name"),
                    "must be 1 to 255 characters without spaces or control characters",
                ));
            }
            if !names.insert(u.name.as_str()) {
                return Err(invalid(key("name"), "is used by two users"));
            }
            check_password_hash(u.password_hash.expose()).map_err(|e| {
                invalid(
                    key("password_hash"),
                    format!("{e}; make one with `authrelay hash-password`"),
                )
            })?;
            if self.tenant(&u.tenant).is_none() {
                return Err(invalid(
                    key("tenant"),
                    format!("no tenant named '{}'", u.tenant),
                ));
            }
            for p in &u.senders {
                if p.is_empty() || p.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        key("senders"),
                        format!("'{p}' is not a sender pattern"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The effective configuration as TOML with secrets redacted, for `check-config`.
    pub fn to_redacted_toml(&self) -> String {
        toml_string(self)
    }
}

/// An Argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) we can verify with.
fn check_password_hash(phc: &str) -> Result<(), String> {
    use argon2::password_hash::phc::PasswordHash;
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    argon2::Algorithm::try_from(hash.algorithm.as_str())
        .map_err(|_| format!("'{}' is not an Argon2 algorithm", hash.algorithm))?;
    argon2::Params::try_from(&hash).map_err(|e| format!("bad Argon2 parameters: {e}"))?;
    if hash.hash.is_none() {
        return Err("the hash part is missing".into());
    }
    Ok(())
}

/// Refuses a config that holds secrets and that every local user can read.
fn check_exposure(config: &Config, path: &Path, mode: u32) -> Result<(), ConfigError> {
    if mode & 0o004 == 0 || !config.has_inline_secrets() {
        return Ok(());
    }
    let p = path.display();
    Err(invalid(
        p.to_string(),
        format!(
            "is readable by every user (mode {:o}) but holds secrets (client_secret or \
             [[smtp.user]] password_hash); restrict it: `chown root:authrelay {p} && chmod 640 {p}` \
             (or `chmod 600 {p}`), or move client secrets to client_secret_file / systemd credentials",
            mode & 0o7777
        ),
    ))
}

fn toml_string(config: &Config) -> String {
    // figment brings `toml` in; serialising through serde_json keeps us off its exact API.
    match serde_json::to_value(config) {
        Ok(v) => json_to_toml(&v),
        Err(e) => format!("# cannot render config: {e}\n"),
    }
}

/// A small TOML writer for the shape of [`Config`] (tables, arrays of tables, scalars).
fn json_to_toml(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }
    fn table(prefix: &str, map: &serde_json::Map<String, Value>, out: &mut String) {
        for (k, v) in map {
            if !matches!(v, Value::Object(_) | Value::Null)
                && !matches!(v, Value::Array(a) if a.first().is_some_and(Value::is_object))
            {
                out.push_str(&format!("{k} = {}\n", scalar(v)));
            }
        }
        for (k, v) in map {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => {
                    out.push_str(&format!("\n[{name}]\n"));
                    table(&name, inner, out);
                }
                Value::Array(a) if a.first().is_some_and(Value::is_object) => {
                    for item in a {
                        out.push_str(&format!("\n[[{name}]]\n"));
                        if let Value::Object(inner) = item {
                            table(&name, inner, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = String::new();
    if let Value::Object(map) = v {
        table("", map, &mut out);
    }
    out
}

fn describe_figment_error(e: figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let mut kind = err.kind.to_string();
        if let figment::error::Kind::UnknownField(field, _) = &err.kind {
            kind = format!("unknown key `{field}`");
        }
        if key.is_empty() {
            parts.push(kind);
        } else {
            parts.push(format!("{key}: {kind}"));
        }
    }
    parts.join("; ")
}

/// A plausible single email address: something@domain, no spaces or angle brackets.
pub fn is_address(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',')
        }
        None => false,
    }
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    items
        .iter()
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| serde::de::Error::custom(format!("'{s}': {e}")))
        })
        .collect()
}

fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("'{s}': {e}"))),
    }
}

fn ser_optional_addr<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(a) => s.serialize_str(&a.to_string()),
        None => s.serialize_str(""),
    }
}

/// Parses an RFC 3339 date (`2027-06-30`, meaning the start of that day in UTC) or date-time.
pub fn parse_expiry(s: &str) -> Result<SystemTime, String> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if let Ok(dt) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(dt.into());
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|d| d.midnight().assume_utc().into())
        .map_err(|_| format!("'{s}' is not an RFC 3339 date (2027-06-30) or date-time"))
}

pub fn format_time(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

fn optional_expiry<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    // TOML may hand us a native datetime; figment turns it into a string for us.
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_expiry(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn ser_optional_expiry<S: Serializer>(v: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(t) => s.serialize_str(&format_time(*t)),
        None => s.serialize_none(),
    }
}

/// Durations as human strings ("30s", "5m", "5d") in the file and in the printed config.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(n) => Ok(Duration::from_secs(n)),
            Raw::Text(s) => humantime::parse_duration(s.trim()).map_err(|e| {
                serde::de::Error::custom(format!("'{s}' is not a duration like 30s, 5m, 5d: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
state_dir = "/tmp/x"
[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@contoso.com"
"#;

    fn err(text: &str) -> String {
        Config::from_toml(text)
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().expect("addr")]);
        assert_eq!(c.smtp.max_message_size, 36_700_160);
        assert_eq!(c.queue.retry_initial, Duration::from_secs(30));
        let t = &c.tenants[0];
        assert_eq!(t.auth, AuthFlow::ClientCredentials);
        assert_eq!(t.smtp_server, "smtp.office365.com:587");
        assert_eq!(
            t.effective_scope(),
            "https://outlook.office365.com/.default"
        );
        assert_eq!(
            t.endpoint("token"),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(t.max_messages_per_minute, 30);
        assert_eq!(t.max_connections, 3);
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&MINIMAL.replace("relay@contoso.com", "relay"));
        assert!(e.starts_with("tenant[contoso].mailbox:"), "{e}");
        let e = err(&format!("{MINIMAL}\n[smtp]\nmax_message_size = \"big\"\n"));
        assert!(e.contains("smtp.max_message_size"), "{e}");
        let e = err(&format!("{MINIMAL}\n[queue]\nretry_initial = \"soon\"\n"));
        assert!(
            e.contains("queue.retry_initial") && e.contains("soon"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}\n[smtp]\nlisten = [\"nowhere\"]\n"));
        assert!(e.contains("smtp.listen"), "{e}");
        let e = err(&format!("{MINIMAL}\n[smtp]\nlisen = []\n"));
        assert!(e.contains("lisen"), "{e}");
        let e = err(&MINIMAL.replace("client_secret = \"s3cret\"", ""));
        assert!(e.starts_with("tenant[contoso].client_secret:"), "{e}");
        let e = err(&MINIMAL.replace("contoso.onmicrosoft.com", "common"));
        assert!(e.starts_with("tenant[contoso].tenant_id:"), "{e}");
        let e = err("state_dir = \"/x\"\n");
        assert!(e.starts_with("tenant:"), "{e}");
    }

    #[test]
    fn two_default_tenants_are_refused() {
        let twice = format!(
            "{MINIMAL}{}",
            MINIMAL
                .replace("state_dir = \"/tmp/x\"", "")
                .replace("\"contoso\"", "\"other\"")
        );
        let e = err(&twice);
        assert!(e.contains("only one tenant may be the default"), "{e}");
    }

    #[test]
    fn durations_and_expiry_parse() {
        let text = MINIMAL.replace(
            "mailbox =",
            "client_secret_expires = \"2027-06-30\"\nrate_window = \"2s\"\nmailbox =",
        );
        let c = Config::from_toml(&format!(
            "{text}\n[queue]\nmax_age = \"5d\"\nretry_max = 90\n"
        ))
        .expect("valid");
        assert_eq!(c.queue.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(c.queue.retry_max, Duration::from_secs(90));
        assert_eq!(c.tenants[0].rate_window, Duration::from_secs(2));
        assert_eq!(
            format_time(c.tenants[0].client_secret_expires.expect("set")),
            "2027-06-30T00:00:00Z"
        );
        assert!(parse_expiry("2027-06-30T12:00:00+02:00").is_ok());
        assert!(parse_expiry("next year").is_err());
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let c = Config::from_toml(MINIMAL).expect("valid");
        let out = c.to_redacted_toml();
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("client_secret = \"<redacted>\""), "{out}");
        assert!(out.contains("[[tenant]]"), "{out}");
        assert!(out.contains("[smtp]"), "{out}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    fn hash() -> String {
        crate::inbound::cheap_hash_for_tests("pw")
    }

    #[test]
    fn access_keys_parse() {
        let text = format!(
            r#"{MINIMAL}
[smtp]
auth = "optional"
tls_certificate_file = "/etc/authrelay/tls.crt"
tls_key_file = "/etc/authrelay/tls.key"
max_sessions_per_client = 5
max_messages_per_client_per_minute = 60
max_session_duration = "30m"

[[smtp.listener]]
address = "0.0.0.0:587"
tls = "starttls"
auth = "required"

[[smtp.listener]]
address = "127.0.0.1:2526"
tenant = "contoso"

[[smtp.user]]
name = "app01"
password_hash = "{}"
tenant = "contoso"
senders = ["*@app01.internal"]
"#,
            hash()
        );
        let c = Config::from_toml(&text).expect("valid");
        // With [[smtp.listener]] and no explicit listen, the default listen is not added.
        assert!(c.smtp.listen.is_empty());
        let l = c.smtp.listeners();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].0, "0.0.0.0:587".parse().expect("addr"));
        assert_eq!(l[0].1.tls, TlsMode::Starttls);
        assert_eq!(l[0].1.auth, Some(AuthMode::Required));
        assert_eq!(l[1].1.tenant.as_deref(), Some("contoso"));
        assert_eq!(l[1].1.auth, None);
        assert_eq!(c.smtp.auth, AuthMode::Optional);
        assert_eq!(c.smtp.max_sessions_per_client, 5);
        assert_eq!(c.smtp.max_session_duration, Duration::from_secs(1800));
        assert_eq!(c.smtp.user("app01").expect("user").senders.len(), 1);
        // The AUTH-required listener cannot take sendmail's plain submission.
        assert_eq!(
            c.smtp.submission_address(),
            Some("127.0.0.1:2526".parse().expect("addr"))
        );
        let out = c.to_redacted_toml();
        assert!(out.contains("[[smtp.user]]"), "{out}");
        assert!(out.contains("password_hash = \"<redacted>\""), "{out}");
        assert!(!out.contains("argon2"), "{out}");
        assert!(!format!("{c:?}").contains("argon2"));

        // An explicit listen is kept next to the listeners; a wildcard is reached on loopback.
        let text = text.replace("[smtp]\n", "[smtp]\nlisten = [\"0.0.0.0:2525\"]\n");
        let c = Config::from_toml(&text).expect("valid");
        assert_eq!(c.smtp.listeners().len(), 3);
        assert_eq!(
            c.smtp.submission_address(),
            Some("127.0.0.1:2525".parse().expect("addr"))
        );
        // Defaults.
        let c = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.smtp.auth, AuthMode::Off);
        assert_eq!(c.smtp.max_sessions_per_client, 20);
        assert_eq!(c.smtp.max_messages_per_client_per_minute, 0);
        assert_eq!(c.smtp.max_auth_failures, 5);
        assert_eq!(c.smtp.listeners().len(), 1);
    }

    #[test]
    fn access_errors_name_the_key() {
        let user = |extra: &str| {
            format!(
                "{MINIMAL}\n[[smtp.user]]\nname = \"app01\"\npassword_hash = \"{}\"\ntenant = \"contoso\"\n{extra}",
                hash()
            )
        };
        let e = err(&format!(
            "{MINIMAL}\n[[smtp.listener]]\naddress = \"127.0.0.1:465\"\ntls = \"implicit\"\n"
        ));
        assert!(e.starts_with("smtp.listener[127.0.0.1:465].tls:"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[[smtp.listener]]\naddress = \"127.0.0.1:2526\"\ntenant = \"nope\"\n"
        ));
        assert!(
            e.starts_with("smtp.listener[127.0.0.1:2526].tenant:"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n[[smtp.listener]]\naddress = \"127.0.0.1:2525\"\n"
        ));
        assert!(
            e.starts_with("smtp.listener[127.0.0.1:2525].address:"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}\n[smtp]\nauth = \"required\"\n"));
        assert!(e.starts_with("smtp.user:"), "{e}");
        let e = err(&format!("{MINIMAL}\n[smtp]\nauth = \"sometimes\"\n"));
        assert!(e.contains("smtp.auth"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[smtp]\ntls_certificate_file = \"/x.crt\"\n"
        ));
        assert!(e.starts_with("smtp.tls_key_file:"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[[smtp.user]]\nname = \"app01\"\npassword_hash = \"plaintext\"\ntenant = \"contoso\"\n"
        ));
        assert!(e.starts_with("smtp.user[app01].password_hash:"), "{e}");
        assert!(e.contains("hash-password"), "{e}");
        assert!(!e.contains("plaintext"), "{e}");
        let e = err(&user("").replace("tenant = \"contoso\"\n", "tenant = \"other\"\n"));
        assert!(e.starts_with("smtp.user[app01].tenant:"), "{e}");
        let e = err(&user("senders = [\"a b\"]\n"));
        assert!(e.starts_with("smtp.user[app01].senders:"), "{e}");
        let e = err(&format!("{}{}", user(""), user("").replace(MINIMAL, "")));
        assert!(e.starts_with("smtp.user[app01].name:"), "{e}");
        let e = err(&format!("{MINIMAL}\n[smtp]\nmax_sessions_per_client = 0\n"));
        assert!(e.starts_with("smtp.max_sessions_per_client:"), "{e}");
        assert!(Config::from_toml(&user("")).is_ok());
    }

    fn write_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn world_readable_config_with_secrets_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_mode(dir.path(), "a.toml", MINIMAL, 0o644);
        let e = Config::load(&path).expect_err("exposed").to_string();
        assert!(e.contains("readable by every user"), "{e}");
        assert!(e.contains("chmod 640") && e.contains("chmod 600"), "{e}");
        assert!(e.contains("root:authrelay"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        for ok in [0o640, 0o600, 0o660] {
            let path = write_mode(dir.path(), "a.toml", MINIMAL, ok);
            Config::load(&path).unwrap_or_else(|e| panic!("mode {ok:o}: {e}"));
        }
        // Secrets kept in files: the config itself may be world-readable.
        let from_file = MINIMAL.replace(
            "client_secret = \"s3cret\"",
            "client_secret_file = \"/run/credentials/authrelay.service/contoso\"",
        );
        let path = write_mode(dir.path(), "b.toml", &from_file, 0o644);
        Config::load(&path).expect("no inline secrets");
        // A password hash counts as a secret.
        let with_user = format!(
            "{from_file}\n[[smtp.user]]\nname = \"u\"\npassword_hash = \"{}\"\ntenant = \"contoso\"\n",
            hash()
        );
        let path = write_mode(dir.path(), "c.toml", &with_user, 0o644);
        assert!(Config::load(&path).is_err());
    }

    #[test]
    fn tls_files_are_checked_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "{MINIMAL}\n[smtp]\ntls_certificate_file = \"{0}/none.crt\"\ntls_key_file = \"{0}/none.key\"\n",
            dir.path().display()
        );
        let path = write_mode(dir.path(), "a.toml", &text, 0o600);
        let e = Config::load(&path).expect_err("missing files").to_string();
        assert!(e.starts_with("smtp.tls_certificate_file:"), "{e}");
    }

    #[test]
    fn example_config_loads_once_protected() {
        let example = include_str!("../config/authrelay.example.toml");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_mode(dir.path(), "authrelay.toml", example, 0o644);
        let e = Config::load(&path).expect_err("placeholder secret, world-readable");
        assert!(e.to_string().contains("chmod"), "{e}");
        let path = write_mode(dir.path(), "authrelay.toml", example, 0o640);
        Config::load(&path).expect("the example is valid");
    }

    #[test]
    fn addresses() {
        assert!(is_address("a@b.c"));
        assert!(!is_address("a b@c"));
        assert!(!is_address("@c"));
        assert!(!is_address("abc"));
    }
}
