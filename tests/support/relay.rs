//! Runs the real `authrelay` binary the way an operator does: a config file on disk,
//! `authrelay run --config PATH`, logs on stderr, SIGTERM to stop, SIGKILL to crash it.
//! Tests then talk to it over real TCP like any app would.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{App, FakeMicrosoft, SmtpClient};

/// A port that was free a moment ago. The tiny race with other processes is acceptable
/// for tests on loopback; the relay fails loudly if it loses it.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One tenant as the tests usually want it: an app registered at the fake with a secret.
pub struct TenantSpec {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub secret: String,
    pub mailbox: String,
    /// Extra TOML lines for the `[[tenant]]` table.
    pub extra: String,
}

impl TenantSpec {
    pub fn new(name: &str, mailbox: &str) -> TenantSpec {
        TenantSpec {
            name: name.into(),
            tenant_id: format!("{name}-tenant-id"),
            client_id: format!("{name}-client-id"),
            secret: format!("{name}-secret"),
            mailbox: mailbox.into(),
            extra: String::new(),
        }
    }

    pub fn extra(mut self, toml: &str) -> TenantSpec {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// No client secret (certificate or public-client tenants).
    pub fn without_secret(mut self) -> TenantSpec {
        self.secret.clear();
        self
    }

    /// Registers the app at the fake Microsoft.
    pub fn register(&self, fake: &FakeMicrosoft, send_as: &[&str]) {
        self.register_app(fake, send_as, |a| a);
    }

    /// Registers the app, letting the test adjust it (certificate, redirect URIs).
    pub fn register_app(
        &self,
        fake: &FakeMicrosoft,
        send_as: &[&str],
        adjust: impl FnOnce(App) -> App,
    ) {
        let mut app = App::new(&self.tenant_id, &self.client_id, &self.mailbox);
        if !self.secret.is_empty() {
            app = app.with_secret(&self.secret);
        }
        app.send_as = send_as.iter().map(|s| s.to_string()).collect();
        fake.add_app(adjust(app));
    }

    pub fn toml(&self, fake: &FakeMicrosoft, ca_file: &Path) -> String {
        format!(
            r#"
[[tenant]]
name = "{name}"
tenant_id = "{tid}"
client_id = "{cid}"
{secret}mailbox = "{mailbox}"
authority = "{authority}"
smtp_server = "{smtp}"
tls_ca_file = "{ca}"
upstream_timeout = "10s"
{extra}"#,
            name = self.name,
            tid = self.tenant_id,
            cid = self.client_id,
            secret = if self.secret.is_empty() {
                String::new()
            } else {
                format!("client_secret = \"{}\"\n", self.secret)
            },
            mailbox = self.mailbox,
            authority = fake.authority(),
            smtp = fake.smtp_server(),
            ca = ca_file.display(),
            extra = self.extra,
        )
    }
}

/// Extra TOML for the top level and the `[smtp]` and `[queue]` tables.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    pub top: &'a str,
    pub smtp: &'a str,
    /// Replaces the default fast retry schedule when set.
    pub queue: &'a str,
}

pub struct Relay {
    child: Option<Child>,
    pub smtp: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
    starts: u32,
}

