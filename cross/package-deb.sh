#!/usr/bin/env bash
# Packages the aarch64 binary that cross/build-aarch64.sh made as an arm64 .deb (cargo-deb, layout
# in Cargo.toml's [package.metadata.deb]). Builds nothing itself: run the build script first.
# Prints the .deb's path on its last line. Environment: as cross/build-aarch64.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.6.2
TARGET=aarch64-unknown-linux-gnu
AARCH64_TARGET_DIR=${GLIMPSE_AARCH64_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/aarch64}
BINARY=$AARCH64_TARGET_DIR/$TARGET/release/glimpse

die() { echo "package-deb: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null 2>&1 \
  || die "cargo-deb not found: cargo install cargo-deb --version $CARGO_DEB_VERSION --locked"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found: apt-get install -y dpkg"
[ -x "$BINARY" ] || die "$BINARY not found: run cross/build-aarch64.sh first"
ls models/*.toml >/dev/null 2>&1 || die "no model manifests in models/*.toml to package"

OUT=$AARCH64_TARGET_DIR/debian
mkdir -p "$OUT"
# --no-strip: zig already stripped the release binary, and stripping an aarch64 binary would need
# aarch64 binutils. cargo-deb maps target/release/glimpse to the --target directory.
CARGO_TARGET_DIR="$AARCH64_TARGET_DIR" cargo deb --no-build --no-strip --target "$TARGET" \
  --output "$OUT" >&2 || die "cargo deb failed (see above)"

DEB=$(ls -t "$OUT"/glimpse_*_arm64.deb 2>/dev/null | head -n 1)
[ -n "$DEB" ] || die "cargo deb produced no glimpse_*_arm64.deb in $OUT"
echo "$DEB"
