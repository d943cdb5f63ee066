//! The device side of an export over MQTT: the archive file becomes numbered parts
//! (src/mqtt/messages/export.rs) read and queued one at a time, so memory holds a few parts
//! whatever the archive's size, then the command's ack says how many parts there were. Parts go
//! through an [`OutboxHandle`] that waits for room, so no part is ever dropped from a full outbox;
//! the daemon runs this on a blocking task, so its event loop never waits on the broker.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::teach::{ExportJob, Outbound};
use crate::mqtt::link::OutboxHandle;
use crate::mqtt::messages::export::{encode_part, part_count_of, PartHeader, PART_BYTES};
use crate::mqtt::topics::Outgoing;

/// Parts allowed to wait in the outbox at once: enough to keep the link busy, few enough that
/// predictions and acks are not stuck behind a long queue of parts.
const PARTS_IN_OUTBOX: usize = 8;
/// How long one part may wait for room before the export is abandoned (the broker is away).
const PART_PATIENCE: Duration = Duration::from_secs(60);
/// Room left in each part's message for its JSON header line.
const HEADER_ROOM: usize = 1024;

/// What the ack reports about a published archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    pub parts: u32,
    pub bytes: u64,
    pub sha256: String,
}

/// Why an archive could not be streamed (the ack's `reason`).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} changed while it was being published")]
    Changed { path: String },
    #[error("publishing part {part} of {parts}: {reason}")]
    Send {
        part: u32,
        parts: u32,
        reason: String,
    },
}

/// Reads `file` to its end: (sha256 hex, bytes).
fn sha256_of(file: &mut File) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// Reads `path` and hands each encoded part to `send` (which may block, and fails to abandon
/// the export). `id` is the export command's id, echoed in every part so the asking client can
/// pick its own parts. The file is opened once: a newer export deleting it meanwhile does not
/// cut this one short.
pub fn stream(
    path: &Path,
    id: Option<&str>,
    part_bytes: usize,
    mut send: impl FnMut(Vec<u8>) -> Result<(), String>,
) -> Result<Streamed, StreamError> {
    let shown = path.display().to_string();
    let read_err = |source| StreamError::Read {
        path: shown.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    // First pass: the checksum every part announces.
    let (sha256, bytes) = sha256_of(&mut file).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let part_bytes = part_bytes.max(1);
    let parts = part_count_of(bytes, part_bytes);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut chunk = vec![0u8; part_bytes];
    let mut offset = 0u64;
    for part in 0..parts {
        let mut filled = 0;
        while filled < part_bytes {
            let n = file.read(&mut chunk[filled..]).map_err(read_err)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if offset + filled as u64 > bytes || (part + 1 < parts && filled < part_bytes) {
            return Err(StreamError::Changed {
                path: shown.clone(),
            });
        }
        let header = PartHeader {
            name: name.clone(),
            id: id.map(str::to_string),
            part,
            parts,
            offset,
            bytes,
            sha256: sha256.clone(),
        };
        send(encode_part(&header, &chunk[..filled])).map_err(|reason| StreamError::Send {
            part,
            parts,
            reason,
        })?;
        offset += filled as u64;
    }
    if offset != bytes {
        return Err(StreamError::Changed {
            path: shown.clone(),
        });
    }
    Ok(Streamed {
        parts,
        bytes,
        sha256,
    })
}

/// Streams one export job through the outbox, then queues its ack (with `parts` and `sha256`
/// when every part was queued, `published: false` and the reason otherwise). The archive is
/// deleted once published: the device keeps no copy.
pub fn publish(job: ExportJob, outbox: &OutboxHandle) {
    let ExportJob { path, mut ack } = job;
    let part_bytes = PART_BYTES.min(
        outbox
            .max_payload(Outgoing::Export)
            .saturating_sub(HEADER_ROOM),
    );
    let send = |payload: Vec<u8>| {
        outbox
            .publish_waiting(Outgoing::Export, payload, PARTS_IN_OUTBOX, PART_PATIENCE)
            .map_err(|e| e.to_string())
    };
    match stream(&path, ack.id.as_deref(), part_bytes, send) {
        Ok(streamed) => {
            log::info!(
                "published {} ({} bytes) in {} parts",
                path.display(),
                streamed.bytes,
                streamed.parts
            );
            ack.published = Some(true);
            ack.parts = Some(streamed.parts);
            ack.sha256 = Some(streamed.sha256);
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot delete {} after publishing: {e}", path.display());
            }
        }
        Err(e) => {
            log::warn!("export not published: {e}");
            ack.published = Some(false);
            ack.reason = Some(format!("{e}; the archive stays at {}", path.display()));
        }
    }
    let ack = Outbound::ack(&ack);
    if let Err(e) = outbox.publish_to(ack.kind, ack.payload) {
        log::warn!("export ack: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::messages::export::{decode_part, Accepted, PartTracker};

    #[test]
    fn a_file_streams_as_parts_that_reassemble() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples-1.tar");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut sent = Vec::new();
        let streamed = stream(&path, Some("cli-1"), 4096, |p| {
            sent.push(p);
            Ok(())
        })
        .unwrap();
        assert_eq!((streamed.parts, streamed.bytes), (3, 10_000));
        assert_eq!(sent.len(), 3);
        let mut out = vec![0u8; data.len()];
        let (first, _) = decode_part(&sent[0]).unwrap();
        let mut tracker = PartTracker::new(&first);
        for payload in &sent {
            let (header, chunk) = decode_part(payload).unwrap();
            assert_eq!(header.id.as_deref(), Some("cli-1"));
            assert_eq!(header.name, "samples-1.tar");
            let Accepted::New { offset } = tracker.accept(&header, chunk.len()).unwrap() else {
                panic!("repeat");
            };
            out[offset as usize..offset as usize + chunk.len()].copy_from_slice(chunk);
        }
        assert!(tracker.is_complete());
        tracker.verify(&hex::encode(Sha256::digest(&out))).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn an_abandoned_export_stops_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, vec![1u8; 9000]).unwrap();
        let mut sent = 0;
        let err = stream(&path, None, 1000, |_| {
            sent += 1;
            if sent > 2 {
                Err("broker away".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(sent, 3);
        assert!(
            err.to_string().contains("part 2 of 9: broker away"),
            "{err}"
        );
        let missing = stream(&dir.path().join("nope.tar"), None, 10, |_| Ok(()));
        assert!(missing.unwrap_err().to_string().contains("nope.tar"));
    }
}
