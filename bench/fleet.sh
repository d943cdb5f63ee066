#!/usr/bin/env bash
# Fleet benchmark (docs/fleet.md "Cost"): N group members (one leader) on one local Mosquitto,
# 60 rps photos taught with `glimpse send --group`; prints the time from the last sample ack to
# the last member's adopt_head ack, and the bytes of each head message on the group topic.
# Usage: bench/fleet.sh [N] [GLIMPSE_BINARY]
set -euo pipefail
N=${1:-3}
GLIMPSE=${2:-target/debug/glimpse}
ROOT=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$ROOT"' EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\n' "$PORT" >"$ROOT/m.conf"
mosquitto -c "$ROOT/m.conf" >/dev/null 2>&1 &
sleep 0.5
mkdir -p "$ROOT/idle" "$ROOT/teach"
cp "$(ls ../shared/datasets/rps/rock/* | head -1)" "$ROOT/idle/"
for c in paper rock scissors; do
  mkdir -p "$ROOT/teach/$c"; cp $(ls ../shared/datasets/rps/$c/* | head -20) "$ROOT/teach/$c/"
done
mosquitto_sub -p "$PORT" -t 'glimpse/+/ack' -F '%U %t %p' >"$ROOT/acks" &
mosquitto_sub -p "$PORT" -t 'glimpse/group/bench/head' -F '%U %l' >"$ROOT/heads" &
for i in $(seq 0 $((N - 1))); do
  leader=$([ "$i" = 0 ] && echo true || echo false)
  cat >"$ROOT/c$i.toml" <<TOML
state_dir = "$ROOT/s$i"
[model]
manifest = "models/mobilenet_v2_1.0_224.toml"
threads = 1
[source]
uri = "dir:$ROOT/idle"
replay_fps = 1
replay_loop = true
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
device_id = "d$i"
[learning]
group = "bench"
group_leader = $leader
retrain_after = 1000
[log]
level = "warn"
TOML
  "$GLIMPSE" run --config "$ROOT/c$i.toml" >"$ROOT/d$i.log" 2>&1 &
done
sleep 8
"$GLIMPSE" send --group bench --url "mqtt://127.0.0.1:$PORT" --quiet "$ROOT/teach"
deadline=$((SECONDS + 120))
while [ "$(grep -c '"adopt_head","status":"accepted"' "$ROOT/acks" || true)" -lt $((N - 1)) ]; do
  [ $SECONDS -lt $deadline ] || { echo "members did not adopt"; exit 1; }
  sleep 0.2
done
sleep 1
last_sample=$(grep -v '"command"' "$ROOT/acks" | tail -1 | cut -d' ' -f1)
last_adopt=$(grep '"adopt_head","status":"accepted"' "$ROOT/acks" | tail -1 | cut -d' ' -f1)
echo "members: $N; last sample ack -> last member adopted: $(echo "$last_adopt - $last_sample" | bc) s"
echo "head messages (unix time, bytes):"; cat "$ROOT/heads"
echo "adoptions: $(grep -c '"adopt_head","status":"accepted"' "$ROOT/acks")"
