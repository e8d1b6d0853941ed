#!/usr/bin/env bash
# The main job, on a fresh machine with nothing set up by hand: builds kpl, starts a local
# Kinesis with real shard limits (`kpl sim`, 127.0.0.1 only), pipes JSON log lines through
# `kpl put`, and reads them back with `kpl cat`. Point it at real Kinesis instead with
#   KPL_ENDPOINT=https://kinesis.us-east-1.amazonaws.com KPL_STREAM=my-stream scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
kpl=target/release/kpl
lines=${KPL_LINES:-100000}
stream=${KPL_STREAM:-demo}
sim_pid=
cleanup() { [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
if [ -z "${KPL_ENDPOINT:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$kpl" sim --port "$port" --stream "$stream:4" > /dev/null &
  sim_pid=$!
  endpoint="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    curl -s -o /dev/null "$endpoint/_sim/stats" && break
    sleep 0.1
  done
  echo "== kpl sim: stream $stream (4 shards, shard limits on) at $endpoint"
else
  endpoint=$KPL_ENDPOINT
fi
echo "== $lines JSON log lines | kpl put --partition-key json:user --compression zstd"
seq 1 "$lines" | awk '{ printf "{\"ts\":%d,\"user\":\"user-%d\",\"level\":\"info\",\"msg\":\"request served\",\"path\":\"/api/items/%d\",\"ms\":%d}\n", 1700000000+$1, $1%500, $1%977, $1%250 }' \
  | "$kpl" put --stream "$stream" --endpoint-url "$endpoint" --partition-key json:user --compression zstd
echo "== kpl cat --stream $stream | sort -u | wc -l"
read_back=$("$kpl" cat --stream "$stream" --endpoint-url "$endpoint" | sort -u | wc -l)
echo "$read_back distinct lines read back of $lines put"
[ "$read_back" -eq "$lines" ]
