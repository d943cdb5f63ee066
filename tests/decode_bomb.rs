//! A decompression bomb must be refused from its header, before any large allocation. This test
//! counts allocations with its own global allocator, so it lives alone in this binary (other tests
//! running in parallel threads would pollute the count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use glimpse::vision::preprocess::{decode_image, synthetic_jpeg, DecodeLimits, PreprocessError};

/// Records the largest single allocation request since the last reset.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Signature + IHDR (30000x30000, RGB8) + one IDAT holding a few zlib bytes + IEND.
fn png_bomb() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [
        &30_000u32.to_be_bytes()[..],
        &30_000u32.to_be_bytes(),
        &[8, 2, 0, 0, 0],
    ]
    .concat();
    for (kind, body) in [
        (*b"IHDR", ihdr),
        (*b"IDAT", vec![0x78, 0x9C, 0x03, 0x00]),
        (*b"IEND", vec![]),
    ] {
        png.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let typed = [&kind[..], &body].concat();
        png.extend_from_slice(&typed);
        png.extend_from_slice(&crc32(&typed).to_be_bytes());
    }
    png
}

#[test]
fn png_bomb_is_refused_without_a_large_allocation() {
    let bomb = png_bomb();
    let limits = DecodeLimits::default();

    LARGEST.store(0, Ordering::Relaxed);
    let result = decode_image(&bomb, &limits);
    let largest = LARGEST.load(Ordering::Relaxed);
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::TooManyPixels {
                width: 30_000,
                height: 30_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        largest < 64 * 1024,
        "refusing the bomb allocated {largest} bytes at once"
    );

    // The counter works: a real 640x480 decode allocates at least its 921,600-byte output.
    let jpeg = synthetic_jpeg(640, 480, 90).unwrap();
    LARGEST.store(0, Ordering::Relaxed);
    decode_image(&jpeg, &limits).unwrap();
    assert!(LARGEST.load(Ordering::Relaxed) >= 640 * 480 * 3);
}
