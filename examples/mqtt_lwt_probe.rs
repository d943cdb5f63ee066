//! A process that connects an `MqttLink` and then waits to be killed: the integration tests
//! `kill -9` it to check that the broker publishes the `offline` last will.
//!
//! Usage: `mqtt_lwt_probe URL PREFIX DEVICE`. Prints `connected` on stdout once the broker
//! acknowledged the connection. Exits by itself after two minutes so a crashed test run does
//! not leave it behind.

use std::io::Write;
use std::time::Duration;

use glimpse::mqtt::MqttConfig;
use glimpse::mqtt::MqttLink;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, prefix, device] = args.as_slice() else {
        anyhow::bail!("usage: mqtt_lwt_probe URL PREFIX DEVICE");
    };
    let config = MqttConfig {
        url: url.clone(),
        prefix: prefix.clone(),
        device_id: device.clone(),
        ..MqttConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (link, _incoming) = MqttLink::start(&config)?;
        while !link.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("connected");
        std::io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs(120)).await;
        anyhow::Ok(())
    })
}
