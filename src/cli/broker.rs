//! Which broker an operator tool talks to, and as whom: `--url`, `--prefix`, `--username` and
//! `--password-env`, shared (flattened) by every command that is an MQTT client of a device
//! (`send`, `samples`, `retrain`, `forget`, `rollback`, `export`, `watch`, `studio`).

use anyhow::Context;
use clap::Args;
use rumqttc::MqttOptions;

use crate::mqtt::topics::validate_prefix;

/// The broker and the credentials of an operator tool.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker URL: mqtt://host[:port] or mqtts://host[:port] (system CA bundle); default
    /// mqtt://localhost:1883 (GLIMPSE_MQTT_URL, deprecated, is still read).
    #[arg(long, env = "GLIMPSE_MQTT__URL")]
    pub url: Option<String>,
    /// Topic prefix the device uses.
    #[arg(long, default_value = "glimpse")]
    pub prefix: String,
    /// Username for brokers that require authentication.
    #[arg(long)]
    pub username: Option<String>,
    /// Name of an environment variable holding the password.
    #[arg(long, requires = "username")]
    pub password_env: Option<String>,
}

impl BrokerArgs {
    /// Checks `--prefix`, resolves the broker URL (flag, variable, default) and builds the MQTT
    /// options of `tool` with packet limits `(incoming, outgoing)`; returns the URL too.
    pub fn connect_options(
        &self,
        tool: &str,
        limits: (usize, usize),
    ) -> anyhow::Result<(String, MqttOptions)> {
        validate_prefix(&self.prefix).context("--prefix")?;
        let url = super::common::broker_url(self.url.as_deref());
        let options = super::watch::operator_options(
            &url,
            tool,
            self.username.as_deref(),
            self.password_env.as_deref(),
            limits,
        )?;
        Ok((url, options))
    }
}
