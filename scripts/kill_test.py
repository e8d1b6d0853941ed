#!/usr/bin/env python3
"""SIGKILL `kpl put --file F --spool D` at random moments, many times, and count what arrives.

Rounds, each on a stream of its own in one `kpl sim` (one shard, shard limits on): a file of
--lines lines; the put (no aggregation, dedup ids on, a small spool so reading waits for Kinesis
and kills land while lines are read, spooled and sent) is started, SIGKILLed after a random
delay, started again, --kills-per-round times; then it runs to its end (exit 0 required). The
stream is read back with `kpl cat` and `kpl cat --dedup`:

  lost        lines of F not in the stream (must be 0)
  duplicates  records read beyond one per line (a restart resends what the spool held)
  after dedup lines kept by `kpl cat --dedup` that are not exactly F's lines, once (must be 0)

Usage: scripts/kill_test.py [--kpl target/debug/kpl] [--kills 500] [--kills-per-round 20]
       [--lines 5000] [--seed 19] [--stdin]
With --stdin the input goes through stdin with a spool: each run is fed the input from the
position the spool recorded (`stdin` checkpoint, bytes over every run), as a user would with
`tail -c +N`. Prints one summary line per round and a total; exits 1 if a line was lost.
"""

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter


def start_sim(kpl, rounds):
    streams = []
    for r in range(rounds):
        streams += ["--stream", f"r{r}:1"]
    sim = subprocess.Popen(
        [kpl, "sim", "--port", "0", *streams],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = sim.stdout.readline()
    return sim, line.split(" ")[4]


def stdin_position(spool):
    """Bytes of stdin the spool says earlier runs took: the latest `stdin` checkpoint frame."""
    if not os.path.isdir(spool):
        return 0
    position = 0
    for name in sorted(os.listdir(spool)):
        if not name.endswith(".seg"):
            continue
        data = open(os.path.join(spool, name), "rb").read()
        at = 16
        while at + 8 <= len(data):
            (length,) = struct.unpack_from("<I", data, at)
            body = data[at + 8 : at + 8 + length]
            if len(body) < length:
                break
            # A checkpoint frame: kind 2, key length, key, value (see src/spool/segment.rs).
            if body[:1] == b"\x02":
                (klen,) = struct.unpack_from("<H", body, 1)
                key = body[3 : 3 + klen]
                value = body[3 + klen :]
                if key == b"stdin" and len(value) == 16:
                    position = struct.unpack_from("<Q", value, 8)[0]
            at += 8 + length
    return position


def run_round(args, kpl, endpoint, stream, rng, work):
    path = os.path.join(work, f"{stream}.log")
    spool = os.path.join(work, f"{stream}.spool")
    lines = [f"{stream}-line-{i}" for i in range(args.lines)]
    data = ("\n".join(lines) + "\n").encode()
    with open(path, "wb") as f:
        f.write(data)
    base = [kpl, "put", "--stream", stream, "--endpoint-url", endpoint, "--no-aggregation",
            "--dedup-ids", "--quiet", "--spool", spool, "--spool-max-bytes", "65536"]
    if not args.stdin:
        base += ["--file", path]
    kills = 0
    runs = 0
    while True:
        runs += 1
        last = kills >= args.kills_per_round
        offset = stdin_position(spool) if args.stdin else 0  # read while no process holds it
        log = open(os.path.join(work, f"{stream}.stderr"), "ab")
        put = subprocess.Popen(base, stdin=subprocess.PIPE if args.stdin else subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        if args.stdin:
            try:
                put.stdin.write(data[offset:])
                put.stdin.close()
            except BrokenPipeError:
                pass
        try:
            code = put.wait(timeout=120 if last else rng.uniform(0.02, 0.9))
        except subprocess.TimeoutExpired:
            put.kill()
            put.wait()
            if last:
                raise SystemExit(f"{stream}: the last run did not finish in 120 s")
            kills += 1
            continue
        err = open(os.path.join(work, f"{stream}.stderr"), errors="replace").read()
        if code != 0:
            raise SystemExit(f"{stream}: exit {code}: {err}")
        break  # finished: the last run, or one that beat its kill
    cat = [kpl, "cat", "--stream", stream, "--endpoint-url", endpoint, "--quiet",
           "--idle-timeout", "2s"]
    got = subprocess.run(cat, capture_output=True, check=True).stdout.decode().splitlines()
    deduped = subprocess.run(cat + ["--dedup"], capture_output=True,
                             check=True).stdout.decode().splitlines()
    counts = Counter(got)
    lost = sum(1 for line in lines if line not in counts)
    duplicates = len(got) - len(set(got))
    dedup_counts = Counter(deduped)
    not_once = sum(1 for line in lines if dedup_counts.get(line) != 1) + sum(
        1 for line in dedup_counts if line not in set(lines))
    # A kill inside the spool's write of a batch tears it: the next run warns, and the lines of
    # the torn batch's whole frames are read from the file again under new ids.
    stderr = open(os.path.join(work, f"{stream}.stderr"), errors="replace").read()
    torn = stderr.count("ends inside a frame")
    return kills, runs, lost, duplicates, not_once, torn


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kpl", default="target/debug/kpl")
    p.add_argument("--kills", type=int, default=500)
    p.add_argument("--kills-per-round", type=int, default=20)
    p.add_argument("--lines", type=int, default=5000)
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--stdin", action="store_true")
    args = p.parse_args()
    rng = random.Random(args.seed)
    rounds = max(1, args.kills // args.kills_per_round)
    sim, endpoint = start_sim(args.kpl, rounds)
    work = tempfile.mkdtemp(prefix="kpl-kill-")
    started = time.time()
    total = Counter()
    try:
        for r in range(rounds):
            kills, runs, lost, dups, not_once, torn = run_round(args, args.kpl, endpoint,
                                                                f"r{r}", rng, work)
            total.update(kills=kills, runs=runs, lost=lost, dups=dups, not_once=not_once,
                         lines=args.lines, torn=torn)
            print(f"round {r}: {kills} kills, {runs} runs, {args.lines} lines, lost {lost}, "
                  f"duplicates {dups}, not exactly once after --dedup {not_once}, "
                  f"torn spool tails {torn}", flush=True)
    finally:
        sim.kill()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - started
    mode = "stdin --spool" if args.stdin else "--file --spool"
    print(f"total ({mode}, seed {args.seed}): {total['kills']} kills in {total['runs']} runs, "
          f"{total['lines']} lines, lost {total['lost']}, duplicates {total['dups']} "
          f"({100.0 * total['dups'] / max(1, total['lines']):.1f} %), not exactly once after "
          f"--dedup {total['not_once']}, torn spool tails {total['torn']}, {elapsed:.0f} s")
    sys.exit(1 if total["lost"] else 0)


if __name__ == "__main__":
    main()
