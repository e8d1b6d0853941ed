"""kpl for Python vs PyPI aiokpl: CPU seconds of the whole Python process per million user
records, the same 50 000 lines, the same kinesalite, each producer closed loop.

Run with the .venv-bench interpreter (scripts/setup-aiokpl.sh, then kpl-python built in
release into it, as scripts/python_bench.sh does):

    .venv-bench/bin/python scripts/python_bench.py --runs 3 --out target/bench-results/python.json

One kinesalite (bound to 127.0.0.1 by the tests' preload) on a free port, killed with its
process group at the end. 50 000 JSON lines of ~100 bytes, each with a random partition key
(uniform over a million), drawn once from a fixed seed and written to a file that every run
reads. Each run is a child process writing to its own new 8-shard stream:

  aiokpl       aiokpl.Producer (aggregation on, its defaults): `await put_record(...)` per
               line, then flush, then every Outcome awaited (all must succeed).
  kpl-send     kpl.Producer (default settings): `await producer.send(key, line)` per line,
               then flush, then every receipt future awaited (all must be Receipts).
  kpl-batch    kpl.Producer: `await producer.send_batch(chunk)` per 500 lines, then flush,
               then every batch awaited.

The runs alternate (aiokpl, kpl-send, kpl-batch, aiokpl, ...). CPU window: from the first
record handed over until every outcome is in (time.process_time: all threads of the process,
so kpl's runtime threads count), producer start-up excluded; for kpl the child also reports
the event loop's thread's own CPU in the window, the part of it spent in Python's cyclic
garbage collector, and the producer's PutRecords counters ("pipeline"). The child's whole-process CPU
(interpreter start, imports, reading the file, start-up) is reported apart. After each run
the stream is read back (GetRecords, deaggregated with aws-kinesis-agg): the count must be
50 000 and the (key, data) checksum must match.
"""
import argparse
import base64
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from p3 import CREDS, REGION, Kinesalite, client, create_stream, wait_ready  # noqa: E402

LINES = 50_000
SHARDS = 8
BATCH = 500


def make_lines(path, n, seed=21):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            key = f"user-{rng.randrange(1_000_000):06d}"
            line = json.dumps({"ts": 1764770000 + i // 1000, "level": "INFO", "user": key,
                               "msg": rng.randbytes(16).hex()})
            f.write(f"{key}\t{line}\n")


def read_lines(path):
    out = []
    with open(path) as f:
        for row in f:
            key, line = row.rstrip("\n").split("\t", 1)
            out.append((key, line.encode()))
    return out


def digest(pairs):
    total = 0
    for key, data in pairs:
        h = hashlib.blake2b(key.encode() + b"\0" + data, digest_size=8).digest()
        total = (total + int.from_bytes(h, "little")) % 2**64
    return total


# ------------------------------------------------------------------------------ children


def child(kind, endpoint, stream, path):
    import asyncio

    records = read_lines(path)
    pipeline = {}

    async def aiokpl_run():
        from aiokpl import Config, Producer

        cfg = Config(region=REGION, endpoint_url=endpoint, aggregation_enabled=True, **CREDS)
        async with Producer(cfg) as producer:
            cpu0, t0 = time.process_time(), time.perf_counter()
            outcomes = [await producer.put_record(stream=stream, partition_key=k, data=d)
                        for k, d in records]
            await producer.flush()
            results = [await o.wait() for o in outcomes]
            cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
        ok = sum(1 for r in results if r.success)
        return ok, cpu, elapsed

    async def kpl_run(batch):
        import kpl

        import gc

        gc_cpu = [0.0, 0.0]

        def gc_timer(phase, _info):
            if phase == "start":
                gc_cpu[1] = time.thread_time()
            else:
                gc_cpu[0] += time.thread_time() - gc_cpu[1]

        async with kpl.Producer(stream, endpoint_url=endpoint) as producer:
            gc.callbacks.append(gc_timer)
            cpu0, t0, loop0 = time.process_time(), time.perf_counter(), time.thread_time()
            if batch:
                futures = [await producer.send_batch(records[i:i + BATCH])
                           for i in range(0, len(records), BATCH)]
                await producer.flush()
                results = [o for f in futures for o in await f]
            else:
                futures = [await producer.send(k, d) for k, d in records]
                await producer.flush()
                results = [await f for f in futures]
            cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
            loop_cpu = time.thread_time() - loop0
            gc.callbacks.remove(gc_timer)
            m = producer.metrics()
        ok = sum(1 for r in results if isinstance(r, kpl.Receipt))
        pipeline.update(
            loop_thread_cpu_ms=round(loop_cpu * 1000, 1),
            loop_thread_gc_ms=round(gc_cpu[0] * 1000, 1),
            put_records_calls=m["put_records_calls"],
            kinesis_records=m["kinesis_records_put"],
            user_records_per_kinesis_record=round(m["user_records_per_kinesis_record"], 1),
            kinesis_records_per_call=round(m["kinesis_records_per_put_records_request"], 1))
        return ok, cpu, elapsed

    if kind == "aiokpl":
        ok, cpu, elapsed = asyncio.run(aiokpl_run())
    else:
        ok, cpu, elapsed = asyncio.run(kpl_run(kind == "kpl-batch"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"kind": kind, "records": len(records), "stored": ok,
                      "cpu_seconds": cpu, "elapsed_seconds": elapsed,
                      "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mib": usage.ru_maxrss / 1024, "pipeline": pipeline}))


