#!/bin/busybox sh
# /init of the glimpse camera VM (copied into the initramfs by tests/vm/run.sh).
#
# Loads Linux's vivid test driver (a real V4L2 capture device), lists what it offers, then runs
# glimpse itself against camera:0: a YUYV capture, a capture asking for a format vivid does not
# offer (negotiation must fall back), and an unplug (vivid's disconnect control, then a module
# reload) that glimpse must survive. Everything is reported on the serial console as lines the
# host parses (tests/camera_vm.rs):
#   GLIMPSE-VM-STEP <name> ok|fail [detail]   one per step
#   GLIMPSE-VM-OUT <run> <line>                glimpse's stdout (JSON lines) for run <run>
#   GLIMPSE-VM-LOG <run> <line>                glimpse's stderr for run <run>
#   GLIMPSE-VM-V4L2 <what> <line>              v4l2-ctl listings
#   GLIMPSE-VM-DONE ok|fail                    last line before power-off
# The VM powers off at the end whatever happened, so the host never waits for its timeout on a
# failure it could have seen.

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/glimpse
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# Settings written by run.sh: frame counts, timeouts, vivid parameters, module order.
. /etc/glimpse-vm.env

failed=0

step() {
    echo "GLIMPSE-VM-STEP $1 $2${3:+ $3}"
    [ "$2" = ok ] || failed=1
}

finish() {
    if [ "$failed" = 0 ]; then echo "GLIMPSE-VM-DONE ok"; else echo "GLIMPSE-VM-DONE fail"; fi
    sync
    poweroff -f
    # poweroff -f returns only if ACPI power-off failed; a panic makes qemu exit (-no-reboot).
    echo o > /proc/sysrq-trigger
}

# Prints a file's lines with a prefix, so the host can tell the runs apart on one console.
prefixed() {
    [ -f "$2" ] && sed "s/^/$1 /" "$2"
}

# Waits until the file holds at least $3 lines matching $2, for at most $4 seconds, and only as
# long as process $5 lives.
wait_for_lines() {
    file=$1 pattern=$2 count=$3 secs=$4 watched=$5
    while [ "$secs" -gt 0 ]; do
        n=$(grep -c "$pattern" "$file" 2>/dev/null)
        [ "${n:-0}" -ge "$count" ] && return 0
        kill -0 "$watched" 2>/dev/null || return 1
        sleep 1
        secs=$((secs - 1))
    done
    return 1
}

load_vivid() {
    insmod /modules/vivid.ko $VIVID_PARAMS 2>&1
}

wait_for_device() {
    secs=$1
    while [ "$secs" -gt 0 ]; do
        [ -c /dev/video0 ] && return 0
        sleep 1
        secs=$((secs - 1))
    done
    return 1
}

# The firmware leaves terminal escapes on the console's current line: start a fresh one.
echo
step boot ok "kernel $(uname -r), $(nproc) cpu(s), $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

# The package has no modules.dep, so the order is explicit (dependencies first).
for m in $MODULE_ORDER; do
    if [ "$m" = vivid ]; then
        out=$(load_vivid)
    else
        out=$(insmod "/modules/$m.ko" 2>&1)
    fi
    if [ $? -eq 0 ]; then
        step "module:$m" ok
    else
        step "module:$m" fail "$(echo "$out" | tr '\n' ' ')"
        finish
    fi
done
step modules ok "$(echo $MODULE_ORDER | wc -w) loaded"

if wait_for_device 20; then
    step device ok "$(cat /sys/class/video4linux/video0/name 2>/dev/null)"
else
    step device fail "no /dev/video0 after loading vivid: $(ls /dev | tr '\n' ' ')"
    finish
fi

# What the device offers, for the logs and docs/camera-vm.md.
v4l2() {
    what=$1
    shift
    if v4l2-ctl -d /dev/video0 "$@" >/tmp/v4l2.out 2>&1; then
        step "v4l2:$what" ok
    else
        step "v4l2:$what" fail "v4l2-ctl $*"
    fi
    prefixed "GLIMPSE-VM-V4L2 $what" /tmp/v4l2.out
}
v4l2 info --info
v4l2 formats --list-formats
v4l2 sizes-yuyv --list-framesizes YUYV
v4l2 intervals-640x480 --list-frameintervals width=640,height=480,pixelformat=YUYV
v4l2 controls -L
if grep -q "^ *$DISCONNECT_CONTROL " /tmp/v4l2.out; then
    step "v4l2:disconnect-control" ok "$DISCONNECT_CONTROL"
else
    step "v4l2:disconnect-control" fail "no control named $DISCONNECT_CONTROL"
fi

GLIMPSE="/glimpse/glimpse capture --source camera:0 --width 640 --height 480 --fps 15 --json \
    --model /glimpse/models/$MODEL_MANIFEST --threads 1"

