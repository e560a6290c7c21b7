//! A local stand-in for Microsoft: Entra ID (OAuth 2.0 token, authorize and device-code
//! endpoints), Microsoft Graph `sendMail`, and Exchange Online SMTP submission
//! (STARTTLS + SASL XOAUTH2).
//!
//! It speaks the real protocols over real TCP on 127.0.0.1 so that the relay under test uses
//! exactly the code paths it uses against Microsoft: reqwest/oauth2 for tokens, mail-send with
//! STARTTLS for SMTP. Everything the fake accepts or refuses is recorded in a shared
//! [`directory`] that tests inspect through [`FakeMicrosoft`].
//!
//! Use it from a test file with `mod support;` (or from an example with
//! `#[path = "../tests/support/mod.rs"] mod support;`). Each test binary uses only part of
//! this module, hence the blanket `dead_code` and `unused_imports` (re-exports) allowance.
#![allow(dead_code, unused_imports)]

pub mod assertion;
mod directory;
mod entra;
mod exchange;
mod graph;
mod headers;
#[cfg(test)] // runs the built binary, whose path only test builds know
pub mod relay;
pub mod smtp_client;
pub mod test_keys;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use assertion::{client_assertion, x5t_s256};
pub use directory::{
    App, Audience, Consent, Delivered, GraphFault, SmtpCommand, SmtpFault, SmtpStage, TokenFault,
    Via,
};
pub use headers::header;
pub use smtp_client::{Reply, SmtpClient};
pub use test_keys::{TestCertificate, app_certificate};

use directory::Shared;

/// Handle on a running fake. Cheap to clone; the servers stop when the last clone is dropped
/// or when [`FakeMicrosoft::shutdown`] is called.
#[derive(Clone)]
pub struct FakeMicrosoft {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    smtp_addr: SocketAddr,
    ca_pem: String,
    shutdown: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl FakeMicrosoft {
    /// Starts the HTTP server (Entra ID + Graph) and the SMTP server, each on 127.0.0.1:0.
    pub async fn start() -> FakeMicrosoft {
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Microsoft: bind HTTP listener");
        let http_addr = http.local_addr().expect("HTTP listener address");
        let smtp = exchange::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("fake Microsoft: bind SMTP listener");
        let smtp_addr = smtp.local_addr().expect("SMTP listener address");
        let tls = tls::SmtpTls::generate();

        let shared = Arc::new(Shared::new(format!("http://{http_addr}")));
        let (shutdown, shutdown_rx) = watch::channel(false);

        let router = entra::router()
            .merge(graph::router())
            .with_state(shared.clone());
        let mut http_shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(http, router)
                .with_graceful_shutdown(async move {
                    let _ = http_shutdown.changed().await;
                })
                .await;
        });
        tokio::spawn(exchange::accept_loop(
            shared.clone(),
            smtp,
            smtp_addr,
            tls.acceptor,
            shutdown_rx,
        ));

        FakeMicrosoft {
            inner: Arc::new(Inner {
                shared,
                http_addr,
                smtp_addr,
                ca_pem: tls.ca_pem,
                shutdown,
            }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    // ----- addresses -------------------------------------------------------------------------

    /// `http://127.0.0.1:PORT`; the token URL is `{authority}/{tenant_id}/oauth2/v2.0/token`.
    pub fn authority(&self) -> String {
        format!("http://{}", self.inner.http_addr)
    }

    /// The token URL for a tenant, which is also the `aud` a client assertion must carry.
    pub fn token_url(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/oauth2/v2.0/token", self.authority())
    }

    /// Same HTTP server as the authority: `http://127.0.0.1:PORT` (paths start with `/v1.0/`).
    pub fn graph_endpoint(&self) -> String {
        self.authority()
    }

    /// `localhost:PORT`: the SMTP certificate names `localhost` and `127.0.0.1`.
    pub fn smtp_server(&self) -> String {
        format!("localhost:{}", self.inner.smtp_addr.port())
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        self.inner.smtp_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.inner.http_addr
    }

    /// PEM of the CA that signed the SMTP server certificate (the relay's `tls_ca_file`).
    pub fn ca_pem(&self) -> String {
        self.inner.ca_pem.clone()
    }

    // ----- directory -------------------------------------------------------------------------

    /// Registers an app (one tenant can hold several apps).
    pub fn add_app(&self, app: App) {
        self.shared().with(|s| s.apps.push(app));
    }

    /// Mints an access token as if `client_credentials` had been granted to the app, without
    /// going through HTTP. Handy for raw SMTP/Graph tests; the relay should use the real flow.
    pub fn mint_access_token(
        &self,
        tenant_id: &str,
        client_id: &str,
        audience: Audience,
    ) -> String {
        self.shared().with(|s| {
            let app = s
                .find_app(tenant_id, client_id)
                .unwrap_or_else(|| panic!("no app {client_id} in tenant {tenant_id}"))
                .clone();
            s.issue_access_token(&app, audience, false)
        })
    }

    /// Makes every access token issued so far expired (as if time had passed); refresh tokens
    /// stay valid.
    pub fn expire_access_tokens(&self) {
        self.shared().with(|s| s.expire_access_tokens());
    }

    // ----- deliveries ------------------------------------------------------------------------

    /// Every message accepted so far, over SMTP and Graph, in order of acceptance.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.shared().read(|s| s.delivered.clone())
    }

    /// Waits until at least `n` messages were accepted; panics after `timeout` with a list of
    /// what did arrive and the recent SMTP commands.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let what = format!("{n} delivered message(s)");
        self.wait_until(timeout, &what, |f| f.delivered().len() >= n)
            .await;
        self.delivered()
    }

