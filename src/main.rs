//! The `authrelay` command: parses arguments, loads the config, calls into the library.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use authrelay::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "authrelay",
    version,
    about = "Local SMTP relay to Microsoft 365 with OAuth 2.0"
)]
struct Cli {
    /// Config file (default: $AUTHRELAY_CONFIG, else /etc/authrelay/authrelay.toml)
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr)
    Run {
        /// Log as JSON lines
        #[arg(long)]
        log_json: bool,
    },
    /// Validate the config and print it with secrets redacted
    CheckConfig,
    /// Get a token and authenticate upstream (EHLO, STARTTLS, AUTH XOAUTH2, QUIT)
    Verify { tenant: Option<String> },
    /// Delegated sign-in: print the URL to open, or run the device code flow
    Authorize {
        tenant: String,
        /// Sign in with a code on any device (device code flow) instead of a browser redirect
        #[arg(long)]
        device: bool,
    },
    /// Inspect and manage the spool
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Submit a test message through the local listener
    SendTest {
        tenant: String,
        #[arg(long)]
        to: String,
    },
    /// Hash a password for [[smtp.user]] password_hash (reads it from stdin)
    HashPassword,
    /// sendmail-compatible submission: the message on stdin, recipients as arguments or -t
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail flags (-t -i -f ADDR -F NAME ...) and recipients
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued and failed messages
    List,
    /// Show one message's envelope and headers
    Show { id: String },
    /// Retry a message now (or every message with --all)
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete a message from the spool
    Delete { id: String },
}

fn main() -> ExitCode {
    // As /usr/sbin/sendmail (a symlink), or `authrelay sendmail`: sendmail's flags are not
    // clap-shaped (-t, -oi, -fADDR, -FNAME), so they are handled before clap sees them.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str());
    if called_as == Some("sendmail") {
        return authrelay::sendmail::main(args[1..].to_vec(), None);
    }
    if args.get(1).and_then(|a| a.to_str()) == Some("sendmail") {
        return authrelay::sendmail::main(args[2..].to_vec(), None);
    }

    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The commands that need no config.
    match cli.command {
        Command::HashPassword => return authrelay::cli::hash_password(),
        Command::Sendmail { args } => {
            return authrelay::sendmail::main(args, cli.config.as_deref());
        }
        _ => {}
    }
    let path = Config::resolve_path(cli.config.as_deref());
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authrelay: invalid config {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            eprintln!("config {} is valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { log_json } => {
            init_logging(&config, log_json);
            runtime().and_then(|rt| {
                rt.block_on(authrelay::server::run(config, Some(path)))
                    .context("authrelay stopped")?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Verify { tenant } => {
            init_logging(&config, false);
            runtime()
                .and_then(|rt| Ok(rt.block_on(authrelay::cli::verify(&config, tenant.as_deref()))?))
        }
        Command::Authorize { tenant, device } => {
            init_logging(&config, false);
            runtime().and_then(|rt| {
                Ok(rt.block_on(authrelay::cli::authorize(&config, &tenant, device))?)
            })
        }
        Command::Queue { action } => {
            let a = match action {
                QueueAction::List => authrelay::cli::QueueAction::List,
                QueueAction::Show { id } => authrelay::cli::QueueAction::Show(id),
                QueueAction::Retry {
                    id: Some(id),
                    all: false,
                } => authrelay::cli::QueueAction::Retry(id),
                QueueAction::Retry {
                    id: None,
                    all: true,
                } => authrelay::cli::QueueAction::RetryAll,
                QueueAction::Retry { .. } => {
                    eprintln!("authrelay: queue retry takes an ID or --all");
                    return ExitCode::from(2);
                }
                QueueAction::Delete { id } => authrelay::cli::QueueAction::Delete(id),
            };
            runtime().and_then(|rt| Ok(rt.block_on(authrelay::cli::queue(&config, a))?))
        }
        Command::SendTest { tenant, to } => runtime()
            .and_then(|rt| Ok(rt.block_on(authrelay::cli::send_test(&config, &tenant, &to))?)),
        Command::HashPassword | Command::Sendmail { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("authrelay: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Human-readable logs by default; no timestamps under journald (it adds its own); JSON on
/// request.
fn init_logging(config: &Config, json_flag: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if json_flag || config.log.format == LogFormat::Json {
        builder.json().init();
    } else if under_journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
