//! The export archive over MQTT, in parts: `cmd/export` with `publish` makes the device publish
//! its samples archive on `{p}/{d}/export` as numbered parts, then the command's ack. Any size
//! works, since no message carries more than [`PART_BYTES`] of the archive (the operator's client
//! and the broker only ever see small messages), and the device streams the file part by part.
//!
//! One part is a one-line JSON header, a newline, then the raw bytes of the part (no base64):
//!
//! ```text
//! {"name":"samples-1700000000000.tar","id":"cli-42-1","part":3,"parts":12,"offset":196608,
//!  "bytes":750000,"sha256":"9f86d0..."}\n<up to 65536 bytes>
//! ```
//!
//! `name` names the archive, `id` is the command's id (absent when the command had none),
//! `part` counts from 0 to `parts - 1`, `offset` is where the bytes go in the archive, `bytes`
//! and `sha256` describe the whole archive. Every part repeats the whole-archive fields, so a
//! receiver can start from any part, check that all parts belong together, and verify the result
//! before writing it. [`PartTracker`] is that receiver's bookkeeping (pure); the CLI
//! (`glimpse export`) writes the bytes at their offsets into a temporary file.

use serde::{Deserialize, Serialize};

/// Archive bytes per part. Small enough for any client's incoming limit (the CLI allows
/// 256 KiB) and for the device to hold a few in flight; large enough that 150 MB (50,000
/// thumbnails) is ~2,300 messages.
pub const PART_BYTES: usize = 64 * 1024;
/// Longest header line accepted (the header is ~250 bytes; `name` and `id` are bounded).
const MAX_HEADER_BYTES: usize = 1024;

/// The header of one part (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartHeader {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub part: u32,
    pub parts: u32,
    pub offset: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl PartHeader {
    /// Whether `other` is a part of the same archive.
    fn same_archive(&self, other: &PartHeader) -> bool {
        (&self.name, &self.id, self.parts, self.bytes, &self.sha256)
            == (
                &other.name,
                &other.id,
                other.parts,
                other.bytes,
                &other.sha256,
            )
    }
}

/// Why a part (or a set of parts) is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("export part has no header line")]
    NoHeader,
    #[error("export part header is not valid: {0}")]
    BadHeader(String),
    #[error("export part {part} of {parts} is out of range")]
    OutOfRange { part: u32, parts: u32 },
    #[error(
        "export part {part}: {len} bytes at offset {offset} do not fit an archive of {bytes} bytes"
    )]
    DoesNotFit {
        part: u32,
        offset: u64,
        len: usize,
        bytes: u64,
    },
    #[error("export part {part} does not belong to the archive being received")]
    Foreign { part: u32 },
    #[error("export part {part} came twice with different contents")]
    Conflict { part: u32 },
    #[error("the archive's sha256 is {actual}, the device announced {expected}")]
    Checksum { expected: String, actual: String },
}

/// Number of parts for an archive of `bytes` (an empty archive is still one, empty, part).
pub fn part_count(bytes: u64) -> u32 {
    part_count_of(bytes, PART_BYTES)
}

/// Number of parts of `part_bytes` each (a device with a small `mqtt.max_packet_bytes` uses
/// smaller parts; receivers rely only on each part's `offset`).
pub fn part_count_of(bytes: u64, part_bytes: usize) -> u32 {
    bytes.div_ceil(part_bytes.max(1) as u64).max(1) as u32
}

/// One part's payload: the header as one JSON line, then the bytes.
pub fn encode_part(header: &PartHeader, chunk: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(chunk);
    out
}

/// Splits a part's payload into its header and bytes, checking the header's own consistency
/// (part within `parts`, bytes within the archive).
pub fn decode_part(payload: &[u8]) -> Result<(PartHeader, &[u8]), PartError> {
    let newline = payload
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or(PartError::NoHeader)?;
    let header: PartHeader = serde_json::from_slice(&payload[..newline])
        .map_err(|e| PartError::BadHeader(e.to_string()))?;
    let chunk = &payload[newline + 1..];
    if header.parts == 0 || header.part >= header.parts {
        return Err(PartError::OutOfRange {
            part: header.part,
            parts: header.parts,
        });
    }
    let end = header.offset.checked_add(chunk.len() as u64);
    if end.is_none_or(|end| end > header.bytes) {
        return Err(PartError::DoesNotFit {
            part: header.part,
            offset: header.offset,
            len: chunk.len(),
            bytes: header.bytes,
        });
    }
    Ok((header, chunk))
}

/// What [`PartTracker::accept`] decided about a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A part not seen before: write its bytes at `offset`.
    New { offset: u64 },
    /// A part already received (a QoS 1 redelivery): ignore it.
    Repeat,
}

/// Which parts of one archive have arrived. Pure bookkeeping; the bytes go elsewhere.
#[derive(Debug, Clone)]
pub struct PartTracker {
    first: PartHeader,
    /// Per part: its (offset, length) once received.
    seen: Vec<Option<(u64, usize)>>,
    received: u32,
    received_bytes: u64,
}

impl PartTracker {
    /// Starts with the header of any part of the archive.
    pub fn new(first: &PartHeader) -> PartTracker {
        PartTracker {
            first: first.clone(),
            seen: vec![None; first.parts as usize],
            received: 0,
            received_bytes: 0,
        }
    }

    /// The archive's whole-archive fields (from the first part seen).
    pub fn archive(&self) -> &PartHeader {
        &self.first
    }