    /// Waits, without polling sleeps, until `cond` holds; it is re-checked whenever anything
    /// in the fake changes (a token request, an SMTP command, a delivery, a connection).
    /// Panics after `timeout` naming `what` and describing the fake's state.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&FakeMicrosoft) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared().changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cond(self) {
                return;
            }
            let timed_out = tokio::time::Instant::now() >= deadline
                || tokio::time::timeout_at(deadline, changed).await.is_err();
            if timed_out {
                if cond(self) {
                    return;
                }
                panic!(
                    "fake Microsoft: timed out after {timeout:?} waiting for {what}\n{}",
                    self.describe()
                );
            }
        }
    }

    /// A human-readable summary used in timeout panics.
    pub fn describe(&self) -> String {
        self.shared().read(|s| {
            let mut out = format!(
                "delivered ({}):\n",
                s.delivered.len()
            );
            for d in &s.delivered {
                out.push_str(&format!(
                    "  via {:?} as {} from {} to {:?} ({} bytes)\n",
                    d.via,
                    d.user,
                    d.mail_from,
                    d.rcpt_to,
                    d.data.len()
                ));
            }
            out.push_str(&format!(
                "token requests: {} {:?}; smtp connections: {} (max concurrent {}); auth failures: {}\n",
                s.token_requests.len(),
                s.token_requests,
                s.smtp_connections,
                s.smtp_max_concurrent,
                s.auth_failures
            ));
            let tail = s.smtp_log.len().saturating_sub(30);
            out.push_str(&format!("last SMTP commands ({} total):\n", s.smtp_log.len()));
            for c in &s.smtp_log[tail..] {
                out.push_str(&format!("  #{} {}\n", c.connection, c.line));
            }
            out
        })
    }

    // ----- SMTP faults -----------------------------------------------------------------------

    /// Replaces all persistent SMTP faults with `f` (`SmtpFault::None` clears them).
    pub fn set_smtp_fault(&self, f: SmtpFault) {
        self.set_smtp_faults(vec![f]);
    }

    /// Replaces all persistent SMTP faults; they combine (e.g. `DelayData` + `RcptReply`).
    pub fn set_smtp_faults(&self, faults: Vec<SmtpFault>) {
        let faults: Vec<SmtpFault> = faults
            .into_iter()
            .filter(|f| !matches!(f, SmtpFault::None))
            .collect();
        let refuse = faults
            .iter()
            .any(|f| matches!(f, SmtpFault::RefuseConnections));
        self.shared().with(|s| s.smtp_faults = faults);
        self.shared().refuse.send_if_modified(|r| {
            let changed = *r != refuse;
            *r = refuse;
            changed
        });
    }

    /// Adds one persistent SMTP fault to those already set.
    pub fn add_smtp_fault(&self, f: SmtpFault) {
        let mut faults = self.shared().read(|s| s.smtp_faults.clone());
        faults.push(f);
        self.set_smtp_faults(faults);
    }

    /// Like `set_smtp_fault(SmtpFault::RefuseConnections)`, but returns only once the
    /// listener is closed, so the next connect is guaranteed to fail with ECONNREFUSED.
    /// (With the plain setter, a connection racing the change is accepted and closed at once.)
    pub async fn refuse_smtp_connections(&self) {
        self.add_smtp_fault(SmtpFault::RefuseConnections);
        let mut rx = self.shared().listening.subscribe();
        let _ = rx.wait_for(|listening| !*listening).await;
    }

    /// Clears `RefuseConnections` (keeping other faults) and returns once the listener is
    /// back on the same port.
    pub async fn accept_smtp_connections(&self) {
        let faults = self.shared().read(|s| s.smtp_faults.clone());
        self.set_smtp_faults(
            faults
                .into_iter()
                .filter(|f| !matches!(f, SmtpFault::RefuseConnections))
                .collect(),
        );
        let mut rx = self.shared().listening.subscribe();
        let _ = rx.wait_for(|listening| *listening).await;
    }

    /// Queues one-shot replies for a stage: each is used once, by the next command at that
    /// stage on any connection, before persistent faults apply. E.g.
    /// `push_smtp_replies(SmtpStage::DataEnd, ["451 4.3.2 Try again later"])`.
    /// At `Greeting`, the reply is sent and the connection closed.
    pub fn push_smtp_replies<I, S>(&self, stage: SmtpStage, replies: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shared().with(|s| {
            for r in replies {
                s.smtp_script.push_back((stage, r.into()));
            }
        });
    }

    /// Exchange Online allows 3 concurrent connections per mailbox; with a limit set, a
    /// session authenticated beyond it gets `432 4.3.2 STOREDRV.ClientSubmit; sender thread
    /// limit exceeded` at MAIL. Default: no limit (count with `max_concurrent_smtp`).
    pub fn set_smtp_mailbox_limit(&self, limit: Option<usize>) {
        self.shared().with(|s| s.smtp_mailbox_limit = limit);
    }

    /// Enforces Exchange's per-mailbox message rate: more than `limit` messages in any
    /// `window` get `421 4.4.2 Message submission rate ... exceeded` at the final dot.
    pub fn set_smtp_rate_limit(&self, limit: usize, window: Duration) {
        self.shared()
            .with(|s| s.smtp_rate_limit = Some((limit, window)));
    }

    /// How many messages the rate limit refused.
    pub fn smtp_rate_refusals(&self) -> usize {
        self.shared().read(|s| s.smtp_rate_refusals)
    }

    // ----- SMTP observations -----------------------------------------------------------------

    /// Command lines seen, in order, across connections (AUTH payloads redacted).
    pub fn smtp_log(&self) -> Vec<String> {
        self.shared()
            .read(|s| s.smtp_log.iter().map(|c| c.line.clone()).collect())
    }

    /// Command lines with their connection number and whether the client had already sent
    /// more bytes (evidence of pipelining).
    pub fn smtp_commands(&self) -> Vec<SmtpCommand> {
        self.shared().read(|s| s.smtp_log.clone())
    }

    /// Connections accepted so far (a refused connection is not counted).
    pub fn smtp_connections(&self) -> usize {
        self.shared().read(|s| s.smtp_connections)
    }

    pub fn current_smtp_connections(&self) -> usize {
        self.shared().read(|s| s.smtp_current)
    }

    pub fn max_concurrent_smtp(&self) -> usize {
        self.shared().read(|s| s.smtp_max_concurrent)
    }

    /// AUTH attempts that did not end in 235.
    pub fn auth_failures(&self) -> usize {
        self.shared().read(|s| s.auth_failures)
    }

    // ----- Entra ID --------------------------------------------------------------------------

    pub fn set_token_fault(&self, f: TokenFault) {
        self.shared().with(|s| s.token_fault = f);
    }

    /// `expires_in` for access tokens issued from now on (default 3600 s).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.shared().with(|s| s.token_lifetime = secs);
    }

    /// Number of `/token` requests, whatever their outcome.
    pub fn token_requests(&self) -> usize {
        self.shared().read(|s| s.token_requests.len())
    }

    /// Number of `/token` requests with this `grant_type` (e.g. `"refresh_token"`).
    pub fn token_requests_for(&self, grant_type: &str) -> usize {
        self.shared()
            .read(|s| s.token_requests.iter().filter(|g| *g == grant_type).count())
    }

    /// Whether the (auto-)user consents at `/authorize` and in the device-code flow.
    pub fn set_consent(&self, consent: Consent) {
        self.shared().with(|s| s.consent = consent);
    }

    /// How many polls of a device code answer `authorization_pending` before success
    /// (default 2).
    pub fn set_device_pending_polls(&self, n: u32) {
        self.shared().with(|s| s.device_pending_polls = n);
    }

    /// The `interval` announced by `/devicecode`; polling faster gets `slow_down` (default 1 s).
    pub fn set_device_interval(&self, secs: u64) {
        self.shared().with(|s| s.device_interval = secs);
    }

    /// `expires_in` of new device codes (default 900 s); past it, polls get `expired_token`.
    pub fn set_device_code_lifetime(&self, secs: u64) {
        self.shared().with(|s| s.device_code_lifetime = secs);
    }

    // ----- Graph -----------------------------------------------------------------------------

    /// Persistent Graph fault (`GraphFault::None` clears it).
    pub fn set_graph_fault(&self, f: GraphFault) {
        self.shared().with(|s| s.graph_fault = f);
    }

    /// One-shot Graph faults, used by the next requests in order before the persistent one.
    pub fn push_graph_faults(&self, faults: impl IntoIterator<Item = GraphFault>) {
        self.shared().with(|s| s.graph_script.extend(faults));
    }

    pub fn graph_requests(&self) -> usize {
        self.shared().read(|s| s.graph_requests)
    }

    // ----- lifecycle -------------------------------------------------------------------------

    /// Stops accepting on both listeners and ends SMTP sessions. Idempotent.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }
}
