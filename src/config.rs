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

    /// Loads defaults < file < environment and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_toml(&text)
    }

    /// Same as [`Config::load`] for config text already in memory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .merge(
                Env::prefixed("AUTHRELAY_")
                    .ignore(&["config"])
                    .split("__")
                    .lowercase(true),
            )
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.smtp.listen.is_empty() {
            return Err(invalid("smtp.listen", "at least one address is required"));
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

    #[test]
    fn addresses() {
        assert!(is_address("a@b.c"));
        assert!(!is_address("a b@c"));
        assert!(!is_address("@c"));
        assert!(!is_address("abc"));
    }
}
