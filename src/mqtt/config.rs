//! The `[mqtt]` config section: broker URL, identity, credentials, TLS files, QoS and limits.
//!
//! Everything has a default so an empty section talks to `mqtt://localhost:1883` as
//! `glimpse-<hostname>`. [`MqttConfig::validate`] names the offending key in every error, and the
//! password is only ever held in a [`Secret`] whose `Debug` prints `***`, so a config dump in a
//! log never leaks it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::policy::PolicyConfig;
use super::topics::{validate_level, validate_prefix, Topics};

/// Where the system CA bundle lives on Debian/Ubuntu (JetPack included); used for `mqtts://`
/// when no `ca_file` is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A config error, naming the key (`mqtt.<key>`) and what is wrong.
#[derive(Debug, Error)]
pub enum MqttConfigError {
    #[error("mqtt.{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("mqtt.{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt.password_env: environment variable {name} is not set or not UTF-8")]
    MissingEnv { name: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> MqttConfigError {
    MqttConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A password: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear text, for the one place that needs it (the CONNECT packet).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Home Assistant MQTT discovery settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    pub enabled: bool,
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: "homeassistant".to_string(),
        }
    }
}

/// The shortest `thumbnail_interval_ms`: at most 5 thumbnails a second.
pub const MIN_THUMBNAIL_INTERVAL_MS: u64 = 200;

/// The `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883).
    pub url: String,
    /// Defaults to `glimpse-<device_id>`. Must be stable across restarts: the broker keys the
    /// persistent session (queued QoS 1 samples) on it.
    pub client_id: Option<String>,
    pub prefix: String,
    /// Defaults to the hostname, with characters that are illegal in a topic level replaced.
    pub device_id: String,
    pub username: Option<String>,
    /// A file whose first line is the password (preferred: it can be mode 0600).
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM CA bundle for `mqtts://`; the system bundle when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// QoS of everything the device publishes and subscribes to: 0, 1 or 2.
    pub qos: u8,
    pub keepalive_s: u64,
    /// Largest MQTT packet accepted or sent, both directions (image samples are large; rumqttc's
    /// own default of 10 KiB would drop them).
    pub max_packet_bytes: usize,
    pub reconnect_backoff_max_s: u64,
    /// Messages held while the broker is away; beyond it the oldest are dropped (and counted).
    pub outbox_capacity: usize,
    pub stats_interval_s: u64,
    /// Milliseconds between two frames published on `{p}/{d}/frame/thumbnail` (small JPEGs for
    /// dashboards such as `glimpse studio`); 0 = none (the default: they cost bandwidth).
    pub thumbnail_interval_ms: u64,
    pub publish: PolicyConfig,
    pub homeassistant: HomeAssistantConfig,
    /// The fleet group (`learning.group`), copied here when the config is loaded so the link
    /// subscribes to the group's topics; not a key of `[mqtt]`.
    #[serde(skip)]
    pub group: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://localhost:1883".to_string(),
            client_id: None,
            prefix: "glimpse".to_string(),
            device_id: default_device_id(),
            username: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            qos: 1,
            keepalive_s: 30,
            max_packet_bytes: 8 * 1024 * 1024,
            reconnect_backoff_max_s: 30,
            outbox_capacity: 256,
            stats_interval_s: 10,
            thumbnail_interval_ms: 0,
            publish: PolicyConfig::default(),
            homeassistant: HomeAssistantConfig::default(),
            group: None,
        }
    }
}

/// The transport half of the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

/// Parses `mqtt://host[:port]` / `mqtts://host[:port]`; IPv6 hosts in brackets (`[::1]:1883`).
/// Pure, so the error for every malformed URL is tested without a network.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (Scheme::Mqtt, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (Scheme::Mqtts, rest)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "{url:?} must be scheme://host[:port] only (credentials go in username / password_file)"
        ));
    }
    let default_port = match scheme {
        Scheme::Mqtt => 1883,
        Scheme::Mqtts => 8883,
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in IPv6 host"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{url:?}: expected ':port' after ']'"))?,
                ),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{url:?}: port {p:?} is not in 1..=65535")),
            Ok(port) => port,
        },
    };
    Ok(BrokerUrl {
        scheme,
        host: host.to_string(),
        port,
    })
}

