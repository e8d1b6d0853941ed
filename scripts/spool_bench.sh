#!/usr/bin/env bash
# The spool's cost (BENCHMARKS.md "Spool"): P2's 8- and 64-shard runs with the spool off and on
# with each sync policy, side by side in one run, two rounds in opposite orders (the load on a
# shared machine drifts). SPOOL_BENCH_SECONDS (default 20) sets each run's length; the spool
# directories go under target/spool-bench (emptied before each run).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SPOOL_BENCH_SECONDS:-20}
out=target/spool-bench
mkdir -p "$out"
cargo build --release --quiet -p kpl-cli
kpl=target/release/kpl
run() {
  name=$1; shift
  rm -rf "$out/spool-$name"
  nice -n 19 "$kpl" bench --quiet --duration "${secs}s" --keys 100000 --report "$out/$name.json" "$@" 2>"$out/$name.txt"
}
variants=(off off-batch64 every interval never)
args_of() {
  case $1 in
    off) ;;
    off-batch64) echo --send-batch 64 ;;
    every) echo --spool "$out/spool-$2" --spool-sync every ;;
    interval) echo --spool "$out/spool-$2" --spool-sync interval:100ms ;;
    never) echo --spool "$out/spool-$2" --spool-sync never ;;
  esac
}
for shards in 8 64; do
  outstanding=$((shards * 5000))
  for round in 1 2; do
    order=("${variants[@]}")
    if [ "$round" = 2 ]; then order=(never interval every off-batch64 off); fi
    for v in "${order[@]}"; do
      name="p2-$shards-$v-r$round"
      # shellcheck disable=SC2046
      run "$name" --shards "$shards" --max-outstanding-records "$outstanding" $(args_of "$v" "$name")
      rm -rf "$out/spool-$name"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for shards in (8, 64):
    rows = {}
    for v in ("off", "off-batch64", "every", "interval", "never"):
        rs = [json.load(open(f"{out}/p2-{shards}-{v}-r{r}.json")) for r in (1, 2)]
        rows[v] = [r["during_load"]["user_records_per_second"] for r in rs]
    base = sum(rows["off"]) / 2
    base64 = sum(rows["off-batch64"]) / 2
    for v, rates in rows.items():
        mean = sum(rates) / 2
        print(f"| {shards} | {v} | {rates[0]:.0f} | {rates[1]:.0f} | {mean / base:.2f} | {mean / base64:.2f} |")
PY
