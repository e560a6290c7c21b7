//! `authrelay sendmail`, one of the one-shot commands: the `/usr/sbin/sendmail` interface that cron, PHP's `mail()`,
//! logwatch, mdadm, smartd and many scripts call to send mail.
//!
//! It reads a message on standard input and hands it to the local listener over SMTP
//! ([`crate::submit`]), so the message gets exactly the checks and routing an app's mail gets.
//! Installed as a symlink named `sendmail`, the binary behaves as `authrelay sendmail`.
//!
//! What it understands:
//! - recipients as arguments (comma-separated lists too); a bare name gets `@hostname`
//! - `-t`: recipients from the To, Cc and Bcc headers as well (added to any arguments)
//! - `-f ADDR` / `-r ADDR`: the envelope sender; default `user@hostname` for the invoking user
//! - `-F NAME`: the full name for a From header, added when the message has none
//! - `-i` / `-oi`: accepted; standard input is always read to its end, a lone `.` is content
//! - `-C FILE`: the authrelay config file (default `$AUTHRELAY_CONFIG`, then the usual path)
//! - `-bm` (the default mode), `-bi` (newaliases: nothing to do); ignored: `-o*`, `-O opt`,
//!   `-B type`, `-N dsn`, `-R ret`, `-X file`, `-V envid`, `-L tag`, `-h hops`, `-p proto`,
//!   `-A*`, `-e*`, `-d*`, `-v`, `-m`, `-n`, `-U`, `-G`, `-s`; `--` ends the options
//!
//! The Bcc header never leaves: it is removed from the message (its recipients stay in the
//! envelope). Line ends go out as CRLF. Date and Message-ID are added when missing.
//!
//! Exit codes (sysexits.h): 0 accepted, 64 usage, 69 refused for good (5xx), 75 try again
//! later (4xx, relay not reachable), 78 configuration problem; the reason goes to stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, ConfigError, is_address};
use crate::submit::SubmitError;

pub const EX_OK: u8 = 0;
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// What the command line asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    /// `-f`/`-r`: the envelope sender; `Some("")` for the null sender.
    pub from: Option<String>,
    /// `-F`: the full name for an added From header.
    pub full_name: Option<String>,
    /// `-t`: take recipients from the headers too.
    pub recipients_from_headers: bool,
    /// `-v`: print the relay's final reply.
    pub verbose: bool,
    /// `-C`: the authrelay config file.
    pub config: Option<PathBuf>,
    /// `-bi` and the like: a mode with nothing to do.
    pub nothing_to_do: bool,
    /// Recipients named on the command line, as given.
    pub recipients: Vec<String>,
}

/// Why sendmail gave up, with the exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Parses sendmail's arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, Failure> {
    let usage = |m: String| fail(EX_USAGE, m);
    let mut o = Options::default();
    let mut args = args.iter();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            o.recipients.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let flag = &arg[1..];
        let Some(letter) = flag.chars().next() else {
            continue;
        };
        let attached = &flag[letter.len_utf8()..];
        // The value of a flag that takes one: attached (`-fx@y`) or the next argument.
        let mut value = || -> Result<String, Failure> {
            if attached.is_empty() {
                args.next()
                    .cloned()
                    .ok_or_else(|| usage(format!("option -{letter} needs a value")))
            } else {
                Ok(attached.to_string())
            }
        };
        match letter {
            'f' | 'r' => o.from = Some(value()?),
            'F' => o.full_name = Some(value()?),
            'C' => o.config = Some(PathBuf::from(value()?)),
            'B' | 'N' | 'R' | 'X' | 'V' | 'L' | 'h' | 'p' | 'O' => {
                value()?;
            }
            // `-oi` matters only to a sendmail that stops at a lone dot; the other `-oX`
            // options (`-odi`, `-oem`, `-oQ...`) concern sendmail's own queue.
            'o' | 'A' | 'e' | 'd' | 's' => {}
            'b' => match attached {
                "m" => {}
                "i" => o.nothing_to_do = true,
                mode => {
                    return Err(usage(format!(
                        "-b{mode} is not supported: authrelay only sends (-bm)"
                    )));
                }
            },
            'q' => {
                return Err(usage(
                    "-q is not supported: authrelay runs its own queue (see `authrelay queue`)"
                        .into(),
                ));
            }
            _ if flag.chars().all(|c| "tivmnUG".contains(c)) => {
                for c in flag.chars() {
                    match c {
                        't' => o.recipients_from_headers = true,
                        'v' => o.verbose = true,
                        _ => {}
                    }
                }
            }
            _ => return Err(usage(format!("unknown option {arg}"))),
        }
    }
    Ok(o)
}

