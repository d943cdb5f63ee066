#!/usr/bin/env bash
# Boots a qemu VM with Linux's vivid V4L2 test driver and runs glimpse against it (camera:0).
#
#   tests/vm/run.sh [GLIMPSE_BINARY]     (default: target/debug/glimpse)
#
# The build machines have no camera and no V4L2 in their kernel; Debian's kernel package ships
# vivid, a real V4L2 capture driver. This script fetches that kernel, busybox and v4l2-ctl with
# `apt-get download` (cached under target/vm-cache), builds an initramfs holding them, the media
# modules, glimpse, the shared libraries it links and the test model, boots it under software
# emulation and copies the serial console to stdout. tests/vm/init.sh (the VM's /init) prints the
# GLIMPSE-VM-* lines that tests/camera_vm.rs asserts on.
#
# Exit status: 0 when the VM reached its end and reported every step ok, 1 when a step failed,
# 2 when the VM could not be prepared (packages, files), 3 when it timed out. Messages that say
# what went wrong start with "vm:" on stderr.
#
# Environment (all optional):
#   GLIMPSE_VM_CACHE    download/extract cache         (default: <repo>/target/vm-cache)
#   GLIMPSE_VM_TIMEOUT  seconds before qemu is killed  (default: 420; a run takes 2-4 minutes)
#   GLIMPSE_VM_KERNEL   kernel package to use          (default: what linux-image-amd64 depends on)
#   GLIMPSE_VM_FRAMES   frames of the YUYV run         (default: 5)
#   GLIMPSE_VM_SMP      virtual CPUs                   (default: 2)
#   GLIMPSE_VM_CPU      qemu CPU model                 (default: Nehalem, see below)
#   GLIMPSE_VM_INIT     another /init, for experiments (default: tests/vm/init.sh)
#   GLIMPSE_VM_EXTRA    space-separated host files copied to /extra/ in the VM, for experiments
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tests/vm"
shared="$repo/../shared"
glimpse_bin=${1:-$repo/target/debug/glimpse}
cache=${GLIMPSE_VM_CACHE:-$repo/target/vm-cache}
timeout_s=${GLIMPSE_VM_TIMEOUT:-420}
smp=${GLIMPSE_VM_SMP:-2}
# A CPU model without AVX/FMA: qemu 7.2's TCG emulates those so slowly that one MobileNetV2
# inference took 75 s with `-cpu max` (tract picks its FMA kernels) against 5 s here (SSE kernels).
cpu=${GLIMPSE_VM_CPU:-Nehalem}
model_onnx="$shared/models/mobilenet_v2_1.0_224.onnx"
model_manifest="$repo/models/mobilenet_v2_1.0_224.toml"

# Dependencies first: Debian's package has no modules.dep, so insmod (not modprobe) in this order.
modules=(mc videodev v4l2-dv-timings v4l2-tpg videobuf2-common videobuf2-memops videobuf2-v4l2
    videobuf2-vmalloc videobuf2-dma-contig rc-core cec vivid)

die() {
    echo "vm: $1" >&2
    exit "${2:-2}"
}
say() { echo "vm: $*" >&2; }

[ -x "$glimpse_bin" ] || die "glimpse binary $glimpse_bin is missing or not executable (cargo build first)"
[ -f "$model_onnx" ] || die "test model $model_onnx is missing (../shared beside the repository)"
[ -f "$model_manifest" ] || die "model manifest $model_manifest is missing"
[ -f "$repo/models/imagenet_labels.txt" ] || die "labels $repo/models/imagenet_labels.txt are missing"

# --- host tools -------------------------------------------------------------------------------
need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v xz >/dev/null || need_apt+=(xz-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need_apt[*]} and not root: apt-get install ${need_apt[*]}"
    say "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2 ||
        { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2; } ||
        die "apt-get install ${need_apt[*]} failed"
fi

# --- packages ---------------------------------------------------------------------------------
mkdir -p "$cache/debs" "$cache/extract"
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

# The kernel the distribution currently points at, e.g. linux-image-6.1.0-57-amd64.
kernel_pkg=${GLIMPSE_VM_KERNEL:-}
if [ -z "$kernel_pkg" ]; then
    pick_kernel() {
        apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
    }
    kernel_pkg=$(pick_kernel)
    if [ -z "$kernel_pkg" ]; then
        apt_update_once
        kernel_pkg=$(pick_kernel)
    fi
    [ -n "$kernel_pkg" ] || die "apt knows no linux-image-amd64 (no Debian apt sources?)"
fi

# busybox for the VM's userland, v4l-utils for v4l2-ctl, and the libraries v4l2-ctl links that a
# minimal host may lack (libv4l*, libjpeg).
packages=("$kernel_pkg" busybox-static v4l-utils libv4l-0 libv4lconvert0 libjpeg62-turbo)

fetch() {
    local pkg=$1
    if ! ls "$cache/debs/${pkg}_"*.deb >/dev/null 2>&1; then
        say "apt-get download $pkg"
        if ! (cd "$cache/debs" && apt-get download "$pkg" >&2 2>/dev/null); then
            apt_update_once
            (cd "$cache/debs" && apt-get download "$pkg" >&2) || die "apt-get download $pkg failed"
        fi
    fi
    local deb
    deb=$(ls "$cache/debs/${pkg}_"*.deb | tail -n 1)
    if [ ! -f "$cache/extract/$pkg.done" ]; then
        rm -rf "${cache:?}/extract/$pkg"
        dpkg-deb -x "$deb" "$cache/extract/$pkg" || die "cannot unpack $deb"
        touch "$cache/extract/$pkg.done"
    fi
}
for p in "${packages[@]}"; do fetch "$p"; done

