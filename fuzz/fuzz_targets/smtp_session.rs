//! The inbound SMTP session over arbitrary bytes, split into arbitrary reads.
//!
//! Input: the first byte picks how the rest is cut into chunks (one byte at a time, small,
//! medium or whole reads, from a small PRNG it seeds); the rest is what the client sends:
//! commands, DATA content, anything. The session runs over an in-memory pipe
//! (`authrelay::inbound::serve_stream`) with a real spool in a fresh directory (on /dev/shm
//! when there is one, so fsync costs nothing), and a small size limit so the 552 path runs.
//!
//! Checked for every input, besides "no panic":
//! - no hang: the session ends within a few seconds of the client closing its side;
//! - every reply line is `NNN-text` or `NNN text` with CRLF, and the first is a 220;
//! - `250 ... queued as ID` is said only for a message that is in the spool: its envelope
//!   parses, its body is in `msg/`, and it was handed to delivery; nothing else is in the
//!   spool and nothing is left in `tmp/`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authrelay::config::Config;
use authrelay::inbound::{self, ClientLimits, Context, ListenerOptions, SessionCount, TlsCache};
use authrelay::metrics::Metrics;
use authrelay::queue::Spool;
use authrelay::server::Settings;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a session may take after the client has sent everything and closed.
const HANG: Duration = Duration::from_secs(5);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
        } else {
            tempfile::tempdir().expect("tempdir")
        }
    })
    .path()
}

fn config(state_dir: &Path) -> Config {
    let text = format!(
        r#"state_dir = {:?}
hostname = "relay.test"
[smtp]
max_message_size = 2048
max_recipients = 3
max_line_length = 512
command_timeout = "30s"
data_timeout = "30s"
[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@contoso.com"
senders = ["*@contoso.com"]
"#,
        state_dir.display().to_string()
    );
    Config::from_toml(&text).expect("fuzz config")
}

/// Cuts `data` into reads: `mode` picks the size range, the PRNG the sizes.
fn chunks(mode: u8, data: &[u8]) -> Vec<&[u8]> {
    let max = match mode & 3 {
        0 => 1,
        1 => 8,
        2 => 300,
        _ => 20_000,
    };
    let mut x = u64::from(mode) | 0x9e37_79b9_7f4a_7c00;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (1 + (x % max) as usize).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

fn check_replies(replies: &[u8]) {
    if replies.is_empty() {
        return;
    }
    let all = String::from_utf8_lossy(replies);
    assert!(replies.starts_with(b"220 "), "greeting:\n{all}");
    assert!(replies.ends_with(b"\r\n"), "replies end with CRLF:\n{all}");
    for line in replies[..replies.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let l = String::from_utf8_lossy(line);
        assert!(line.len() >= 4, "short reply line {l:?} in\n{all}");
        assert!(line[..3].iter().all(u8::is_ascii_digit), "code in {l:?}");
        assert!(matches!(line[3], b' ' | b'-'), "separator in {l:?}");
        assert!(
            !line.iter().any(|&b| b < 32 || b == 127),
            "control bytes in {l:?}"
        );
    }
    assert!(
        !replies
            .windows(2)
            .enumerate()
            .any(|(i, w)| w[1] == b'\n' && w[0] != b'\r' && i > 0)
            && replies[0] != b'\n',
        "a reply line ends with a bare LF:\n{all}"
    );
}

fn queued_ids(replies: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(replies)
        .lines()
        .filter_map(|l| l.strip_prefix("250 2.0.0 Ok: queued as "))
        .map(str::to_string)
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir_in(scratch()).expect("spool dir");
    let spool = Spool::open(dir.path(), 0).expect("spool");
    let (settings_tx, settings) = tokio::sync::watch::channel(Settings::new(config(dir.path())));
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        settings,
        spool: spool.clone(),
        accepted: accepted_tx,
        metrics: Arc::new(Metrics::new()),
        sessions: SessionCount::default(),
        limits: ClientLimits::default(),
        tls: TlsCache::default(),
    });
    let (trigger, shutdown) = authrelay::shutdown::channel();
    let reads = chunks(mode, stream);

    let replies = runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let session =
            inbound::serve_stream(server, peer, ListenerOptions::default(), ctx, shutdown);
        let (mut rd, mut wr) = tokio::io::split(client);
        let send = async move {
            for r in reads {
                if wr.write_all(r).await.is_err() {
                    return; // the session has closed the connection
                }
                tokio::task::yield_now().await;
            }
            let _ = wr.shutdown().await;
        };
        let receive = async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let run = async { tokio::join!(session, send, receive).2 };
        match tokio::time::timeout(HANG, run).await {
            Ok(replies) => replies,
            Err(_) => panic!("the session did not end within {HANG:?} of the client closing"),
        }
    });
    drop(trigger);
    drop(settings_tx);

    check_replies(&replies);
    let mut ids = queued_ids(&replies);
    ids.sort();
    let root = dir.path().join("queue");
    assert!(names(&root.join("tmp")).is_empty(), "left in tmp/");
    assert_eq!(names(&root.join("env")), ids, "envelopes vs 250 replies");
    assert_eq!(names(&root.join("msg")), ids, "bodies vs 250 replies");
    let mut handed = Vec::new();
    while let Ok(env) = accepted.try_recv() {
        handed.push(env.id);
    }
    handed.sort();
    assert_eq!(handed, ids, "handed to delivery vs 250 replies");
    for id in &ids {
        let env = spool.load_blocking(id).expect("envelope parses");
        assert!(!env.recipients.is_empty() && env.recipients.len() <= 3);
        let size = std::fs::metadata(spool.msg_path(id)).expect("body").len();
        assert_eq!(env.size, size, "recorded size");
    }
});
