//! `glimpse export`: fetch a device's samples (96 px thumbnails by label, plus `index.tsv`) as a
//! tar archive over MQTT. Sends `cmd/export` with `publish`; the device publishes the archive on
//! `export` in numbered parts (src/mqtt/messages/export.rs), then the ack. Parts are written at
//! their offsets into a temporary file next to `--out` as they arrive (memory stays at one part
//! whatever the archive's size), and the file is renamed to `--out` only once every part is there
//! and the sha256 matches the device's.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::send::{DeviceArgs, Session};
use crate::mqtt::messages::export::{decode_part, Accepted, PartTracker};
use crate::mqtt::messages::learning::{Ack, AckStatus};

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Where to write the archive.
    #[arg(long, short, default_value = "samples.tar")]
    pub out: PathBuf,
}

/// How often the loop looks at the ack channel while parts stream in.
const POLL: Duration = Duration::from_millis(50);

/// Entries of a tar archive, to report what was fetched.
fn entry_count(archive: impl std::io::Read) -> anyhow::Result<usize> {
    let mut tar = tar::Archive::new(archive);
    let mut n = 0;
    for entry in tar.entries().context("the archive is not a tar file")? {
        entry.context("the archive is damaged")?;
        n += 1;
    }
    Ok(n)
}

fn sha256_of(file: &mut File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The archive being received: parts written into `tmp` at their offsets.
struct Receiving {
    tmp: PathBuf,
    file: File,
    tracker: Option<PartTracker>,
}

impl Receiving {
    fn new(out: &Path) -> anyhow::Result<Receiving> {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "samples.tar".into());
        let tmp = out.with_file_name(format!(".{name}.part-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Receiving {
            tmp,
            file,
            tracker: None,
        })
    }

    /// Takes one payload from `export`; parts of other exports (another operator's) are skipped.
    fn take(&mut self, payload: &[u8], id: &str) -> anyhow::Result<()> {
        // Anyone on the broker may publish on `export`: what is not a part, or not a part of
        // our export, is skipped, not fatal.
        let (header, chunk) = match decode_part(payload) {
            Ok(part) => part,
            Err(e) => {
                log::warn!("skipped a message on export: {e}");
                return Ok(());
            }
        };
        if header.id.as_deref() != Some(id) {
            return Ok(());
        }
        let tracker = self
            .tracker
            .get_or_insert_with(|| PartTracker::new(&header));
        if let Accepted::New { offset } = tracker.accept(&header, chunk.len())? {
            self.file.seek(SeekFrom::Start(offset))?;
            self.file
                .write_all(chunk)
                .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.tracker.as_ref().is_some_and(PartTracker::is_complete)
    }

    fn progress(&self) -> String {
        match &self.tracker {
            Some(t) => format!("{} of {} parts", t.received(), t.archive().parts),
            None => "no part".into(),
        }
    }

    /// Verifies the whole file and moves it to `out`; returns (bytes, entries, sha256).
    fn finish(mut self, out: &Path) -> anyhow::Result<(u64, usize, String)> {
        let tracker = self.tracker.take().context("no part arrived")?;
        let sha256 = sha256_of(&mut self.file)?;
        tracker.verify(&sha256)?;
        self.file.seek(SeekFrom::Start(0))?;
        let entries = entry_count(&mut self.file)?;
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, out)
            .with_context(|| format!("cannot move the archive to {}", out.display()))?;
        Ok((tracker.archive().bytes, entries, sha256))
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // After a successful `finish` the file was renamed away and this fails harmlessly.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub fn export(args: &ExportArgs) -> anyhow::Result<bool> {
    let session = Session::connect_with_exports(&args.device)?;
    let result = receive(&session, &args.out);
    session.close();
    let (ack, bytes, entries) = result?;
    println!(
        "{}: {bytes} bytes, {} thumbnails (+ index.tsv); on the device: {}",
        args.out.display(),
        entries.saturating_sub(1),
        ack.path.as_deref().unwrap_or("?")
    );
    Ok(true)
}

/// Asks for the archive and receives it: parts and the ack interleave; done when the ack says
/// how many parts there are and all of them arrived. `--timeout-s` bounds the wait for the ack
/// and, after it, the silence between two parts.
fn receive(session: &Session, out: &Path) -> anyhow::Result<(Ack, u64, usize)> {
    let mut receiving = Receiving::new(out)?;
    let id = session.send_command("export", json!({ "publish": true }))?;
    let mut ack: Option<Ack> = None;
    let mut deadline = Instant::now() + session.timeout;
    loop {
        match session.exports.recv_timeout(POLL) {
            Ok(payload) => {
                receiving.take(&payload, &id)?;
                deadline = Instant::now() + session.timeout;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!(
                    "the connection to the broker ended ({})",
                    receiving.progress()
                )
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        while ack.is_none() {
            match session.try_ack() {
                Some(a) if a.id.as_deref() == Some(id.as_str()) => {
                    let reason = a.reason.clone().unwrap_or_default();
                    if a.status != Some(AckStatus::Accepted) {
                        bail!("the device refused the export: {reason}");
                    }
                    if a.published != Some(true) {
                        bail!("the device wrote the archive but did not publish it: {reason}");
                    }
                    ack = Some(a);
                }
                Some(_) => continue,
                None => break,
            }
        }
        if let Some(ack) = &ack {
            if receiving.is_complete() {
                let (bytes, entries, sha256) = receiving.finish(out)?;
                if ack.bytes.is_some_and(|b| b != bytes) {
                    bail!(
                        "the ack announced {:?} bytes, the parts made {bytes}",
                        ack.bytes
                    );
                }
                if let Some(announced) = &ack.sha256 {
                    if !announced.eq_ignore_ascii_case(&sha256) {
                        bail!("the ack announced sha256 {announced}, the parts made {sha256}");
                    }
                }
                return Ok((ack.clone(), bytes, entries));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} within {:?} ({} received)",
                if ack.is_some() {
                    "the archive's parts stopped arriving"
                } else {
                    "no ack for export"
                },
                session.timeout,
                receiving.progress()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::messages::export::{encode_part, part_count, PartHeader, PART_BYTES};

    fn tar_of(entries: usize, size: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(size as u64);
            header.set_cksum();
            let data: Vec<u8> = (0..size).map(|j| ((i + j) % 251) as u8).collect();
            builder
                .append_data(&mut header, format!("a/{i:06}.jpg"), &data[..])
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn parts_of(archive: &[u8], id: &str) -> Vec<Vec<u8>> {
        let sha256 = hex::encode(Sha256::digest(archive));
        let parts = part_count(archive.len() as u64);
        (0..parts)
            .map(|part| {
                let start = part as usize * PART_BYTES;
                let end = (start + PART_BYTES).min(archive.len());
                let header = PartHeader {
                    name: "samples-1.tar".into(),
                    id: Some(id.into()),
                    part,
                    parts,
                    offset: start as u64,
                    bytes: archive.len() as u64,
                    sha256: sha256.clone(),
                };
                encode_part(&header, &archive[start..end])
            })
            .collect()
    }

    #[test]
    fn counts_entries_and_refuses_what_is_not_tar() {
        assert_eq!(entry_count(&tar_of(2, 3)[..]).unwrap(), 2);
        assert!(entry_count(&[0x42; 1024][..]).is_err());
    }

    #[test]
    fn parts_out_of_order_become_the_archive_and_others_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("samples.tar");
        let archive = tar_of(40, 5000);
        assert!(archive.len() > 3 * PART_BYTES);
        let mut receiving = Receiving::new(&out).unwrap();
        let mut parts = parts_of(&archive, "mine");
        parts.reverse();
        for (i, part) in parts.iter().enumerate() {
            receiving.take(part, "mine").unwrap();
            receiving
                .take(&parts_of(&archive, "theirs")[0], "mine")
                .unwrap();
            assert_eq!(receiving.is_complete(), i == parts.len() - 1);
        }
        receiving.take(&parts[0], "mine").unwrap(); // a QoS 1 repeat
        let tmp = receiving.tmp.clone();
        let (bytes, entries, sha256) = receiving.finish(&out).unwrap();
        assert_eq!((bytes, entries), (archive.len() as u64, 40));
        assert_eq!(sha256, hex::encode(Sha256::digest(&archive)));
        assert_eq!(std::fs::read(&out).unwrap(), archive);
        assert!(!tmp.exists());
    }

    #[test]
    fn a_corrupt_archive_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("samples.tar");
        let archive = tar_of(3, 100);
        let mut parts = parts_of(&archive, "x");
        let last = parts[0].len() - 1;
        parts[0][last] ^= 0x55;
        let mut receiving = Receiving::new(&out).unwrap();
        receiving.take(&parts[0], "x").unwrap();
        assert!(receiving.is_complete());
        let tmp = receiving.tmp.clone();
        let err = receiving.finish(&out).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
        assert!(!out.exists() && !tmp.exists());
    }
}