impl MqttConfig {
    /// The client id, defaulting to `glimpse-<device_id>`.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("glimpse-{}", self.device_id))
    }

    /// The topic builder for this prefix and device.
    pub fn topics(&self) -> Result<Topics, MqttConfigError> {
        Topics::new(&self.prefix, &self.device_id)
            .and_then(|t| t.with_group(self.group.as_deref()))
            .map_err(|e| invalid("prefix", e.to_string()))
    }

    pub fn broker(&self) -> Result<BrokerUrl, MqttConfigError> {
        parse_broker_url(&self.url).map_err(|m| invalid("url", m))
    }

    /// Checks every key without touching files or the network; each error names its key.
    pub fn validate(&self) -> Result<(), MqttConfigError> {
        let broker = self.broker()?;
        validate_prefix(&self.prefix).map_err(|e| invalid("prefix", e.to_string()))?;
        validate_level("device id", &self.device_id)
            .map_err(|e| invalid("device_id", e.to_string()))?;
        let client_id = self.client_id();
        // MQTT 3.1.1 servers must accept 1..=23 bytes; Mosquitto and most others take more, so
        // only the empty id (which would forbid a persistent session) and absurd ones are refused.
        if client_id.is_empty() || client_id.len() > 256 {
            return Err(invalid("client_id", "must be 1..=256 bytes"));
        }
        if client_id.chars().any(char::is_control) {
            return Err(invalid("client_id", "must not contain control characters"));
        }
        if self.qos > 2 {
            return Err(invalid("qos", format!("{} is not 0, 1 or 2", self.qos)));
        }
        if self.keepalive_s != 0 && self.keepalive_s < 5 {
            return Err(invalid(
                "keepalive_s",
                "must be 0 (off) or at least 5 seconds",
            ));
        }
        if self.keepalive_s > u64::from(u16::MAX) {
            return Err(invalid("keepalive_s", "must be at most 65535 (MQTT limit)"));
        }
        // 1 KiB lets the smallest JSON through; 256 MiB is the MQTT limit.
        if !(1024..=256 * 1024 * 1024).contains(&self.max_packet_bytes) {
            return Err(invalid(
                "max_packet_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        if self.reconnect_backoff_max_s == 0 {
            return Err(invalid("reconnect_backoff_max_s", "must be at least 1"));
        }
        if self.outbox_capacity == 0 {
            return Err(invalid("outbox_capacity", "must be at least 1"));
        }
        if self.stats_interval_s == 0 {
            return Err(invalid("stats_interval_s", "must be at least 1"));
        }
        // A floor, so a typo cannot turn thumbnails into a video stream on a thin uplink.
        if self.thumbnail_interval_ms != 0 && self.thumbnail_interval_ms < MIN_THUMBNAIL_INTERVAL_MS
        {
            return Err(invalid(
                "thumbnail_interval_ms",
                format!("must be 0 (off) or at least {MIN_THUMBNAIL_INTERVAL_MS}"),
            ));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(invalid(
                "password_file",
                "set password_file or password_env, not both",
            ));
        }
        if (self.password_file.is_some() || self.password_env.is_some()) && self.username.is_none()
        {
            return Err(invalid("username", "a password is set but username is not"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                "client_cert",
                "client_cert and client_key go together",
            ));
        }
        let tls_files = self.ca_file.is_some() || self.client_cert.is_some();
        if tls_files && broker.scheme == Scheme::Mqtt {
            return Err(invalid(
                "url",
                "ca_file / client_cert are set but the url is mqtt:// (use mqtts://)",
            ));
        }
        self.publish.validate().map_err(|m| invalid("publish", m))?;
        validate_prefix(&self.homeassistant.discovery_prefix)
            .map_err(|e| invalid("homeassistant.discovery_prefix", e.to_string()))?;
        Ok(())
    }

    /// Reads the password from `password_file` (first line) or `password_env`.
    pub fn password(&self) -> Result<Option<Secret>, MqttConfigError> {
        if let Some(path) = &self.password_file {
            let text = read_text("password_file", path)?;
            let line = text.lines().next().unwrap_or("");
            return Ok(Some(Secret::new(line)));
        }
        if let Some(name) = &self.password_env {
            let value = std::env::var(name)
                .map_err(|_| MqttConfigError::MissingEnv { name: name.clone() })?;
            return Ok(Some(Secret::new(value)));
        }
        Ok(None)
    }
}

fn read_text(key: &'static str, path: &Path) -> Result<String, MqttConfigError> {
    std::fs::read_to_string(path).map_err(|source| MqttConfigError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file named by a config key, for the TLS material.
pub(crate) fn read_bytes(key: &'static str, path: &Path) -> Result<Vec<u8>, MqttConfigError> {
    std::fs::read(path).map_err(|source| MqttConfigError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// The hostname (Linux `/proc`), made into a legal topic level; `glimpse` if unreadable.
pub fn default_device_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize_device_id(raw.trim())
}

/// Replaces characters that cannot appear in a topic level; empty becomes `glimpse`.
pub fn sanitize_device_id(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "glimpse".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> MqttConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn empty_section_gets_the_defaults() {
        let c = config("device_id = \"cam1\"");
        assert_eq!(c.url, "mqtt://localhost:1883");
        assert_eq!(c.client_id(), "glimpse-cam1");
        assert_eq!(c.prefix, "glimpse");
        assert_eq!(c.qos, 1);
        assert_eq!(c.max_packet_bytes, 8 * 1024 * 1024);
        assert_eq!(c.reconnect_backoff_max_s, 30);
        assert_eq!(c.stats_interval_s, 10);
        assert!(!c.homeassistant.enabled);
        assert_eq!(c.homeassistant.discovery_prefix, "homeassistant");
        c.validate().unwrap();
    }

    #[test]
    fn default_device_id_is_a_legal_topic_level() {
        let id = default_device_id();
        validate_level("device id", &id).unwrap();
        assert_eq!(sanitize_device_id("a/b+c#d e"), "a-b-c-d-e");
        assert_eq!(sanitize_device_id(""), "glimpse");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<MqttConfig>("urll = \"mqtt://x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("urll"), "{err}");
        let err = toml::from_str::<MqttConfig>("[homeassistant]\nenable = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable"), "{err}");
    }

    #[test]
    fn parses_broker_urls() {
        let u = parse_broker_url("mqtt://broker.lan").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtt, "broker.lan", 1883)
        );
        let u = parse_broker_url("mqtts://broker.lan:8884/").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtts, "broker.lan", 8884)
        );
        let u = parse_broker_url("mqtts://broker.lan").unwrap();
        assert_eq!(u.port, 8883);
        let u = parse_broker_url("mqtt://[::1]:1999").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1999));
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://x:0",
            "mqtt://x:99999",
            "mqtt://x:abc",
            "mqtt://user:pw@x",
            "mqtt://x/topic",
            "mqtt://[::1",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad} should be refused");
        }
    }

    fn validate_err(c: &MqttConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn validation_errors_name_the_key() {
        let base = config("device_id = \"cam1\"");
        let cases: Vec<(MqttConfig, &str)> = vec![
            (
                MqttConfig {
                    url: "http://x".into(),
                    ..base.clone()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    prefix: "a/+".into(),
                    ..base.clone()
                },
                "mqtt.prefix",
            ),
            (
                MqttConfig {
                    device_id: "a/b".into(),
                    ..base.clone()
                },
                "mqtt.device_id",
            ),
            (
                MqttConfig {
                    qos: 3,
                    ..base.clone()
                },
                "mqtt.qos",
            ),
            (
                MqttConfig {
                    keepalive_s: 2,
                    ..base.clone()
                },
                "mqtt.keepalive_s",
            ),
            (
                MqttConfig {
                    max_packet_bytes: 10,
                    ..base.clone()
                },
                "mqtt.max_packet_bytes",
            ),
            (
                MqttConfig {
                    outbox_capacity: 0,
                    ..base.clone()
                },
                "mqtt.outbox_capacity",
            ),
            (
                MqttConfig {
                    thumbnail_interval_ms: 50,
                    ..base.clone()
                },
                "mqtt.thumbnail_interval_ms",
            ),
            (
                MqttConfig {
                    stats_interval_s: 0,
                    ..base.clone()
                },
                "mqtt.stats_interval_s",
            ),
            (
                MqttConfig {
                    reconnect_backoff_max_s: 0,
                    ..base.clone()
                },
                "mqtt.reconnect_backoff_max_s",
            ),
            (
                MqttConfig {
                    password_env: Some("X".into()),
                    ..base.clone()
                },
                "mqtt.username",
            ),
            (
                MqttConfig {
                    client_cert: Some("c.pem".into()),
                    url: "mqtts://x".into(),
                    ..base.clone()
                },
                "mqtt.client_cert",
            ),
            (
                MqttConfig {
                    ca_file: Some("ca.pem".into()),
                    ..base.clone()
                },
                "mqtt.url",
            ),
            (
                MqttConfig {
                    homeassistant: HomeAssistantConfig {
                        enabled: true,
                        discovery_prefix: "".into(),
                    },
                    ..base.clone()
                },
                "mqtt.homeassistant.discovery_prefix",
            ),
        ];
        for (c, key) in cases {
            let err = validate_err(&c);
            assert!(err.starts_with(&format!("{key}:")), "{key}: got {err}");
        }
    }

    #[test]
    fn password_comes_from_a_file_or_the_environment_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let c = MqttConfig {
            username: Some("u".into()),
            password_file: Some(file),
            ..config("device_id = \"cam1\"")
        };
        c.validate().unwrap();
        let pw = c.password().unwrap().unwrap();
        assert_eq!(pw.expose(), "s3cret");
        assert!(!format!("{pw:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));

        let c = MqttConfig {
            username: Some("u".into()),
            password_env: Some("GLIMPSE_TEST_PW_NOT_SET_ANYWHERE".into()),
            ..config("device_id = \"cam1\"")
        };
        let err = c.password().unwrap_err().to_string();
        assert!(err.contains("GLIMPSE_TEST_PW_NOT_SET_ANYWHERE"), "{err}");

        let c = MqttConfig {
            username: Some("u".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..config("device_id = \"cam1\"")
        };
        let err = c.password().unwrap_err().to_string();
        assert!(
            err.contains("mqtt.password_file") && err.contains("/nonexistent/pw"),
            "{err}"
        );
    }
}
