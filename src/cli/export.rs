//! `glimpse export`: fetch a device's samples (96 px thumbnails by label, plus `index.tsv`) as a
//! tar archive over MQTT. Sends `cmd/export` with `publish`, receives the archive the device
//! publishes on `export` just before its ack, and writes it atomically to `--out`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use super::send::{DeviceArgs, Session};
use crate::mqtt::messages::learning::AckStatus;

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Where to write the archive.
    #[arg(long, short, default_value = "samples.tar")]
    pub out: PathBuf,
}

/// Entries of a tar archive, to report what was fetched.
fn entry_count(archive: &[u8]) -> anyhow::Result<usize> {
    let mut tar = tar::Archive::new(archive);
    let mut n = 0;
    for entry in tar.entries().context("the archive is not a tar file")? {
        entry.context("the archive is damaged")?;
        n += 1;
    }
    Ok(n)
}

pub fn export(args: &ExportArgs) -> anyhow::Result<bool> {
    let session = Session::connect_with_exports(&args.device)?;
    let ack = session.command("export", json!({ "publish": true }))?;
    let reason = ack.reason.clone().unwrap_or_default();
    if ack.status != Some(AckStatus::Accepted) {
        session.close();
        bail!("the device refused the export: {reason}");
    }
    if ack.published != Some(true) {
        session.close();
        bail!("the device wrote the archive but did not publish it: {reason}");
    }
    // Published before the ack on the same connection, so it is here or arriving.
    let deadline = Instant::now() + session.timeout.min(Duration::from_secs(30));
    let expected = ack.bytes.unwrap_or(0);
    let archive = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let payload = session
            .exports
            .recv_timeout(left)
            .context("the archive did not arrive")?;
        // Another operator's export may be in flight too: take the one of our size.
        if payload.len() as u64 == expected {
            break payload;
        }
    };
    session.close();
    let entries = entry_count(&archive)?;
    crate::fsutil::write_atomic(&args.out, &archive).map_err(|(step, e)| {
        anyhow::anyhow!("cannot {} {}: {e}", step.action(), args.out.display())
    })?;
    println!(
        "{}: {} bytes, {} thumbnails (+ index.tsv); on the device: {}",
        args.out.display(),
        archive.len(),
        entries.saturating_sub(1),
        ack.path.as_deref().unwrap_or("?")
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_and_refuses_what_is_not_tar() {
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["a/000000.jpg", "index.tsv"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            header.set_cksum();
            builder.append_data(&mut header, name, &b"abc"[..]).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        assert_eq!(entry_count(&bytes).unwrap(), 2);
        assert!(entry_count(&[0x42; 1024]).is_err());
    }
}
