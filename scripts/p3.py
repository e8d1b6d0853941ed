"""P3: CPU per million user records, kpl vs PyPI aiokpl, against one kinesalite, same load.

Run with the .venv-bench interpreter (scripts/setup-aiokpl.sh): it needs aiokpl, botocore (to
create and read back the streams) and aws-kinesis-agg. scripts/benchmarks.sh runs it as

    .venv-bench/bin/python scripts/p3.py --out target/bench-results/p3.json

One kinesalite is started on a free loopback port (bound to 127.0.0.1 by the tests' preload) and
killed with its process group at the end, also on error or SIGTERM/SIGINT. Against it, on two
streams of the same shard count, with the same load (100-byte random records, 1000 uniform keys
"key-000000".., closed loop):

  aiokpl  --records N user records through aiokpl.Producer (aggregation on, its defaults) in a
          child process; every Outcome is awaited and must be a success, and the stream is read
          back and deaggregated: the count and a checksum of (key, data) must match what was put.
  kpl     `kpl bench --endpoint-url` twice, default producer settings: at aiokpl's achieved
          rate (the same offered load) and closed loop; both read back and counted.
  sdk     examples/sdk_call_cost.rs: the AWS SDK's PutRecords calls alone, on one thread, at the
          call rate and shape (entries per call, bytes per entry) of kpl's one-thread run: the
          client's share of kpl's CPU at that rate.
  agg     aws_kinesis_agg.aggregator.RecordAggregator over records of the same shape, in
          process, no network: user records/s and CPU seconds per million.

CPU windows: kpl bench counts its whole process (all threads) from the first record offered
until every receipt is in and the producer shut down. The aiokpl child counts the same window
(time.process_time: all threads) from the first put_record to the producer's exit with every
Outcome resolved; the child's whole-process CPU (interpreter start, imports) is reported apart.
"""
import argparse
import base64
import hashlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_SIZE = 100
KEYS = 1000
REGION = "us-east-1"
AGGREGATION_MAX_SIZE = 51200
CREDS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


def key_name(k):
    return f"key-{k:06d}"  # as kpl bench names its keys


