//! Crash and outage tests: the real `authrelay` binary against the fake Microsoft, with the
//! faults an operator meets in production injected from outside, and the promises checked
//! from outside too (what SMTP clients were told, what Exchange received, what is on disk).
//!
//! - `kill -9` in the middle of a burst from several parallel clients: every message that got
//!   a `250` is delivered after the restart; duplicates only for what was in flight.
//! - Exchange refusing connections for a while: mail waits, with growing back-off in the logs,
//!   and all of it goes out once Exchange is back.
//! - The token endpoint down, then the client secret expired: mail stays queued, `/status`
//!   and `/readyz` say why, and delivery resumes as soon as a token can be had again.
//! - A full disk (a small tmpfs as `state_dir`; needs root, else the test says SKIPPED):
//!   `452`, never a false `250`, no half-written queue entries, recovery when space returns.
//!
//! Every wait is bounded. The burst is 2,000 messages from 8 clients with 3 kills (a few
//! seconds); `scripts/faults` runs a larger one (`FAULTS_MESSAGES`, `_CLIENTS`, `_KILLS`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authrelay::queue::Spool;
use support::relay::{Options, Relay, TenantSpec, message};
use support::{Delivered, FakeMicrosoft, SmtpClient, TokenFault};

const WAIT: Duration = Duration::from_secs(30);
const FROM: &str = "app@app01.internal";
const TO: &str = "ops@example.org";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tenant without pacing limits that would slow a burst down (Exchange's 30 a minute is
/// tested elsewhere).
fn fast_tenant(fake: &FakeMicrosoft) -> TenantSpec {
    let t = TenantSpec::new("contoso", "relay@contoso.com")
        .extra("max_messages_per_minute = 1000000\nmax_recipients_per_day = 100000000");
    t.register(fake, &[]);
    t
}

/// The value of the first header field `name` in a message.
fn header(data: &str, name: &str) -> Option<String> {
    support::header(data, name).into_iter().next()
}

fn subjects(delivered: &[Delivered]) -> Vec<String> {
    let mut v: Vec<String> = delivered
        .iter()
        .filter_map(|d| header(&d.data_str(), "Subject"))
        .collect();
    v.sort();
    v
}

/// GET on the admin port, parsed as JSON.
async fn get_json(relay: &Relay, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = relay.get(path).await;
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (code, json)
}

/// Polls `/status` until `cond` holds for the first tenant's row (bounded).
async fn wait_status(
    relay: &Relay,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, status) = get_json(relay, "/status").await;
        let tenant = &status["tenants"][0];
        if cond(tenant) {
            return tenant.clone();
        }
        assert!(
            Instant::now() < deadline,
            "/status never showed {what}; last: {tenant:#}\n{}",
            relay.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spool as a reader other than the daemon sees it: every envelope parses, every
/// envelope has its body, no body without an envelope (unless `allow_orphans`, for a
/// daemon that was killed and not restarted yet). Returns the queued ids.
fn check_spool(state_dir: &Path, allow_orphans: bool) -> Vec<String> {
    let spool = Spool::inspect(state_dir).expect("open spool");
    let (envelopes, errors) = spool.scan().expect("scan spool");
    assert!(errors.is_empty(), "corrupt queue entries: {errors:?}");
    let ids: BTreeSet<String> = envelopes.iter().map(|e| e.id.clone()).collect();
    for e in &envelopes {
        let body = spool.msg_path(&e.id);
        let size = std::fs::metadata(&body)
            .unwrap_or_else(|err| panic!("envelope {} without its body: {err}", e.id))
            .len();
        assert_eq!(size, e.size, "body of {} has the recorded size", e.id);
    }
    if !allow_orphans {
        let root = spool.root();
        for entry in std::fs::read_dir(root.join("msg")).expect("msg/").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(ids.contains(&name), "body {name} without an envelope");
        }
    }
    ids.into_iter().collect()
}

/// Waits until the daemon has nothing left in its spool: no envelope, no body (a delivered
/// message's body goes a moment after its envelope), nothing being received.
async fn wait_spool_empty(relay: &Relay) {
    relay.wait_queued(0, WAIT).await;
    let root = relay.state_dir().join("queue");
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<String> = ["env", "msg", "tmp"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(root.join(d))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path().display().to_string())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left in the spool: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----- kill -9 during a burst --------------------------------------------------------------------

/// What one attempt at one message came to, as its client saw it.
#[derive(Default)]
struct Ledger {
    /// Message-ID → acknowledged with 250.
    acked: BTreeSet<String>,
    /// Message-IDs whose fate the client cannot know: the connection broke (or timed out)
    /// after the message may have been committed.
    doubt: BTreeSet<String>,
    /// Message-IDs refused with a reply (4xx/5xx): must never be delivered.
    refused: BTreeSet<String>,
    /// Message index → acknowledged at last (some attempt got 250).
    done: BTreeSet<usize>,
}

fn burst_message(i: usize, attempt: usize) -> (String, String) {
    let id = format!("<burst-{i:05}-{attempt}@app01.internal>");
    let text = format!(
        "From: App <{FROM}>\r\nTo: <{TO}>\r\nSubject: burst {i:05}\r\nMessage-ID: {id}\r\n\r\nmessage {i}, attempt {attempt}\r\n..a stuffed line\r\n"
    );
    (id, text)
}

/// One app: sends messages (several per connection, as a cron job flushing its outbox
/// would), retrying each until it gets a 250, reconnecting when the relay goes away.
async fn app_client(
    smtp: SocketAddr,
    next: Arc<AtomicUsize>,
    total: usize,
    ledger: Arc<Mutex<Ledger>>,
    deadline: Instant,
) {
    let mut conn: Option<(SmtpClient, usize)> = None;
    let mut i = next.fetch_add(1, Ordering::SeqCst);
    let mut attempt = 0;
    while i < total {
        assert!(Instant::now() < deadline, "burst did not finish in time");
        if conn.is_none() {
            let connected = tokio::time::timeout(Duration::from_secs(5), async {
                let (mut c, greeting) = SmtpClient::connect(&smtp.to_string()).await.ok()?;
                (greeting.code == 220).then_some(())?;
                (c.ehlo("app01.test").await.ok()?.code == 250).then_some(c)
            })
            .await;
            match connected {
                Ok(Some(c)) => conn = Some((c, 0)),
                _ => {
                    // The relay is down (killed): an app would retry a moment later.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some((c, sent)) = conn.as_mut() else {
            continue;
        };
        attempt += 1;
        let (id, text) = burst_message(i, attempt);
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            c.send_mail(FROM, &[TO], text.as_bytes()),
        )
        .await;
        let acked = matches!(&result, Ok(Ok(r)) if r.code == 250);
        {
            let mut l = ledger.lock().expect("ledger");
            match &result {
                Ok(Ok(_)) if acked => {
                    l.acked.insert(id);
                    l.done.insert(i);
                }
                // A refusal (421 while shutting down, say): nothing was accepted.
                Ok(Ok(_)) => {
                    l.refused.insert(id);
                }
                _ => {
                    l.doubt.insert(id);
                }
            }
        }
        if acked {
            *sent += 1;
            i = next.fetch_add(1, Ordering::SeqCst);
            attempt = 0;
            if *sent >= 10 {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.quit()).await;
                conn = None;
            }
        } else {
            if let Ok(Ok(r)) = &result {
                eprintln!("message {i}: {r}");
            }
            // Start over on a new connection: the transaction state is unknown to us.
            conn = None;
        }
    }
    if let Some((mut c, _)) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.quit()).await;
    }
}

