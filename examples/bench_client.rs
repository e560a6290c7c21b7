//! The app for `scripts/bench`: a burst of SMTP sessions that records, for every message,
//! how long the app waits from `MAIL FROM` to the reply after the final dot.
//!
//! ```text
//! cargo run --release --example bench_client -- --server 127.0.0.1:2525 --message FILE
//!     [--sessions 8] [--messages 25] [--from ADDR] [--to ADDR] [--user NAME --password PW]
//! ```
//!
//! All sessions connect, say EHLO and (with `--user`) authenticate with AUTH PLAIN first;
//! then they all start sending at once, each its messages one after the other on its own
//! connection, as an app with several worker threads would. One thread runs them all, so the
//! client takes as little CPU from the relay under test as it can. Prints one JSON object:
//! `{"wait_us": [...], "burst_s": ...}`; exits non-zero if any message was not accepted.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use support::SmtpClient;
use tokio::sync::Barrier;

struct Args {
    server: String,
    message: Vec<u8>,
    sessions: usize,
    messages: usize,
    from: String,
    to: String,
    auth: Option<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut server = None;
    let mut message = None;
    let mut sessions = 8;
    let mut messages = 25;
    let mut from = "app@app01.internal".to_string();
    let mut to = "someone@example.org".to_string();
    let mut user = None;
    let mut password = String::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match a.as_str() {
            "--server" => server = Some(value("--server")?),
            "--message" => message = Some(std::fs::read(value("--message")?)?),
            "--sessions" => sessions = value("--sessions")?.parse()?,
            "--messages" => messages = value("--messages")?.parse()?,
            "--from" => from = value("--from")?,
            "--to" => to = value("--to")?,
            "--user" => user = Some(value("--user")?),
            "--password" => password = value("--password")?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        server: server.ok_or_else(|| anyhow::anyhow!("--server HOST:PORT is required"))?,
        message: message.ok_or_else(|| anyhow::anyhow!("--message FILE is required"))?,
        sessions,
        messages,
        from,
        to,
        auth: user.map(|u| (u, password)),
    })
}

async fn session(
    args: Arc<Args>,
    start: Arc<Barrier>,
) -> anyhow::Result<(Vec<Duration>, Instant, Instant)> {
    let (mut c, greeting) = SmtpClient::connect(&args.server).await?;
    anyhow::ensure!(greeting.code == 220, "greeting: {greeting}");
    let ehlo = c.ehlo("app01.internal").await?;
    anyhow::ensure!(ehlo.code == 250, "EHLO: {ehlo}");
    if let Some((user, password)) = &args.auth {
        let plain =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = c.command(&format!("AUTH PLAIN {plain}")).await?;
        anyhow::ensure!(reply.code == 235, "AUTH: {reply}");
    }
    start.wait().await;
    let began = Instant::now();
    let mut waits = Vec::with_capacity(args.messages);
    for _ in 0..args.messages {
        let t0 = Instant::now();
        let reply = c.send_mail(&args.from, &[&args.to], &args.message).await?;
        waits.push(t0.elapsed());
        anyhow::ensure!(reply.code == 250, "message refused: {reply}");
    }
    let ended = Instant::now();
    let _ = c.quit().await;
    Ok((waits, began, ended))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    let start = Arc::new(Barrier::new(args.sessions));
    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(session(args.clone(), start.clone())))
        .collect();
    let mut waits = Vec::new();
    let mut first = None::<Instant>;
    let mut last = None::<Instant>;
    for t in tasks {
        let (w, began, ended) = tokio::time::timeout(Duration::from_secs(600), t).await???;
        waits.extend(w);
        first = Some(first.map_or(began, |f| f.min(began)));
        last = Some(last.map_or(ended, |l| l.max(ended)));
    }
    let burst = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let micros: Vec<String> = waits.iter().map(|d| d.as_micros().to_string()).collect();
    println!(
        "{{\"wait_us\": [{}], \"burst_s\": {burst:.6}}}",
        micros.join(", ")
    );
    Ok(())
}