impl Relay {
    /// Writes a config for these tenants and starts the relay, waiting until it accepts SMTP
    /// connections.
    pub async fn start(fake: &FakeMicrosoft, tenants: &[TenantSpec], opts: Options<'_>) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, fake.ca_pem()).expect("write CA");
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut config = format!(
            "state_dir = \"{state}\"\nhostname = \"relay.test\"\n{top}\n\
             [smtp]\nlisten = [\"{smtp}\"]\n{smtp_extra}\n\
             [admin]\nlisten = \"{admin}\"\n\
             [queue]\n{queue}\n",
            state = dir.path().join("state").display(),
            top = opts.top,
            smtp_extra = opts.smtp,
            queue = if opts.queue.is_empty() {
                "retry_initial = \"1s\"\nretry_max = \"2s\""
            } else {
                opts.queue
            },
        );
        for t in tenants {
            config.push_str(&t.toml(fake, &ca));
        }
        let config_path = dir.path().join("authrelay.toml");
        std::fs::write(&config_path, &config).expect("write config");
        // It holds client secrets: owner-only, as authrelay insists for such files.
        std::fs::set_permissions(
            &config_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod config");
        let log_path = dir.path().join("relay.log");
        let mut relay = Relay {
            child: None,
            smtp,
            admin,
            dir,
            config_path,
            log_path,
            starts: 0,
        };
        relay.launch().await;
        relay
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The TOML this relay runs with (to edit and reload).
    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read config")
    }

    /// Starts the process (again) and waits until the SMTP listener greets.
    pub async fn launch(&mut self) {
        // `free_port` can lose its port to another process before the relay binds it; then
        // pick new ports and start again (bounded).
        for _ in 0..5 {
            if self.try_launch().await {
                return;
            }
            self.move_to_free_ports();
        }
        panic!("authrelay found no free port:\n{}", self.logs());
    }

    /// Rewrites the config's listener addresses to ports that are free now.
    fn move_to_free_ports(&mut self) {
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = self
            .config()
            .replace(&format!("\"{}\"", self.smtp), &format!("\"{smtp}\""))
            .replace(&format!("\"{}\"", self.admin), &format!("\"{admin}\""));
        std::fs::write(&self.config_path, config).expect("write config");
        self.smtp = smtp;
        self.admin = admin;
    }

    /// Starts the process; `false` if it could not bind its ports, else waits for a greeting.
    async fn try_launch(&mut self) -> bool {
        self.starts += 1;
        let log_start = self.logs().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,authrelay=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("AUTHRELAY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn authrelay");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let logs = self.logs();
                if logs
                    .get(log_start..)
                    .is_some_and(|l| l.contains("Address already in use"))
                {
                    return false;
                }
                panic!("authrelay exited with {status} at start:\n{logs}");
            }
            // Any greeting means it listens (a test may have made it refuse us with 554).
            if let Ok((mut c, _greeting)) = SmtpClient::connect(&self.smtp.to_string()).await {
                let _ = c.quit().await;
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "authrelay did not start listening:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: a crash at an arbitrary moment.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`) with the system `kill`.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{sig} failed");
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "authrelay did not stop:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the logs contain `needle` (bounded).
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Files in the spool's envelope directory (queued or failed messages).
    pub fn queued(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir().join("queue/env"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the spool holds exactly `n` messages.
    pub async fn wait_queued(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.queued().len() != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} queued, have {}:\n{}",
                self.queued().len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens an SMTP session to the relay and says EHLO.
    pub async fn session(&self) -> SmtpClient {
        let (mut c, greeting) = SmtpClient::connect(&self.smtp.to_string())
            .await
            .expect("connect to relay");
        assert_eq!(greeting.code, 220, "greeting: {}", greeting.text());
        let r = c.ehlo("app01.test").await.expect("EHLO");
        assert_eq!(r.code, 250);
        c
    }

    /// Sends one message in a fresh session; returns the final reply to DATA.
    pub async fn send(&self, from: &str, to: &[&str], message: &str) -> super::Reply {
        let mut c = self.session().await;
        let r = c
            .send_mail(from, to, message.as_bytes())
            .await
            .expect("send");
        let _ = c.quit().await;
        r
    }

    /// Runs an `authrelay` subcommand against this relay's config; returns (exit code, stdout, stderr).
    pub fn command(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_authrelay"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("AUTHRELAY_CONFIG")
            .output()
            .expect("run authrelay");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// GET on the admin listener; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .expect("admin GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }
}

impl Relay {
    /// The `/status` JSON.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Polls `/status` (bounded) until `cond` holds; returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status().await;
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}: {s}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls a GET on the admin listener (bounded) until `cond(status, body)` holds.
    pub async fn wait_get(&self, path: &str, cond: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = self.get(path).await;
            if cond(code, &body) {
                return (code, body);
            }
            assert!(
                Instant::now() < deadline,
                "GET {path}: {code} {body}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small plain-text message.
pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: App <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nHello from the test suite.\r\n"
    )
}
