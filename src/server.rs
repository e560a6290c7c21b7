//! Wires the parts together and owns the daemon's lifetime.

use std::sync::Arc;

use crate::config::Config;
use crate::routing::Router;

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
