//! Splits an MJPEG byte stream (concatenated JPEG files, as `ffmpeg -f mjpeg -` or gstreamer's
//! `jpegenc ! fdsink` write them) into one JPEG per frame.
//!
//! Why parse markers instead of searching for `FF D9`: an APPn segment (EXIF thumbnail, ICC
//! profile) may contain `FF D9` bytes, and entropy-coded data only avoids false markers through
//! `FF 00` stuffing and RSTn. So the splitter walks the structure: SOI, then marker segments
//! skipped by their length, then after SOS it scans entropy data where `FF 00` and `FF D0..D7`
//! are data, `FF D9` ends the frame and any other marker starts a new segment (progressive JPEGs
//! have several scans). Anything that breaks the structure makes it resync on the next SOI.
//!
//! It is a pure push parser: feed it whatever chunks a pipe returns, get back whole frames.

/// Frames larger than this are dropped (a stream that never sends EOI must not eat memory).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for `FF D8`; bytes before it are garbage.
    Seek,
    /// Inside a frame, `pos` points at the next marker (`FF xx`).
    Segments,
    /// Inside entropy-coded data after SOS; `pos` is the next byte to scan.
    Entropy,
}

/// What the splitter has seen so far (for logs and health).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SplitterStats {
    pub frames: u64,
    /// Bytes thrown away while looking for a start of image.
    pub garbage_bytes: u64,
    /// Frames abandoned: broken structure, a new SOI before EOI, or over the size cap.
    pub dropped_frames: u64,
}

/// The push parser. `buf` holds the frame in progress, starting at its SOI.
#[derive(Debug)]
pub struct MjpegSplitter {
    buf: Vec<u8>,
    pos: usize,
    state: State,
    max_frame: usize,
    stats: SplitterStats,
}

impl Default for MjpegSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl MjpegSplitter {
    /// A splitter that drops frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            state: State::Seek,
            max_frame,
            stats: SplitterStats::default(),
        }
    }

    /// Feed the next chunk; returns the frames it completed, in stream order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        while let Some(step) = self.step() {
            if let Some(frame) = step {
                frames.push(frame);
            }
        }
        if self.state != State::Seek && self.buf.len() > self.max_frame {
            log::warn!(
                "MJPEG frame exceeds {} bytes without an end marker: dropped",
                self.max_frame
            );
            self.abandon_frame(self.buf.len());
        }
        frames
    }

    /// Forget any partial frame (the producer restarted, its tail is never coming).
    pub fn reset(&mut self) {
        if self.state != State::Seek {
            self.stats.dropped_frames += 1;
        }
        self.buf.clear();
        self.pos = 0;
        self.state = State::Seek;
    }

    /// Bytes held for a frame in progress.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn stats(&self) -> SplitterStats {
        self.stats
    }

    /// One parsing step. `None`: needs more input. `Some(None)`: progressed. `Some(Some(f))`: a frame.
    fn step(&mut self) -> Option<Option<Vec<u8>>> {
        match self.state {
            State::Seek => self.seek_soi().then_some(None),
            State::Segments => self.segment(),
            State::Entropy => self.entropy(),
        }
    }

    /// Drops everything before the first `FF D8`; keeps a trailing `FF` that may be half of one.
    fn seek_soi(&mut self) -> bool {
        let found = self.buf.windows(2).position(|w| w == [0xFF, SOI]);
        let drop = match found {
            Some(at) => at,
            None => match self.buf.last() {
                Some(0xFF) => self.buf.len() - 1,
                _ => self.buf.len(),
            },
        };
        if drop > 0 {
            self.stats.garbage_bytes += drop as u64;
            self.buf.drain(..drop);
        }
        if found.is_some() {
            self.pos = 2;
            self.state = State::Segments;
        }
        found.is_some()
    }

    /// At a marker between segments.
    fn segment(&mut self) -> Option<Option<Vec<u8>>> {
        // Markers may be preceded by any number of FF fill bytes.
        while self.buf.get(self.pos) == Some(&0xFF) && self.buf.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        let (&ff, &marker) = (self.buf.get(self.pos)?, self.buf.get(self.pos + 1)?);
        if ff != 0xFF {
            return Some(self.resync(self.pos));
        }
        match marker {
            SOI => Some(self.resync(self.pos)),
            // A frame without a scan cannot be decoded: drop it.
            EOI => Some(self.resync(self.pos + 2)),
            TEM | 0xD0..=0xD7 => {
                self.pos += 2;
                Some(None)
            }
            0x00 => Some(self.resync(self.pos)),
            _ => {
                let hi = *self.buf.get(self.pos + 2)?;
                let lo = *self.buf.get(self.pos + 3)?;
                let len = usize::from(u16::from_be_bytes([hi, lo]));
                if len < 2 {
                    return Some(self.resync(self.pos + 2));
                }
                // The skipped bytes may not have arrived yet: later steps wait for them.
                self.pos += 2 + len;
                if marker == SOS {
                    self.state = State::Entropy;
                }
                Some(None)
            }
        }
    }

    /// Scanning entropy-coded data for the next real marker.
    fn entropy(&mut self) -> Option<Option<Vec<u8>>> {
        // The SOS header may not have fully arrived yet.
        let start = self.pos;
        let rel = self.buf.get(start..)?.iter().position(|&b| b == 0xFF);
        let Some(rel) = rel else {
            self.pos = self.buf.len();
            return None;
        };
        let at = start + rel;
        self.pos = at;
        let next = *self.buf.get(at + 1)?;
        match next {
            // Stuffed FF, restart markers and fill bytes are part of the scan.
            0x00 | 0xD0..=0xD7 | 0xFF => {
                self.pos = at + if next == 0xFF { 1 } else { 2 };
                Some(None)
            }
            EOI => {
                let end = at + 2;
                let frame: Vec<u8> = self.buf.drain(..end).collect();
                self.pos = 0;
                self.state = State::Seek;
                self.stats.frames += 1;
                Some(Some(frame))
            }
            SOI => Some(self.resync(at)),
            // DHT/DQT/SOS/DRI... between progressive scans: back to segment parsing.
            _ => {
                self.state = State::Segments;
                Some(None)
            }
        }
    }

    /// The current frame is broken at `from`: drop it and look for the next SOI from there.
    fn resync(&mut self, from: usize) -> Option<Vec<u8>> {
        self.abandon_frame(from);
        None
    }

    fn abandon_frame(&mut self, upto: usize) {
        self.stats.dropped_frames += 1;
        let upto = upto.min(self.buf.len());
        self.stats.garbage_bytes += upto as u64;
        self.buf.drain(..upto);
        self.pos = 0;
        self.state = State::Seek;
    }
}

