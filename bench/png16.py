#!/usr/bin/env python3
"""Writes a 16-bit RGBA PNG of WIDTHxHEIGHT (default 5000x5000: exactly the default
learning.max_sample_pixels) to PATH, for the decoded-bytes measurement in docs/performance.md.

The pixels are a short gradient repeated along every row, so the file is small (~0.2 MB) while
decoding it takes width x height x 8 bytes (200 MB at 5000x5000): what a hostile or clumsy
sample costs a device that only checks pixel counts. Standard library only.

    python3 bench/png16.py /tmp/png16.png [WIDTH HEIGHT]
"""
import struct
import sys
import zlib


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def main() -> None:
    path = sys.argv[1]
    width = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    height = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    # bit depth 16, colour type 6 (RGBA), deflate, no filter method quirks, no interlace
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    row = bytearray([0])  # filter type 0 (none)
    for x in range(width):
        # A period of 64 pixels (512 bytes), well inside deflate's 32 KiB window.
        v = (x % 64) * 1024
        row += struct.pack(">HHHH", v, 65535 - v, v // 2, 65535)
    row = bytes(row)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    idat = b"".join(parts)
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(chunk(b"IHDR", ihdr))
        out.write(chunk(b"IDAT", idat))
        out.write(chunk(b"IEND", b""))


if __name__ == "__main__":
    main()
