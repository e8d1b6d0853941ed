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
  # A free port (--port 0), and one line on stdout once the stream exists:
  #   kpl sim: listening on http://127.0.0.1:PORT streams=demo:4
  exec {sim_out}< <(exec "$kpl" sim --port 0 --stream "$stream:4")
  sim_pid=$!
  if ! read -r _ _ _ _ endpoint _ <&"$sim_out" || [ -z "$endpoint" ]; then
    echo "kpl sim did not start (its error is above)" >&2
    exit 1
  fi
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
