//! A small walker over JPEG marker segments: reads the frame size from the SOF header without
//! decoding anything (so oversized images are refused before any pixel buffer exists), notices
//! whether the stream carries Huffman tables, and inserts the standard tables when it does not
//! (many USB cameras send MJPEG frames without a DHT segment, relying on the fixed tables of
//! ITU-T T.81 Annex K that the AVI/OpenDML MJPEG convention implies).

/// What the headers of a JPEG stream say, read up to the first scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JpegHeader {
    pub width: u32,
    pub height: u32,
    /// At least one DHT (define Huffman table) segment precedes the first scan.
    pub has_huffman_tables: bool,
    /// Offset of the first SOS marker: where the entropy-coded data begins.
    pub scan_offset: usize,
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DHT: u8 = 0xC4;
const TEM: u8 = 0x01;

/// Start-of-frame markers: C0..=CF except DHT (C4), JPG (C8) and DAC (CC).
fn is_start_of_frame(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Markers that stand alone, without a length field.
fn is_standalone(marker: u8) -> bool {
    matches!(marker, SOI | TEM | 0xD0..=0xD7)
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

/// Walks the marker segments from SOI to the first SOS. Errors are one-line descriptions of
/// what is wrong and where (the caller wraps them as a corrupt-image error).
pub(crate) fn scan_header(bytes: &[u8]) -> Result<JpegHeader, String> {
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return Err("missing the SOI marker (FF D8) at offset 0".into());
    }
    let mut pos = 2;
    let mut frame: Option<(u32, u32)> = None;
    let mut has_huffman_tables = false;
    loop {
        if bytes.get(pos) != Some(&0xFF) {
            return Err(if pos >= bytes.len() {
                "truncated: ended before the first scan".into()
            } else {
                format!(
                    "expected a marker at offset {pos}, found byte {:#04x}",
                    bytes[pos]
                )
            });
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err("truncated inside a marker".into());
        };
        pos += 1;
        if is_standalone(marker) {
            continue;
        }
        if marker == EOI {
            return Err("end of image (EOI) before any scan".into());
        }
        let length = read_u16(bytes, pos)
            .ok_or_else(|| format!("truncated in the length of marker FF{marker:02X}"))?
            as usize;
        if length < 2 {
            return Err(format!(
                "marker FF{marker:02X} at offset {pos} has length {length} < 2"
            ));
        }
        if marker == SOS {
            let (width, height) =
                frame.ok_or("a scan (SOS) starts before any frame header (SOF)")?;
            return Ok(JpegHeader {
                width,
                height,
                has_huffman_tables,
                scan_offset: pos - 2,
            });
        }
        if marker == DHT {
            has_huffman_tables = true;
        }
        if is_start_of_frame(marker) {
            // SOF payload: precision (1), height (2), width (2), components...
            let height = read_u16(bytes, pos + 3).ok_or("truncated frame header (SOF)")?;
            let width = read_u16(bytes, pos + 5).ok_or("truncated frame header (SOF)")?;
            if width == 0 || height == 0 {
                // Height 0 means "defined later by a DNL marker": legal but never produced by
                // cameras, and it would defeat the size check done before decoding.
                return Err(format!("frame header declares a {width}x{height} image"));
            }
            frame = Some((u32::from(width), u32::from(height)));
        }
        pos += length;
    }
}

/// Whether an EOI marker (FF D9) follows the first scan. Entropy-coded data never contains that
/// byte pair (an FF there is always followed by 00 or a restart code), so its absence means the
/// stream was cut short. This check matters because image's JPEG decoder (zune-jpeg, lenient
/// mode) decodes a truncated file without error, filling the missing part with gray: a frame
/// dropped mid-transfer would otherwise reach the model as a plausible image. Bytes after EOI
/// (padding some cameras add) are allowed.
pub(crate) fn has_end_marker(bytes: &[u8], header: &JpegHeader) -> bool {
    bytes
        .get(header.scan_offset..)
        .is_some_and(|data| data.windows(2).rev().any(|pair| pair == [0xFF, EOI]))
}

/// Returns the stream with one DHT segment holding the four standard tables (Annex K.3)
/// inserted right after SOI. Tables may be defined anywhere before the scan that uses them.
pub(crate) fn with_standard_huffman_tables(bytes: &[u8]) -> Vec<u8> {
    let tables = [
        (0x00, &DC_LUMA_BITS, &DC_VALUES[..]),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES[..]),
        (0x01, &DC_CHROMA_BITS, &DC_VALUES[..]),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES[..]),
    ];
    let payload: usize = tables
        .iter()
        .map(|(_, bits, values)| 1 + bits.len() + values.len())
        .sum();
    let mut out = Vec::with_capacity(bytes.len() + payload + 4);
    out.extend_from_slice(&bytes[..2.min(bytes.len())]);
    out.extend_from_slice(&[0xFF, DHT]);
    // 4 tables of at most 17 + 162 bytes: always fits the u16 length field.
    out.extend_from_slice(&((payload + 2) as u16).to_be_bytes());
    for (class_and_id, bits, values) in tables {
        out.push(class_and_id);
        out.extend_from_slice(bits);
        out.extend_from_slice(values);
    }
    out.extend_from_slice(bytes.get(2..).unwrap_or_default());
    out
}

