//! `glimpse run` (the daemon) and `glimpse check-config` (validate without starting).

use std::path::PathBuf;

use clap::Args;

use super::common::ConfigError;
use crate::config::{self, Config};
use crate::daemon::{self, DaemonError};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Configuration file (TOML); see docs/configuration.md. Default /etc/glimpse/glimpse.toml
    /// when it exists, else built-in defaults. `GLIMPSE_<SECTION>__<KEY>` variables override keys.
    #[arg(long, short, env = "GLIMPSE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Loads the configuration from the file and the process environment.
pub fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    config::load(args.config.as_deref(), std::env::vars())
        .map_err(|e| ConfigError(e.to_string()).into())
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    if let Err(err) = crate::systemd::init_logging(&config.log.level) {
        eprintln!("glimpse: logging: {err}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The MQTT link and timers are light: one worker leaves the cores to the pipeline.
        .worker_threads(1)
        .enable_all()
        .build()?;
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => Ok(()),
        Err(DaemonError::Config(message)) => {
            log::error!("{message}");
            Err(ConfigError(message).into())
        }
        Err(err) => {
            log::error!("{err}");
            Err(err.into())
        }
    }
}

/// `glimpse check-config`: prints the effective configuration (secrets are never part of it) or
/// the one-line error.
pub fn check(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    // The very checks `run` makes before it starts (model, threads, credentials, state_dir).
    daemon::preflight::preflight(&config).map_err(|e| match e {
        DaemonError::Config(message) => anyhow::Error::from(ConfigError(message)),
        other => other.into(),
    })?;
    println!("{}", toml::to_string_pretty(&config)?);
    eprintln!("configuration ok");
    Ok(())
}
