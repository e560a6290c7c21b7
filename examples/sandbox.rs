//! The sandbox: authrelay end to end on one machine, with a local stand-in for Microsoft.
//!
//! `cargo run --release --example sandbox` starts the fake Microsoft (Entra ID token
//! endpoint, Exchange Online SMTP with STARTTLS and XOAUTH2, Graph), writes a config for one
//! tenant into `./sandbox/`, runs the relay on 127.0.0.1:2525 (or a free port), and prints
//! every message the fake Exchange accepts, as it arrives. Ctrl-C stops it all.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use support::{App, FakeMicrosoft};

fn port_or_free(preferred: u16) -> u16 {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return preferred;
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(preferred)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();

    let fake = FakeMicrosoft::start().await;
    fake.add_app(
        App::new("contoso-sandbox", "sandbox-client", "relay@contoso.example")
            .with_secret("sandbox-secret"),
    );

    let dir = PathBuf::from("sandbox");
    std::fs::create_dir_all(dir.join("delivered"))?;
    let ca = dir.join("fake-microsoft-ca.pem");
    std::fs::write(&ca, fake.ca_pem())?;
    let smtp_port = port_or_free(2525);
    let admin_port = port_or_free(9925);
    let config_path = dir.join("authrelay.toml");
    let config_text = format!(
        r#"# Written by the sandbox: the relay against a local stand-in for Microsoft.
state_dir = "{state}"

[smtp]
listen = ["127.0.0.1:{smtp_port}"]

[admin]
listen = "127.0.0.1:{admin_port}"

[queue]
retry_initial = "5s"
retry_max = "1m"

[[tenant]]
name = "contoso"
tenant_id = "contoso-sandbox"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
client_secret_expires = "2027-06-30"
mailbox = "relay@contoso.example"
from_name = "Contoso Alerts"
reply_to = "helpdesk@contoso.example"
signature = "Sent through authrelay (sandbox)"
authority = "{authority}"
smtp_server = "{smtp}"
tls_ca_file = "{ca}"
"#,
        state = dir.join("state").display(),
        authority = fake.authority(),
        smtp = fake.smtp_server(),
        ca = ca.display(),
    );
    std::fs::write(&config_path, &config_text)?;
    // The file holds a (sandbox) client secret: owner-only, as authrelay insists.
    std::fs::set_permissions(
        &config_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let config = authrelay::config::Config::load(&config_path)?;

    println!(
        r#"
authrelay sandbox
=================
fake Microsoft : token endpoint {authority}, Exchange Online at {smtp}
relay          : SMTP 127.0.0.1:{smtp_port}, status page http://127.0.0.1:{admin_port}/
config         : {config}

Send a message from another terminal, as any app would (no auth, plain SMTP):

  swaks --server 127.0.0.1:{smtp_port} --from app@app01.internal --to someone@example.org

  python3 -c 'import smtplib; s = smtplib.SMTP("127.0.0.1", {smtp_port}); s.sendmail("app@app01.internal", ["someone@example.org"], "From: App <app@app01.internal>\r\nTo: someone@example.org\r\nSubject: hello\r\n\r\nHello through authrelay.\r\n"); s.quit()'

Every message the fake Exchange accepts is printed below and saved in sandbox/delivered/.
Ctrl-C stops everything.
"#,
        authority = fake.authority(),
        smtp = fake.smtp_server(),
        config = config_path.display(),
    );

    let watcher = fake.clone();
    let out = dir.join("delivered");
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let all = watcher
                .wait_delivered(seen + 1, Duration::from_secs(86400 * 365))
                .await;
            for d in &all[seen..] {
                seen += 1;
                let file = out.join(format!("{seen}.eml"));
                let _ = std::fs::write(&file, &d.data);
                let headers: Vec<&str> = std::str::from_utf8(&d.data)
                    .unwrap_or("")
                    .lines()
                    .take_while(|l| !l.is_empty())
                    .filter(|l| {
                        ["From:", "To:", "Subject:", "Reply-To:", "X-Original-From:"]
                            .iter()
                            .any(|h| l.starts_with(h))
                    })
                    .collect();
                println!(
                    "\n>>> Exchange accepted message {seen}: MAIL FROM:<{}> RCPT TO:{:?} (as {})\n    {}\n    saved in {}\n",
                    d.mail_from,
                    d.rcpt_to,
                    d.user,
                    headers.join("\n    "),
                    file.display()
                );
            }
        }
    });

    authrelay::server::run(config, Some(config_path)).await?;
    Ok(())
}