/// A message ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub from: String,
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
}

/// The invoking user's login name: the password database first (it cannot be faked by the
/// environment, though `-f` can say anything anyway), then `$LOGNAME` and `$USER`.
pub fn login_name() -> String {
    passwd_name()
        .or_else(|| std::env::var("LOGNAME").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic() && c != '@'))
        .unwrap_or_else(|| "nobody".into())
}

fn passwd_name() -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, both sized as passed, and sets `result`
    // to `pwd` on success; we only read `pw_name` (pointing into `buf`) in that case.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            pwd.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `result` points to the initialised `pwd`, whose `pw_name` is a
    // NUL-terminated string inside `buf`, alive for this scope.
    let name = unsafe { std::ffi::CStr::from_ptr((*result).pw_name) };
    name.to_str().ok().map(str::to_string)
}

/// `name` as an address: as given when it has a domain, else `name@hostname`. Angle
/// brackets and surrounding spaces are dropped.
fn qualify(name: &str, hostname: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix('<')
        .and_then(|n| n.strip_suffix('>'))
        .unwrap_or(name)
        .trim();
    if name.contains('@') {
        name.to_string()
    } else {
        format!("{name}@{hostname}")
    }
}

/// One header field: its name and its whole raw text (continuation lines included).
struct Field<'a> {
    name: &'a [u8],
    raw: &'a [u8],
}

/// Splits a message into its header fields and body. The header ends at the first empty
/// line, or at the first line that is not a header field (then there was no empty line). A
/// leading mbox `From ` line is dropped. The body is returned without the empty line.
fn split_message(input: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let line_end = |from: usize| {
        input[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(input.len(), |i| from + i + 1)
    };
    let mut pos = 0;
    if input.starts_with(b"From ") {
        pos = line_end(0);
    }
    let mut fields: Vec<Field<'_>> = Vec::new();
    // Where the field being read started, so continuation lines can extend it.
    let mut field_start = pos;
    while pos < input.len() {
        let end = line_end(pos);
        let line = &input[pos..end];
        if line == b"\n" || line == b"\r\n" {
            return (fields, &input[end..]);
        }
        if matches!(line[0], b' ' | b'\t')
            && let Some(last) = fields.last_mut()
        {
            last.raw = &input[field_start..end];
        } else if let Some(name) = header_name(line) {
            fields.push(Field { name, raw: line });
            field_start = pos;
        } else {
            return (fields, &input[pos..]);
        }
        pos = end;
    }
    (fields, &input[input.len()..])
}

/// The name of a header field line (`Name: value`), if it is one.
fn header_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    (!name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic() && b != b':')).then_some(name)
}

fn is_field(f: &Field<'_>, name: &str) -> bool {
    f.name.eq_ignore_ascii_case(name.as_bytes())
}