kdir="$cache/extract/$kernel_pkg"
kernel=$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$kernel" ] || die "$kernel_pkg holds no /boot/vmlinuz-*"

# --- initramfs --------------------------------------------------------------------------------
# Per-run scratch (initramfs tree and image), so two runs at once do not trample each other.
work=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,usr/bin,modules,etc,proc,sys,dev,tmp,glimpse/models,shared/models}

cp "$cache/extract/busybox-static/bin/busybox" "$root/bin/busybox"
cp "${GLIMPSE_VM_INIT:-$here/init.sh}" "$root/init"
chmod +x "$root/init"

for m in "${modules[@]}"; do
    ko=$(find "$kdir/lib/modules" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n 1)
    [ -n "$ko" ] || die "module $m is not in $kernel_pkg"
    # busybox insmod cannot read compressed modules: decompress here.
    case "$ko" in
    *.xz) xz -dc "$ko" >"$root/modules/$m.ko" || die "cannot decompress $ko (xz)" ;;
    *.zst) zstd -dcq "$ko" >"$root/modules/$m.ko" || die "cannot decompress $ko (zstd)" ;;
    *) cp "$ko" "$root/modules/$m.ko" ;;
    esac
done

# Copies the libraries a binary needs (ldd, with the extracted packages' libraries first) to the
# same paths in the initramfs.
copy_libs() {
    local bin=$1 libpath out
    libpath=$(find "$cache/extract" -type d -path '*/lib/x86_64-linux-gnu' | tr '\n' ':')
    out=$(LD_LIBRARY_PATH="$libpath" ldd "$bin") || die "ldd $bin failed"
    if grep -q 'not found' <<<"$out"; then
        die "libraries of $bin not found: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"
    fi
    for lib in $(awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}' <<<"$out"); do
        # Libraries from the extracted packages go to the standard library directory.
        local dest=${lib#"$cache/extract/"*/}
        [ "$dest" = "$lib" ] || dest=/$dest
        mkdir -p "$root$(dirname "$dest")"
        cp -L "$lib" "$root$dest"
    done
}

cp "$cache/extract/v4l-utils/usr/bin/v4l2-ctl" "$root/usr/bin/v4l2-ctl"
copy_libs "$cache/extract/v4l-utils/usr/bin/v4l2-ctl"
# Debug info is most of a debug build's size and useless in the VM: a smaller initramfs boots
# faster and leaves more of the VM's memory free.
if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$glimpse_bin" "$root/glimpse/glimpse"
else
    cp "$glimpse_bin" "$root/glimpse/glimpse"
fi
copy_libs "$glimpse_bin"

# The model where the manifest's relative path expects it (../../shared from models/), and the
# manifest rewritten to absolute in-VM paths so it does not depend on the working directory.
cp "$model_onnx" "$root/shared/models/"
cp "$repo/models/imagenet_labels.txt" "$root/glimpse/models/"
sed -e 's#"\(\.\./\)*shared/#"/shared/#g' -e 's#"imagenet_labels.txt"#"/glimpse/models/imagenet_labels.txt"#' \
    "$model_manifest" >"$root/glimpse/models/$(basename "$model_manifest")"

for f in ${GLIMPSE_VM_EXTRA:-}; do
    mkdir -p "$root/extra"
    cp "$f" "$root/extra/" || die "cannot copy GLIMPSE_VM_EXTRA file $f"
done

cat >"$root/etc/glimpse-vm.env" <<EOF
MODULE_ORDER="${modules[*]}"
# One device instance with only a video capture node and one webcam input: camera:0 is vivid.
VIVID_PARAMS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
DISCONNECT_CONTROL=disconnect
MODEL_MANIFEST=$(basename "$model_manifest")
FRAMES=${GLIMPSE_VM_FRAMES:-5}
FALLBACK_FRAMES=2
RECONNECT_FRAMES=2
STREAMING_FRAMES=1
CAPTURE_TIMEOUT=180
ABSENT_SECONDS=3
EOF

initrd="$work/initramfs.cpio"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet >"$initrd") || die "cpio failed"
say "initramfs $(du -h "$initrd" | cut -f1), kernel $(basename "$kernel"), booting (timeout ${timeout_s} s)"

# --- boot -------------------------------------------------------------------------------------
# TCG, not KVM: KVM is present on the build machines but hangs there.
log="$cache/console.log"
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
    -accel tcg -cpu "$cpu" -smp "$smp" -m 1024 -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4 rdinit=/init" \
    </dev/null 2>&1 | tr -d '\r' | tee "$log"
status=${PIPESTATUS[0]}
set -e

if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    die "the VM did not finish within ${timeout_s} s (console in $log)" 3
fi
grep -q '^GLIMPSE-VM-DONE' "$log" || die "the VM stopped (qemu status $status) before its end (console in $log)" 1
grep -q '^GLIMPSE-VM-DONE ok' "$log" || die "a step failed in the VM: $(grep -m1 '^GLIMPSE-VM-STEP .* fail' "$log")" 1
say "all steps ok (console in $log)"
