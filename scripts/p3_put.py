#!/usr/bin/env python3
"""P3 as a user meets it: `kpl put` and aiokpl fed the same JSON lines at 300, 3 000 and 30 000
lines/s and closed loop, and `kpl bench --client lean` vs `--client sdk` at those rates, against
one kinesalite, 8-shard streams (issue 18, "Record").

Run with the .venv-bench interpreter (scripts/setup-aiokpl.sh) after
`cargo build --release -p kpl-cli`:

    .venv-bench/bin/python scripts/p3_put.py --out target/bench-results/p3_put.json

Every row: CPU s per million records, PutRecords calls/s, Kinesis records per call, the rate
achieved, and every run's records read back from kinesalite and counted (aiokpl's and kpl put's
also checksummed: the same lines, the same keys). Ratios are aiokpl's CPU per million over kpl's
at the same offered rate, from this run.

The lines: ~100-byte JSON lines `{"i":N,"user":"user-XXXX","event":"click","pad":"..."}`, 1000
users, the partition key is the `user` field for both producers (`kpl put --partition-key
json:user`). They reach each producer through a pipe from a feeder process (not measured) that
writes, every millisecond, the lines due by then (closed loop: `cat` of a file of the lines).

  kpl put   its whole process's CPU (/usr/bin/time: start-up included); calls and Kinesis records
            from its --summary-json.
  aiokpl    a child process that reads stdin and awaits `put_record` per line (aggregation on, its
            defaults), then flushes and awaits every outcome; CPU from its first line to the end
            (time.process_time, all threads: interpreter start and imports left out; the whole
            process's is recorded beside it); calls and Kinesis records counted by wrapping its
            sender. Where it reads under 90 % of the offered rate it is saturated: its CPU per
            record is then at its least and the ratio a lower bound. Above 3 000 lines/s it runs
            only where its closed-loop rate reaches the offered one.
  kpl bench p3.py's load (100-byte random records, 1000 uniform keys) at the same rates, lean and
            SDK client alternating.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p3  # noqa: E402  (kinesalite, stream setup, read-back, kpl bench runs)

REPO = p3.REPO
SHARDS = 8
USERS = 1000


def line(i):
    return (json.dumps({"i": i, "user": f"user-{i % USERS:04d}", "event": "click", "pad": "x" * 40},
                       separators=(",", ":")) + "\n").encode()


def rate_name(rate):
    return "closed loop" if rate is None else f"{rate} lines/s"


# ----------------------------------------------------------------------------- aiokpl child


def aiokpl_child(endpoint, stream):
    """Reads lines from stdin and puts each through aiokpl; prints one JSON line of results."""
    import asyncio

    import aiokpl.sender
    from aiokpl import Config, Producer

    calls = {"calls": 0, "kinesis_records": 0}
    send = aiokpl.sender.Sender.send

    async def counted(self, batch):
        calls["calls"] += 1
        calls["kinesis_records"] += batch.count
        return await send(self, batch)

    aiokpl.sender.Sender.send = counted

    async def main():
        cfg = Config(region=p3.REGION, endpoint_url=endpoint, aggregation_enabled=True, **p3.CREDS)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        outcomes, digest, n = [], 0, 0
        async with Producer(cfg) as producer:
            first = await reader.readline()
            cpu0, t0 = time.process_time(), time.perf_counter()
            raw = first
            while raw:
                text = raw.rstrip(b"\n")
                if text:
                    key = json.loads(text)["user"]
                    digest = (digest + p3.record_digest(key, text)) % 2**64
                    outcomes.append(await producer.put_record(stream=stream, partition_key=key, data=text))
                    n += 1
                raw = await reader.readline()
            t_read = time.perf_counter()
            await producer.flush()
            results = [await o.wait() for o in outcomes]
        cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
        ok = sum(1 for r in results if r.success)
        return {"lines": n, "user_records_put": ok, "user_records_failed": n - ok,
                "read_seconds": t_read - t0, "elapsed_seconds": elapsed, "cpu_seconds": cpu,
                "checksum": digest, **calls}

    print(json.dumps(asyncio.run(main())))


# ----------------------------------------------------------------------------- feeding


def feed(pipe, rate, n):
    """Writes lines 0..n to `pipe` at `rate` lines/s: every millisecond the lines due by then."""
    start = time.monotonic()
    i = 0
    try:
        while i < n:
            due = min(n, int((time.monotonic() - start) * rate) + 1)
            if due > i:
                pipe.write(b"".join(line(j) for j in range(i, due)))
                pipe.flush()
                i = due
            time.sleep(max(0.0, min(0.001, start + i / rate - time.monotonic())))
    finally:
        pipe.close()


def lines_file(tmp, n):
    path = os.path.join(tmp, f"lines-{n}.ndjson")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            for i in range(n):
                f.write(line(i))
    return path


def expected_digest(n):
    return sum(p3.record_digest(f"user-{i % USERS:04d}", line(i).rstrip(b"\n")) for i in range(n)) % 2**64


def start_fed(cmd, rate, n, tmp, env=None):
    """Starts `cmd` with its stdin fed n lines at `rate` (None: the lines' file)."""
    if rate is None:
        # Through a pipe too (`cat`), as the paced runs: asyncio reads pipes, not files.
        cat = subprocess.Popen(["cat", lines_file(tmp, n)], stdout=subprocess.PIPE)
        proc = subprocess.Popen(cmd, stdin=cat.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        cat.stdout.close()
        return proc, None
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    feeder = threading.Thread(target=feed, args=(proc.stdin, rate, n), daemon=True)
    feeder.start()
    return proc, feeder


def finish(proc, feeder, what, timeout):
    if feeder:
        feeder.join()  # it closes stdin when every line is written
        proc.stdin = None
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"p3_put.py: {what} failed ({proc.returncode}):\n{err.decode()[-4000:]}")
    return out.decode(), err.decode()


# ----------------------------------------------------------------------------- runs


def check_read_back(api, stream, n, what):
    kinesis, users, digest = p3.read_back(api, stream)
    if users != n:
        sys.exit(f"p3_put.py: {what}: {n} lines put, {users} read back")
    return kinesis, users, digest


def run_put(server, api, kpl, stream, rate, n, tmp):
    with tempfile.NamedTemporaryFile(suffix=".json", dir=tmp, delete=False) as s:
        summary = s.name
    cmd = ["/usr/bin/time", "-f", "%U %S %e", kpl, "put", "--stream", stream, "--endpoint-url", server.endpoint,
           "--region", p3.REGION, "--partition-key", "json:user", "--quiet", "--summary-json", summary]
    node0 = server.cpu_seconds()
    proc, feeder = start_fed(cmd, rate, n, tmp)
    _, err = finish(proc, feeder, f"kpl put at {rate_name(rate)}", timeout=n / (rate or 20000) + 300)
    user, sys_, _wall = re.findall(r"^([\d.]+) ([\d.]+) ([\d.]+)$", err, re.M)[-1]
    s = json.load(open(summary))
    kinesis, users, digest = check_read_back(api, stream, n, f"kpl put at {rate_name(rate)}")
    if s["user_records_put"] != n or digest != expected_digest(n):
        sys.exit(f"p3_put.py: kpl put at {rate_name(rate)} did not store every line as sent: {s}")
    cpu = float(user) + float(sys_)
    return {
        "offered_lines_per_second": rate,
        "lines": n,
        "user_records_per_second": s["user_records_per_second"],
        "elapsed_seconds": s["elapsed_seconds"],
        "cpu_seconds": cpu,
        "cpu_seconds_per_million_user_records": cpu / (n / 1e6),
        "put_records_calls": s["put_records_calls"],
        "calls_per_second": s["put_records_calls"] / s["elapsed_seconds"],
        "kinesis_records_put": s["kinesis_records_put"],
        "kinesis_records_per_call": s["kinesis_records_put"] / max(1, s["put_records_calls"]),
        "retries": s["retries"],
        "kinesalite_cpu_seconds": server.cpu_seconds() - node0,
        "read_back": {"kinesis_records": kinesis, "user_records": users, "checksum_matches": True},
    }


def run_aiokpl(server, api, stream, rate, n, tmp):
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, os.path.abspath(__file__), "_aiokpl", server.endpoint, stream]
    proc, feeder = start_fed(cmd, rate, n, tmp)
    out, _ = finish(proc, feeder, f"aiokpl at {rate_name(rate)}", timeout=n / 500 + 300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = json.loads(out.strip().splitlines()[-1])
    kinesis, users, digest = check_read_back(api, stream, n, f"aiokpl at {rate_name(rate)}")
    if r["user_records_put"] != n or digest != r["checksum"] or digest != expected_digest(n):
        sys.exit(f"p3_put.py: aiokpl at {rate_name(rate)} did not store every line as sent: {r}")
    achieved = n / r["elapsed_seconds"]
    r.update({
        "offered_lines_per_second": rate,
        "user_records_per_second": achieved,
        # Reading at least 90 % of the offered rate (closed loop: whatever it reaches).
        "kept_up": rate is None or n / r["read_seconds"] >= 0.9 * rate,
        "cpu_seconds_per_million_user_records": r["cpu_seconds"] / (n / 1e6),
        "process_cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "calls_per_second": r["calls"] / r["elapsed_seconds"],
        "kinesis_records_per_call": r["kinesis_records"] / max(1, r["calls"]),
        "read_back": {"kinesis_records": kinesis, "user_records": users, "checksum_matches": True},
    })
    return r


def bench_row(r):
    r["calls_per_second"] = r["put_records_calls"] / r["duration_seconds"]
    r["kinesis_records_per_call"] = r["kinesis_records_put"] / max(1, r["put_records_calls"])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20, help="length of each paced run")
    ap.add_argument("--closed-loop-lines", type=int, default=400000, help="lines kpl put reads closed loop")
    ap.add_argument("--aiokpl-closed-loop-lines", type=int, default=60000)
    ap.add_argument("--kpl", default=os.path.join(REPO, "target/release/kpl"))
    ap.add_argument("--no-bench", action="store_true", help="skip the kpl bench lean/sdk rows")
    ap.add_argument("--rates", default="closed,300,3000,30000",
                    help="comma-separated lines/s, `closed` for closed loop (closed loop first: it decides where aiokpl runs)")
    ap.add_argument("--out", default=os.path.join(REPO, "target/bench-results/p3_put.json"))
    args = ap.parse_args()

    import aiokpl  # noqa: F401  fail early, before starting anything
    import importlib.metadata as md

    server = p3.Kinesalite()
    for sig in (p3.signal.SIGTERM, p3.signal.SIGINT):
        p3.signal.signal(sig, lambda *_: sys.exit("p3_put.py: stopped by a signal"))
    rows = {"put": [], "aiokpl": [], "bench_lean": [], "bench_sdk": []}
    streams = iter(range(1000))

    def stream(prefix):
        name = f"p3-{prefix}-{next(streams)}"
        p3.create_stream(api, name, SHARDS)
        return name

    try:
        api = p3.client(server.endpoint)
        p3.wait_ready(server, api)
        with tempfile.TemporaryDirectory() as tmp:
            aiokpl_max = None
            rates = [None if r == "closed" else int(r) for r in args.rates.split(",")]
            for rate in rates:
                n = args.closed_loop_lines if rate is None else int(rate * args.seconds)
                k = run_put(server, api, args.kpl, stream("put"), rate, n, tmp)
                rows["put"].append(k)
                print(f"p3_put: kpl put {rate_name(rate)}: {k['user_records_per_second']:.0f} lines/s, "
                      f"{k['cpu_seconds_per_million_user_records']:.2f} CPU s/M, {k['calls_per_second']:.1f} calls/s, "
                      f"{k['kinesis_records_per_call']:.1f} records/call", file=sys.stderr, flush=True)
                # aiokpl runs at the goal's 3 000 lines/s and below whatever it reaches closed loop
                # (saturated, its CPU per record is at its least: the ratio is then a lower bound).
                if rate is not None and rate > 3000 and aiokpl_max is not None and aiokpl_max < 0.9 * rate:
                    print(f"p3_put: aiokpl skipped at {rate_name(rate)}: it reaches {aiokpl_max:.0f} lines/s closed loop",
                          file=sys.stderr, flush=True)
                    continue
                an = args.aiokpl_closed_loop_lines if rate is None else n
                a = run_aiokpl(server, api, stream("aiokpl"), rate, an, tmp)
                a["kpl_put_offered_same"] = True
                rows["aiokpl"].append(a)
                if rate is None:
                    aiokpl_max = a["user_records_per_second"]
                print(f"p3_put: aiokpl {rate_name(rate)}: {a['user_records_per_second']:.0f} lines/s, "
                      f"{a['cpu_seconds_per_million_user_records']:.1f} CPU s/M, {a['calls_per_second']:.1f} calls/s, "
                      f"{a['kinesis_records_per_call']:.1f} records/call, kept up: {a['kept_up']}",
                      file=sys.stderr, flush=True)
        if not args.no_bench:
            for rate in rates:
                seconds = args.seconds if rate is not None else args.seconds / 2
                for client in ("lean", "sdk"):
                    r = bench_row(p3.run_kpl(server, api, args.kpl, stream(f"bench-{client}"), seconds, rate=rate,
                                             bench_args=("--client", client)))
                    rows[f"bench_{client}"].append(r)
                    print(f"p3_put: kpl bench --client {client} {rate_name(rate)}: {r['user_records_per_second']:.0f} rec/s, "
                          f"{r['cpu_seconds_per_million_user_records']:.2f} CPU s/M, {r['calls_per_second']:.1f} calls/s, "
                          f"{r['kinesis_records_per_call']:.1f} records/call", file=sys.stderr, flush=True)
    finally:
        server.stop()

    ratios = {}
    for k in rows["put"]:
        for a in rows["aiokpl"]:
            if a["offered_lines_per_second"] == k["offered_lines_per_second"]:
                ratios[rate_name(k["offered_lines_per_second"])] = (
                    a["cpu_seconds_per_million_user_records"] / k["cpu_seconds_per_million_user_records"])
    result = {
        "target": f"kinesalite 3.3.3 on loopback, {SHARDS} shards per stream",
        "versions": {"aiokpl": md.version("aiokpl"), "aiobotocore": md.version("aiobotocore"),
                     "python": sys.version.split()[0],
                     "kpl": subprocess.run([args.kpl, "--version"], capture_output=True, text=True).stdout.strip()},
        **rows,
        "cpu_ratio_aiokpl_over_kpl_put": ratios,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(result))
    print(f"p3_put: written {args.out}", file=sys.stderr)


