//! The one-shot commands besides `run`: `verify`, `authorize`, `queue`, `send-test`. Each prints for a
//! person and returns the process exit code; `main.rs` only parses and dispatches.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{AuthFlow, Config, Tenant, Transport, format_time};
use crate::metrics::Metrics;
use crate::oauth::{TokenManager, authorize, device};
use crate::outbound::{Outbound, graph};
use crate::queue::{Envelope, RcptStatus, Spool, SpoolError, State};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("tokens: {0}")]
    Tokens(#[from] crate::oauth::TokenError),
    #[error("no tenant named '{0}' in the config")]
    NoTenant(String),
    #[error("{0}")]
    Submit(#[from] crate::submit::SubmitError),
}

/// Checks each tenant end to end; prints `TENANT: Verified` or `TENANT: Not Verified: reason`.
pub async fn verify(config: &Config, only: Option<&str>) -> Result<ExitCode, CliError> {
    let tenants: Vec<&Tenant> = match only {
        Some(name) => vec![
            config
                .tenant(name)
                .ok_or_else(|| CliError::NoTenant(name.into()))?,
        ],
        None => config.tenants.iter().collect(),
    };
    let tokens = Arc::new(TokenManager::new(
        &config.state_dir,
        Arc::new(Metrics::new()),
    )?);
    let outbound = Outbound::new(tokens, config.hostname.clone());
    let mut all_ok = true;
    for t in tenants {
        match verify_tenant(&outbound, t).await {
            Ok(()) => println!("{}: Verified", t.name),
            Err(reason) => {
                all_ok = false;
                println!("{}: Not Verified: {reason}", t.name);
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A token, then for SMTP EHLO/STARTTLS/AUTH XOAUTH2/QUIT (everything a delivery does but
/// the message), for Graph an authorized read of the mailbox (which cannot prove Mail.Send
/// without sending; a note on stderr says what was left unchecked).
pub async fn verify_tenant(outbound: &Outbound, tenant: &Tenant) -> Result<(), String> {
    match tenant.transport {
        Transport::Smtp => {
            let up = outbound.connect(tenant).await.map_err(|(_, why)| why)?;
            up.quit().await;
        }
        Transport::Graph => {
            if let Some(note) = graph::verify(outbound, tenant).await? {
                eprintln!("{}: note: {note}", tenant.name);
            }
        }
    }
    Ok(())
}

/// Delegated sign-in for one tenant. Without `device`, prints the admin listener's
/// `/oauth/TENANT/authorize` link (authorization code with PKCE; the running daemon receives
/// the code). With `device`, or for a `device_code` tenant, runs the device code flow here and
/// stores the token under `state_dir/tokens/`, where a running daemon finds it at its next
/// refresh. Exit 0 on success, 1 when sign-in fails, 2 when there is nothing to do.
pub async fn authorize(config: &Config, name: &str, device: bool) -> Result<ExitCode, CliError> {
    let Some(tenant) = config.tenant(name) else {
        eprintln!("authrelay: {}", CliError::NoTenant(name.into()));
        return Ok(ExitCode::from(2));
    };
    if !tenant.auth.is_delegated() {
        eprintln!(
            "{name}: uses client_credentials: there is nothing to authorize; the app's own credentials get its tokens (check them with `authrelay verify {name}`)"
        );
        return Ok(ExitCode::from(2));
    }
    if device || tenant.auth == AuthFlow::DeviceCode {
        authorize_device(config, tenant).await
    } else {
        Ok(authorize_browser(config, tenant).await)
    }
}

async fn authorize_browser(config: &Config, tenant: &Tenant) -> ExitCode {
    let name = &tenant.name;
    let (Some(listen), Some(base), Some(redirect)) = (
        config.admin.listen,
        authorize::admin_base_url(config),
        authorize::redirect_uri(config),
    ) else {
        eprintln!(
            "{name}: the admin listener is disabled (admin.listen = \"\"), so Microsoft has nowhere to send the browser back to; enable it, or run `authrelay authorize {name} --device`"
        );
        return ExitCode::from(2);
    };
    println!("Open this URL in a browser that reaches the authrelay admin listener:\n");
    println!("    {base}/oauth/{name}/authorize\n");
    println!(
        "It sends you on to Microsoft's sign-in page ({}) with a one-time state and PKCE challenge that the running daemon keeps for 10 minutes. Sign in as {}. Microsoft then sends the browser back to\n",
        tenant.endpoint("authorize"),
        tenant.mailbox
    );
    println!("    {redirect}\n");
    println!(
        "where the daemon exchanges the code and stores the token. Register that redirect URI exactly as shown in the app registration (Authentication, platform \"Web\")."
    );
    let ip = listen.ip();
    if config.admin.public_url.is_none() && (ip.is_loopback() || ip.is_unspecified()) {
        let target = if ip.is_unspecified() {
            format!("127.0.0.1:{}", listen.port())
        } else {
            listen.to_string()
        };
        println!(
            "\nMicrosoft sends the browser back to localhost, so open the URL on this host, or from another machine through a tunnel to the admin port:\n\n    ssh -L {port}:{target} {host}",
            port = listen.port(),
            host = config.hostname,
        );
    }
    let probe = if ip.is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(probe),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !reachable {
        eprintln!(
            "\nwarning: nothing answers on {probe}: start the daemon (`authrelay run`, or its systemd service) before opening the URL"
        );
    }
    ExitCode::SUCCESS
}

async fn authorize_device(config: &Config, tenant: &Tenant) -> Result<ExitCode, CliError> {
    let name = &tenant.name;
    let tokens = TokenManager::new(&config.state_dir, Arc::new(Metrics::new()))?;
    warn_if_foreign_state_dir(config, name);
    if tenant.auth == AuthFlow::AuthorizationCode {
        println!(
            "{name} is set up for the authorization code flow; the device code flow also works if the app registration allows public client flows."
        );
    }
    let result = device::run(tokens.http(), tenant, &tokens, |dc| {
        println!("{}", device::instructions(dc));
        println!(
            "Sign in as {}. Waiting for you (the code expires in {})...",
            tenant.mailbox,
            humantime::format_duration(Duration::from_secs(dc.expires_in))
        );
    })
    .await;
    match result {
        Ok(()) => {
            println!("{name}: authorized; token stored");
            println!("A running daemon uses it at its next token refresh attempt.");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{name}: not authorized: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `sudo authrelay authorize` writes a root-owned 0600 token file that a daemon running as
/// its own user cannot read: say so before the person signs in.
fn warn_if_foreign_state_dir(config: &Config, name: &str) {
    use std::os::unix::fs::MetadataExt;
    let dir = config.state_dir.join("tokens");
    let Ok(meta) = std::fs::metadata(&dir) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        eprintln!(
            "warning: {} belongs to uid {} but this command runs as uid {me}; the daemon may not be able to read the token stored here. Run it as the service's user, e.g. `sudo -u authrelay authrelay authorize {name} --device`.",
            dir.display(),
            meta.uid()
        );
    }
}

pub enum QueueAction {
    List,
    Show(String),
    Retry(String),
    RetryAll,
    Delete(String),
}

pub async fn queue(config: &Config, action: QueueAction) -> Result<ExitCode, CliError> {
    let spool = Spool::inspect(&config.state_dir)?;
    match action {
        QueueAction::List => {
            let (envelopes, errors) = spool.scan()?;
            if envelopes.is_empty() {
                println!("queue is empty");
            }
            for e in &envelopes {
                print_line(e);
            }
            for e in errors {
                eprintln!("unreadable: {e}");
            }
        }
        QueueAction::Show(id) => {
            let e = spool.load(&id).await?;
            print_line(&e);
            println!(
                "  from: <{}>  client: {}  received: {}",
                e.mail_from,
                e.client,
                format_time(SystemTime::UNIX_EPOCH + Duration::from_secs(e.received_at))
            );
            for r in &e.recipients {
                println!(
                    "  to: <{}> {:?} {}",
                    r.address,
                    r.status,
                    r.reply.as_deref().unwrap_or("")
                );
            }
            if let Some(err) = &e.last_error {
                println!("  last error: {err}");
            }
            let body = spool.read_message(&id).await?;
            let end = find_header_end(&body);
            println!("{}", String::from_utf8_lossy(&body[..end]).trim_end());
        }
        QueueAction::Retry(id) => {
            retry(&spool, &id).await?;
            notify_daemon(config, &format!("/queue/{id}/retry")).await;
            println!("{id}: scheduled for delivery now");
        }
        QueueAction::RetryAll => {
            let (envelopes, _) = spool.scan()?;
            for e in &envelopes {
                retry(&spool, &e.id).await?;
            }
            notify_daemon(config, "/queue/retry").await;
            println!("{} messages scheduled for delivery now", envelopes.len());
        }
        QueueAction::Delete(id) => {
            spool.remove(&id).await?;
            notify_daemon(config, &format!("/queue/{id}/delete")).await;
            println!("{id}: deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(spool: &Spool, id: &str) -> Result<(), CliError> {
    let mut e = spool.load(id).await?;
    e.next_attempt = 0;
    if e.state == State::Failed {
        // A failed message retried by hand gets its refused recipients another go.
        e.state = State::Queued;
        for r in e
            .recipients
            .iter_mut()
            .filter(|r| r.status == RcptStatus::Failed)
        {
            r.status = RcptStatus::Pending;
        }
    }
    spool.update(&e).await?;
    Ok(())
}

/// Tells a running daemon to re-read the spool entry; harmless when none runs.
async fn notify_daemon(config: &Config, path: &str) {
    let Some(addr) = config.admin.listen else {
        return;
    };
    let url = format!("http://{addr}{path}");
    let client = reqwest::Client::new();
    if let Err(e) = client
        .post(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        tracing::debug!(error = %e, "daemon not reachable; it will pick the change up at its next start");
    }
}

fn print_line(e: &Envelope) {
    let state = match e.state {
        State::Queued => "queued",
        State::Failed => "FAILED",
    };
    let pending = e.pending().count();
    println!(
        "{}  {:6}  {:>8}B  tenant={}  age={}  rcpts={}/{}  attempts={}  {}",
        e.id,
        state,
        e.size,
        e.tenant,
        humantime::format_duration(Duration::from_secs(e.age().as_secs())),
        pending,
        e.recipients.len(),
        e.attempts,
        e.last_error.as_deref().unwrap_or("")
    );
}

fn find_header_end(body: &[u8]) -> usize {
    body.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| body.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(body.len())
}

/// Sends a short message from the tenant's mailbox through the local listener.
pub async fn send_test(config: &Config, tenant: &str, to: &str) -> Result<ExitCode, CliError> {
    let t = config
        .tenant(tenant)
        .ok_or_else(|| CliError::NoTenant(tenant.into()))?;
    let addr = config
        .smtp
        .submission_address()
        .ok_or_else(|| CliError::NoTenant(tenant.into()))?;
    let now = format_time(SystemTime::now());
    let message = format!(
        "From: authrelay test <{from}>\r\nTo: <{to}>\r\nSubject: authrelay test message for {tenant}\r\n\r\nThis is a test message sent by `authrelay send-test` at {now}.\r\n",
        from = t.mailbox
    );
    let reply = crate::submit::submit(
        addr,
        &config.hostname,
        &t.mailbox,
        &[to.to_string()],
        message.as_bytes(),
    )
    .await?;
    println!("{reply}");
    Ok(ExitCode::SUCCESS)
}

/// `authrelay hash-password`: reads a password from standard input (without echo, and twice,
/// on a terminal; else one line) and prints its Argon2id PHC string for
/// `[[smtp.user]] password_hash`. The password itself is never printed.
pub fn hash_password() -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("authrelay: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::inbound::hash_password(password.as_bytes()) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authrelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_password() -> Result<String, String> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden("Password: ")?;
        let again = prompt_hidden("Repeat password: ")?;
        if first != again {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        read_line()?
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

/// One line from standard input, without its line end.
fn read_line() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// Prompts on stderr and reads a line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    use std::io::Write;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let fd = libc::STDIN_FILENO;
    let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the termios it is given when it returns 0.
    let have_saved = unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } == 0;
    if have_saved {
        // SAFETY: initialised by the successful tcgetattr above.
        let mut quiet = unsafe { saved.assume_init() };
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: a valid termios for this terminal.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let line = read_line();
    if have_saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, saved.as_ptr()) };
    }
    line
}
