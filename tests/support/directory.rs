//! The shared "directory" behind every fake endpoint: registered apps, issued grants and
//! tokens, injected faults, and what was delivered. Entra issues tokens into it, Exchange and
//! Graph check tokens against it, tests read it. One `std::sync::Mutex`, never held across an
//! `.await`; every change wakes `changed` so tests can wait on conditions instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// An app registration in a tenant, with the mailbox its tokens are good for.
#[derive(Clone, Debug, Default)]
pub struct App {
    pub tenant_id: String,
    pub client_id: String,
    /// Confidential client with a secret. With neither secret nor certificate the app is a
    /// public client (device code / auth code without client authentication).
    pub client_secret: Option<String>,
    /// Public certificate (PEM) whose key signs JWT client assertions.
    pub certificate_pem: Option<String>,
    /// The mailbox tokens are issued for: the XOAUTH2 `user=` and the Graph `users/{mailbox}`.
    pub mailbox: String,
    /// Addresses the mailbox may send as (MAIL FROM and the `From:` header).
    pub send_as: Vec<String>,
    /// Registered redirect URIs; empty means any redirect URI is accepted.
    pub redirect_uris: Vec<String>,
}

impl App {
    pub fn new(tenant_id: &str, client_id: &str, mailbox: &str) -> App {
        App {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            mailbox: mailbox.into(),
            ..App::default()
        }
    }

    pub fn with_secret(mut self, secret: &str) -> App {
        self.client_secret = Some(secret.into());
        self
    }

    pub fn with_certificate(mut self, cert_pem: &str) -> App {
        self.certificate_pem = Some(cert_pem.into());
        self
    }

    pub fn with_send_as(mut self, addrs: &[&str]) -> App {
        self.send_as = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn with_redirect_uri(mut self, uri: &str) -> App {
        self.redirect_uris.push(uri.into());
        self
    }

    pub(crate) fn is_confidential(&self) -> bool {
        self.client_secret.is_some() || self.certificate_pem.is_some()
    }

    /// Whether this app's mailbox may use `addr` as sender.
    pub(crate) fn may_send_as(&self, addr: &str) -> bool {
        addr.eq_ignore_ascii_case(&self.mailbox)
            || self.send_as.iter().any(|a| a.eq_ignore_ascii_case(addr))
    }
}

/// A message the fake accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// SMTP: dot-unstuffed, without the final `.CRLF`. Graph: the decoded MIME.
    pub data: Vec<u8>,
    pub via: Via,
    /// The authenticated mailbox.
    pub user: String,
}

impl Delivered {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Smtp,
    Graph,
}

/// Which resource an access token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// `https://outlook.office365.com` (SMTP AUTH).
    Smtp,
    /// `https://graph.microsoft.com`.
    Graph,
}

/// Persistent SMTP faults. Several can be active at once (see `set_smtp_faults`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpFault {
    None,
    /// Close the listener: connects fail with ECONNREFUSED until cleared.
    RefuseConnections,
    /// `421 4.3.2` greeting, then close (EXO's "concurrent connections exceeded").
    Greeting421,
    /// Reply to every AUTH with this instead of judging the token.
    AuthReply(String),
    /// Reply to every MAIL FROM with this.
    MailReply(String),
    /// Reply to RCPT TO for this address (case-insensitive) with this.
    RcptReply {
        addr: String,
        reply: String,
    },
    /// Reply to the final dot with this (message not recorded).
    DataReply(String),
    /// Close the connection after the first line of message data.
    DropMidData,
    /// Sleep before replying to the final dot (real EXO takes ~150 ms).
    DelayData(Duration),
}

/// Stages at which one-shot scripted replies (`push_smtp_replies`) can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpStage {
    Greeting,
    Ehlo,
    Auth,
    Mail,
    Rcpt,
    /// The reply to the final dot of DATA.
    DataEnd,
}

/// Faults of the `/token` endpoint, applied to every grant until cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFault {
    None,
    /// HTTP 503 `temporarily_unavailable`.
    Unavailable,
    /// 400 `invalid_grant` AADSTS700082 (refresh token expired).
    InvalidGrant,
    /// 401 `invalid_client` AADSTS7000222 (client secret expired).
    SecretExpired,
    /// 401 `invalid_client` AADSTS7000215 (wrong secret).
    WrongSecret,
}