fn message_ids(delivered: &[Delivered]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in delivered {
        let id = header(&d.data_str(), "Message-ID").unwrap_or_default();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_message() {
    let total = env_usize("FAULTS_MESSAGES", 2000);
    let clients = env_usize("FAULTS_CLIENTS", 8);
    let kills = env_usize("FAULTS_KILLS", 3);
    // Delivery workers: the most messages that can be in flight upstream at a kill.
    let workers = 3;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + total as u64 / 5);

    let fake = FakeMicrosoft::start().await;
    let t = fast_tenant(&fake).extra(&format!("max_connections = {workers}"));
    let mut relay = Relay::start(&fake, &[t], Options::default()).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let apps: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(app_client(
                relay.smtp,
                next.clone(),
                total,
                ledger.clone(),
                deadline,
            ))
        })
        .collect();

    // Kill while the burst is in full swing: mail arriving, being fsynced and delivered.
    for k in 1..=kills {
        let at = total * k / (kills + 1);
        while ledger.lock().expect("ledger").acked.len() < at {
            assert!(Instant::now() < deadline, "burst stalled before kill {k}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let in_fake = fake.delivered().len();
        relay.kill();
        eprintln!(
            "kill -9 #{k} after {} acknowledged, {in_fake} delivered",
            ledger.lock().expect("ledger").acked.len()
        );
        // What a crash leaves on disk is consistent already, before any recovery.
        check_spool(&relay.state_dir(), true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        relay.launch().await;
    }
    for a in apps {
        a.await.expect("client task");
    }
    let (acked, doubt, refused, done) = {
        let l = ledger.lock().expect("ledger");
        (
            l.acked.clone(),
            l.doubt.clone(),
            l.refused.clone(),
            l.done.len(),
        )
    };
    assert_eq!(done, total, "every message was acknowledged in the end");

    // Everything acknowledged arrives; wait for the count, then for the stragglers.
    let left = deadline.saturating_duration_since(Instant::now());
    fake.wait_until(left, "every acknowledged message", |f| {
        let got = message_ids(&f.delivered());
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    wait_spool_empty(&relay).await;
    let got = message_ids(&fake.delivered());

    let lost: Vec<_> = acked.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    for id in got.keys() {
        assert!(
            acked.contains(id) || doubt.contains(id),
            "{id} was delivered but never acknowledged (refused: {})",
            refused.contains(id)
        );
    }
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= workers * kills,
        "{duplicates} duplicates; at most {} messages can be in flight across {kills} kill(s)",
        workers * kills
    );
    let unacked_delivered = got.keys().filter(|id| !acked.contains(*id)).count();
    assert!(
        unacked_delivered <= clients * kills,
        "{unacked_delivered} delivered without a 250: more than the {clients} clients had in flight"
    );
    if let Ok(path) = std::env::var("FAULTS_LOG") {
        let _ = std::fs::write(path, relay.logs());
    }
    eprintln!(
        "{total} messages, {clients} clients, {kills} kill(s): {} acknowledged attempts, {} in doubt, \
         {} refused, {} delivered, {duplicates} duplicate(s), {unacked_delivered} delivered without 250, {:?}",
        acked.len(),
        doubt.len(),
        refused.len(),
        fake.delivered().len(),
        started.elapsed()
    );
}

// ----- upstream refusing connections -----------------------------------------------------------

/// `(queue_id, attempt, time)` of every "not delivered" log line.
fn deferrals(logs: &str) -> Vec<(String, u32, time::OffsetDateTime)> {
    logs.lines()
        .filter(|l| l.contains("not delivered"))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            let at =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            let field = |key: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            let id = field("queue_id=")?;
            let attempt = field("attempt=")?.parse().ok()?;
            Some((id, attempt, at))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_during_a_burst_backs_off_then_delivers_everything() {
    let fake = FakeMicrosoft::start().await;
    let t = fast_tenant(&fake);
    let relay = Relay::start(
        &fake,
        &[t],
        Options {
            queue: "retry_initial = \"400ms\"\nretry_max = \"5s\"",
            ..Options::default()
        },
    )
    .await;
    fake.refuse_smtp_connections().await;

    let n = 24;
    let sends: Vec<_> = (0..3)
        .map(|c| {
            let addr = relay.smtp.to_string();
            tokio::spawn(async move {
                let (mut client, _) = SmtpClient::connect(&addr).await.expect("connect");
                client.ehlo("app01.test").await.expect("EHLO");
                for i in (c..n).step_by(3) {
                    let m = message(FROM, TO, &format!("outage {i:02}"));
                    let r = client
                        .send_mail(FROM, &[TO], m.as_bytes())
                        .await
                        .expect("send");
                    assert_eq!(r.code, 250, "{r}");
                }
                let _ = client.quit().await;
            })
        })
        .collect();
    for s in sends {
        s.await.expect("sender");
    }

    // Let some messages fail a few times.
    let deadline = Instant::now() + WAIT;
    while !deferrals(&relay.logs()).iter().any(|(_, a, _)| *a >= 4) {
        assert!(
            Instant::now() < deadline,
            "no 4th attempt:\n{}",
            relay.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fake.delivered().is_empty());
    assert_eq!(relay.queued().len(), n);

    // The back-off is visible: per message, attempts count up, and the pauses between them
    // grow (400 ms doubling: 0.4, 0.8, 1.6 s, with ±20 % jitter; the check leaves room for a
    // loaded machine's scheduling noise).
    let mut by_id: BTreeMap<String, Vec<(u32, time::OffsetDateTime)>> = BTreeMap::new();
    for (id, attempt, at) in deferrals(&relay.logs()) {
        by_id.entry(id).or_default().push((attempt, at));
    }
    let mut checked = 0;
    for (id, seen) in &by_id {
        let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
        let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
        assert_eq!(attempts, expected, "attempts of {id} count up");
        if seen.len() >= 4 {
            let gaps: Vec<Duration> = seen
                .windows(2)
                .map(|w| (w[1].1 - w[0].1).try_into().unwrap_or_default())
                .collect();
            assert!(
                gaps[2] > gaps[0] * 2 && gaps[2] > gaps[1],
                "back-off of {id} grows: {gaps:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);

    fake.accept_smtp_connections().await;
    let got = fake.wait_delivered(n, WAIT).await;
    let expected: Vec<String> = (0..n).map(|i| format!("outage {i:02}")).collect();
    assert_eq!(subjects(&got), expected);
    relay.wait_queued(0, WAIT).await;
}

// ----- token endpoint down, then the secret expired ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_outage_then_expired_secret_keeps_mail_queued_and_says_why() {
    let fake = FakeMicrosoft::start().await;
    fake.set_token_fault(TokenFault::Unavailable);
    let t = fast_tenant(&fake);
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    for i in 0..5 {
        let r = relay
            .send(FROM, &[TO], &message(FROM, TO, &format!("token {i}")))
            .await;
        assert_eq!(r.code, 250, "{r}");
    }

    // Endpoint down: a transient state, shown as such.
    let row = wait_status(&relay, "token_error_kind unreachable", WAIT, |t| {
        t["token_error_kind"] == "unreachable"
    })
    .await;
    assert_eq!(row["verified"], "Not Verified", "{row:#}");
    let (code, ready) = get_json(&relay, "/readyz").await;
    assert_eq!(code, 503, "{ready}");
    relay.wait_log("not delivered", WAIT).await;
    assert!(fake.delivered().is_empty());
    assert_eq!(relay.queued().len(), 5);

    // The secret expires: an operator must act, and the status says exactly what.
    fake.set_token_fault(TokenFault::SecretExpired);
    // The next request comes when the refresh loop's back-off from the outage runs out.
    let row = wait_status(&relay, "token_error_kind secret_expired", WAIT * 2, |t| {
        t["token_error_kind"] == "secret_expired"
    })
    .await;
    assert_eq!(row["verified"], "Not Verified", "{row:#}");
    let why = format!("{} {}", row["token_error"], row["reason"]);
    assert!(why.contains("AADSTS7000222"), "{row:#}");
    let (code, ready) = get_json(&relay, "/readyz").await;
    assert_eq!(code, 503);
    assert!(ready.to_string().contains("AADSTS7000222"), "{ready}");
    assert!(fake.delivered().is_empty());
    assert_eq!(
        relay.queued().len(),
        5,
        "nothing bounced for our own problem"
    );
    assert!(!relay.logs().contains("bounce queued"));

    // The operator puts a new secret in place and reloads.
    fake.set_token_fault(TokenFault::None);
    relay.signal("HUP");
    let got = fake.wait_delivered(5, WAIT).await;
    let expected: Vec<String> = (0..5).map(|i| format!("token {i}")).collect();
    assert_eq!(subjects(&got), expected);
    relay.wait_queued(0, WAIT).await;
    wait_status(&relay, "Verified again", WAIT, |t| {
        t["verified"] == "Verified"
    })
    .await;
    let (code, ready) = get_json(&relay, "/readyz").await;
    assert_eq!(code, 200, "{ready}");
}

/// With a production-like queue back-off (a minute, then longer), mail deferred only because
/// there was no token must not sit out that back-off once the token endpoint is back: the
/// token refresh loop gets a token on its own (no operator action) and delivery resumes at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_out_as_soon_as_a_token_can_be_had_again() {
    let fake = FakeMicrosoft::start().await;
    fake.set_token_fault(TokenFault::Unavailable);
    let t = fast_tenant(&fake);
    let relay = Relay::start(
        &fake,
        &[t],
        Options {
            queue: "retry_initial = \"60s\"\nretry_max = \"30m\"",
            ..Options::default()
        },
    )
    .await;
    for i in 0..3 {
        let r = relay
            .send(FROM, &[TO], &message(FROM, TO, &format!("resume {i}")))
            .await;
        assert_eq!(r.code, 250, "{r}");
    }
    let deadline = Instant::now() + WAIT;
    while deferrals(&relay.logs()).len() < 3 {
        assert!(Instant::now() < deadline, "{}", relay.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every message now waits about a minute for its next attempt.
    let fixed = Instant::now();
    fake.set_token_fault(TokenFault::None);
    let got = fake.wait_delivered(3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 3);
    eprintln!(
        "delivered {:?} after the token endpoint came back",
        fixed.elapsed()
    );
    relay.wait_queued(0, WAIT).await;
}

// ----- disk full ---------------------------------------------------------------------------------

/// A tmpfs mounted on a directory for the length of a test; unmounted (lazily, since the
/// daemon may still hold files there) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "4m") on `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a filler file until the file system is full (bounded by the tmpfs size).
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
        assert!(written < 1 << 30, "the file system never filled up");
    }
    // Fill the last partial chunk's worth too, a byte at a time is enough of an effort.
    while f.write_all(&chunk[..512]).is_ok() {
        written += 512;
    }
    let _ = f.sync_all();
    written
}

/// Starts a relay whose state_dir is a small tmpfs: started once to lay out its config,
/// stopped, the tmpfs mounted on state_dir, started again. None (after saying SKIPPED) when
/// this machine cannot mount.
async fn relay_on_tmpfs(
    fake: &FakeMicrosoft,
    size: &str,
    queue: &'static str,
    test: &str,
) -> Option<(Relay, Tmpfs)> {
    let mut relay = Relay::start(
        fake,
        &[fast_tenant(fake)],
        Options {
            queue,
            ..Options::default()
        },
    )
    .await;
    relay.stop().await;
    let state = relay.state_dir();
    let _ = std::fs::remove_dir_all(&state);
    match Tmpfs::mount(&state, size) {
        Ok(mount) => {
            relay.launch().await;
            Some((relay, mount))
        }
        Err(why) => {
            eprintln!("SKIPPED: {test}: cannot mount a tmpfs for the spool (needs root): {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_data_gets_452_never_250_and_the_queue_stays_sound() {
    let fake = FakeMicrosoft::start().await;
    // min_free_space = 0: no up-front check, so the writes themselves fail.
    let Some((relay, _mount)) = relay_on_tmpfs(
        &fake,
        "2m",
        "retry_initial = \"1s\"\nretry_max = \"2s\"\nmin_free_space = 0",
        "a_full_disk_during_data_gets_452_never_250",
    )
    .await
    else {
        return;
    };
    // Exchange is away, so what was accepted stays in the spool for us to inspect.
    fake.refuse_smtp_connections().await;
    for i in 0..3 {
        let r = relay
            .send(FROM, &[TO], &message(FROM, TO, &format!("before {i}")))
            .await;
        assert_eq!(r.code, 250, "{r}");
    }

    let filler = relay.state_dir().join("filler");
    let filled = fill(&filler);
    eprintln!("filled the spool's file system with {filled} bytes");

    // Small and large messages: refused with 452 4.3.1, whether the failure comes when the
    // file is created, written, flushed or its envelope committed.
    let big = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(76)).repeat(2000)
    );
    let small = message(FROM, TO, "tiny");
    let mut c = relay.session().await;
    for body in [small.as_str(), big.as_str(), small.as_str()] {
        let r = c
            .send_mail(FROM, &[TO], body.as_bytes())
            .await
            .expect("send");
        assert_eq!(r.code, 452, "a full disk must never get 250: {r}");
        assert!(r.contains("4.3.1"), "{r}");
        // The transaction is over; the session goes on.
        let r = c.command("RSET").await.expect("RSET");
        assert_eq!(r.code, 250);
    }
    let _ = c.quit().await;

    // Meanwhile delivery keeps failing and tries to record that on the full disk too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = check_spool(&relay.state_dir(), false);
    assert_eq!(ids.len(), 3, "exactly the acknowledged messages are queued");
    let tmp = relay.state_dir().join("queue/tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).expect("tmp").flatten().collect();
    assert!(
        leftovers.is_empty(),
        "half-written files left: {leftovers:?}"
    );

    // Space comes back: mail is taken again, and everything goes out.
    std::fs::remove_file(&filler).expect("remove filler");
    let r = relay.send(FROM, &[TO], &message(FROM, TO, "after")).await;
    assert_eq!(r.code, 250, "{r}");
    fake.accept_smtp_connections().await;
    let got = fake.wait_delivered(4, WAIT).await;
    assert_eq!(
        subjects(&got),
        vec!["after", "before 0", "before 1", "before 2"]
    );
    wait_spool_empty(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_is_refused_at_mail_and_taken_again_when_space_returns() {
    let fake = FakeMicrosoft::start().await;
    // The up-front check: refuse at MAIL below 1 MiB free.
    let Some((relay, _mount)) = relay_on_tmpfs(
        &fake,
        "4m",
        "retry_initial = \"1s\"\nretry_max = \"2s\"\nmin_free_space = 1048576",
        "a_nearly_full_disk_is_refused_at_mail",
    )
    .await
    else {
        return;
    };
    let r = relay.send(FROM, &[TO], &message(FROM, TO, "roomy")).await;
    assert_eq!(r.code, 250, "{r}");

    let filler = relay.state_dir().join("filler");
    fill(&filler);
    // Leave some room, but less than min_free_space: the check, not a write, refuses.
    let len = std::fs::metadata(&filler).expect("filler").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(len - 512 * 1024))
        .expect("shrink filler");

    let mut c = relay.session().await;
    let r = c
        .command(&format!("MAIL FROM:<{FROM}>"))
        .await
        .expect("MAIL");
    assert_eq!(r.code, 452, "refused before the client sends anything: {r}");
    assert!(r.contains("4.3.1"), "{r}");
    let _ = c.quit().await;
    let (code, ready) = get_json(&relay, "/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready.to_string().contains("spool"), "{ready}");

    std::fs::remove_file(&filler).expect("remove filler");
    let r = relay
        .send(FROM, &[TO], &message(FROM, TO, "room again"))
        .await;
    assert_eq!(r.code, 250, "{r}");
    let got = fake.wait_delivered(2, WAIT).await;
    assert_eq!(subjects(&got), vec!["room again", "roomy"]);
    wait_spool_empty(&relay).await;
}

// ----- what goes up the wire ---------------------------------------------------------------------

/// The body Exchange receives is the body the app sent, its dots included: the stuffing on
/// the way up must undo exactly on the other side, also next to bare CRs (old Mac-style
/// text), which go up as line breaks like bare LFs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_reach_exchange_unchanged_whatever_their_dots_and_carriage_returns() {
    let fake = FakeMicrosoft::start().await;
    let relay = Relay::start(&fake, &[fast_tenant(&fake)], Options::default()).await;
    let body = "line one\r\n.starts with a dot\r\n..two dots\r\nmac\r.dot after a bare CR\r\nend\r.\r\n.\r.\r\nlast\r\n";
    let m = format!("From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: dots\r\n\r\n{body}");
    let r = relay.send(FROM, &[TO], &m).await;
    assert_eq!(r.code, 250, "{r}");
    let got = fake.wait_delivered(1, WAIT).await;
    let data = got[0].data_str();
    let received = data.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // A bare CR is a line break on the way out (as a bare LF is): never an extra dot.
    let expected = body
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n");
    assert_eq!(received, expected);
}

/// A message over a kept upstream connection costs its round trips, not timer waits. mail-send
/// writes the DATA body and the final dot separately; on a socket without TCP_NODELAY, Nagle
/// then holds the final dot until the server's delayed ACK (40 ms on Linux, more elsewhere),
/// every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_delivers_without_waiting_for_delayed_acks() {
    let fake = FakeMicrosoft::start().await;
    let t = fast_tenant(&fake).extra("max_connections = 1");
    let relay = Relay::start(&fake, &[t], Options::default()).await;
    // The first message opens and authenticates the connection; the rest reuse it.
    let r = relay.send(FROM, &[TO], &message(FROM, TO, "warm-up")).await;
    assert_eq!(r.code, 250, "{r}");
    fake.wait_delivered(1, WAIT).await;
    let n = 20;
    let mut c = relay.session().await;
    for i in 0..n {
        let m = message(FROM, TO, &format!("kept {i}"));
        let r = c.send_mail(FROM, &[TO], m.as_bytes()).await.expect("send");
        assert_eq!(r.code, 250, "{r}");
    }
    let _ = c.quit().await;
    fake.wait_delivered(n + 1, WAIT).await;
    // The relay logs each delivery just after Exchange's answer.
    let times = |logs: &str| -> Vec<u64> {
        logs.lines()
            .filter(|l| l.contains(" delivered ") && l.contains("queue_id="))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
            })
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while times(&relay.logs()).len() < n + 1 {
        assert!(Instant::now() < deadline, "{}", relay.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ms: Vec<u64> = times(&relay.logs()).into_iter().skip(1).collect();
    ms.sort_unstable();
    let median = ms[n / 2];
    assert!(
        median < 25,
        "median delivery over a kept connection {median} ms: {ms:?}"
    );
}