# One bounded capture run; its output is printed prefixed after it ends.
capture() {
    run=$1
    shift
    start=$(cut -d' ' -f1 /proc/uptime)
    timeout -s KILL "$CAPTURE_TIMEOUT" $GLIMPSE "$@" >"/tmp/$run.out" 2>"/tmp/$run.err"
    rc=$?
    end=$(cut -d' ' -f1 /proc/uptime)
    prefixed "GLIMPSE-VM-LOG $run" "/tmp/$run.err"
    prefixed "GLIMPSE-VM-OUT $run" "/tmp/$run.out"
    if [ "$rc" = 0 ]; then
        step "capture:$run" ok "rc=0 in $(awk "BEGIN {print $end - $start}") s"
    else
        step "capture:$run" fail "rc=$rc (137 = killed after ${CAPTURE_TIMEOUT} s)"
    fi
}

capture yuyv --format yuyv --frames "$FRAMES"
capture fallback --format mjpeg --frames "$FALLBACK_FRAMES"

# Unplug: glimpse runs until it has seen frames again after the camera came back.
$GLIMPSE --format auto --until-frames-after-reconnect "$RECONNECT_FRAMES" \
    >/tmp/unplug.out 2>/tmp/unplug.err &
pid=$!
unplug_ok=1
if wait_for_lines /tmp/unplug.out '"frame_id"' "$STREAMING_FRAMES" "$CAPTURE_TIMEOUT" "$pid"; then
    step "unplug:streaming" ok
else
    step "unplug:streaming" fail "glimpse printed no $STREAMING_FRAMES frame(s) (or exited) before the unplug"
    unplug_ok=0
fi
if [ "$unplug_ok" = 1 ]; then
    # vivid's disconnect control fails the running stream with ENODEV and unregisters the device
    # until its last file handle is closed, when it re-registers itself. Holding a handle (fd 3)
    # keeps it unplugged while glimpse notices and retries; removing the node makes glimpse's
    # reopen fail with ENOENT, as when a USB camera's node vanishes.
    exec 3</dev/video0
    if out=$(v4l2-ctl -d /dev/video0 -c "$DISCONNECT_CONTROL=1" 2>&1); then
        rm -f /dev/video0
        step "unplug:disconnect" ok "v4l2-ctl -c $DISCONNECT_CONTROL=1, /dev/video0 removed"
    else
        step "unplug:disconnect" fail "$out"
        unplug_ok=0
    fi
fi
if [ "$unplug_ok" = 1 ]; then
    if wait_for_lines /tmp/unplug.out '"camera_lost"' 1 60 "$pid"; then
        step "unplug:lost-reported" ok
    else
        step "unplug:lost-reported" fail "glimpse printed no camera_lost within 60 s (or exited)"
        unplug_ok=0
    fi
fi
if [ "$unplug_ok" = 1 ]; then
    # The camera stays away for a while: glimpse must keep running (and retrying) meanwhile.
    sleep "$ABSENT_SECONDS"
    if kill -0 "$pid" 2>/dev/null; then
        step "unplug:still-running" ok "after ${ABSENT_SECONDS} s without a camera"
    else
        step "unplug:still-running" fail "glimpse exited while the camera was away"
        unplug_ok=0
    fi
fi
exec 3<&-
if [ "$unplug_ok" = 1 ]; then
    # Replug: unload and reload the driver, so the device node comes back fresh. rmmod succeeds
    # only once every handle on the device is closed, i.e. glimpse let go of the lost camera.
    secs=30
    while ! rmmod vivid 2>/dev/null; do
        secs=$((secs - 1))
        if [ "$secs" -le 0 ]; then break; fi
        sleep 1
    done
    if [ "$secs" -gt 0 ]; then
        step "unplug:rmmod" ok
        if out=$(load_vivid) && wait_for_device 20; then
            step "unplug:replug" ok
        else
            step "unplug:replug" fail "$out"
            unplug_ok=0
        fi
    else
        step "unplug:rmmod" fail "vivid still in use after 30 s: glimpse kept the lost camera open"
        unplug_ok=0
    fi
fi
# Wait for glimpse to finish on its own (it stops after its frames after the reconnect).
secs=$CAPTURE_TIMEOUT
[ "$unplug_ok" = 1 ] || secs=1
while kill -0 "$pid" 2>/dev/null && [ "$secs" -gt 0 ]; do
    sleep 1
    secs=$((secs - 1))
done
if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    wait "$pid"
    rc=killed
else
    wait "$pid"
    rc=$?
fi
prefixed "GLIMPSE-VM-LOG unplug" /tmp/unplug.err
prefixed "GLIMPSE-VM-OUT unplug" /tmp/unplug.out
if [ "$rc" = 0 ]; then step "capture:unplug" ok "rc=0"; else step "capture:unplug" fail "rc=$rc"; fi

finish
