#!/usr/bin/env bash
# The board check, without a board: builds the aarch64 release binary (cross/build-aarch64.sh),
# checks that it needs no glibc newer than 2.27 (JetPack 4.6), runs the V4L2 bindings' ABI tests
# (vendor/v4l2-sys-mit) natively under qemu-aarch64, runs `glimpse classify` on the
# ImageNet test photos under qemu-aarch64 and on this machine, and requires the same top-1 class
# per image and embeddings within 1e-4 relative L2 (cross/compare_classify.py); then packages the
# .deb (cross/package-deb.sh) and checks its contents. Exits non-zero, naming the step, on any
# failure or missing tool.
#
# Environment:
#   GLIMPSE_HOST_BIN    the x86-64 glimpse to compare against (default: cargo build --release)
#   GLIMPSE_CHECK_MODEL the model manifest to classify with (default models/mobilenet_v2_1.0_224.toml)
#   GLIMPSE_QEMU_CPU    the CPU qemu emulates (default cortex-a57)
#   CARGO_TARGET_DIR, GLIMPSE_AARCH64_TARGET_DIR: as cross/build-aarch64.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_GLIBC=2.27
TOLERANCE=1e-4
MODEL=${GLIMPSE_CHECK_MODEL:-models/mobilenet_v2_1.0_224.toml}
QEMU_SYSROOT=/usr/aarch64-linux-gnu
# Jetson Nano, TX1 and TX2 have Cortex-A57 cores (ARMv8.0: no fp16, no SVE), the least capable CPU
# of the family: emulate that. qemu's default `max` CPU offers SVE2, which makes tract choose
# kernels no Jetson can run, and is far slower to emulate (measured on a loaded 2-core machine:
# 964 s for the 10 photos with `max`, 20 s for 3 of them with cortex-a57, identical results).
QEMU_CPU=${GLIMPSE_QEMU_CPU:-cortex-a57}
AARCH64_TARGET_DIR=${GLIMPSE_AARCH64_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/aarch64}
export GLIMPSE_AARCH64_TARGET_DIR=$AARCH64_TARGET_DIR