    /// Checks one decoded part against the archive and records it.
    pub fn accept(&mut self, header: &PartHeader, len: usize) -> Result<Accepted, PartError> {
        if !self.first.same_archive(header) {
            return Err(PartError::Foreign { part: header.part });
        }
        let slot = &mut self.seen[header.part as usize];
        match slot {
            Some(previous) if *previous == (header.offset, len) => Ok(Accepted::Repeat),
            Some(_) => Err(PartError::Conflict { part: header.part }),
            None => {
                *slot = Some((header.offset, len));
                self.received += 1;
                self.received_bytes += len as u64;
                Ok(Accepted::New {
                    offset: header.offset,
                })
            }
        }
    }

    /// Parts received so far.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Every part arrived and together they are exactly the archive's size (parts are checked
    /// to fit, so the right total means they tile it; the sha256 settles the rest).
    pub fn is_complete(&self) -> bool {
        self.received == self.first.parts && self.received_bytes == self.first.bytes
    }

    /// Compares the reassembled archive's sha256 (hex) with the announced one.
    pub fn verify(&self, actual_sha256: &str) -> Result<(), PartError> {
        if actual_sha256.eq_ignore_ascii_case(&self.first.sha256) {
            Ok(())
        } else {
            Err(PartError::Checksum {
                expected: self.first.sha256.clone(),
                actual: actual_sha256.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Splits `archive` into encoded parts, as the device does.
    fn split(archive: &[u8], id: Option<&str>) -> Vec<Vec<u8>> {
        let sha256 = hex::encode(Sha256::digest(archive));
        let parts = part_count(archive.len() as u64);
        (0..parts)
            .map(|part| {
                let start = part as usize * PART_BYTES;
                let chunk = &archive[start..(start + PART_BYTES).min(archive.len())];
                let header = PartHeader {
                    name: "samples-1.tar".into(),
                    id: id.map(String::from),
                    part,
                    parts,
                    offset: start as u64,
                    bytes: archive.len() as u64,
                    sha256: sha256.clone(),
                };
                encode_part(&header, chunk)
            })
            .collect()
    }

    /// Reassembles in memory, in the given order of parts.
    fn join(parts: &[Vec<u8>]) -> Result<Vec<u8>, PartError> {
        let mut tracker: Option<PartTracker> = None;
        let mut out = Vec::new();
        for payload in parts {
            let (header, chunk) = decode_part(payload)?;
            let tracker = tracker.get_or_insert_with(|| PartTracker::new(&header));
            if let Accepted::New { offset } = tracker.accept(&header, chunk.len())? {
                let end = offset as usize + chunk.len();
                if out.len() < end {
                    out.resize(end, 0);
                }
                out[offset as usize..end].copy_from_slice(chunk);
            }
        }
        let tracker = tracker.ok_or(PartError::NoHeader)?;
        assert!(tracker.is_complete(), "{} parts", tracker.received());
        tracker.verify(&hex::encode(Sha256::digest(&out)))?;
        Ok(out)
    }

    fn archive(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 256) as u8).collect()
    }

    #[test]
    fn parts_round_trip_in_any_order_with_repeats() {
        for len in [0, 1, PART_BYTES, PART_BYTES + 1, 3 * PART_BYTES + 17] {
            let data = archive(len);
            let mut parts = split(&data, Some("cli-1"));
            assert_eq!(parts.len(), part_count(len as u64) as usize);
            assert_eq!(join(&parts).unwrap(), data, "{len}");
            parts.reverse();
            let again = parts[0].clone();
            parts.push(again);
            assert_eq!(join(&parts).unwrap(), data, "{len} reversed + repeat");
        }
    }

    #[test]
    fn the_header_is_one_json_line() {
        let parts = split(b"abc", None);
        let text = String::from_utf8(parts[0].clone()).unwrap();
        let (line, rest) = text.split_once('\n').unwrap();
        assert_eq!(rest, "abc");
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["parts"], 1);
        assert_eq!(value["bytes"], 3);
        assert!(value.get("id").is_none());
    }

    #[test]
    fn damaged_or_foreign_parts_are_refused() {
        let data = archive(2 * PART_BYTES + 5);
        let parts = split(&data, Some("a"));
        assert_eq!(decode_part(b"no newline"), Err(PartError::NoHeader));
        assert!(matches!(
            decode_part(b"{}\nxyz"),
            Err(PartError::BadHeader(_))
        ));
        // A flipped byte in the data: every part fits, the checksum does not.
        let mut flipped = parts.clone();
        let last = flipped[1].len() - 1;
        flipped[1][last] ^= 1;
        assert!(matches!(join(&flipped), Err(PartError::Checksum { .. })));
        // A part of another export (another id) among ours.
        let other = split(&data, Some("b"));
        let mixed = vec![parts[0].clone(), other[1].clone()];
        assert_eq!(join(&mixed), Err(PartError::Foreign { part: 1 }));
        // Bytes past the announced size, and a part number out of range.
        let (mut header, chunk) = decode_part(&parts[2]).unwrap();
        header.offset = header.bytes;
        assert!(matches!(
            decode_part(&encode_part(&header, chunk)),
            Err(PartError::DoesNotFit { .. })
        ));
        header.offset = 0;
        header.part = 3;
        assert!(matches!(
            decode_part(&encode_part(&header, chunk)),
            Err(PartError::OutOfRange { part: 3, parts: 3 })
        ));
    }
}
