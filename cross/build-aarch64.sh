#!/usr/bin/env bash
# Builds the release glimpse binary for aarch64 Jetson boards, without Docker: cargo-zigbuild links
# it with zig against glibc 2.27 (JetPack 4.6 / Ubuntu 18.04), so the one binary starts on JetPack
# 4.6, 5 and 6 alike. Debian's own cross gcc would link against its glibc 2.36 and the binary would
# not start on any JetPack (see docs/deploy.md).
#
# Usage: cross/build-aarch64.sh [extra cargo args, e.g. --no-default-features]
# Prints the binary's path on its last line. Environment:
#   CARGO_TARGET_DIR            the shared target dir; the aarch64 build goes in its aarch64/ subdir
#   GLIMPSE_AARCH64_TARGET_DIR  the aarch64 target dir itself (overrides the above)
#   GLIMPSE_GLIBC               the glibc to link against (default 2.27)
#
# What it needs: python3 with venv (the zig toolchain comes from PyPI, pinned below) and rustup;
# no libclang and no aarch64 sysroot (the V4L2 bindings are checked in: vendor/v4l2-sys-mit).
# Release build: ~12 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

ZIGLANG_VERSION=0.15.2
CARGO_ZIGBUILD_VERSION=0.24.1
TARGET=aarch64-unknown-linux-gnu
GLIBC=${GLIMPSE_GLIBC:-2.27}
AARCH64_TARGET_DIR=${GLIMPSE_AARCH64_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/aarch64}
REPO=$PWD
case "$AARCH64_TARGET_DIR" in /*) ;; *) AARCH64_TARGET_DIR=$REPO/$AARCH64_TARGET_DIR ;; esac
TOOLS=$AARCH64_TARGET_DIR/tools

die() { echo "build-aarch64: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

need python3 "apt-get install -y python3 python3-venv"
need rustup "install Rust with rustup (https://rustup.rs)"
need cargo "install Rust with rustup (https://rustup.rs)"

# Pinned zig + cargo-zigbuild in a private virtualenv: no system-wide pip installs, and a rebuild
# years later gets the same linker.
if ! "$TOOLS/venv/bin/python" -c "import ziglang" >/dev/null 2>&1 \
  || [ "$("$TOOLS/venv/bin/cargo-zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ] \
  || [ "$("$TOOLS/venv/bin/python" -m ziglang version 2>/dev/null)" != "$ZIGLANG_VERSION" ]; then
  echo "build-aarch64: installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $TOOLS/venv" >&2
  mkdir -p "$TOOLS"
  python3 -m venv "$TOOLS/venv" || die "python3 -m venv failed: apt-get install -y python3-venv"
  "$TOOLS/venv/bin/pip" install --quiet "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" \
    || die "pip install ziglang cargo-zigbuild failed (PyPI reachable?)"
fi
export PATH="$TOOLS/venv/bin:$PATH"

if ! rustup target list --installed | grep -x "$TARGET" >/dev/null; then
  rustup target add "$TARGET" || die "rustup target add $TARGET failed"
fi

# zig words include paths relative to the working directory when they lie beneath it, and build
# scripts (the C parts: ring, bundled SQLite) run elsewhere; with the tools under ./target that
# broke header lookups once. Hence: run from a scratch directory, with absolute paths for
# everything.
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

echo "build-aarch64: cargo zigbuild --release --target $TARGET.$GLIBC $* (target dir $AARCH64_TARGET_DIR)" >&2
(cd "$SCRATCH" && CARGO_TARGET_DIR="$AARCH64_TARGET_DIR" cargo zigbuild --manifest-path "$REPO/Cargo.toml" \
  --release --target "$TARGET.$GLIBC" "$@") \
  || die "cargo zigbuild failed (see above)"

BINARY=$AARCH64_TARGET_DIR/$TARGET/release/glimpse
[ -x "$BINARY" ] || die "the build did not produce $BINARY"
echo "$BINARY"
