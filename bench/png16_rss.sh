#!/bin/sh
# Peak RSS of `glimpse run` before and after it is taught one 16-bit RGBA PNG at the pixel cap
# (bench/png16.py), for docs/performance.md. Needs mosquitto, mosquitto_pub/_sub, python3.
#
#   bench/png16_rss.sh [GLIMPSE_BINARY] [PNG]
#
# Prints VmHWM (peak resident set, from /proc) once the daemon is online and predicting, then
# after the sample's ack, and the ack itself.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$repo/target/debug/glimpse}
work=$(mktemp -d)
png=${2:-$work/png16.png}
[ -f "$png" ] || python3 "$repo/bench/png16.py" "$png"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mosquitto -p "$port" >"$work/broker.log" 2>&1 &
broker=$!
mkdir -p "$work/idle"
cp "$(ls "$repo"/../shared/datasets/rps_full/rock/* | head -n 1)" "$work/idle/000.jpg"
cat >"$work/glimpse.toml" <<TOML
state_dir = "$work/state"
[model]
manifest = "$repo/models/mobilenet_v2_1.0_224.toml"
threads = 1
[source]
uri = "dir:$work/idle"
replay_fps = 2
replay_loop = true
[mqtt]
url = "mqtt://127.0.0.1:$port"
device_id = "rss"
[learning]
retrain_after = 0
TOML
"$bin" run --config "$work/glimpse.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon $broker 2>/dev/null; rm -rf "$work"' EXIT
mosquitto_sub -p "$port" -t glimpse/rss/prediction -C 3 -W 120 >/dev/null
echo "online: $(grep VmHWM /proc/$daemon/status)"
mosquitto_sub -p "$port" -t glimpse/rss/ack -C 1 -W 120 >"$work/ack" &
sub=$!
sleep 1
mosquitto_pub -p "$port" -q 1 -t glimpse/rss/sample/png16 -f "$png"
wait $sub
sleep 1
echo "after the sample: $(grep VmHWM /proc/$daemon/status)"
echo "ack: $(cut -c1-300 "$work/ack")"