def kept_up(result, rate):
    return all(a["kept_up"] for a in result["aiokpl"] if a["offered_lines_per_second"] == rate)


def markdown(result):
    """The BENCHMARKS.md tables of one run."""
    out = ["| producer | offered | lines/s achieved | CPU s per million | calls/s | Kinesis records per call | aiokpl / kpl put |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for k in result["put"]:
        rate = k["offered_lines_per_second"]
        for a in result["aiokpl"]:
            if a["offered_lines_per_second"] == rate:
                out.append(f"| aiokpl {result['versions']['aiokpl']} | {rate_name(rate)} | {a['user_records_per_second']:.0f}"
                           f"{'' if a['kept_up'] else ' (saturated)'} | {a['cpu_seconds_per_million_user_records']:.1f} | "
                           f"{a['calls_per_second']:.1f} | {a['kinesis_records_per_call']:.1f} | 1x |")
        ratio = result["cpu_ratio_aiokpl_over_kpl_put"].get(rate_name(rate))
        out.append(f"| kpl put | {rate_name(rate)} | {k['user_records_per_second']:.0f} | "
                   f"{k['cpu_seconds_per_million_user_records']:.2f} | {k['calls_per_second']:.1f} | "
                   f"{k['kinesis_records_per_call']:.1f} | {f'**{ratio:.0f}x**' if ratio else 'n/a'}"
                   f"{' (lower bound)' if ratio and not kept_up(result, rate) else ''} |")
    if result["bench_lean"]:
        out += ["", "| kpl bench | offered | client | records/s | CPU s per million | calls/s | Kinesis records per call | sdk / lean |",
                "|---|---|---|---:|---:|---:|---:|---:|"]
        for lean, sdk in zip(result["bench_lean"], result["bench_sdk"]):
            rate = rate_name(lean["offered_rate"] and int(lean["offered_rate"]))
            for name, r in (("lean", lean), ("sdk", sdk)):
                ratio = sdk["cpu_seconds_per_million_user_records"] / lean["cpu_seconds_per_million_user_records"]
                out.append(f"| | {rate} | {name} | {r['user_records_per_second']:.0f} | "
                           f"{r['cpu_seconds_per_million_user_records']:.2f} | {r['calls_per_second']:.1f} | "
                           f"{r['kinesis_records_per_call']:.1f} | {f'{ratio:.2f}x' if name == 'lean' else ''} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_aiokpl":
        aiokpl_child(sys.argv[2], sys.argv[3])
    else:
        main()
