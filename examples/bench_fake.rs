//! The fake Microsoft for `scripts/bench`: Entra ID token endpoint plus Exchange Online SMTP
//! (STARTTLS + XOAUTH2) on 127.0.0.1, reusing the test fake in `tests/support/`.
//!
//! ```text
//! cargo run --release --example bench_fake -- --dir DIR [--delay-data-ms 150] [--refuse]
//!                                             [--max-seconds 1800]
//! ```
//!
//! It registers one app (client credentials with a secret), then writes into `DIR`:
//! `ca.pem` (the CA that signed the SMTP certificate), `info.env` (shell `KEY=value` lines:
//! authority, token URL, SMTP address, tenant, client, secret, mailbox) and, four times a
//! second, `delivered` (how many messages the fake Exchange accepted so far). `--delay-data-ms`
//! makes every final dot of DATA wait that long, as Exchange Online does (~150 ms);
//! `--refuse` closes the SMTP listener so connects fail (an unreachable upstream with a
//! working token endpoint). It stops on SIGTERM/SIGINT, or by itself after `--max-seconds`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{App, FakeMicrosoft, SmtpFault};

const TENANT_ID: &str = "bench-tenant";
const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const MAILBOX: &str = "relay@bench.example";

struct Args {
    dir: PathBuf,
    delay_data: Option<Duration>,
    refuse: bool,
    max_lifetime: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut dir = None;
    let mut delay_data = None;
    let mut refuse = false;
    let mut max_lifetime = Duration::from_secs(1800);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--delay-data-ms" => {
                delay_data = Some(Duration::from_millis(value("--delay-data-ms")?.parse()?))
            }
            "--refuse" => refuse = true,
            "--max-seconds" => max_lifetime = Duration::from_secs(value("--max-seconds")?.parse()?),
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench_fake --dir DIR [--delay-data-ms N] [--refuse] [--max-seconds N]"
            ),
        }
    }
    Ok(Args {
        dir: dir.ok_or_else(|| anyhow::anyhow!("--dir DIR is required"))?,
        delay_data,
        refuse,
        max_lifetime,
    })
}

/// Writes `path` atomically (temp file + rename), so readers never see half a file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;

    let fake = FakeMicrosoft::start().await;
    fake.add_app(App::new(TENANT_ID, CLIENT_ID, MAILBOX).with_secret(CLIENT_SECRET));
    if let Some(d) = args.delay_data {
        fake.set_smtp_fault(SmtpFault::DelayData(d));
    }
    if args.refuse {
        fake.refuse_smtp_connections().await;
    }

    let ca = args.dir.join("ca.pem");
    std::fs::write(&ca, fake.ca_pem())?;
    write_atomic(&args.dir.join("delivered"), "0\n")?;
    let info = format!(
        "FAKE_AUTHORITY={authority}\nFAKE_TOKEN_URL={token_url}\nFAKE_SMTP_SERVER={smtp}\n\
         FAKE_SMTP_PORT={port}\nFAKE_HTTP_PORT={http_port}\nFAKE_TENANT_ID={TENANT_ID}\n\
         FAKE_CLIENT_ID={CLIENT_ID}\nFAKE_CLIENT_SECRET={CLIENT_SECRET}\nFAKE_MAILBOX={MAILBOX}\n\
         FAKE_CA={ca}\nFAKE_PID={pid}\n",
        authority = fake.authority(),
        token_url = fake.token_url(TENANT_ID),
        smtp = fake.smtp_server(),
        port = fake.smtp_addr().port(),
        http_port = fake.http_addr().port(),
        ca = ca.display(),
        pid = std::process::id(),
    );
    // info.env last: its presence tells the script that everything is up.
    write_atomic(&args.dir.join("info.env"), &info)?;

    let counter = fake.clone();
    let count_file = args.dir.join("delivered");
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let n = counter.delivered().len();
            if n != last {
                last = n;
                let _ = write_atomic(&count_file, &format!("{n}\n"));
            }
        }
    });

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(args.max_lifetime) => {
            eprintln!("bench_fake: stopping after {:?}", args.max_lifetime);
        }
    }
    fake.shutdown();
    Ok(())
}