/// Faults of Graph `sendMail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphFault {
    None,
    /// 429 with `Retry-After`.
    TooManyRequests {
        retry_after: u64,
    },
    /// 503 with `Retry-After`.
    Unavailable {
        retry_after: u64,
    },
    /// 401 `InvalidAuthenticationToken`.
    Unauthorized,
    /// 403 `ErrorAccessDenied`.
    Forbidden,
    /// 400 with this Graph error code and message (e.g. `ErrorMimeContentInvalid`).
    BadRequest {
        code: String,
        message: String,
    },
}

/// What the simulated user does when asked to sign in and consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    Grant,
    /// `/authorize` redirects with `error=access_denied`; device polls get
    /// `authorization_declined`.
    Deny,
}

/// One SMTP command line as the fake received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpCommand {
    /// 1-based connection number, in order of acceptance.
    pub connection: usize,
    /// The line without CRLF; AUTH payloads replaced by `<redacted>`.
    pub line: String,
    /// Whether the session was under TLS when the command arrived.
    pub tls: bool,
    /// Whether more client bytes were already buffered when the command was read, i.e. the
    /// client did not wait for this reply before sending more (pipelining).
    pub more_buffered: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct AccessToken {
    pub tenant_id: String,
    pub client_id: String,
    pub mailbox: String,
    pub audience: Audience,
    pub expires: Instant,
    pub delegated: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct RefreshToken {
    pub tenant_id: String,
    pub client_id: String,
    pub scope: String,
    /// Set when the token was redeemed (rotation makes it unusable).
    pub redeemed: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct AuthCode {
    pub tenant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub expires: Instant,
    pub redeemed: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct DeviceCode {
    pub tenant_id: String,
    pub client_id: String,
    pub scope: String,
    pub expires: Instant,
    pub interval: Duration,
    pub pending_polls_left: u32,
    pub last_poll: Option<Instant>,
    pub redeemed: bool,
}

pub(crate) struct State {
    pub apps: Vec<App>,
    pub access_tokens: HashMap<String, AccessToken>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    pub auth_codes: HashMap<String, AuthCode>,
    pub device_codes: HashMap<String, DeviceCode>,
    pub delivered: Vec<Delivered>,

    pub token_fault: TokenFault,
    pub token_lifetime: u64,
    pub token_requests: Vec<String>,
    pub consent: Consent,
    pub device_pending_polls: u32,
    pub device_interval: u64,
    pub device_code_lifetime: u64,

    pub smtp_faults: Vec<SmtpFault>,
    pub smtp_script: VecDeque<(SmtpStage, String)>,
    pub smtp_log: Vec<SmtpCommand>,
    pub smtp_connections: usize,
    pub smtp_current: usize,
    pub smtp_max_concurrent: usize,
    pub smtp_mailbox_limit: Option<usize>,
    /// Exchange's per-mailbox message rate: at most `.0` messages in any `.1`.
    pub smtp_rate_limit: Option<(usize, std::time::Duration)>,
    pub smtp_accepted_at: VecDeque<std::time::Instant>,
    pub smtp_rate_refusals: usize,
    pub smtp_sessions_per_mailbox: HashMap<String, usize>,
    pub auth_failures: usize,

    pub graph_fault: GraphFault,
    pub graph_script: VecDeque<GraphFault>,
    pub graph_requests: usize,
}

impl State {
    pub fn find_app(&self, tenant_id: &str, client_id: &str) -> Option<&App> {
        self.apps
            .iter()
            .find(|a| a.tenant_id.eq_ignore_ascii_case(tenant_id) && a.client_id == client_id)
    }

    pub fn tenant_exists(&self, tenant_id: &str) -> bool {
        self.apps
            .iter()
            .any(|a| a.tenant_id.eq_ignore_ascii_case(tenant_id))
    }

    /// Issues an opaque access token for the app's mailbox and returns it.
    pub fn issue_access_token(&mut self, app: &App, audience: Audience, delegated: bool) -> String {
        let token = format!("fake-at.{}", random_token(32));
        self.access_tokens.insert(
            token.clone(),
            AccessToken {
                tenant_id: app.tenant_id.clone(),
                client_id: app.client_id.clone(),
                mailbox: app.mailbox.clone(),
                audience,
                expires: Instant::now() + Duration::from_secs(self.token_lifetime),
                delegated,
            },
        );
        token
    }

    pub fn issue_refresh_token(&mut self, app: &App, scope: &str) -> String {
        let token = format!("fake-rt.{}", random_token(48));
        self.refresh_tokens.insert(
            token.clone(),
            RefreshToken {
                tenant_id: app.tenant_id.clone(),
                client_id: app.client_id.clone(),
                scope: scope.into(),
                redeemed: false,
            },
        );
        token
    }

    /// A token that this fake issued, still valid, for this audience.
    pub fn valid_access_token(
        &self,
        token: &str,
        audience: Audience,
    ) -> Result<&AccessToken, &'static str> {
        let t = self
            .access_tokens
            .get(token)
            .ok_or("token not issued by this authority")?;
        if t.audience != audience {
            return Err("invalid audience");
        }
        if Instant::now() >= t.expires {
            return Err("token expired");
        }
        Ok(t)
    }

    pub fn app_of(&self, token: &AccessToken) -> Option<&App> {
        self.find_app(&token.tenant_id, &token.client_id)
    }

    pub fn expire_access_tokens(&mut self) {
        let past = Instant::now();
        for t in self.access_tokens.values_mut() {
            t.expires = past;
        }
    }

    /// Takes the next one-shot reply scripted for `stage`, if any.
    pub fn take_scripted(&mut self, stage: SmtpStage) -> Option<String> {
        let pos = self.smtp_script.iter().position(|(s, _)| *s == stage)?;
        self.smtp_script.remove(pos).map(|(_, r)| r)
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Woken on every change of `state` (tests wait on conditions with it).
    pub changed: Notify,
    /// Whether SMTP connections should be refused (the accept loop follows it).
    pub refuse: watch::Sender<bool>,
    /// Whether the SMTP listener is currently open (the accept loop reports it).
    pub listening: watch::Sender<bool>,
    /// `http://127.0.0.1:PORT`, used for `aud` checks and device-code URLs.
    pub authority: String,
}

impl Shared {
    pub fn new(authority: String) -> Shared {
        Shared {
            state: Mutex::new(State {
                apps: Vec::new(),
                access_tokens: HashMap::new(),
                refresh_tokens: HashMap::new(),
                auth_codes: HashMap::new(),
                device_codes: HashMap::new(),
                delivered: Vec::new(),
                token_fault: TokenFault::None,
                token_lifetime: 3600,
                token_requests: Vec::new(),
                consent: Consent::Grant,
                device_pending_polls: 2,
                device_interval: 1,
                device_code_lifetime: 900,
                smtp_faults: Vec::new(),
                smtp_script: VecDeque::new(),
                smtp_log: Vec::new(),
                smtp_connections: 0,
                smtp_current: 0,
                smtp_max_concurrent: 0,
                smtp_mailbox_limit: None,
                smtp_rate_limit: None,
                smtp_accepted_at: VecDeque::new(),
                smtp_rate_refusals: 0,
                smtp_sessions_per_mailbox: HashMap::new(),
                auth_failures: 0,
                graph_fault: GraphFault::None,
                graph_script: VecDeque::new(),
                graph_requests: 0,
            }),
            changed: Notify::new(),
            refuse: watch::Sender::new(false),
            listening: watch::Sender::new(true),
            authority,
        }
    }

    /// Runs `f` on the state under the lock, then wakes waiters.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = {
            let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        };
        self.changed.notify_waiters();
        r
    }

    /// Reads the state under the lock without waking waiters (so that a waiter's condition,
    /// which reads, does not wake itself).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

/// A random URL-safe string of `bytes` random bytes.
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A GUID-shaped random id (trace and correlation ids in error bodies).
pub(crate) fn guid() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now, as Microsoft prints it in error bodies: `2025-01-31 12:00:00Z`.
pub(crate) fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]Z"
        ))
        .unwrap_or_default()
}