/// True when `bytes` starts with SOI and ends with EOI (a cheap sanity check for tests and logs).
pub fn looks_like_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..2] == [0xFF, SOI] && bytes[bytes.len() - 2..] == [0xFF, EOI]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid JPEG: SOI, APP0 with `app_payload`, DQT, SOS, `scan`, EOI.
    fn jpeg(app_payload: &[u8], scan: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, SOI];
        let seg = |v: &mut Vec<u8>, marker: u8, payload: &[u8]| {
            v.extend_from_slice(&[0xFF, marker]);
            let len = u16::try_from(payload.len() + 2).unwrap_or(u16::MAX);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(payload);
        };
        seg(&mut v, 0xE0, app_payload);
        seg(&mut v, 0xDB, &[0u8; 65]);
        seg(&mut v, SOS, &[1, 1, 0, 0, 63, 0]);
        v.extend_from_slice(scan);
        v.extend_from_slice(&[0xFF, EOI]);
        v
    }

    fn plain() -> Vec<u8> {
        jpeg(b"JFIF\0", &[0x12, 0x34, 0x56])
    }

    fn split_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, MjpegSplitter) {
        let mut s = MjpegSplitter::default();
        let frames = chunks.iter().flat_map(|c| s.push(c)).collect();
        (frames, s)
    }

    #[test]
    fn two_back_to_back_frames_in_one_chunk() {
        let (a, b) = (plain(), jpeg(b"Exif\0", &[9, 8, 7]));
        let stream = [a.clone(), b.clone()].concat();
        let (frames, s) = split_all(&[&stream]);
        assert_eq!(frames, vec![a, b]);
        assert_eq!(s.pending_bytes(), 0);
        assert_eq!(s.stats().frames, 2);
    }

    #[test]
    fn every_chunk_boundary_gives_the_same_frames() {
        let a = jpeg(b"JFIF\0", &[0x11, 0xFF, 0x00, 0x22, 0xFF, 0xD3, 0x33]);
        let b = plain();
        let stream = [a.clone(), b.clone(), a.clone()].concat();
        for cut1 in 0..stream.len() {
            for cut2 in [cut1, cut1 + 1, cut1 + 7, stream.len()] {
                let cut2 = cut2.clamp(cut1, stream.len());
                let (frames, _) =
                    split_all(&[&stream[..cut1], &stream[cut1..cut2], &stream[cut2..]]);
                assert_eq!(
                    frames,
                    vec![a.clone(), b.clone(), a.clone()],
                    "cuts {cut1},{cut2}"
                );
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_works() {
        let a = plain();
        let mut s = MjpegSplitter::default();
        let mut frames = Vec::new();
        for b in [a.clone(), a.clone()].concat() {
            frames.extend(s.push(&[b]));
        }
        assert_eq!(frames, vec![a.clone(), a]);
    }

    #[test]
    fn stuffed_ff00_and_rst_markers_do_not_end_the_frame() {
        let a = jpeg(
            b"JFIF\0",
            &[
                0xFF, 0x00, 0xD9, 0xFF, 0xD0, 0xFF, 0xD7, 0xFF, 0xFF, 0x00, 0x01,
            ],
        );
        let (frames, _) = split_all(&[&a]);
        assert_eq!(frames, vec![a]);
    }

    #[test]
    fn app_segment_containing_eoi_bytes_is_skipped_by_length() {
        let a = jpeg(&[b'E', 0xFF, 0xD9, 0xFF, 0xD8, 0xFF, 0xD9, 0], &[1, 2, 3]);
        let (frames, _) = split_all(&[&a[..9], &a[9..]]);
        assert_eq!(frames, vec![a]);
    }

    #[test]
    fn garbage_between_and_before_frames_is_skipped() {
        let a = plain();
        let stream = [
            b"noise\xFF\xFF".to_vec(),
            a.clone(),
            vec![0x00, 0xFF, 0xD9, 0x42, 0xFF],
            a.clone(),
            b"tail".to_vec(),
        ]
        .concat();
        let (frames, s) = split_all(&[&stream]);
        assert_eq!(frames, vec![a.clone(), a]);
        assert!(s.stats().garbage_bytes >= 11, "{:?}", s.stats());
    }

    #[test]
    fn false_soi_followed_by_junk_resyncs_on_the_real_one() {
        let a = plain();
        let stream = [vec![0xFF, 0xD8, 0x12, 0x34], a.clone()].concat();
        let (frames, s) = split_all(&[&stream]);
        assert_eq!(frames, vec![a]);
        assert_eq!(s.stats().dropped_frames, 1);
    }

    #[test]
    fn a_new_soi_inside_a_frame_abandons_the_truncated_one() {
        let a = plain();
        let truncated = &a[..a.len() - 4];
        let stream = [truncated, &a[..]].concat();
        let (frames, s) = split_all(&[&stream]);
        assert_eq!(frames, vec![a]);
        assert_eq!(s.stats().dropped_frames, 1);
    }

    #[test]
    fn truncated_tail_yields_nothing_until_reset() {
        let a = plain();
        let mut s = MjpegSplitter::default();
        assert_eq!(s.push(&a[..a.len() - 1]), Vec::<Vec<u8>>::new());
        assert!(s.pending_bytes() > 0);
        s.reset();
        assert_eq!(s.pending_bytes(), 0);
        // The old tail byte after a reset is garbage, the next frame comes out whole.
        let next = plain();
        let frames = s.push(&[&a[a.len() - 1..], &next[..]].concat());
        assert_eq!(frames, vec![next]);
    }

    #[test]
    fn progressive_scans_continue_until_eoi() {
        // SOS, data, DHT between scans, SOS again, data, EOI.
        let mut a = jpeg(b"JFIF\0", &[1, 2]);
        a.truncate(a.len() - 2);
        a.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x04, 0xFF, 0xD9]); // DHT holding FF D9
        a.extend_from_slice(&[0xFF, SOS, 0x00, 0x03, 0x01, 5, 6, 0xFF, EOI]);
        let (frames, _) = split_all(&[&a]);
        assert_eq!(frames, vec![a]);
    }

    #[test]
    fn oversized_frames_are_dropped_and_parsing_recovers() {
        let big = jpeg(b"JFIF\0", &vec![0x55; 4000]);
        let small = plain();
        let mut s = MjpegSplitter::new(1000);
        let mut frames = Vec::new();
        for chunk in [big.clone(), small.clone()].concat().chunks(300) {
            frames.extend(s.push(chunk));
        }
        assert_eq!(frames, vec![small]);
        assert!(s.stats().dropped_frames >= 1);
    }

    #[test]
    fn frame_without_scan_is_dropped() {
        let stream = [vec![0xFF, 0xD8, 0xFF, 0xD9], plain()].concat();
        let (frames, _) = split_all(&[&stream]);
        assert_eq!(frames, vec![plain()]);
    }

    #[test]
    fn looks_like_jpeg_checks_both_ends() {
        assert!(looks_like_jpeg(&plain()));
        assert!(!looks_like_jpeg(&plain()[1..]));
        assert!(!looks_like_jpeg(&[0xFF, 0xD8]));
    }
}
