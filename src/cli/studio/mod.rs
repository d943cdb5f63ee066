//! `glimpse studio`: a web page for operators in the field, served by one more MQTT client of
//! the contract in docs/mqtt.md (like `glimpse send` and `glimpse watch`). The page shows every
//! device under the prefix and teaches them (label the frame shown, upload photos, retrain, roll
//! back, forget); this process relays between the browsers and the broker, so devices keep no
//! HTTP port and one studio serves the whole fleet.
//!
//! Security: loopback by default; any other address needs an access token (generated and
//! printed at start, or read from `--token-file`), checked on every request.

mod http;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rand::RngCore;

pub use http::{CSRF_HEADER, DEFAULT_MAX_SAMPLE_BYTES};

use crate::cli::broker::BrokerArgs;
use crate::cli::common::ConfigError;

#[derive(Debug, Clone, Args)]
#[command(mut_arg("url", |a| a.help(
    "Broker URL: mqtt://host[:port] or mqtts://host[:port] (system CA bundle); default \
     mqtt://localhost:1883"
)))]
#[command(mut_arg("prefix", |a| a.help("Topic prefix the devices publish under")))]
pub struct StudioArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Address the page is served on. Anything but loopback needs an access token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A file whose first line is the access token (else one is generated when needed).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for a device's ack to a sample or command.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

/// The access token: from `--token-file`, else generated when the address is not loopback,
/// else none. Errors are the user's (exit code 2).
fn access_token(args: &StudioArgs) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("--token-file {}: {e}", path.display())))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        // Short tokens are guessable over a LAN; printable ASCII keeps them URL-safe to type.
        if token.len() < 16
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        {
            return Err(ConfigError(format!(
                "--token-file {}: the token must be at least 16 characters of A-Z a-z 0-9 - _ . ~",
                path.display()
            ))
            .into());
        }
        return Ok(Some(token));
    }
    if args.listen.ip().is_loopback() {
        return Ok(None);
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Ok(Some(hex::encode(bytes)))
}

/// Runs the studio until interrupted.
pub fn studio(args: &StudioArgs) -> anyhow::Result<()> {
    // Reports and thumbnails in (a few KB to a few hundred); photos out, up to a device's
    // sample limit (the daemon's packet limit is 8 MiB by default).
    let (url, options) = args
        .broker
        .connect_options("studio", (16 * 1024 * 1024, 64 * 1024 * 1024))?;
    let token = access_token(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| ConfigError(format!("--listen {}: {e}", args.listen)))?;
        let address = listener.local_addr().context("the listening address")?;
        let relay = relay::Relay::start(
            options,
            &args.broker.prefix,
            url.clone(),
            Duration::from_secs(args.timeout_s.max(1)),
        );
        let link = match &token {
            Some(token) => format!("http://{address}/?token={token}"),
            None => format!("http://{address}/"),
        };
        // One line a script (and the tests) can read: where the page is.
        println!(
            "glimpse studio: {link} (broker {url}, prefix {})",
            args.broker.prefix
        );
        if address.ip().is_unspecified() {
            println!(
                "glimpse studio: on a phone, use this machine's LAN address in place of {}",
                address.ip()
            );
        }
        let app = http::router(http::Studio { relay, token });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving the studio")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: StudioArgs,
    }

    fn args(extra: &[&str]) -> StudioArgs {
        let mut argv = vec!["studio"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn loopback_needs_no_token_other_addresses_get_one() {
        assert_eq!(access_token(&args(&[])).unwrap(), None);
        let token = access_token(&args(&["--listen", "0.0.0.0:8080"]))
            .unwrap()
            .unwrap();
        assert_eq!(token.len(), 32);
        assert_ne!(
            access_token(&args(&["--listen", "0.0.0.0:8080"]))
                .unwrap()
                .unwrap(),
            token
        );
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "abcdefghijklmnop-1\nignored\n").unwrap();
        let read = access_token(&args(&["--token-file", good.to_str().unwrap()])).unwrap();
        assert_eq!(read.as_deref(), Some("abcdefghijklmnop-1"));
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let err = access_token(&args(&["--token-file", short.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}