def record_digest(key, data):
    """Order-independent checksum term of one user record (summed mod 2**64)."""
    return int.from_bytes(hashlib.blake2b(key.encode() + b"\0" + data, digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------- aiokpl child


def aiokpl_child(endpoint, stream, n, seed):
    """Puts n records through aiokpl; prints one JSON line of results on stdout."""
    import asyncio

    from aiokpl import Config, Producer

    async def main():
        rng = random.Random(seed)
        cfg = Config(region=REGION, endpoint_url=endpoint, aggregation_enabled=True, **CREDS)
        outcomes, sent = [], []
        async with Producer(cfg) as producer:
            # Like kpl bench: records are drawn inside the measured window.
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                key = key_name(rng.randrange(KEYS))
                data = rng.randbytes(RECORD_SIZE)
                sent.append((key, data))
                outcomes.append(await producer.put_record(stream=stream, partition_key=key, data=data))
            t_offered = time.perf_counter()
            await producer.flush()
            results = [await o.wait() for o in outcomes]
        cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
        digest = sum(record_digest(k, d) for k, d in sent) % 2**64  # outside the window
        ok = [r for r in results if r.success]
        errors = {}
        for r in results:
            if not r.success:
                code = r.attempts[-1].error_code if r.attempts else "?"
                errors[code] = errors.get(code, 0) + 1
        return {
            "user_records_offered": n,
            "user_records_put": len(ok),
            "user_records_failed": n - len(ok),
            "errors": errors,
            "retried_records": sum(1 for r in results if len(r.attempts) > 1),
            "offer_seconds": t_offered - t0,
            "elapsed_seconds": elapsed,
            "cpu_seconds": cpu,
            "checksum": digest,
        }

    print(json.dumps(asyncio.run(main())))


# ----------------------------------------------------------------------------- kinesalite


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Kinesalite:
    def __init__(self):
        cli = os.path.join(REPO, ".tools/node_modules/kinesalite/cli.js")
        if not os.path.exists(cli):
            sys.exit("p3.py: kinesalite is not installed: run scripts/setup-node.sh")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["node", "-r", os.path.join(REPO, "tests/node/bind-loopback.js"), cli,
             "--port", str(self.port), "--shardLimit", "1000", "--createStreamMs", "0",
             "--deleteStreamMs", "0", "--updateStreamMs", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # leads its own process group: stop() kills the group

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def cpu_seconds(self):
        """utime + stime of the node process so far (USER_HZ ticks)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(endpoint):
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "kinesis", region_name=REGION, endpoint_url=endpoint,
        config=botocore.config.Config(retries={"max_attempts": 10}, read_timeout=120), **CREDS)


def wait_ready(server, api):
    deadline = time.time() + 30
    while True:
        if server.proc.poll() is not None:
            sys.exit(f"p3.py: kinesalite exited with {server.proc.returncode}")
        try:
            api.list_streams()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def create_stream(api, name, shards):
    api.create_stream(StreamName=name, ShardCount=shards)
    for _ in range(300):
        if api.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    sys.exit(f"p3.py: stream {name} did not become ACTIVE")


def read_back(api, stream):
    """Reads every shard from TRIM_HORIZON, deaggregates with aws-kinesis-agg's reference
    deaggregator: (kinesis records, user records, checksum of (key, data))."""
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    kinesis, users, digest = 0, 0, 0
    for shard in api.list_shards(StreamName=stream)["Shards"]:
        it = api.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            resp = api.get_records(ShardIterator=it, Limit=10000)
            kinesis += len(resp["Records"])
            for r in iter_deaggregate_records(resp["Records"], data_format="Boto3"):
                users += 1
                k = r["kinesis"]
                # It re-encodes a deaggregated record's data in base64 (Lambda style); a record
                # that was not aggregated comes back as it was read.
                data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
                digest = (digest + record_digest(k["partitionKey"], data)) % 2**64
            it = resp.get("NextShardIterator")
            if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                break
    return kinesis, users, digest


# ----------------------------------------------------------------------------- runs


def run_aiokpl(server, api, stream, n, seed):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    node0 = server.cpu_seconds()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_aiokpl", server.endpoint, stream,
                           str(n), str(seed)], capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    node = server.cpu_seconds() - node0
    if proc.returncode != 0:
        sys.exit(f"p3.py: the aiokpl run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["process_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r["peak_rss_mib"] = after.ru_maxrss / 1024  # largest child so far: this one (kinesalite is not reaped yet)
    r["cpu_seconds_per_million_user_records"] = r["cpu_seconds"] / (max(r["user_records_put"], 1) / 1e6)
    r["process_cpu_seconds_per_million_user_records"] = r["process_cpu_seconds"] / (max(r["user_records_put"], 1) / 1e6)
    r["user_records_per_second"] = r["user_records_put"] / r["elapsed_seconds"]
    r["kinesalite_cpu_seconds"] = node
    kinesis, users, digest = read_back(api, stream)
    r["read_back"] = {"kinesis_records": kinesis, "user_records": users, "checksum_matches": digest == r["checksum"]}
    if r["user_records_failed"] or users != n or digest != r["checksum"]:
        sys.exit(f"p3.py: aiokpl did not deliver every record: {json.dumps(r)}")
    return r


def run_kpl(server, api, kpl, stream, seconds, rate=None, extra=(), bench_args=()):
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [kpl, "bench", "--quiet", "--endpoint-url", server.endpoint, "--region", REGION,
               "--stream", stream, "--duration", f"{seconds}s", "--record-size", str(RECORD_SIZE),
               "--keys", str(KEYS), "--report", report]
        if rate:
            cmd += ["--rate", f"{rate:.0f}"]
        # `extra`: kpl's global options (before `bench`); `bench_args`: bench's own.
        cmd = [cmd[0], *extra, *cmd[1:], *bench_args]
        node0 = server.cpu_seconds()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
        node = server.cpu_seconds() - node0
        if proc.returncode != 0:
            sys.exit(f"p3.py: kpl bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        r = json.load(open(report))
    kinesis, users, _ = read_back(api, stream)
    if r["user_records_failed"] or users != r["user_records_put"]:
        sys.exit(f"p3.py: kpl bench: {r['user_records_put']} records put, {r['user_records_failed']} failed, "
                 f"{users} read back")
    return {
        "command": " ".join(a for a in cmd[1:] if a not in ("--report", report)),
        "offered_rate": rate,
        "duration_seconds": r["duration_seconds"],
        "user_records_put": r["user_records_put"],
        "user_records_failed": r["user_records_failed"],
        "put_records_calls": r["put_records_calls"],
        "kinesis_records_put": r["kinesis_records_put"],
        "kinesis_bytes_put": r["kinesis_bytes_put"],
        "retries": r["retries"],
        "throttled_entries": r["throttled_entries"],
        "user_records_per_second": r["during_load"]["user_records_per_second"],
        "cpu_seconds": r["cpu_seconds"],
        "cpu_seconds_per_million_user_records": r["cpu_seconds_per_million_user_records"],
        "peak_rss_mib": r["peak_rss_mib"],
        "latency_ms": r["latency_ms"],
        "kinesalite_cpu_seconds": node,
        "read_back": {"kinesis_records": kinesis, "user_records": users},
    }


def run_sdk_calls(server, exe, stream, like, seconds):
    """The AWS SDK's PutRecords calls alone (examples/sdk_call_cost.rs, one thread), paced at the
    call rate of the kpl run `like`, each with its mean entries per call and bytes per entry:
    what the client costs of kpl's CPU at that rate, in CPU s per million of `like`'s records."""
    calls_per_second = like["put_records_calls"] / like["duration_seconds"]
    entries = max(1, round(like["kinesis_records_put"] / like["put_records_calls"]))
    entry_bytes = max(1, round(like["kinesis_bytes_put"] / like["kinesis_records_put"]))
    cmd = [exe, server.endpoint, stream, f"{calls_per_second:.3f}", str(entries), str(entry_bytes), str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                          env={**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                               "AWS_REGION": REGION})
    if proc.returncode != 0:
        sys.exit(f"p3.py: sdk_call_cost failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # CPU per call times calls per user record of the kpl run.
    records_per_call = like["user_records_put"] / like["put_records_calls"]
    r.update({
        "command": " ".join(["sdk_call_cost", *cmd[1:]]),
        "calls_per_second": calls_per_second,
        "entries_per_call": entries,
        "entry_bytes": entry_bytes,
        "user_records_per_call_of_kpl_run": records_per_call,
        "cpu_seconds_per_million_user_records": r["cpu_us_per_call"] / records_per_call,
    })
    return r


def run_aggregator(n, seed):
    """aws-kinesis-agg's RecordAggregator over n records like the others', each full aggregate
    serialized (get_contents: protobuf + MD5 trailer), in process. Aggregates are capped at
    51200 bytes, the KPL's default aggregation_max_size (kpl's is 52172), not the library's 1 MiB."""
    from aws_kinesis_agg.aggregator import RecordAggregator

    rng = random.Random(seed)
    records = [(key_name(rng.randrange(KEYS)), rng.randbytes(RECORD_SIZE)) for _ in range(n)]
    agg = RecordAggregator(max_size=AGGREGATION_MAX_SIZE)
    aggregates, size = 0, 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for key, data in records:
        full = agg.add_user_record(key, data)
        if full is not None:
            size += len(full.get_contents()[2])
            aggregates += 1
    last = agg.clear_and_get()
    if last is not None:
        size += len(last.get_contents()[2])
        aggregates += 1
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    return {
        "user_records": n,
        "aggregates": aggregates,
        "aggregate_bytes": size,
        "elapsed_seconds": elapsed,
        "cpu_seconds": cpu,
        "max_aggregate_bytes": AGGREGATION_MAX_SIZE,
        "user_records_per_second": n / elapsed,
        # The rate on one busy core, whatever else the machine runs (single-threaded loop).
        "user_records_per_cpu_second": n / cpu,
        "cpu_seconds_per_million_user_records": cpu / (n / 1e6),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=40000, help="user records aiokpl puts")
    ap.add_argument("--kpl-seconds", type=float, default=15, help="least length of each kpl run")
    ap.add_argument("--agg-records", type=int, default=200000, help="records for RecordAggregator")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kpl", default=os.path.join(REPO, "target/release/kpl"))
    ap.add_argument("--sdk-call-cost", default=os.path.join(REPO, "target/release/examples/sdk_call_cost"),
                    help="examples/sdk_call_cost.rs, built")
    ap.add_argument("--out", default=os.path.join(REPO, "target/bench-results/p3.json"))
    args = ap.parse_args()

    import aiokpl  # fail early, before starting anything
    if not os.path.exists(args.sdk_call_cost):
        sys.exit(f"p3.py: {args.sdk_call_cost} is missing: cargo build --release --example sdk_call_cost")
    import importlib.metadata as md

    server = Kinesalite()
    # Stop kinesalite on SIGTERM/SIGINT too: SystemExit unwinds through the finally below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit("p3.py: stopped by a signal"))
    try:
        api = client(server.endpoint)
        wait_ready(server, api)
        for s in ("p3-aiokpl", "p3-kpl-same-rate", "p3-kpl-one-thread", "p3-kpl-batches", "p3-kpl-closed-loop", "p3-sdk-calls"):
            create_stream(api, s, args.shards)
        print(f"p3: kinesalite {server.endpoint}, {args.shards} shards; aiokpl {args.records} records...", file=sys.stderr)
        a = run_aiokpl(server, api, "p3-aiokpl", args.records, args.seed)
        print(f"p3: aiokpl {a['user_records_per_second']:.0f} records/s, "
              f"{a['cpu_seconds_per_million_user_records']:.1f} CPU s/M; kpl...", file=sys.stderr)
        # The same offered load: aiokpl's achieved rate, for at least as long as aiokpl ran.
        same_seconds = max(args.kpl_seconds, round(a["elapsed_seconds"]))
        k_same = run_kpl(server, api, args.kpl, "p3-kpl-same-rate", same_seconds, rate=a["user_records_per_second"])
        # aiokpl runs on one thread (asyncio): so can kpl.
        k_one = run_kpl(server, api, args.kpl, "p3-kpl-one-thread", same_seconds,
                        rate=a["user_records_per_second"], extra=("--threads", "1"))
        # The same, handing records over 64 at a time (send_batch) instead of one by one.
        k_batches = run_kpl(server, api, args.kpl, "p3-kpl-batches", same_seconds,
                            rate=a["user_records_per_second"], extra=("--threads", "1"),
                            bench_args=("--send-batch", "64"))
        k_closed = run_kpl(server, api, args.kpl, "p3-kpl-closed-loop", args.kpl_seconds)
        # The client's share: the one-thread run's calls, made by the SDK alone.
        sdk = run_sdk_calls(server, args.sdk_call_cost, "p3-sdk-calls", k_one, same_seconds)
    finally:
        server.stop()
    g = run_aggregator(args.agg_records, args.seed)

    kpl_version = subprocess.run([args.kpl, "--version"], capture_output=True, text=True).stdout.strip()
    result = {
        "target": f"kinesalite 3.3.3 on loopback, {args.shards} shards per stream",
        "load": {"record_size": RECORD_SIZE, "keys": KEYS, "key_dist": "uniform", "payload": "random"},
        "versions": {"aiokpl": md.version("aiokpl"), "aiobotocore": md.version("aiobotocore"),
                     "aws-kinesis-agg": md.version("aws-kinesis-agg"), "protobuf": md.version("protobuf"),
                     "python": sys.version.split()[0], "kpl": kpl_version},
        "aiokpl": a,
        "kpl_same_rate": k_same,
        "kpl_same_rate_one_thread": k_one,
        "kpl_same_rate_batches": k_batches,
        "kpl_closed_loop": k_closed,
        "sdk_calls_alone": sdk,
        "aws_kinesis_agg": g,
        "cpu_ratio_aiokpl_over_kpl_same_rate": a["cpu_seconds_per_million_user_records"]
        / k_same["cpu_seconds_per_million_user_records"],
        "cpu_ratio_aiokpl_over_kpl_one_thread": a["cpu_seconds_per_million_user_records"]
        / k_one["cpu_seconds_per_million_user_records"],
        "cpu_ratio_aiokpl_over_kpl_batches": a["cpu_seconds_per_million_user_records"]
        / k_batches["cpu_seconds_per_million_user_records"],
        "cpu_ratio_aiokpl_over_kpl_closed_loop": a["cpu_seconds_per_million_user_records"]
        / k_closed["cpu_seconds_per_million_user_records"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"p3: aiokpl {a['cpu_seconds_per_million_user_records']:.1f}, kpl {k_same['cpu_seconds_per_million_user_records']:.2f} "
          f"(same rate) / {k_closed['cpu_seconds_per_million_user_records']:.2f} (closed loop) CPU s per million; "
          f"ratio {result['cpu_ratio_aiokpl_over_kpl_same_rate']:.0f}x / {result['cpu_ratio_aiokpl_over_kpl_closed_loop']:.0f}x; "
          f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_aiokpl":
        aiokpl_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