die() { echo "check-aarch64: FAILED: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
step() { echo "check-aarch64: == $*" >&2; }

# Every tool up front, so a missing one fails in a second, not after a 12-minute build.
need qemu-aarch64 "apt-get install -y qemu-user"
need readelf "apt-get install -y binutils"
need python3 "apt-get install -y python3"
need dpkg-deb "apt-get install -y dpkg"
need cargo-deb "cargo install cargo-deb --version 3.6.2 --locked"
[ -e "$QEMU_SYSROOT/lib/ld-linux-aarch64.so.1" ] \
  || die "no aarch64 loader in $QEMU_SYSROOT (qemu-aarch64 -L needs it): apt-get install -y libc6-arm64-cross"
[ -f "$MODEL" ] || die "model manifest $MODEL not found"
shopt -s nullglob
IMAGES=(../shared/testdata/imagenet/*.jpg ../shared/testdata/imagenet/*.bmp)
shopt -u nullglob
[ ${#IMAGES[@]} -gt 0 ] || die "no test photos in ../shared/testdata/imagenet"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step "build (cross/build-aarch64.sh)"
start=$SECONDS
BIN=$(cross/build-aarch64.sh | tail -n 1) || die "the aarch64 build failed"
build_s=$((SECONDS - start))
file_info=$(readelf -h "$BIN" | grep -E 'Machine:' | sed 's/.*Machine: *//')
[ "$file_info" = "AArch64" ] || die "$BIN is not an aarch64 binary ($file_info)"

step "glibc symbol versions"
newest=$(readelf -W --version-info "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
[ -n "$newest" ] || die "no GLIBC_ symbol versions found in $BIN"
if [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -n 1)" != "$MAX_GLIBC" ]; then
  die "$BIN needs GLIBC_$newest, newer than $MAX_GLIBC (JetPack 4.6 would refuse to start it)"
fi

# The checked-in aarch64 V4L2 bindings against the kernel's documented layouts, compiled for and
# run on aarch64 itself (cargo test checks the same file on the host, where both are LP64).
step "V4L2 ABI tests (vendor/v4l2-sys-mit) under qemu-aarch64 -cpu $QEMU_CPU"
TOOLS_BIN=$AARCH64_TARGET_DIR/tools/venv/bin
[ -x "$TOOLS_BIN/cargo-zigbuild" ] || die "no cargo-zigbuild in $TOOLS_BIN (cross/build-aarch64.sh installs it)"
REPO=$PWD
# From a scratch directory, like build-aarch64.sh (zig and relative include paths).
ABI_TEST=$(cd "$WORK" && PATH="$TOOLS_BIN:$PATH" CARGO_TARGET_DIR="$AARCH64_TARGET_DIR" \
  cargo zigbuild --manifest-path "$REPO/Cargo.toml" -p v4l2-sys-mit --tests \
    --target "aarch64-unknown-linux-gnu.$MAX_GLIBC" --message-format json-render-diagnostics \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])') || die "building the V4L2 ABI tests for aarch64 failed"
[ -x "$ABI_TEST" ] || die "no aarch64 test binary for vendor/v4l2-sys-mit (got '$ABI_TEST')"
qemu-aarch64 -cpu "$QEMU_CPU" -L "$QEMU_SYSROOT" "$ABI_TEST" > "$WORK/abi.txt" 2>&1 \
  || { cat "$WORK/abi.txt" >&2; die "the V4L2 ABI tests fail on aarch64"; }
grep -qx 'test abi::v4l2_buffer_layout ... ok' "$WORK/abi.txt" \
  || { cat "$WORK/abi.txt" >&2; die "the V4L2 ABI tests did not run on aarch64"; }
abi_result=$(grep '^test result:' "$WORK/abi.txt")

HOST_BIN=${GLIMPSE_HOST_BIN:-}
if [ -z "$HOST_BIN" ]; then
  step "host build (cargo build --release)"
  cargo build --release >&2 || die "the host build failed"
  HOST_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/glimpse
fi
[ -x "$HOST_BIN" ] || die "host binary $HOST_BIN not found"

CLASSIFY=(classify --json --with-embedding --threads 1 -k 5 --model "$MODEL" "${IMAGES[@]}")
step "classify ${#IMAGES[@]} photos on the host"
"$HOST_BIN" "${CLASSIFY[@]}" > "$WORK/host.jsonl" || die "host classify failed"
step "classify ${#IMAGES[@]} photos under qemu-aarch64 -cpu $QEMU_CPU"
start=$SECONDS
qemu-aarch64 -cpu "$QEMU_CPU" -L "$QEMU_SYSROOT" "$BIN" "${CLASSIFY[@]}" > "$WORK/aarch64.jsonl" \
  || die "classify under qemu-aarch64 failed"
qemu_s=$((SECONDS - start))

step "compare (top-1 equal, embeddings within $TOLERANCE relative L2)"
python3 cross/compare_classify.py --tolerance "$TOLERANCE" "$WORK/host.jsonl" "$WORK/aarch64.jsonl" \
  || die "the aarch64 build does not agree with the host build"

step "package (cross/package-deb.sh)"
DEB=$(cross/package-deb.sh | tail -n 1) || die "packaging failed"
dpkg-deb --contents "$DEB" | awk '{print $NF}' | sed 's#^\./#/#' > "$WORK/contents"
for path in /usr/bin/glimpse /lib/systemd/system/glimpse.service /usr/lib/sysusers.d/glimpse.conf \
  /usr/lib/tmpfiles.d/glimpse.conf /etc/glimpse/glimpse.toml \
  /usr/share/glimpse/models/mobilenetv2-12.toml /usr/share/glimpse/models/imagenet_labels.txt \
  /usr/share/doc/glimpse/deploy.md /usr/share/doc/glimpse/glimpse-argus.conf \
  /usr/share/doc/glimpse/glimpse-gpu.conf; do
  grep -qx "$path" "$WORK/contents" || die "$DEB lacks $path"
done
[ "$(dpkg-deb -f "$DEB" Architecture)" = "arm64" ] || die "$DEB is not Architecture: arm64"
# Listings go to files first: `producer | grep -q` under pipefail fails at random when grep exits
# before the producer has written everything (SIGPIPE, status 141).
dpkg-deb --ctrl-tarfile "$DEB" > "$WORK/control.tar"
tar -xOf "$WORK/control.tar" ./conffiles > "$WORK/conffiles"
tar -tf "$WORK/control.tar" > "$WORK/control-files"
grep -qx /etc/glimpse/glimpse.toml "$WORK/conffiles" \
  || die "$DEB does not mark /etc/glimpse/glimpse.toml as a conffile"
for script in postinst prerm postrm; do
  grep -qx "./$script" "$WORK/control-files" || die "$DEB lacks its $script"
done
# The packaged binary itself starts (same bytes as $BIN, but this is what a board gets).
mkdir "$WORK/deb" && dpkg-deb -x "$DEB" "$WORK/deb"
qemu-aarch64 -cpu "$QEMU_CPU" -L "$QEMU_SYSROOT" "$WORK/deb/usr/bin/glimpse" --version >&2 \
  || die "the packaged binary does not start under qemu-aarch64"

echo "check-aarch64: OK: $BIN"
echo "check-aarch64:   build ${build_s}s, newest glibc symbol GLIBC_$newest (<= $MAX_GLIBC)"
echo "check-aarch64:   V4L2 ABI tests on aarch64: $abi_result"
echo "check-aarch64:   classify of ${#IMAGES[@]} photos under qemu-aarch64 -cpu $QEMU_CPU ${qemu_s}s (1 thread)"
echo "check-aarch64:   package $DEB ($(stat -c %s "$DEB") bytes)"