/// The addresses in the To, Cc and Bcc fields.
fn header_recipients(fields: &[Field<'_>]) -> Vec<String> {
    let mut block = Vec::new();
    for f in fields
        .iter()
        .filter(|f| ["to", "cc", "bcc"].iter().any(|n| is_field(f, n)))
    {
        block.extend_from_slice(f.raw);
        if !f.raw.ends_with(b"\n") {
            block.extend_from_slice(b"\r\n");
        }
    }
    if block.is_empty() {
        return Vec::new();
    }
    block.extend_from_slice(b"\r\n");
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(&block) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for header in parsed.headers() {
        if let Some(list) = header.value().as_address() {
            out.extend(
                list.iter()
                    .filter_map(|a| a.address())
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty()),
            );
        }
    }
    out
}

/// A display name for a From header: plain when it is only letters, digits and spaces,
/// quoted otherwise, RFC 2047-encoded when not ASCII. Line breaks never get through.
fn display_name(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    if !name.is_ascii() {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(name.as_bytes());
        return format!("=?UTF-8?B?{encoded}?=");
    }
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c))
    {
        return name.to_string();
    }
    let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// Builds the message and envelope to submit from the options and standard input.
/// `user` is the invoking user's login name, for the default sender.
pub fn prepare(
    options: &Options,
    input: &[u8],
    hostname: &str,
    user: &str,
) -> Result<Prepared, Failure> {
    let user_address = format!("{user}@{hostname}");
    let from = match options.from.as_deref().map(str::trim) {
        None => user_address.clone(),
        Some("" | "<>") => String::new(),
        Some(f) => qualify(f, hostname),
    };
    if !from.is_empty() && !is_address(&from) {
        return Err(fail(EX_USAGE, format!("bad sender address '{from}'")));
    }
    let (fields, body) = split_message(input);
    let mut wanted: Vec<String> = options
        .recipients
        .iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| qualify(r, hostname))
        .collect();
    if options.recipients_from_headers {
        wanted.extend(
            header_recipients(&fields)
                .iter()
                .map(|r| qualify(r, hostname)),
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut recipients = Vec::new();
    for r in wanted {
        if !is_address(&r) || r.chars().any(char::is_control) {
            return Err(fail(EX_USAGE, format!("bad recipient address '{r}'")));
        }
        if seen.insert(r.to_ascii_lowercase()) {
            recipients.push(r);
        }
    }
    if recipients.is_empty() {
        return Err(fail(
            EX_USAGE,
            if options.recipients_from_headers {
                "no recipients: none given and no To, Cc or Bcc header"
            } else {
                "no recipients given (name them as arguments, or use -t)"
            },
        ));
    }

    let mut message = Vec::with_capacity(input.len() + 256);
    let has = |name: &str| fields.iter().any(|f| is_field(f, name));
    if !has("from") {
        let address = if from.is_empty() {
            &user_address
        } else {
            &from
        };
        match options.full_name.as_deref().map(display_name) {
            Some(name) if !name.is_empty() => {
                message.extend_from_slice(format!("From: {name} <{address}>\r\n").as_bytes());
            }
            _ => message.extend_from_slice(format!("From: {address}\r\n").as_bytes()),
        }
    }
    if !has("date") {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        message.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if !has("message-id") {
        let unique: u128 = rand::random();
        message.extend_from_slice(format!("Message-ID: <{unique:032x}@{hostname}>\r\n").as_bytes());
    }
    for f in fields.iter().filter(|f| !is_field(f, "bcc")) {
        message.extend_from_slice(f.raw);
        if !f.raw.ends_with(b"\n") {
            message.extend_from_slice(b"\r\n");
        }
    }
    message.extend_from_slice(b"\r\n");
    message.extend_from_slice(body);
    Ok(Prepared {
        from,
        recipients,
        message: crlf(&message),
    })
}

/// Every line end as CRLF (a bare LF gets its CR; existing CRLFs stay).
fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut previous = 0u8;
    for &b in input {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

/// The exit code for a submission that did not go through.
fn submit_failure(e: &SubmitError) -> Failure {
    let code = match e.reply_code() {
        Some(500..=599) => EX_UNAVAILABLE,
        _ => EX_TEMPFAIL,
    };
    fail(code, e.to_string())
}

/// Prepares and submits one message to the relay named in `config`. Ok holds the relay's
/// final reply (`250 2.0.0 Ok: queued as ...`).
pub async fn send(options: &Options, input: &[u8], config: &Config) -> Result<String, Failure> {
    let prepared = prepare(options, input, &config.hostname, &login_name())?;
    let addr = config.smtp.submission_address().ok_or_else(|| {
        fail(
            EX_CONFIG,
            "no SMTP listener takes plain local submission (every one requires AUTH or implicit TLS); \
             add one, e.g. listen = [\"127.0.0.1:2525\"]",
        )
    })?;
    crate::submit::submit(
        addr,
        &config.hostname,
        &prepared.from,
        &prepared.recipients,
        &prepared.message,
    )
    .await
    .map_err(|e| submit_failure(&e))
}

/// The library form of the command, for tests and embedding: parses `args`, submits
/// `input`, prints any reason to stderr and returns the exit code.
pub async fn run(args: &[String], input: &[u8], config: &Config) -> u8 {
    let result = match parse_args(args) {
        Ok(o) if o.nothing_to_do => Ok(String::new()),
        Ok(o) => send(&o, input, config).await.map(|reply| {
            if o.verbose {
                eprintln!("{reply}");
            }
            reply
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => EX_OK,
        Err(f) => {
            eprintln!("sendmail: {}", f.message);
            f.code
        }
    }
}

/// The config sendmail uses: `path` (`-C`), else `$AUTHRELAY_CONFIG`, else the default path.
/// A user who may not read it (it holds secrets and is usually root:authrelay 0640) gets the
/// built-in defaults, which submit to 127.0.0.1:2525.
fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    let path = Config::resolve_path(path);
    match Config::load(&path) {
        Ok(config) => Ok(config),
        Err(ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Ok(Config::default())
        }
        Err(e) => Err(fail(EX_CONFIG, format!("config {}: {e}", path.display()))),
    }
}

/// The command: `authrelay sendmail ARGS` or the binary called as `sendmail ARGS`. `config`
/// is `--config` when given through the main command line.
pub fn main(args: Vec<OsString>, config: Option<&Path>) -> ExitCode {
    let code = main_code(args, config);
    ExitCode::from(code)
}

fn main_code(args: Vec<OsString>, config_path: Option<&Path>) -> u8 {
    let args: Result<Vec<String>, _> = args.into_iter().map(OsString::into_string).collect();
    let report = |f: Failure| {
        eprintln!("sendmail: {}", f.message);
        f.code
    };
    let Ok(args) = args else {
        return report(fail(EX_USAGE, "arguments must be valid UTF-8"));
    };
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(f) => return report(f),
    };
    if options.nothing_to_do {
        return EX_OK;
    }
    let config = match load_config(options.config.as_deref().or(config_path)) {
        Ok(c) => c,
        Err(f) => return report(f),
    };
    // Read all of standard input, but never much more than the relay would take.
    let limit = config.smtp.max_message_size.saturating_add(64 * 1024);
    let mut input = Vec::new();
    use std::io::Read;
    if let Err(e) = std::io::stdin()
        .lock()
        .take(limit.saturating_add(1))
        .read_to_end(&mut input)
    {
        return report(fail(EX_IOERR, format!("cannot read the message: {e}")));
    }
    if input.len() as u64 > limit {
        return report(fail(
            EX_DATAERR,
            format!(
                "message too big: the relay takes at most {} bytes",
                config.smtp.max_message_size
            ),
        ));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return report(fail(EX_SOFTWARE, format!("cannot start: {e}"))),
    };
    match runtime.block_on(send(&options, &input, &config)) {
        Ok(reply) => {
            if options.verbose {
                eprintln!("{reply}");
            }
            EX_OK
        }
        Err(f) => report(f),
    }
}

#[cfg(test)]
mod tests;