# ------------------------------------------------------------------------------ parent


def read_back(api, stream):
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    pairs = []
    for shard in api.list_shards(StreamName=stream)["Shards"]:
        it = api.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            resp = api.get_records(ShardIterator=it, Limit=10000)
            for r in iter_deaggregate_records(resp["Records"], data_format="Boto3"):
                k = r["kinesis"]
                data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
                pairs.append((k["partitionKey"], data))
            it = resp.get("NextShardIterator")
            if not resp["Records"]:
                break
    return pairs


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lines", type=int, default=LINES)
    ap.add_argument("--out")
    ap.add_argument("--kinds", default="aiokpl,kpl-send,kpl-batch")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    server = Kinesalite()
    results = []
    try:
        api = client(server.endpoint)
        wait_ready(server, api)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "lines.tsv")
            make_lines(path, args.lines)
            expected = read_lines(path)
            want = digest(expected)
            for run in range(args.runs):
                for kind in kinds:
                    stream = f"bench-{kind}-{run}"
                    create_stream(api, stream, SHARDS)
                    load = loadavg()
                    out = subprocess.run([sys.executable, __file__, "--child", kind,
                                          server.endpoint, stream, path],
                                         capture_output=True, text=True, timeout=1800)
                    if out.returncode != 0:
                        sys.exit(f"{kind} run {run} failed:\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    back = read_back(api, stream)
                    r.update(run=run, load_before=load, read_back=len(back),
                             checksum_ok=digest(back) == want and len(back) == len(expected))
                    r["cpu_s_per_million"] = r["cpu_seconds"] / r["records"] * 1e6
                    r["process_cpu_s_per_million"] = r["process_cpu_seconds"] / r["records"] * 1e6
                    results.append(r)
                    print(f"run {run} {kind:10s} stored {r['stored']}/{r['records']} read back "
                          f"{r['read_back']} ok={r['checksum_ok']}  window {r['cpu_seconds']:.2f} "
                          f"CPU s in {r['elapsed_seconds']:.2f} s = {r['cpu_s_per_million']:.1f} "
                          f"CPU s/M (whole process {r['process_cpu_s_per_million']:.1f}), load "
                          f"{load}", flush=True)
    finally:
        server.stop()
    summary = {}
    for kind in kinds:
        rs = [r for r in results if r["kind"] == kind]
        summary[kind] = {
            "cpu_s_per_million": [round(r["cpu_s_per_million"], 2) for r in rs],
            "process_cpu_s_per_million": [round(r["process_cpu_s_per_million"], 2) for r in rs],
        }
    if "aiokpl" in kinds:
        for run in range(args.runs):
            base = next(r for r in results if r["run"] == run and r["kind"] == "aiokpl")
            for kind in kinds[1:]:
                r = next(r for r in results if r["run"] == run and r["kind"] == kind)
                summary[kind].setdefault("ratio_vs_aiokpl", []).append(
                    round(base["cpu_seconds"] / r["cpu_seconds"], 1))
                summary[kind].setdefault("process_ratio_vs_aiokpl", []).append(
                    round(base["process_cpu_seconds"] / r["process_cpu_seconds"], 1))
    print(json.dumps(summary, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"runs": results, "summary": summary}, f, indent=1)
    if not all(r["checksum_ok"] and r["stored"] == r["records"] for r in results):
        sys.exit("some run did not store and read back every record")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
