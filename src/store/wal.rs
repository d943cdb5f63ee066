//! Reads a SQLite write-ahead log (the `-wal` file beside the database) without SQLite, to tell
//! a torn tail from damage. SQLite replays a WAL up to the first frame whose checksum fails and
//! silently ignores the rest: right for a transaction torn by a crash (it was never committed,
//! so never acknowledged), wrong for a flipped bit in the middle, which would silently drop
//! every transaction committed after it. Format: <https://www.sqlite.org/fileformat2.html#walformat>.

/// WAL header and frame header sizes.
const HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// What a WAL holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalState {
    /// Empty, or every frame of the current generation checks out (a torn, uncommitted tail is
    /// fine): SQLite will replay all that was committed.
    Sound { frames: usize },
    /// Committed frames follow a frame that fails its checksum: SQLite would drop them.
    Damaged {
        /// Index (0-based) of the first bad frame.
        first_bad: usize,
        /// Commit frames of this generation after it: transactions that would be lost.
        commits_lost: usize,
    },
    /// The header itself is unreadable while frames follow it.
    BadHeader,
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `(s0, s1)`.
fn checksum(data: &[u8], big_endian: bool, (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let read = |b: &[u8]| {
            let w = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        s0 = s0.wrapping_add(read(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(read(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

/// Checks a WAL file's bytes.
pub fn check(wal: &[u8]) -> WalState {
    if wal.len() < HEADER {
        return WalState::Sound { frames: 0 };
    }
    let magic = word(wal, 0);
    let page_size = word(wal, 8) as usize;
    let valid_page = page_size.is_power_of_two() && (512..=65536).contains(&page_size);
    if !(magic == 0x377f_0682 || magic == 0x377f_0683) || !valid_page {
        return if wal.len() > HEADER {
            WalState::BadHeader
        } else {
            WalState::Sound { frames: 0 }
        };
    }
    let big_endian = magic & 1 == 1;
    let mut sum = checksum(&wal[..24], big_endian, (0, 0));
    if sum != (word(wal, 24), word(wal, 28)) {
        return if wal.len() > HEADER {
            WalState::BadHeader
        } else {
            WalState::Sound { frames: 0 }
        };
    }
    let salts = (word(wal, 16), word(wal, 20));
    let frame_len = FRAME_HEADER + page_size;
    let frames: Vec<&[u8]> = wal[HEADER..].chunks_exact(frame_len).collect();
    let ours = |f: &[u8]| (word(f, 8), word(f, 12)) == salts;
    for (i, frame) in frames.iter().enumerate() {
        if !ours(frame) {
            // A frame of an older generation: the log ends here, as SQLite sees it.
            return WalState::Sound { frames: i };
        }
        sum = checksum(&frame[..8], big_endian, sum);
        sum = checksum(&frame[FRAME_HEADER..], big_endian, sum);
        if sum != (word(frame, 16), word(frame, 20)) {
            let commits_lost = frames[i + 1..]
                .iter()
                .filter(|f| ours(f) && word(f, 4) != 0)
                .count();
            return if commits_lost == 0 {
                // A torn tail: the transaction never committed.
                WalState::Sound { frames: i }
            } else {
                WalState::Damaged {
                    first_bad: i,
                    commits_lost,
                }
            };
        }
    }
    WalState::Sound {
        frames: frames.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL of `n` frames (page size 512), each its own committed transaction.
    fn wal(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0x377f_0683u32.to_be_bytes());
        out.extend_from_slice(&3_007_000u32.to_be_bytes());
        out.extend_from_slice(&512u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut sum = checksum(&out, true, (0, 0));
        out.extend_from_slice(&sum.0.to_be_bytes());
        out.extend_from_slice(&sum.1.to_be_bytes());
        for i in 0..n {
            let mut header = Vec::new();
            header.extend_from_slice(&(i as u32 + 1).to_be_bytes());
            header.extend_from_slice(&(i as u32 + 1).to_be_bytes()); // commit
            header.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            let page = vec![i as u8; 512];
            sum = checksum(&header[..8], true, sum);
            sum = checksum(&page, true, sum);
            header.extend_from_slice(&sum.0.to_be_bytes());
            header.extend_from_slice(&sum.1.to_be_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(&page);
        }
        out
    }

    #[test]
    fn an_intact_log_is_sound() {
        assert_eq!(check(&[]), WalState::Sound { frames: 0 });
        assert_eq!(check(&wal(4)), WalState::Sound { frames: 4 });
    }

    #[test]
    fn a_flipped_bit_before_committed_frames_is_damage() {
        let mut bytes = wal(4);
        bytes[HEADER + 536 + 100] ^= 0x10; // page data of frame 1
        assert_eq!(
            check(&bytes),
            WalState::Damaged {
                first_bad: 1,
                commits_lost: 2
            }
        );
    }

    #[test]
    fn a_torn_last_frame_is_not_damage() {
        let mut bytes = wal(4);
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        assert_eq!(check(&bytes), WalState::Sound { frames: 3 });
        // Half a frame at the end (the write stopped mid-frame) is ignored the same way.
        let mut short = wal(4);
        short.truncate(short.len() - 100);
        assert_eq!(check(&short), WalState::Sound { frames: 3 });
    }

    #[test]
    fn a_damaged_header_with_frames_is_reported() {
        let mut bytes = wal(2);
        bytes[17] ^= 1;
        assert_eq!(check(&bytes), WalState::BadHeader);
        assert_eq!(check(&bytes[..HEADER]), WalState::Sound { frames: 0 });
    }
}
