//! The real binary as `/usr/sbin/sendmail`: a symlink named `sendmail` to it, talking to a
//! real `authrelay run` on 127.0.0.1. Upstream is unreachable on purpose (127.0.0.1:1, for
//! both the token endpoint and SMTP), so accepted mail stays in the spool for inspection.
//! Self-contained: it does not use tests/support.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_authrelay");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn write_config(dir: &Path, name: &str, port: u16, mode: u32) -> PathBuf {
    let text = format!(
        r#"state_dir = {state:?}
hostname = "relay.test"

[smtp]
listen = ["127.0.0.1:{port}"]

[admin]
listen = ""

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_id = "abc"
client_secret = "s3cret"
mailbox = "relay@contoso.com"
authority = "http://127.0.0.1:1"
smtp_server = "127.0.0.1:1"
"#,
        state = dir.join("state").display().to_string()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Runs `program args` with `input` on stdin and the given config in the environment.
fn run_with_input(program: &Path, args: &[&str], config: &Path, input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("AUTHRELAY_CONFIG", config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    wait_output(child, Duration::from_secs(60))
}

/// Waits for a child to exit within `limit`, killing it (and failing) if it does not.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                panic!("process did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The daemon, stopped with SIGTERM (then SIGKILL) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: sends a signal to the child we spawned; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(config: &Path, port: u16) -> Daemon {
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start authrelay run");
    let mut daemon = Daemon(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("authrelay run exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "authrelay run did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

#[test]
fn sendmail_symlink_submits_to_the_running_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(dir.path(), "authrelay.toml", port, 0o600);

    // A world-readable config that holds a client secret is refused, with the fix spelt out.
    let exposed = write_config(dir.path(), "exposed.toml", port, 0o644);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&exposed)
        .output()
        .expect("check-config");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("chmod 640") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");

    let daemon = start_daemon(&config, port);
    let sendmail = dir.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &sendmail).expect("symlink");

    let message = b"From: Monitoring <monitor@contoso.com>\n\
                    To: alice@example.org\n\
                    Cc: bob@example.org\n\
                    Bcc: carol@example.org\n\
                    Subject: from the sendmail symlink\n\
                    \n\
                    hello\n.\nstill the body\n";
    let out = run_with_input(&sendmail, &["-t", "-i"], &config, message);
    assert!(
        out.status.success(),
        "sendmail failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // `authrelay sendmail` is the same command.
    let out = run_with_input(
        Path::new(BIN),
        &[
            "sendmail",
            "-f",
            "app@contoso.com",
            "-FApp",
            "dave@example.org",
        ],
        &config,
        b"Subject: second\n\nbody\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad usage: EX_USAGE.
    let out = run_with_input(&sendmail, &["-Z"], &config, b"");
    assert_eq!(out.status.code(), Some(64));
    // Nobody listening: EX_TEMPFAIL, with the reason on stderr.
    let nowhere = write_config(dir.path(), "nowhere.toml", free_port(), 0o600);
    let out = run_with_input(
        &sendmail,
        &["x@example.org"],
        &nowhere,
        b"Subject: x\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(75));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(daemon);

    let spool = authrelay::queue::Spool::inspect(&dir.path().join("state")).expect("spool");
    let (stored, errors) = spool.scan().expect("scan");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(stored.len(), 2, "{stored:?}");
    let first = stored
        .iter()
        .find(|e| e.recipients.len() == 3)
        .expect("the -t message");
    let rcpts: Vec<_> = first
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        rcpts,
        ["alice@example.org", "bob@example.org", "carol@example.org"]
    );
    let body = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(spool.read_message(&first.id))
        .expect("message");
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("Bcc") && !text.contains("carol"), "{text}");
    assert!(
        text.contains("\r\nSubject: from the sendmail symlink\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nhello\r\n.\r\nstill the body\r\n"),
        "{text:?}"
    );
    let second = stored
        .iter()
        .find(|e| e.recipients.len() == 1)
        .expect("the second message");
    assert_eq!(second.mail_from, "app@contoso.com");
}

#[test]
fn hash_password_prints_a_phc_string() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("unused.toml");
    let out = run_with_input(Path::new(BIN), &["hash-password"], &config, b"pa ss\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout).expect("utf-8");
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    assert!(!phc.contains("pa ss"));
    let out = run_with_input(Path::new(BIN), &["hash-password"], &config, b"\n");
    assert_eq!(out.status.code(), Some(2));
}