// ITU-T T.81 Annex K, tables K.3 to K.6: code counts per length 1..=16, then the symbols.
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
#[rustfmt::skip]
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
#[rustfmt::skip]
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];

/// Removes every DHT segment before the first scan: how a camera's table-less MJPEG frame looks.
#[cfg(test)]
pub(crate) fn strip_huffman_tables(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes[..2].to_vec();
    let mut pos = 2;
    while pos + 4 <= bytes.len() && bytes[pos] == 0xFF {
        let marker = bytes[pos + 1];
        let length = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        if marker == SOS {
            break;
        }
        if marker != DHT {
            out.extend_from_slice(&bytes[pos..pos + 2 + length]);
        }
        pos += 2 + length;
    }
    out.extend_from_slice(&bytes[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_table_symbol_counts_match_their_code_counts() {
        let count = |bits: &[u8; 16]| bits.iter().map(|&b| usize::from(b)).sum::<usize>();
        assert_eq!(count(&DC_LUMA_BITS), DC_VALUES.len());
        assert_eq!(count(&DC_CHROMA_BITS), DC_VALUES.len());
        assert_eq!(count(&AC_LUMA_BITS), AC_LUMA_VALUES.len());
        assert_eq!(count(&AC_CHROMA_BITS), AC_CHROMA_VALUES.len());
    }

    #[test]
    fn scan_reads_frame_size_and_skips_fill_bytes() {
        // SOI, fill byte, APP0 (length 4, two payload bytes), SOF0 for 640x480, SOS.
        let bytes = [
            0xFF, 0xD8, 0xFF, 0xFF, 0xE0, 0x00, 0x04, 1, 2, 0xFF, 0xC0, 0x00, 0x0B, 8, 0x01, 0xE0,
            0x02, 0x80, 1, 1, 0x11, 0, 0xFF, 0xDA, 0x00, 0x02,
        ];
        let header = scan_header(&bytes).unwrap();
        assert!(!has_end_marker(&bytes, &header));
        let mut complete = bytes.to_vec();
        complete.extend_from_slice(&[0x12, 0xFF, 0x00, 0xFF, 0xD9, 0x00, 0x00]);
        assert!(has_end_marker(&complete, &header));
        assert_eq!(
            header,
            JpegHeader {
                width: 640,
                height: 480,
                has_huffman_tables: false,
                scan_offset: 22
            }
        );
    }

    #[test]
    fn scan_rejects_truncation_and_missing_frame() {
        assert!(scan_header(&[0xFF, 0xD8])
            .unwrap_err()
            .contains("truncated"));
        assert!(scan_header(&[0xFF, 0xD8, 0xFF, 0xC0, 0x00])
            .unwrap_err()
            .contains("truncated"));
        let scan_first = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02];
        assert!(scan_header(&scan_first)
            .unwrap_err()
            .contains("before any frame header"));
        assert!(scan_header(b"GIF89a").unwrap_err().contains("SOI"));
    }

    #[test]
    fn inserted_tables_are_found_by_the_scanner() {
        let bytes = [
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0x00, 0x10, 0x00, 0x10, 1, 1, 0x11, 0, 0xFF,
            0xDA, 0x00, 0x02,
        ];
        assert!(!scan_header(&bytes).unwrap().has_huffman_tables);
        let fixed = with_standard_huffman_tables(&bytes);
        assert_eq!(fixed.len(), bytes.len() + 2 + 418);
        let header = scan_header(&fixed).unwrap();
        assert!(header.has_huffman_tables);
        assert_eq!((header.width, header.height), (16, 16));
    }
}
