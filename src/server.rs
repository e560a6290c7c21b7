//! Wires the parts together and owns the daemon's lifetime: start-up, reload on SIGHUP,
//! drain on SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::oauth::TokenManager;
use crate::outbound::Outbound;
use crate::queue::delivery::Delivery;
use crate::queue::scheduler::Scheduler;
use crate::queue::{Spool, SpoolError};
use crate::routing::Router;
use crate::{admin, inbound, shutdown, systemd};

/// The configuration in force, swapped as a whole on reload so a session or a delivery sees
/// one consistent version from start to end.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub router: Router,
}

impl Settings {
    pub fn new(config: Config) -> Arc<Settings> {
        let router = Router::new(&config);
        Arc::new(Settings { config, router })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("tokens: {0}")]
    Tokens(#[from] crate::oauth::TokenError),
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// How long SIGTERM waits for sessions and deliveries in flight.
const DRAIN: Duration = Duration::from_secs(30);

/// The running daemon's shared parts, for the admin side and tests.
pub struct Daemon {
    pub settings: watch::Receiver<Arc<Settings>>,
    pub spool: Spool,
    pub scheduler: Arc<Scheduler>,
    pub outbound: Arc<Outbound>,
    pub tokens: Arc<TokenManager>,
    pub metrics: Arc<Metrics>,
}

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is re-read on SIGHUP.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    let spool = Spool::open(&config.state_dir, config.queue.min_free_space)?;
    let tokens = Arc::new(TokenManager::new(&config.state_dir, metrics.clone())?);
    let outbound = Arc::new(Outbound::new(tokens.clone(), config.hostname.clone()));
    let scheduler = Arc::new(Scheduler::new(metrics.clone()));

    let mut listeners = Vec::new();
    for (addr, options) in config.smtp.listeners() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        listeners.push((l, options));
    }
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };

    let (settings_tx, settings_rx) = watch::channel(Settings::new(config.clone()));
    let (trigger, shutdown) = shutdown::channel();
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();

    let daemon = Arc::new(Daemon {
        settings: settings_rx.clone(),
        spool: spool.clone(),
        scheduler: scheduler.clone(),
        outbound: outbound.clone(),
        tokens: tokens.clone(),
        metrics: metrics.clone(),
    });
    // Observers of the daemon: the admin listener, the secret-expiry watcher, systemd STATUS=.
    let mut observers = Vec::new();
    if let Some(l) = admin_listener {
        observers.push(tokio::spawn(admin::serve(
            l,
            daemon.clone(),
            shutdown.clone(),
        )));
    }
    observers.push(tokio::spawn(crate::watch::run(
        daemon.clone(),
        shutdown.clone(),
    )));
    observers.push(tokio::spawn(systemd::run_status(
        daemon.clone(),
        shutdown.clone(),
    )));

    let delivery = Arc::new(Delivery {
        settings: settings_rx.clone(),
        spool: spool.clone(),
        scheduler: scheduler.clone(),
        outbound: outbound.clone(),
        metrics: metrics.clone(),
    });
    let delivery_task = tokio::spawn(delivery.run(accepted_rx, shutdown.clone()));
    let refresh_task = tokio::spawn(
        tokens
            .clone()
            .run_refresh_loop(settings_rx.clone(), shutdown.clone()),
    );
    let mut watchdog = systemd::Watchdog::new(daemon.clone());
    watchdog.watch("delivery", &delivery_task);
    watchdog.watch("token refresh", &refresh_task);

    let ctx = Arc::new(inbound::Context {
        settings: settings_rx.clone(),
        spool: spool.clone(),
        accepted: accepted_tx,
        metrics: metrics.clone(),
        sessions: inbound::SessionCount::default(),
        limits: inbound::ClientLimits::default(),
        tls: inbound::TlsCache::default(),
    });
    let mut smtp_tasks = Vec::new();
    for (l, options) in listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, tls = ?options.tls, "listening for SMTP");
        }
        smtp_tasks.push(tokio::spawn(inbound::serve(
            l,
            options,
            ctx.clone(),
            shutdown.clone(),
            DRAIN,
        )));
    }
    drop(ctx);

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        tenants = config.tenants.len(),
        state_dir = %config.state_dir.display(),
        "authrelay ready"
    );
    systemd::ready(&format!("ready: {} tenants", config.tenants.len()));

    wait_for_signals(&settings_tx, config_path.as_deref(), &tokens, &mut watchdog).await?;
    systemd::stopping();

    tracing::info!("shutting down: no new connections, finishing work in flight");
    trigger.fire();
    let drained = tokio::time::timeout(DRAIN, async {
        for t in smtp_tasks {
            let _ = t.await;
        }
        let _ = delivery_task.await;
        let _ = refresh_task.await;
        for t in observers {
            let _ = t.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain took longer than {DRAIN:?}; leaving the rest in the queue");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signals(
    settings: &watch::Sender<Arc<Settings>>,
    config_path: Option<&std::path::Path>,
    tokens: &TokenManager,
    watchdog: &mut systemd::Watchdog,
) -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = watchdog.tick() => watchdog.ping(),
            _ = hup.recv() => {
                systemd::reloading();
                match reload(config_path) {
                    Ok(new) => {
                        let old = settings.borrow().config.clone();
                        if new.state_dir != old.state_dir || new.smtp.listeners() != old.smtp.listeners() {
                            tracing::warn!("state_dir, smtp.listen and [[smtp.listener]] changes need a restart; other changes apply now");
                        }
                        settings.send_replace(Settings::new(new));
                        tokens.wake();
                        tracing::info!("configuration reloaded");
                        systemd::ready("configuration reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused; the old configuration stays in force");
                        systemd::ready("reload refused; the old configuration stays in force");
                    }
                }
            }
        }
    }
}

fn reload(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Err(ConfigError::Invalid {
            key: "config".into(),
            reason: "started without a config file; nothing to reload".into(),
        }),
    }
}
